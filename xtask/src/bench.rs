//! `cargo xtask bench`: a real local cluster (release binaries, a driver and executors on
//! loopback) measured on one workload after another; prints a table and writes
//! bench/cluster.json. `--only a,b` runs some of them and keeps the rest of the file.

use anyhow::bail;
use serde_json::{Value, json};
use sluice_cluster_tests::{Cluster, JobsWatch, KafkaBroker, S3Server};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

type Measure = fn(&Path, &Options) -> anyhow::Result<Value>;

pub struct Options {
    /// Rows of the throughput run.
    pub rows: u64,
    /// Write bench/cluster.json (release binaries only: other figures are not comparable).
    pub write: bool,
}

/// Every workload, by the name it has in bench/cluster.json and in `--only`.
const WORKLOADS: &[(&str, Measure)] = &[
    ("throughput", throughput),
    ("small_batches", small_batches),
    ("small_batches_s3", small_batches_s3),
    ("partial_aggregation", partial_aggregation),
    ("wide_shuffle", wide_shuffle),
    ("scheduling", scheduling),
    ("executor_loss", |bins, _| executor_loss_recovery(bins)),
    ("driver_restart", |bins, _| driver_restart(bins)),
    ("stateful_restart", |bins, _| stateful_restart(bins)),
    ("state_scaling", |bins, _| state_scaling(bins)),
    ("kafka_running_count", |bins, _| kafka_running_count(bins)),
    ("windowed_counts", |bins, _| windowed_counts(bins)),
    ("yahoo_campaigns", |bins, _| yahoo_campaigns(bins)),
];

pub fn names() -> Vec<&'static str> {
    WORKLOADS.iter().map(|(name, _)| *name).collect()
}

/// Runs the workloads named in `only` (all when empty), prints the table of every result in
/// bench/cluster.json and writes it back.
pub fn bench(root: &Path, bins: &Path, only: &[String], opts: &Options) -> anyhow::Result<()> {
    for name in only {
        if !names().contains(&name.as_str()) {
            bail!("no workload '{name}'; there are: {}", names().join(", "));
        }
    }
    let path = root.join("bench/cluster.json");
    let mut results: BTreeMap<String, Value> = match only.is_empty() {
        true => BTreeMap::new(),
        false => std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
    };
    for (name, measure) in WORKLOADS {
        if only.is_empty() || only.iter().any(|o| o == name) {
            eprintln!("==> bench: {name}");
            results.insert(name.to_string(), measure(bins, opts)?);
        }
    }
    results.insert(
        "setup".into(),
        json!({
            "cluster": "1 driver + 2 executors x 2 slots (4 executors for executor_loss), release build, loopback",
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        }),
    );
    print_table(&results);
    if !opts.write {
        println!("\nnot written to bench/cluster.json: not a release build");
        return Ok(());
    }
    std::fs::create_dir_all(root.join("bench"))?;
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    std::fs::write(root.join("bench/cluster.md"), markdown(&results))?;
    let loss = results.get("executor_loss");
    if let Some(timeline) = loss.and_then(|l| l["timeline"].as_array()) {
        crate::compare::recovery_plot(&root.join("bench/recovery_timeline.png"), timeline)?;
    }
    println!("\nwrote bench/cluster.json, bench/cluster.md and bench/recovery_timeline.png");
    Ok(())
}

/// The table as a page: what each workload measured, with the machine it ran on.
fn markdown(r: &BTreeMap<String, Value>) -> String {
    let mut page = String::from(
        "# Sluice on its own\n\nWritten by `cargo xtask bench` (`--only` reruns some workloads and keeps the rest; the workloads are described in `xtask/src/bench.rs`, the raw figures are in cluster.json).\n\n",
    );
    page.push_str(&format!(
        "Setup: {}\n\n",
        r.get("setup").unwrap_or(&Value::Null)
    ));
    page.push_str("| measure | value |\n|---|---:|\n");
    for (label, workload, path) in TABLE {
        let value = figure(r, workload, path);
        page.push_str(&format!("| {} | {value} |\n", label.trim()));
    }
    page.push_str("\nAn executor SIGKILLed while a batch's map tasks run: each batch's span from its start to its commit, relative to the kill; the batch that lost tasks reran them on the other executors.\n\n![recovery timeline](recovery_timeline.png)\n");
    crate::compare::cluster_targets(&mut page, r);
    page
}

