//! The engines compared: Sluice's local cluster, and Spark and Flink driven by the Python
//! scripts in xtask/peers/, each measured the same way from /proc.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sluice_cluster_tests::Cluster;

use super::Workload;
use super::checksum::{self, Checksum};
use super::data::Dataset;
use super::procstat::{Sampler, Tree};
use super::queries::Query;
use super::recovery::{self, Case, Recovery};

/// Files per batch for every engine (Spark's maxFilesPerTrigger, Sluice's max_files_per_batch).
pub const FILES_PER_BATCH: u64 = 4;
/// Shuffle partitions (Sluice's `partitions`, Spark's spark.sql.shuffle.partitions).
pub const PARTITIONS: u64 = 4;

/// Flink's parallelism (flink_job.py sets it).
const FLINK_PARALLELISM: u64 = 2;

/// Keys from which a peer keeps its state in RocksDB rather than on the JVM heap, as their
/// guides advise for large state (Spark's default store holds two versions of it in memory).
pub const LARGE_STATE_KEYS: u64 = 1_000_000;

/// One timed run: rows read, the time from the first batch's start to the last one's end, and
/// the CPU time and peak resident memory of the engine's processes over the run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Run {
    pub rows: u64,
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub peak_rss_bytes: u64,
    pub batches: u64,
    /// Each batch's duration, in order (none for Flink, which has no batches).
    pub batch_ms: Vec<u64>,
}

impl Run {
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 * 1000.0 / self.wall_ms.max(1) as f64
    }

    pub fn cpu_seconds_per_million(&self) -> f64 {
        self.cpu_ms as f64 / 1000.0 / (self.rows.max(1) as f64 / 1e6)
    }
}

pub trait Engine {
    fn name(&self) -> &'static str;
    fn version(&self) -> String;
    fn settings(&self) -> String;
    /// How this engine runs `w` where it differs from the settings every workload shares.
    fn notes(&self, _w: &Workload) -> Vec<&'static str> {
        Vec::new()
    }
    /// Why this engine cannot run `query` the same way, when it cannot.
    fn unsupported(&self, query: Query) -> Option<&'static str>;
    /// A timed run with the engine's no-op sink.
    fn run(&self, w: &Workload, data: &Dataset, scratch: &Path) -> anyhow::Result<Run>;
    /// An untimed run writing real output, reduced to a checksum.
    fn check(&self, w: &Workload, data: &Dataset, scratch: &Path) -> anyhow::Result<Checksum>;
    /// The latency floor: each of `SMALL_BATCHES` small batches' time from its trigger to its
    /// durable commit, after warm-up batches (see bench::small_batch_times).
    fn latency_floor(&self, scratch: &Path) -> anyhow::Result<Vec<u64>>;
    /// The restart workload's case `case`: each way of killing this engine's coordinator
    /// and the time from the kill to the next commit.
    fn restart(&self, case: &Case, data: &Dataset, scratch: &Path)
    -> anyhow::Result<Vec<Recovery>>;
    /// The executor-kill workload: one executor (task manager) killed while the running count
    /// over `case` runs, and the time from the kill to the next commit.
    fn executor_kill(
        &self,
        case: &Case,
        data: &Dataset,
        scratch: &Path,
    ) -> anyhow::Result<Vec<Recovery>>;
}

pub struct Sluice {
    pub bins: PathBuf,
}

impl Sluice {
    fn sql(w: &Workload, data: &Dataset, out: Option<&Path>) -> String {
        let source = format!(
            "SET 'trigger' = 'available_now';
SET 'partitions' = '{PARTITIONS}';
CREATE TABLE src ({})
  WITH (connector = 'files', path = '{}', format = 'jsonl', max_files_per_batch = '{FILES_PER_BATCH}');
",
            w.input.columns(),
            data.dir.display()
        ) + &w.query.sluice_preamble(&data.campaigns());
        let (columns, select) = w.query.sluice();
        let sink = match out {
            Some(dir) => format!(
                "CREATE TABLE sink ({columns}) WITH (connector = 'files', path = '{}', format = 'jsonl');",
                dir.display()
            ),
            None => "CREATE TABLE sink WITH (connector = 'blackhole');".to_string(),
        };
        format!("{source}{sink}\nINSERT INTO sink {select};\n")
    }

