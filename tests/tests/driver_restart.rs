//! The driver is SIGKILLed at each step of a batch and restarted on the same --state: it resumes
//! the job from its checkpoint, reruns the uncommitted batch with its logged input, and the
//! output equals an uninterrupted run, batch by batch and row by row.

use serde_json::Value;
use sluice_cluster_tests::{Cluster, committed_jsonl};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

fn job(c: &Cluster, extra: &str) -> String {
    format!(
        "SET 'trigger' = 'available_now';
SET 'partitions' = '3';
{extra}
CREATE TABLE g (k BIGINT, v BIGINT)
  WITH (connector = 'datagen', rows_per_second = '3000', total_rows = '12000', splits = '4', seed = '11',
        'fields.k.max' = '99', 'fields.v.max' = '500');
CREATE TABLE o (batch BIGINT, k BIGINT, n BIGINT, total BIGINT)
  WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT _batch, k, count(*), sum(v) FROM g GROUP BY _batch, k;
",
        c.path("out").display()
    )
}

type Rows = BTreeMap<u64, BTreeSet<String>>;

fn rows(c: &Cluster) -> Rows {
    committed_jsonl(&c.path("out"))
        .into_iter()
        .map(|(b, rows)| (b, rows.iter().map(Value::to_string).collect()))
        .collect()
}

fn reference() -> &'static Rows {
    static REFERENCE: OnceLock<Rows> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let c = Cluster::start(2);
        let id = c.submit(&job(&c, "")).unwrap();
        let s = c.wait_for(&id, &["finished", "failed"], LONG);
        assert_eq!(s["state"], "finished", "{s}");
        let r = rows(&c);
        assert_eq!(r.len(), 4);
        r
    })
}

/// Kills the driver once the log shows `needles`, restarts it, and checks the result.
/// `rerun`: whether batch 1 was logged but not committed at the kill, so it must run again.
fn kill_driver_when(extra: &str, needles: &[&str], rerun: bool) {
    reference();
    let mut c = Cluster::start(2);
    let id = c.submit(&job(&c, extra)).unwrap();
    c.wait_for_log("driver.log", needles, 1, LONG);
    c.kill_driver();
    c.start_driver();
    c.wait_for_driver();
    let s = c.wait_for(&id, &["finished", "failed"], LONG);
    assert_eq!(
        s["state"],
        "finished",
        "{s}\ndriver log:\n{}",
        c.log("driver.log")
    );
    assert_eq!(s["batches_committed"], 4, "{s}");
    assert_eq!(
        &rows(&c),
        reference(),
        "output differs from the uninterrupted run"
    );
    let log = c.log("driver.log");
    assert!(log.contains("resuming job"));
    assert_eq!(log.contains("rerunning uncommitted batch"), rerun, "{log}");
    if rerun {
        assert!(
            log.lines()
                .any(|l| l.contains("rerunning uncommitted batch") && l.contains("batch=1"))
        );
    }
}

#[test]
fn killed_before_the_offsets_are_written() {
    kill_driver_when(
        "SET 'sluice.test.pause_at' = 'before_offsets:1:2s';",
        &["test pause", "step=\"before_offsets\"", "batch=1"],
        false,
    );
}

#[test]
fn killed_after_the_offsets_before_any_task() {
    kill_driver_when(
        "SET 'sluice.test.pause_at' = 'before_tasks:1:2s';",
        &["test pause", "step=\"before_tasks\"", "batch=1"],
        true,
    );
}

#[test]
fn killed_while_tasks_run() {
    kill_driver_when(
        "SET 'sluice.test.delay_after_input' = '1:2s';",
        &["stage started", "batch=1 ", "stage=1 "],
        true,
    );
}

#[test]
fn killed_after_the_tasks_before_the_commit() {
    kill_driver_when(
        "SET 'sluice.test.pause_at' = 'before_commit:1:2s';",
        &["test pause", "step=\"before_commit\"", "batch=1"],
        true,
    );
}

#[test]
fn killed_right_after_the_commit() {
    kill_driver_when(
        "SET 'sluice.test.pause_at' = 'after_commit:1:2s';",
        &["test pause", "step=\"after_commit\"", "batch=1"],
        false,
    );
}

#[test]
fn a_finished_job_is_not_rerun_after_a_restart() {
    let mut c = Cluster::start(1);
    let id = c.submit(&job(&c, "")).unwrap();
    c.wait_for(&id, &["finished"], LONG);
    c.kill_driver();
    c.start_driver();
    c.wait_for_driver();
    let s = c.status(&id).unwrap();
    assert_eq!(s["state"], "finished");
    assert_eq!(s["batches_committed"], 4);
    assert!(!c.log("driver.log").contains("resuming job"));
}
