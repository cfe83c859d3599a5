//! A small harness for multi-process tests: it starts the real `sluice-driver`,
//! `sluice-executor` and `sluice` binaries on loopback ports, kills them for real, and makes sure
//! every child is gone when the test ends, pass or fail.
//!
//! The binaries come from the same target directory as the test (`cargo xtask ci` builds them
//! first; by hand: `cargo build --bins && cargo test -p sluice-cluster-tests`).

pub mod chaos;

use anyhow::{Context, bail};
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// target/<profile>/, where cargo puts the binaries next to the test's deps/ directory.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for bin in ["sluice", "sluice-driver", "sluice-executor"] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: run `cargo build --bins` first (cargo xtask ci does)",
            dir.join(bin).display()
        );
    }
    dir
}

/// A port nobody listens on, below Linux's ephemeral range (32768 and up): a port the kernel
/// handed out as ephemeral could be handed out again, to an executor's listener or an outgoing
/// connection, before the driver binds it (a driver restarted on its port did hit that). Ports
/// are walked from a per-process start so that two calls, or two test processes, differ.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

/// A child that dies with the test process, even when the test runner is killed.
fn spawn(bin: &Path, args: &[String], log: &Path, env: &[(&str, &str)]) -> Child {
    spawn_in(bin, args, log, env, None)
}

/// Like `spawn`, in the working directory `cwd`.
fn spawn_in(
    bin: &Path,
    args: &[String],
    log: &Path,
    env: &[(&str, &str)],
    cwd: Option<&Path>,
) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    let mut cmd = Command::new(bin);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    // SLUICE_TEST_LOG raises the children's log level when a failure needs more evidence.
    let level = std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".into());
    cmd.args(args)
        .env("SLUICE_LOG", level)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

/// SIGTERM, then waits up to `timeout` for the process to exit (SIGKILL and panic if not).
pub fn terminate(mut child: Child, timeout: Duration) -> ExitStatus {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!(
        "process {} did not exit within {timeout:?} of SIGTERM",
        child.id()
    );
}

/// GET `path` from an HTTP endpoint on loopback: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let r = http(addr, "GET", path, &[], "");
    (r.code, r.body)
}

/// An HTTP response: its status code, header lines and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub code: u16,
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