    fn run_sql(&self, sql: &str) -> anyhow::Result<Run> {
        let c = Cluster::start_with(Cluster::with_bins(self.bins.clone()), 2);
        // The driver and executors; not the CLI processes that submit and poll.
        let sampler = Sampler::start(Tree {
            root: std::process::id(),
            include_root: false,
            keep: |comm| comm == "sluice-driver" || comm == "sluice-executor",
        });
        let cpu_before = sampler.cpu_ms();
        let id = c.submit(sql)?;
        let status = c.wait_for(&id, &["finished", "failed"], Duration::from_secs(1800));
        let cpu_ms = sampler.cpu_ms() - cpu_before;
        if status["state"] != "finished" {
            bail!("Sluice job failed: {}", status["error"]);
        }
        let run = Run {
            rows: status["rows_in"].as_u64().unwrap_or(0),
            wall_ms: crate::bench::wall_ms(&status),
            cpu_ms,
            peak_rss_bytes: sampler.peak_rss_bytes(),
            batches: status["batches_committed"].as_u64().unwrap_or(0),
            batch_ms: crate::bench::batches_of(&status)
                .iter()
                .filter_map(|b| b["duration_ms"].as_u64())
                .collect(),
        };
        Ok(run)
    }
}

impl Engine for Sluice {
    fn name(&self) -> &'static str {
        "sluice"
    }

    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    fn settings(&self) -> String {
        format!(
            "release build; 1 driver + 2 executors x 2 slots; partitions = {PARTITIONS}; checkpoints on local disk every batch; blackhole sink"
        )
    }

    fn unsupported(&self, _query: Query) -> Option<&'static str> {
        None
    }

    fn run(&self, w: &Workload, data: &Dataset, _scratch: &Path) -> anyhow::Result<Run> {
        let mut run = self.run_sql(&Self::sql(w, data, None))?;
        // A query that scans `src` more than once (q5 and q7 join it to itself) counts its
        // rows once per scan; the rate is of input rows, as for the peers.
        if run.rows == 0 || run.rows % data.rows != 0 {
            bail!("sluice read {} rows of {}", run.rows, data.rows);
        }
        run.rows = data.rows;
        Ok(run)
    }

    fn check(&self, w: &Workload, data: &Dataset, scratch: &Path) -> anyhow::Result<Checksum> {
        let out = scratch.join("sluice-out");
        self.run_sql(&Self::sql(w, data, Some(&out)))?;
        checksum::read_batches(&out, w.query.checksum())
    }

    fn latency_floor(&self, _scratch: &Path) -> anyhow::Result<Vec<u64>> {
        Ok(crate::bench::small_batch_times(&self.bins)?.end_to_end_ms)
    }

    fn restart(
        &self,
        case: &Case,
        data: &Dataset,
        scratch: &Path,
    ) -> anyhow::Result<Vec<Recovery>> {
        recovery::sluice(&self.bins, case, data, scratch)
    }

    fn executor_kill(
        &self,
        case: &Case,
        data: &Dataset,
        scratch: &Path,
    ) -> anyhow::Result<Vec<Recovery>> {
        recovery::sluice_executor_kill(&self.bins, case, data, scratch)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PeerKind {
    Spark,
    Flink,
}

impl PeerKind {
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Spark => "spark",
            PeerKind::Flink => "flink",
        }
    }
}

/// Spark or Flink: a Python interpreter of the engine's venv and the script that drives it.
pub struct Peer {
    pub kind: PeerKind,
    pub python: PathBuf,
    pub script: PathBuf,
    pub package: &'static str,
}

impl Peer {
    fn spec(
        &self,
        w: &Workload,
        data: &Dataset,
        scratch: &Path,
        check: bool,
    ) -> anyhow::Result<Value> {
        let checkpoint = scratch.join(format!("{}-checkpoint-{}", self.name(), now_nanos()));
        let input = match (self.kind, w.input) {
            (PeerKind::Flink, input) if input.events_per_second().is_some() => {
                data.in_parts(FLINK_PARALLELISM)?
            }
            _ => data.dir.clone(),
        };
        let mut spec = json!({
            "workload": w.query.peer_name(),
            "input_kind": w.input.name(),
            "input": input,
            "rows": data.rows,
            "files_per_batch": FILES_PER_BATCH,
            "partitions": PARTITIONS,
            "checkpoint": checkpoint,
            "checksum": w.query.checksum().to_json(),
            "large_state": w.input.keys() >= LARGE_STATE_KEYS,
            "campaigns": data.campaigns(),
            "final_watermark": w.input.events_per_second().map(|rate| final_watermark(data.rows, rate)),
            "window_end": w.query.window_end(),
        });
        if check {
            spec["check_out"] = json!(scratch.join(format!("{}-out", self.name())));
        }
        Ok(spec)
    }

