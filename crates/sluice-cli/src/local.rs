//! `sluice local`: a driver and N executors as child processes on loopback, one job, live
//! progress, and a clean shutdown on Ctrl-C or when the job ends.

use anyhow::{Context, bail};
use sluice_core::JobState;
use sluice_proto::GetRequest;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The job `sluice local` runs when given no file.
const EXAMPLE_JOB: &str = include_str!("../../../examples/datagen_page_counts.sql");

#[derive(Debug, clap::Args)]
pub struct LocalArgs {
    /// Job file to run (default: a built-in example over generated clicks)
    file: Option<PathBuf>,
    /// Executor processes to start
    #[arg(long, default_value_t = 2)]
    executors: u32,
    /// Task slots per executor
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// Directory for job state and process logs (default: a new temporary directory)
    #[arg(long)]
    state: Option<PathBuf>,
}

struct Cluster {
    children: Vec<(String, Child)>,
}

impl Cluster {
    fn spawn(&mut self, name: &str, args: &[String], log: &Path) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the sluice executable")?;
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it makes the child die with this process even on
        // SIGKILL, so a killed `sluice local` never leaves a cluster behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start the {name}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    async fn shutdown(&mut self) {
        for (_, child) in &self.children {
            if let Some(pid) = child.id() {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        for (name, child) in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(3), child.wait())
                .await
                .is_err()
            {
                tracing::warn!("{name} did not exit on SIGTERM; killing it");
                let _ = child.kill().await;
            }
        }
        self.children.clear();
    }

    /// A child that exited on its own (a crash) makes the local cluster useless.
    fn crashed(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .find_map(|(name, c)| match c.try_wait() {
                Ok(Some(status)) => Some(format!("{name} exited ({status})")),
                _ => None,
            })
    }
}

/// Creates `dir` private to this user (0700), or tightens one of ours; refuses a directory
/// that belongs to someone else, whose owner could read the state or swap its files.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: getuid(2) cannot fail.
    let me = unsafe { libc::getuid() };
    if !meta.is_dir() || meta.uid() != me {
        bail!(
            "{} is not a directory of yours (owner uid {}); sluice local keeps its state private: choose another --state",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Where `sluice local` keeps the token of the cluster on `port`, readable by this user only;
/// the CLI finds it there for a loopback driver without a token of its own.
pub fn token_path(port: u16) -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(format!(".sluice/local/127.0.0.1-{port}.token")))
}

