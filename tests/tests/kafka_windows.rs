//! Event-time windows over Kafka, as the examples are written (only the broker address and
//! output paths moved): the 1-minute error rate in append mode over out-of-order requests,
//! through an executor SIGKILL and a driver SIGKILL, and the seed's events counted in 10-second
//! windows of their record timestamps, and the Yahoo streaming benchmark's job (views joined to
//! their campaigns, counted per campaign in 10-second windows) through kills.

use serde_json::Value;
use sluice_cluster_tests::{Cluster, KafkaBroker, committed_jsonl, run_to_end, wait_finished};
use std::collections::BTreeMap;

fn example(name: &str, broker: &KafkaBroker, c: &Cluster) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let mut sql = std::fs::read_to_string(path)
        .unwrap()
        .replace("127.0.0.1:9092", &broker.bootstrap());
    for dir in [
        "error_rate",
        "late_requests",
        "window_counts",
        "campaigns",
        "campaign_counts",
    ] {
        sql = sql.replace(
            &format!("/tmp/sluice-example/{dir}"),
            c.path(dir).to_str().unwrap(),
        );
    }
    sql
}

/// "2025-01-01T00:01:02.345" (arrow's JSON for a timestamp, optionally with a Z) in ms.
fn epoch_ms(text: &str) -> i64 {
    let text = text.trim_end_matches('Z');
    let (date, time) = text.split_once(['T', ' ']).expect("date and time");
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (y, m, day) = (d[0], d[1], d[2]);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    let ms: i64 = format!("{frac:0<3}")[..3].parse().unwrap();
    ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000 + ms
}

const MINUTE: i64 = 60_000;

/// Per (minute start, service): requests and errors (status >= 500).
type Counts = BTreeMap<(i64, String), (i64, i64)>;

fn add(counts: &mut Counts, minute: i64, service: &str, requests: i64, errors: i64) {
    let c = counts.entry((minute, service.to_string())).or_default();
    c.0 += requests;
    c.1 += errors;
}

#[test]
fn error_rate_per_minute_is_exact_through_executor_and_driver_kills() {
    let broker = KafkaBroker::start();
    broker.create_topic("requests", 4);
    let mut c = Cluster::start(3);
    run_to_end(&c, &example("kafka_produce_requests.sql", &broker, &c));
    let mut produced = Counts::new();
    let mut max_ts = i64::MIN;
    for (_, _, value) in broker.consume_all("requests", 4) {
        let r: Value = serde_json::from_str(&value).unwrap();
        let ts = epoch_ms(r["ts"].as_str().unwrap());
        max_ts = max_ts.max(ts);
        let error = (r["status"].as_i64().unwrap() >= 500) as i64;
        add(
            &mut produced,
            ts.div_euclid(MINUTE) * MINUTE,
            r["service"].as_str().unwrap(),
            1,
            error,
        );
    }
    assert_eq!(produced.values().map(|c| c.0).sum::<i64>(), 30_000);
    // Everything there now, in six batches of 5,000 and one that closes the last windows;
    // an executor dies in batch 1's aggregation, the driver (and another executor) before
    // batch 3 commits.
    let job = example("kafka_error_rate.sql", &broker, &c)
        .replace("SET 'trigger' = '1s';", "SET 'trigger' = 'available_now';")
        + "SET 'sluice.test.delay_task' = '1:1500ms';\nSET 'sluice.test.pause_at' = 'before_commit:3:3s';\n";
    let id = c.submit(&job).unwrap();
    c.wait_for_running_stage(&id, 1, 1);
    c.kill_executor(0);
    c.crash_driver_at("before_commit", 3, 1);
    let s = wait_finished(&c, &id);
    // Each closed minute once per service; with its late rows, exactly what was produced.
    let mut emitted = Counts::new();
    for rows in committed_jsonl(&c.path("error_rate")).values() {
        for r in rows {
            let key = (
                epoch_ms(r["minute"].as_str().unwrap()),
                r["service"].as_str().unwrap().to_string(),
            );
            let (n, errors) = (
                r["requests"].as_i64().unwrap(),
                r["errors"].as_i64().unwrap(),
            );
            let rate = r["error_rate"].as_f64().unwrap();
            assert!((rate - errors as f64 / n as f64).abs() < 1e-9, "{r}");
            assert!(
                emitted.insert(key.clone(), (n, errors)).is_none(),
                "{key:?} twice"
            );
        }
    }
    let mut late = Counts::new();
    for rows in committed_jsonl(&c.path("late_requests")).values() {
        for r in rows {
            let minute = epoch_ms(r["window_start"].as_str().unwrap());
            add(&mut late, minute, r["service"].as_str().unwrap(), 1, 0);
        }
    }
    let watermark = max_ts - 10_000;
    let closed: Counts = produced
        .iter()
        .filter(|((minute, _), _)| minute + MINUTE <= watermark)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(
        emitted.keys().collect::<Vec<_>>(),
        closed.keys().collect::<Vec<_>>(),
        "the minutes the final watermark closed, no others"
    );
    for (key, (n, _)) in &closed {
        let dropped = late.get(key).map_or(0, |l| l.0);
        assert_eq!(emitted[key].0 + dropped, *n, "{key:?}");
    }
    assert!(
        late.values().map(|l| l.0).sum::<i64>() > 0,
        "requests up to 15 s early arrive late"
    );
    assert!(emitted.len() >= 12, "{emitted:?}");
    let last = s["recent_batches"].as_array().unwrap().last().unwrap();
    assert_eq!(last["watermark_ms"].as_i64(), Some(watermark), "{last}");
}

