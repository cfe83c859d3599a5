//! `sluice replay JOB BATCH`: reruns a committed batch in this process and reports whether it
//! equals what the job committed (see `sluice_executor::replay`).

use anyhow::Context;
use sluice_checkpoint::JobCheckpoint;
use std::path::PathBuf;

/// `uri` is the job's checkpoint or a driver's --state holding it under `jobs/<job>`.
pub async fn run(
    job: &str,
    uri: &str,
    batch: u64,
    out: Option<PathBuf>,
    as_json: bool,
) -> anyhow::Result<()> {
    let cp = checkpoint(job, uri).await?;
    let out = match out {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!(
            "sluice-replay-{job}-{batch}-{}",
            sluice_core::now_ms()
        )),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let out = std::path::absolute(&out)?;
    let report = sluice_executor::replay::replay(&cp, batch, &out.display().to_string())
        .await
        .map_err(|f| anyhow::anyhow!("cannot replay batch {batch} of job {job}: {f}"))?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "batch {} of job {} ({}), SQL revision {}, from {}",
            report.batch, report.job_id, report.name, report.revision, report.checkpoint
        );
        for input in &report.input {
            println!("  input      {input}");
        }
        println!("  watermark  {}", crate::event_time(report.watermark_ms));
        println!(
            "  replayed   {} rows in, {} rows out, into {}",
            report.rows_in, report.rows_out, report.out
        );
        for c in &report.checks {
            let verdict = match (c.compared, c.equal) {
                (false, _) => "-",
                (true, true) => "equal",
                (true, false) => "DIFFERENT",
            };
            println!("  {:<9}  {:<28}  {}", verdict, c.what, c.detail);
        }
    }
    anyhow::ensure!(
        report.matches(),
        "batch {batch} did not rerun to what was committed"
    );
    if !as_json {
        println!("batch {batch} reruns to exactly what was committed");
    }
    Ok(())
}

/// The job's checkpoint: `uri` itself when it holds the job's metadata, else `uri/jobs/<job>`.
async fn checkpoint(job: &str, uri: &str) -> anyhow::Result<JobCheckpoint> {
    let location = sluice_connectors::store::open(uri)?;
    let own = JobCheckpoint::new(
        location.store.clone(),
        location.prefix.clone(),
        location.uri.clone(),
    );
    if own.read_metadata().await?.is_some() {
        return Ok(own);
    }
    let prefix = location.child(&format!("jobs/{job}"));
    let job_uri = location.uri_of(&prefix);
    let cp = JobCheckpoint::new(location.store.clone(), prefix, job_uri);
    anyhow::ensure!(
        cp.read_metadata().await?.is_some(),
        "{uri} holds no checkpoint of job {job} (no metadata there or under jobs/{job})"
    );
    Ok(cp)
}
