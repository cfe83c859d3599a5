//! `sluice status JOB --batch N` and `sluice executors` as text for people; the JSON for
//! scripts and tests is `sluice_proto::json`.

use sluice_proto::{BatchDetail, ClusterStatus};

/// Executor ids are UUIDs: their first part tells them apart in a table.
fn short(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}

pub fn print_batch(b: &BatchDetail) {
    println!("job        {}", b.job_id);
    println!("batch      {} ({})", b.batch_id, b.outcome_name());
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
        for line in b.committed_text() {
            println!("           {line}");
        }
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
                    a.cause_name(),
                    a.outcome_name(),
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
