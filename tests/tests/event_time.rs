//! Event time on a real cluster: every batch logs, before its tasks run, the watermark computed
//! from the batches committed before it (each source's largest event time minus its delay), and
//! a batch rerun after a driver crash uses exactly the watermark it logged.

use serde_json::Value;
use sluice_cluster_tests::{Cluster, wait_finished, write_event_files};

/// 2025-01-01T00:00:00Z in ms.
const BASE_MS: i64 = 1_735_689_600_000;
/// Per input file (one per batch), the seconds after BASE of its events: out of order within
/// a file and across files.
const FILES: [&[i64]; 4] = [&[5, 30, 12], &[20, 3], &[45, 60, 1], &[50, 55]];

fn write_inputs(c: &Cluster) {
    write_event_files(&c.path("in"), &FILES);
}

fn job(c: &Cluster, extra: &str) -> String {
    format!(
        "SET 'trigger' = 'available_now';
{extra}
CREATE TABLE clicks (user_id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '10' SECOND)
  WITH (connector = 'files', path = 'file://{}', format = 'jsonl', max_files_per_batch = '1');
CREATE TABLE out (batch BIGINT, n BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO out SELECT _batch, count(*) FROM clicks GROUP BY _batch;
",
        c.path("in").display(),
        c.path("out").display()
    )
}

/// What batch N must log: the largest event time of batches before it, minus 10 s.
fn expected_watermarks() -> Vec<Option<i64>> {
    let mut max: Option<i64> = None;
    let mut out = Vec::new();
    for secs in FILES {
        out.push(max.map(|m| BASE_MS + (m - 10) * 1000));
        let top = *secs.iter().max().unwrap();
        max = Some(max.map_or(top, |m| m.max(top)));
    }
    out
}

/// Each batch's logged watermark, read from the checkpoint by `sluice checkpoint inspect`.
fn logged_watermarks(c: &Cluster) -> Vec<Option<i64>> {
    let uri = c.state_uri();
    let out = c.sluice(&["checkpoint", "inspect", &uri, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    all[0]["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["watermark_ms"].as_i64())
        .collect()
}

fn check(c: &Cluster, id: &str) -> Value {
    let s = wait_finished(c, id);
    assert_eq!(s["batches_committed"], 4, "{s}");
    let want = expected_watermarks();
    assert_eq!(want[1], Some(BASE_MS + 20_000));
    assert_eq!(logged_watermarks(c), want);
    s
}

#[test]
fn each_batch_logs_the_watermark_of_the_batches_before_it() {
    let c = Cluster::start(2);
    write_inputs(&c);
    let id = c.submit(&job(&c, "")).unwrap();
    let s = check(&c, &id);
    // The status shows each batch's watermark and the largest event time it read.
    let want = expected_watermarks();
    for (n, b) in s["recent_batches"].as_array().unwrap().iter().enumerate() {
        assert_eq!(b["watermark_ms"].as_i64(), want[n], "batch {n}: {b}");
        let top = FILES[n].iter().max().unwrap();
        assert_eq!(
            b["metrics"]["clicks.ts.max"].as_i64(),
            Some(BASE_MS + top * 1000)
        );
    }
    let text = String::from_utf8(c.sluice(&["status", &id]).stdout).unwrap();
    assert!(
        text.contains("WATERMARK") && text.contains("2025-01-01T00:00:20"),
        "{text}"
    );
}

#[test]
fn a_batch_rerun_after_a_driver_crash_uses_its_logged_watermark() {
    let mut c = Cluster::start(2);
    write_inputs(&c);
    let id = c
        .submit(&job(
            &c,
            "SET 'sluice.test.pause_at' = 'before_tasks:2:3s';",
        ))
        .unwrap();
    c.crash_driver_at("before_tasks", 2, 0);
    check(&c, &id);
}

#[test]
fn a_driver_crash_after_a_commit_recovers_the_event_times_it_committed() {
    let mut c = Cluster::start(2);
    write_inputs(&c);
    let id = c
        .submit(&job(
            &c,
            "SET 'sluice.test.pause_at' = 'after_commit:2:3s';",
        ))
        .unwrap();
    c.crash_driver_at("after_commit", 2, 1);
    check(&c, &id);
}

/// A union of two event-time sources (`a` with three files, `b` with `b_files`), each reading
/// one file per batch, under `policy`; returns the logged watermarks, in seconds after BASE.
fn two_sources(policy: &str, b_files: &[&[i64]]) -> Vec<Option<i64>> {
    let c = Cluster::start(2);
    write_event_files(&c.path("a"), &[&[10], &[20], &[30]]);
    write_event_files(&c.path("b"), b_files);
    let table = |name: &str| {
        format!(
            "CREATE TABLE {name} (user_id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
  WITH (connector = 'files', path = 'file://{}', format = 'jsonl', max_files_per_batch = '1');",
            c.path(name).display()
        )
    };
    let sql = format!(
        "SET 'trigger' = 'available_now';
SET 'watermark.policy' = '{policy}';
{}
{}
CREATE TABLE out (batch BIGINT, n BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO out SELECT _batch, count(*) FROM (SELECT _batch, user_id FROM a UNION ALL SELECT _batch, user_id FROM b) GROUP BY _batch;
",
        table("a"),
        table("b"),
        c.path("out").display()
    );
    let id = c.submit(&sql).unwrap();
    let s = wait_finished(&c, &id);
    assert_eq!(s["batches_committed"], 3, "{s}");
    logged_watermarks(&c)
        .into_iter()
        .map(|w| w.map(|ms| (ms - BASE_MS) / 1000))
        .collect()
}

#[test]
fn two_sources_under_the_min_and_the_max_policy() {
    // b's one file holds a later event than any of a's.
    let b: &[&[i64]] = &[&[50]];
    assert_eq!(
        two_sources("min", b),
        [None, Some(10), Some(20)],
        "the slower source"
    );
    assert_eq!(
        two_sources("max", b),
        [None, Some(50), Some(50)],
        "the faster source"
    );
    // A source without any row holds the watermark under min; max goes on without it.
    assert_eq!(two_sources("min", &[]), [None, None, None]);
    assert_eq!(two_sources("max", &[]), [None, Some(10), Some(20)]);
}