#[test]
fn the_seed_events_counted_in_ten_second_windows_of_their_timestamps() {
    let broker = KafkaBroker::start();
    broker.create_topic("events", 4);
    let c = Cluster::start(2);
    run_to_end(&c, &example("kafka_produce_events.sql", &broker, &c));
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for (_, key, _) in broker.consume_all("events", 4) {
        *want.entry(key.unwrap()).or_default() += 1;
    }
    let job = example("kafka_window_counts.sql", &broker, &c)
        .replace("SET 'trigger' = '1s';", "SET 'trigger' = 'available_now';");
    run_to_end(&c, &job);
    // Update mode: the last row of a (window, key) is its count.
    let mut latest: BTreeMap<(String, String), i64> = BTreeMap::new();
    for rows in committed_jsonl(&c.path("window_counts")).values() {
        for r in rows {
            let key = (
                r["window_start"].as_str().unwrap().to_string(),
                r["key"].as_str().unwrap().to_string(),
            );
            latest.insert(key, r["n"].as_i64().unwrap());
        }
    }
    let mut got: BTreeMap<String, i64> = BTreeMap::new();
    for ((window, key), n) in latest {
        assert_eq!(epoch_ms(&window) % 10_000, 0, "aligned to 10 s: {window}");
        *got.entry(key).or_default() += n;
    }
    assert_eq!(got, want);
}

#[test]
fn the_yahoo_job_counts_views_per_campaign_exactly_through_kills() {
    let broker = KafkaBroker::start();
    broker.create_topic("ad-events", 4);
    let mut c = Cluster::start(3);
    run_to_end(&c, &example("yahoo_produce_events.sql", &broker, &c));
    std::fs::create_dir_all(c.path("campaigns")).unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    std::fs::copy(
        examples.join("yahoo_campaigns.jsonl"),
        c.path("campaigns/campaigns.jsonl"),
    )
    .unwrap();
    let mut views: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    let mut max_ts = i64::MIN;
    let events = broker.consume_all("ad-events", 4);
    assert_eq!(events.len(), 30_000);
    for (_, _, value) in events {
        let e: Value = serde_json::from_str(&value).unwrap();
        let ts = epoch_ms(e["event_time"].as_str().unwrap());
        max_ts = max_ts.max(ts);
        if e["event_type"] == "view" {
            let campaign = e["ad_id"].as_i64().unwrap() / 10;
            *views
                .entry((ts.div_euclid(10_000) * 10_000, campaign))
                .or_default() += 1;
        }
    }
    // An executor dies in batch 1's aggregation, the driver (and another executor) before
    // batch 3 commits.
    let job = example("yahoo_campaign_counts.sql", &broker, &c)
        .replace("SET 'trigger' = '1s';", "SET 'trigger' = 'available_now';")
        + "SET 'sluice.test.delay_task' = '1:1500ms';\nSET 'sluice.test.pause_at' = 'before_commit:3:3s';\n";
    let id = c.submit(&job).unwrap();
    c.wait_for_running_stage(&id, 1, 1);
    c.kill_executor(0);
    c.crash_driver_at("before_commit", 3, 1);
    let s = wait_finished(&c, &id);
    let mut got: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for rows in committed_jsonl(&c.path("campaign_counts")).values() {
        for r in rows {
            let key = (
                epoch_ms(r["window_start"].as_str().unwrap()),
                r["campaign_id"].as_i64().unwrap(),
            );
            let n = r["views"].as_i64().unwrap();
            assert!(got.insert(key, n).is_none(), "{key:?} twice");
        }
    }
    // Events are at most 2 s out of order and the watermark trails by 5 s: none is late, and
    // every window the final watermark closed comes out once with all its views.
    let watermark = max_ts - 5_000;
    let closed: BTreeMap<(i64, i64), i64> = views
        .into_iter()
        .filter(|((window, _), _)| window + 10_000 <= watermark)
        .collect();
    assert!(closed.len() > 200, "windows x campaigns: {}", closed.len());
    assert_eq!(got, closed);
    let last = s["recent_batches"].as_array().unwrap().last().unwrap();
    assert_eq!(last["watermark_ms"].as_i64(), Some(watermark), "{last}");
}