/// The table's lines: label, workload, path to the figure in its results.
const TABLE: &[(&str, &str, &str)] = &[
    ("throughput: rows", "throughput", "rows"),
    (
        "throughput: rows/s end to end",
        "throughput",
        "rows_per_second",
    ),
    (
        "  checkpoint cost per batch, p50 (ms)",
        "throughput",
        "checkpoint_ms.p50",
    ),
    (
        "per-batch GROUP BY, map-side partials: rows/s",
        "partial_aggregation",
        "per_batch.on.rows_per_second",
    ),
    (
        "  the same, every row shuffled: rows/s",
        "partial_aggregation",
        "per_batch.off.rows_per_second",
    ),
    (
        "running count, 1K keys, map-side partials: rows/s",
        "partial_aggregation",
        "running_1k.on.rows_per_second",
    ),
    (
        "  the same, every row shuffled: rows/s",
        "partial_aggregation",
        "running_1k.off.rows_per_second",
    ),
    (
        "small batches (~1000 rows): count",
        "small_batches",
        "batches",
    ),
    (
        "small batches: p50 end to end (ms)",
        "small_batches",
        "end_to_end_ms.p50",
    ),
    (
        "small batches: p99 end to end (ms)",
        "small_batches",
        "end_to_end_ms.p99",
    ),
    (
        "  a batch's start after its trigger was due: max (ms)",
        "small_batches",
        "late_start_ms.max",
    ),
    (
        "small batches, checkpoints on the S3 server (moto): p50 end to end (ms)",
        "small_batches_s3",
        "end_to_end_ms.p50",
    ),
    (
        "  the same: p99 (ms)",
        "small_batches_s3",
        "end_to_end_ms.p99",
    ),
    (
        "  the same: a batch's start after its trigger was due, max (ms)",
        "small_batches_s3",
        "late_start_ms.max",
    ),
    (
        "wide shuffle 200 x 200: batch p50 (ms)",
        "wide_shuffle",
        "200x200.batch_ms.p50",
    ),
    (
        "wide shuffle 1000 x 1000: batch p50 (ms)",
        "wide_shuffle",
        "1000x1000.batch_ms.p50",
    ),
    (
        "1,000 executors: tasks scheduled/s",
        "scheduling",
        "tasks_per_second.p50",
    ),
    (
        "  100,000-task batch, end to end (ms)",
        "scheduling",
        "batch_ms.p50",
    ),
    (
        "  driver CPU per 1,000 tasks (ms)",
        "scheduling",
        "driver_cpu_ms_per_1000_tasks",
    ),
    (
        "  driver peak RSS (MiB)",
        "scheduling",
        "driver_peak_rss_mib",
    ),
    (
        "executor SIGKILL -> its batch committed (ms)",
        "executor_loss",
        "kill_to_batch_complete_ms",
    ),
    (
        "  that batch's extra time vs median (ms)",
        "executor_loss",
        "extra_ms_vs_median",
    ),
    (
        "  recovery measured by the driver (ms)",
        "executor_loss",
        "driver_recovery_ms",
    ),
    (
        "driver SIGKILL+restart -> next commit (ms)",
        "driver_restart",
        "restart_to_commit_ms",
    ),
    (
        "1.5M-key state: driver restart -> commit (ms)",
        "stateful_restart",
        "driver_restart_to_commit_ms",
    ),
    (
        "1.5M-key state: driver+executors -> commit (ms)",
        "stateful_restart",
        "driver_and_executors_restart_to_commit_ms",
    ),
    (
        "  state rows restored by the new executors",
        "stateful_restart",
        "rows_restored_from_checkpoint",
    ),
    (
        "1.5M-key state: batch duration p50 (ms)",
        "stateful_restart",
        "batch_p50_ms",
    ),
    (
        "  slowest batch, snapshots included (ms)",
        "stateful_restart",
        "batch_max_ms",
    ),
    (
        "10M-key state, 1% of keys changed: batch p50 (ms)",
        "state_scaling",
        "changed_1pct.batch_p50_ms",
    ),
    (
        "  10% of keys changed: batch p50 (ms)",
        "state_scaling",
        "changed_10pct.batch_p50_ms",
    ),
    (
        "kafka -> running count -> blackhole: rows/s",
        "kafka_running_count",
        "rows_per_second",
    ),
    (
        "  a bare consumer of the same broker: rows/s",
        "kafka_running_count",
        "bare_consumer_rows_per_second",
    ),
    (
        "2 s windows, append: events/s",
        "windowed_counts",
        "events_per_second",
    ),
    (
        "  window latency p50 (ms)",
        "windowed_counts",
        "window_latency_ms.p50",
    ),
    (
        "Yahoo job (Kafka, static join, windows): events/s",
        "yahoo_campaigns",
        "events_per_second",
    ),
    (
        "  window latency p50 (ms)",
        "yahoo_campaigns",
        "window_latency_ms.p50",
    ),
];

/// One line per figure; a workload that has not run yet shows null.
fn print_table(r: &BTreeMap<String, Value>) {
    println!();
    println!("{:<52} {:>14}", "measure", "value");
    for (label, workload, path) in TABLE {
        println!("{label:<52} {:>14}", figure(r, workload, path).to_string());
    }
}

pub fn figure<'a>(r: &'a BTreeMap<String, Value>, workload: &str, path: &str) -> &'a Value {
    path.split('.')
        .fold(r.get(workload).unwrap_or(&Value::Null), |v, k| &v[k])
}

/// Big batches (available_now caps each batch at rows_per_second rows) of the per-batch
/// GROUP BY: rows/s from the first batch's start to the last commit.
fn throughput(bins: &Path, opts: &Options) -> anyhow::Result<Value> {
    let settings = "SET 'trigger' = 'available_now';\nSET 'partitions' = '4';";
    let status = run_job(bins, &bench_job(settings, 2_000_000, opts.rows))?;
    let wall_ms = wall_ms(&status);
    let rows = status["rows_in"].as_u64().unwrap_or(0);
    let mut checkpoint_ms: Vec<u64> = batches_of(&status)
        .iter()
        .filter_map(|b| b["checkpoint_ms"].as_u64())
        .collect();
    checkpoint_ms.sort_unstable();
    Ok(json!({
        "job": "datagen -> filter -> per-batch GROUP BY (4 partitions) -> blackhole",
        "rows": rows,
        "wall_ms": wall_ms,
        "rows_per_second": rows * 1000 / wall_ms,
        "checkpoint_ms": { "p50": percentile(&checkpoint_ms, 0.5), "max": checkpoint_ms.last() },
    }))
}

