//! Bad input and bad settings, tried as a new user would: each fails its own job fast, with an
//! error naming what and where, and a healthy job running beside it keeps committing.

use serde_json::Value;
use sluice_cluster_tests::Cluster;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// A job that commits a batch every 200 ms for as long as it runs.
fn healthy_job(c: &Cluster) -> String {
    c.submit(
        "SET 'name' = 'healthy';
SET 'trigger' = '200ms';
CREATE TABLE gen (user_id BIGINT, page TEXT)
  WITH (connector = 'datagen', rows_per_second = '500', seed = '3', splits = '2');
CREATE TABLE sink WITH (connector = 'blackhole');
INSERT INTO sink SELECT _batch, page, count(*) FROM gen GROUP BY _batch, page;",
    )
    .expect("submit the healthy job")
}

fn committed(s: &Value) -> u64 {
    s["batches_committed"].as_u64().unwrap_or(0)
}

/// Waits until `job` committed `more` batches beyond what it has now.
fn keeps_committing(c: &Cluster, job: &str, more: u64) {
    let start = committed(&c.status(job).expect("status"));
    let s = c.wait_until(job, LONG, |s| committed(s) >= start + more);
    assert_eq!(s["state"], "running", "{s}");
}

fn input_file(c: &Cluster, dir: &str, name: &str, text: &str) -> String {
    let dir = c.path(dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
    dir.display().to_string()
}

#[test]
fn a_division_by_zero_fails_its_job_at_once_without_restarts_or_exclusions() {
    let c = Cluster::start(2);
    let healthy = healthy_job(&c);
    let input = input_file(
        &c,
        "in",
        "in-0.jsonl",
        "{\"a\": 6, \"b\": 3}\n{\"a\": 1, \"b\": 0}\n",
    );
    let bad = c
        .submit(&format!(
            "SET 'trigger' = '100ms';
CREATE TABLE src (a BIGINT, b BIGINT) WITH (connector = 'files', path = '{input}');
CREATE TABLE out WITH (connector = 'files', path = '{}');
INSERT INTO out SELECT a / b AS q FROM src;",
            c.path("out").display()
        ))
        .expect("submit");
    let s = c.wait_for(&bad, &["failed"], LONG);
    let error = s["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("Divide by zero") && error.contains("bad input; a retry cannot help"),
        "{s}"
    );
    assert_eq!(s["restarts"].as_u64().unwrap_or(0), 0, "{s}");
    // One attempt, on one executor: no retries, nobody excluded.
    let tries = c.log("driver.log").matches("task failed, retrying").count();
    assert_eq!(tries, 0, "{}", c.log("driver.log"));
    keeps_committing(&c, &healthy, 3);
    let h = c.status(&healthy).unwrap();
    assert_eq!(h["excluded_executors"], Value::Array(vec![]), "{h}");
    assert!(!c.path("out/batch=0/_SUCCESS").exists());
}
