//! Stream–static joins on a real cluster: a directory of events joined, batch by batch, with a
//! static table that every batch lists and logs (names, sizes, ETags). Executors and the driver
//! are SIGKILLed, the static table is replaced while the job runs, and a missing or undecodable
//! one fails the job naming its file; every committed batch is compared, key by key, with what
//! the files say.

use serde_json::Value;
use sluice_cluster_tests::{Cluster, S3Server, committed_jsonl, run_to_end, wait_finished};
use std::collections::BTreeMap;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);
const FILES: usize = 6;

/// (k, v) rows of event file `i`.
fn events(i: usize) -> Vec<(i64, i64)> {
    (0..120)
        .map(|j| (((i * 17 + j * 5) % 11) as i64, j as i64 - 30 + i as i64))
        .collect()
}

/// The static table's mapping k -> name in version `version`; keys 9 and 10 have no name.
fn names(version: u32) -> BTreeMap<i64, String> {
    (0..9)
        .map(|k| (k, format!("g{}", (k + i64::from(version)) % 4)))
        .collect()
}

fn write_events(c: &Cluster) {
    let dir = c.path("in");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..FILES {
        let text: String = events(i)
            .iter()
            .map(|(k, v)| format!("{{\"k\":{k},\"v\":{v}}}\n"))
            .collect();
        std::fs::write(dir.join(format!("part-{i:02}.jsonl")), text).unwrap();
    }
}