/// The same jobs with and without map-side partial aggregation (`SET 'partial_aggregation'`):
/// the per-batch GROUP BY of the throughput run, and a running count and sum by 1,000 keys.
/// Each over twice the throughput run's rows, the median of three runs: a run of a few
/// hundred milliseconds swung by 3x from one run to the next.
fn partial_aggregation(bins: &Path, opts: &Options) -> anyhow::Result<Value> {
    const RUNS: usize = 3;
    let rows = opts.rows * 2;
    let running = format!(
        "SET 'trigger' = 'available_now';
SET 'partitions' = '4';
CREATE TABLE g (k BIGINT, v BIGINT)
  WITH (connector = 'datagen', rows_per_second = '2000000', total_rows = '{rows}', seed = '1', splits = '4',
        'fields.k.max' = '999', 'fields.v.max' = '100');
CREATE TABLE sink WITH (connector = 'blackhole');
INSERT INTO sink SELECT k, count(*), sum(v) FROM g GROUP BY k;
"
    );
    let per_batch = bench_job(
        "SET 'trigger' = 'available_now';\nSET 'partitions' = '4';",
        2_000_000,
        rows,
    );
    let mut out = serde_json::Map::new();
    for (name, sql) in [("per_batch", per_batch), ("running_1k", running)] {
        let mut by_setting = serde_json::Map::new();
        for on in [true, false] {
            let mut runs = Vec::new();
            for _ in 0..RUNS {
                let status = run_job(bins, &format!("SET 'partial_aggregation' = '{on}';\n{sql}"))?;
                runs.push((wall_ms(&status), status));
            }
            runs.sort_by_key(|(ms, _)| *ms);
            let walls: Vec<u64> = runs.iter().map(|(ms, _)| *ms).collect();
            let (wall_ms, status) = runs.swap_remove(RUNS / 2);
            let rows_in = status["rows_in"].as_u64().unwrap_or(0);
            anyhow::ensure!(rows_in == rows, "{name}: read {rows_in} of {rows} rows");
            // What crossed the shuffle: every task's rows out, less what reached the sink.
            let shuffled: u64 = batches_of(&status)
                .iter()
                .map(|b| b["metrics"]["rows_out"].as_u64().unwrap_or(0))
                .sum::<u64>()
                .saturating_sub(status["rows_out"].as_u64().unwrap_or(0));
            by_setting.insert(
                if on { "on" } else { "off" }.into(),
                json!({
                    "rows": rows_in,
                    "wall_ms": wall_ms,
                    "wall_ms_runs": walls,
                    "rows_per_second": rows_in * 1000 / wall_ms,
                    "rows_shuffled": shuffled,
                }),
            );
        }
        out.insert(name.into(), Value::Object(by_setting));
    }
    Ok(Value::Object(out))
}

/// The latency floor's batches: ~1,000 rows every 50 ms, after 20 warm-up batches.
pub const SMALL_TRIGGER_MS: u64 = 50;
pub const SMALL_ROWS_PER_BATCH: u64 = 1_000;
pub const SMALL_WARM_UP: u64 = 20;
pub const SMALL_BATCHES: u64 = 1_000;

/// Each measured small batch: its time end to end and its phases.
pub struct SmallBatches {
    pub end_to_end_ms: Vec<u64>,
    pub phases: Vec<Vec<(String, u64)>>,
    /// How long each batch started after its trigger was due (the previous batch's start plus
    /// the interval): time a row waits that no batch's own duration shows, such as a stall
    /// between batches.
    pub late_start_ms: Vec<u64>,
}

/// A measured batch: its start, its time end to end and its phases.
type Seen = (u64, u64, Vec<(String, u64)>);

/// Runs the latency floor's job until `SMALL_BATCHES` batches after the warm-up ones have
/// committed, reading each batch's times over one long-lived client.
pub fn small_batch_times(bins: &Path) -> anyhow::Result<SmallBatches> {
    small_batch_times_on(Cluster::with_bins(bins.to_path_buf()))
}

/// The same on a cluster set up by the caller (its --state elsewhere).
fn small_batch_times_on(cluster: Cluster) -> anyhow::Result<SmallBatches> {
    let rate = SMALL_ROWS_PER_BATCH * 1000 / SMALL_TRIGGER_MS;
    // Rows for three times the batches: a batch that overruns its trigger takes the rows of the
    // intervals it missed, so a slow build needs more rows for as many batches.
    let total = rate * (SMALL_WARM_UP + SMALL_BATCHES) * 3 * SMALL_TRIGGER_MS / 1000;
    let settings = format!("SET 'trigger' = '{SMALL_TRIGGER_MS}ms';\nSET 'partitions' = '4';");
    let c = Cluster::start_with(cluster, 2);
    let id = c.submit(&bench_job(&settings, rate, total))?;
    let mut watch = JobsWatch::connect(&c.url())?;
    let mut seen: BTreeMap<u64, Seen> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status = watch.status(&id)?;
        for b in &status.recent_batches {
            if b.batch_id < SMALL_WARM_UP || seen.contains_key(&b.batch_id) {
                continue;
            }
            let detail = watch.batch(&id, b.batch_id)?;
            let e2e = b.committed_at_ms.saturating_sub(b.started_at_ms);
            let phases = phases(&detail);
            seen.insert(b.batch_id, (b.started_at_ms, e2e, phases));
        }
        use sluice_proto::JobState;
        let ended = matches!(
            status.state(),
            JobState::Finished | JobState::Failed | JobState::Stopped
        );
        if ended || seen.len() as u64 >= SMALL_BATCHES {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "small batches: too slow");
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::ensure!(
        seen.len() as u64 >= SMALL_BATCHES,
        "only {} batches were seen",
        seen.len()
    );
    let late_start_ms = seen
        .iter()
        .zip(seen.iter().skip(1))
        .filter(|((a, _), (b, _))| *a + 1 == **b)
        .map(|((_, (prev, ..)), (_, (start, ..)))| start.saturating_sub(prev + SMALL_TRIGGER_MS))
        .collect();
    let (end_to_end_ms, phases) = seen.into_values().map(|(_, e2e, p)| (e2e, p)).unzip();
    Ok(SmallBatches {
        end_to_end_ms,
        phases,
        late_start_ms,
    })
}

