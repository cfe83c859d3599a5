//! Executors die (SIGKILL), hang (SIGSTOP past the heartbeat timeout) or fail every task, at
//! chosen moments of a batch; the output must equal an undisturbed run of the same job, row
//! for row.

use serde_json::Value;
use sluice_cluster_tests::{
    BatchRows, Cluster, attempts, committed_rows, events, run_to_end, wait_finished,
};
use std::sync::OnceLock;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);
const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

/// 4 batches of 4000 generated rows, 6 map tasks each, a hash shuffle into 4 reducers.
fn job(c: &Cluster, extra: &str) -> String {
    format!(
        "SET 'trigger' = 'available_now';
SET 'partitions' = '4';
SET 'task.backoff' = '50ms';
{extra}
CREATE TABLE g (k BIGINT, v BIGINT)
  WITH (connector = 'datagen', rows_per_second = '4000', total_rows = '16000', splits = '6', seed = '3',
        'fields.k.max' = '199', 'fields.v.min' = '-1000', 'fields.v.max' = '1000');
CREATE TABLE o (batch BIGINT, k BIGINT, n BIGINT, total BIGINT, low BIGINT)
  WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT _batch, k, count(*), sum(v), min(v) FROM g WHERE k % 7 <> 3 GROUP BY _batch, k;
",
        c.path("out").display()
    )
}

fn reference() -> &'static BatchRows {
    static REFERENCE: OnceLock<BatchRows> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let c = Cluster::start(2);
        run_to_end(&c, &job(&c, ""));
        let r = committed_rows(&c.path("out"));
        assert_eq!(r.len(), 4);
        assert!(
            r.values().all(|b| b.len() > 150),
            "about 171 keys per batch"
        );
        r
    })
}

/// Runs `job` to the end and checks its output against the reference; returns its status.
fn finish_and_compare(c: &Cluster, id: &str) -> Value {
    let s = wait_finished(c, id);
    assert_eq!(
        &committed_rows(&c.path("out")),
        reference(),
        "output differs from the undisturbed run"
    );
    s
}

