//! Recovery, from a SIGKILL to the next commit, while a running count by key holds its state.
//! Restart: the engine's coordinator killed once the input is committed (1K or 1.5M keys), a
//! new input file written and the engine started again; measured to the first commit holding
//! the new rows. Executor kill: one executor (Flink: task manager) killed while a batch runs
//! over 1.5M keys; measured to the commit of that batch (Flink: the next checkpoint).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sluice_cluster_tests::Cluster;

use super::data::{self, Dataset};
use super::engines::{Engine, FILES_PER_BATCH, PARTITIONS, Peer, PeerKind};
use super::queries::Input;

/// The state a restart finds: keys, and the rows and files that build it.
pub struct Case {
    pub id: &'static str,
    pub keys: u64,
    pub rows: u64,
    pub files: u64,
}

pub const CASES: [Case; 2] = [
    Case {
        id: "restart_1k",
        keys: 1_000,
        rows: 400_000,
        files: 4,
    },
    Case {
        id: "restart_1_5m",
        keys: 1_500_000,
        rows: 3_000_000,
        files: 12,
    },
];

impl Case {
    pub fn dataset(&self, root: &Path) -> anyhow::Result<Dataset> {
        let input = Input::Events { keys: self.keys };
        Dataset::ensure(root, input, self.rows, self.files)
    }
}

/// Rows in the file written after the kill.
pub const NEW_ROWS: u64 = 1_000;

/// One restart: what was killed, and the time from the kill to the next commit.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub killed: &'static str,
    pub kill_to_commit_ms: u64,
}

/// The case's files copied into `dir`, keeping their modification times (Spark orders by them).
fn fresh_input(data: &Dataset, dir: &Path) -> anyhow::Result<PathBuf> {
    let input = dir.join("input");
    std::fs::create_dir_all(&input)?;
    for entry in std::fs::read_dir(&data.dir)? {
        let entry = entry?;
        let to = input.join(entry.file_name());
        std::fs::copy(entry.path(), &to)?;
        let modified = entry.metadata()?.modified()?;
        std::fs::File::options()
            .write(true)
            .open(&to)?
            .set_modified(modified)?;
    }
    Ok(input)
}

/// The file written after the kill: the next `NEW_ROWS` rows, named and dated after the
/// others, written beside the input and renamed into it so no engine sees half of it.
fn write_new_file(input: &Path, case: &Case) -> anyhow::Result<()> {
    let rows: String = (case.rows..case.rows + NEW_ROWS)
        .map(|i| data::event_line(i, case.keys) + "\n")
        .collect();
    let staged = input.with_file_name("new-part.jsonl");
    std::fs::write(&staged, rows)?;
    Ok(std::fs::rename(staged, input.join("part-99999.jsonl"))?)
}

/// Sluice's running count over the files in `input`, a trigger every 100 ms.
fn running_count_sql(input: &Path, files_per_batch: u64) -> String {
    format!(
        "SET 'trigger' = '100ms';
SET 'partitions' = '{PARTITIONS}';
CREATE TABLE src (key BIGINT, page TEXT, amount BIGINT)
  WITH (connector = 'files', path = '{}', format = 'jsonl', max_files_per_batch = '{files_per_batch}');
CREATE TABLE sink WITH (connector = 'blackhole');
INSERT INTO sink SELECT key, count(*) AS n, sum(amount) AS total FROM src GROUP BY key;
",
        input.display()
    )
}