/// The latency floor: ~1,000-row batches every 50 ms, end to end from the batch's start
/// (planning its input) to its commit entry, over more than 1,000 batches after 20 warm-up
/// ones; with where the time goes (the driver's phases and the slowest task's phases, p50).
fn small_batches(bins: &Path, _: &Options) -> anyhow::Result<Value> {
    Ok(small_batches_summary(small_batch_times(bins)?))
}

/// The latency floor with every checkpoint file (offsets, commits, state) on an S3 server on
/// loopback (moto, which `cargo xtask ci` installs): each commit is a few PUTs over HTTP.
fn small_batches_s3(bins: &Path, _: &Options) -> anyhow::Result<Value> {
    let moto = S3Server::binary();
    if !moto.exists() {
        let why = format!("{} is missing (cargo xtask ci installs it)", moto.display());
        eprintln!("    skipped: {why}");
        return Ok(json!({ "skipped": why }));
    }
    let s3 = S3Server::start("sluice-bench");
    let mut c = Cluster::with_bins(bins.to_path_buf());
    c.env = s3.env();
    c.state = Some(s3.uri("state"));
    Ok(small_batches_summary(small_batch_times_on(c)?))
}

fn small_batches_summary(measured: SmallBatches) -> Value {
    let mut e2e = measured.end_to_end_ms;
    e2e.sort_unstable();
    let mut late = measured.late_start_ms;
    late.sort_unstable();
    let mut by_phase: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (name, ms) in measured.phases.iter().flatten() {
        by_phase.entry(name.clone()).or_default().push(*ms);
    }
    let phase_p50: BTreeMap<String, u64> = by_phase
        .into_iter()
        .map(|(name, mut ms)| {
            ms.sort_unstable();
            (name, percentile(&ms, 0.5))
        })
        .collect();
    json!({
        "trigger_ms": SMALL_TRIGGER_MS,
        "rows_per_batch": SMALL_ROWS_PER_BATCH,
        "warm_up_batches_left_out": SMALL_WARM_UP,
        "batches": e2e.len(),
        "end_to_end_ms": {
            "p50": percentile(&e2e, 0.5),
            "p99": percentile(&e2e, 0.99),
            "max": e2e.last(),
        },
        "phase_p50_ms": phase_p50,
        "late_start_ms": {
            "p99": percentile(&late, 0.99),
            "max": late.last(),
        },
    })
}

/// A batch's driver phases and, per task phase, its slowest task (`task.<phase>`), plus the
/// task launches' overhead: the slowest task's time from launch to result less its own phases.
fn phases(detail: &sluice_proto::BatchDetail) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = detail
        .phases
        .iter()
        .map(|p| (format!("driver.{}", p.name), p.ms))
        .collect();
    let mut slowest: BTreeMap<String, u64> = BTreeMap::new();
    for attempt in detail
        .stages
        .iter()
        .flat_map(|s| &s.tasks)
        .flat_map(|t| &t.attempts)
    {
        let mut own = 0;
        for (name, ms) in &attempt.metrics {
            if name.ends_with("_ms") {
                let ms = (*ms).max(0) as u64;
                own += ms;
                let e = slowest.entry(format!("task.{name}")).or_default();
                *e = (*e).max(ms);
            }
        }
        let overhead = attempt
            .ended_at_ms
            .saturating_sub(attempt.launched_at_ms)
            .saturating_sub(own);
        let e = slowest
            .entry("task.launch_and_report_ms".into())
            .or_default();
        *e = (*e).max(overhead);
    }
    out.extend(slowest);
    out
}

/// Trivial batches over many splits and many partitions: a batch moves splits x partitions
/// blocks, almost all of them empty, and should cost what its data and its executors cost.
fn wide_shuffle(bins: &Path, _: &Options) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for (splits, partitions) in [(200u32, 200u32), (1000, 1000)] {
        let sql = format!(
            "SET 'trigger' = 'available_now';
SET 'partitions' = '{partitions}';
CREATE TABLE clicks (user_id BIGINT, page TEXT)
  WITH (connector = 'datagen', rows_per_second = '20000', total_rows = '100000', seed = '1', splits = '{splits}',
        'fields.user_id.max' = '100000');
CREATE TABLE sink WITH (connector = 'blackhole');
INSERT INTO sink SELECT _batch, page, count(*) FROM clicks GROUP BY _batch, page;
"
        );
        let status = run_job(bins, &sql)?;
        let mut batch_ms: Vec<u64> = batches_of(&status)
            .iter()
            .filter_map(|b| {
                b["committed_at_ms"]
                    .as_u64()?
                    .checked_sub(b["started_at_ms"].as_u64()?)
            })
            .collect();
        batch_ms.sort_unstable();
        out.insert(
            format!("{splits}x{partitions}"),
            json!({
                "splits": splits,
                "partitions": partitions,
                "blocks_per_batch": splits as u64 * partitions as u64,
                "rows_per_batch": 20_000,
                "batches": batch_ms.len(),
                "batch_ms": { "p50": percentile(&batch_ms, 0.5), "max": batch_ms.last() },
            }),
        );
    }
    Ok(Value::Object(out))
}