/// Writes version `version` of the static table as `dim/v<version>.jsonl` (written aside, then
/// renamed in) and removes the other versions.
fn write_dim(c: &Cluster, version: u32) {
    let dir = c.path("dim");
    std::fs::create_dir_all(&dir).unwrap();
    let text: String = names(version)
        .iter()
        .map(|(k, n)| format!("{{\"k\":{k},\"name\":\"{n}\"}}\n"))
        .collect();
    let tmp = dir.join(format!("v{version}.jsonl.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(format!("v{version}.jsonl"))).unwrap();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.file_name() != *format!("v{version}.jsonl") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
}

/// (count, sum) per name.
type Totals = BTreeMap<String, (i64, i64)>;

/// What batch `b` joins to: its events with names from `version`; unmatched keys are
/// "none" in a left join and dropped in an inner one.
fn batch_totals(b: usize, version: u32, left: bool) -> Totals {
    let names = names(version);
    let mut t = Totals::new();
    for (k, v) in events(b) {
        let name = match names.get(&k) {
            Some(n) => n.clone(),
            None if left => "none".into(),
            None => continue,
        };
        let e = t.entry(name).or_default();
        e.0 += 1;
        e.1 += v;
    }
    t
}

fn job(c: &Cluster, extra: &str, sink: &str, query: &str) -> String {
    format!(
        "SET 'trigger' = 'available_now';
SET 'partitions' = '3';
SET 'task.backoff' = '50ms';
{extra}
CREATE TABLE s (k BIGINT, v BIGINT)
  WITH (connector = 'files', path = 'file://{}', format = 'jsonl', max_files_per_batch = '1');
CREATE TABLE d (k BIGINT, name TEXT)
  WITH (connector = 'files', path = 'file://{}', format = 'jsonl', static = 'true');
CREATE TABLE o ({sink}) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o {query};
",
        c.path("in").display(),
        c.path("dim").display(),
        c.path("out").display()
    )
}

fn per_batch_job(c: &Cluster, extra: &str) -> String {
    job(
        c,
        extra,
        "b BIGINT, name TEXT, n BIGINT, total BIGINT",
        "SELECT _batch, d.name, count(*), sum(s.v) FROM s JOIN d ON s.k = d.k GROUP BY _batch, d.name",
    )
}

fn running_job(c: &Cluster, extra: &str) -> String {
    job(
        c,
        extra,
        "name TEXT, n BIGINT, total BIGINT",
        "SELECT name, count(*), sum(v) FROM (SELECT coalesce(d.name, 'none') AS name, s.v FROM s LEFT JOIN d ON s.k = d.k) GROUP BY name",
    )
}

fn emitted(c: &Cluster) -> BTreeMap<u64, Totals> {
    committed_jsonl(&c.path("out"))
        .into_iter()
        .map(|(b, rows)| {
            let mut m = Totals::new();
            for r in rows {
                if let Some(batch) = r.get("b") {
                    assert_eq!(batch.as_u64(), Some(b), "{r}");
                }
                let name = r["name"].as_str().unwrap().to_string();
                let t = (r["n"].as_i64().unwrap(), r["total"].as_i64().unwrap());
                assert!(
                    m.insert(name.clone(), t).is_none(),
                    "{name} twice in batch {b}"
                );
            }
            (b, m)
        })
        .collect()
}

/// Per batch, the static version it must have joined.
fn expect_per_batch(c: &Cluster, version_of: impl Fn(usize) -> u32, batches: usize) {
    let want: BTreeMap<u64, Totals> = (0..batches)
        .map(|b| (b as u64, batch_totals(b, version_of(b), false)))
        .collect();
    assert_eq!(emitted(c), want);
}

/// The static files each logged batch of job `id` joined, by batch.
fn logged_dim_files(c: &Cluster, id: &str) -> BTreeMap<u64, Vec<String>> {
    let out = c.sluice(&["checkpoint", "inspect", &c.state_uri(), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = all
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == id)
        .expect("the job's checkpoint");
    let mut logged = BTreeMap::new();
    for batch in job["batches"].as_array().unwrap() {
        let b = batch["batch"].as_u64().unwrap();
        for input in batch["input"].as_array().unwrap() {
            if input["table"] == "d" {
                let files = input["splits"].as_array().unwrap();
                let names = files
                    .iter()
                    .map(|f| {
                        assert!(
                            f["e_tag"].is_string() && f["size"].as_u64() > Some(0),
                            "{f}"
                        );
                        let uri = f["uri"].as_str().unwrap();
                        uri.rsplit('/').next().unwrap().to_string()
                    })
                    .collect();
                logged.insert(b, names);
            }
        }
    }
    logged
}

/// Waits until the job's loop holds after committing batch 1 (`pause_at = 'after_commit:1:3s'`).
fn paused_after_batch_1(c: &Cluster) {
    let needles = ["test pause", "step=\"after_commit\"", "batch=1"];
    c.wait_for_log("driver.log", &needles, 1, LONG);
}

#[test]
fn per_batch_inner_join_survives_an_executor_kill() {
    let mut c = Cluster::start(3);
    write_events(&c);
    write_dim(&c, 1);
    c.wait_for_registrations(3);
    let id = c
        .submit(&per_batch_job(
            &c,
            "SET 'sluice.test.delay_task' = '1:1500ms';",
        ))
        .unwrap();
    c.wait_until(&id, LONG, |s| s["batches_committed"].as_u64() >= Some(2));
    c.kill_executor(0);
    wait_finished(&c, &id);
    expect_per_batch(&c, |_| 1, FILES);
    let logged = logged_dim_files(&c, &id);
    assert_eq!(logged.len(), FILES);
    assert!(logged.values().all(|f| f == &["v1.jsonl"]), "{logged:?}");
    // Each executor read the table once per version, not once per task.
    let reads: usize = (0..3)
        .map(|i| {
            c.log(&format!("executor-{i}.log"))
                .matches("static table read")
                .count()
        })
        .sum();
    assert!(
        (1..=3).contains(&reads),
        "{reads} reads of the static table"
    );
}

#[test]
fn running_left_join_survives_driver_and_executor_kills() {
    let mut c = Cluster::start(2);
    write_events(&c);
    write_dim(&c, 1);
    c.wait_for_registrations(2);
    let id = c
        .submit(&running_job(
            &c,
            "SET 'sluice.test.pause_at' = 'before_commit:2:3s';",
        ))
        .unwrap();
    c.crash_driver_at("before_commit", 2, 0);
    wait_finished(&c, &id);
    assert!(c.log("driver.log").contains("rerunning uncommitted batch"));
    // Update mode: each batch emits the names it touched with their totals so far.
    let mut so_far = Totals::new();
    let mut want = BTreeMap::new();
    for b in 0..FILES {
        let mut touched = Totals::new();
        for (name, (n, s)) in batch_totals(b, 1, true) {
            let e = so_far.entry(name.clone()).or_default();
            e.0 += n;
            e.1 += s;
            touched.insert(name, *e);
        }
        want.insert(b as u64, touched);
    }
    assert_eq!(emitted(&c), want);
    assert!(
        want[&0].contains_key("none"),
        "unmatched keys kept by the left join"
    );
}

#[test]
fn a_static_table_replaced_while_the_job_runs_is_joined_from_the_next_batch() {
    let c = Cluster::start(2);
    write_events(&c);
    write_dim(&c, 1);
    let id = c
        .submit(&per_batch_job(
            &c,
            "SET 'sluice.test.pause_at' = 'after_commit:1:3s';",
        ))
        .unwrap();
    paused_after_batch_1(&c);
    write_dim(&c, 2);
    wait_finished(&c, &id);
    let version_of = |b: usize| if b <= 1 { 1 } else { 2 };
    expect_per_batch(&c, version_of, FILES);
    let logged = logged_dim_files(&c, &id);
    for (b, files) in &logged {
        assert_eq!(
            files,
            &[format!("v{}.jsonl", version_of(*b as usize))],
            "batch {b}"
        );
    }
}

#[test]
fn a_missing_static_table_fails_the_job_naming_its_path() {
    let c = Cluster::start(1);
    write_events(&c);
    let sql = per_batch_job(&c, "SET 'restart.strategy' = 'none';");
    let id = c.submit(&sql).unwrap();
    let s = c.wait_for(&id, &["finished", "failed"], LONG);
    assert_eq!(s["state"], "failed", "{s}");
    let error = s["error"].as_str().unwrap();
    let path = c.path("dim").display().to_string();
    assert!(
        error.contains("table 'd'") && error.contains(&path) && error.contains("does not exist"),
        "{error}"
    );
    assert!(committed_jsonl(&c.path("out")).is_empty());
}

#[test]
fn an_undecodable_static_table_fails_the_job_with_its_file_and_line_and_keeps_what_committed() {
    let c = Cluster::start(2);
    write_events(&c);
    write_dim(&c, 1);
    let id = c
        .submit(&per_batch_job(
            &c,
            "SET 'sluice.test.pause_at' = 'after_commit:1:3s';",
        ))
        .unwrap();
    paused_after_batch_1(&c);
    // Version 2 with a broken third line, renamed in over version 1.
    let dir = c.path("dim");
    std::fs::write(
        dir.join("v2.jsonl.tmp"),
        "{\"k\":0,\"name\":\"a\"}\n{\"k\":1,\"name\":\"b\"}\n{\"k\":2,\"name\":\n",
    )
    .unwrap();
    std::fs::rename(dir.join("v2.jsonl.tmp"), dir.join("v2.jsonl")).unwrap();
    std::fs::remove_file(dir.join("v1.jsonl")).unwrap();
    let s = c.wait_for(&id, &["finished", "failed"], LONG);
    assert_eq!(s["state"], "failed", "{s}");
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains("v2.jsonl") && error.contains("line 3") && error.contains("bad input"),
        "{error}"
    );
    // Batches 0 and 1 stay committed, exactly as they joined version 1.
    expect_per_batch(&c, |_| 1, 2);
}

/// A static table written as Parquet to S3 (moto, on loopback) by a first job, then joined
/// to every batch of a stream by a second one; each batch logs the objects' ETags.
#[test]
fn a_parquet_static_table_on_s3_is_joined_to_every_batch() {
    let s3 = S3Server::start("sluice-static");
    let mut c = Cluster::new();
    c.env = s3.env();
    let c = Cluster::start_with(c, 2);
    write_events(&c);
    let dim = s3.uri("dim");
    // Version 1 of the names: k -> g<(k + 1) % 4> for k in 0..9, in two Parquet parts.
    let make = format!(
        "SET 'trigger' = 'once';
CREATE TABLE seq (n BIGINT) WITH (connector = 'sequence', end = '9', splits = '2');
CREATE TABLE dim (k BIGINT, name TEXT) WITH (connector = 'files', path = '{dim}', format = 'parquet');
INSERT INTO dim SELECT n, concat('g', CAST((n + 1) % 4 AS TEXT)) FROM seq;"
    );
    run_to_end(&c, &make);
    let local = format!(
        "path = 'file://{}', format = 'jsonl', static",
        c.path("dim").display()
    );
    let sql = per_batch_job(&c, "");
    assert!(sql.contains(&local));
    let sql = sql.replace(
        &local,
        &format!("path = '{dim}/batch=0', format = 'parquet', static"),
    );
    let id = c.submit(&sql).unwrap();
    wait_finished(&c, &id);
    expect_per_batch(&c, |_| 1, FILES);
    let logged = logged_dim_files(&c, &id);
    assert_eq!(logged.len(), FILES);
    for files in logged.values() {
        assert_eq!(files, &["part-00000.parquet", "part-00001.parquet"]);
    }
}
