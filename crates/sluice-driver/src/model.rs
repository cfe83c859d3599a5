//! The queryable model of the cluster, as the Jobs service serves it: every job's recent
//! batches (logged input, driver phases, stages, every task attempt) and the executors. The
//! scheduler records attempts and membership ([`sluice_scheduler::model`]); the job runner
//! records its phases; this module keeps a bounded history per job and turns both into the
//! wire types.

use sluice_checkpoint::OffsetsEntry;
use sluice_core::{BatchId, StageInput, StageOutput, now_ms};
use sluice_proto as pb;
use sluice_scheduler::BatchReport;
use sluice_scheduler::model::{
    AttemptOutcome, BatchTrace, ExecutorChange, ExecutorEvent, ExecutorView, LaunchCause,
};
use sluice_sql::CompiledJob;
use std::collections::VecDeque;
use std::time::Instant;

/// Batches whose details a job keeps (`sluice status JOB --batch N`).
pub const BATCH_HISTORY: usize = 100;

/// Turns the scheduler's clock (ms since the core started) into wall-clock ms.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub epoch_at_start_ms: u64,
}

impl Clock {
    pub fn wall(self, scheduler_ms: u64) -> u64 {
        self.epoch_at_start_ms + scheduler_ms
    }
}

/// What the scheduler's event loop answers a query with.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub executors: Vec<ExecutorView>,
    pub history: Vec<ExecutorEvent>,
    pub running: Vec<BatchTrace>,
}

/// A job's batches as this driver ran them, oldest first.
#[derive(Debug, Default)]
pub struct BatchLog {
    batches: VecDeque<pb::BatchDetail>,
}

impl BatchLog {
    /// Records the latest state of a batch's run, replacing what an earlier report of the
    /// same batch said; a batch run again after it failed counts one more run.
    pub fn record(&mut self, mut detail: pb::BatchDetail, new_run: bool) {
        if let Some(last) = self.batches.back_mut()
            && last.batch_id == detail.batch_id
        {
            detail.runs = last.runs + u32::from(new_run);
            *last = detail;
            return;
        }
        detail.runs = 1;
        if self.batches.len() >= BATCH_HISTORY {
            self.batches.pop_front();
        }
        self.batches.push_back(detail);
    }

    pub fn get(&self, batch: BatchId) -> Option<&pb::BatchDetail> {
        self.batches.iter().rev().find(|b| b.batch_id == batch)
    }

    pub fn iter(&self) -> impl Iterator<Item = &pb::BatchDetail> {
        self.batches.iter()
    }

    pub fn oldest(&self) -> Option<BatchId> {
        self.batches.front().map(|b| b.batch_id)
    }
}

/// Why a job's loop starts again, marked on the first batch it runs (`started_after`).
pub const DRIVER_RESTART: &str = "driver restart";
pub const JOB_RESTART: &str = "job restart";
pub const RESUME: &str = "resume";

/// The driver's phases of a batch, in order.
pub const PLAN: &str = "plan";
pub const OFFSETS: &str = "offsets";
pub const TASKS: &str = "tasks";
pub const SINK_COMMIT: &str = "sink_commit";
pub const COMMIT: &str = "commit";

/// The job runner's record of the batch it runs: its logged input and its phases as they end.
pub struct BatchRecorder {
    pub detail: pb::BatchDetail,
    mark: Instant,
}

impl BatchRecorder {
    /// A batch whose input `entry` logs, after the phases it has already been through.
    pub fn begin(job_id: &str, entry: &OffsetsEntry, phases: &[(&str, u64)]) -> Self {
        let spent: u64 = phases.iter().map(|(_, ms)| ms).sum();
        let detail = pb::BatchDetail {
            job_id: job_id.to_string(),
            batch_id: entry.batch_id,
            outcome: pb::BatchOutcome::Running.into(),
            started_at_ms: now_ms().saturating_sub(spent),
            phases: phases
                .iter()
                .map(|(name, ms)| pb::Phase {
                    name: name.to_string(),
                    ms: *ms,
                })
                .collect(),
            input: entry
                .sources
                .iter()
                .map(|(table, splits)| pb::LoggedInput {
                    table: table.clone(),
                    splits: splits.iter().map(|s| s.to_json()).collect(),
                })
                .collect(),
            ..Default::default()
        };
        BatchRecorder {
            detail,
            mark: Instant::now(),
        }
    }

