//! One running batch: its stages, each stage's tasks, and where each map output lives.

use crate::model::{AttemptOutcome, AttemptTrace, BatchTrace, LaunchCause, StageTrace, TaskTrace};
use sluice_core::progress::{self, Metrics, TaskProgress};
use sluice_core::{
    BatchId, ExecutorId, Failure, FailureKind, JobId, ShuffleKind, StageOutput, StageSpec,
};
use std::collections::{BTreeMap, BTreeSet};

/// What the driver hands the scheduler to run one batch.
#[derive(Debug, Clone)]
pub struct BatchSubmission {
    pub job_id: JobId,
    pub batch_id: BatchId,
    pub stages: Vec<StageSpec>,
    /// Per source table, its splits (JSON) in this batch: a stage reading that table runs one
    /// task per split.
    pub splits: BTreeMap<String, Vec<String>>,
    pub max_task_attempts: u32,
    pub task_backoff_ms: u64,
    /// A task running longer is failed by its executor (and retried elsewhere).
    pub task_timeout_ms: u64,
    /// Attempts of one stage (recomputations after lost map outputs) before the batch fails.
    pub max_stage_attempts: u32,
    /// The event-time watermark the batch logged, handed to every task.
    pub watermark_ms: Option<i64>,
    /// The watermark the batch before it ran with (late rows of downstream operators).
    pub previous_watermark_ms: Option<i64>,
}

/// What a successful task reports: its progress (metrics and payloads).
pub type TaskOutput = TaskProgress;

/// The outcome of a batch whose every task succeeded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub rows_in: u64,
    pub rows_out: u64,
    /// Input records sent to the dead-letter table.
    pub dead_letters: u64,
    pub tasks: u32,
    /// Task launches beyond the first of each task (retries and recomputations).
    pub tasks_rerun: u32,
    /// Why tasks ran again.
    pub rerun: RerunCounts,
    /// From the first executor loss or fetch failure in this batch to its completion (0: none).
    pub recovery_ms: u64,
    /// Console-sink rows (Arrow IPC) of each final-stage partition, in partition order.
    pub console: Vec<Vec<u8>>,
    /// Final-stage partitions that wrote rows to the sink, and source partitions that wrote
    /// dead letters: a partition without rows writes no file, so these name every file of
    /// this run, and committing removes the rest (parts of an earlier run of the batch).
    pub sink_partitions: Vec<u32>,
    pub dead_letter_partitions: Vec<u32>,
    /// The partitions that wrote rows to the late-rows table (`late_rows.table`).
    pub late_row_partitions: Vec<u32>,
    pub duration_ms: u64,
    /// Every metric of the batch's tasks, folded over the whole batch.
    pub metrics: Metrics,
    /// Every attempt of every task, where it ran and how it ended.
    pub trace: BatchTrace,
}

