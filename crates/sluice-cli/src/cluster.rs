//! `sluice status JOB --batch N` and `sluice executors`: the driver's model of the cluster, as
//! text for people and as JSON for scripts and tests.

use serde_json::{Value, json};
use sluice_proto::{BatchDetail, ClusterStatus, TaskAttempt};
use std::collections::BTreeMap;

pub fn batch_json(b: &BatchDetail) -> Value {
    json!({
        "job_id": b.job_id,
        "batch_id": b.batch_id,
        "outcome": outcome_name(b),
        "error": b.error,
        "runs": b.runs,
        "started_at_ms": b.started_at_ms,
        "ended_at_ms": b.ended_at_ms,
        "phases": b.phases.iter().map(|p| json!({"name": p.name, "ms": p.ms})).collect::<Vec<_>>(),
        "input": b.input.iter().map(|i| {
            let splits: Vec<Value> = i.splits.iter().map(|s| parsed(s)).collect();
            (i.table.clone(), Value::from(splits))
        }).collect::<serde_json::Map<_, _>>(),
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
        })),
    })
}

fn attempt_json(a: &TaskAttempt) -> Value {
    json!({
        "task_attempt": a.task_attempt,
        "stage_attempt": a.stage_attempt,
        "executor_id": a.executor_id,
        "cause": cause_name(a),
        "launched_at_ms": a.launched_at_ms,
        "ended_at_ms": a.ended_at_ms,
        "outcome": attempt_outcome_name(a),
        "reason": a.reason,
        "metrics": a.metrics.iter().collect::<BTreeMap<_, _>>(),
    })
}

/// A split as its connector logged it (JSON), or the text when it is not JSON.
fn parsed(split: &str) -> Value {
    serde_json::from_str(split).unwrap_or_else(|_| Value::from(split))
}

fn outcome_name(b: &BatchDetail) -> &'static str {
    use sluice_proto::BatchOutcome as O;
    match b.outcome() {
        O::Running => "running",
        O::Committed => "committed",
        O::Failed => "failed",
        O::Abandoned => "abandoned",
        O::Unspecified => "unknown",
    }
}

fn cause_name(a: &TaskAttempt) -> &'static str {
    use sluice_proto::LaunchCause as C;
    match a.cause() {
        C::First => "first",
        C::TaskFailed => "task_failed",
        C::ExecutorLost => "executor_lost",
        C::OutputLost => "output_lost",
        C::FetchFailed => "fetch_failed",
    }
}

fn attempt_outcome_name(a: &TaskAttempt) -> &'static str {
    use sluice_proto::AttemptOutcome as O;
    match a.outcome() {
        O::Running => "running",
        O::Succeeded => "succeeded",
        O::Failed => "failed",
        O::Lost => "lost",
        O::FetchFailed => "fetch_failed",
        O::Abandoned => "abandoned",
    }
}

/// Executor ids are UUIDs: their first part tells them apart in a table.
fn short(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}

pub fn print_batch(b: &BatchDetail) {
    println!("job        {}", b.job_id);
    println!("batch      {} ({})", b.batch_id, outcome_name(b));
    if b.runs > 1 {
        println!(
            "runs       {} (this driver ran it again after a failure)",
            b.runs
        );
    }
    if !b.error.is_empty() {
        println!("error      {}", b.error);
    }
    let phases: Vec<String> = b
        .phases
        .iter()
        .map(|p| format!("{} {} ms", p.name, p.ms))
        .collect();
    println!("phases     {}", phases.join(", "));
    for i in &b.input {
        println!("input      {}: {} split(s)", i.table, i.splits.len());
        for s in &i.splits {
            println!("             {s}");
        }
    }
    if let Some(s) = &b.summary {
        println!("committed  {} rows in, {} rows out", s.rows_in, s.rows_out);
    }
    for s in &b.stages {
        println!();
        println!(
            "stage {} (attempt {}{}): {} -> {}",
            s.stage_id,
            s.attempt,
            if s.stateful { ", stateful" } else { "" },
            s.inputs.join(" + "),
            s.output
        );
        println!(
            "  {:>4}  {:>7}  {:<8}  {:<13}  {:<12}  {:>7}  {:>7}  {:>7}  {:>7}  {:>7}  REASON",
            "TASK",
            "ATTEMPT",
            "EXECUTOR",
            "CAUSE",
            "OUTCOME",
            "MS",
            "INPUT",
            "STATE",
            "COMPUTE",
            "OUTPUT"
        );
        for t in &s.tasks {
            for a in &t.attempts {
                let m = |k: &str| a.metrics.get(k).map_or("-".into(), |v| v.to_string());
                let state = a
                    .metrics
                    .get("state_read_ms")
                    .zip(a.metrics.get("state_write_ms"))
                    .map_or("-".into(), |(r, w)| (r + w).to_string());
                let ms = match a.ended_at_ms {
                    0 => "-".into(),
                    end => end.saturating_sub(a.launched_at_ms).to_string(),
                };
                println!(
                    "  {:>4}  {:>7}  {:<8}  {:<13}  {:<12}  {:>7}  {:>7}  {:>7}  {:>7}  {:>7}  {}",
                    t.partition,
                    a.task_attempt,
                    short(&a.executor_id),
                    cause_name(a),
                    attempt_outcome_name(a),
                    ms,
                    m("input_ms"),
                    state,
                    m("compute_ms"),
                    m("output_ms"),
                    a.reason
                );
            }
        }
    }
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

pub fn print_cluster(c: &ClusterStatus) {
    println!(
        "{:<36}  {:<22}  {:>5}  {:>7}  {:>5}  STATE",
        "EXECUTOR", "ADDRESS", "SLOTS", "RUNNING", "HELD"
    );
    for e in &c.executors {
        println!(
            "{:<36}  {:<22}  {:>5}  {:>7}  {:>5}  {}",
            e.executor_id,
            e.address,
            e.slots,
            e.running.len(),
            e.state_partitions.len(),
            if e.draining { "draining" } else { "alive" }
        );
    }
    if !c.events.is_empty() {
        println!();
        for e in &c.events {
            let reason = match e.reason.as_str() {
                "" => String::new(),
                r => format!(": {r}"),
            };
            println!("{}  {} {}{reason}", e.at_ms, e.executor_id, e.change);
        }
    }
}