    /// Runs the script; CPU counts from its "READY" line (the session is up) to its result.
    fn launch(&self, spec: &Value) -> anyhow::Result<Run> {
        let mut child = Command::new(&self.python)
            .arg(&self.script)
            .arg(spec.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.python.display()))?;
        let sampler = Sampler::start(Tree {
            root: child.id(),
            include_root: true,
            keep: |_| true,
        });
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let errors =
            std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        let (mut cpu_before, mut cpu_ms, mut result) = (0, 0, None);
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if line == "READY" {
                cpu_before = sampler.cpu_ms();
            } else if line.starts_with('{') {
                cpu_ms = sampler.cpu_ms() - cpu_before;
                result = Some(serde_json::from_str::<Value>(&line)?);
            }
        }
        let status = child.wait()?;
        let errors = errors.join().unwrap_or_default();
        let Some(result) = result.filter(|_| status.success()) else {
            let tail: Vec<&str> = errors.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            bail!("{} failed ({status}): {}", self.name(), cause(&errors));
        };
        let run = Run {
            rows: result["rows"].as_u64().unwrap_or(0),
            wall_ms: result["wall_ms"].as_u64().unwrap_or(0),
            cpu_ms,
            peak_rss_bytes: sampler.peak_rss_bytes(),
            batches: result["batches"].as_u64().unwrap_or(0),
            batch_ms: (result["batch_ms"].as_array().into_iter().flatten())
                .filter_map(Value::as_u64)
                .collect(),
        };
        Ok(run)
    }
}

const CLOSED_WINDOWS: &str = "Flink closes every window at the end of a bounded input; its checksum counts only the windows the final watermark closes, as Sluice and Spark emit";

impl Engine for Peer {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn version(&self) -> String {
        self.package.to_string()
    }

    fn settings(&self) -> String {
        match self.kind {
            PeerKind::Spark => format!(
                "local[2]; spark.sql.shuffle.partitions = {PARTITIONS}; maxFilesPerTrigger = {FILES_PER_BATCH}; trigger availableNow; checkpoint on local disk; noop sink (foreachBatch for the per-batch count)"
            ),
            PeerKind::Flink => "local mini-cluster, parallelism 2; checkpoint every 1 s on local disk; mini-batch (1 s, 5000 rows) and two-phase aggregation; blackhole sink; the wall time of an empty job (deployment) subtracted; event-time input in one file per reader (its file source reads files in no set order, which makes rows late)".to_string(),
        }
    }

