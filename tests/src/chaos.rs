//! The chaos run: a producer keeps feeding a Kafka topic with records whose keys and counts are
//! known, a cluster runs a running count and a per-batch count over it, and a loop driven by a
//! seed SIGKILLs executors and the driver and SIGSTOPs executors past the heartbeat timeout,
//! while the object store fails and stalls some writes. At the end the producer stops, the
//! jobs drain, and the committed output is compared key by key with what was produced.
//!
//! Same seed, same schedule (the moments are relative to the start; what they hit depends on
//! timing, which is the point).

use crate::{Cluster, KafkaBroker, committed_jsonl};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;
const HEARTBEAT_TIMEOUT_MS: u64 = 1000;
const KEYS: u64 = 50;

#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub duration: Duration,
    pub seed: u64,
    /// Failures of each process kind (executor kill, driver kill, executor stop).
    pub failures_each: u32,
    /// Records produced per second.
    pub rate: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillExecutor,
    KillDriver,
    StopExecutor,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillExecutor => "kill executor",
            Fault::KillDriver => "kill driver",
            Fault::StopExecutor => "stop executor",
        }
    }
}

/// splitmix64: a tiny deterministic generator, so a seed is a whole schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// When each fault happens (ms after the start) and what it is.
pub fn schedule(cfg: &ChaosConfig) -> Vec<(u64, Fault)> {
    let mut rng = Rng(cfg.seed);
    let mut kinds: Vec<Fault> = [Fault::KillExecutor, Fault::KillDriver, Fault::StopExecutor]
        .into_iter()
        .flat_map(|f| std::iter::repeat_n(f, cfg.failures_each as usize))
        .collect();
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.below(i as u64 + 1) as usize);
    }
    // Faults spread over the run, leaving its first and last tenth quiet.
    let span = cfg.duration.as_millis() as u64 * 8 / 10;
    let gap = span / kinds.len().max(1) as u64;
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let base = cfg.duration.as_millis() as u64 / 10 + i as u64 * gap;
            (base + rng.below(gap / 2 + 1), f)
        })
        .collect()
}

/// Record `i`: key k<i % 50>, partition i % 4, value {"n": i, "v": i % 7}.
fn record(i: u64) -> (i32, String, String) {
    (
        (i % 4) as i32,
        format!("k{}", i % KEYS),
        format!("{{\"n\": {i}, \"v\": {}}}", i % 7),
    )
}

/// The jobs keep records whose n % 10 <> 3: (count, sum of v) per key over `0..produced`.
fn expected(produced: u64) -> BTreeMap<String, (i64, i64)> {
    let mut m = BTreeMap::new();
    for i in (0..produced).filter(|i| i % 10 != 3) {
        let e = m.entry(format!("k{}", i % KEYS)).or_insert((0, 0));
        e.0 += 1;
        e.1 += (i % 7) as i64;
    }
    m
}

/// Each key's latest (count, total) in an update-mode output directory.
fn latest(dir: &std::path::Path) -> BTreeMap<String, (i64, i64)> {
    let mut m = BTreeMap::new();
    for rows in committed_jsonl(dir).values() {
        for r in rows {
            m.insert(
                r["key"].as_str().unwrap_or_default().to_string(),
                (
                    r["n"].as_i64().unwrap_or(0),
                    r["total"].as_i64().unwrap_or(0),
                ),
            );
        }
    }
    m
}

/// Per-batch (count, total) per key, summed over the committed batches.
fn summed(dir: &std::path::Path) -> BTreeMap<String, (i64, i64)> {
    let mut m = BTreeMap::new();
    for rows in committed_jsonl(dir).values() {
        for r in rows {
            let e = m
                .entry(r["key"].as_str().unwrap_or_default().to_string())
                .or_insert((0, 0));
            e.0 += r["n"].as_i64().unwrap_or(0);
            e.1 += r["total"].as_i64().unwrap_or(0);
        }
    }
    m
}

/// Highest committed batch of a job, from its checkpoint (-1: none yet).
fn last_commit(c: &Cluster, job: &str) -> i64 {
    std::fs::read_dir(c.path(&format!("state/jobs/{job}/commits")))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
                .max()
                .unwrap_or(-1)
        })
        .unwrap_or(-1)
}

