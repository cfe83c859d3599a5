//! `sluice`: submit, list, inspect and stop jobs; `sluice local` runs a whole cluster here.

mod cluster;
mod inspect;
mod local;
mod replay;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use sluice_net::{AuthChannel, Security, SecurityArgs, SecurityConfig};
use sluice_proto::jobs_client::JobsClient;
use sluice_proto::json;
use sluice_proto::{
    ClusterRequest, GetBatchRequest, GetRequest, JobStatus, ListRequest, StopRequest, SubmitRequest,
};
use std::path::PathBuf;

#[derive(Debug, Parser, Serialize)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: exactly-once micro-batch stream processing"
)]
struct Cli {
    /// Driver URL (default http://127.0.0.1:7070; also SLUICE_DRIVER or the config file)
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    driver: Option<String>,
    /// TOML config file (also SLUICE_CONFIG)
    #[arg(long, global = true, env = "SLUICE_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    security: SecurityArgs,
    #[command(subcommand)]
    #[serde(skip)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit a job file; prints the job id
    Submit {
        file: PathBuf,
        /// Continue this stopped or failed job from its checkpoint with the file's SQL; refused,
        /// with what changed, when the change is unsafe for its offsets or state
        #[arg(long, value_name = "JOB")]
        resume: Option<String>,
    },
    /// List jobs
    Jobs {
        #[arg(long)]
        json: bool,
    },
    /// Show a job's state and recent batches, or one batch's stages and task attempts
    Status {
        job: String,
        /// Show this batch: its logged input, phases, stages and every task attempt (where it
        /// ran, why it was launched, how it ended, where its time went)
        #[arg(long, value_name = "N")]
        batch: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// List the executors (slots, running tasks, state partitions held) and their
    /// registrations, drains and losses
    Executors {
        #[arg(long)]
        json: bool,
    },
    /// Stop a job (its running batch is abandoned and rerun if the job is resumed)
    Stop { job: String },
    /// Run a driver and executors on this machine, submit a job, and show its progress
    Local(local::LocalArgs),
    /// Rerun one committed batch from its logged input, watermark and the state before it,
    /// into a scratch directory, and say whether it equals what was committed (a files sink
    /// byte for byte, state row for row); exits 1 when it does not
    Replay {
        job: String,
        batch: u64,
        /// Where the rerun writes (default: a new directory under the system's temp dir)
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Read the job's checkpoint here instead of asking the driver where it is: the job's
        /// own (…/jobs/<id>) or the driver's --state
        #[arg(long, value_name = "URI")]
        checkpoint: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Read a checkpoint directly from storage
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Run a driver in this process (what `sluice-driver` does)
    #[command(hide = true)]
    Driver(sluice_driver::DriverArgs),
    /// Run an executor in this process (what `sluice-executor` does)
    #[command(hide = true)]
    Executor(sluice_executor::ExecutorArgs),
}

#[derive(Debug, Subcommand)]
enum CheckpointCommand {
    /// List a checkpoint's batches, their input, commit state and how the job ended
    Inspect {
        /// A job's checkpoint (…/jobs/<id>) or a driver's --state: a path, file:// or s3:// URI
        uri: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(default)]
struct CliConfig {
    driver: String,
    #[serde(flatten)]
    security: SecurityConfig,
}

impl Default for CliConfig {
    fn default() -> Self {
        CliConfig {
            driver: "http://127.0.0.1:7070".into(),
            security: SecurityConfig::default(),
        }
    }
}

fn driver(config: &CliConfig) -> anyhow::Result<DriverAddr> {
    let mut security = config.security.clone();
    // A cluster of `sluice local` keeps its token where only this user can read it.
    if security.token_file.is_none()
        && std::env::var_os(sluice_net::TOKEN_ENV).is_none()
        && let Some(port) = config
            .driver
            .strip_prefix("http://127.0.0.1:")
            .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        && let Some(path) = local::token_path(port).filter(|p| p.exists())
    {
        security.token_file = Some(path);
    }
    Ok(DriverAddr {
        url: config.driver.clone(),
        security: Security::load(&security)?,
    })
}

#[tokio::main]
async fn main() {
    // The container image ships this one binary under three names (hard links): called as
    // sluice-driver or sluice-executor, it is that program, flags and all.
    let name = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let result = match name.as_str() {
        "sluice-driver" => {
            let args = sluice_driver::DriverArgs::parse();
            sluice_driver::init_logging();
            match sluice_driver::DriverConfig::load(&args) {
                Ok(config) => sluice_driver::run(config).await,
                Err(e) => Err(e),
            }
        }
        "sluice-executor" => {
            let args = sluice_executor::ExecutorArgs::parse();
            sluice_executor::init_logging();
            match sluice_executor::ExecutorConfig::load(&args) {
                Ok(config) => sluice_executor::run(config).await,
                Err(e) => Err(e),
            }
        }
        _ => run(Cli::parse()).await,
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config: CliConfig = sluice_core::config::load(cli.config.as_deref(), &cli)?;
    let Some(command) = cli.command else {
        bail!("no command given; try `sluice local` or `sluice --help`");
    };
    match command {
        Command::Driver(args) => {
            sluice_driver::init_logging();
            sluice_driver::run(sluice_driver::DriverConfig::load(&args)?).await
        }
        Command::Executor(args) => {
            sluice_executor::init_logging();
            sluice_executor::run(sluice_executor::ExecutorConfig::load(&args)?).await
        }
        Command::Local(args) => local::run(args).await,
        Command::Checkpoint {
            command: CheckpointCommand::Inspect { uri, json },
        } => inspect::run(&uri, json).await,
        Command::Replay {
            job,
            batch,
            out,
            checkpoint,
            json,
        } => {
            let uri = match checkpoint {
                Some(uri) => uri,
                None => driver(&config)?.checkpoint_of(&job).await?,
            };
            replay::run(&job, &uri, batch, out, json).await
        }
        Command::Submit { file, resume } => {
            let sql = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read job file {}", file.display()))?;
            let request = SubmitRequest {
                sql,
                origin: file.display().to_string(),
                resume_job_id: resume.unwrap_or_default(),
            };
            // One job per INSERT statement; one id per line.
            for id in driver(&config)?.submit(request).await? {
                println!("{id}");
            }
            Ok(())
        }
        Command::Jobs { json } => {
            let jobs = driver(&config)?
                .connect()
                .await?
                .list(ListRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .jobs;
            if json {
                let all: Vec<_> = jobs.iter().map(json::job_json).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!(
                    "{:<36}  {:<24}  {:<9}  {:>8}  {:>12}",
                    "JOB", "NAME", "STATE", "BATCHES", "ROWS IN"
                );
                for j in jobs {
                    println!(
                        "{:<36}  {:<24}  {:<9}  {:>8}  {:>12}",
                        j.job_id,
                        j.name,
                        j.job_state(),
                        j.batches_committed,
                        j.rows_in
                    );
                }
            }
            Ok(())
        }
        Command::Status {
            job,
            batch: Some(batch_id),
            json,
        } => {
            let b = driver(&config)?
                .connect()
                .await?
                .get_batch(GetBatchRequest {
                    job_id: job,
                    batch_id,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            show(json, || json::batch_json(&b), || cluster::print_batch(&b))
        }
        Command::Executors { json } => {
            let c = driver(&config)?
                .connect()
                .await?
                .cluster(ClusterRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            show(
                json,
                || json::cluster_json(&c),
                || cluster::print_cluster(&c),
            )
        }
        Command::Status {
            job,
            batch: None,
            json,
        } => {
            let s = driver(&config)?
                .connect()
                .await?
                .get(GetRequest { job_id: job })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!("{}", serde_json::to_string_pretty(&json::job_json(&s))?);
            } else {
                print_status(&s);
            }
            Ok(())
        }
        Command::Stop { job } => {
            let r = driver(&config)?
                .connect()
                .await?
                .stop(StopRequest {
                    job_id: job.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{job}: {}", r.job_state());
            Ok(())
        }
    }
}

/// Where the driver is and how to talk to it (the cluster token, TLS).
pub(crate) struct DriverAddr {
    pub url: String,
    pub security: Security,
}

impl DriverAddr {
    pub(crate) async fn connect(&self) -> anyhow::Result<JobsClient<AuthChannel>> {
        let channel = self
            .security
            .connect(&self.url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the driver at {}: {e}", self.url))?;
        Ok(JobsClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
    }

    /// Where a job's checkpoint is, as its driver says.
    pub(crate) async fn checkpoint_of(&self, job: &str) -> anyhow::Result<String> {
        let s = self
            .connect()
            .await?
            .get(GetRequest {
                job_id: job.to_string(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        anyhow::ensure!(
            !s.checkpoint_uri.is_empty(),
            "the driver does not say where job {job}'s checkpoint is; pass --checkpoint"
        );
        Ok(s.checkpoint_uri)
    }

    pub(crate) async fn submit(&self, request: SubmitRequest) -> anyhow::Result<Vec<String>> {
        let r = self
            .connect()
            .await?
            .submit(request)
            .await
            .map_err(status_error)?
            .into_inner();
        Ok(if r.job_ids.is_empty() {
            vec![r.job_id]
        } else {
            r.job_ids
        })
    }
}

/// Prints pretty JSON for scripts, or text for people.
fn show(
    json: bool,
    as_json: impl FnOnce() -> serde_json::Value,
    as_text: impl FnOnce(),
) -> anyhow::Result<()> {
    match json {
        true => println!("{}", serde_json::to_string_pretty(&as_json())?),
        false => as_text(),
    }
    Ok(())
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unauthenticated => anyhow::anyhow!("refused by the driver: {}", s.message()),
        tonic::Code::Unavailable => {
            anyhow::anyhow!(
                "the driver's storage or network is unavailable, try again: {}",
                s.message()
            )
        }
        tonic::Code::Internal => anyhow::anyhow!("a bug in the driver: {}", s.message()),
        _ => anyhow::anyhow!("{}", s.message()),
    }
}

/// "executor lost 3, fetch failed 1; recovered in 412 ms", or "" when nothing reran.
pub(crate) fn rerun_reasons(b: &sluice_proto::BatchStatus) -> String {
    let mut why = Vec::new();
    for (n, what) in [
        (b.rerun_executor_lost, "executor lost"),
        (b.rerun_fetch_failed, "fetch failed"),
        (b.rerun_task_failed, "task failed"),
    ] {
        if n > 0 {
            why.push(format!("{what} {n}"));
        }
    }
    let mut text = why.join(", ");
    if b.dead_letters > 0 {
        text.push_str(&format!(
            "; {} records to the dead-letter table",
            b.dead_letters
        ));
    }
    let late: i64 = b
        .metrics
        .iter()
        .filter(|(m, _)| m.ends_with(".late_rows"))
        .map(|(_, n)| n)
        .sum();
    if late > 0 {
        text.push_str(&format!("; {late} late rows dropped"));
    }
    if b.recovery_ms > 0 {
        text.push_str(&format!("; recovered in {} ms", b.recovery_ms));
    }
    text
}

/// An event time (ms since the epoch) as RFC 3339 in UTC, or "-" when there is none yet.
pub(crate) fn event_time(ms: Option<i64>) -> String {
    let Some(ms) = ms.and_then(|ms| u64::try_from(ms).ok()) else {
        return "-".into();
    };
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}

fn print_status(s: &JobStatus) {
    println!("job        {}", s.job_id);
    println!("name       {}", s.name);
    println!("state      {}", s.job_state());
    if !s.error.is_empty() {
        println!("error      {}", s.error);
    }
    println!("executors  {}", s.executors);
    if !s.excluded_executors.is_empty() {
        println!(
            "excluded   {} (failing tasks)",
            s.excluded_executors.join(", ")
        );
    }
    println!(
        "batches    {} committed, {} rows in, {} rows out",
        s.batches_committed, s.rows_in, s.rows_out
    );
    if !s.source_lag.is_empty() {
        let lag: Vec<String> = s
            .source_lag
            .iter()
            .map(|l| format!("{} {}: {}", l.table, l.partition, l.records))
            .collect();
        println!("lag        {}", lag.join(", "));
    }
    if s.restarts > 0 {
        println!("restarts   {}", s.restarts);
    }
    if !s.recent_batches.is_empty() {
        // Only jobs with event time have a watermark column.
        let timed = s.recent_batches.iter().any(|b| b.watermark_ms.is_some());
        let watermark = |b: Option<&sluice_proto::BatchStatus>| match (timed, b) {
            (false, _) => String::new(),
            (true, None) => format!("{:<24}  ", "WATERMARK"),
            (true, Some(b)) => format!("{:<24}  ", event_time(b.watermark_ms)),
        };
        println!();
        println!(
            "{:>8}  {:>10}  {:>10}  {:>9}  {:>10}  {:>6}  {:>6}  {}WHY",
            "BATCH",
            "ROWS IN",
            "ROWS OUT",
            "MS",
            "ROWS/S",
            "TASKS",
            "RERUN",
            watermark(None)
        );
        for b in &s.recent_batches {
            println!(
                "{:>8}  {:>10}  {:>10}  {:>9}  {:>10}  {:>6}  {:>6}  {}{}",
                b.batch_id,
                b.rows_in,
                b.rows_out,
                b.duration_ms,
                json::rows_per_second(b.rows_in, b.duration_ms),
                b.tasks,
                b.tasks_retried,
                watermark(Some(b)),
                rerun_reasons(b)
            );
        }
        if let Some(last) = s.recent_batches.last().filter(|_| timed) {
            print_event_time(last);
        }
    }
}

/// A windowed job's last batch: what each source read up to, and each operator's open
/// windows and late rows.
fn print_event_time(b: &sluice_proto::BatchStatus) {
    println!();
    println!("event time, batch {}", b.batch_id);
    println!("  watermark {:>28}", event_time(b.watermark_ms));
    for (table, ms) in &b.max_event_ms {
        println!("  {table:<20} read up to {}", event_time(Some(*ms)));
    }
    let operators: std::collections::BTreeSet<&str> = b
        .metrics
        .keys()
        .filter_map(|m| m.strip_suffix(".state_rows"))
        .collect();
    use sluice_core::progress::{LATE_ROWS, OPEN_WINDOWS, STATE_BYTES, STATE_ROWS};
    for op in operators {
        let metric = |what: &str| {
            b.metrics
                .get(&sluice_core::progress::operator_rows(op, what))
                .copied()
        };
        let mut parts = Vec::new();
        if let Some(n) = metric(OPEN_WINDOWS) {
            parts.push(format!("{n} open windows"));
        }
        parts.push(format!("{} late rows", metric(LATE_ROWS).unwrap_or(0)));
        parts.push(format!("{} state rows", metric(STATE_ROWS).unwrap_or(0)));
        if let Some(n) = metric(STATE_BYTES) {
            parts.push(format!("{n} state bytes"));
        }
        // A join's sides are `<operator>.left` and `<operator>.right`.
        println!("  {op:<20} {}", parts.join(", "));
    }
}