/// Tasks put back to run again, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RerunCounts {
    /// The task itself failed and was retried.
    pub task_failed: u32,
    /// The task was running on, or its map output lived on, an executor that died.
    pub executor_lost: u32,
    /// A reducer could not fetch a map output: the reducer and the map task run again.
    pub fetch_failed: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TaskState {
    /// Not runnable yet (inputs missing) or not needed now.
    Idle,
    Pending {
        not_before_ms: u64,
        avoid: Option<ExecutorId>,
    },
    Running {
        attempt: u32,
        executor: ExecutorId,
    },
    Done {
        executor: ExecutorId,
        stage_attempt: u32,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct TaskRun {
    /// Changed only through `StageRun::set_state`, which keeps the stage's indexes.
    state: TaskState,
    /// Launches so far; the next launch uses this number as its task attempt.
    pub launches: u32,
    /// Failures of the task, its executor dying under it included; bounded by
    /// max_task_attempts.
    pub failures: u32,
    /// Why the executor it last ran on was lost, when it was.
    pub lost_with_executor: Option<String>,
    pub output: Option<TaskOutput>,
    /// Every launch so far, for the cluster model.
    pub attempts: Vec<AttemptTrace>,
    /// Why its next launch happens.
    pub next_cause: LaunchCause,
}

impl TaskRun {
    fn new() -> Self {
        TaskRun {
            state: TaskState::Idle,
            launches: 0,
            failures: 0,
            lost_with_executor: None,
            output: None,
            attempts: Vec::new(),
            next_cause: LaunchCause::First,
        }
    }

    pub fn state(&self) -> &TaskState {
        &self.state
    }

    /// Records a launch of this task.
    pub fn launched(&mut self, key: &crate::TaskKey, executor: &ExecutorId, now_ms: u64) {
        self.attempts.push(AttemptTrace {
            task_attempt: key.task_attempt,
            stage_attempt: key.stage_attempt,
            executor: executor.clone(),
            cause: self.next_cause,
            launched_ms: now_ms,
            ended_ms: None,
            outcome: AttemptOutcome::Running,
            metrics: BTreeMap::new(),
        });
    }

    /// Records how the running attempt ended, and why the next launch (if any) happens.
    pub fn ended(&mut self, outcome: AttemptOutcome, next: LaunchCause, now_ms: u64) {
        if let Some(a) = self.attempts.last_mut()
            && a.outcome == AttemptOutcome::Running
        {
            a.outcome = outcome;
            a.ended_ms = Some(now_ms);
        }
        self.next_cause = next;
    }
}

/// A stage's tasks and indexes over their states, so that handling one event costs what the
/// event touches, not the batch's size: a batch of 100,000 tasks gets 100,000 results, and a
/// scan of every task per result would cost 10^10 steps.
#[derive(Debug, Clone)]
pub(crate) struct StageRun {
    pub spec: StageSpec,
    pub attempt: u32,
    pub tasks: Vec<TaskRun>,
    /// Range boundaries for the next stage, computed once from every map task's key sample.
    pub range_bounds: Option<Vec<Vec<u8>>>,
    /// Partitions per state: idle and pending ones (in partition order), and how many are done.
    idle: BTreeSet<u32>,
    pending: BTreeSet<u32>,
    /// Pending partitions by the time they may launch, for the next wake-up.
    pending_by_time: BTreeSet<(u64, u32)>,
    done: usize,
    /// A done task went back (its output was lost): the stages it reads may be needed again.
    pub reopened: bool,
}

impl StageRun {
    fn new(spec: StageSpec, n: u32) -> Self {
        StageRun {
            spec,
            attempt: 0,
            tasks: (0..n).map(|_| TaskRun::new()).collect(),
            range_bounds: None,
            idle: (0..n).collect(),
            pending: BTreeSet::new(),
            pending_by_time: BTreeSet::new(),
            done: 0,
            reopened: false,
        }
    }

    /// The one way a task's state changes.
    pub fn set_state(&mut self, p: usize, state: TaskState) {
        let key = p as u32;
        match &self.tasks[p].state {
            TaskState::Idle => _ = self.idle.remove(&key),
            TaskState::Pending { not_before_ms, .. } => {
                self.pending.remove(&key);
                self.pending_by_time.remove(&(*not_before_ms, key));
            }
            TaskState::Done { .. } => {
                self.done -= 1;
                self.reopened = true;
            }
            TaskState::Running { .. } => {}
        }
        match &state {
            TaskState::Idle => _ = self.idle.insert(key),
            TaskState::Pending { not_before_ms, .. } => {
                self.pending.insert(key);
                self.pending_by_time.insert((*not_before_ms, key));
            }
            TaskState::Done { .. } => self.done += 1,
            TaskState::Running { .. } => {}
        }
        self.tasks[p].state = state;
    }

    /// Puts a finished task back to run again because its map output is gone.
    pub fn output_lost(&mut self, p: usize, cause: LaunchCause) {
        self.set_state(p, TaskState::Idle);
        self.tasks[p].next_cause = cause;
    }

    pub fn idle(&self) -> Vec<u32> {
        self.idle.iter().copied().collect()
    }

    pub fn pending(&self) -> impl Iterator<Item = u32> + '_ {
        self.pending.iter().copied()
    }

    /// The earliest time, at or after `t`, at which a pending task may launch.
    pub fn first_pending_from(&self, t: u64) -> Option<u64> {
        self.pending_by_time.range((t, 0)..).next().map(|(t, _)| *t)
    }

    /// The first pending partition at or after `from`.
    pub fn next_pending(&self, from: u32) -> Option<u32> {
        self.pending.range(from..).next().copied()
    }

    pub fn all_done(&self) -> bool {
        self.done == self.tasks.len()
    }

    pub fn writes_shuffle(&self) -> bool {
        matches!(self.spec.output, StageOutput::Shuffle { .. })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct BatchRun {
    pub sub: BatchSubmission,
    /// Unique within the scheduler; every launch of this run carries it.
    pub run: u64,
    pub stages: Vec<StageRun>,
    pub started_ms: u64,
    pub rerun: RerunCounts,
    /// When this batch first lost work to an executor loss or fetch failure.
    pub first_loss_ms: Option<u64>,
    /// Tasks that were running on an executor that died: (stage, partition).
    pub lost_with_executors: Vec<(usize, usize)>,
    /// The scheduler's count of executor losses when this batch last looked for map outputs
    /// left on dead executors.
    pub losses_seen: u64,
}

impl BatchRun {
    pub fn new(sub: BatchSubmission, run: u64, now_ms: u64) -> Self {
        let mut stages: Vec<StageRun> = Vec::with_capacity(sub.stages.len());
        for spec in &sub.stages {
            // A source stage has one task per split of each table it reads, a shuffle stage one
            // per partition of the exchanges it reads (the planner gives them the same count).
            let splits = spec
                .sources()
                .map(|t| sub.splits.get(t).map_or(0, Vec::len) as u32)
                .sum::<u32>();
            let partitions = spec
                .upstreams()
                .filter_map(|from| match stages[from as usize].spec.output {
                    StageOutput::Shuffle { partitions, .. } => Some(partitions),
                    StageOutput::Sink => None,
                })
                .max()
                .unwrap_or(0);
            stages.push(StageRun::new(spec.clone(), splits + partitions));
        }
        BatchRun {
            sub,
            run,
            stages,
            started_ms: now_ms,
            rerun: RerunCounts::default(),
            first_loss_ms: None,
            lost_with_executors: Vec::new(),
            losses_seen: 0,
        }
    }

    /// The stages whose map outputs stage `s` reads.
    pub fn upstreams(&self, s: usize) -> impl Iterator<Item = usize> + '_ {
        self.stages[s].spec.upstreams().map(|u| u as usize)
    }

    /// Which split task `p` of source stage `s` reads: (table, split), counting through the
    /// stage's tables in order.
    pub fn source_split(&self, s: usize, p: usize) -> Option<(&str, &str)> {
        let mut p = p;
        for table in self.stages[s].spec.sources() {
            let splits = self.sub.splits.get(table).map_or(&[][..], Vec::as_slice);
            match splits.get(p) {
                Some(split) => return Some((table, split)),
                None => p -= splits.len(),
            }
        }
        None
    }

    /// Whether every map output stage `s` reads exists.
    pub fn upstreams_done(&self, s: usize) -> bool {
        self.upstreams(s).all(|up| self.stages[up].all_done())
    }

    /// Whether stage `s` can run: a source stage always; a shuffle stage once every map output
    /// of its upstream stages exists (and, for a range shuffle, its boundaries are known).
    pub fn inputs_ready(&self, s: usize) -> bool {
        self.upstreams(s).all(|up| {
            let prev = &self.stages[up];
            let range = matches!(
                prev.spec.output,
                StageOutput::Shuffle {
                    kind: ShuffleKind::Range,
                    ..
                }
            );
            prev.all_done() && (!range || prev.range_bounds.is_some())
        })
    }

    /// Whether stage `s`'s outputs are still wanted: a sink stage until it is done, a map
    /// stage while any task of a stage reading it still has to run.
    pub fn needed(&self, s: usize) -> bool {
        let mut readers = self
            .stages
            .iter()
            .filter(|r| r.spec.upstreams().any(|u| u == s as u32))
            .peekable();
        match readers.peek() {
            None => !self.stages[s].all_done(),
            Some(_) => readers.any(|r| !r.all_done()),
        }
    }

    /// Notes lost work; the batch fails once a stage has been attempted too often.
    pub fn lost_work(&mut self, now_ms: u64) {
        self.first_loss_ms.get_or_insert(now_ms);
    }

    /// Why executor losses doomed this batch, if they did: a stage lost its map outputs too
    /// often, or a task was running on lost executors as often as it may fail (it most likely
    /// kills them).
    pub fn lost_too_often(&self) -> Option<Failure> {
        let batch = self.sub.batch_id;
        if let Some(stage) = self
            .stages
            .iter()
            .find(|s| s.attempt >= self.sub.max_stage_attempts.max(1))
        {
            let message = format!(
                "stage {} of batch {batch} lost its map outputs {} times (executor lost or fetch failed); giving up",
                stage.spec.id, stage.attempt
            );
            return Some(Failure::new(FailureKind::LostExecutor, message));
        }
        self.lost_with_executors.iter().find_map(|&(s, p)| {
            let t = &self.stages[s].tasks[p];
            let reason = t.lost_with_executor.as_deref()?;
            (t.failures >= self.sub.max_task_attempts).then(|| {
                let message = format!(
                    "task {s}.{p} of batch {batch} was running on {} executors that were lost, the last: {reason}",
                    t.failures
                );
                Failure::new(FailureKind::LostExecutor, message)
            })
        })
    }

    /// The stage that writes the sink (the graph's one root).
    fn sink_stage(&self) -> Option<&StageRun> {
        self.stages.iter().find(|s| !s.writes_shuffle())
    }

    pub fn is_complete(&self) -> bool {
        self.sink_stage().is_none_or(StageRun::all_done)
    }

    pub fn report(&self, now_ms: u64) -> BatchReport {
        let first: Vec<&StageRun> = self
            .stages
            .iter()
            .filter(|s| s.spec.reads_sources())
            .collect();
        let last: Vec<&StageRun> = self.sink_stage().into_iter().collect();
        let outputs = |s: &[&StageRun]| {
            s.iter()
                .flat_map(|s| s.tasks.iter())
                .filter_map(|t| t.output.as_ref())
                .cloned()
                .collect::<Vec<_>>()
        };
        let (first, last) = (&first[..], &last[..]);
        let tasks: u32 = self.stages.iter().map(|s| s.tasks.len() as u32).sum();
        let launches: u32 = self
            .stages
            .iter()
            .flat_map(|s| s.tasks.iter())
            .map(|t| t.launches)
            .sum();
        let total = |s: &[&StageRun], name: &str| -> u64 {
            outputs(s).iter().map(|o| o.get(name).max(0) as u64).sum()
        };
        let all: Vec<&StageRun> = self.stages.iter().collect();
        BatchReport {
            rows_in: total(first, progress::ROWS_IN),
            rows_out: total(last, progress::ROWS_OUT),
            dead_letters: total(first, progress::DEAD_LETTERS),
            metrics: progress::fold(&outputs(&all)),
            tasks,
            tasks_rerun: launches.saturating_sub(tasks),
            rerun: self.rerun,
            recovery_ms: self.first_loss_ms.map_or(0, |t| now_ms.saturating_sub(t)),
            console: outputs(last)
                .iter()
                .flat_map(|o| o.payloads(progress::CONSOLE).map(<[u8]>::to_vec))
                .filter(|c| !c.is_empty())
                .collect(),
            duration_ms: now_ms.saturating_sub(self.started_ms),
            sink_partitions: partitions_where(last, |o| o.get(progress::ROWS_OUT) > 0),
            dead_letter_partitions: partitions_where(first, |o| o.get(progress::DEAD_LETTERS) > 0),
            late_row_partitions: partitions_where(&all, |o| o.get(progress::LATE_ROWS) > 0),
            trace: self.trace(Some(now_ms)),
        }
    }

    /// The batch as the cluster model shows it; `ended_ms` for a batch that is over (its
    /// attempts still running are abandoned).
    pub fn trace(&self, ended_ms: Option<u64>) -> BatchTrace {
        let stages = self
            .stages
            .iter()
            .enumerate()
            .map(|(s, stage)| StageTrace {
                stage_id: s as u32,
                attempt: stage.attempt,
                inputs: stage.spec.inputs.clone(),
                output: stage.spec.output,
                stateful: stage.spec.stateful,
                tasks: stage
                    .tasks
                    .iter()
                    .enumerate()
                    .map(|(p, t)| TaskTrace {
                        partition: p as u32,
                        source: self.source_split(s, p).map(|(table, _)| table.to_string()),
                        attempts: t
                            .attempts
                            .iter()
                            .cloned()
                            .map(|mut a| {
                                if let (Some(end), AttemptOutcome::Running) = (ended_ms, &a.outcome)
                                {
                                    a.outcome = AttemptOutcome::Abandoned;
                                    a.ended_ms = Some(end);
                                }
                                a
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        BatchTrace {
            job_id: self.sub.job_id.clone(),
            batch_id: self.sub.batch_id,
            run: self.run,
            started_ms: self.started_ms,
            ended_ms,
            stages,
        }
    }
}

/// Partition numbers of tasks whose output passes `keep`. Writers key their files by
/// (batch, partition); the planner puts every source table in one stage, so the numbers of
/// source tasks are unique.
fn partitions_where(stages: &[&StageRun], keep: impl Fn(&TaskOutput) -> bool) -> Vec<u32> {
    let mut partitions: Vec<u32> = stages
        .iter()
        .flat_map(|s| s.tasks.iter().enumerate())
        .filter(|(_, t)| t.output.as_ref().is_some_and(&keep))
        .map(|(p, _)| p as u32)
        .collect();
    partitions.sort_unstable();
    partitions.dedup();
    partitions
}