fn batches_with(s: &Value, what: &str) -> Vec<Value> {
    s["recent_batches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["rerun"][what].as_u64().unwrap_or(0) > 0)
        .cloned()
        .collect()
}

fn kill_at(stage: u64, switch: &str, after: Duration) {
    reference();
    let mut c = Cluster::start(3);
    let id = c.submit(&job(&c, switch)).unwrap();
    c.wait_for_running_stage(&id, 1, stage);
    std::thread::sleep(after);
    c.kill_executor(0);
    let s = finish_and_compare(&c, &id);
    check_the_model_shows_the_loss(&c, &id);
    let lost = batches_with(&s, "executor_lost");
    assert_eq!(lost.len(), 1, "one batch recovered: {s}");
    assert_eq!(lost[0]["batch_id"], 1);
    assert!(lost[0]["recovery_ms"].as_u64().unwrap() > 0);
    let status = String::from_utf8(c.sluice(&["status", &id]).stdout).unwrap();
    assert!(
        status.contains("executor lost") && status.contains("recovered in"),
        "{status}"
    );
}

/// The driver's model of batch 1 names the killed executor: its attempts ended `lost` (or
/// its map outputs were recomputed), and each reran elsewhere for that reason.
fn check_the_model_shows_the_loss(c: &Cluster, id: &str) {
    let lost = events(&c.executors().unwrap(), "lost");
    assert_eq!(lost.len(), 1, "one executor lost");
    let b = c.batch(id, 1).unwrap();
    assert_eq!(b["outcome"], "committed", "{b}");
    let all = attempts(&b);
    let reruns: Vec<_> = all
        .iter()
        .filter(|(_, _, a)| a["cause"] == "executor_lost" || a["cause"] == "output_lost")
        .collect();
    assert!(!reruns.is_empty(), "reruns caused by the loss: {b}");
    for (stage, p, a) in &reruns {
        assert_ne!(
            a["executor_id"],
            lost[0].as_str(),
            "{stage}.{p} reran elsewhere"
        );
        assert_eq!(a["outcome"], "succeeded");
        let before = all
            .iter()
            .filter(|(s, q, x)| (s, q) == (stage, p) && x["executor_id"] == lost[0].as_str());
        assert!(
            before.count() > 0,
            "{stage}.{p} ran on the lost executor first: {b}"
        );
    }
    let lost_running = all.iter().filter(|(_, _, a)| a["outcome"] == "lost");
    for (_, _, a) in lost_running {
        assert_eq!(a["executor_id"], lost[0].as_str());
    }
    let phases: Vec<&str> = b["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        ["plan", "offsets", "tasks", "sink_commit", "commit"]
    );
    assert_eq!(
        b["input"]["g"].as_array().unwrap().len(),
        6,
        "six logged splits: {b}"
    );
    let done = all
        .iter()
        .find(|(_, _, a)| a["outcome"] == "succeeded")
        .unwrap();
    assert!(
        done.2["metrics"]["compute_ms"].is_i64(),
        "phase timings: {b}"
    );
    let human = String::from_utf8(c.sluice(&["status", id, "--batch", "1"]).stdout).unwrap();
    assert!(
        human.contains("executor_lost") || human.contains("output_lost"),
        "{human}"
    );
}

#[test]
fn sigkill_while_map_tasks_run() {
    kill_at(
        0,
        "SET 'sluice.test.delay_task' = '0:1500ms';",
        Duration::from_millis(300),
    );
}

#[test]
fn sigkill_while_shuffle_outputs_wait_for_reducers() {
    kill_at(
        1,
        "SET 'sluice.test.delay_task' = '1:1500ms';",
        Duration::from_millis(300),
    );
}

#[test]
fn sigkill_while_reduce_tasks_run() {
    kill_at(
        1,
        "SET 'sluice.test.delay_after_input' = '1:1500ms';",
        Duration::from_millis(600),
    );
}

#[test]
fn sigstop_past_the_heartbeat_timeout_then_sigcont_is_ignored() {
    reference();
    let mut c = Cluster::new();
    c.driver_args = vec!["--heartbeat-timeout".into(), "1500ms".into()];
    let c = Cluster::start_with(c, 3);
    let id = c
        .submit(&job(&c, "SET 'sluice.test.delay_task' = '0:2500ms';"))
        .unwrap();
    c.wait_for_running_stage(&id, 1, 0);
    std::thread::sleep(Duration::from_millis(200));
    c.signal_executor(0, SIGSTOP);
    let e = c.wait_for_executors(LONG, |e| !events(e, "lost").is_empty());
    let lost = e["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["change"] == "lost");
    assert!(
        lost.unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains("no heartbeat"),
        "{e}"
    );
    // The batch goes on without it; the zombie wakes up and reports results nobody wants.
    std::thread::sleep(Duration::from_millis(500));
    c.signal_executor(0, SIGCONT);
    let s = finish_and_compare(&c, &id);
    let lost = batches_with(&s, "executor_lost");
    assert!(lost.iter().any(|b| b["batch_id"] == 1), "{s}");
    c.wait_for_log(
        "driver.log",
        &["ignoring result from a dead executor"],
        1,
        LONG,
    );
    c.wait_for_log("executor-0.log", &["driver closed the connection"], 1, LONG);
}

/// Submits the job with its map tasks held for 1.5 s and returns once batch 1's are running.
fn submit_with_slow_maps(c: &Cluster) -> String {
    reference();
    let id = c
        .submit(&job(c, "SET 'sluice.test.delay_task' = '0:1500ms';"))
        .unwrap();
    c.wait_for_running_stage(&id, 1, 0);
    std::thread::sleep(Duration::from_millis(300));
    id
}

#[test]
fn two_of_three_executors_killed_at_once() {
    let mut c = Cluster::start(3);
    let id = submit_with_slow_maps(&c);
    c.kill_executor(0);
    c.kill_executor(1);
    let s = finish_and_compare(&c, &id);
    assert!(!batches_with(&s, "executor_lost").is_empty());
}

#[test]
fn all_executors_killed_then_a_new_one_finishes_the_job() {
    let mut c = Cluster::start(2);
    let id = submit_with_slow_maps(&c);
    c.kill_executor(0);
    c.kill_executor(1);
    let waiting = c.wait_for(&id, &["waiting"], LONG);
    assert!(
        waiting["error"].as_str().unwrap().contains("no executors"),
        "{waiting}"
    );
    c.add_executor();
    finish_and_compare(&c, &id);
}

#[test]
fn an_executor_failing_every_task_is_excluded_and_the_job_completes() {
    reference();
    let mut c = Cluster::new();
    c.driver_args = vec!["--exclude-after-failures".into(), "2".into()];
    c.start_driver();
    c.add_executor_with_env(&[("SLUICE_TEST_FAIL_TASKS", "true")]);
    c.add_executor();
    c.add_executor();
    c.wait_for_driver();
    // The job takes a few dozen milliseconds: started before the failing executor registers,
    // it would never meet it.
    c.wait_for_registrations(3);
    let id = c
        .submit(&job(&c, "SET 'task.max_attempts' = '6';"))
        .unwrap();
    let s = finish_and_compare(&c, &id);
    assert!(!batches_with(&s, "task_failed").is_empty(), "{s}");
    c.wait_for_log("driver.log", &["excluding executor"], 1, LONG);
}

#[test]
fn a_batch_that_fails_restarts_the_job_from_its_checkpoint() {
    reference();
    let mut c = Cluster::new();
    c.driver_args = vec!["--exclude-after-failures".into(), "0".into()];
    c.start_driver();
    let flaky = c.add_executor_with_env(&[("SLUICE_TEST_FAIL_TASKS", "true")]);
    c.wait_for_driver();
    let id = c
        .submit(&job(
            &c,
            "SET 'task.max_attempts' = '2';
SET 'restart.strategy' = 'fixed-delay';
SET 'restart.attempts' = '20';
SET 'restart.delay' = '300ms';",
        ))
        .unwrap();
    c.wait_for_log(
        "driver.log",
        &["restarting the job from its checkpoint"],
        1,
        LONG,
    );
    // The broken host is replaced; the next restart runs the batch to the end.
    c.add_executor();
    c.kill_executor(flaky);
    let s = finish_and_compare(&c, &id);
    assert!(s["restarts"].as_u64().unwrap() >= 1, "{s}");
}

#[test]
fn with_restart_strategy_none_a_failed_batch_fails_the_job() {
    let mut c = Cluster::new();
    c.start_driver();
    c.add_executor_with_env(&[("SLUICE_TEST_FAIL_TASKS", "true")]);
    c.wait_for_driver();
    let id = c
        .submit(&job(
            &c,
            "SET 'task.max_attempts' = '2';\nSET 'restart.strategy' = 'none';",
        ))
        .unwrap();
    let s = c.wait_for(&id, &["finished", "failed"], LONG);
    assert_eq!(s["state"], "failed");
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains("failed 2 times") && error.contains("restart strategy is 'none'"),
        "{error}"
    );
}
