//! The Kafka source and sink against a real Kafka-wire broker (tansu, sqlite storage) on
//! loopback: records with known keys are produced across 4 partitions and the jobs' committed
//! output is compared with what was produced, key by key: nothing lost, nothing twice.

use serde_json::Value;
use sluice_cluster_tests::{Cluster, KafkaBroker, committed_jsonl, run_to_end};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(120);

/// Record `i`: key k<i % 37>, partition i % 4, value {"user": i, "amount": i % 10}.
fn records(range: std::ops::Range<u64>) -> Vec<(i32, String, String)> {
    range
        .map(|i| {
            (
                (i % 4) as i32,
                format!("k{}", i % 37),
                format!("{{\"user\": {i}, \"amount\": {}}}", i % 10),
            )
        })
        .collect()
}

/// Count per key of records `range`.
fn counts(range: std::ops::Range<u64>) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for (_, k, _) in records(range) {
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

fn source(broker: &KafkaBroker, extra: &str) -> String {
    format!(
        "CREATE TABLE events (user BIGINT, amount BIGINT)
  WITH (connector = 'kafka', 'bootstrap.servers' = '{}', topic = 'events', format = 'jsonl'{extra});",
        broker.bootstrap()
    )
}

/// Per-batch counts summed over the committed batches.
fn summed_counts(c: &Cluster) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for rows in committed_jsonl(&c.path("out")).values() {
        for r in rows {
            *m.entry(r["key"].as_str().unwrap().to_string()).or_insert(0) +=
                r["n"].as_i64().unwrap();
        }
    }
    m
}

/// A running count's table: each key's value from the latest batch that emitted it.
fn latest_counts(c: &Cluster) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for rows in committed_jsonl(&c.path("out")).values() {
        for r in rows {
            m.insert(
                r["key"].as_str().unwrap().to_string(),
                r["n"].as_i64().unwrap(),
            );
        }
    }
    m
}

