//! `cargo xtask ci`: everything CI checks, from a fresh clone.
//! `cargo xtask bench`: throughput and batch latency of a real local cluster;
//! `cargo xtask bench --compare`: the same work on Sluice, Spark and Flink (see compare/).

mod compare;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use sluice_cluster_tests::{Cluster, KafkaBroker};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "xtask")]
struct Args {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the tests need, check formatting and lints, build, run every test
    Ci,
    /// Measure a datagen -> filter -> per-batch GROUP BY -> blackhole job on a local cluster
    Bench {
        /// Rows for the throughput run
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
        /// Instead: run each workload on Sluice, Spark and Flink, check their results agree,
        /// and write bench/report.md, bench/results.json and plots
        #[arg(long)]
        compare: bool,
        /// Timed runs per engine and workload with --compare (medians are reported)
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Input rows per workload with --compare
        #[arg(long, default_value_t = 4_000_000)]
        compare_rows: u64,
    },
    /// A long chaos run: a Kafka job under random process kills and storage faults, checked
    /// for exact output; prints a table and writes bench/chaos.json
    Chaos {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Build the container image without a container engine: static musl binaries, assembled
    /// FROM scratch with umoci into target/image (an OCI layout and an .oci.tar archive)
    Image {
        /// Cargo profile of the binaries (release for an image you ship)
        #[arg(long, default_value = "release")]
        profile: String,
    },
}

fn main() -> anyhow::Result<()> {
    let root = root_dir()?;
    std::env::set_current_dir(&root)?;
    match Args::parse().command {
        Task::Ci => ci(),
        Task::Bench {
            compare: true,
            runs,
            compare_rows,
            ..
        } => {
            cargo(&["build", "--release", "--bins"])?;
            let opts = compare::Options {
                runs,
                rows: compare_rows,
            };
            compare::compare(&root, &root.join("target/release"), &opts)
        }
        Task::Bench { rows, .. } => bench(&root, rows),
        Task::Chaos { minutes, seed } => chaos(&root, minutes, seed),
        Task::Image { profile } => image(&root, &profile, &root.join("target")),
    }
}

/// A cargo command without the variables `cargo xtask` set for this process: build scripts
/// that watch them (ring watches CARGO_MANIFEST_DIR) would otherwise rebuild whenever cargo
/// runs from elsewhere, and CI's cached image build would never be reused.
fn cargo_command() -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&key.as_ref())
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("==> cargo {}", args.join(" "));
    let started = Instant::now();
    let status = cargo_command().args(args).status()?;
    eprintln!("    ({:.0} s)", started.elapsed().as_secs_f64());
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// moto's S3-compatible server, for the tests that need real object storage.
const MOTO: &str = "moto[server]==5.2.5";

fn root_dir() -> anyhow::Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf())
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/sluice"))
}

/// kubernetes-validate: the Kubernetes schemas, to check the manifests offline.
const K8S_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// Installs a Python package into its own cached virtualenv (once per version) and returns
/// `bin/<program>` of it.
fn ensure_venv(name: &str, package: &str, program: &str) -> anyhow::Result<PathBuf> {
    let venv = cache_dir()?.join(name);
    let bin = venv.join("bin").join(program);
    let marker = venv.join(".installed");
    if bin.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(package) {
        return Ok(bin);
    }
    eprintln!("==> installing {package} into {}", venv.display());
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(venv.parent().context("cache dir")?)?;
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .with_context(|| format!("python3 is needed to install {package}"))?;
    let ok = Command::new(python)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()?
        .success()
        && Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", package])
            .status()?
            .success();
    if !ok || !bin.exists() {
        bail!("installing {package} failed");
    }
    std::fs::write(&marker, package)?;
    eprintln!("    ({:.0} s)", started.elapsed().as_secs_f64());
    Ok(bin)
}

/// Debian's kubectl (its kustomize renders the manifests), unpacked under the cache without
/// installing the package, so the same version runs on every machine.
fn ensure_kubectl() -> anyhow::Result<PathBuf> {
    let root = cache_dir()?.join("kubectl");
    let bin = root.join("usr/bin/kubectl");
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!(
        "==> unpacking Debian's kubernetes-client into {}",
        root.display()
    );
    let download = cache_dir()?.join("kubectl-deb");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    if !apt_get(&["download", "kubernetes-client"], &download) {
        bail!("cannot download Debian's kubernetes-client (apt-get download kubernetes-client)");
    }
    let deb = std::fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("no .deb downloaded")?;
    let ok = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()?
        .success();
    if !ok || !bin.exists() {
        bail!("cannot unpack {}", deb.display());
    }
    Ok(bin)
}

