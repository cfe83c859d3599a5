//! The queryable model of what ran where: every attempt of every task of a batch (its
//! executor, why it was launched, how it ended, its phase timings) and every executor (slots,
//! running tasks, state partitions held, drains and losses). The scheduler keeps it as it
//! handles events; the driver serves it (`sluice status JOB --batch N`, `sluice executors`).
//! Times are the scheduler's clock (milliseconds since the driver's core started).

use crate::TaskKey;
use sluice_core::{BatchId, ExecutorId, JobId, StageInput, StageOutput, StatePartition};
use std::collections::BTreeMap;

/// Why a task attempt was launched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LaunchCause {
    /// Its first run in this batch.
    #[default]
    First,
    /// Its previous attempt failed and is retried.
    TaskFailed,
    /// Its previous attempt was running on an executor that was lost.
    ExecutorLost,
    /// It ran before, but its map output was lost with its executor: recomputed from lineage.
    OutputLost,
    /// A reducer could not fetch a map output: the reducer, and the map task that wrote it,
    /// run again.
    FetchFailed,
}

impl LaunchCause {
    pub fn name(self) -> &'static str {
        match self {
            LaunchCause::First => "first",
            LaunchCause::TaskFailed => "task_failed",
            LaunchCause::ExecutorLost => "executor_lost",
            LaunchCause::OutputLost => "output_lost",
            LaunchCause::FetchFailed => "fetch_failed",
        }
    }
}

/// How a task attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    Running,
    Succeeded,
    /// The task reported a failure.
    Failed(String),
    /// Its executor was lost while it ran.
    Lost(String),
    /// It could not fetch a map output.
    FetchFailed(String),
    /// The batch ended (stopped, or failed elsewhere) while it ran.
    Abandoned,
}

impl AttemptOutcome {
    pub fn name(&self) -> &'static str {
        match self {
            AttemptOutcome::Running => "running",
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed(_) => "failed",
            AttemptOutcome::Lost(_) => "lost",
            AttemptOutcome::FetchFailed(_) => "fetch_failed",
            AttemptOutcome::Abandoned => "abandoned",
        }
    }

    /// The reason, for outcomes that have one.
    pub fn reason(&self) -> &str {
        match self {
            AttemptOutcome::Failed(r)
            | AttemptOutcome::Lost(r)
            | AttemptOutcome::FetchFailed(r) => r,
            _ => "",
        }
    }
}

/// One launch of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptTrace {
    pub task_attempt: u32,
    pub stage_attempt: u32,
    pub executor: ExecutorId,
    pub cause: LaunchCause,
    pub launched_ms: u64,
    pub ended_ms: Option<u64>,
    pub outcome: AttemptOutcome,
    /// What the attempt reported through the progress channel (rows, phase timings, ...).
    pub metrics: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskTrace {
    pub partition: u32,
    /// The source table this task read a split of, for a source stage.
    pub source: Option<String>,
    pub attempts: Vec<AttemptTrace>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageTrace {
    pub stage_id: u32,
    /// Attempts of the stage so far (it goes up when map outputs are lost).
    pub attempt: u32,
    pub inputs: Vec<StageInput>,
    pub output: StageOutput,
    pub stateful: bool,
    pub tasks: Vec<TaskTrace>,
}

/// Everything the scheduler did for one run of one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchTrace {
    pub job_id: JobId,
    pub batch_id: BatchId,
    pub run: u64,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub stages: Vec<StageTrace>,
}

impl BatchTrace {
    /// Every attempt, with its stage and partition.
    pub fn attempts(&self) -> impl Iterator<Item = (u32, u32, &AttemptTrace)> {
        self.stages.iter().flat_map(|s| {
            s.tasks
                .iter()
                .flat_map(move |t| t.attempts.iter().map(move |a| (s.stage_id, t.partition, a)))
        })
    }
}

/// An executor as the scheduler sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorView {
    pub id: ExecutorId,
    pub address: String,
    pub slots: u32,
    pub running: Vec<TaskKey>,
    /// Stateful partitions whose latest state this executor holds in memory.
    pub state_partitions: Vec<StatePartition>,
    pub draining: bool,
    pub registered_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorChange {
    Registered,
    Draining,
    Lost(String),
}

impl ExecutorChange {
    pub fn name(&self) -> &'static str {
        match self {
            ExecutorChange::Registered => "registered",
            ExecutorChange::Draining => "draining",
            ExecutorChange::Lost(_) => "lost",
        }
    }
}

/// One change in the cluster's membership, for the executors' history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorEvent {
    pub at_ms: u64,
    pub executor: ExecutorId,
    pub change: ExecutorChange,
}

/// How many membership changes the scheduler remembers.
pub const EXECUTOR_HISTORY: usize = 500;