/// One driver and 1,000 stand-in executors (`standins.rs`: the real protocol, every launch
/// answered at once) running batches of 100,000 one-row tasks (a map-only job into a blackhole):
/// how fast the driver schedules, what that costs it, and how long a batch takes end to end.
fn scheduling(bins: &Path, _: &Options) -> anyhow::Result<Value> {
    use crate::compare::procstat::{Sampler, Tree};
    const EXECUTORS: usize = 1_000;
    const TASKS: u64 = 100_000;
    const BATCHES: u64 = 4;
    let c = Cluster::start_with(Cluster::with_bins(bins.to_path_buf()), 0);
    let driver = Sampler::start(Tree {
        root: std::process::id(),
        include_root: false,
        keep: |name| name == "sluice-driver",
    });
    let standins = crate::standins::StandIns::start(&c.url(), EXECUTORS, 2)?;
    c.wait_for_executors(Duration::from_secs(120), |e| {
        e["executors"].as_array().map(Vec::len) == Some(EXECUTORS)
    });
    let cpu_before = driver.cpu_ms();
    let sql = format!(
        "SET 'trigger' = 'available_now';
CREATE TABLE g (v BIGINT)
  WITH (connector = 'datagen', rows_per_second = '{TASKS}', total_rows = '{}', splits = '{TASKS}');
CREATE TABLE sink WITH (connector = 'blackhole');
INSERT INTO sink SELECT v FROM g;
",
        TASKS * BATCHES
    );
    let id = c.submit(&sql)?;
    let status = c.wait_for(&id, &["finished", "failed"], Duration::from_secs(1800));
    anyhow::ensure!(status["state"] == "finished", "{}", status["error"]);
    let cpu_ms = driver.cpu_ms() - cpu_before;
    let mut watch = JobsWatch::connect(&c.url())?;
    let (mut per_second, mut batch_ms) = (Vec::new(), Vec::new());
    for b in 0..BATCHES {
        let detail = watch.batch(&id, b)?;
        let tasks_ms = detail
            .phases
            .iter()
            .find(|p| p.name == "tasks")
            .map_or(1, |p| p.ms.max(1));
        per_second.push(TASKS * 1000 / tasks_ms);
        batch_ms.push(detail.ended_at_ms.saturating_sub(detail.started_at_ms));
    }
    per_second.sort_unstable();
    batch_ms.sort_unstable();
    anyhow::ensure!(
        standins.launches() >= TASKS * BATCHES,
        "{} launches for {} tasks",
        standins.launches(),
        TASKS * BATCHES
    );
    Ok(json!({
        "executors": EXECUTORS,
        "slots_per_executor": 2,
        "tasks_per_batch": TASKS,
        "batches": BATCHES,
        "tasks_per_second": { "p50": percentile(&per_second, 0.5), "min": per_second.first() },
        "batch_ms": { "p50": percentile(&batch_ms, 0.5), "max": batch_ms.last() },
        "driver_cpu_ms_per_1000_tasks": cpu_ms * 1000 / (TASKS * BATCHES),
        "driver_peak_rss_mib": driver.peak_rss_bytes() >> 20,
    }))
}

/// Runs a job to its end and checks it read exactly `rows` rows; returns its recent batches and
/// its wall time (first batch's start to last commit).
fn run_exactly(bins: &Path, sql: &str, rows: u64) -> anyhow::Result<(Vec<Value>, u64)> {
    let status = run_job(bins, sql)?;
    let read = status["rows_in"].as_u64().unwrap_or(0);
    anyhow::ensure!(read == rows, "read {read} of {rows} rows");
    Ok((batches_of(&status), wall_ms(&status)))
}

fn commit_count(commits: &Path) -> usize {
    std::fs::read_dir(commits).map(|d| d.count()).unwrap_or(0)
}

