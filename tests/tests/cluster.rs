//! The cluster runs real jobs: 1 driver + 3 executors over loopback, checked row by row against
//! results computed directly from the input.

use serde_json::Value;
use sluice_cluster_tests::{Cluster, committed_jsonl, run_to_end};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const PAGES: [&str; 5] = ["/home", "/search", "/cart", "/checkout", "/help"];
const FILES: usize = 40;
const PER_BATCH: usize = 7;
const LONG: Duration = Duration::from_secs(90);

/// (user_id, page) of every row of input file `i`: a fixed function, so the test knows the answer.
fn rows_of(i: usize) -> Vec<(i64, &'static str)> {
    (0..50 + i)
        .map(|j| (((i * 37 + j * 11) % 23) as i64 - 3, PAGES[(i + j * 7) % 5]))
        .collect()
}

fn write_inputs(dir: &Path, files: std::ops::Range<usize>) {
    std::fs::create_dir_all(dir).unwrap();
    for i in files {
        let text: String = rows_of(i)
            .iter()
            .map(|(u, p)| {
                format!(
                    "{{\"user_id\": {u}, \"page\": \"{p}\", \"ts\": \"2025-01-01T00:00:{:02}\"}}\n",
                    u.rem_euclid(60)
                )
            })
            .collect();
        // Written under a temporary name and renamed: the source only sees complete files.
        let tmp = dir.join(format!(".in-{i:03}.jsonl.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(format!("in-{i:03}.jsonl"))).unwrap();
    }
}

fn job(c: &Cluster, settings: &str, sink_cols: &str, query: &str) -> String {
    format!(
        "{settings}
CREATE TABLE clicks (user_id BIGINT, page TEXT, ts TIMESTAMP)
  WITH (connector = 'files', path = 'file://{input}', format = 'jsonl', max_files_per_batch = '{PER_BATCH}');
CREATE TABLE out ({sink_cols})
  WITH (connector = 'files', path = 'file://{output}', format = 'jsonl');
INSERT INTO out {query};
",
        input = c.path("in").display(),
        output = c.path("out").display(),
    )
}

/// (batch, page) -> count of rows with user_id > 0, for files taken PER_BATCH at a time.
fn expected_counts(files: usize) -> BTreeMap<(u64, String), u64> {
    let mut want = BTreeMap::new();
    for i in 0..files {
        for (u, p) in rows_of(i) {
            if u > 0 {
                *want
                    .entry(((i / PER_BATCH) as u64, p.to_string()))
                    .or_insert(0) += 1;
            }
        }
    }
    want
}

fn counts_from(output: &BTreeMap<u64, Vec<Value>>) -> BTreeMap<(u64, String), u64> {
    let mut got = BTreeMap::new();
    for (batch, rows) in output {
        for r in rows {
            assert_eq!(
                r["batch"].as_u64(),
                Some(*batch),
                "row {r} is in batch={batch}"
            );
            let key = (*batch, r["page"].as_str().unwrap().to_string());
            assert!(
                got.insert(key, r["n"].as_u64().unwrap()).is_none(),
                "duplicate row {r}"
            );
        }
    }
    got
}

const COUNT_QUERY: &str =
    "SELECT _batch, page, count(*) FROM clicks WHERE user_id > 0 GROUP BY _batch, page";

#[test]
fn per_batch_counts_over_many_files_are_exact() {
    let c = Cluster::start(3);
    write_inputs(&c.path("in"), 0..FILES);
    let sql = job(
        &c,
        "SET 'trigger' = 'available_now';\nSET 'partitions' = '4';",
        "batch BIGINT, page TEXT, n BIGINT",
        COUNT_QUERY,
    );
    let status = run_to_end(&c, &sql);
    let id = status["job_id"].as_str().unwrap().to_string();
    let batches = FILES.div_ceil(PER_BATCH) as u64;
    assert_eq!(status["batches_committed"].as_u64(), Some(batches));
    let output = committed_jsonl(&c.path("out"));
    assert_eq!(output.len() as u64, batches);
    assert_eq!(counts_from(&output), expected_counts(FILES));
    let total_rows: usize = (0..FILES).map(|i| rows_of(i).len()).sum();
    assert_eq!(status["rows_in"].as_u64(), Some(total_rows as u64));
    // The write-ahead log holds each batch's exact input.
    for b in 0..batches {
        let id_dir = c.path(&format!("state/jobs/{id}"));
        assert!(id_dir.join(format!("offsets/{b}")).exists());
        assert!(id_dir.join(format!("commits/{b}")).exists());
    }
    let listed = c.sluice(&["jobs"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&id));
    // The progress channel carries every split's timestamp bounds, folded per batch.
    let first = &status["recent_batches"][0];
    assert_eq!(first["batch_id"], 0);
    let secs: Vec<i64> = (0..PER_BATCH)
        .flat_map(rows_of)
        .map(|(u, _)| u.rem_euclid(60))
        .collect();
    let at = |s: &i64| 1_735_689_600_000 + s * 1000; // 2025-01-01T00:00:SS
    let bound = |name: &str| first["metrics"][name].as_i64();
    assert_eq!(bound("clicks.ts.min"), secs.iter().min().map(at), "{first}");
    assert_eq!(bound("clicks.ts.max"), secs.iter().max().map(at), "{first}");
}

#[test]
fn files_arriving_while_the_job_runs_are_each_read_once() {
    let c = Cluster::start(3);
    let sql = job(
        &c,
        "SET 'trigger' = '300ms';",
        "batch BIGINT, page TEXT, n BIGINT",
        COUNT_QUERY,
    );
    let id = c.submit(&sql).unwrap();
    for chunk in 0..4 {
        write_inputs(&c.path("in"), chunk * 5..chunk * 5 + 5);
        std::thread::sleep(Duration::from_millis(400));
    }
    let total: usize = (0..20).map(|i| rows_of(i).len()).sum();
    c.wait_until(&id, LONG, |s| s["rows_in"].as_u64() == Some(total as u64));
    let stopped = c.sluice(&["stop", &id]);
    assert!(stopped.status.success());
    let output = committed_jsonl(&c.path("out"));
    // Batches depend on timing here, so compare totals per page over all batches.
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    for ((_, page), n) in counts_from(&output) {
        *got.entry(page).or_default() += n;
    }
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..20 {
        for (u, p) in rows_of(i) {
            if u > 0 {
                *want.entry(p.to_string()).or_default() += 1;
            }
        }
    }
    assert_eq!(got, want);
    assert_eq!(c.status(&id).unwrap()["state"], "stopped");
}

#[test]
fn order_by_output_is_globally_ordered() {
    let c = Cluster::start(3);
    write_inputs(&c.path("in"), 0..14);
    let sql = job(
        &c,
        "SET 'trigger' = 'available_now';\nSET 'partitions' = '3';",
        "user_id BIGINT, page TEXT",
        "SELECT user_id, page FROM clicks ORDER BY user_id DESC, page",
    );
    run_to_end(&c, &sql);
    let output = committed_jsonl(&c.path("out"));
    assert_eq!(output.len(), 2);
    for (batch, rows) in &output {
        let keys: Vec<(i64, String)> = rows
            .iter()
            .map(|r| {
                (
                    r["user_id"].as_i64().unwrap(),
                    r["page"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let mut want: Vec<(i64, String)> = (*batch as usize * PER_BATCH
            ..(*batch as usize + 1) * PER_BATCH)
            .flat_map(rows_of)
            .map(|(u, p)| (u, p.to_string()))
            .collect();
        want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        assert_eq!(
            keys, want,
            "batch {batch}: part files in order hold every row, sorted"
        );
        let parts = std::fs::read_dir(c.path(&format!("out/batch={batch}")))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("part-")
            })
            .count();
        assert!(
            parts >= 2,
            "range partitioning spread batch {batch} over {parts} files"
        );
    }
}

#[test]
fn a_task_failing_its_first_attempt_is_retried_and_output_is_exact() {
    let c = Cluster::start(3);
    write_inputs(&c.path("in"), 0..FILES);
    let sql = job(
        &c,
        "SET 'trigger' = 'available_now';\nSET 'sluice.test.fail_task' = '1:2';\nSET 'task.backoff' = '50ms';",
        "batch BIGINT, page TEXT, n BIGINT",
        COUNT_QUERY,
    );
    let status = run_to_end(&c, &sql);
    assert_eq!(
        counts_from(&committed_jsonl(&c.path("out"))),
        expected_counts(FILES)
    );
    let reruns: Vec<u64> = status["recent_batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["tasks_rerun"].as_u64().unwrap())
        .collect();
    assert!(
        reruns.iter().all(|r| *r >= 1),
        "every batch retried the failing task: {reruns:?}"
    );
    assert!(c.log("driver.log").contains("injected failure"));
}

#[test]
fn a_malformed_record_fails_the_job_naming_file_and_line_and_keeps_committed_batches() {
    let c = Cluster::start(2);
    write_inputs(&c.path("in"), 0..PER_BATCH);
    // The second batch's first file has a bad third line.
    let bad = "{\"user_id\": 1, \"page\": \"/home\"}\n{\"user_id\": 2, \"page\": \"/cart\"}\n{\"user_id\": \"three\", \"page\": \"/x\"}\n";
    std::fs::write(c.path("in").join("in-900.jsonl"), bad).unwrap();
    let sql = job(
        &c,
        "SET 'trigger' = 'available_now';",
        "batch BIGINT, page TEXT, n BIGINT",
        COUNT_QUERY,
    );
    let id = c.submit(&sql).unwrap();
    let status = c.wait_for(&id, &["finished", "failed"], LONG);
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("in-900.jsonl") && error.contains("line 3"),
        "{error}"
    );
    assert_eq!(status["batches_committed"].as_u64(), Some(1));
    assert_eq!(
        counts_from(&committed_jsonl(&c.path("out"))),
        expected_counts(PER_BATCH)
    );
    // The driver is still serving.
    assert!(c.sluice(&["jobs"]).status.success());
}

#[test]
fn bad_jobs_are_refused_with_clear_errors_and_the_driver_stays_up() {
    let c = Cluster::start(1);
    let err = c.submit("SET 'trigger' = '1s';\nCREATE TABLE t (a BIGINT) WITH (connector = 'kafkaa');\nCREATE TABLE o WITH (connector = 'console');\nINSERT INTO o SELECT a FROM t;").unwrap_err().to_string();
    assert!(
        err.contains("unknown source connector 'kafkaa'") && err.contains("files, datagen"),
        "{err}"
    );
    let err = c.submit("CREATE TABLE t (a BIGINT) WITH (connector = 'datagen', rows = '5');\nCREATE TABLE o WITH (connector = 'console');\nINSERT INTO o SELECT a FROM t;").unwrap_err().to_string();
    assert!(
        err.contains("unknown option 'rows'") && err.contains("rows_per_second"),
        "{err}"
    );
    let err = c.submit("CREATE TABLE t (a BIGINT) WITH (connector = 'datagen');\nCREATE TABLE o WITH (connector = 'console');\nINSERT INTO o SELECT a FROM t WHERE;").unwrap_err().to_string();
    assert!(err.contains("Line: 3"), "{err}");
    let err = c.submit("CREATE TABLE t (a BIGINT) WITH (connector = 'files', path = '/tmp/x', format = 'xml');\nCREATE TABLE o WITH (connector = 'console');\nINSERT INTO o SELECT a FROM t;").unwrap_err().to_string();
    assert!(
        err.contains("'format' = 'xml'") && err.contains("jsonl, csv"),
        "{err}"
    );
    assert!(c.sluice(&["jobs"]).status.success(), "driver still up");

    // A CLI pointed at no driver says so and exits non-zero.
    let mut nowhere = Cluster::new();
    nowhere.port = sluice_cluster_tests::free_port();
    let out = nowhere.sluice(&["submit", "/dev/null"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the driver"));
}

#[test]
fn executors_started_before_the_driver_register_once_it_is_up() {
    let mut c = Cluster::new();
    c.add_executor();
    c.add_executor();
    std::thread::sleep(Duration::from_millis(700));
    c.start_driver();
    c.wait_for_driver();
    let sql = "SET 'trigger' = 'once';\nCREATE TABLE g (k BIGINT, v DOUBLE) WITH (connector = 'datagen', total_rows = '5000', fields.k.max = '9');\nCREATE TABLE o (batch BIGINT, k BIGINT, n BIGINT, total DOUBLE) WITH (connector = 'files', path = 'file://OUT', format = 'jsonl');\nINSERT INTO o SELECT _batch, k, count(*), sum(v) FROM g GROUP BY _batch, k;"
        .replace("OUT", &c.path("out").display().to_string());
    run_to_end(&c, &sql);
    let out = committed_jsonl(&c.path("out"));
    let n: u64 = out[&0].iter().map(|r| r["n"].as_u64().unwrap()).sum();
    assert_eq!(n, 5000);
    assert_eq!(out[&0].len(), 10);
    assert!(
        c.log("executor-0.log").contains("not reachable"),
        "the executor said it was retrying"
    );
}

#[test]
fn two_jobs_run_side_by_side_with_csv_in_and_csv_out() {
    let c = Cluster::start(3);
    write_inputs(&c.path("in"), 0..FILES);
    // A second input of the same rows as CSV.
    let csv_dir = c.path("csv");
    std::fs::create_dir_all(&csv_dir).unwrap();
    for i in 0..10 {
        let mut text = String::from("user_id,page,ts\n");
        for (u, p) in rows_of(i) {
            text.push_str(&format!("{u},{p},2025-01-01T00:00:00\n"));
        }
        std::fs::write(csv_dir.join(format!("in-{i:03}.csv")), text).unwrap();
    }
    let first = job(
        &c,
        "SET 'trigger' = 'available_now';",
        "batch BIGINT, page TEXT, n BIGINT",
        COUNT_QUERY,
    );
    let second = format!(
        "SET 'trigger' = 'once';
CREATE TABLE clicks (user_id BIGINT, page TEXT, ts TIMESTAMP)
  WITH (connector = 'files', path = '{}', format = 'csv');
CREATE TABLE totals (page TEXT, users BIGINT, best BIGINT)
  WITH (connector = 'files', path = 'file://{}', format = 'csv');
INSERT INTO totals SELECT upper(page), count(DISTINCT user_id), max(user_id) FROM clicks GROUP BY _batch, page;
",
        csv_dir.display(),
        c.path("totals").display()
    );
    let a = c.submit(&first).unwrap();
    let b = c.submit(&second).unwrap();
    for id in [&a, &b] {
        let s = c.wait_for(id, &["finished", "failed"], LONG);
        assert_eq!(s["state"], "finished", "{s}");
    }
    assert_eq!(
        counts_from(&committed_jsonl(&c.path("out"))),
        expected_counts(FILES)
    );
    // 'once' ignores max_files_per_batch and the CSV input is all one batch.
    let dir = c.path("totals/batch=0");
    assert!(dir.join("_SUCCESS").exists());
    let mut got = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if !e.file_name().to_string_lossy().ends_with(".csv") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("page,users,best"),
            "header from the sink's columns"
        );
        for l in lines {
            let f: Vec<&str> = l.split(',').collect();
            got.insert(
                f[0].to_string(),
                (f[1].parse::<u64>().unwrap(), f[2].parse::<i64>().unwrap()),
            );
        }
    }
    let mut want: BTreeMap<String, (std::collections::BTreeSet<i64>, i64)> = BTreeMap::new();
    for i in 0..10 {
        for (u, p) in rows_of(i) {
            let e = want
                .entry(p.to_uppercase())
                .or_insert((Default::default(), i64::MIN));
            e.0.insert(u);
            e.1 = e.1.max(u);
        }
    }
    let want: BTreeMap<String, (u64, i64)> = want
        .into_iter()
        .map(|(k, (s, m))| (k, (s.len() as u64, m)))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn processes_take_settings_from_a_config_file_and_the_environment() {
    let c = Cluster::new();
    let bins = sluice_cluster_tests::bin_dir();
    let conf = c.path("driver.toml");
    std::fs::write(
        &conf,
        format!(
            "listen = \"127.0.0.1:{}\"\nstate = \"{}\"\n",
            c.port,
            c.path("state").display()
        ),
    )
    .unwrap();
    let children = vec![
        std::process::Command::new(bins.join("sluice-driver"))
            .args(["--config", conf.to_str().unwrap()])
            .stderr(std::fs::File::create(c.path("driver.log")).unwrap())
            .spawn()
            .unwrap(),
        std::process::Command::new(bins.join("sluice-executor"))
            .env("SLUICE_DRIVER", c.url())
            .env("SLUICE_SLOTS", "3")
            .stderr(std::fs::File::create(c.path("executor.log")).unwrap())
            .spawn()
            .unwrap(),
    ];
    let sql = c.path("job.sql");
    std::fs::write(&sql, "SET 'trigger' = 'once';\nCREATE TABLE g (k BIGINT) WITH (connector = 'datagen', total_rows = '100');\nCREATE TABLE o WITH (connector = 'blackhole');\nINSERT INTO o SELECT k FROM g;\n").unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(bins.join("sluice"))
            .args(args)
            .env("SLUICE_DRIVER", c.url())
            .output()
            .unwrap()
    };
    let mut id = String::new();
    for _ in 0..100 {
        let out = cli(&["submit", sql.to_str().unwrap()]);
        if out.status.success() {
            id = String::from_utf8(out.stdout).unwrap().trim().to_string();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut finished = false;
    for _ in 0..200 {
        if id.is_empty() {
            break;
        }
        let s: Value =
            serde_json::from_slice(&cli(&["status", &id, "--json"]).stdout).unwrap_or(Value::Null);
        if s["state"] == "finished" && s["rows_in"] == 100 {
            finished = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for mut ch in children {
        let _ = ch.kill();
        let _ = ch.wait();
    }
    assert!(
        !id.is_empty(),
        "driver reachable at the config file's address"
    );
    assert!(finished, "driver log:\n{}", c.log("driver.log"));
    assert!(
        c.path(&format!("state/jobs/{id}/commits/0")).exists(),
        "state dir from the config file"
    );
    assert!(
        c.log("driver.log").contains("slots=3"),
        "executor slots from SLUICE_SLOTS"
    );
}
