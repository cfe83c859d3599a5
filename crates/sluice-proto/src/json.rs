//! The JSON form of the status messages, one shape for every reader: `sluice status --json`,
//! `sluice executors --json` and the web UI's `/api/` routes.

use crate::{BatchDetail, BatchStatus, ClusterStatus, JobStatus, TaskAttempt};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Rows per second of `rows` over `ms` (the rows themselves when it took no time).
pub fn rows_per_second(rows: u64, ms: u64) -> u64 {
    (rows * 1000).checked_div(ms).unwrap_or(rows * 1000)
}

pub fn job_json(s: &JobStatus) -> Value {
    json!({
        "job_id": s.job_id,
        "name": s.name,
        "state": s.job_state().name(),
        "error": s.error,
        "executors": s.executors,
        "excluded_executors": s.excluded_executors,
        "restarts": s.restarts,
        "batches_committed": s.batches_committed,
        "rows_in": s.rows_in,
        "rows_out": s.rows_out,
        "submitted_at_ms": s.submitted_at_ms,
        "checkpoint_uri": s.checkpoint_uri,
        "max_event_ms": s.max_event_ms.iter().collect::<BTreeMap<_, _>>(),
        "running_batch": s.running_batch,
        "first_batch_started_at_ms": s.first_batch_started_at_ms,
        "recent_batches": s.recent_batches.iter().map(batch_status_json).collect::<Vec<_>>(),
        "source_lag": s.source_lag.iter().map(|l| json!({
            "table": l.table,
            "partition": l.partition,
            "records": l.records,
        })).collect::<Vec<_>>(),
    })
}

fn batch_status_json(b: &BatchStatus) -> Value {
    json!({
        "batch_id": b.batch_id,
        "rows_in": b.rows_in,
        "rows_out": b.rows_out,
        "duration_ms": b.duration_ms,
        "rows_per_second": rows_per_second(b.rows_in, b.duration_ms),
        "tasks": b.tasks,
        "tasks_rerun": b.tasks_retried,
        "rerun": {
            "task_failed": b.rerun_task_failed,
            "executor_lost": b.rerun_executor_lost,
            "fetch_failed": b.rerun_fetch_failed,
        },
        "recovery_ms": b.recovery_ms,
        "checkpoint_ms": b.checkpoint_ms,
        "dead_letters": b.dead_letters,
        "watermark_ms": b.watermark_ms,
        "max_event_ms": b.max_event_ms.iter().collect::<BTreeMap<_, _>>(),
        "metrics": b.metrics.iter().collect::<BTreeMap<_, _>>(),
        "started_at_ms": b.started_at_ms,
        "committed_at_ms": b.committed_at_ms,
    })
}

pub fn batch_json(b: &BatchDetail) -> Value {
    json!({
        "job_id": b.job_id,
        "batch_id": b.batch_id,
        "outcome": b.outcome_name(),
        "error": b.error,
        "runs": b.runs,
        "started_after": b.started_after,
        "started_at_ms": b.started_at_ms,
        "ended_at_ms": b.ended_at_ms,
        "phases": b.phases.iter().map(|p| json!({"name": p.name, "ms": p.ms})).collect::<Vec<_>>(),
        "input": b.input.iter().map(|i| {
            let splits: Vec<Value> = i.splits.iter().map(|s| parsed(s)).collect();
            (i.table.clone(), Value::from(splits))
        }).collect::<Map<_, _>>(),
        "stages": b.stages.iter().map(|s| json!({
            "stage_id": s.stage_id,
            "attempt": s.attempt,
            "inputs": s.inputs,
            "output": s.output,
            "stateful": s.stateful,
            "tasks": s.tasks.iter().map(|t| json!({
                "partition": t.partition,
                "source_table": t.source_table,
                "attempts": t.attempts.iter().map(attempt_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "committed": b.summary.as_ref().map(|s| json!({
            "rows_in": s.rows_in,
            "rows_out": s.rows_out,
            "committed_at_ms": s.committed_at_ms,
            "outputs": b.committed.iter().map(|o| json!({
                "kind": o.kind,
                "name": o.name,
                "partitions": o.partitions,
            })).collect::<Vec<_>>(),
        })),
    })
}

fn attempt_json(a: &TaskAttempt) -> Value {
    json!({
        "task_attempt": a.task_attempt,
        "stage_attempt": a.stage_attempt,
        "executor_id": a.executor_id,
        "cause": a.cause_name(),
        "launched_at_ms": a.launched_at_ms,
        "ended_at_ms": a.ended_at_ms,
        "outcome": a.outcome_name(),
        "reason": a.reason,
        "metrics": a.metrics.iter().collect::<BTreeMap<_, _>>(),
    })
}

/// A split as its connector logged it (JSON), or the text when it is not JSON.
fn parsed(split: &str) -> Value {
    serde_json::from_str(split).unwrap_or_else(|_| Value::from(split))
}

pub fn cluster_json(c: &ClusterStatus) -> Value {
    json!({
        "executors": c.executors.iter().map(|e| json!({
            "executor_id": e.executor_id,
            "address": e.address,
            "slots": e.slots,
            "draining": e.draining,
            "registered_at_ms": e.registered_at_ms,
            "running": e.running.iter().map(|k| json!({
                "job_id": k.job_id,
                "batch_id": k.batch_id,
                "stage_id": k.stage_id,
                "partition": k.partition,
                "task_attempt": k.task_attempt,
            })).collect::<Vec<_>>(),
            "state_partitions": e.state_partitions.iter().map(|p| json!({
                "job_id": p.job_id,
                "stage": p.stage,
                "partition": p.partition,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "events": c.events.iter().map(|e| json!({
            "at_ms": e.at_ms,
            "executor_id": e.executor_id,
            "change": e.change,
            "reason": e.reason,
        })).collect::<Vec<_>>(),
    })
}

impl BatchDetail {
    /// Each output its commit made durable, in words: "sink out: partitions 0, 2" or
    /// "state agg: version 7 of partitions 0, 1".
    pub fn committed_text(&self) -> Vec<String> {
        self.committed
            .iter()
            .map(|o| {
                let partitions = match o.partitions.is_empty() {
                    true => "no partition wrote rows".to_string(),
                    false => {
                        let list: Vec<String> = o.partitions.iter().map(u32::to_string).collect();
                        format!("partitions {}", list.join(", "))
                    }
                };
                match o.kind.as_str() {
                    "state" => format!(
                        "state {}: version {} of {partitions}",
                        o.name, self.batch_id
                    ),
                    kind => format!("{kind} {}: {partitions}", o.name),
                }
            })
            .collect()
    }

    pub fn outcome_name(&self) -> &'static str {
        use crate::BatchOutcome as O;
        match self.outcome() {
            O::Running => "running",
            O::Committed => "committed",
            O::Failed => "failed",
            O::Abandoned => "abandoned",
            O::Unspecified => "unknown",
        }
    }
}

impl TaskAttempt {
    /// Why this attempt was launched.
    pub fn cause_name(&self) -> &'static str {
        use crate::LaunchCause as C;
        match self.cause() {
            C::First => "first",
            C::TaskFailed => "task_failed",
            C::ExecutorLost => "executor_lost",
            C::OutputLost => "output_lost",
            C::FetchFailed => "fetch_failed",
        }
    }

    pub fn outcome_name(&self) -> &'static str {
        use crate::AttemptOutcome as O;
        match self.outcome() {
            O::Running => "running",
            O::Succeeded => "succeeded",
            O::Failed => "failed",
            O::Lost => "lost",
            O::FetchFailed => "fetch_failed",
            O::Abandoned => "abandoned",
        }
    }
}