/// Sluice twice: the driver killed alone (executors keep their state), then the driver and
/// both executors (new executors restore the state from the checkpoint). The commit time is
/// the driver's own, of the first batch after the restart that read rows.
pub fn sluice(
    bins: &Path,
    case: &Case,
    data: &Dataset,
    scratch: &Path,
) -> anyhow::Result<Vec<Recovery>> {
    let mut out = Vec::new();
    for (killed, executors) in [("driver", false), ("driver and both executors", true)] {
        let input = fresh_input(data, &scratch.join(killed.replace(' ', "-")))?;
        let sql = running_count_sql(&input, FILES_PER_BATCH);
        let mut c = Cluster::start_with(Cluster::with_bins(bins.to_path_buf()), 2);
        let id = c.submit(&sql)?;
        c.wait_until(&id, Duration::from_secs(600), |s| {
            s["rows_in"].as_u64() >= Some(case.rows)
        });
        let killed_at = crate::bench::now_ms();
        c.kill_driver();
        if executors {
            c.kill_executor(0);
            c.kill_executor(1);
        }
        write_new_file(&input, case)?;
        c.start_driver();
        if executors {
            c.add_executor();
            c.add_executor();
        }
        // The new driver's batches (its totals carry on from the checkpoint).
        let first_with_rows = |s: &Value| {
            (crate::bench::batches_of(s).iter())
                .find(|b| b["rows_in"].as_u64() > Some(0))
                .and_then(|b| b["committed_at_ms"].as_u64())
        };
        let status = c.wait_until(&id, Duration::from_secs(120), |s| {
            first_with_rows(s).is_some()
        });
        let committed = first_with_rows(&status).context("no batch with rows")?;
        let rows = status["rows_in"].as_u64().unwrap_or(0);
        if rows != case.rows + NEW_ROWS {
            bail!("Sluice read {rows} rows, not {}", case.rows + NEW_ROWS);
        }
        out.push(Recovery {
            killed,
            kill_to_commit_ms: committed.saturating_sub(killed_at),
        });
    }
    Ok(out)
}

/// Spark or Flink: the script in its restart mode until it reports the state committed; then
/// its whole process group (Python and the JVM: driver, or mini-cluster) SIGKILLed, the new
/// file written and the script started again on the same checkpoint, until it reports the
/// commit that holds the new rows.
pub fn peer(
    p: &Peer,
    case: &Case,
    data: &Dataset,
    scratch: &Path,
) -> anyhow::Result<Vec<Recovery>> {
    let input = fresh_input(data, scratch)?;
    let mut spec = json!({
        "workload": "restart",
        "input_kind": "events",
        "input": input,
        "files_per_batch": FILES_PER_BATCH,
        "partitions": PARTITIONS,
        "checkpoint": scratch.join("checkpoint"),
        "large_state": case.keys >= super::engines::LARGE_STATE_KEYS,
        "rest_port": free_port()?,
        "wait_rows": case.rows,
    });
    let mut first = Script::start(p, &spec)?;
    first.committed(Duration::from_secs(600))?;
    let started = Instant::now();
    first.kill();
    write_new_file(&input, case)?;
    spec["wait_rows"] = json!(NEW_ROWS);
    let mut second = Script::start(p, &spec)?;
    let rows = second.committed(Duration::from_secs(300));
    let kill_to_commit_ms = started.elapsed().as_millis() as u64;
    second.kill();
    let rows = rows?;
    if rows != NEW_ROWS {
        bail!(
            "{} read {rows} rows after the restart, not the {NEW_ROWS} new ones",
            p.name()
        );
    }
    let killed = match p.kind {
        PeerKind::Spark => "driver (local[2]: the driver runs the tasks too)",
        PeerKind::Flink => "mini-cluster (job manager and task manager in one JVM)",
    };
    Ok(vec![Recovery {
        killed,
        kill_to_commit_ms,
    }])
}

/// Sluice: the running count one file per batch on a driver and two executors; executor 0
/// SIGKILLed once the fifth batch's first stage has started; the time to that batch's commit
/// (the driver's clock).
pub fn sluice_executor_kill(
    bins: &Path,
    case: &Case,
    data: &Dataset,
    _scratch: &Path,
) -> anyhow::Result<Vec<Recovery>> {
    let sql = running_count_sql(&data.dir, 1);
    let mut c = Cluster::start_with(Cluster::with_bins(bins.to_path_buf()), 2);
    let id = c.submit(&sql)?;
    let hit = 5;
    c.wait_for_log(
        "driver.log",
        &["stage started", &format!("batch={hit} "), "stage=0 "],
        1,
        Duration::from_secs(300),
    );
    let killed_at = crate::bench::now_ms();
    c.kill_executor(0);
    let status = c.wait_until(&id, Duration::from_secs(300), |s| {
        s["rows_in"].as_u64() >= Some(case.rows)
    });
    let committed = (crate::bench::batches_of(&status).iter())
        .find(|b| b["batch_id"].as_u64() == Some(hit))
        .and_then(|b| b["committed_at_ms"].as_u64())
        .context("the batch the kill hit did not commit")?;
    if status["rows_in"].as_u64() != Some(case.rows) {
        bail!("Sluice read {} rows, not {}", status["rows_in"], case.rows);
    }
    Ok(vec![Recovery {
        killed: "one of two executors",
        kill_to_commit_ms: committed.saturating_sub(killed_at),
    }])
}

