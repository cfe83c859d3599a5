//! UNION ALL of two source tables on a real cluster: each table plans its own splits every
//! batch and keeps its own position in the offsets entry; an executor and the driver are
//! SIGKILLed mid-job and every batch's output is compared, key by key, with what the input
//! files say it must be.

use serde_json::Value;
use sluice_cluster_tests::{Cluster, committed_jsonl, wait_finished};
use std::collections::BTreeMap;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);
/// Files in each directory; each batch takes one file of each while it has one.
const A_FILES: usize = 6;
const B_FILES: usize = 4;

/// (k, v) rows of file `i` of table `a` or `b`.
fn rows_of(table: &str, i: usize) -> Vec<(i64, i64)> {
    let salt = if table == "a" { 3 } else { 11 };
    (0..150)
        .map(|j| {
            (
                ((i * 31 + j * 7 + salt) % 13) as i64,
                (j as i64) - 40 + i as i64,
            )
        })
        .collect()
}

fn write_inputs(c: &Cluster) {
    for (table, files) in [("a", A_FILES), ("b", B_FILES)] {
        let dir = c.path(&format!("in/{table}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..files {
            let text: String = rows_of(table, i)
                .iter()
                .map(|(k, v)| format!("{{\"k\":{k},\"v\":{v}}}\n"))
                .collect();
            std::fs::write(dir.join(format!("part-{i:02}.jsonl")), text).unwrap();
        }
    }
}

/// (count, sum) per key.
type Totals = BTreeMap<i64, (i64, i64)>;

/// What batch `b` reads: file b of `a` and, while it has one, file b of `b` (whose values the
/// query multiplies by 10).
fn batch_input(b: usize) -> Totals {
    let mut t = Totals::new();
    for (table, files, scale) in [("a", A_FILES, 1), ("b", B_FILES, 10)] {
        if b < files {
            for (k, v) in rows_of(table, b) {
                let e = t.entry(k).or_default();
                e.0 += 1;
                e.1 += v * scale;
            }
        }
    }
    t
}

fn job(c: &Cluster, extra: &str, sink: &str, query: &str) -> String {
    let table = |name: &str| {
        format!(
            "CREATE TABLE {name} (k BIGINT, v BIGINT)
  WITH (connector = 'files', path = 'file://{}', format = 'jsonl', max_files_per_batch = '1');",
            c.path(&format!("in/{name}")).display()
        )
    };
    format!(
        "SET 'trigger' = 'available_now';
SET 'partitions' = '3';
SET 'task.backoff' = '50ms';
{extra}
{}
{}
CREATE TABLE o ({sink}) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o {query};
",
        table("a"),
        table("b"),
        c.path("out").display()
    )
}

fn per_batch_job(c: &Cluster, extra: &str) -> String {
    job(
        c,
        extra,
        "b BIGINT, k BIGINT, n BIGINT, total BIGINT",
        "SELECT _batch, k, count(*), sum(v) FROM (SELECT k, v, _batch FROM a UNION ALL SELECT k, v * 10, _batch FROM b) GROUP BY _batch, k",
    )
}

fn running_job(c: &Cluster, extra: &str) -> String {
    job(
        c,
        extra,
        "k BIGINT, n BIGINT, total BIGINT",
        "SELECT k, count(*), sum(v) FROM (SELECT k, v FROM a UNION ALL SELECT k, v * 10 FROM b) GROUP BY k",
    )
}

/// Each committed batch's rows as key -> (n, total); a key twice in one batch fails.
fn emitted(c: &Cluster) -> BTreeMap<u64, Totals> {
    committed_jsonl(&c.path("out"))
        .into_iter()
        .map(|(b, rows)| {
            let mut m = Totals::new();
            for r in rows {
                if let Some(batch) = r.get("b") {
                    assert_eq!(batch.as_u64(), Some(b), "{r}");
                }
                let k = r["k"].as_i64().unwrap();
                let t = (r["n"].as_i64().unwrap(), r["total"].as_i64().unwrap());
                assert!(m.insert(k, t).is_none(), "key {k} twice in batch {b}");
            }
            (b, m)
        })
        .collect()
}

fn expect_per_batch(c: &Cluster) {
    let want: BTreeMap<u64, Totals> = (0..A_FILES).map(|b| (b as u64, batch_input(b))).collect();
    assert_eq!(
        emitted(c),
        want,
        "each batch is one file of a plus one of b"
    );
}

/// Update mode: each batch emits the keys it touched with their totals so far.
fn expect_running(c: &Cluster) {
    let mut so_far = Totals::new();
    let mut want = BTreeMap::new();
    for b in 0..A_FILES {
        let mut touched = Totals::new();
        for (k, (n, s)) in batch_input(b) {
            let e = so_far.entry(k).or_default();
            e.0 += n;
            e.1 += s;
            touched.insert(k, *e);
        }
        want.insert(b as u64, touched);
    }
    assert_eq!(emitted(c), want, "running totals over both tables");
}

fn inspect(c: &Cluster) -> Value {
    let out = c.sluice(&["checkpoint", "inspect", &c.state_uri(), "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn per_batch_union_of_two_directories_survives_an_executor_kill() {
    let mut c = Cluster::start(3);
    write_inputs(&c);
    c.wait_for_registrations(3);
    // Batch 2's reducers wait 1.5 s, so the kill lands while its map outputs are needed.
    let id = c
        .submit(&per_batch_job(
            &c,
            "SET 'sluice.test.delay_task' = '1:1500ms';",
        ))
        .unwrap();
    c.wait_until(&id, LONG, |s| s["batches_committed"].as_u64() >= Some(2));
    c.kill_executor(0);
    let s = wait_finished(&c, &id);
    assert_eq!(s["batches_committed"], A_FILES as u64, "{s}");
    expect_per_batch(&c);
    // Every batch logged each table's own splits.
    let all = inspect(&c);
    let batches = all[0]["batches"].as_array().unwrap();
    assert_eq!(batches.len(), A_FILES);
    for (b, batch) in batches.iter().enumerate() {
        let files: BTreeMap<String, usize> = batch["input"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let t = i["table"].as_str().unwrap().to_string();
                (t, i["splits"].as_array().unwrap().len())
            })
            .collect();
        let want_b = usize::from(b < B_FILES);
        assert_eq!(
            files,
            BTreeMap::from([("a".into(), 1), ("b".into(), want_b)]),
            "batch {b}: {batch}"
        );
    }
}

#[test]
fn running_union_survives_driver_and_executor_kills() {
    let mut c = Cluster::start(2);
    write_inputs(&c);
    c.wait_for_registrations(2);
    let id = c
        .submit(&running_job(
            &c,
            "SET 'sluice.test.pause_at' = 'before_commit:2:3s';",
        ))
        .unwrap();
    c.crash_driver_at("before_commit", 2, 0);
    wait_finished(&c, &id);
    expect_running(&c);
    assert!(c.log("driver.log").contains("rerunning uncommitted batch"));
}

#[test]
fn a_resubmission_that_changes_the_union_s_tables_is_refused() {
    let c = Cluster::start(1);
    write_inputs(&c);
    let first = running_job(&c, "SET 'name' = 'u';");
    let id = c.submit(&first).unwrap();
    wait_finished(&c, &id);
    expect_running(&c);
    // One table fewer: the checkpoint's offsets belong to both.
    let fewer = first.replace(
        "FROM (SELECT k, v FROM a UNION ALL SELECT k, v * 10 FROM b)",
        "FROM a",
    );
    assert_ne!(fewer, first);
    let err = c
        .submit_with(&fewer, &["--resume", &id])
        .expect_err("refused");
    let err = err.to_string();
    assert!(
        err.contains("the source tables changed from 'a', 'b' to 'a'"),
        "{err}"
    );
}

/// The `sequence` connector exists only in its module and the registry; here it is read from
/// SQL, in a union with a directory, by a real cluster.
#[test]
fn a_connector_known_only_to_the_registry_is_usable_from_sql_in_a_union() {
    let c = Cluster::start(2);
    write_inputs(&c);
    let sql = job(
        &c,
        "SET 'output_mode' = 'complete';",
        "k BIGINT, n BIGINT, total BIGINT",
        "SELECT k, count(*), sum(v) FROM (SELECT n % 13 AS k, n AS v FROM seq UNION ALL SELECT k, v FROM a) GROUP BY k",
    )
    .replace(
        "CREATE TABLE o",
        "CREATE TABLE seq (n BIGINT) WITH (connector = 'sequence', end = '1000', rows_per_batch = '250');\nCREATE TABLE o",
    );
    let id = c.submit(&sql).unwrap();
    let status = wait_finished(&c, &id);
    // The progress channel: every task's metrics, folded per batch, in the job's status.
    let last = status["recent_batches"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let metric = |name: &str| last["metrics"][name].as_i64();
    assert_eq!(
        metric("state_rows"),
        Some(13),
        "13 keys held as state: {last}"
    );
    assert!(metric("state_bytes") > Some(0), "{last}");
    // Rows in and out of the stateful operator itself: map tasks aggregate before the
    // shuffle, so it takes in at most one row per key and map task, and emits the 13 keys.
    let (rows_in, agg_in) = (
        last["rows_in"].as_i64().unwrap(),
        metric("agg-1.rows_in").unwrap(),
    );
    // Every task but the 3 reducers ('partitions' = 3) is a map task.
    let map_tasks = last["tasks"].as_i64().unwrap() - 3;
    assert!(
        agg_in >= 13 && agg_in <= 13 * map_tasks && agg_in < rows_in,
        "{last}"
    );
    assert_eq!(metric("agg-1.rows_out"), Some(13), "{last}");
    // What every task wrote: the map tasks' partial rows, then the 13 keys to the sink.
    assert_eq!(metric("rows_out"), Some(agg_in + 13), "{last}");
    let mut want = Totals::new();
    for n in 0..1000i64 {
        let e = want.entry(n % 13).or_default();
        e.0 += 1;
        e.1 += n;
    }
    for i in 0..A_FILES {
        for (k, v) in rows_of("a", i) {
            let e = want.entry(k).or_default();
            e.0 += 1;
            e.1 += v;
        }
    }
    let out = emitted(&c);
    assert_eq!(
        out.len(),
        A_FILES,
        "six batches: the directory outlasts the sequence"
    );
    assert_eq!(
        out[&(A_FILES as u64 - 1)],
        want,
        "the whole table after the last batch"
    );
    // Four batches of 250 numbers, then none: the sequence's own summary in the checkpoint.
    let all = inspect(&c);
    let summaries: Vec<String> = all[0]["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b["input"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["table"] == "seq")
                .map(|i| i["summary"].as_str().unwrap().to_string())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(summaries[0], "numbers 0..250 in 3 splits", "{summaries:?}");
    assert_eq!(
        summaries[3], "numbers 750..1000 in 3 splits",
        "{summaries:?}"
    );
    assert_eq!(summaries[4], "no input", "{summaries:?}");
}