/// A fresh random cluster token in a 0600 file, so another user of this machine cannot
/// submit to the local cluster.
fn write_token(port: u16) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = token_path(port).context("HOME is not set")?;
    private_dir(path.parent().expect("has a parent"))?;
    let token = random_hex(32)?;
    let _ = std::fs::remove_file(&path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(token.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut random = vec![0u8; bytes];
    File::open("/dev/urandom")?.read_exact(&mut random)?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    let (sql, origin) = match &args.file {
        Some(f) => (
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read job file {}", f.display()))?,
            f.display().to_string(),
        ),
        None => (
            EXAMPLE_JOB.to_string(),
            "examples/datagen_page_counts.sql".to_string(),
        ),
    };
    if args.executors == 0 {
        bail!("--executors must be at least 1");
    }
    let state = match &args.state {
        Some(s) => s.clone(),
        // Not guessable, so nobody can create it first.
        None => std::env::temp_dir().join(format!("sluice-local-{}", random_hex(8)?)),
    };
    private_dir(&state)?;
    let logs = state.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let port = free_port()?;
    let driver = format!("http://127.0.0.1:{port}");
    let ui_port = free_port()?;
    // The user's own SLUICE_TOKEN (inherited by the children) wins over a generated one.
    let token = match std::env::var_os(sluice_net::TOKEN_ENV) {
        Some(_) => None,
        None => Some(write_token(port)?),
    };
    let token_arg: Vec<String> = token
        .iter()
        .flat_map(|t| ["--token-file".to_string(), t.display().to_string()])
        .collect();
    let mut cluster = Cluster {
        children: Vec::new(),
    };
    cluster.spawn(
        "driver",
        &[
            "driver".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--state".into(),
            state.join("state").display().to_string(),
            "--ui-listen".into(),
            format!("127.0.0.1:{ui_port}"),
        ]
        .into_iter()
        .chain(token_arg.iter().cloned())
        .collect::<Vec<_>>(),
        &logs.join("driver.log"),
    )?;
    for i in 0..args.executors {
        cluster.spawn(
            &format!("executor {i}"),
            &[
                "executor".into(),
                "--driver".into(),
                driver.clone(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--slots".into(),
                args.slots.to_string(),
            ]
            .into_iter()
            .chain(token_arg.iter().cloned())
            .collect::<Vec<_>>(),
            &logs.join(format!("executor-{i}.log")),
        )?;
    }
    println!(
        "sluice local: driver {driver}, {} executors; state and logs in {}",
        args.executors,
        state.display()
    );
    match &token {
        Some(t) => println!(
            "web UI: http://127.0.0.1:{ui_port}/ (log in with the token in {})",
            t.display()
        ),
        None => println!("web UI: http://127.0.0.1:{ui_port}/ (log in with SLUICE_TOKEN)"),
    }
    let target = crate::DriverAddr {
        url: driver.clone(),
        security: sluice_net::Security::load(&sluice_net::SecurityConfig {
            token_file: token.clone(),
            ..Default::default()
        })?,
    };
    let result = tokio::select! {
        r = drive(&mut cluster, &target, sql, origin) => r,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted: stopping the cluster");
            Ok(())
        }
    };
    cluster.shutdown().await;
    if let Some(t) = &token {
        let _ = std::fs::remove_file(t);
    }
    result
}

async fn drive(
    cluster: &mut Cluster,
    driver: &crate::DriverAddr,
    sql: String,
    origin: String,
) -> anyhow::Result<()> {
    let mut client = None;
    for _ in 0..100 {
        if let Some(crash) = cluster.crashed() {
            bail!("{crash} before the cluster was up; see the logs");
        }
        if let Ok(c) = driver.connect().await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = client.context("the driver did not come up within 10 s; see the logs")?;
    let request = sluice_proto::SubmitRequest {
        sql,
        origin,
        ..Default::default()
    };
    // One job per INSERT statement: follow them all, each line tagged when there are several.
    let job_ids = driver.submit(request).await?;
    for id in &job_ids {
        println!("job {id} submitted");
    }
    let several = job_ids.len() > 1;
    let mut shown: std::collections::HashMap<String, u64> = Default::default();
    let mut last_state: std::collections::HashMap<String, JobState> = Default::default();
    let mut ended: std::collections::HashSet<String> = Default::default();
    loop {
        if let Some(crash) = cluster.crashed() {
            bail!("{crash}; see the logs");
        }
        for job_id in &job_ids {
            if ended.contains(job_id) {
                continue;
            }
            let s = client
                .get(GetRequest {
                    job_id: job_id.clone(),
                })
                .await?
                .into_inner();
            let tag = if several {
                format!("[{}] ", s.name)
            } else {
                String::new()
            };
            let last_shown = shown.get(job_id).copied();
            for b in s
                .recent_batches
                .iter()
                .filter(|b| last_shown.is_none_or(|n| b.batch_id > n))
            {
                println!(
                    "{tag}batch {:>5} | {:>10} rows in | {:>8} rows out | {:>6} ms | {:>10} rows/s{}",
                    b.batch_id,
                    b.rows_in,
                    b.rows_out,
                    b.duration_ms,
                    sluice_proto::json::rows_per_second(b.rows_in, b.duration_ms),
                    if b.tasks_retried > 0 {
                        format!(
                            " | {} tasks rerun: {}",
                            b.tasks_retried,
                            crate::rerun_reasons(b)
                        )
                    } else {
                        String::new()
                    }
                );
                if !b.console.is_empty() {
                    println!("{}", b.console.trim_end());
                }
                shown.insert(job_id.clone(), b.batch_id);
            }
            let state = s.job_state();
            if last_state.get(job_id) != Some(&state) {
                if state == JobState::Waiting {
                    println!("{tag}waiting: {}", s.error);
                }
                last_state.insert(job_id.clone(), state);
            }
            match state {
                JobState::Finished => {
                    println!(
                        "{tag}job finished: {} batches, {} rows in, {} rows out",
                        s.batches_committed, s.rows_in, s.rows_out
                    );
                    ended.insert(job_id.clone());
                }
                JobState::Failed => bail!("{tag}job failed: {}", s.error),
                JobState::Stopped => {
                    println!("{tag}job stopped");
                    ended.insert(job_id.clone());
                }
                _ => {}
            }
        }
        if ended.len() == job_ids.len() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