/// Spark or Flink: the script's executor-kill mode, which kills one of its own executors (or
/// task managers) and reports the time to the next commit.
pub fn peer_executor_kill(
    p: &Peer,
    case: &Case,
    data: &Dataset,
    scratch: &Path,
) -> anyhow::Result<Vec<Recovery>> {
    let spec = json!({
        "workload": "executor_kill",
        "input_kind": "events",
        "input": data.dir,
        "files_per_batch": 1,
        "partitions": PARTITIONS,
        "checkpoint": scratch.join("checkpoint"),
        "large_state": case.keys >= super::engines::LARGE_STATE_KEYS,
        "rest_port": free_port()?,
        "kill_after": 4,
        "kill_delay_ms": 300,
        "kill_at_rows": case.rows / 3,
    });
    let mut script = Script::start(p, &spec)?;
    let result = script.result(Duration::from_secs(600))?;
    let ms = result["kill_to_commit_ms"].as_u64();
    let ms = ms.with_context(|| format!("{} reported {result}", p.name()))?;
    let killed = match p.kind {
        PeerKind::Spark => "one of two executors (local-cluster)",
        PeerKind::Flink => "one of two task managers (standalone)",
    };
    Ok(vec![Recovery {
        killed,
        kill_to_commit_ms: ms,
    }])
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A peer script in its own process group; its stdout lines arrive on a channel.
struct Script {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Script {
    fn start(p: &Peer, spec: &Value) -> anyhow::Result<Script> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(&p.python)
            .arg(&p.script)
            .arg(spec.to_string())
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", p.python.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Script { child, lines })
    }

    /// The rows of the script's "COMMITTED <rows>" line.
    fn committed(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let line = self.line_starting("COMMITTED ", timeout)?;
        Ok(line.trim_start_matches("COMMITTED ").trim().parse()?)
    }

    /// The script's JSON result line.
    fn result(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&self.line_starting("{", timeout)?)?)
    }

    fn line_starting(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("no {prefix:?} line within {timeout:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the script exited before its {prefix:?} line")
                }
            }
        }
    }

    fn kill(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One case's restarts: each engine's times by what was killed, and the engines left out.
pub struct Outcome {
    pub kind: Kind,
    pub case: &'static Case,
    pub ms: BTreeMap<(&'static str, &'static str), Vec<u64>>,
    pub skipped: Vec<(&'static str, String)>,
}

/// Which recovery a measurement is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Restart,
    ExecutorKill,
}

/// The executor kill's state: the 1.5M-key case, read one file per batch.
pub const EXECUTOR_KILL: Case = Case {
    id: "executor_kill_1_5m",
    keys: 1_500_000,
    rows: 3_000_000,
    files: 12,
};

/// Each recovery on every engine, `runs` times each in alternating order. A peer that fails
/// is reported and left out; Sluice failing fails the comparison.
pub fn measure(
    root: &Path,
    engines: &[Box<dyn Engine>],
    runs: usize,
    kinds: &[Kind],
) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for &kind in kinds {
        let cases: &[Case] = match kind {
            Kind::Restart => &CASES,
            Kind::ExecutorKill => std::slice::from_ref(&EXECUTOR_KILL),
        };
        for case in cases {
            outcomes.push(measure_case(root, engines, runs, kind, case)?);
        }
    }
    Ok(outcomes)
}

