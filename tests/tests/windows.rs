//! Event-time windows on a real cluster: append mode emits every closed window exactly once
//! with its exact count, drops and counts late rows (and writes them to the late-rows table),
//! and closes the last windows with a batch without input; through executor and driver
//! SIGKILLs too.

use serde_json::Value;
use sluice_cluster_tests::{Cluster, committed_jsonl, wait_finished, write_event_files};
use std::collections::BTreeMap;

/// 2025-01-01T00:00:00Z in seconds.
const BASE: i64 = 1_735_689_600;
/// Seconds after BASE of each file's events (one file per batch), out of order.
const FILES: [&[i64]; 4] = [
    &[1, 12, 7, 25],
    &[18, 3, 31, 22],
    &[40, 28, 15, 44],
    &[33, 52, 47],
];
const WINDOW: i64 = 10;
const DELAY: i64 = 5;

fn write_inputs(c: &Cluster) {
    write_event_files(&c.path("in"), &FILES);
}

fn job(c: &Cluster, extra: &str) -> String {
    format!(
        "SET 'trigger' = 'available_now';
SET 'output_mode' = 'append';
SET 'partitions' = '2';
SET 'task.backoff' = '50ms';
SET 'late_rows.table' = 'late';
{extra}
CREATE TABLE clicks (user_id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '{DELAY}' SECOND)
  WITH (connector = 'files', path = 'file://{}', format = 'jsonl', max_files_per_batch = '1');
CREATE TABLE out (ws BIGINT, n BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
CREATE TABLE late WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO out SELECT to_unixtime(window_start), count(*) FROM TUMBLE(clicks, ts, INTERVAL '{WINDOW}' SECOND) GROUP BY window_start, window_end;
",
        c.path("in").display(),
        c.path("out").display(),
        c.path("late").display()
    )
}

/// Windows (start -> count) emitted, per batch.
type Emitted = BTreeMap<u64, BTreeMap<i64, i64>>;

/// What Spark's semantics give for FILES: per batch, the windows it emits and its late rows;
/// a final batch without input closes what the watermark passed.
fn expected() -> (Emitted, BTreeMap<u64, i64>) {
    let (mut max, mut late) = (None::<i64>, BTreeMap::new());
    let mut open: BTreeMap<i64, i64> = BTreeMap::new();
    let mut emitted = BTreeMap::new();
    let batches: Vec<&[i64]> = FILES.iter().copied().chain([&[][..]]).collect();
    for (b, secs) in batches.iter().enumerate() {
        let wm = max.map(|m| m - DELAY);
        for s in *secs {
            let start = s - s.rem_euclid(WINDOW);
            match wm {
                Some(wm) if start + WINDOW <= wm => *late.entry(b as u64).or_default() += 1,
                _ => *open.entry(start).or_default() += 1,
            }
        }
        let closed: BTreeMap<i64, i64> = open
            .iter()
            .filter(|(start, _)| wm.is_some_and(|wm| **start + WINDOW <= wm))
            .map(|(s, n)| (BASE + s, *n))
            .collect();
        open.retain(|start, _| !closed.contains_key(&(BASE + start)));
        if !closed.is_empty() {
            emitted.insert(b as u64, closed);
        }
        max = secs.iter().copied().chain(max).max();
    }
    (emitted, late)
}

fn emitted(c: &Cluster) -> Emitted {
    committed_jsonl(&c.path("out"))
        .into_iter()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(b, rows)| {
            let windows = rows
                .iter()
                .map(|r| (r["ws"].as_i64().unwrap(), r["n"].as_i64().unwrap()))
                .collect();
            (b, windows)
        })
        .collect()
}

fn check(c: &Cluster, id: &str) -> Value {
    let s = wait_finished(c, id);
    let (want, late) = expected();
    assert_eq!(
        s["batches_committed"], 5,
        "four with input, one to close windows: {s}"
    );
    assert_eq!(emitted(c), want);
    // Every late row once, in the batch that dropped it, with the window it was late for.
    let written: BTreeMap<u64, i64> = committed_jsonl(&c.path("late"))
        .into_iter()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(b, rows)| {
            assert!(rows.iter().all(|r| r["window_end"].is_string()), "{rows:?}");
            (b, rows.len() as i64)
        })
        .collect();
    assert_eq!(written, late);
    // Late rows are dropped and counted, per batch (of those this driver ran).
    for b in s["recent_batches"].as_array().unwrap() {
        let n = b["batch_id"].as_u64().unwrap();
        let seen = b["metrics"]["agg-1.late_rows"].as_i64().unwrap_or(0);
        assert_eq!(seen, late.get(&n).copied().unwrap_or(0), "batch {n}: {b}");
    }
    s
}