/// Compares an output with what was produced: (lost, duplicated, first differing keys).
fn compare(
    got: &BTreeMap<String, (i64, i64)>,
    want: &BTreeMap<String, (i64, i64)>,
) -> (i64, i64, Vec<String>) {
    let (mut lost, mut dup, mut diffs) = (0, 0, Vec::new());
    for (k, w) in want {
        let g = got.get(k).copied().unwrap_or((0, 0));
        if g != *w {
            lost += (w.0 - g.0).max(0);
            dup += (g.0 - w.0).max(0);
            if diffs.len() < 5 {
                diffs.push(format!("{k}: got {g:?}, want {w:?}"));
            }
        }
    }
    for (k, g) in got.iter().filter(|(k, _)| !want.contains_key(*k)) {
        dup += g.0;
        if diffs.len() < 5 {
            diffs.push(format!("{k}: got {g:?}, never produced"));
        }
    }
    (lost, dup, diffs)
}

/// Runs the scenario; the report says what happened and whether the output was exact.
pub fn run(cfg: &ChaosConfig, bins: &std::path::Path) -> Value {
    let broker = KafkaBroker::start();
    broker.create_topic("chaos", 4);
    let mut c = Cluster::with_bins(bins.to_path_buf());
    c.driver_args = vec![
        "--heartbeat-timeout".into(),
        format!("{HEARTBEAT_TIMEOUT_MS}ms"),
    ];
    c.env = vec![(
        "SLUICE_TEST_STORE_FAULTS".into(),
        format!("put=0.03,stall=0.03,stall_ms=300,seed={}", cfg.seed),
    )];
    let mut c = Cluster::start_with(c, 3);
    let mut alive: Vec<usize> = vec![0, 1, 2];
    let job = |sink: &str, select: &str| {
        format!(
            "SET 'trigger' = '300ms';
SET 'partitions' = '4';
SET 'task.max_attempts' = '20';
SET 'task.backoff' = '50ms';
SET 'stage.max_attempts' = '20';
SET 'restart.strategy' = 'fixed-delay';
SET 'restart.attempts' = '100000';
SET 'restart.delay' = '200ms';
SET 'state.snapshot_interval' = '5';
CREATE TABLE events (n BIGINT, v BIGINT)
  WITH (connector = 'kafka', 'bootstrap.servers' = '{}', topic = 'chaos', max_offsets_per_trigger = '5000');
{sink}
{select}
",
            broker.bootstrap()
        )
    };
    let running_sql = job(
        &format!(
            "CREATE TABLE o (key TEXT, n BIGINT, total BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');",
            c.path("running").display()
        ),
        "INSERT INTO o SELECT _key, count(*), sum(v) FROM events WHERE n % 10 <> 3 GROUP BY _key;",
    );
    let batch_sql = job(
        &format!(
            "CREATE TABLE o (b BIGINT, key TEXT, n BIGINT, total BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');",
            c.path("per_batch").display()
        ),
        "INSERT INTO o SELECT _batch, _key, count(*), sum(v) FROM events WHERE n % 10 <> 3 GROUP BY _batch, _key;",
    );
    // Submitting may meet an injected write failure; submitting again is what a user does.
    let submit = |sql: &str| {
        (0..20)
            .find_map(|_| c.submit(sql).ok())
            .expect("a submission got through")
    };
    let running = submit(&running_sql);
    let per_batch = submit(&batch_sql);

    let produced = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let plan = schedule(cfg);
    let started = Instant::now();
    let mut events: Vec<Value> = Vec::new();
    let mut longest_stall_ms = 0u64;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let tick = Duration::from_millis(100);
            let per_tick = (cfg.rate / 10).max(1);
            while !stop.load(Ordering::Relaxed) {
                let from = produced.load(Ordering::Relaxed);
                let batch: Vec<_> = (from..from + per_tick).map(record).collect();
                broker.produce("chaos", &batch);
                produced.store(from + per_tick, Ordering::Relaxed);
                std::thread::sleep(tick);
            }
        });
        let mut last_seen = (last_commit(&c, &running), Instant::now());
        let mut watch = |c: &Cluster, until: Instant, longest: &mut u64| {
            while Instant::now() < until {
                let now = last_commit(c, &running);
                if now > last_seen.0 {
                    *longest = (*longest).max(last_seen.1.elapsed().as_millis() as u64);
                    last_seen = (now, Instant::now());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last_seen
        };
        let mut rng = Rng(cfg.seed ^ 0xC4A05);
        for (at_ms, fault) in &plan {
            watch(
                &c,
                started + Duration::from_millis(*at_ms),
                &mut longest_stall_ms,
            );
            let before = last_commit(&c, &running);
            let hit = Instant::now();
            let mut what = fault.name().to_string();
            match fault {
                Fault::KillExecutor => {
                    let i = alive.remove(rng.below(alive.len() as u64) as usize);
                    c.kill_executor(i);
                    alive.push(c.add_executor());
                    what = format!("{what} {i}");
                }
                Fault::KillDriver => {
                    c.kill_driver();
                    c.start_driver();
                }
                Fault::StopExecutor => {
                    let i = alive[rng.below(alive.len() as u64) as usize];
                    c.signal_executor(i, SIGSTOP);
                    std::thread::sleep(Duration::from_millis(HEARTBEAT_TIMEOUT_MS + 300));
                    c.signal_executor(i, SIGCONT);
                    what = format!("{what} {i}");
                }
            }
            // Recovery: until the running job commits a batch after the fault.
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut recovered_ms = None;
            while Instant::now() < deadline {
                if last_commit(&c, &running) > before {
                    recovered_ms = Some(hit.elapsed().as_millis() as u64);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // The output stalls at least from the fault to its recovery.
            longest_stall_ms = longest_stall_ms.max(recovered_ms.unwrap_or(60_000));
            events.push(json!({
                "at_ms": at_ms,
                "fault": what,
                "recovered_ms": recovered_ms,
            }));
        }
        watch(&c, started + cfg.duration, &mut longest_stall_ms);
        stop.store(true, Ordering::Relaxed);
    });
    let produced = produced.load(Ordering::Relaxed);
    let want = expected(produced);
    // Drain: the jobs catch up with everything produced.
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline
        && (latest(&c.path("running")) != want || summed(&c.path("per_batch")) != want)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (lost, duplicated, diffs) = compare(&latest(&c.path("running")), &want);
    let (batch_lost, batch_duplicated, batch_diffs) = compare(&summed(&c.path("per_batch")), &want);
    let store_faults: usize = std::fs::read_dir(c.dir.path())
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                .map(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .matches("injected write failure")
                        .count()
                })
                .sum()
        })
        .unwrap_or(0);
    let count = |f: Fault| plan.iter().filter(|(_, k)| *k == f).count();
    let recoveries: Vec<u64> = events
        .iter()
        .filter_map(|e| e["recovered_ms"].as_u64())
        .collect();
    let statuses: Vec<Value> = [&running, &per_batch]
        .iter()
        .map(|id| {
            c.status(id).map_or(Value::Null, |s| {
                json!({
                    "job": id,
                    "state": s["state"],
                    "error": s["error"],
                    "batches_committed": s["batches_committed"],
                    "rows_in": s["rows_in"],
                    "restarts": s["restarts"],
                })
            })
        })
        .collect();
    let exact = lost == 0 && duplicated == 0 && batch_lost == 0 && batch_duplicated == 0;
    // Keep the evidence of a failed run: the whole cluster directory (logs, checkpoints,
    // outputs).
    let unrecovered = events.len() - recoveries.len();
    let kept = (!exact || unrecovered > 0).then(|| {
        let dir = std::env::temp_dir().join(format!("sluice-chaos-{}", cfg.seed));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = Command::new("cp")
            .arg("-a")
            .arg(c.dir.path())
            .arg(&dir)
            .status();
        dir.display().to_string()
    });
    for id in [&running, &per_batch] {
        let _ = c.sluice(&["stop", id]);
    }
    json!({
        "jobs": statuses,
        "logs_kept_in": kept,
        "seed": cfg.seed,
        "duration_s": cfg.duration.as_secs(),
        "executor_kills": count(Fault::KillExecutor),
        "driver_kills": count(Fault::KillDriver),
        "executor_stops": count(Fault::StopExecutor),
        "store_write_failures": store_faults,
        "records_produced": produced,
        "records_counted": want.values().map(|v| v.0).sum::<i64>(),
        "running_count": { "lost": lost, "duplicated": duplicated, "first_diffs": diffs },
        "per_batch_count": { "lost": batch_lost, "duplicated": batch_duplicated, "first_diffs": batch_diffs },
        "longest_stall_ms": longest_stall_ms,
        "max_recovery_ms": recoveries.iter().max(),
        "unrecovered_faults": unrecovered,
        "schedule": events,
        "exact": exact,
    })
}