fn measure_case(
    root: &Path,
    engines: &[Box<dyn Engine>],
    runs: usize,
    kind: Kind,
    case: &'static Case,
) -> anyhow::Result<Outcome> {
    let data = case.dataset(&root.join("target/bench-data"))?;
    let mut out = Outcome {
        kind,
        case,
        ms: BTreeMap::new(),
        skipped: Vec::new(),
    };
    for run in 0..runs {
        for i in 0..engines.len() {
            let e = engines[(i + run) % engines.len()].as_ref();
            if out.skipped.iter().any(|(name, _)| *name == e.name()) {
                continue;
            }
            eprintln!("==> {}: {} run {}", case.id, e.name(), run + 1);
            let scratch = tempfile::tempdir()?;
            let recoveries = match kind {
                Kind::Restart => e.restart(case, &data, scratch.path()),
                Kind::ExecutorKill => e.executor_kill(case, &data, scratch.path()),
            };
            match recoveries {
                Ok(recoveries) => {
                    for r in recoveries {
                        eprintln!(
                            "    {} killed: {} ms to the next commit",
                            r.killed, r.kill_to_commit_ms
                        );
                        (out.ms.entry((e.name(), r.killed)).or_default()).push(r.kill_to_commit_ms);
                    }
                }
                Err(err) if e.name() != "sluice" => {
                    out.skipped.push((e.name(), format!("{err:#}")))
                }
                Err(err) => return Err(err),
            }
        }
    }
    Ok(out)
}

fn median_ms(ms: &[u64]) -> u64 {
    super::median(ms.iter().map(|&m| m as f64).collect()) as u64
}

const RESTART_TEXT: &str = "\n## restart: the coordinator killed, to the next commit\n\nA running count and sum by key (update mode) over the case's rows; once all of them are committed, the coordinator is SIGKILLed, a file of 1000 new rows is written and the engine is started again on its checkpoint. Measured from the kill to the first commit holding the new rows: Sluice's commit entry of the first batch with rows (its driver's clock); Spark's commit log entry for the batch that read them (its progress event); Flink's first checkpoint completed after its source read them (what an exactly-once sink commits on). Every engine watches the input directory (Sluice and Spark with a 100 ms trigger, Flink's file source with a 100 ms monitor interval) and checkpoints as in the workloads above. The peers run in local mode, so their coordinator is their whole runtime: a standalone cluster's job manager failover would need an HA service (ZooKeeper or Kubernetes) not set up here. Medians of the runs.\n\nHow each recovers: Sluice's new driver reads the newest offsets entry and its commit; executors that lived keep their state partitions in memory, new ones restore them from the latest snapshot and the deltas after it. Spark starts a new JVM and session, reads its offsets and commit logs, and each state partition's task loads the latest state version. Flink starts a new JVM and mini-cluster and restores every operator's state from the newest completed checkpoint (`execution.state-recovery.path`) before it reads on.\n\n| state | engine | killed | kill → next commit (ms) | runs |\n|---|---|---|---:|---:|";

const EXECUTOR_KILL_TEXT: &str = "\n## executor_kill: an executor or task manager killed, to the next commit\n\nThe running count over 1.5M keys (3M rows in 12 files, one file per batch), each engine on processes of its own: Sluice's driver and two executors; Spark's local-cluster mode (a master, a worker and two executor JVMs of one core each); Flink's standalone session cluster (a job manager and two task managers of two slots each, the job's subtasks spread over both, heartbeats and restart strategy at their defaults). One executor is SIGKILLed while the fifth batch runs (Sluice: once its first stage has started; Spark: 300 ms after the fourth batch's progress), or for Flink once its source has read 1M rows. Measured from the kill to the commit of the batch it hit (Flink: its next completed checkpoint). Medians of the runs.\n\nHow each recovers: Sluice's driver sees the executor's stream end, reruns its lost tasks (and the map outputs they need, from lineage) on the executor left, which restores the lost state partitions from the checkpoint; the batch then commits once. Spark's driver hears from the worker that the executor exited, resubmits the lost tasks and the stages whose shuffle output died with it, and the worker starts a replacement executor. Flink fails the job over: every task is cancelled and the job restarts from its latest completed checkpoint on the slots left, re-reading what came after it.\n\n| state | engine | killed | kill → next commit (ms) | runs |\n|---|---|---|---:|---:|";

