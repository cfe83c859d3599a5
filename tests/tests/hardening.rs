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

/// Waits for `job` to fail and asserts its error holds every one of `needles`; its status.
fn fails_with(c: &Cluster, job: &str, needles: &[&str]) -> Value {
    let s = c.wait_for(job, &["failed"], LONG);
    let error = s["error"].as_str().unwrap_or_default();
    for n in needles {
        assert!(error.contains(n), "wanted {n:?} in the error: {s}");
    }
    s
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
    let s = fails_with(
        &c,
        &bad,
        &["Divide by zero", "bad input; a retry cannot help"],
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

#[test]
fn file_names_with_url_characters_are_read_once_each() {
    let c = Cluster::start(2);
    let names = [
        "a~1.jsonl",
        "x[1].jsonl",
        "100%.jsonl",
        "a#b.jsonl",
        "a b.jsonl",
    ];
    let mut input = String::new();
    for (f, name) in names.iter().enumerate() {
        let rows: String = (0..12)
            .map(|i| format!("{{\"a\": {}, \"b\": 1}}\n", f * 100 + i))
            .collect();
        input = input_file(&c, "in", name, &rows);
    }
    let out = c.path("out");
    let id = c
        .submit(&format!(
            "SET 'trigger' = 'once';
CREATE TABLE src (a BIGINT, b BIGINT) WITH (connector = 'files', path = 'file://{input}');
CREATE TABLE out WITH (connector = 'files', path = '{}');
INSERT INTO out SELECT a FROM src;",
            out.display()
        ))
        .expect("submit");
    sluice_cluster_tests::wait_finished(&c, &id);
    let mut got: Vec<u64> = sluice_cluster_tests::committed_jsonl(&out)
        .into_values()
        .flatten()
        .map(|r| r["a"].as_u64().unwrap())
        .collect();
    got.sort();
    let want: Vec<u64> = (0..5u64)
        .flat_map(|f| (0..12).map(move |i| f * 100 + i))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_fifo_or_a_missing_directory_fails_only_its_own_job_by_name() {
    let c = Cluster::start(2);
    let healthy = healthy_job(&c);
    let dir = input_file(&c, "fifo", "in-0.jsonl", "{\"a\": 1, \"b\": 1}\n");
    let fifo = std::ffi::CString::new(format!("{dir}/in-1.jsonl")).unwrap();
    // SAFETY: mkfifo(3) on a path in the test's own directory.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let job = |path: &str, trigger: &str| {
        format!(
            "SET 'trigger' = '{trigger}';
CREATE TABLE src (a BIGINT, b BIGINT) WITH (connector = 'files', path = '{path}');
CREATE TABLE out WITH (connector = 'blackhole');
INSERT INTO out SELECT a FROM src;"
        )
    };
    let with_fifo = c.submit(&job(&dir, "100ms")).expect("submit");
    let typo = c.path("no-such-dir").display().to_string();
    let missing = c.submit(&job(&typo, "once")).expect("submit");
    fails_with(&c, &with_fifo, &["in-1.jsonl is not a regular file"]);
    fails_with(
        &c,
        &missing,
        &["no-such-dir does not exist", "option 'path'"],
    );
    keeps_committing(&c, &healthy, 3);
}

#[test]
fn settings_out_of_range_are_refused_and_non_ascii_text_splits_cleanly() {
    let c = Cluster::start(1);
    let job = |setting: &str| {
        format!(
            "SET {setting};
CREATE TABLE gen (page TEXT) WITH (connector = 'datagen');
CREATE TABLE sink WITH (connector = 'blackhole');
INSERT INTO sink SELECT page FROM gen;"
        )
    };
    for (setting, named) in [
        (
            "'restart.backoff_multiplier' = 'inf'",
            "restart.backoff_multiplier",
        ),
        ("'restart.max_backoff' = '10ms'", "restart.max_backoff"),
        ("'partitions' = '0'", "partitions"),
    ] {
        let err = c.submit(&job(setting)).unwrap_err().to_string();
        assert!(err.contains(named), "{setting}: {err}");
    }
    let input = input_file(
        &c,
        "in",
        "in-0.jsonl",
        "{\"page\": \"café\"}\n{\"page\": \"naïve\"}\n{\"page\": \"plain\"}\n",
    );
    let out = |n: u32| c.path(&format!("out{n}")).display().to_string();
    let sql = format!(
        "SET 'trigger' = 'once';
CREATE TABLE src (page TEXT) WITH (connector = 'files', path = '{input}');
CREATE TABLE o1 WITH (connector = 'files', path = '{}');
CREATE TABLE o2 WITH (connector = 'files', path = '{}');
CREATE TABLE o3 WITH (connector = 'files', path = '{}');
INSERT INTO o1 SELECT page FROM src WHERE page = 'café';
INSERT INTO o2 SELECT page FROM src WHERE page <> 'café' AND page <> 'naïve';
INSERT INTO o3 SELECT page FROM src;",
        out(1),
        out(2),
        out(3)
    );
    let ids = c.submit(&sql).expect("three jobs");
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let pages = |n: u32| {
        let mut p: Vec<String> = sluice_cluster_tests::committed_jsonl(&c.path(&format!("out{n}")))
            .into_values()
            .flatten()
            .map(|r| r["page"].as_str().unwrap().to_string())
            .collect();
        p.sort();
        p
    };
    for id in &ids {
        sluice_cluster_tests::wait_finished(&c, id);
    }
    assert_eq!(pages(1), vec!["café"]);
    assert_eq!(pages(2), vec!["plain"]);
    assert_eq!(pages(3), vec!["café", "naïve", "plain"]);
}

#[test]
fn one_truncated_checkpoint_file_fails_only_its_job_after_a_driver_restart() {
    let mut c = Cluster::start(2);
    let broken = healthy_job(&c);
    let healthy = healthy_job(&c);
    keeps_committing(&c, &broken, 2);
    keeps_committing(&c, &healthy, 2);
    c.kill_driver();
    // What a power loss can leave: the file exists, its bytes do not.
    let commit = c.path(&format!("state/jobs/{broken}/commits/0"));
    std::fs::write(&commit, b"").unwrap();
    c.start_driver();
    c.wait_for_driver();
    fails_with(&c, &broken, &["commits/0", "corrupted"]);
    keeps_committing(&c, &healthy, 3);
}

#[test]
fn a_huge_expression_is_refused_by_line_and_a_long_one_runs() {
    let c = Cluster::start(1);
    let healthy = healthy_job(&c);
    let input = input_file(
        &c,
        "in",
        "in-0.jsonl",
        "{\"a\": 7, \"b\": 1}\n{\"a\": -1, \"b\": 1}\n",
    );
    let out = c.path("out");
    let job = |terms: i64| {
        let chain: Vec<String> = (0..terms).map(|i| format!("a = {i}")).collect();
        format!(
            "SET 'trigger' = 'once';
CREATE TABLE src (a BIGINT, b BIGINT) WITH (connector = 'files', path = '{input}');
CREATE TABLE out WITH (connector = 'files', path = '{}');
INSERT INTO out SELECT a FROM src
  WHERE {};",
            out.display(),
            chain.join(" OR ")
        )
    };
    let err = c.submit(&job(30_000)).unwrap_err().to_string();
    assert!(
        err.contains(":5:") && err.contains("nested more than 1000 levels"),
        "{err}"
    );
    let id = c
        .submit(&job(450))
        .expect("a long expression within the limit");
    sluice_cluster_tests::wait_finished(&c, &id);
    let rows: Vec<Value> = sluice_cluster_tests::committed_jsonl(&out)
        .into_values()
        .flatten()
        .collect();
    assert_eq!(rows, vec![serde_json::json!({"a": 7})]);
    keeps_committing(&c, &healthy, 3);
}

#[test]
fn a_panic_in_one_jobs_loop_fails_that_job_and_no_other() {
    let c = Cluster::start(1);
    let healthy = healthy_job(&c);
    let panicking = c
        .submit(
            "SET 'trigger' = '100ms';
SET 'sluice.test.panic_at' = 'before_tasks:1';
CREATE TABLE gen (page TEXT) WITH (connector = 'datagen', rows_per_second = '100');
CREATE TABLE sink WITH (connector = 'blackhole');
INSERT INTO sink SELECT page FROM gen;",
        )
        .expect("submit");
    let s = fails_with(
        &c,
        &panicking,
        &[
            "panicked: injected panic at before_tasks of batch 1",
            "(bug; a retry cannot help)",
        ],
    );
    assert_eq!(committed(&s), 1, "{s}");
    keeps_committing(&c, &healthy, 3);
}

#[test]
fn each_driver_restart_starts_the_executors_reconnect_delay_over() {
    let mut c = Cluster::start(1);
    let job = healthy_job(&c);
    for round in 1..=4 {
        keeps_committing(&c, &job, 2);
        c.kill_driver();
        std::thread::sleep(Duration::from_millis(300 * round));
        c.start_driver();
        c.wait_for_driver();
    }
    keeps_committing(&c, &job, 2);
    // The first delay after every successful registration is the first step again.
    let log = c.log("executor-0.log");
    let mut after_registration = Vec::new();
    let mut registered = false;
    for line in log.lines() {
        if line.contains("registered with driver") {
            registered = true;
        } else if let Some(ms) = line
            .split("retrying in ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            && registered
        {
            after_registration.push(ms);
            registered = false;
        }
    }
    assert_eq!(after_registration.len(), 4, "{log}");
    assert!(
        after_registration.iter().all(|ms| *ms <= 20),
        "{after_registration:?}\n{log}"
    );
}

#[test]
fn a_stopped_and_resumed_batch_commits_exactly_one_runs_output() {
    let c = Cluster::start(2);
    let input = c.path("in");
    for f in 0..4 {
        let rows: String = (0..2000)
            .map(|i| format!("{{\"a\": {}, \"b\": 1}}\n", f * 2000 + i))
            .collect();
        input_file(&c, "in", &format!("in-{f}.jsonl"), &rows);
    }
    let out = c.path("out");
    let job = |settings: &str| {
        format!(
            "SET 'trigger' = 'once';
{settings}
CREATE TABLE src (a BIGINT, b BIGINT) WITH (connector = 'files', path = '{}');
CREATE TABLE out WITH (connector = 'files', path = '{}');
INSERT INTO out SELECT _batch, a, count(*) AS n FROM src GROUP BY _batch, a;",
            input.display(),
            out.display()
        )
    };
    // The reducers of batch 0 hold after reading their input, long enough to be stopped.
    let id = c
        .submit(&job(
            "SET 'partitions' = '8';\nSET 'sluice.test.delay_after_input' = '1:3s';",
        ))
        .expect("submit");
    c.wait_for_running_stage(&id, 0, 1);
    let stop = c.sluice(&["stop", &id]);
    assert!(stop.status.success(), "{stop:?}");
    let said = String::from_utf8_lossy(&stop.stdout);
    assert!(said.trim().ends_with(": stopped"), "{said}");
    // Stopped means no task of that run is left to write anything.
    std::thread::sleep(Duration::from_secs(4));
    assert!(!out.join("batch=0/part-00005.jsonl").exists());
    // Another directory is another source: its positions are not in this checkpoint.
    let elsewhere = job("SET 'partitions' = '4';").replace(
        &format!("path = '{}'", input.display()),
        &format!("path = '{}'", c.path("other").display()),
    );
    let err = c
        .submit_with(&elsewhere, &["--resume", &id])
        .unwrap_err()
        .to_string();
    assert!(err.contains("the source's option 'path' changed"), "{err}");
    let resumed = c
        .submit_with(&job("SET 'partitions' = '4';"), &["--resume", &id])
        .expect("resume");
    sluice_cluster_tests::wait_finished(&c, &resumed);
    let mut parts: Vec<String> = std::fs::read_dir(out.join("batch=0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-"))
        .collect();
    parts.sort();
    assert!(parts.len() <= 4, "{parts:?}");
    assert!(parts.iter().all(|p| p.as_str() < "part-00004"), "{parts:?}");
    let rows: Vec<Value> = sluice_cluster_tests::committed_jsonl(&out)
        .into_values()
        .flatten()
        .collect();
    assert_eq!(rows.len(), 8000);
    let mut keys: Vec<u64> = rows.iter().map(|r| r["a"].as_u64().unwrap()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 8000);
}

#[test]
fn a_dead_letter_table_cannot_be_the_main_sink() {
    let c = Cluster::start(1);
    let err = c
        .submit(
            "CREATE TABLE src (a BIGINT) WITH (connector = 'kafka', 'bootstrap.servers' = '127.0.0.1:1',
  topic = 't', on_error = 'dead_letter', 'dead_letter.table' = 'out');
CREATE TABLE out WITH (connector = 'blackhole');
INSERT INTO out SELECT a FROM src;",
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'dead_letter.table' = 'out' is the INSERT's sink"),
        "{err}"
    );
}

#[test]
fn a_task_past_its_timeout_is_failed_and_retried() {
    let c = Cluster::start(2);
    let input = input_file(
        &c,
        "in",
        "in-0.jsonl",
        "{\"a\": 1, \"b\": 1}\n{\"a\": 2, \"b\": 1}\n",
    );
    let out = c.path("out");
    // The first attempt of every stage-0 task hangs for a minute; its timeout is one second.
    let id = c
        .submit(&format!(
            "SET 'trigger' = 'once';
SET 'task.timeout' = '1s';
SET 'sluice.test.delay_task' = '0:60s';
CREATE TABLE src (a BIGINT, b BIGINT) WITH (connector = 'files', path = '{input}');
CREATE TABLE out WITH (connector = 'files', path = '{}');
INSERT INTO out SELECT a FROM src;",
            out.display()
        ))
        .expect("submit");
    let s = sluice_cluster_tests::wait_finished(&c, &id);
    let batch = &s["recent_batches"][0];
    assert_eq!(batch["rerun"]["task_failed"], 1, "{s}");
    let mut got: Vec<u64> = sluice_cluster_tests::committed_jsonl(&out)
        .into_values()
        .flatten()
        .map(|r| r["a"].as_u64().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, vec![1, 2]);
    assert!(
        c.log("driver.log")
            .contains("task timed out after 1s (task.timeout)")
    );
}

#[test]
fn the_driver_refuses_paths_outside_its_allowed_prefixes_and_code_loading_kafka_properties() {
    let mut c = Cluster::new();
    let allowed = c.path("data");
    c.driver_args = vec!["--allowed-paths".into(), allowed.display().to_string()];
    let c = Cluster::start_with(c, 1);
    let job = |path: &str, extra: &str| {
        format!(
            "SET 'trigger' = 'once';
CREATE TABLE gen (page TEXT) WITH (connector = 'datagen', total_rows = '10');
CREATE TABLE out WITH (connector = 'files', path = '{path}'{extra});
INSERT INTO out SELECT page FROM gen;"
        )
    };
    let outside = c.path("elsewhere").display().to_string();
    let err = c.submit(&job(&outside, "")).unwrap_err().to_string();
    assert!(
        err.contains("table 'out': option 'path'")
            && err.contains("outside the paths this driver allows"),
        "{err}"
    );
    let inside = allowed.join("out").display().to_string();
    sluice_cluster_tests::run_to_end(&c, &job(&inside, ""));
    let err = c
        .submit(
            "CREATE TABLE src (a BIGINT) WITH (connector = 'kafka', 'bootstrap.servers' = '127.0.0.1:1',
  topic = 't', 'kafka.plugin.library.paths' = '/tmp/x.so');
CREATE TABLE out WITH (connector = 'blackhole');
INSERT INTO out SELECT a FROM src;",
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'kafka.plugin.library.paths' is refused"),
        "{err}"
    );
}

/// A job that commits a few batches and then waits for more input.
fn small_job(c: &Cluster, name: &str) -> String {
    let input = input_file(
        c,
        &format!("in-{name}"),
        "in-0.jsonl",
        "{\"a\": 1, \"b\": 1}\n",
    );
    c.submit(&format!(
        "SET 'name' = '{name}';
SET 'trigger' = '100ms';
CREATE TABLE src (a BIGINT, b BIGINT) WITH (connector = 'files', path = '{input}');
CREATE TABLE out WITH (connector = 'blackhole');
INSERT INTO out SELECT a FROM src;"
    ))
    .expect("submit")
}

#[test]
fn every_kind_of_broken_checkpoint_file_fails_only_its_job_naming_the_file() {
    let mut c = Cluster::start(1);
    let healthy = healthy_job(&c);
    let jobs: Vec<(String, &str, &[u8])> = vec![
        (small_job(&c, "metadata"), "metadata", b""),
        (small_job(&c, "commit"), "commits/0", b"{\"format\": 1"),
        (small_job(&c, "offsets"), "offsets/0", b"not json at all"),
    ];
    // A resumed job has a revision; a finished job has a final record.
    let resumed = small_job(&c, "revision");
    c.wait_until(&resumed, LONG, |s| committed(s) >= 1);
    assert!(c.sluice(&["stop", &resumed]).status.success());
    let sql = std::fs::read_to_string(c.path(&format!("state/jobs/{resumed}/metadata"))).unwrap();
    assert!(sql.contains("revision"));
    let input = c.path("in-revision").display().to_string();
    c.submit_with(
        &format!(
            "SET 'name' = 'revision';
SET 'trigger' = '100ms';
CREATE TABLE src (a BIGINT, b BIGINT) WITH (connector = 'files', path = '{input}');
CREATE TABLE out WITH (connector = 'blackhole');
INSERT INTO out SELECT a + 1 FROM src;"
        ),
        &["--resume", &resumed],
    )
    .expect("resume");
    let finished = sluice_cluster_tests::run_to_end(
        &c,
        "SET 'trigger' = 'once';
CREATE TABLE gen (page TEXT) WITH (connector = 'datagen', total_rows = '10');
CREATE TABLE sink WITH (connector = 'blackhole');
INSERT INTO sink SELECT page FROM gen;",
    )["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    for (id, _, _) in &jobs {
        c.wait_until(id, LONG, |s| committed(s) >= 1);
    }
    c.kill_driver();
    let mut broken = jobs.clone();
    broken.push((resumed, "revisions/1", b"\x00\x01"));
    broken.push((finished, "final", b""));
    for (id, file, bytes) in &broken {
        let path = c.path(&format!("state/jobs/{id}/{file}"));
        assert!(path.exists(), "{}", path.display());
        std::fs::write(path, bytes).unwrap();
    }
    c.start_driver();
    c.wait_for_driver();
    for (id, file, _) in &broken {
        fails_with(&c, id, &[&format!("{id}/{file}"), "corrupted"]);
    }
    keeps_committing(&c, &healthy, 3);
}

#[test]
fn bad_job_files_are_refused_with_what_and_where_and_the_running_job_goes_on() {
    let c = Cluster::start(1);
    let healthy = healthy_job(&c);
    let source = "CREATE TABLE gen (a BIGINT, page TEXT) WITH (connector = 'datagen');\n";
    let sink = "CREATE TABLE out WITH (connector = 'blackhole');\n";
    let cases: Vec<(String, &[&str])> = vec![
        (
            format!("{source}{sink}INSERT INTO out SELEC a FROM gen;"),
            &["job-", "Line: 3, Column: 17"],
        ),
        (
            format!("{source}{sink}INSERT INTO out SELECT nope FROM gen;"),
            &["nope"],
        ),
        (
            format!("SET 'partitons' = '4';\n{source}{sink}INSERT INTO out SELECT a FROM gen;"),
            &["unknown setting 'partitons'", "partitions"],
        ),
        (
            format!(
                "SET 'task.max_attempts' = 'four';\n{source}{sink}INSERT INTO out SELECT a FROM gen;"
            ),
            &["'task.max_attempts' = 'four'"],
        ),
        (
            format!(
                "SET 'trigger' = '1 fortnight';\n{source}{sink}INSERT INTO out SELECT a FROM gen;"
            ),
            &["trigger", "unknown duration unit"],
        ),
        (
            format!(
                "CREATE TABLE gen (a BIGINT) WITH (connector = 'datagen', rows_per_second = '-5');\n{sink}INSERT INTO out SELECT a FROM gen;"
            ),
            &["table 'gen'", "'rows_per_second' = '-5'"],
        ),
        (
            format!(
                "CREATE TABLE gen (a BIGINT) WITH (connector = 'datagen', 'fields.a.max' = 'inf');\n{sink}INSERT INTO out SELECT a FROM gen;"
            ),
            &["'fields.a.max' = 'inf'"],
        ),
        (
            format!(
                "{source}CREATE TABLE out WITH (connector = 'console', num_rows = '100000000');\nINSERT INTO out SELECT a FROM gen;"
            ),
            &["table 'out'", "'num_rows'"],
        ),
        (
            format!(
                "CREATE TABLE src (a BIGINT) WITH (connector = 'files', path = '/tmp', colour = 'red');\n{sink}INSERT INTO out SELECT a FROM src;"
            ),
            &["unknown option 'colour'", "valid options"],
        ),
        (
            format!(
                "{source}CREATE TABLE out WITH (connector = 'teleport');\nINSERT INTO out SELECT a FROM gen;"
            ),
            &["unknown sink connector 'teleport'"],
        ),
    ];
    for (sql, wanted) in &cases {
        let err = c.submit(sql).unwrap_err().to_string();
        for w in *wanted {
            assert!(err.contains(w), "wanted {w:?} in: {err}\nfor:\n{sql}");
        }
    }
    // A record that does not decode fails its job naming the file and the line.
    let input = input_file(
        &c,
        "bad",
        "in-0.jsonl",
        "{\"a\": 1, \"b\": 1}\n{\"a\": \"x\"}\n",
    );
    let bad = c
        .submit(&format!(
            "SET 'trigger' = '100ms';
CREATE TABLE src (a BIGINT, b BIGINT) WITH (connector = 'files', path = '{input}');
{sink}INSERT INTO out SELECT a FROM src;"
        ))
        .expect("submit");
    fails_with(&c, &bad, &["in-0.jsonl line 2", "bad input"]);
    // A directory where a file path is expected, and a file where a directory is.
    let file = c.path("bad/in-0.jsonl").display().to_string();
    let err_job = c
        .submit(&format!(
            "SET 'trigger' = 'once';
CREATE TABLE src (a BIGINT, b BIGINT) WITH (connector = 'files', path = '{file}');
{sink}INSERT INTO out SELECT a FROM src;"
        ))
        .expect("submit");
    fails_with(&c, &err_job, &["is not a directory"]);
    keeps_committing(&c, &healthy, 3);
}

#[test]
fn a_panic_in_the_schedulers_loop_exits_the_driver_and_the_next_one_resumes_every_job() {
    let mut c = Cluster::new();
    c.env = vec![("SLUICE_TEST_PANIC_SCHEDULER_AT".into(), "8".into())];
    let mut c = Cluster::start_with(c, 1);
    let jobs = [healthy_job(&c), healthy_job(&c)];
    let status = c.wait_for_driver_exit(LONG);
    assert_eq!(status.code(), Some(70), "{}", c.log("driver.1.log"));
    // Nothing judged the jobs failed: no final record, and the next driver resumes both.
    for id in &jobs {
        assert!(!c.path(&format!("state/jobs/{id}/final")).exists());
    }
    c.env.clear();
    c.start_driver();
    c.wait_for_driver();
    for id in &jobs {
        keeps_committing(&c, id, 3);
    }
}

#[test]
fn a_storage_outage_on_submit_is_reported_as_unavailable_not_as_a_bad_job() {
    let mut c = Cluster::new();
    // Every write to the driver's --state fails, as when its store is down.
    c.env = vec![("SLUICE_TEST_STORE_FAULTS".into(), "put=1.0".into())];
    let c = Cluster::start_with(c, 1);
    let err = c
        .submit(
            "CREATE TABLE gen (page TEXT) WITH (connector = 'datagen');
CREATE TABLE sink WITH (connector = 'blackhole');
INSERT INTO sink SELECT page FROM gen;",
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("storage or network is unavailable, try again") && err.contains("metadata"),
        "{err}"
    );
    // A bad job is still the job's fault.
    let err = c.submit("SELECT 1;").unwrap_err().to_string();
    assert!(
        !err.contains("unavailable") && err.contains("expected SET"),
        "{err}"
    );
}