const TANSU_VERSION: &str = "0.6.0";

/// Installs tansu, the Kafka-wire broker the tests use, under the cache (once per version;
/// about 11 minutes on 2 cores) and returns its binary.
fn ensure_tansu() -> anyhow::Result<PathBuf> {
    let root = cache_dir()?.join("tansu");
    let bin = root.join("bin/tansu");
    let marker = root.join(".installed");
    if bin.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(TANSU_VERSION) {
        return Ok(bin);
    }
    eprintln!(
        "==> installing tansu {TANSU_VERSION} into {} (once; ~11 min)",
        root.display()
    );
    let started = Instant::now();
    let status = cargo_command()
        .args([
            "install",
            "tansu",
            "--version",
            TANSU_VERSION,
            "--locked",
            "--features",
            "dynostore,libsql",
            "--root",
        ])
        .arg(&root)
        // Its own target dir, so the workspace's build cache is not touched.
        .env("CARGO_TARGET_DIR", cache_dir()?.join("tansu-build"))
        .status()?;
    if !status.success() || !bin.exists() {
        bail!("installing tansu {TANSU_VERSION} failed");
    }
    std::fs::write(&marker, TANSU_VERSION)?;
    let _ = std::fs::remove_dir_all(cache_dir()?.join("tansu-build"));
    eprintln!("    ({:.0} s)", started.elapsed().as_secs_f64());
    Ok(bin)
}

fn ci() -> anyhow::Result<()> {
    let started = Instant::now();
    let moto = ensure_venv("moto-venv", MOTO, "moto_server")?;
    let validate = ensure_venv("k8s-venv", K8S_VALIDATE, "kubernetes-validate")?;
    let kubectl = ensure_kubectl()?;
    let tansu = ensure_tansu()?;
    // SAFETY: single-threaded here; the tests we start inherit them.
    unsafe {
        std::env::set_var("SLUICE_MOTO_SERVER", &moto);
        std::env::set_var("SLUICE_K8S_VALIDATE", &validate);
        std::env::set_var("SLUICE_KUBECTL", &kubectl);
        std::env::set_var("SLUICE_TANSU", &tansu);
    }
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The cluster tests start these binaries.
    cargo(&["build", "--workspace", "--bins"])?;
    let (passed, failed) = run_tests()?;
    // The image of deploy/, built and checked without a container engine.
    let image_built = image(&root_dir()?, "release", &cache_dir()?.join("image-target"));
    eprintln!("ci took {:.0} s", started.elapsed().as_secs_f64());
    if let Err(e) = &image_built {
        eprintln!("image: {e:#}");
    }
    println!("ci: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        bail!("tests failed");
    }
    image_built?;
    Ok(())
}

/// Runs every test, echoing cargo's output and adding up its "test result" lines.
fn run_tests() -> anyhow::Result<(u64, u64)> {
    eprintln!("==> cargo test --workspace --all-targets --no-fail-fast");
    // Every test binary runs even after one fails, so one red run shows every failure.
    let mut child = cargo_command()
        .args(["test", "--workspace", "--all-targets", "--no-fail-fast"])
        .stdout(Stdio::piped())
        .spawn()?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|p| {
                        p.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        failed = 1;
    }
    Ok((passed, failed))
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
    let count = || std::fs::read_dir(&commits).map(|d| d.count()).unwrap_or(0);
    let started = Instant::now();
    c.kill_driver();
    // Counted once the old driver is gone, so its last commits are not mistaken for new ones.
    let before = count();
    c.start_driver();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count() <= before {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no batch committed after the restart"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(json!({
        "trigger_ms": 200,
        "restart_to_commit_ms": started.elapsed().as_millis() as u64,
    }))
}

