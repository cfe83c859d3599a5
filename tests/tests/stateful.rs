//! Running aggregations (GROUP BY without _batch) on a real cluster: per-key state across
//! batches on the executors, made durable in the checkpoint, restored on survivors after an
//! executor dies and after the driver restarts. Every run's output is compared, batch by
//! batch and key by key, with totals computed from an independent per-batch job.

use serde_json::Value;
use sluice_cluster_tests::{Cluster, S3Server, committed_jsonl, run_to_end, wait_finished};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(120);

const SOURCE: &str = "CREATE TABLE g (k BIGINT, v BIGINT)
  WITH (connector = 'datagen', rows_per_second = '4000', total_rows = '16000', splits = '4', seed = '5',
        'fields.k.max' = '149', 'fields.v.min' = '-100', 'fields.v.max' = '1000');";

/// (count, sum, max) per key.
type Totals = BTreeMap<i64, (i64, i64, i64)>;
/// What each batch emits: key -> totals so far.
type Emitted = BTreeMap<u64, Totals>;

fn running_job(c: &Cluster, extra: &str) -> String {
    format!(
        "SET 'trigger' = 'available_now';
SET 'partitions' = '4';
SET 'task.backoff' = '50ms';
{extra}
{SOURCE}
CREATE TABLE o (k BIGINT, n BIGINT, total BIGINT, top BIGINT)
  WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT k, count(*), sum(v), max(v) FROM g WHERE k % 5 <> 2 GROUP BY k;
",
        c.path("out").display()
    )
}

/// Per-batch counts from a stateless job, accumulated: what update mode must emit per batch
/// (the keys a batch touched, with their totals so far) and the final table.
fn reference() -> &'static (Emitted, Totals) {
    static REFERENCE: OnceLock<(Emitted, Totals)> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let c = Cluster::start(2);
        let sql = format!(
            "SET 'trigger' = 'available_now';
{SOURCE}
CREATE TABLE o (b BIGINT, k BIGINT, n BIGINT, total BIGINT, top BIGINT)
  WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT _batch, k, count(*), sum(v), max(v) FROM g WHERE k % 5 <> 2 GROUP BY _batch, k;
",
            c.path("out").display()
        );
        run_to_end(&c, &sql);
        let mut totals = Totals::new();
        let mut emitted = Emitted::new();
        for (b, rows) in committed_jsonl(&c.path("out")) {
            let mut touched = Totals::new();
            for r in rows {
                let k = r["k"].as_i64().unwrap();
                let t = totals.entry(k).or_insert((0, 0, i64::MIN));
                t.0 += r["n"].as_i64().unwrap();
                t.1 += r["total"].as_i64().unwrap();
                t.2 = t.2.max(r["top"].as_i64().unwrap());
                touched.insert(k, *t);
            }
            emitted.insert(b, touched);
        }
        assert_eq!(emitted.len(), 4, "four batches");
        assert!(totals.len() > 100, "about 120 keys");
        (emitted, totals)
    })
}

fn emitted(c: &Cluster) -> Emitted {
    committed_jsonl(&c.path("out"))
        .into_iter()
        .map(|(b, rows)| {
            let mut m = Totals::new();
            for r in rows {
                let k = r["k"].as_i64().unwrap();
                let t = (
                    r["n"].as_i64().unwrap(),
                    r["total"].as_i64().unwrap(),
                    r["top"].as_i64().unwrap(),
                );
                assert!(m.insert(k, t).is_none(), "key {k} twice in batch {b}");
            }
            (b, m)
        })
        .collect()
}

fn finish_and_compare(c: &Cluster, id: &str) -> Value {
    let s = wait_finished(c, id);
    assert_eq!(
        emitted(c),
        reference().0,
        "update-mode output differs from the accumulated per-batch counts"
    );
    s
}

fn restored_count(c: &Cluster, executors: usize) -> usize {
    (0..executors)
        .map(|i| {
            c.log(&format!("executor-{i}.log"))
                .matches("state restored from the checkpoint")
                .count()
        })
        .sum()
}

