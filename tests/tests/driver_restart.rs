//! The driver is SIGKILLed at each step of a batch and restarted on the same --state: it resumes
//! the job from its checkpoint, reruns the uncommitted batch with its logged input, and the
//! output equals an uninterrupted run, batch by batch and row by row.

use serde_json::Value;
use sluice_cluster_tests::{
    BatchRows, Cluster, S3Server, committed_jsonl, committed_rows, run_to_end, wait_finished,
};
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

fn reference() -> &'static BatchRows {
    static REFERENCE: OnceLock<BatchRows> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let c = Cluster::start(2);
        run_to_end(&c, &job(&c, ""));
        let r = committed_rows(&c.path("out"));
        assert_eq!(r.len(), 4);
        r
    })
}

/// Kills the driver once the log shows `needles`, restarts it, and checks the result.
/// `rerun`: whether batch 1 was logged but not committed at the kill, so it must run again.
fn kill_driver_when(extra: &str, needles: &[&str], rerun: bool) {
    kill_driver_of(Cluster::start(2), extra, needles, rerun);
}

/// A cluster whose checkpoints live in a bucket of a real S3-compatible server.
fn on_s3(s3: &S3Server) -> Cluster {
    let mut c = Cluster::new();
    c.env = s3.env();
    c.state = Some(s3.uri(&format!("state-{}", sluice_cluster_tests::free_port())));
    Cluster::start_with(c, 2)
}