/// A running count by key over 1.5M keys (state in 4 partitions). After 12 batches the driver
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
    let count = || std::fs::read_dir(&commits).map(|d| d.count()).unwrap_or(0);
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
        let before = count();
        c.start_driver();
        if with_executors {
            c.add_executor();
            c.add_executor();
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while count() <= before {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no batch committed after the restart"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(started.elapsed().as_millis() as u64)
    };
    let driver_only = measure(&mut c, false, 12)?;
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
    let mut batch_ms: Vec<u64> = c.status(&id)?["recent_batches"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|b| b["duration_ms"].as_u64())
        .collect();
    batch_ms.sort_unstable();
    Ok(json!({
        "keys": KEYS,
        "rows_per_batch": 300_000,
        "trigger_ms": 500,
        "driver_restart_to_commit_ms": driver_only,
        "driver_and_executors_restart_to_commit_ms": with_executors,
        "rows_restored_from_checkpoint": restored_rows,
        "batch_p50_ms": percentile(&batch_ms, 0.5),
    }))
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
    let status = run_job(bins, &sql)?;
    let batches = status["recent_batches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let wall_ms = wall_ms(&status);
    let rows = status["rows_in"].as_u64().unwrap_or(0);
    anyhow::ensure!(rows == RECORDS, "read {rows} of {RECORDS} records");
    Ok(json!({
        "records": RECORDS,
        "partitions": 4,
        "keys": 10_000,
        "batches": batches.len(),
        "wall_ms": wall_ms,
        "rows_per_second": rows * 1000 / wall_ms,
        "prefill_ms": produce_ms,
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
    let status = run_job(bins, &sql)?;
    let batches = status["recent_batches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let wall_ms = wall_ms(&status);
    let rows = status["rows_in"].as_u64().unwrap_or(0);
    anyhow::ensure!(rows == ROWS, "read {rows} of {ROWS} rows");
    let latency = window_latency(&batches);
    let windows: u64 = batches
        .iter()
        .map(|b| b["rows_out"].as_u64().unwrap_or(0))
        .sum();
    // 32 s of events, the last watermark 31 s: windows [0, 2) .. [28, 30) close.
    anyhow::ensure!(
        windows == 15 * 10,
        "emitted {windows} window rows, want 15 windows x 10 pages"
    );
    Ok(json!({
        "rows": ROWS,
        "event_seconds": ROWS / RATE,
        "window_rows_emitted": windows,
        "batches": batches.len(),
        "wall_ms": wall_ms,
        "events_per_second": rows * 1000 / wall_ms,
        "window_latency_ms": { "p50": percentile(&latency, 0.5), "max": latency.last() },
    }))
}

/// Window latency per batch that emitted windows, sorted: from the start of the batch before
/// it (which read the record that moved the watermark past the windows' end) to its commit.
fn window_latency(batches: &[Value]) -> Vec<u64> {
    let u = |b: &Value, k: &str| b[k].as_u64().unwrap_or(0);
    let mut latency: Vec<u64> = batches
        .windows(2)
        .filter(|w| u(&w[1], "rows_out") > 0)
        .map(|w| {
            u(&w[1], "committed_at_ms")
                .saturating_sub(u(&w[0], "committed_at_ms") - u(&w[0], "duration_ms"))
        })
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
    let status = run_job(bins, &sql);
    let _ = std::fs::remove_dir_all(&dir);
    let status = status?;
    let batches = status["recent_batches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rows = status["rows_in"].as_u64().unwrap_or(0);
    anyhow::ensure!(rows == EVENTS, "read {rows} of {EVENTS} events");
    let wall_ms = wall_ms(&status);
    let latency = window_latency(&batches);
    let windows: u64 = batches
        .iter()
        .map(|b| b["rows_out"].as_u64().unwrap_or(0))
        .sum();
    // 100 s of events, the last watermark 95 s: windows [0, 10) .. [80, 90) close, each with
    // views of all 100 campaigns.
    anyhow::ensure!(
        windows == 9 * 100,
        "emitted {windows} rows, want 9 windows x 100 campaigns"
    );
    Ok(json!({
        "events": EVENTS,
        "event_seconds": EVENTS / PER_SECOND,
        "window_rows_emitted": windows,
        "batches": batches.len(),
        "wall_ms": wall_ms,
        "events_per_second": rows * 1000 / wall_ms,
        "window_latency_ms": { "p50": percentile(&latency, 0.5), "max": latency.last() },
    }))
}

fn chaos(root: &Path, minutes: u64, seed: u64) -> anyhow::Result<()> {
    let tansu = ensure_tansu()?;
    // SAFETY: single-threaded here; the processes we start inherit it.
    unsafe { std::env::set_var("SLUICE_TANSU", &tansu) };
    cargo(&["build", "--release", "--bins"])?;
    let cfg = sluice_cluster_tests::chaos::ChaosConfig {
        duration: Duration::from_secs(minutes.max(1) * 60),
        seed,
        // About one fault every 4 seconds, of each kind in turn.
        failures_each: (minutes.max(1) * 5).max(10) as u32,
        rate: 1000,
    };
    let report = sluice_cluster_tests::chaos::run(&cfg, &root.join("target/release"));
    let rows: Vec<(&str, Value)> = vec![
        ("seed", report["seed"].clone()),
        ("minutes", json!(minutes)),
        ("executor kills survived", report["executor_kills"].clone()),
        ("driver kills survived", report["driver_kills"].clone()),
        ("executor stops survived", report["executor_stops"].clone()),
        (
            "store write failures",
            report["store_write_failures"].clone(),
        ),
        ("records produced", report["records_produced"].clone()),
        ("records lost", report["running_count"]["lost"].clone()),
        (
            "records duplicated",
            report["running_count"]["duplicated"].clone(),
        ),
        (
            "longest output stall (ms)",
            report["longest_stall_ms"].clone(),
        ),
        ("slowest recovery (ms)", report["max_recovery_ms"].clone()),
        ("exact", report["exact"].clone()),
    ];
    println!("{:<32} {:>14}", "measure", "value");
    for (name, value) in &rows {
        println!("{name:<32} {:>14}", value.to_string());
    }
    println!("\n{:>8}  {:<20} {:>12}", "AT MS", "FAULT", "RECOVERED MS");
    for e in report["schedule"].as_array().into_iter().flatten() {
        println!(
            "{:>8}  {:<20} {:>12}",
            e["at_ms"],
            e["fault"].as_str().unwrap_or_default(),
            e["recovered_ms"]
        );
    }
    std::fs::create_dir_all(root.join("bench"))?;
    std::fs::write(
        root.join("bench/chaos.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("\nwrote bench/chaos.json");
    if report["exact"] != true {
        bail!(
            "seed {seed}: output differs from what was produced: {}",
            report["running_count"]
        );
    }
    Ok(())
}

/// From the first batch's start to the last batch's commit.
fn wall_ms(status: &Value) -> u64 {
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn bench(root: &Path, rows: u64) -> anyhow::Result<()> {
    cargo(&["build", "--release", "--bins"])?;
    let bins: PathBuf = root.join("target/release");

    // Throughput: big batches (available_now caps each batch at rows_per_second rows).
    let status = run_job(
        &bins,
        &bench_job(
            "SET 'trigger' = 'available_now';\nSET 'partitions' = '4';",
            2_000_000,
            rows,
        ),
    )?;
    let batches = status["recent_batches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let wall_ms = wall_ms(&status);
    let rows_in = status["rows_in"].as_u64().unwrap_or(0);
    let throughput = rows_in * 1000 / wall_ms;

    // Latency: small batches every 100 ms.
    let status = run_job(
        &bins,
        &bench_job(
            "SET 'trigger' = '100ms';\nSET 'partitions' = '4';",
            10_000,
            50_000,
        ),
    )?;
    // End to end, from the batch's start (planning its input) to its commit entry; the first
    // batches warm caches and connections and are left out.
    let mut durations: Vec<u64> = status["recent_batches"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .skip(5)
        .filter_map(|b| {
            b["committed_at_ms"]
                .as_u64()?
                .checked_sub(b["started_at_ms"].as_u64()?)
        })
        .collect();
    durations.sort_unstable();
    let (p50, p99) = (percentile(&durations, 0.5), percentile(&durations, 0.99));

    let recovery = executor_loss_recovery(&bins)?;
    let restart = driver_restart(&bins)?;
    let stateful = stateful_restart(&bins)?;
    let kafka = kafka_running_count(&bins)?;
    let windowed = windowed_counts(&bins)?;
    let yahoo = yahoo_campaigns(&bins)?;
    let mut checkpoint_ms: Vec<u64> = batches
        .iter()
        .filter_map(|b| b["checkpoint_ms"].as_u64())
        .collect();
    checkpoint_ms.sort_unstable();

    let rows: Vec<(&str, Value)> = vec![
        ("throughput: rows", json!(rows_in)),
        ("throughput: wall time (ms)", json!(wall_ms)),
        ("throughput: rows/s end to end", json!(throughput)),
        ("small batches (~1000 rows): count", json!(durations.len())),
        ("small batches: p50 batch duration (ms)", json!(p50)),
        ("small batches: p99 batch duration (ms)", json!(p99)),
        (
            "executor SIGKILL -> its batch committed (ms)",
            recovery["kill_to_batch_complete_ms"].clone(),
        ),
        (
            "  that batch's extra time vs median (ms)",
            recovery["extra_ms_vs_median"].clone(),
        ),
        (
            "  recovery measured by the driver (ms)",
            recovery["driver_recovery_ms"].clone(),
        ),
        (
            "driver SIGKILL+restart -> next commit (ms)",
            restart["restart_to_commit_ms"].clone(),
        ),
        (
            "1.5M-key state: driver restart -> commit (ms)",
            stateful["driver_restart_to_commit_ms"].clone(),
        ),
        (
            "1.5M-key state: driver+executors -> commit (ms)",
            stateful["driver_and_executors_restart_to_commit_ms"].clone(),
        ),
        (
            "  state rows restored by the new executors",
            stateful["rows_restored_from_checkpoint"].clone(),
        ),
        (
            "1.5M-key state: batch duration p50 (ms)",
            stateful["batch_p50_ms"].clone(),
        ),
        (
            "kafka -> running count -> blackhole: rows/s",
            kafka["rows_per_second"].clone(),
        ),
        (
            "2 s windows, append: events/s",
            windowed["events_per_second"].clone(),
        ),
        (
            "  window latency p50 (ms)",
            windowed["window_latency_ms"]["p50"].clone(),
        ),
        (
            "Yahoo job (Kafka, static join, windows): events/s",
            yahoo["events_per_second"].clone(),
        ),
        (
            "  window latency p50 (ms)",
            yahoo["window_latency_ms"]["p50"].clone(),
        ),
        (
            "checkpoint cost per batch, p50 (ms)",
            json!(percentile(&checkpoint_ms, 0.5)),
        ),
    ];
    println!();
    println!("{:<46} {:>14}", "measure", "value");
    for (name, value) in &rows {
        println!("{name:<46} {:>14}", value.to_string());
    }

    let results = json!({
        "job": "datagen -> filter -> per-batch GROUP BY (4 partitions) -> blackhole; 1 driver + 2 executors x 2 slots",
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "throughput": { "rows": rows_in, "wall_ms": wall_ms, "rows_per_second": throughput },
        "small_batches": { "trigger_ms": 100, "rows_per_batch": 1000, "batches": durations.len(), "p50_ms": p50, "p99_ms": p99 },
        "executor_loss": recovery,
        "driver_restart": restart,
        "stateful_restart": stateful,
        "kafka_running_count": kafka,
        "windowed_counts": windowed,
        "yahoo_campaigns": yahoo,
        "checkpoint_ms_per_batch": { "p50": percentile(&checkpoint_ms, 0.5), "max": checkpoint_ms.last() },
    });
    std::fs::create_dir_all(root.join("bench"))?;
    std::fs::write(
        root.join("bench/cluster.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    println!("\nwrote bench/cluster.json");
    Ok(())
}

const MUSL: &str = "x86_64-unknown-linux-musl";
const IMAGE_TAG: &str = env!("CARGO_PKG_VERSION");

/// Installs Debian packages that are missing (the image build needs musl-gcc and umoci).
fn ensure_debs(programs: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _)| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("==> apt-get install {}", missing.join(" "));
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(&missing);
    if !apt_get(&args, Path::new(".")) {
        bail!("cannot install {} with apt-get", missing.join(" "));
    }
    Ok(())
}

/// `apt-get ARGS` in `dir`; once more after `apt-get update` if it fails, since a fresh
/// machine's package lists may be empty. Whether it succeeded.
fn apt_get(args: &[&str], dir: &Path) -> bool {
    let attempt = || {
        Command::new("apt-get")
            .args(args)
            .current_dir(dir)
            .status()
            .is_ok_and(|s| s.success())
    };
    attempt()
        || (Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .is_ok_and(|s| s.success())
            && attempt())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("{program} {} failed", args.join(" "));
    }
    Ok(())
}

/// The image deploy/Dockerfile describes, assembled with umoci: /sluice, /sluice-driver,
/// /sluice-executor (static, stripped), the CA bundle, /tmp, user 65532, no shell.
/// `target_dir`: where cargo builds the musl binaries (CI keeps them under the cache, so only
/// its first run pays for the release build).
fn image(root: &Path, profile: &str, target_dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    ensure_debs(&[("musl-gcc", "musl-tools"), ("umoci", "umoci")])?;
    run("rustup", &["target", "add", MUSL])?;
    cargo(&[
        "build",
        "--locked",
        "--profile",
        profile,
        "--target",
        MUSL,
        "--bin",
        "sluice",
        "--target-dir",
        target_dir.to_str().context("path")?,
    ])?;
    let dir_name = if profile == "dev" { "debug" } else { profile };
    let built = target_dir.join(MUSL).join(dir_name);
    let out = root.join("target/image");
    let _ = std::fs::remove_dir_all(&out);
    let files = out.join("files");
    std::fs::create_dir_all(files.join("etc/ssl/certs"))?;
    std::fs::create_dir_all(files.join("tmp"))?;
    std::fs::set_permissions(
        files.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    std::fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        files.join("etc/ssl/certs/ca-certificates.crt"),
    )
    .context("the CA bundle (/etc/ssl/certs/ca-certificates.crt, package ca-certificates)")?;
    // One binary under three names: `sluice` is also the driver and the executor when called
    // by their names, so the image holds one copy instead of three.
    run(
        "strip",
        &[
            "-o",
            files.join("sluice").to_str().context("path")?,
            built.join("sluice").to_str().context("path")?,
        ],
    )?;
    for bin in ["sluice-driver", "sluice-executor"] {
        std::fs::hard_link(files.join("sluice"), files.join(bin))?;
    }
    let layout = out.join("oci");
    let layout_s = layout.to_str().context("path")?;
    let image = format!("{layout_s}:{IMAGE_TAG}");
    let bundle = out.join("bundle");
    let bundle_s = bundle.to_str().context("path")?;
    run("umoci", &["init", "--layout", layout_s])?;
    run("umoci", &["new", "--image", &image])?;
    run(
        "umoci",
        &["unpack", "--rootless", "--image", &image, bundle_s],
    )?;
    run(
        "cp",
        &[
            "-a",
            &format!("{}/.", files.display()),
            &format!("{bundle_s}/rootfs/"),
        ],
    )?;
    run("umoci", &["repack", "--image", &image, bundle_s])?;
    run(
        "umoci",
        &[
            "config",
            "--image",
            &image,
            "--config.user",
            "65532:65532",
            "--config.entrypoint",
            "/sluice",
            "--config.workingdir",
            "/",
            "--config.label",
            "org.opencontainers.image.title=sluice",
            "--config.label",
            &format!("org.opencontainers.image.version={IMAGE_TAG}"),
        ],
    )?;
    run("umoci", &["gc", "--layout", layout_s])?;
    // Check the image, not the build: unpack it afresh and run what it holds.
    let check = out.join("check");
    run(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &image,
            check.to_str().context("path")?,
        ],
    )?;
    let rootfs = check.join("rootfs");
    let mut listing: Vec<String> = std::fs::read_dir(&rootfs)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    listing.sort();
    for bin in ["sluice", "sluice-driver", "sluice-executor"] {
        let out = Command::new(rootfs.join(bin))
            .arg("--version")
            .env_clear()
            .output()
            .with_context(|| format!("running /{bin} from the image"))?;
        let version = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !version.starts_with(&format!("{bin} ")) {
            bail!("/{bin} --version failed in the image: {out:?}");
        }
        eprintln!("    /{bin}: {}", version.trim());
    }
    let config = Command::new("umoci")
        .args(["stat", "--image", &image, "--json"])
        .output()?;
    if !config.status.success() {
        bail!("umoci stat failed");
    }
    let archive = out.join(format!("sluice-{IMAGE_TAG}.oci.tar"));
    run(
        "tar",
        &[
            "-C",
            layout_s,
            "-cf",
            archive.to_str().context("path")?,
            ".",
        ],
    )?;
    let _ = std::fs::remove_dir_all(&bundle);
    let _ = std::fs::remove_dir_all(&check);
    let _ = std::fs::remove_dir_all(&files);
    let size = std::fs::metadata(&archive)?.len();
    println!(
        "image sluice:{IMAGE_TAG}: {} ({:.1} MiB), contents /{}; OCI layout {}; took {:.0} s",
        archive.display(),
        size as f64 / (1024.0 * 1024.0),
        listing.join(" /"),
        layout.display(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "load it with: skopeo copy oci-archive:{} docker-daemon:sluice:{IMAGE_TAG}",
        archive.display()
    );
    Ok(())
}