/// One HTTP/1.1 request to a loopback endpoint, with extra headers and a form body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    form: &str,
) -> HttpResponse {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            form.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(form);
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    HttpResponse {
        code,
        head: head.to_string(),
        body: body.to_string(),
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Extra flags for the driver (set before `start_driver`).
    pub driver_args: Vec<String>,
    /// The driver's --state (default: a directory in the cluster's temporary dir).
    pub state: Option<String>,
    /// Environment of every process the cluster starts (e.g. an S3 endpoint).
    pub env: Vec<(String, String)>,
    /// "https" when the cluster's processes serve TLS.
    pub scheme: &'static str,
    bins: PathBuf,
    driver: Option<Child>,
    executors: Vec<Option<Child>>,
    /// Other processes a test started (a second driver, ...), killed with the cluster.
    extra: Vec<Child>,
}

impl Cluster {
    /// An empty cluster in a fresh temporary directory (nothing started yet).
    pub fn new() -> Cluster {
        Cluster::with_bins(bin_dir())
    }

    /// Like [`Cluster::new`], with the binaries from `bins` (e.g. target/release).
    pub fn with_bins(bins: PathBuf) -> Cluster {
        Cluster {
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            driver_args: Vec::new(),
            state: None,
            env: Vec::new(),
            scheme: "http",
            bins,
            driver: None,
            executors: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// A driver and `executors` executors, ready to take jobs.
    pub fn start(executors: usize) -> Cluster {
        Cluster::start_with(Cluster::new(), executors)
    }

    /// Starts a driver and `executors` executors in `c`.
    pub fn start_with(mut c: Cluster, executors: usize) -> Cluster {
        c.start_driver();
        for _ in 0..executors {
            c.add_executor();
        }
        c.wait_for_driver();
        c
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn start_driver(&mut self) {
        let mut args = vec![
            "--listen".into(),
            format!("127.0.0.1:{}", self.port),
            "--state".into(),
            self.state_uri(),
        ];
        args.extend(self.driver_args.iter().cloned());
        let log = self.path("driver.log");
        self.driver = Some(spawn(
            &self.bins.join("sluice-driver"),
            &args,
            &log,
            &self.env_refs(),
        ));
    }

    /// Starts one more executor; returns its index.
    pub fn add_executor(&mut self) -> usize {
        self.add_executor_with_env(&[])
    }

    /// Starts one more executor with extra environment variables; returns its index.
    pub fn add_executor_with_env(&mut self, env: &[(&str, &str)]) -> usize {
        let i = self.executors.len();
        let args = vec![
            "--driver".into(),
            self.url(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--slots".into(),
            "2".into(),
        ];
        let log = self.path(&format!("executor-{i}.log"));
        // The executor's own variables win over the cluster's.
        let mut all = self.env_refs();
        all.extend(env.iter().copied());
        let env = all.as_slice();
        self.executors.push(Some(spawn(
            &self.bins.join("sluice-executor"),
            &args,
            &log,
            env,
        )));
        i
    }

    /// Sends a signal (SIGSTOP, SIGCONT, ...) to executor `i`.
    pub fn signal_executor(&self, i: usize, signal: i32) {
        if let Some(c) = &self.executors[i] {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }

    /// Waits until the log file `name` has `count` lines containing every one of `needles`.
    pub fn wait_for_log(&self, name: &str, needles: &[&str], count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let log = self.log(name);
            let n = log
                .lines()
                .filter(|l| needles.iter().all(|n| l.contains(n)))
                .count();
            if n >= count {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{name} never had {count} lines with {needles:?}:\n{}",
            self.log(name)
        );
    }

    pub fn state_uri(&self) -> String {
        self.state
            .clone()
            .unwrap_or_else(|| self.path("state").display().to_string())
    }

    fn env_refs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Starts another process of one of the binaries, logging to `log` in the cluster's dir.
    pub fn spawn_extra(&mut self, bin: &str, args: &[String], log: &str) {
        let child = spawn(
            &self.bins.join(bin),
            args,
            &self.path(log),
            &self.env_refs(),
        );
        self.extra.push(child);
    }

    /// Runs the CLI against another driver.
    pub fn sluice_at(&self, driver: &str, args: &[&str]) -> Output {
        Command::new(self.bins.join("sluice"))
            .args(args)
            .arg("--driver")
            .arg(driver)
            .envs(self.env_refs())
            .output()
            .expect("run sluice")
    }

    /// Waits until the job's loop pauses at `step` of `batch` (`sluice.test.pause_at`), then
    /// SIGKILLs the driver and executor `executor`, adds a fresh executor and starts the driver
    /// again on the same state.
    pub fn crash_driver_at(&mut self, step: &str, batch: u64, executor: usize) {
        let step = format!("step=\"{step}\"");
        let batch = format!("batch={batch}");
        self.wait_for_log(
            "driver.log",
            &["test pause", &step, &batch],
            1,
            Duration::from_secs(120),
        );
        self.kill_driver();
        self.kill_executor(executor);
        self.add_executor();
        self.start_driver();
        self.wait_for_driver();
    }

    /// SIGKILLs the driver (restart it with `start_driver`).
    pub fn kill_driver(&mut self) {
        if let Some(mut c) = self.driver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Keep the dead driver's log for the test's messages.
        let log = self.path("driver.log");
        let mut n = 1;
        while self.path(&format!("driver.{n}.log")).exists() {
            n += 1;
        }
        let _ = std::fs::rename(&log, self.path(&format!("driver.{n}.log")));
    }

    /// Waits for the driver to exit by itself; its exit status (its log is kept as driver.N.log,
    /// like after `kill_driver`).
    pub fn wait_for_driver_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.driver.take().expect("driver running");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the driver did not exit:\n{}", self.log("driver.log"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.kill_driver();
        status
    }

    /// SIGTERMs executor `i` and waits for it to exit; its exit status.
    pub fn terminate_executor(&mut self, i: usize, timeout: Duration) -> ExitStatus {
        let child = self.executors[i].take().expect("executor running");
        terminate(child, timeout)
    }

    /// SIGTERMs the driver and waits for it to exit; its exit status. Its log is kept as
    /// driver.N.log, like after `kill_driver`.
    pub fn terminate_driver(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.driver.take().expect("driver running");
        let status = terminate(child, timeout);
        self.kill_driver();
        status
    }

    pub fn kill_executor(&mut self, i: usize) {
        if let Some(mut c) = self.executors[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn wait_for_driver(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.sluice(&["jobs"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("driver did not come up; log:\n{}", self.log("driver.log"));
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// Runs the CLI against this cluster's driver.
    pub fn sluice(&self, args: &[&str]) -> Output {
        self.sluice_at(&self.url(), args)
    }

    /// Writes `sql` to a file and submits it; returns the job id.
    pub fn submit(&self, sql: &str) -> anyhow::Result<String> {
        self.submit_with(sql, &[])
    }

    /// Like `submit`, with more arguments for `sluice submit` (e.g. `--resume JOB`).
    pub fn submit_with(&self, sql: &str, args: &[&str]) -> anyhow::Result<String> {
        let file = self.path(&format!("job-{}.sql", free_port()));
        std::fs::write(&file, sql)?;
        let mut argv = vec!["submit", file.to_str().unwrap()];
        argv.extend_from_slice(args);
        let out = self.sluice(&argv);
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    pub fn status(&self, job: &str) -> anyhow::Result<Value> {
        let out = self.sluice(&["status", job, "--json"]);
        if !out.status.success() {
            bail!("status: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).context("status json")
    }

    /// Batch `batch` of the job as the driver's model shows it (`sluice status --batch`).
    pub fn batch(&self, job: &str, batch: u64) -> anyhow::Result<Value> {
        let out = self.sluice(&["status", job, "--batch", &batch.to_string(), "--json"]);
        if !out.status.success() {
            bail!("status --batch: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).context("batch json")
    }

    /// The executors and their history as the driver's model shows them.
    pub fn executors(&self) -> anyhow::Result<Value> {
        let out = self.sluice(&["executors", "--json"]);
        if !out.status.success() {
            bail!("executors: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).context("executors json")
    }

    /// Polls the executors' model until `check` holds; returns it.
    pub fn wait_for_executors(&self, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(e) = self.executors() {
                if check(&e) {
                    return e;
                }
                last = e;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "executors never got there; last {last}\ndriver log:\n{}",
            self.log("driver.log")
        );
    }

    /// Waits until this driver has registered `n` executors (counting ones since lost).
    pub fn wait_for_registrations(&self, n: usize) {
        self.wait_for_executors(Duration::from_secs(120), |e| {
            events(e, "registered").len() >= n
        });
    }

    /// Waits until batch `batch` of the job runs a task of stage `stage`.
    pub fn wait_for_running_stage(&self, job: &str, batch: u64, stage: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(b) = self.batch(job, batch)
                && attempts(&b)
                    .iter()
                    .any(|(s, _, a)| *s == stage && a["outcome"] == "running")
            {
                return b;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "batch {batch} of job {job} never ran stage {stage}; driver log:\n{}",
            self.log("driver.log")
        );
    }

    /// Polls until the job is in one of `states`; fails with the driver log otherwise.
    pub fn wait_for(&self, job: &str, states: &[&str], timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(s) = self.status(job) {
                if states.contains(&s["state"].as_str().unwrap_or_default()) {
                    return s;
                }
                last = s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "job {job} not in {states:?} after {timeout:?}; last status {last}\ndriver log:\n{}\n{}",
            self.log("driver.log"),
            self.executor_log_tails(40)
        );
    }

    /// The last `lines` lines of every executor's log, for a failure message.
    pub fn executor_log_tails(&self, lines: usize) -> String {
        (0..self.executors.len())
            .map(|i| {
                let log = self.log(&format!("executor-{i}.log"));
                let all: Vec<&str> = log.lines().collect();
                let tail = all[all.len().saturating_sub(lines)..].join("\n");
                format!("executor {i} log (last {lines} lines):\n{tail}\n")
            })
            .collect()
    }

    /// Polls until `check` holds on the job's status.
    pub fn wait_until(
        &self,
        job: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(s) = self.status(job)
                && check(&s)
            {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "condition not met for job {job}; driver log:\n{}",
            self.log("driver.log")
        );
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self
            .executors
            .iter_mut()
            .chain(std::iter::once(&mut self.driver))
        {
            if let Some(mut child) = c.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for child in &mut self.extra {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Submits `sql`, waits for the job to end, and asserts that it finished; returns its status.
/// Writes one input file per batch under `dir`: file i holds a row per entry of `files[i]`,
/// `{"user_id": s, "ts": "2025-01-01T00:MM:SS"}` for s seconds after midnight, renamed into place
/// so the files source only sees complete files.
pub fn write_event_files(dir: &Path, files: &[&[i64]]) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, secs) in files.iter().enumerate() {
        let text: String = secs
            .iter()
            .map(|s| {
                let (m, s2) = (s / 60, s % 60);
                format!("{{\"user_id\": {s}, \"ts\": \"2025-01-01T00:{m:02}:{s2:02}\"}}\n")
            })
            .collect();
        let tmp = dir.join(format!(".{i}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(format!("in-{i}.jsonl"))).unwrap();
    }
}

/// The executor ids of the model's history events of one kind (registered, draining, lost).
pub fn events(executors: &Value, change: &str) -> Vec<String> {
    executors["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["change"] == change)
        .map(|e| e["executor_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Every task attempt of a batch's model, as (stage, partition, attempt).
pub fn attempts(batch: &Value) -> Vec<(u64, u64, Value)> {
    let mut all = Vec::new();
    for s in batch["stages"].as_array().into_iter().flatten() {
        for t in s["tasks"].as_array().into_iter().flatten() {
            for a in t["attempts"].as_array().into_iter().flatten() {
                let (stage, p) = (s["stage_id"].as_u64(), t["partition"].as_u64());
                all.push((stage.unwrap_or(0), p.unwrap_or(0), a.clone()));
            }
        }
    }
    all
}

pub fn run_to_end(c: &Cluster, sql: &str) -> Value {
    let id = c.submit(sql).expect("submit");
    wait_finished(c, &id)
}

/// Waits for job `id` to end and asserts that it finished (the driver log otherwise); returns
/// its status.
pub fn wait_finished(c: &Cluster, id: &str) -> Value {
    let s = c.wait_for(id, &["finished", "failed"], Duration::from_secs(120));
    assert_eq!(
        s["state"],
        "finished",
        "{s}\ndriver log:\n{}",
        c.log("driver.log")
    );
    s
}

/// Committed rows per batch, as JSON text, order-free (for comparing two runs of a job).
pub type BatchRows = std::collections::BTreeMap<u64, std::collections::BTreeSet<String>>;

pub fn committed_rows(dir: &Path) -> BatchRows {
    committed_jsonl(dir)
        .into_iter()
        .map(|(b, rows)| (b, rows.iter().map(Value::to_string).collect()))
        .collect()
}

/// Every committed batch (a `_SUCCESS` marker) under a files-sink directory, in batch order,
/// with its part files in partition order. None when the directory cannot be read.
pub fn committed_parts(dir: &Path) -> Option<Vec<(u64, Vec<PathBuf>)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(batch) = name
            .strip_prefix("batch=")
            .and_then(|b| b.parse::<u64>().ok())
        else {
            continue;
        };
        if !e.path().join("_SUCCESS").exists() {
            continue;
        }
        let mut parts: Vec<PathBuf> = std::fs::read_dir(e.path())
            .ok()?
            .flatten()
            .map(|p| p.path())
            .filter(|p| {
                // A rerun rewriting a part stages it as `part-...#n` (object_store's local
                // put) before the rename: not a part.
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.starts_with("part-") && !name.contains('#')
            })
            .collect();
        parts.sort();
        out.push((batch, parts));
    }
    out.sort();
    Some(out)
}

/// Rows of every committed batch (a `_SUCCESS` marker) under a files-sink directory, as JSON
/// objects, keyed by batch id, with each batch's part files read in partition order.
pub fn committed_jsonl(dir: &Path) -> std::collections::BTreeMap<u64, Vec<Value>> {
    if !dir.exists() {
        return Default::default();
    }
    let batches = committed_parts(dir).expect("committed batches readable");
    batches
        .into_iter()
        .map(|(batch, parts)| {
            let rows = parts
                .iter()
                .flat_map(|p| {
                    std::fs::read_to_string(p)
                        .unwrap()
                        .lines()
                        .map(|l| serde_json::from_str::<Value>(l).expect("jsonl row"))
                        .collect::<Vec<_>>()
                })
                .collect();
            (batch, rows)
        })
        .collect()
}

/// A real S3-compatible server (moto) on a loopback port, with one bucket, stopped on drop.
/// `cargo xtask ci` installs it; elsewhere set SLUICE_MOTO_SERVER to a `moto_server` binary.
pub struct S3Server {
    child: Child,
    pub port: u16,
    pub bucket: String,
}

impl S3Server {
    /// Where the `moto_server` binary is looked for (it may not exist).
    pub fn binary() -> PathBuf {
        std::env::var_os("SLUICE_MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/sluice/moto-venv/bin/moto_server")
            })
    }

    pub fn start(bucket: &str) -> S3Server {
        let bin = S3Server::binary();
        assert!(
            bin.exists(),
            "{} is missing: `cargo xtask ci` installs it (or set SLUICE_MOTO_SERVER)",
            bin.display()
        );
        let port = free_port();
        let log = std::env::temp_dir().join(format!("sluice-moto-{port}.log"));
        let child = spawn(
            &bin,
            &[
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ],
            &log,
            &[],
        );
        let server = S3Server {
            child,
            port,
            bucket: bucket.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server
            .http("GET", "/")
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            assert!(
                Instant::now() < deadline,
                "moto did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let created = server
            .http("PUT", &format!("/{bucket}"))
            .expect("create bucket");
        assert!(
            created.starts_with("HTTP/1.1 200"),
            "create bucket: {created}"
        );
        server
    }

    /// One unsigned HTTP/1.1 request; returns the raw response.
    fn http(&self, method: &str, path: &str) -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// The AWS_* variables that point the object_store client at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "sluice-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "sluice-test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub fn uri(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Kafka-wire broker (tansu) on a loopback port with sqlite storage (correct
/// watermarks and consumer-group offsets), stopped on drop. `cargo xtask ci` installs it;
/// elsewhere set SLUICE_TANSU to a `tansu` binary.
pub struct KafkaBroker {
    child: Child,
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl KafkaBroker {
    pub fn start() -> KafkaBroker {
        let bin = std::env::var_os("SLUICE_TANSU")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/sluice/tansu/bin/tansu")
            });
        assert!(
            bin.exists(),
            "{} is missing: `cargo xtask ci` installs it (or set SLUICE_TANSU)",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = dir.path().join("tansu.log");
        let child = spawn_in(
            &bin,
            &[
                "broker".into(),
                "--listener-url".into(),
                url.clone(),
                "--advertised-listener-url".into(),
                url,
                "--storage-engine".into(),
                "sqlite://tansu.db".into(),
            ],
            &log,
            &[],
            Some(dir.path()),
        );
        let broker = KafkaBroker {
            child,
            bin,
            dir,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Deletes a topic and its records.
    pub fn delete_topic(&self, name: &str) {
        self.topic_command("delete", name, &[]);
    }

    /// Creates a topic (producing to a missing topic would hang) and waits until the broker's
    /// metadata lists every partition: a producer that looks earlier refuses the partition as
    /// unknown.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        self.topic_command("create", name, &["--partitions", &partitions.to_string()]);
        let client: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("metadata client");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listed = client
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .ok()
                .and_then(|m| m.topics().first().map(|t| t.partitions().len()));
            if listed == Some(partitions as usize) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "topic {name}: the broker lists {listed:?} of {partitions} partitions"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `tansu topic <verb> <name> --broker ... <extra>` and asserts it succeeded.
    fn topic_command(&self, verb: &str, name: &str, extra: &[&str]) {
        let out = Command::new(&self.bin)
            .args(["topic", verb, name, "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(extra)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("tansu topic {verb}: {e}"));
        assert!(
            out.status.success(),
            "topic {verb} {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Produces `(partition, key, value)` records and waits until all are acknowledged.
    pub fn produce(&self, topic: &str, records: &[(i32, String, String)]) {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        for (p, k, v) in records {
            let mut record = BaseRecord::to(topic).partition(*p).key(k).payload(v);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        r,
                    )) => {
                        record = r;
                        producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => panic!("produce to {topic}: {e}"),
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer
            .flush(Duration::from_secs(60))
            .expect("every record acknowledged");
    }

    /// Reads every record of a topic: (partition, key, value), in offset order per partition.
    pub fn consume_all(&self, topic: &str, partitions: i32) -> Vec<(i32, Option<String>, String)> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Message;
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("enable.auto.commit", "false")
            .set("group.id", "sluice-test-reader")
            .create()
            .expect("consumer");
        let mut out = Vec::new();
        for p in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            if high <= low {
                continue;
            }
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(low))
                .unwrap();
            consumer.assign(&tpl).unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut next = low;
            while next < high {
                assert!(
                    Instant::now() < deadline,
                    "reading {topic}/{p} timed out at {next}"
                );
                if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                    let m = m.expect("record");
                    next = m.offset() + 1;
                    out.push((
                        p,
                        m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    ));
                }
            }
        }
        out
    }

    /// The offsets a consumer group committed for partitions `0..partitions` of `topic`.
    pub fn group_offsets(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        (0..partitions)
            .map(
                |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(rdkafka::Offset::Offset(o)) => o,
                    _ => -1,
                },
            )
            .collect()
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One long-lived gRPC client of a driver's Jobs service: a benchmark that looks every few
/// hundred milliseconds must not start a CLI process (and a connection) for each look.
pub struct JobsWatch {
    runtime: tokio::runtime::Runtime,
    client: sluice_proto::jobs_client::JobsClient<tonic::transport::Channel>,
}

impl JobsWatch {
    /// Connects to the driver at `url` (a cluster without a token).
    pub fn connect(url: &str) -> anyhow::Result<JobsWatch> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = runtime
            .block_on(sluice_proto::jobs_client::JobsClient::connect(
                url.to_string(),
            ))
            .with_context(|| format!("connecting to {url}"))?
            // A batch of 100,000 tasks is described in about 10 MB.
            .max_decoding_message_size(64 << 20);
        Ok(JobsWatch { runtime, client })
    }

    pub fn status(&mut self, job: &str) -> anyhow::Result<sluice_proto::JobStatus> {
        let request = sluice_proto::GetRequest {
            job_id: job.to_string(),
        };
        Ok(self
            .runtime
            .block_on(self.client.get(request))?
            .into_inner())
    }

    /// Batch `batch` as the driver's model holds it (phases, tasks and their timings).
    pub fn batch(&mut self, job: &str, batch: u64) -> anyhow::Result<sluice_proto::BatchDetail> {
        let request = sluice_proto::GetBatchRequest {
            job_id: job.to_string(),
            batch_id: batch,
        };
        Ok(self
            .runtime
            .block_on(self.client.get_batch(request))?
            .into_inner())
    }
}

/// Headless Chromium, as a person's browser renders a page: Debian's `chromium`, which
/// `cargo xtask ci` installs (SLUICE_CHROMIUM names another binary). Each call is one browser
/// process with a fresh profile, bounded in time, killed with the test if it dies.
pub struct Browser {
    bin: PathBuf,
    profile: tempfile::TempDir,
}

impl Browser {
    pub fn new() -> Browser {
        let bin = std::env::var_os("SLUICE_CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        assert!(
            bin.exists(),
            "{} is missing: `cargo xtask ci` installs Debian's chromium (or set SLUICE_CHROMIUM)",
            bin.display()
        );
        Browser {
            bin,
            profile: tempfile::tempdir().expect("browser profile"),
        }
    }

    fn run(&self, args: &[String]) -> Output {
        let mut all: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ]
        .map(String::from)
        .to_vec();
        all.push(format!("--user-data-dir={}", self.profile.path().display()));
        all.extend_from_slice(args);
        let log = self.profile.path().join("chromium.log");
        let out = self.profile.path().join("stdout");
        let mut cmd = Command::new(&self.bin);
        cmd.args(&all)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&log).expect("log file"));
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start chromium");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chromium {args:?} took over 60 s:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Output {
            status,
            stdout: std::fs::read(&out).unwrap_or_default(),
            stderr: std::fs::read(&log).unwrap_or_default(),
        }
    }

    /// The page's DOM once it has loaded and its script has run.
    pub fn dom(&self, url: &str) -> String {
        let out = self.run(&["--dump-dom".into(), url.into()]);
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && dom.contains("<html"),
            "chromium did not render {url}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        dom
    }

    /// A PNG of the page in a `width` x `height` window, written to `path`.
    pub fn screenshot(&self, url: &str, path: &Path, width: u32, height: u32) {
        let out = self.run(&[
            format!("--window-size={width},{height}"),
            format!("--screenshot={}", path.display()),
            url.into(),
        ]);
        assert!(
            out.status.success() && path.exists(),
            "chromium took no screenshot of {url}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

/// A PNG's width and height, from its IHDR chunk; None when it is not a PNG.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 24 || &bytes[..8] != SIGNATURE || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&bytes[16..20]), be(&bytes[20..24])))
}