fn kill_driver_of(mut c: Cluster, extra: &str, needles: &[&str], rerun: bool) {
    reference();
    let id = c.submit(&job(&c, extra)).unwrap();
    c.wait_for_log("driver.log", needles, 1, LONG);
    c.kill_driver();
    c.start_driver();
    c.wait_for_driver();
    let s = wait_finished(&c, &id);
    assert_eq!(s["batches_committed"], 4, "{s}");
    assert_eq!(
        &committed_rows(&c.path("out")),
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

/// Reads a checkpoint envelope's body (the JSON the driver logged).
fn checkpoint_body(path: &std::path::Path) -> Value {
    let env: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    serde_json::from_str(env["body"].as_str().unwrap()).unwrap()
}

#[test]
fn two_drivers_on_one_state_exactly_one_wins() {
    two_drivers(Cluster::start(1), true);
}

#[test]
fn two_drivers_on_one_s3_state_exactly_one_wins() {
    let s3 = S3Server::start("sluice-fencing");
    two_drivers(on_s3(&s3), false);
}

/// `local_state`: the checkpoint is on local disk, where the test can read the offsets log.
fn two_drivers(mut c: Cluster, local_state: bool) {
    let sql = format!(
        "SET 'trigger' = '200ms';
CREATE TABLE g (k BIGINT) WITH (connector = 'datagen', rows_per_second = '5000', splits = '2');
CREATE TABLE o (batch BIGINT, n BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT _batch, count(*) FROM g GROUP BY _batch;
",
        c.path("out").display()
    );
    let id = c.submit(&sql).unwrap();
    c.wait_until(&id, LONG, |s| s["batches_committed"].as_u64() >= Some(2));
    // A second driver on the same --state resumes the same job and races the first one.
    let second = format!("http://127.0.0.1:{}", sluice_cluster_tests::free_port());
    let listen = second.trim_start_matches("http://").to_string();
    let state = c.state_uri();
    c.spawn_extra(
        "sluice-driver",
        &["--listen".into(), listen, "--state".into(), state],
        "driver-b.log",
    );
    c.spawn_extra(
        "sluice-executor",
        &["--driver".into(), second.clone()],
        "executor-b.log",
    );
    let state_at = |driver: &str| -> Value {
        let out = c.sluice_at(driver, &["status", &id, "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let deadline = std::time::Instant::now() + LONG;
    let (winner, loser) = loop {
        assert!(std::time::Instant::now() < deadline, "no driver was fenced");
        let (a, b) = (state_at(&c.url()), state_at(&second));
        let fenced = |s: &Value| {
            s["state"] == "failed"
                && s["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("fenced by another driver")
        };
        if fenced(&a) {
            break (second.clone(), a);
        }
        if fenced(&b) {
            break (c.url(), b);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        loser["error"].as_str().unwrap().contains("already exists"),
        "{loser}"
    );
    // The winner goes on committing batches.
    let before = state_at(&winner)["batches_committed"].as_u64().unwrap();
    let deadline = std::time::Instant::now() + LONG;
    while state_at(&winner)["batches_committed"].as_u64().unwrap() < before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the winner stopped committing"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(state_at(&winner)["state"], "running");
    assert!(c.sluice_at(&winner, &["stop", &id]).status.success());
    // Every committed batch holds exactly the rows its offsets entry describes, once.
    let out = committed_jsonl(&c.path("out"));
    let job_dir = c.path(&format!("state/jobs/{id}"));
    assert!(out.len() >= 4);
    for (batch, rows) in &out {
        assert_eq!(rows.len(), 1, "batch {batch}: {rows:?}");
        if !local_state {
            continue;
        }
        let offsets = checkpoint_body(&job_dir.join(format!("offsets/{batch}")));
        let planned: u64 = offsets["sources"]["g"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["end"].as_u64().unwrap() - s["start"].as_u64().unwrap())
            .sum();
        assert_eq!(rows.len(), 1, "batch {batch}: {rows:?}");
        assert_eq!(rows[0]["n"].as_u64(), Some(planned), "batch {batch}");
    }
    let batches: Vec<u64> = out.keys().copied().collect();
    assert_eq!(
        batches,
        (0..batches.len() as u64).collect::<Vec<_>>(),
        "no gap, no repeat"
    );
}

#[test]
fn on_s3_killed_after_the_offsets_before_any_task() {
    let s3 = S3Server::start("sluice-restart");
    kill_driver_of(
        on_s3(&s3),
        "SET 'sluice.test.pause_at' = 'before_tasks:1:2s';",
        &["test pause", "step=\"before_tasks\"", "batch=1"],
        true,
    );
}

#[test]
fn on_s3_killed_after_the_tasks_before_the_commit() {
    let s3 = S3Server::start("sluice-restart");
    kill_driver_of(
        on_s3(&s3),
        "SET 'sluice.test.pause_at' = 'before_commit:1:2s';",
        &["test pause", "step=\"before_commit\"", "batch=1"],
        true,
    );
}

#[test]
fn checkpoint_inspect_lists_batches_and_names_a_corrupted_file() {
    let c = Cluster::start(1);
    let id = c.submit(&job(&c, "")).unwrap();
    c.wait_for(&id, &["finished"], LONG);
    let state = c.state_uri();
    let out = c.sluice(&["checkpoint", "inspect", &state, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = &jobs[0];
    assert_eq!(job["job_id"], id.as_str());
    assert_eq!(job["ended"]["state"], "finished");
    let batches = job["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 4);
    assert!(batches.iter().all(|b| b["committed"] == true));
    assert_eq!(
        batches[1]["input"][0]["summary"],
        "rows 3000..6000 in 4 splits"
    );
    assert_eq!(
        batches
            .iter()
            .map(|b| b["rows_in"].as_u64().unwrap())
            .sum::<u64>(),
        12_000
    );
    let human = c.sluice(&["checkpoint", "inspect", &format!("{state}/jobs/{id}")]);
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(
        text.contains("ended       finished") && text.contains("rows 9000..12000"),
        "{text}"
    );

    // A flipped byte is caught by the checksum, and the error names the file.
    let file = c.path(&format!("state/jobs/{id}/offsets/2"));
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("6000", "6001");
    std::fs::write(&file, text).unwrap();
    let out = c.sluice(&["checkpoint", "inspect", &state]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "jobs/{id}/offsets/2 is corrupted: checksum mismatch"
        )),
        "{err}"
    );
}

#[test]
fn retention_compacts_the_logs_and_a_restart_reads_no_file_twice() {
    // Short names: the files source's position is logged with every batch and a restart reads
    // the newest entry only.
    let log = retention_then_restart(30, 4, "");
    assert!(
        log.lines()
            .any(|l| l.contains("source positions recovered") && l.contains("entries_read=1")),
        "{log}"
    );
}

#[test]
fn a_position_too_large_to_log_is_replayed_from_the_compaction() {
    // Names of 250 characters: after 60 files the position outgrows what an entry logs, so a
    // restart rebuilds it from compact-3 and the entries after it.
    let log = retention_then_restart(75, 10, &"x".repeat(240));
    assert!(
        log.lines().any(|l| l.contains("source positions recovered")
            && l.contains("replayed=[\"f\"]")
            && l.contains("entries_read=2")),
        "{log}"
    );
}

/// `files` files of 10 rows, `per_batch` of them per batch (8 batches), checkpoint retention
/// of 2 batches; the driver is killed after batch 5 and restarted. Returns the driver's log.
fn retention_then_restart(files: usize, per_batch: usize, padding: &str) -> String {
    let mut c = Cluster::start(2);
    let input = c.path("in");
    std::fs::create_dir_all(&input).unwrap();
    for i in 0..files {
        let rows: String = (0..10)
            .map(|j| format!("{{\"k\": {}}}\n", (i * 10 + j) % 7))
            .collect();
        std::fs::write(input.join(format!("f-{i:03}{padding}.jsonl")), rows).unwrap();
    }
    let sql = format!(
        "SET 'trigger' = 'available_now';
SET 'checkpoint.retain_batches' = '2';
SET 'sluice.test.pause_at' = 'after_commit:5:2s';
CREATE TABLE f (k BIGINT) WITH (connector = 'files', path = '{}', max_files_per_batch = '{per_batch}');
CREATE TABLE o (batch BIGINT, k BIGINT, n BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT _batch, k, count(*) FROM f GROUP BY _batch, k;
",
        input.display(),
        c.path("out").display()
    );
    let id = c.submit(&sql).unwrap();
    c.wait_for_log(
        "driver.log",
        &["test pause", "step=\"after_commit\"", "batch=5"],
        1,
        LONG,
    );
    let job_dir = c.path(&format!("state/jobs/{id}"));
    let logged = || {
        let mut names: Vec<String> = std::fs::read_dir(job_dir.join("offsets"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    // Compacted after batch 3 (every 2 batches): entries 0 and 1 are gone, their files are in
    // compact-3; batch 5's compaction comes after the pause. Compaction runs in the background,
    // off the batch loop, so it may still be finishing as the pause starts.
    let want = vec!["2", "3", "4", "5", "compact-3"];
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while logged() != want && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(logged(), want);
    c.kill_driver();
    c.start_driver();
    c.wait_for_driver();
    let s = c.wait_for(&id, &["finished", "failed"], LONG);
    assert_eq!(s["state"], "finished", "{s}");
    let out = committed_jsonl(&c.path("out"));
    assert_eq!(out.len(), 8, "batches 0..7");
    let total: u64 = out
        .values()
        .flatten()
        .map(|r| r["n"].as_u64().unwrap())
        .sum();
    assert_eq!(
        total,
        files as u64 * 10,
        "every row once: no file read twice after the restart"
    );
    for (batch, rows) in &out {
        let n: u64 = rows.iter().map(|r| r["n"].as_u64().unwrap()).sum();
        let last = (files - 7 * per_batch) as u64;
        let read = if *batch == 7 { last } else { per_batch as u64 };
        assert_eq!(n, read * 10, "batch {batch}");
    }
    c.log("driver.log")
}

#[test]
fn a_restart_reads_the_newest_offsets_entry_only() {
    let mut c = Cluster::start(2);
    reference();
    let sql = job(&c, "SET 'sluice.test.pause_at' = 'after_commit:2:3s';");
    let id = c.submit(&sql).unwrap();
    c.wait_for_log(
        "driver.log",
        &["test pause", "step=\"after_commit\"", "batch=2"],
        1,
        LONG,
    );
    c.kill_driver();
    // Entries a restart does not need, damaged: resuming must not read them.
    for b in 0..2 {
        let entry = c.path(&format!("state/jobs/{id}/offsets/{b}"));
        std::fs::write(&entry, b"damaged").unwrap();
    }
    c.start_driver();
    c.wait_for_driver();
    let s = wait_finished(&c, &id);
    assert_eq!(s["batches_committed"], 4, "{s}");
    assert_eq!(&committed_rows(&c.path("out")), reference());
}

#[test]
fn an_object_store_failing_a_fifth_of_all_writes_never_commits_a_broken_batch() {
    reference();
    let mut c = Cluster::new();
    c.env = vec![("SLUICE_TEST_STORE_FAULTS".into(), "put=0.2,seed=5".into())];
    let c = Cluster::start_with(c, 2);
    let sql = job(
        &c,
        "SET 'task.max_attempts' = '10';
SET 'task.backoff' = '20ms';
SET 'restart.strategy' = 'fixed-delay';
SET 'restart.attempts' = '100';
SET 'restart.delay' = '100ms';",
    );
    // The job's metadata write may itself be failed: submitting again is what a user does.
    let id = (0..20)
        .find_map(|_| c.submit(&sql).ok())
        .expect("a submission got through");
    wait_finished(&c, &id);
    assert_eq!(&committed_rows(&c.path("out")), reference());
    let log = c.log("driver.log");
    assert!(
        log.contains("injected write failure"),
        "faults were injected"
    );
}