#[test]
fn append_mode_emits_each_window_once_when_the_watermark_passes_it() {
    let (want, late) = expected();
    assert_eq!(
        late,
        BTreeMap::from([(1, 2), (2, 1)]),
        "rows 18 and 3, then 15, arrive after their windows closed"
    );
    assert!(
        want.contains_key(&4),
        "the batch without input closes windows: {want:?}"
    );
    let c = Cluster::start(2);
    write_inputs(&c);
    let id = c.submit(&job(&c, "")).unwrap();
    let s = check(&c, &id);
    // What `sluice status` shows of event time: late rows per batch; for the last batch the
    // latest event time read, and each windowed operator's open windows and late rows.
    let last = s["recent_batches"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        last["max_event_ms"],
        serde_json::json!({}),
        "no input: {last}"
    );
    assert_eq!(
        last["metrics"]["agg-1.open_windows"], 2,
        "[40, 50) and [50, 60) wait: {last}"
    );
    let batch_3 = &s["recent_batches"][3];
    assert_eq!(
        batch_3["max_event_ms"]["clicks"],
        (BASE + 52) * 1000,
        "{batch_3}"
    );
    let text = String::from_utf8(c.sluice(&["status", &id]).stdout).unwrap();
    for line in [
        "2 late rows dropped",
        "event time, batch 4",
        "agg-1                2 open windows, 0 late rows, 2 state rows",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
}

#[test]
fn windows_stay_exact_through_an_executor_kill() {
    let mut c = Cluster::start(3);
    write_inputs(&c);
    let id = c
        .submit(&job(&c, "SET 'sluice.test.delay_task' = '1:1500ms';"))
        .unwrap();
    c.wait_for_running_stage(&id, 2, 1);
    c.kill_executor(0);
    check(&c, &id);
}

#[test]
fn windows_stay_exact_through_a_driver_and_executor_kill() {
    let mut c = Cluster::start(2);
    write_inputs(&c);
    let id = c
        .submit(&job(
            &c,
            "SET 'sluice.test.pause_at' = 'before_commit:2:3s';",
        ))
        .unwrap();
    c.crash_driver_at("before_commit", 2, 0);
    check(&c, &id);
}

/// A job run on a schedule with `trigger = 'once'`, resumed each time: every run is one batch,
/// the watermark carries over between runs, and a run without new files still closes what the
/// last run's events moved the watermark past.
#[test]
fn trigger_once_runs_resumed_one_batch_each_close_windows_exactly() {
    let c = Cluster::start(2);
    let sql = job(&c, "")
        .replace("'available_now'", "'once'")
        .replace(", max_files_per_batch = '1'", "");
    let window = |b: u64| {
        let e = emitted(&c);
        e.get(&b).cloned().unwrap_or_default()
    };
    write_event_files(&c.path("in"), &FILES[..2]);
    let id = c.submit(&sql).unwrap();
    let s = wait_finished(&c, &id);
    assert_eq!(s["batches_committed"], 1, "{s}");
    assert!(emitted(&c).is_empty(), "no watermark in the first batch");
    // The next run reads the third file under the watermark 31 - 5 = 26 s.
    write_event_files(&c.path("next"), &FILES[2..3]);
    std::fs::rename(c.path("next/in-0.jsonl"), c.path("in/in-2.jsonl")).unwrap();
    let id = c.submit_with(&sql, &["--resume", &id]).unwrap();
    let s = wait_finished(&c, &id);
    let last = |s: &Value| {
        s["recent_batches"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone()
    };
    assert_eq!(last(&s)["batch_id"], 1, "one batch more: {s}");
    assert_eq!(last(&s)["watermark_ms"], (BASE + 26) * 1000);
    assert_eq!(
        last(&s)["metrics"]["agg-1.late_rows"],
        1,
        "15 s, for [10, 20)"
    );
    assert_eq!(window(1), BTreeMap::from([(BASE, 3), (BASE + 10, 2)]));
    // No new file: one batch without input under 44 - 5 = 39 s closes [20, 30).
    let id = c.submit_with(&sql, &["--resume", &id]).unwrap();
    let s = wait_finished(&c, &id);
    assert_eq!(last(&s)["batch_id"], 2, "one batch more: {s}");
    assert_eq!(last(&s)["rows_in"], 0, "{s}");
    assert_eq!(window(2), BTreeMap::from([(BASE + 20, 3)]));
    assert_eq!(emitted(&c).len(), 2, "nothing else emitted");
}