#[test]
fn per_batch_counts_by_key_are_exact_and_the_rate_limit_splits_the_backlog() {
    let broker = KafkaBroker::start();
    broker.create_topic("events", 4);
    broker.produce("events", &records(0..2000));
    let mut c = Cluster::new();
    let ops = format!("127.0.0.1:{}", sluice_cluster_tests::free_port());
    c.driver_args = vec!["--metrics-listen".into(), ops.clone()];
    let c = Cluster::start_with(c, 2);
    let sql = format!(
        "SET 'trigger' = 'available_now';
{}
CREATE TABLE o (batch BIGINT, key TEXT, n BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT _batch, _key, count(*) FROM events GROUP BY _batch, _key;
",
        source(&broker, ", max_offsets_per_trigger = '600', 'group.id' = 'sluice-test'"),
        c.path("out").display()
    );
    let s = run_to_end(&c, &sql);
    assert_eq!(summed_counts(&c), counts(0..2000));
    let batches = committed_jsonl(&c.path("out")).len();
    assert!(
        batches >= 4,
        "600 offsets per batch over 2000 records: {batches} batches"
    );
    assert_eq!(s["rows_in"], 2000, "{s}");
    // The end offsets went to the consumer group, so lag tools see the job caught up.
    assert_eq!(
        broker.group_offsets("sluice-test", "events", 4),
        vec![500; 4]
    );
    // And the driver's lag metric says the same.
    let (_, metrics) = sluice_cluster_tests::http_get(&ops, "/metrics");
    let job = s["job_id"].as_str().unwrap();
    let lag = format!("sluice_kafka_lag_records{{job=\"{job}\"}} 0");
    assert!(
        metrics.lines().any(|l| l == lag),
        "{lag} not in:\n{metrics}"
    );
}

#[test]
fn running_count_survives_executor_and_driver_kills_while_records_arrive() {
    let broker = KafkaBroker::start();
    broker.create_topic("events", 4);
    broker.produce("events", &records(0..1000));
    let mut c = Cluster::start(2);
    c.wait_for_registrations(2);
    let sql = format!(
        "SET 'trigger' = '200ms';
SET 'task.backoff' = '50ms';
{}
CREATE TABLE o (key TEXT, n BIGINT, total BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT _key, count(*), sum(amount) FROM events GROUP BY _key;
",
        source(&broker, ", max_offsets_per_trigger = '300'"),
        c.path("out").display()
    );
    let id = c.submit(&sql).unwrap();
    let rows_in = |c: &Cluster| {
        c.status(&id)
            .map(|s| s["rows_in"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    let wait_rows = |c: &Cluster, n: u64| {
        let deadline = Instant::now() + LONG;
        while rows_in(c) < n {
            assert!(
                Instant::now() < deadline,
                "stuck below {n} rows: {}",
                c.log("driver.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_rows(&c, 300);
    broker.produce("events", &records(1000..2000));
    c.kill_executor(0);
    c.add_executor();
    wait_rows(&c, 1200);
    broker.produce("events", &records(2000..3000));
    c.kill_driver();
    c.start_driver();
    c.wait_for_driver();
    broker.produce("events", &records(3000..4000));
    // Counted from the checkpoint after the restart, so wait on the output itself.
    let deadline = Instant::now() + LONG;
    while latest_counts(&c).values().sum::<i64>() < 4000 {
        assert!(
            Instant::now() < deadline,
            "driver log:\n{}",
            c.log("driver.log")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        latest_counts(&c),
        counts(0..4000),
        "nothing lost, nothing twice"
    );
    let totals: BTreeMap<String, i64> = committed_jsonl(&c.path("out"))
        .values()
        .flatten()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["total"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut want = BTreeMap::new();
    for i in 0..4000u64 {
        *want.entry(format!("k{}", i % 37)).or_insert(0) += (i % 10) as i64;
    }
    assert_eq!(totals, want);
}

#[test]
fn starting_offsets_latest_and_per_partition() {
    let broker = KafkaBroker::start();
    broker.create_topic("events", 4);
    broker.produce("events", &records(0..400));
    let c = Cluster::start(1);
    let job = |extra: &str, out: &str| {
        format!(
            "SET 'trigger' = '100ms';
{}
CREATE TABLE o (batch BIGINT, key TEXT, n BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT _batch, _key, count(*) FROM events GROUP BY _batch, _key;
",
            source(&broker, extra),
            c.path(out).display()
        )
    };
    let latest = c
        .submit(&job(", starting_offsets = 'latest'", "latest"))
        .unwrap();
    // Partition 0 from offset 60 (record 240 on), the others from their start.
    let exact = c
        .submit(&job(
            ", starting_offsets = '{\"events\": {\"0\": 60}}'",
            "exact",
        ))
        .unwrap();
    // The first batch of each job logs the starting positions, reading nothing or the backlog.
    c.wait_until(&latest, LONG, |s| {
        s["batches_committed"].as_u64() >= Some(1)
    });
    c.wait_until(&exact, LONG, |s| s["rows_in"].as_u64() >= Some(340));
    broker.produce("events", &records(400..500));
    c.wait_until(&latest, LONG, |s| s["rows_in"].as_u64() >= Some(100));
    c.wait_until(&exact, LONG, |s| s["rows_in"].as_u64() >= Some(440));
    std::thread::sleep(Duration::from_millis(500));
    for id in [&latest, &exact] {
        assert!(c.sluice(&["stop", id]).status.success());
    }
    let sum = |dir: &str| -> BTreeMap<String, i64> {
        let mut m = BTreeMap::new();
        for rows in committed_jsonl(&c.path(dir)).values() {
            for r in rows {
                *m.entry(r["key"].as_str().unwrap().to_string()).or_insert(0) +=
                    r["n"].as_i64().unwrap();
            }
        }
        m
    };
    assert_eq!(sum("latest"), counts(400..500));
    let mut want = BTreeMap::new();
    for (p, k, _) in records(0..500) {
        let _ = p;
        *want.entry(k).or_insert(0) += 1;
    }
    // Subtract partition 0's first 60 records (records 0, 4, ..., 236).
    for i in (0..240u64).step_by(4) {
        *want.get_mut(&format!("k{}", i % 37)).unwrap() -= 1;
    }
    want.retain(|_, n| *n > 0);
    assert_eq!(sum("exact"), want);
}

#[test]
fn a_bad_record_fails_the_job_naming_topic_partition_and_offset() {
    let broker = KafkaBroker::start();
    broker.create_topic("events", 4);
    broker.produce("events", &records(0..40));
    // Partition 2 now holds offsets 0..10; the bad record is offset 10.
    broker.produce(
        "events",
        &[(2, "bad".into(), "{\"user\": \"not a number\"".into())],
    );
    let c = Cluster::start(1);
    let sql = format!(
        "SET 'trigger' = 'available_now';
{}
CREATE TABLE o (batch BIGINT, key TEXT, n BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT _batch, _key, count(*) FROM events GROUP BY _batch, _key;
",
        source(&broker, ""),
        c.path("out").display()
    );
    let id = c.submit(&sql).unwrap();
    let s = c.wait_for(&id, &["finished", "failed"], LONG);
    assert_eq!(s["state"], "failed", "{s}");
    let e = s["error"].as_str().unwrap();
    assert!(
        e.contains("table 'events': topic 'events' partition 2 offset 10:"),
        "{e}"
    );
    assert!(
        committed_jsonl(&c.path("out")).is_empty(),
        "the batch never committed"
    );
}

#[test]
fn kafka_sink_produces_every_row_with_its_key() {
    let broker = KafkaBroker::start();
    broker.create_topic("out", 4);
    let c = Cluster::start(2);
    let sql = format!(
        "SET 'trigger' = 'available_now';
CREATE TABLE g (k BIGINT, v BIGINT)
  WITH (connector = 'datagen', rows_per_second = '500', total_rows = '1500', splits = '3', 'fields.k.max' = '20');
CREATE TABLE o (k BIGINT, v BIGINT)
  WITH (connector = 'kafka', 'bootstrap.servers' = '{}', topic = 'out', format = 'jsonl', 'key.column' = 'k');
INSERT INTO o SELECT k, v FROM g;
",
        broker.bootstrap()
    );
    run_to_end(&c, &sql);
    let got = broker.consume_all("out", 4);
    assert_eq!(got.len(), 1500);
    for (_, key, value) in &got {
        let v: Value = serde_json::from_str(value).unwrap();
        assert_eq!(key.as_deref(), Some(v["k"].to_string().as_str()));
    }
}

#[test]
fn bad_records_go_to_the_dead_letter_table_and_the_batch_goes_on() {
    let broker = KafkaBroker::start();
    broker.create_topic("events", 4);
    broker.produce("events", &records(0..400));
    broker.produce(
        "events",
        &[
            (1, "bad1".into(), "not json at all".into()),
            (3, "bad2".into(), "{\"user\": \"x\", \"amount\": 1}".into()),
        ],
    );
    broker.produce("events", &records(400..800));
    let c = Cluster::start(2);
    let sql = format!(
        "SET 'trigger' = 'available_now';
{}
CREATE TABLE bad WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
CREATE TABLE o (batch BIGINT, key TEXT, n BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT _batch, _key, count(*) FROM events GROUP BY _batch, _key;
",
        source(&broker, ", on_error = 'dead_letter', 'dead_letter.table' = 'bad'"),
        c.path("bad").display(),
        c.path("out").display()
    );
    let s = run_to_end(&c, &sql);
    assert_eq!(
        summed_counts(&c),
        counts(0..800),
        "every good record counted once"
    );
    let dead: Vec<Value> = committed_jsonl(&c.path("bad"))
        .into_values()
        .flatten()
        .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    let mut where_: Vec<(i64, i64, String)> = dead
        .iter()
        .map(|d| {
            (
                d["partition"].as_i64().unwrap(),
                d["offset"].as_i64().unwrap(),
                d["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    where_.sort();
    // 100 records per partition came first, so each bad record sits at offset 100.
    assert_eq!(
        where_,
        vec![(1, 100, "bad1".to_string()), (3, 100, "bad2".to_string())]
    );
    assert!(
        dead.iter()
            .all(|d| !d["error"].as_str().unwrap().is_empty())
    );
    let counted: u64 = s["recent_batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["dead_letters"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 2);
}

/// The README's Kafka example, as written (only the broker address and output path moved):
/// one job fills the topic, the two jobs of kafka_count_by_key.sql count it.
#[test]
fn the_kafka_examples_count_what_was_produced() {
    let broker = KafkaBroker::start();
    broker.create_topic("events", 4);
    let c = Cluster::start(2);
    let example = |name: &str| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name);
        std::fs::read_to_string(path)
            .unwrap()
            .replace("127.0.0.1:9092", &broker.bootstrap())
            .replace(
                "/tmp/sluice-example/running_counts",
                c.path("out").to_str().unwrap(),
            )
    };
    run_to_end(&c, &example("kafka_produce_events.sql"));
    let produced = broker.consume_all("events", 4);
    assert_eq!(produced.len(), 20_000);
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for (_, key, _) in &produced {
        *want.entry(key.clone().unwrap()).or_insert(0) += 1;
    }
    let out = c.sluice(&["submit", &{
        let f = c.path("count.sql");
        std::fs::write(&f, example("kafka_count_by_key.sql")).unwrap();
        f.to_str().unwrap().to_string()
    }]);
    assert!(out.status.success(), "{out:?}");
    let ids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), 2, "one job per INSERT");
    let deadline = Instant::now() + LONG;
    while latest_counts(&c) != want {
        assert!(
            Instant::now() < deadline,
            "driver log:\n{}",
            c.log("driver.log")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.wait_until(&ids[0], LONG, |s| s["rows_in"].as_u64() >= Some(20_000));
    let per_batch = c.status(&ids[0]).unwrap();
    assert!(
        per_batch["name"].as_str().unwrap().ends_with(":per_batch"),
        "{per_batch}"
    );
    for id in &ids {
        assert!(c.sluice(&["stop", id]).status.success());
    }
}

#[test]
fn topics_by_list_and_by_pattern() {
    let broker = KafkaBroker::start();
    for t in ["ev-a", "ev-b", "other"] {
        broker.create_topic(t, 2);
    }
    let two = |range: std::ops::Range<u64>| -> Vec<(i32, String, String)> {
        records(range)
            .into_iter()
            .map(|(p, k, v)| (p % 2, k, v))
            .collect()
    };
    broker.produce("ev-a", &two(0..300));
    broker.produce("ev-b", &two(300..500));
    broker.produce("other", &two(500..900));
    let c = Cluster::start(1);
    let job = |topics: &str, out: &str| {
        format!(
            "SET 'trigger' = 'available_now';
CREATE TABLE events (user BIGINT, amount BIGINT)
  WITH (connector = 'kafka', 'bootstrap.servers' = '{}', {topics});
CREATE TABLE o (batch BIGINT, key TEXT, n BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT _batch, _key, count(*) FROM events GROUP BY _batch, _key;
",
            broker.bootstrap(),
            c.path(out).display()
        )
    };
    run_to_end(&c, &job("topics = 'ev-a, ev-b'", "list"));
    run_to_end(&c, &job("topic_pattern = 'ev-.*'", "pattern"));
    for dir in ["list", "pattern"] {
        let mut got = BTreeMap::new();
        for rows in committed_jsonl(&c.path(dir)).values() {
            for r in rows {
                *got.entry(r["key"].as_str().unwrap().to_string())
                    .or_insert(0) += r["n"].as_i64().unwrap();
            }
        }
        assert_eq!(got, counts(0..500), "{dir}");
    }
    let e = c
        .submit(&job("topic = 'nope'", "nope"))
        .map(|id| c.wait_for(&id, &["failed", "finished"], LONG));
    let s = e.unwrap();
    assert_eq!(s["state"], "failed");
    assert!(
        s["error"].as_str().unwrap().contains("'nope' do not exist"),
        "{s}"
    );
}

#[test]
fn a_logged_batch_whose_topic_was_deleted_follows_fail_on_data_loss() {
    for fail in [true, false] {
        let broker = KafkaBroker::start();
        broker.create_topic("events", 2);
        broker.produce("events", &records(0..40));
        let mut c = Cluster::start(1);
        let extra = format!(", fail_on_data_loss = '{fail}'");
        // The driver logs batch 0's offsets and is killed before any task reads them.
        let id = c
            .submit(&format!(
                "SET 'trigger' = '100ms';
SET 'sluice.test.pause_at' = 'before_tasks:0:5s';
{}
CREATE TABLE out WITH (connector = 'blackhole');
INSERT INTO out SELECT user FROM events;",
                source(&broker, &extra)
            ))
            .expect("submit");
        c.wait_for_log("driver.log", &["test pause", "before_tasks"], 1, LONG);
        c.kill_driver();
        broker.delete_topic("events");
        c.start_driver();
        if fail {
            let s = c.wait_for(&id, &["failed"], LONG);
            let error = s["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("topic 'events' partition")
                    && error.contains("of a logged batch can no longer be read")
                    && error.contains("bad input"),
                "{s}"
            );
        } else {
            // The rerun skips what is gone and the batch commits (empty).
            let s = c.wait_until(&id, LONG, |s| s["batches_committed"].as_u64() >= Some(1));
            assert_eq!(s["recent_batches"][0]["rows_in"], 0, "{s}");
            assert!(
                c.log("executor-0.log")
                    .contains("of a logged batch are skipped")
            );
        }
    }
}

/// UNION ALL of two topics and a directory into one running count, each table with its own
/// offsets in the checkpoint; an executor dies mid-job and every key's count is still exact.
#[test]
fn a_union_of_two_topics_and_a_directory_counts_exactly_through_an_executor_kill() {
    let broker = KafkaBroker::start();
    broker.create_topic("ua", 4);
    broker.create_topic("ub", 2);
    broker.produce("ua", &records(0..1200));
    let two: Vec<_> = records(1200..1800)
        .into_iter()
        .map(|(p, k, v)| (p % 2, k, v))
        .collect();
    broker.produce("ub", &two);
    let mut c = Cluster::start(3);
    let dir = c.path("in");
    std::fs::create_dir_all(&dir).unwrap();
    for f in 0..3u64 {
        let lines: String = (0..100)
            .map(|j| format!("{{\"key\":\"k{}\"}}\n", (f * 100 + j) % 37))
            .collect();
        std::fs::write(dir.join(format!("f{f}.jsonl")), lines).unwrap();
    }
    let topic = |name: &str, t: &str| {
        format!(
            "CREATE TABLE {name} (user BIGINT, amount BIGINT)
  WITH (connector = 'kafka', 'bootstrap.servers' = '{}', topic = '{t}', max_offsets_per_trigger = '400');",
            broker.bootstrap()
        )
    };
    let sql = format!(
        "SET 'trigger' = 'available_now';
SET 'task.backoff' = '50ms';
SET 'sluice.test.delay_task' = '1:1500ms';
{}
{}
CREATE TABLE d (key TEXT) WITH (connector = 'files', path = 'file://{}', max_files_per_batch = '1');
CREATE TABLE o (key TEXT, n BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT key, count(*) FROM (SELECT _key AS key FROM a UNION ALL SELECT _key FROM b UNION ALL SELECT key FROM d) GROUP BY key;
",
        topic("a", "ua"),
        topic("b", "ub"),
        dir.display(),
        c.path("out").display()
    );
    let id = c.submit(&sql).unwrap();
    c.wait_until(&id, LONG, |s| s["batches_committed"].as_u64() >= Some(1));
    c.kill_executor(0);
    let s = c.wait_for(&id, &["finished", "failed"], LONG);
    assert_eq!(s["state"], "finished", "{s}");
    let mut want = counts(0..1800);
    for f in 0..3u64 {
        for j in 0..100 {
            *want.entry(format!("k{}", (f * 100 + j) % 37)).or_insert(0) += 1;
        }
    }
    assert_eq!(latest_counts(&c), want);
}

#[test]
fn the_status_and_the_web_ui_show_each_partitions_lag() {
    let broker = KafkaBroker::start();
    broker.create_topic("events", 4);
    broker.produce("events", &records(0..2000));
    let ui = format!("127.0.0.1:{}", sluice_cluster_tests::free_port());
    let mut c = Cluster::new();
    c.driver_args = vec!["--ui-listen".into(), ui.clone()];
    let c = Cluster::start_with(c, 1);
    // One batch of 400 offsets, then nothing for a minute: the lag stays where it was left.
    let sql = format!(
        "SET 'trigger' = '60s';
{}
CREATE TABLE o (key TEXT, n BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT _key, count(*) FROM events GROUP BY _key;
",
        source(&broker, ", max_offsets_per_trigger = '400'"),
        c.path("out").display()
    );
    let id = c.submit(&sql).unwrap();
    let s = c.wait_until(&id, LONG, |s| s["batches_committed"].as_u64() >= Some(1));
    let lag = s["source_lag"].as_array().unwrap();
    let partitions: Vec<&str> = lag
        .iter()
        .map(|l| l["partition"].as_str().unwrap())
        .collect();
    assert_eq!(
        partitions,
        ["events-0", "events-1", "events-2", "events-3"],
        "{s}"
    );
    assert!(lag.iter().all(|l| l["table"] == "events"));
    let behind: u64 = lag.iter().map(|l| l["records"].as_u64().unwrap()).sum();
    assert_eq!(behind, 2000 - 400, "{s}");
    assert_eq!(s["rows_in"], 400);
    let page = sluice_cluster_tests::http(&ui, "GET", &format!("/jobs/{id}"), &[], "").body;
    let table = page.split("id=\"lag\"").nth(1).expect("a lag table");
    let table = table.split("</table>").next().unwrap();
    assert_eq!(table.matches("<td>events-").count(), 4, "{table}");
}