#[test]
fn update_mode_emits_each_batchs_keys_with_running_totals() {
    let c = Cluster::start(2);
    let id = c.submit(&running_job(&c, "")).unwrap();
    finish_and_compare(&c, &id);
    // Healthy executors keep their partitions' state in memory: nothing is restored.
    assert_eq!(restored_count(&c, 2), 0);
    // Every version is durable: a delta per partition per batch, snapshots on the interval.
    let state = c.path("state/jobs").join(&id).join("state/agg-1");
    for p in 0..4 {
        for b in 0..4 {
            assert!(
                state.join(format!("{p}/{b}.delta")).exists(),
                "partition {p} version {b}"
            );
        }
    }
    // `sluice checkpoint inspect` lists the state versions and their sizes.
    let uri = c.state_uri();
    let out = c.sluice(&["checkpoint", "inspect", &uri, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = all[0]["state"].as_array().unwrap();
    assert_eq!(parts.len(), 4, "{all}");
    for p in parts {
        assert_eq!(p["operator"], "agg-1");
        assert_eq!(p["latest_version"], 3);
        assert_eq!(p["files"].as_array().unwrap().len(), 4, "{p}");
        assert!(p["bytes"].as_u64().unwrap() > 0);
    }
    let human = c.sluice(&["checkpoint", "inspect", &uri]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("state       agg-1 partition 0: version 3,") && text.contains("deltas 0..3"),
        "{text}"
    );
}

#[test]
fn complete_mode_emits_the_whole_table_every_batch() {
    let c = Cluster::start(2);
    run_to_end(&c, &running_job(&c, "SET 'output_mode' = 'complete';"));
    let out = emitted(&c);
    let (per_batch, totals) = reference();
    let mut so_far = Totals::new();
    for (b, touched) in per_batch {
        so_far.extend(touched.iter().map(|(k, v)| (*k, *v)));
        assert_eq!(&out[b], &so_far, "batch {b}: the whole table so far");
    }
    assert_eq!(&so_far, totals);
}

#[test]
fn executor_killed_mid_batch_state_restored_on_survivors() {
    let mut c = Cluster::start(3);
    c.wait_for_registrations(3);
    // Batch 2's stateful tasks wait 1.5 s before they read input, so the kill lands mid-task.
    let id = c
        .submit(&running_job(
            &c,
            "SET 'sluice.test.delay_task' = '1:1500ms';",
        ))
        .unwrap();
    c.wait_until(&id, LONG, |s| s["batches_committed"].as_u64() >= Some(2));
    // The driver's model knows which executor holds each of the 4 state partitions.
    let held = |e: &Value| -> Vec<u64> {
        let all = e["executors"].as_array().unwrap().iter();
        let mut parts: Vec<u64> = all
            .flat_map(|x| x["state_partitions"].as_array().unwrap().clone())
            .filter(|p| p["job_id"] == id.as_str() && p["stage"] == 1)
            .map(|p| p["partition"].as_u64().unwrap())
            .collect();
        parts.sort();
        parts
    };
    assert_eq!(held(&c.executors().unwrap()), [0, 1, 2, 3]);
    c.kill_executor(0);
    let s = finish_and_compare(&c, &id);
    assert_eq!(s["batches_committed"], 4);
    assert!(
        restored_count(&c, 3) >= 1,
        "the dead executor's partitions were restored from the checkpoint"
    );
}

#[test]
fn driver_and_executor_killed_then_restarted_exact_totals() {
    driver_and_executor_killed(Cluster::start(2));
}

/// The driver dies at another step of batch 2, an executor with it; a fresh executor joins.
fn driver_killed_at(pause: &str, needles: &[&str], rerun: bool) {
    let mut c = Cluster::start(2);
    c.wait_for_registrations(2);
    let id = c.submit(&running_job(&c, pause)).unwrap();
    c.wait_for_log("driver.log", needles, 1, LONG);
    c.kill_driver();
    c.kill_executor(1);
    c.add_executor();
    c.start_driver();
    c.wait_for_driver();
    finish_and_compare(&c, &id);
    assert_eq!(
        c.log("driver.log").contains("rerunning uncommitted batch"),
        rerun
    );
}

#[test]
fn driver_killed_before_offsets_with_an_executor() {
    driver_killed_at(
        "SET 'sluice.test.pause_at' = 'before_offsets:2:3s';",
        &["test pause", "step=\"before_offsets\"", "batch=2"],
        false,
    );
}

#[test]
fn driver_killed_before_tasks_with_an_executor() {
    driver_killed_at(
        "SET 'sluice.test.pause_at' = 'before_tasks:2:3s';",
        &["test pause", "step=\"before_tasks\"", "batch=2"],
        true,
    );
}

#[test]
fn driver_killed_while_stateful_tasks_run_with_an_executor() {
    driver_killed_at(
        "SET 'sluice.test.delay_after_input' = '1:2s';",
        &["stage started", "batch=2 ", "stage=1 "],
        true,
    );
}

#[test]
fn driver_killed_after_commit_with_an_executor() {
    driver_killed_at(
        "SET 'sluice.test.pause_at' = 'after_commit:2:3s';",
        &["test pause", "step=\"after_commit\"", "batch=2"],
        false,
    );
}

#[test]
fn missing_state_file_fails_the_job_naming_it_and_keeps_committed_output() {
    let mut c = Cluster::start(2);
    let id = c
        .submit(&running_job(
            &c,
            "SET 'sluice.test.pause_at' = 'before_tasks:3:3s';\nSET 'restart.strategy' = 'none';",
        ))
        .unwrap();
    c.wait_for_log(
        "driver.log",
        &["test pause", "step=\"before_tasks\"", "batch=3"],
        1,
        LONG,
    );
    c.kill_executor(0);
    c.kill_executor(1);
    let state = c.path("state/jobs").join(&id).join("state/agg-1");
    std::fs::remove_file(state.join("0/1.delta")).unwrap();
    c.add_executor();
    let s = c.wait_for(&id, &["finished", "failed"], LONG);
    assert_eq!(s["state"], "failed", "{s}");
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains("state/agg-1/0")
            && error.contains("no snapshot with a complete chain of deltas"),
        "{error}"
    );
    // Batches 0-2 stay committed, exactly as the reference emitted them.
    let out = emitted(&c);
    assert_eq!(out.len(), 3);
    for (b, rows) in &out {
        assert_eq!(rows, &reference().0[b], "batch {b}");
    }
}

#[test]
fn driver_and_executor_killed_with_state_on_s3() {
    let s3 = S3Server::start("sluice-state");
    let mut c = Cluster::new();
    c.env = s3.env();
    c.state = Some(s3.uri(&format!("state-{}", sluice_cluster_tests::free_port())));
    driver_and_executor_killed(Cluster::start_with(c, 2));
}

/// The driver dies after batch 2's tasks ran (state version 2 written) but before its commit,
/// and an executor dies with it; the restarted driver reruns batch 2, which must start from
/// version 1 again, on a fresh executor that restores it from the checkpoint.
fn driver_and_executor_killed(mut c: Cluster) {
    // Both executors take part from the first batch, so each holds state partitions.
    c.wait_for_registrations(2);
    let id = c
        .submit(&running_job(
            &c,
            "SET 'sluice.test.pause_at' = 'before_commit:2:3s';\nSET 'state.snapshot_interval' = '2';",
        ))
        .unwrap();
    c.wait_for_log(
        "driver.log",
        &["test pause", "step=\"before_commit\"", "batch=2"],
        1,
        LONG,
    );
    c.kill_driver();
    c.kill_executor(0);
    c.add_executor();
    c.start_driver();
    c.wait_for_driver();
    finish_and_compare(&c, &id);
    assert!(c.log("driver.log").contains("rerunning uncommitted batch"));
    assert!(
        restored_count(&c, 3) >= 1,
        "driver:\n{}\nexecutor 2:\n{}",
        c.log("driver.log"),
        c.log("executor-2.log")
    );
}

#[test]
fn corrupted_snapshot_falls_back_to_an_older_one_plus_deltas() {
    let mut c = Cluster::start(2);
    // A snapshot after every batch, so version 2 can fall back to snapshot 1 plus delta 2.
    let id = c
        .submit(&running_job(
            &c,
            "SET 'state.snapshot_interval' = '1';\nSET 'state.snapshot_changed_percent' = '0';\nSET 'sluice.test.pause_at' = 'before_tasks:3:3s';",
        ))
        .unwrap();
    c.wait_for_log(
        "driver.log",
        &["test pause", "step=\"before_tasks\"", "batch=3"],
        1,
        LONG,
    );
    // Every executor dies, so batch 3 restores version 2 from the checkpoint, whose newest
    // snapshot is damaged in every partition.
    c.kill_executor(0);
    c.kill_executor(1);
    let state = c.path("state/jobs").join(&id).join("state/agg-1");
    for p in 0..4 {
        let snap = state.join(format!("{p}/2.snapshot"));
        // Snapshots are written in the background, after the batch committed.
        let deadline = Instant::now() + LONG;
        while !snap.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut bytes = std::fs::read(&snap).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x5a;
        std::fs::write(&snap, bytes).unwrap();
    }
    c.add_executor();
    c.add_executor();
    finish_and_compare(&c, &id);
    let logs: String = (2..4)
        .map(|i| c.log(&format!("executor-{i}.log")))
        .collect();
    assert!(
        logs.contains("2.snapshot is corrupted: checksum mismatch; trying an older snapshot"),
        "{logs}"
    );
}

#[test]
fn resubmission_continues_from_the_checkpoint_when_the_change_is_safe() {
    let c = Cluster::start(2);
    let id = c
        .submit(&running_job(
            &c,
            "SET 'sluice.test.pause_at' = 'after_commit:1:3s';",
        ))
        .unwrap();
    c.wait_for_log(
        "driver.log",
        &["test pause", "step=\"after_commit\"", "batch=1"],
        1,
        LONG,
    );
    let resume = ["--resume", id.as_str()];
    let e = c.submit_with(&running_job(&c, ""), &resume).unwrap_err();
    assert!(e.to_string().contains("stop it first"), "{e}");
    assert!(c.sluice(&["stop", &id]).status.success());
    c.wait_for(&id, &["stopped"], LONG);
    // Unsafe: another GROUP BY key; the job stays stopped and its checkpoint untouched.
    let regrouped = running_job(&c, "").replace("GROUP BY k", "GROUP BY v");
    let regrouped = regrouped.replace("SELECT k,", "SELECT v,");
    let e = c.submit_with(&regrouped, &resume).unwrap_err().to_string();
    assert!(
        e.contains("GROUP BY keys changed from [g.k] to [g.v]"),
        "{e}"
    );
    assert_eq!(c.status(&id).unwrap()["state"], "stopped");
    // Safe: a new filter upstream of the state (one that keeps every row, so the totals can
    // be compared with the reference).
    let filtered =
        running_job(&c, "").replace("WHERE k % 5 <> 2", "WHERE k % 5 <> 2 AND v > -5000");
    assert_eq!(c.submit_with(&filtered, &resume).unwrap(), id);
    let s = finish_and_compare(&c, &id);
    assert_eq!(s["batches_committed"], 4, "{s}");
    assert!(c.log("driver.log").contains("job resumed with new SQL"));
}

#[test]
fn state_writes_failing_a_fifth_of_the_time_never_commit_a_broken_batch() {
    let mut c = Cluster::new();
    // Driver and executors alike: log entries, sink files and state files fail at random.
    c.env = vec![("SLUICE_TEST_STORE_FAULTS".into(), "put=0.2,seed=9".into())];
    let c = Cluster::start_with(c, 2);
    let sql = running_job(
        &c,
        "SET 'task.max_attempts' = '10';
SET 'task.backoff' = '20ms';
SET 'state.snapshot_interval' = '2';
SET 'restart.strategy' = 'fixed-delay';
SET 'restart.attempts' = '100';
SET 'restart.delay' = '100ms';",
    );
    let id = (0..20)
        .find_map(|_| c.submit(&sql).ok())
        .expect("a submission got through");
    finish_and_compare(&c, &id);
    let failed_state_writes: usize = (0..2)
        .map(|i| {
            c.log(&format!("executor-{i}.log"))
                .lines()
                .filter(|l| l.contains("injected write failure") && l.contains("state/agg-1/"))
                .count()
        })
        .sum();
    assert!(failed_state_writes > 0, "some state writes were failed");
}