    /// Phase `name` ended now (it began when the last one ended).
    pub fn phase(&mut self, name: &str) {
        let now = Instant::now();
        self.detail.phases.push(pb::Phase {
            name: name.to_string(),
            ms: now.duration_since(self.mark).as_millis() as u64,
        });
        self.mark = now;
    }

    /// What phase `name` took (0 when the batch did not go through it, as a rerun skips
    /// planning).
    pub fn phase_ms(&self, name: &str) -> u64 {
        let phases = self.detail.phases.iter();
        phases.filter(|p| p.name == name).map(|p| p.ms).sum()
    }

    pub fn stages(&mut self, trace: &BatchTrace, clock: Clock) {
        self.detail.stages = stage_details(trace, clock);
    }

    pub fn end(&mut self, outcome: pb::BatchOutcome, error: String) {
        self.detail.set_outcome(outcome);
        self.detail.error = error;
        self.detail.ended_at_ms = now_ms();
    }
}

/// What committing a batch made durable besides its commit entry: the partitions that wrote
/// the sink and its side tables, and each stateful operator's new state version.
pub fn committed_outputs(job: &CompiledJob, report: &BatchReport) -> Vec<pb::CommittedOutput> {
    let output = |kind: &str, name: &str, partitions: Vec<u32>| pb::CommittedOutput {
        kind: kind.into(),
        name: name.into(),
        partitions,
    };
    let mut out = vec![output(
        "sink",
        &job.sink_table,
        report.sink_partitions.clone(),
    )];
    if !report.dead_letter_partitions.is_empty() {
        out.extend(job.dead_letters.values().map(|d| {
            output(
                "dead letters",
                &d.table,
                report.dead_letter_partitions.clone(),
            )
        }));
    }
    if let Some(late) = job.late_rows.as_ref()
        && !report.late_row_partitions.is_empty()
    {
        out.push(output(
            "late rows",
            &late.table,
            report.late_row_partitions.clone(),
        ));
    }
    for stage in report.trace.stages.iter().filter(|s| s.stateful) {
        let fragment = job.fragments.get(stage.stage_id as usize);
        let Some(op) = fragment.and_then(|f| f.operator.as_ref()) else {
            continue;
        };
        let partitions = stage.tasks.iter().map(|t| t.partition).collect();
        out.push(output("state", op.name(), partitions));
    }
    out
}

