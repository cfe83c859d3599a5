//! A join of two streams on a real cluster: impressions and clicks arrive out of order, one
//! file of each per batch; every pair the interval condition matches comes out exactly once,
//! through an executor SIGKILL during the join stage and a driver SIGKILL before a commit.

use sluice_cluster_tests::{Cluster, committed_jsonl, wait_finished};
use std::path::Path;

/// 2025-01-01T00:00:00Z in seconds.
const BASE: i64 = 1_735_689_600;
const BATCHES: i64 = 5;
const REACH: i64 = 10;

/// (ad, seconds after BASE) rows of one table.
type Rows = Vec<(i64, i64)>;

/// Batch `b`'s impressions and clicks: out of order within a batch, never so late that the
/// 20 s watermark delay drops them.
fn rows(b: i64) -> (Rows, Rows) {
    let imps = (0..6).map(|k| (k % 3, b * 15 + (k * 7) % 13)).collect();
    let clicks = (0..6).map(|k| (k % 3, b * 15 + (k * 5) % 17 + 2)).collect();
    (imps, clicks)
}

fn write(dir: &Path, b: i64, rows: &[(i64, i64)]) {
    std::fs::create_dir_all(dir).unwrap();
    let text: String = rows
        .iter()
        .map(|(ad, s)| {
            format!(
                "{{\"ad\": {ad}, \"ts\": \"2025-01-01T00:{:02}:{:02}\"}}\n",
                s / 60,
                s % 60
            )
        })
        .collect();
    let tmp = dir.join(format!(".{b}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(format!("in-{b}.jsonl"))).unwrap();
}

fn job(c: &Cluster, extra: &str) -> String {
    for b in 0..BATCHES {
        let (imps, clicks) = rows(b);
        write(&c.path("imps"), b, &imps);
        write(&c.path("clicks"), b, &clicks);
    }
    let table = |name: &str| {
        format!(
            "CREATE TABLE {name} (ad BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '20' SECOND)
  WITH (connector = 'files', path = 'file://{}', format = 'jsonl', max_files_per_batch = '1');",
            c.path(name).display()
        )
    };
    format!(
        "SET 'trigger' = 'available_now';
SET 'partitions' = '2';
SET 'task.backoff' = '50ms';
{extra}
{}
{}
CREATE TABLE out (ad BIGINT, i BIGINT, c BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO out SELECT i.ad, to_unixtime(i.ts), to_unixtime(c.ts) FROM imps i JOIN clicks c
  ON i.ad = c.ad AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '{REACH}' SECOND;
",
        table("imps"),
        table("clicks"),
        c.path("out").display()
    )
}

/// Every matching pair, by brute force over all rows.
fn expected() -> Vec<(i64, i64, i64)> {
    let (mut imps, mut clicks) = (Vec::new(), Vec::new());
    for b in 0..BATCHES {
        let (i, c) = rows(b);
        imps.extend(i);
        clicks.extend(c);
    }
    let mut pairs = Vec::new();
    for (ad, i) in &imps {
        for (cad, c) in &clicks {
            if ad == cad && c >= i && *c <= i + REACH {
                pairs.push((*ad, BASE + i, BASE + c));
            }
        }
    }
    pairs.sort_unstable();
    pairs
}

fn check(c: &Cluster, id: &str) {
    let s = wait_finished(c, id);
    let mut got: Vec<(i64, i64, i64)> = committed_jsonl(&c.path("out"))
        .into_values()
        .flatten()
        .map(|r| {
            let v = |k: &str| r[k].as_i64().unwrap();
            (v("ad"), v("i"), v("c"))
        })
        .collect();
    got.sort_unstable();
    let want = expected();
    assert!(want.len() > 20, "the data has pairs to find: {want:?}");
    assert_eq!(got, want, "every matching pair exactly once: {s}");
    // The watermark evicted what can no longer match: the state holds only recent rows.
    let last = s["recent_batches"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let held = last["metrics"]["join-2.left.state_rows"]
        .as_i64()
        .unwrap_or(0)
        + last["metrics"]["join-2.right.state_rows"]
            .as_i64()
            .unwrap_or(0);
    assert!(
        held < 2 * 6 * 3,
        "state is bounded by the watermark: {last}"
    );
}

#[test]
fn an_interval_join_emits_every_pair_once() {
    let c = Cluster::start(2);
    let id = c.submit(&job(&c, "")).unwrap();
    check(&c, &id);
    let text = String::from_utf8(c.sluice(&["status", &id]).stdout).unwrap();
    assert!(text.contains("join-2.left"), "{text}");
    let job_checkpoint = format!("{}/jobs/{id}", c.state_uri());
    let inspect = c.sluice(&["checkpoint", "inspect", &job_checkpoint]);
    let inspect = String::from_utf8(inspect.stdout).unwrap();
    assert!(inspect.contains("left side:"), "{inspect}");
}

#[test]
fn an_interval_join_stays_exact_through_an_executor_kill() {
    let mut c = Cluster::start(3);
    let id = c
        .submit(&job(&c, "SET 'sluice.test.delay_task' = '2:1500ms';"))
        .unwrap();
    c.wait_for_running_stage(&id, 2, 2);
    c.kill_executor(0);
    check(&c, &id);
}

#[test]
fn an_interval_join_stays_exact_through_a_driver_and_executor_kill() {
    let mut c = Cluster::start(2);
    let id = c
        .submit(&job(
            &c,
            "SET 'sluice.test.pause_at' = 'before_commit:2:3s';",
        ))
        .unwrap();
    c.crash_driver_at("before_commit", 2, 0);
    check(&c, &id);
}
