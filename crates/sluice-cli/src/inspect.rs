//! `sluice checkpoint inspect URI`: what a job's checkpoint holds, read straight from storage
//! (no driver needed): its metadata, every logged batch with its input and commit, how it ended.

use anyhow::Context;
use serde_json::Value;
use sluice_checkpoint::JobCheckpoint;
use sluice_driver::inspect::describe;

/// `uri` is a job's checkpoint (…/jobs/<id>) or a driver's --state (every job under it).
pub async fn run(uri: &str, as_json: bool) -> anyhow::Result<()> {
    let location = sluice_connectors::store::open(uri)?;
    let root = JobCheckpoint::new(
        location.store.clone(),
        location.prefix.clone(),
        location.uri.clone(),
    );
    let jobs = if root.read_metadata().await?.is_some() {
        vec![root]
    } else {
        let jobs_dir = location.child("jobs");
        let listed = location
            .store
            .list_with_delimiter(Some(&jobs_dir))
            .await
            .with_context(|| format!("cannot list {uri}/jobs"))?;
        listed
            .common_prefixes
            .into_iter()
            .map(|p| {
                let job_uri = location.uri_of(&p);
                JobCheckpoint::new(location.store.clone(), p, job_uri)
            })
            .collect()
    };
    anyhow::ensure!(
        !jobs.is_empty(),
        "{uri} holds no job checkpoint (no metadata, no jobs/)"
    );
    let mut all = Vec::new();
    for cp in &jobs {
        all.push(describe(cp).await?);
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for job in &all {
            print(job);
        }
    }
    Ok(())
}

fn print(job: &Value) {
    println!(
        "checkpoint  {}",
        job["checkpoint"].as_str().unwrap_or_default()
    );
    println!(
        "job         {} ({})",
        job["job_id"].as_str().unwrap_or_default(),
        job["name"].as_str().unwrap_or_default()
    );
    println!(
        "format      {}, plan {}",
        job["format_version"],
        job["plan_fingerprint"].as_str().unwrap_or_default()
    );
    match job["ended"].as_object() {
        Some(e) => println!(
            "ended       {} {}",
            e["state"].as_str().unwrap_or_default(),
            e["error"].as_str().unwrap_or_default()
        ),
        None => println!("ended       no (a restarted driver resumes it)"),
    }
    let parts = job["state"].as_array().cloned().unwrap_or_default();
    if parts.is_empty() {
        println!("state       none (the job keeps no state across batches)");
    }
    for p in &parts {
        let files = p["files"].as_array().cloned().unwrap_or_default();
        let versions = |kind: &str| -> Vec<String> {
            files
                .iter()
                .filter(|f| f["kind"] == kind)
                .map(|f| f["version"].to_string())
                .collect()
        };
        let deltas = versions("delta");
        println!(
            "state       {} partition {}: version {}, {} bytes; deltas {}; snapshots {}",
            p["operator"].as_str().unwrap_or_default(),
            p["partition"],
            p["latest_version"],
            p["bytes"],
            match (deltas.first(), deltas.last()) {
                (Some(a), Some(b)) => format!("{a}..{b}"),
                _ => "none".into(),
            },
            versions("snapshot").join(",")
        );
        if let Some(sides) = p["sides"].as_object() {
            for (name, side) in sides {
                println!(
                    "              {name} side: {} rows, {} bytes in memory",
                    side["rows"], side["bytes"]
                );
            }
        }
    }
    println!();
    println!(
        "{:>8}  {:<10}  {:>10}  {:>10}  {:<24}  INPUT",
        "BATCH", "COMMITTED", "ROWS IN", "ROWS OUT", "WATERMARK"
    );
    for b in job["batches"].as_array().into_iter().flatten() {
        let input: Vec<String> = b["input"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                format!(
                    "{}: {}",
                    i["table"].as_str().unwrap_or_default(),
                    i["summary"].as_str().unwrap_or_default()
                )
            })
            .collect();
        let or_dash = |v: &Value| {
            v.as_u64()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:>8}  {:<10}  {:>10}  {:>10}  {:<24}  {}",
            b["batch"],
            if b["committed"] == true { "yes" } else { "no" },
            or_dash(&b["rows_in"]),
            or_dash(&b["rows_out"]),
            crate::event_time(b["watermark_ms"].as_i64()),
            input.join("; ")
        );
    }
    println!();
}