/// The stages and task attempts of a batch's trace, on the wire.
pub fn stage_details(trace: &BatchTrace, clock: Clock) -> Vec<pb::StageDetail> {
    trace
        .stages
        .iter()
        .map(|s| pb::StageDetail {
            stage_id: s.stage_id,
            attempt: s.attempt,
            inputs: s.inputs.iter().map(describe_input).collect(),
            output: describe_output(&s.output),
            stateful: s.stateful,
            tasks: s
                .tasks
                .iter()
                .map(|t| pb::TaskDetail {
                    partition: t.partition,
                    source_table: t.source.clone().unwrap_or_default(),
                    attempts: t
                        .attempts
                        .iter()
                        .map(|a| pb::TaskAttempt {
                            task_attempt: a.task_attempt,
                            stage_attempt: a.stage_attempt,
                            executor_id: a.executor.to_string(),
                            cause: cause(a.cause).into(),
                            launched_at_ms: clock.wall(a.launched_ms),
                            ended_at_ms: a.ended_ms.map_or(0, |t| clock.wall(t)),
                            outcome: outcome(&a.outcome).into(),
                            reason: a.outcome.reason().to_string(),
                            metrics: a.metrics.clone().into_iter().collect(),
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect()
}

fn describe_input(input: &StageInput) -> String {
    match input {
        StageInput::Source { table } => format!("source {table}"),
        StageInput::Shuffle { from, kind } => {
            format!("{kind:?} exchange of stage {from}").to_lowercase()
        }
        StageInput::Broadcast { table } => format!("broadcast of static {table}"),
    }
}

fn describe_output(output: &StageOutput) -> String {
    match output {
        StageOutput::Sink => "sink".into(),
        StageOutput::Shuffle { kind, partitions } => {
            format!("{kind:?} exchange, {partitions} partitions").to_lowercase()
        }
    }
}

fn cause(c: LaunchCause) -> pb::LaunchCause {
    match c {
        LaunchCause::First => pb::LaunchCause::First,
        LaunchCause::TaskFailed => pb::LaunchCause::TaskFailed,
        LaunchCause::ExecutorLost => pb::LaunchCause::ExecutorLost,
        LaunchCause::OutputLost => pb::LaunchCause::OutputLost,
        LaunchCause::FetchFailed => pb::LaunchCause::FetchFailed,
    }
}

fn outcome(o: &AttemptOutcome) -> pb::AttemptOutcome {
    match o {
        AttemptOutcome::Running => pb::AttemptOutcome::Running,
        AttemptOutcome::Succeeded => pb::AttemptOutcome::Succeeded,
        AttemptOutcome::Failed(_) => pb::AttemptOutcome::Failed,
        AttemptOutcome::Lost(_) => pb::AttemptOutcome::Lost,
        AttemptOutcome::FetchFailed(_) => pb::AttemptOutcome::FetchFailed,
        AttemptOutcome::Abandoned => pb::AttemptOutcome::Abandoned,
    }
}

/// The executors and their history, on the wire.
pub fn cluster_status(snapshot: &Snapshot, clock: Clock) -> pb::ClusterStatus {
    pb::ClusterStatus {
        executors: snapshot
            .executors
            .iter()
            .map(|e| pb::ExecutorStatus {
                executor_id: e.id.to_string(),
                address: e.address.clone(),
                slots: e.slots,
                running: e.running.iter().map(crate::core::to_proto_key).collect(),
                state_partitions: e
                    .state_partitions
                    .iter()
                    .map(|p| pb::StatePartitionRef {
                        job_id: p.job.to_string(),
                        stage: p.stage,
                        partition: p.partition,
                    })
                    .collect(),
                draining: e.draining,
                registered_at_ms: clock.wall(e.registered_ms),
            })
            .collect(),
        events: snapshot
            .history
            .iter()
            .map(|e| pb::ExecutorEvent {
                at_ms: clock.wall(e.at_ms),
                executor_id: e.executor.to_string(),
                change: e.change.name().into(),
                reason: match &e.change {
                    ExecutorChange::Lost(r) => r.clone(),
                    _ => String::new(),
                },
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(batch: BatchId, outcome: pb::BatchOutcome) -> pb::BatchDetail {
        pb::BatchDetail {
            batch_id: batch,
            outcome: outcome.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_log_keeps_the_latest_report_of_each_batch_and_counts_runs() {
        let mut log = BatchLog::default();
        log.record(detail(3, pb::BatchOutcome::Running), true);
        log.record(detail(3, pb::BatchOutcome::Failed), false);
        log.record(detail(3, pb::BatchOutcome::Running), true);
        log.record(detail(3, pb::BatchOutcome::Committed), false);
        let b = log.get(3).expect("kept");
        assert_eq!((b.outcome(), b.runs), (pb::BatchOutcome::Committed, 2));
        for n in 4..(4 + BATCH_HISTORY as u64) {
            log.record(detail(n, pb::BatchOutcome::Committed), true);
        }
        assert!(log.get(3).is_none(), "bounded");
        assert_eq!(log.oldest(), Some(4));
    }
}