    fn notes(&self, w: &Workload) -> Vec<&'static str> {
        let mut notes = Vec::new();
        if w.input.keys() >= LARGE_STATE_KEYS {
            notes.push(match self.kind {
                PeerKind::Spark => "state in RocksDB (RocksDBStateStoreProvider), as Spark's guide advises for millions of keys; its default store keeps two versions of the state on the heap",
                PeerKind::Flink => "state on the heap (HashMapStateBackend): with RocksDB the check run took over 13 minutes, its checkpoints 24 s each",
            });
        }
        match (self.kind, w.query) {
            (PeerKind::Flink, Query::Yahoo) => notes.push(
                "Flink SQL joins a stream to a static table only through a lookup source, which files are not, and a regular join drops the event-time attribute: the window is assigned before the join and counted after it by its start (an updating aggregation whose final values are compared)",
            ),
            (PeerKind::Flink, Query::Windowed | Query::Q5) => notes.push(CLOSED_WINDOWS),
            (PeerKind::Flink, Query::Q7) => notes.push(
                "window_end is not a time attribute after Flink's window aggregation, so it runs q7's join as a regular join, whose state no watermark evicts; and as for the windows, its checksum counts only the rows of windows the final watermark closes",
            ),
            (PeerKind::Spark, Query::Q5 | Query::Q7) => notes.push(
                "Spark joins on window_time(window), its event-time column after a windowed aggregation, so that its watermark bounds the join's state; window_end gives the exact condition",
            ),
            (PeerKind::Spark, Query::Yahoo) => notes.push(
                "Spark pushes the view filter into its JSON reader, so its progress counts only views; rows per second counts every row it read, as for the others",
            ),
            _ => {}
        }
        notes
    }

    fn unsupported(&self, query: Query) -> Option<&'static str> {
        match (self.kind, query) {
            (PeerKind::Flink, Query::BatchCount) => Some(
                "Flink has no micro-batches: a count per batch has no Flink equivalent (a processing-time window groups by arrival, not by input)",
            ),
            _ => None,
        }
    }

    fn run(&self, w: &Workload, data: &Dataset, scratch: &Path) -> anyhow::Result<Run> {
        let mut run = self.launch(&self.spec(w, data, scratch, false)?)?;
        if self.kind == PeerKind::Spark {
            // Spark counts the rows its scans pass on: fewer than it read when a filter is
            // pushed into its JSON reader, more when a query scans `src` twice (q5, q7). That
            // every batch ran shows it read them all.
            let batches = w.files.div_ceil(FILES_PER_BATCH);
            if run.batches != batches || run.rows == 0 {
                bail!(
                    "spark ran {} of {batches} batches, passing {} of {} rows",
                    run.batches,
                    run.rows,
                    data.rows
                );
            }
            run.rows = data.rows;
        }
        Ok(run)
    }

    fn check(&self, w: &Workload, data: &Dataset, scratch: &Path) -> anyhow::Result<Checksum> {
        let spec = self.spec(w, data, scratch, true)?;
        self.launch(&spec)?;
        let out = PathBuf::from(spec["check_out"].as_str().unwrap_or_default());
        if self.kind == PeerKind::Flink {
            let path = out.join("checksum.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            return Ok(Checksum::from_json(&serde_json::from_str(&text)?));
        }
        checksum::read_batches(&out, w.query.checksum())
    }

    fn latency_floor(&self, scratch: &Path) -> anyhow::Result<Vec<u64>> {
        use crate::bench::{SMALL_BATCHES, SMALL_ROWS_PER_BATCH, SMALL_TRIGGER_MS, SMALL_WARM_UP};
        if self.kind == PeerKind::Flink {
            bail!(
                "Flink has no batches: a row is out once the operators pass it, and durable (for an exactly-once sink) at the next checkpoint, so its floor is the checkpoint interval"
            );
        }
        let spec = json!({
            "workload": "latency",
            "rows_per_second": SMALL_ROWS_PER_BATCH * 1000 / SMALL_TRIGGER_MS,
            "trigger_ms": SMALL_TRIGGER_MS,
            "warm_up": SMALL_WARM_UP,
            "batches": SMALL_BATCHES,
            "partitions": PARTITIONS,
            "checkpoint": scratch.join(format!("{}-latency-{}", self.name(), now_nanos())),
        });
        Ok(self.launch(&spec)?.batch_ms)
    }

    fn restart(
        &self,
        case: &Case,
        data: &Dataset,
        scratch: &Path,
    ) -> anyhow::Result<Vec<Recovery>> {
        recovery::peer(self, case, data, scratch)
    }

    fn executor_kill(
        &self,
        case: &Case,
        data: &Dataset,
        scratch: &Path,
    ) -> anyhow::Result<Vec<Recovery>> {
        recovery::peer_executor_kill(self, case, data, scratch)
    }
}

/// The watermark after the last of `rows` events at `rate` per second, as a SQL timestamp:
/// the windows ending by then are the ones Sluice and Spark emit.
fn final_watermark(rows: u64, rate: u64) -> String {
    let last_ms = rows.saturating_sub(1) * 1000 / rate;
    let watermark = last_ms.saturating_sub(super::queries::WATERMARK_DELAY_MS);
    super::data::event_time(watermark).replace('T', " ")
}

/// The line of a JVM or Python error output that says what went wrong: the innermost
/// "Caused by", else the last line.
fn cause(errors: &str) -> String {
    let lines = || errors.lines().map(str::trim).filter(|l| !l.is_empty());
    lines()
        .rev()
        .find(|l| l.starts_with("Caused by:"))
        .or_else(|| lines().next_back())
        .unwrap_or("no error output")
        .to_string()
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_final_watermark_trails_the_last_event_by_the_delay() {
        // 4M events at 10,000 per second end at 399.9999 s: the watermark is 394.999 s, which
        // closes [380, 390) but not [390, 400).
        assert_eq!(
            super::final_watermark(4_000_000, 10_000),
            "2026-11-01 00:06:34.999"
        );
    }

    #[test]
    fn the_innermost_cause_names_the_error() {
        let jvm =
            "Traceback\n  at x\nCaused by: A\n  at y\nCaused by: ParseException: bad\n  at z\n";
        assert_eq!(super::cause(jvm), "Caused by: ParseException: bad");
        assert_eq!(super::cause("ValueError: no\n\n"), "ValueError: no");
    }
}