/// Polls the job's commits directory until it holds more than `before` entries.
fn wait_for_commit(commits: &Path, before: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while commit_count(commits) <= before {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no batch committed after the restart"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

pub fn batches_of(status: &Value) -> Vec<Value> {
    status["recent_batches"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

const BENCH_SOURCE: &str = "CREATE TABLE clicks (user_id BIGINT, page TEXT, amount DOUBLE)
  WITH (connector = 'datagen', rows_per_second = 'RATE', total_rows = 'TOTAL', seed = '1', splits = '4',
        'fields.user_id.max' = '100000', 'fields.amount.max' = '500',
        'fields.page.values' = 'p00,p01,p02,p03,p04,p05,p06,p07,p08,p09,p10,p11,p12,p13,p14,p15,p16,p17,p18,p19');
CREATE TABLE sink WITH (connector = 'blackhole');
INSERT INTO sink
SELECT _batch, page, count(*), sum(amount), max(user_id)
FROM clicks WHERE user_id % 10 <> 0
GROUP BY _batch, page;
";

fn bench_job(settings: &str, rate: u64, total: u64) -> String {
    format!(
        "{settings}\n{}",
        BENCH_SOURCE
            .replace("RATE", &rate.to_string())
            .replace("TOTAL", &total.to_string())
    )
}

fn run_job(bins: &Path, sql: &str) -> anyhow::Result<Value> {
    let c = Cluster::start_with(Cluster::with_bins(bins.to_path_buf()), 2);
    let id = c.submit(sql)?;
    let status = c.wait_for(&id, &["finished", "failed"], Duration::from_secs(900));
    if status["state"] != "finished" {
        bail!("bench job failed: {}", status["error"]);
    }
    Ok(status)
}

/// 1 s batches on 4 executors; one executor is SIGKILLed while batch 5's map tasks run.
fn executor_loss_recovery(bins: &Path) -> anyhow::Result<Value> {
    let sql = bench_job(
        "SET 'trigger' = '1s';\nSET 'partitions' = '8';",
        1_000_000,
        10_000_000,
    );
    for attempt in 0..3 {
        let mut c = Cluster::start_with(Cluster::with_bins(bins.to_path_buf()), 4);
        let id = c.submit(&sql)?;
        c.wait_for_log(
            "driver.log",
            &["stage started", "batch=5 ", "stage=0 "],
            1,
            Duration::from_secs(120),
        );
        let kill_ms = now_ms();
        c.kill_executor(0);
        let status = c.wait_for(&id, &["finished", "failed"], Duration::from_secs(300));
        if status["state"] != "finished" {
            bail!("executor-loss bench job failed: {}", status["error"]);
        }
        let batches = status["recent_batches"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let Some(hit) = batches
            .iter()
            .find(|b| b["rerun"]["executor_lost"].as_u64().unwrap_or(0) > 0)
        else {
            eprintln!("kill landed between batches (attempt {attempt}); again");
            continue;
        };
        let mut others: Vec<u64> = batches
            .iter()
            .filter(|b| b["batch_id"] != hit["batch_id"] && b["batch_id"].as_u64() > Some(0))
            .filter_map(|b| b["duration_ms"].as_u64())
            .collect();
        others.sort_unstable();
        let median = percentile(&others, 0.5);
        let duration = hit["duration_ms"].as_u64().unwrap_or(0);
        // Every batch's span relative to the kill, for the recovery timeline plot.
        let at = |b: &Value, field: &str| b[field].as_u64().unwrap_or(0) as i64 - kill_ms as i64;
        let timeline: Vec<Value> = (batches.iter())
            .map(|b| {
                json!({
                    "batch": b["batch_id"],
                    "started_ms": at(b, "started_at_ms"),
                    "committed_ms": at(b, "committed_at_ms"),
                    "tasks_rerun": b["tasks_rerun"],
                })
            })
            .collect();
        return Ok(json!({
            "executors": 4,
            "trigger_ms": 1000,
            "rows_per_batch": 1_000_000,
            "batch": hit["batch_id"],
            "kill_to_batch_complete_ms": hit["committed_at_ms"].as_u64().unwrap_or(0).saturating_sub(kill_ms),
            "batch_duration_ms": duration,
            "median_other_batches_ms": median,
            "extra_ms_vs_median": duration.saturating_sub(median),
            "driver_recovery_ms": hit["recovery_ms"],
            "tasks_rerun": hit["tasks_rerun"],
            "timeline": timeline,
        }));
    }
    bail!("the executor kill never hit a running batch")
}

/// A small stateless job: the driver is SIGKILLed and started again; how long until the next
/// batch commits (the new driver resumes the job and the executors reconnect).
fn driver_restart(bins: &Path) -> anyhow::Result<Value> {
    let mut c = Cluster::start_with(Cluster::with_bins(bins.to_path_buf()), 2);
    let sql = bench_job(
        "SET 'trigger' = '200ms';\nSET 'partitions' = '4';",
        100_000,
        1_000_000_000,
    );
    let id = c.submit(&sql)?;
    c.wait_until(&id, Duration::from_secs(60), |s| {
        s["batches_committed"].as_u64() >= Some(3)
    });
    let commits = c.path(&format!("state/jobs/{id}/commits"));
    let started = Instant::now();
    c.kill_driver();
    // Counted once the old driver is gone, so its last commits are not mistaken for new ones.
    let before = commit_count(&commits);
    c.start_driver();
    wait_for_commit(&commits, before, Duration::from_secs(60))?;
    Ok(json!({
        "trigger_ms": 200,
        "restart_to_commit_ms": started.elapsed().as_millis() as u64,
    }))
}

/// A running count by key over 1.5M keys (state in 4 partitions). After 16 batches the driver
/// is SIGKILLed and restarted: (a) alone, executors keep their state in memory; (b) with every
/// executor, so new executors restore all 1.5M keys from the checkpoint. How long until the
/// next batch commits, counted from the kill.
fn stateful_restart(bins: &Path) -> anyhow::Result<Value> {
    const KEYS: u64 = 1_500_000;
    let sql = format!(
        "SET 'trigger' = '500ms';
SET 'partitions' = '4';
CREATE TABLE g (k BIGINT, v BIGINT)
  WITH (connector = 'datagen', rows_per_second = '600000', splits = '4',
        'fields.k.kind' = 'sequence', 'fields.v.max' = '100');
CREATE TABLE sink WITH (connector = 'blackhole');
INSERT INTO sink SELECT k % {KEYS} AS key, count(*), sum(v) FROM g GROUP BY k % {KEYS};
"
    );
    let mut c = Cluster::start_with(Cluster::with_bins(bins.to_path_buf()), 2);
    let id = c.submit(&sql)?;
    let commits = c.path(&format!("state/jobs/{id}/commits"));
    let measure = |c: &mut Cluster, with_executors: bool, after: u64| -> anyhow::Result<u64> {
        c.wait_until(&id, Duration::from_secs(300), |s| {
            s["batches_committed"].as_u64() >= Some(after)
        });
        let started = Instant::now();
        c.kill_driver();
        if with_executors {
            c.kill_executor(0);
            c.kill_executor(1);
        }
        let before = commit_count(&commits);
        c.start_driver();
        if with_executors {
            c.add_executor();
            c.add_executor();
        }
        wait_for_commit(&commits, before, Duration::from_secs(120))?;
        Ok(started.elapsed().as_millis() as u64)
    };
    // Steady state before any kill: batches 6 and later, once every key is in the state.
    c.wait_until(&id, Duration::from_secs(300), |s| {
        s["batches_committed"].as_u64() >= Some(16)
    });
    let mut batch_ms: Vec<u64> = c.status(&id)?["recent_batches"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|b| b["batch_id"].as_u64() >= Some(KEYS / 300_000 + 1))
        .filter_map(|b| b["duration_ms"].as_u64())
        .collect();
    batch_ms.sort_unstable();
    let driver_only = measure(&mut c, false, 16)?;
    let status = c.status(&id)?;
    let with_executors = measure(
        &mut c,
        true,
        status["batches_committed"].as_u64().unwrap_or(0) + 3,
    )?;
    // What the new executors restored, from their logs: proof the state came from storage.
    let restored_rows: u64 = (2..4)
        .flat_map(|i| {
            c.log(&format!("executor-{i}.log"))
                .lines()
                .filter(|l| l.contains("state restored from the checkpoint"))
                .filter_map(|l| {
                    l.split("rows=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .collect::<Vec<_>>()
        })
        .sum();
    Ok(json!({
        "keys": KEYS,
        "rows_per_batch": 300_000,
        "trigger_ms": 500,
        "driver_restart_to_commit_ms": driver_only,
        "driver_and_executors_restart_to_commit_ms": with_executors,
        "rows_restored_from_checkpoint": restored_rows,
        "batch_p50_ms": percentile(&batch_ms, 0.5),
        "batch_max_ms": batch_ms.last().copied().unwrap_or(0),
        "batches_measured": batch_ms.len(),
    }))
}

/// A running count and sum over 10M keys: once every key is in the state, batches that
/// change 1% and then 10% of them (each batch exactly that many distinct keys). With a state
/// store whose cost follows the keys a batch touches, the 10% batches take about ten times
/// the 1% ones; one whose cost follows the state's size takes about as long for both.
fn state_scaling(bins: &Path) -> anyhow::Result<Value> {
    const KEYS: u64 = 10_000_000;
    const MEASURED: u64 = 8;
    let mut out = serde_json::Map::new();
    out.insert("keys".into(), json!(KEYS));
    for percent in [1u64, 10] {
        let per_batch = KEYS * percent / 100;
        let filling = KEYS / per_batch;
        let total = per_batch * (filling + MEASURED);
        let sql = format!(
            "SET 'trigger' = 'available_now';
SET 'partitions' = '4';
CREATE TABLE g (k BIGINT, v BIGINT)
  WITH (connector = 'datagen', rows_per_second = '{per_batch}', total_rows = '{total}', splits = '4',
        'fields.k.kind' = 'sequence', 'fields.v.max' = '100');
CREATE TABLE sink WITH (connector = 'blackhole');
INSERT INTO sink SELECT k % {KEYS} AS key, count(*), sum(v) FROM g GROUP BY k % {KEYS};
"
        );
        let started = Instant::now();
        let status = run_job(bins, &sql)?;
        let batches = batches_of(&status);
        let mut ms: Vec<u64> = (batches.iter())
            .filter(|b| b["batch_id"].as_u64().is_some_and(|id| id >= filling))
            .filter_map(|b| b["duration_ms"].as_u64())
            .collect();
        anyhow::ensure!(
            ms.len() as u64 == MEASURED,
            "{} of the {MEASURED} batches after the state filled were seen",
            ms.len()
        );
        ms.sort_unstable();
        out.insert(
            format!("changed_{percent}pct"),
            json!({
                "changed_keys_per_batch": per_batch,
                "batches_to_fill": filling,
                "fill_and_run_ms": started.elapsed().as_millis() as u64,
                "batch_p50_ms": percentile(&ms, 0.5),
                "batch_ms": ms,
            }),
        );
    }
    Ok(Value::Object(out))
}

/// Kafka -> running count by key -> blackhole over a pre-filled topic (4 partitions, 10,000
/// keys): rows/s end to end, from the first batch's start to the last commit.
fn kafka_running_count(bins: &Path) -> anyhow::Result<Value> {
    const RECORDS: u64 = 400_000;
    let broker = KafkaBroker::start();
    broker.create_topic("bench", 4);
    let records: Vec<(i32, String, String)> = (0..RECORDS)
        .map(|i| {
            (
                (i % 4) as i32,
                format!("user{}", i % 10_000),
                format!("{{\"amount\": {}}}", i % 100),
            )
        })
        .collect();
    let started = Instant::now();
    broker.produce("bench", &records);
    let produce_ms = started.elapsed().as_millis() as u64;
    let sql = format!(
        "SET 'trigger' = 'available_now';
SET 'partitions' = '4';
CREATE TABLE events (amount BIGINT)
  WITH (connector = 'kafka', 'bootstrap.servers' = '{}', topic = 'bench', max_offsets_per_trigger = '100000');
CREATE TABLE sink WITH (connector = 'blackhole');
INSERT INTO sink SELECT _key, count(*), sum(amount) FROM events GROUP BY _key;
",
        broker.bootstrap()
    );
    let (batches, wall_ms) = run_exactly(bins, &sql, RECORDS)?;
    // What a bare librdkafka consumer reads from the same broker, one partition after another:
    // the broker's own bound on this machine.
    let started = Instant::now();
    let read = broker.consume_all("bench", 4).len() as u64;
    let bare_ms = started.elapsed().as_millis().max(1) as u64;
    anyhow::ensure!(
        read == RECORDS,
        "the bare consumer read {read} of {RECORDS}"
    );
    Ok(json!({
        "bare_consumer_rows_per_second": RECORDS * 1000 / bare_ms,
        "records": RECORDS,
        "partitions": 4,
        "keys": 10_000,
        "batches": batches.len(),
        "wall_ms": wall_ms,
        "rows_per_second": RECORDS * 1000 / wall_ms,
        "prefill_ms": produce_ms,
        "batch_ms": batches.iter().map(|b| b["duration_ms"].clone()).collect::<Vec<_>>(),
        "task_input_ms": batches.iter().map(|b| b["metrics"]["input_ms"].clone()).collect::<Vec<_>>(),
        "between_batches_ms": batches
            .windows(2)
            .map(|w| {
                let start = w[1]["started_at_ms"].as_u64().unwrap_or(0);
                start.saturating_sub(w[0]["committed_at_ms"].as_u64().unwrap_or(0))
            })
            .collect::<Vec<_>>(),
    }))
}

/// 2-second tumbling counts per page in append mode over generated events (each batch one
/// second of event time): events/s end to end, and window latency, from the start of the batch
/// that read the record closing a window (it moved the watermark past the window's end) to the
/// commit of the batch that emitted it.
fn windowed_counts(bins: &Path) -> anyhow::Result<Value> {
    const RATE: u64 = 200_000;
    const ROWS: u64 = 6_400_000;
    let sql = format!(
        "SET 'trigger' = 'available_now';
SET 'partitions' = '4';
SET 'output_mode' = 'append';
CREATE TABLE clicks (page TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH (connector = 'datagen', rows_per_second = '{RATE}', total_rows = '{ROWS}', seed = '1', splits = '4',
        'fields.page.values' = 'p00,p01,p02,p03,p04,p05,p06,p07,p08,p09');
CREATE TABLE sink WITH (connector = 'blackhole');
INSERT INTO sink SELECT window_start, page, count(*) FROM TUMBLE(clicks, ts, INTERVAL '2' SECOND) GROUP BY window_start, window_end, page;
"
    );
    let (batches, wall_ms) = run_exactly(bins, &sql, ROWS)?;
    // 32 s of events, the last watermark 31 s: windows [0, 2) .. [28, 30) close.
    let mut out = windowed_run(&batches, wall_ms, ROWS, (15 * 10, "15 windows x 10 pages"))?;
    out.insert("rows".into(), json!(ROWS));
    out.insert("event_seconds".into(), json!(ROWS / RATE));
    Ok(Value::Object(out))
}

/// What a windowed job's run shows: events/s, window rows emitted (checked against `want`,
/// with what they should be in words) and window latency.
fn windowed_run(
    batches: &[Value],
    wall_ms: u64,
    events: u64,
    (want, what): (u64, &str),
) -> anyhow::Result<serde_json::Map<String, Value>> {
    let latency = window_latency(batches);
    let windows: u64 = batches
        .iter()
        .map(|b| b["rows_out"].as_u64().unwrap_or(0))
        .sum();
    anyhow::ensure!(
        windows == want,
        "emitted {windows} window rows, want {what}"
    );
    let out = json!({
        "window_rows_emitted": windows,
        "batches": batches.len(),
        "wall_ms": wall_ms,
        "events_per_second": events * 1000 / wall_ms,
        "window_latency_ms": { "p50": percentile(&latency, 0.5), "max": latency.last() },
    });
    Ok(out.as_object().cloned().unwrap_or_default())
}

/// Window latency per batch that emitted windows, sorted: from the start of the batch before
/// it (which read the record that moved the watermark past the windows' end) to its commit.
fn window_latency(batches: &[Value]) -> Vec<u64> {
    let u = |b: &Value, k: &str| b[k].as_u64().unwrap_or(0);
    let mut latency: Vec<u64> = batches
        .windows(2)
        .filter(|w| u(&w[1], "rows_out") > 0)
        .map(|w| u(&w[1], "committed_at_ms").saturating_sub(u(&w[0], "started_at_ms")))
        .collect();
    latency.sort_unstable();
    latency
}

/// The Yahoo streaming benchmark's job over Kafka: JSON ad events, views kept, joined to their
/// campaigns (a static table), counted per campaign in 10-second windows, written to files.
fn yahoo_campaigns(bins: &Path) -> anyhow::Result<Value> {
    const EVENTS: u64 = 1_000_000;
    const PER_SECOND: u64 = 10_000;
    let broker = KafkaBroker::start();
    broker.create_topic("ad-events", 4);
    let types = ["view", "click", "purchase"];
    let records: Vec<(i32, String, String)> = (0..EVENTS)
        .map(|i| {
            // In order, from 2025-01-01T00:00:00.
            let ms = i * 1000 / PER_SECOND;
            let time = format!("2025-01-01T00:{:02}:{:02}.{:03}", ms / 60_000, ms / 1000 % 60, ms % 1000);
            let value = format!(
                "{{\"user_id\": {}, \"page_id\": {}, \"ad_id\": {}, \"ad_type\": \"banner\", \"event_type\": \"{}\", \"event_time\": \"{time}\", \"ip_address\": \"10.0.0.1\"}}",
                i % 100_000,
                i % 10_000,
                (i * 7) % 1000,
                types[(i % 3) as usize]
            );
            ((i % 4) as i32, format!("u{}", i % 100_000), value)
        })
        .collect();
    broker.produce("ad-events", &records);
    let dir = std::env::temp_dir().join(format!("sluice-bench-yahoo-{}", std::process::id()));
    let campaigns = dir.join("campaigns");
    std::fs::create_dir_all(&campaigns)?;
    std::fs::copy("examples/yahoo_campaigns.jsonl", campaigns.join("c.jsonl"))?;
    let sql = std::fs::read_to_string("examples/yahoo_campaign_counts.sql")?
        .replace("127.0.0.1:9092", &broker.bootstrap())
        .replace("SET 'trigger' = '1s';", "SET 'trigger' = 'available_now';")
        .replace(
            "max_offsets_per_trigger = '5000'",
            "max_offsets_per_trigger = '100000'",
        )
        .replace(
            "/tmp/sluice-example/campaigns",
            campaigns.to_str().unwrap_or_default(),
        )
        .replace(
            "/tmp/sluice-example/campaign_counts",
            dir.join("out").to_str().unwrap_or_default(),
        );
    let status = run_exactly(bins, &sql, EVENTS);
    let _ = std::fs::remove_dir_all(&dir);
    let (batches, wall_ms) = status?;
    // 100 s of events, the last watermark 95 s: windows [0, 10) .. [80, 90) close, each with
    // views of all 100 campaigns.
    let want = (9 * 100, "9 windows x 100 campaigns");
    let mut out = windowed_run(&batches, wall_ms, EVENTS, want)?;
    out.insert("events".into(), json!(EVENTS));
    out.insert("event_seconds".into(), json!(EVENTS / PER_SECOND));
    Ok(Value::Object(out))
}

/// From the first batch's start to the last batch's commit.
pub fn wall_ms(status: &Value) -> u64 {
    let batches = status["recent_batches"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let first_start = status["first_batch_started_at_ms"].as_u64().unwrap_or(0);
    let last_commit = batches
        .last()
        .and_then(|b| b["committed_at_ms"].as_u64())
        .unwrap_or(0);
    last_commit.saturating_sub(first_start).max(1)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