pub fn markdown(md: &mut String, outcomes: &[Outcome]) {
    for (kind, text) in [
        (Kind::Restart, RESTART_TEXT),
        (Kind::ExecutorKill, EXECUTOR_KILL_TEXT),
    ] {
        let of_kind: Vec<&Outcome> = outcomes.iter().filter(|o| o.kind == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        md.push_str(text);
        md.push('\n');
        for o in of_kind {
            table_rows(md, o);
        }
    }
}

fn table_rows(md: &mut String, o: &Outcome) {
    let state = format!("{} keys ({} rows)", o.case.keys, o.case.rows);
    for ((engine, killed), ms) in &o.ms {
        let _ = writeln!(
            md,
            "| {state} | {engine} | {killed} | {} | {} |",
            median_ms(ms),
            ms.len()
        );
    }
    for (engine, why) in &o.skipped {
        let _ = writeln!(md, "| {state} | {engine} | not run: {why} | - | 0 |");
    }
}

pub fn to_json(outcomes: &[Outcome]) -> Value {
    Value::Array(
        outcomes
            .iter()
            .map(|o| {
                json!({
                    "id": o.case.id,
                    "kind": match o.kind { Kind::Restart => "restart", Kind::ExecutorKill => "executor_kill" },
                    "keys": o.case.keys,
                    "rows": o.case.rows,
                    "new_rows": NEW_ROWS,
                    "engines": o.ms.iter().map(|((engine, killed), ms)| json!({
                        "engine": engine,
                        "killed": killed,
                        "kill_to_commit_ms": median_ms(ms),
                        "runs_ms": ms,
                    })).collect::<Vec<_>>(),
                    "skipped": o.skipped.iter().map(|(e, why)| json!({"engine": e, "why": why})).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_recovery_table_has_its_rule_and_medians() {
        let outcome = |kind, case, killed, ms: Vec<u64>| Outcome {
            kind,
            case,
            ms: BTreeMap::from([(("sluice", killed), ms)]),
            skipped: vec![("spark", "no JVM".into())],
        };
        let outcomes = vec![
            outcome(Kind::Restart, &CASES[0], "driver", vec![3, 1, 2]),
            outcome(Kind::ExecutorKill, &EXECUTOR_KILL, "one", vec![5]),
        ];
        let mut md = String::new();
        markdown(&mut md, &outcomes);
        let lines: Vec<&str> = md.lines().collect();
        let headers: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].starts_with("| state "))
            .collect();
        assert_eq!(headers.len(), 2, "{md}");
        assert!(
            headers.iter().all(|&i| lines[i + 1].starts_with("|---")),
            "{md}"
        );
        assert!(
            md.contains("| 1000 keys (400000 rows) | sluice | driver | 2 | 3 |"),
            "{md}"
        );
        assert!(md.contains("| spark | not run: no JVM | - | 0 |"), "{md}");
    }

    #[test]
    fn the_new_file_continues_the_rows_after_the_copied_input() {
        let root = tempfile::tempdir().unwrap();
        let case = Case {
            id: "t",
            keys: 7,
            rows: 20,
            files: 2,
        };
        let data = case.dataset(root.path()).unwrap();
        let input = fresh_input(&data, &root.path().join("run")).unwrap();
        let modified = |p: PathBuf| std::fs::metadata(p).unwrap().modified().unwrap();
        for name in ["part-00000.jsonl", "part-00001.jsonl"] {
            assert_eq!(modified(input.join(name)), modified(data.dir.join(name)));
        }
        write_new_file(&input, &case).unwrap();
        let mut names: Vec<String> = (std::fs::read_dir(&input).unwrap())
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.last().map(String::as_str), Some("part-99999.jsonl"));
        let new = std::fs::read_to_string(input.join("part-99999.jsonl")).unwrap();
        assert_eq!(new.lines().count() as u64, NEW_ROWS);
        assert_eq!(new.lines().next(), Some(data::event_line(20, 7).as_str()));
        assert!(!input.with_file_name("new-part.jsonl").exists());
    }
}
