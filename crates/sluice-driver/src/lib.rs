//! The driver: accepts jobs, runs each job's batch loop ([`runner`]), and schedules tasks on
//! executors through the scheduler's event loop ([`core`]).

pub mod core;
mod housekeeping;
pub mod inspect;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod runner;
pub mod services;
mod ui;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sluice_core::settings::parse_duration;
use sluice_proto::driver_server::DriverServer;
use sluice_proto::jobs_server::JobsServer;
use std::path::PathBuf;
use std::time::Duration;

pub use sluice_core::init_logging;

pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Staging files older than this are leftovers of a crash, not writes in flight.
const STAGING_MAX_AGE: Duration = Duration::from_secs(600);

/// `sluice-driver` command line; every flag may also come from the config file or SLUICE_*.
#[derive(Debug, clap::Parser, Serialize)]
#[command(
    name = "sluice-driver",
    version,
    about = "Sluice driver: plans batches and schedules tasks"
)]
pub struct DriverArgs {
    /// Address for executors and the CLI, e.g. 127.0.0.1:7070
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Where jobs and their checkpoints live: a path or file:// URI
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// An executor silent this long is declared lost (e.g. '5s')
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout: Option<String>,
    /// Consecutive task failures after which an executor gets no tasks for a while
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_after_failures: Option<u32>,
    /// How long such an executor is excluded (e.g. '30s')
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_for: Option<String>,
    /// How long a stateful task waits for the busy executor holding its state before it runs
    /// elsewhere and restores from the checkpoint (e.g. '3s', like Spark's locality wait)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality_wait: Option<String>,
    /// Serve /healthz, /readyz and /metrics (Prometheus) on this address, e.g. 0.0.0.0:9090
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Serve the web UI on this address, e.g. 127.0.0.1:8080 (loopback only without a
    /// cluster token, as gRPC)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ui_listen: Option<String>,
    /// How long SIGTERM waits for running batches to commit before exiting (e.g. '20s'); a
    /// batch still running then is rerun after the restart
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<String>,
    /// Comma-separated URIs or paths under which files tables may live (default: anywhere
    /// the processes can reach)
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_paths: Option<Vec<String>>,
    /// Comma-separated librdkafka properties jobs may not set (default: those that load code
    /// or run programs)
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denied_kafka_properties: Option<Vec<String>>,
    #[command(flatten)]
    #[serde(flatten)]
    pub security: sluice_net::SecurityArgs,
    /// TOML config file (also SLUICE_CONFIG)
    #[arg(long, env = "SLUICE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DriverConfig {
    pub listen: String,
    pub state: String,
    pub heartbeat_timeout: String,
    pub exclude_after_failures: u32,
    pub exclude_for: String,
    pub locality_wait: String,
    pub metrics_listen: Option<String>,
    pub ui_listen: Option<String>,
    pub shutdown_grace: String,
    pub allowed_paths: Vec<String>,
    pub denied_kafka_properties: Vec<String>,
    #[serde(flatten)]
    pub security: sluice_net::SecurityConfig,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            listen: "127.0.0.1:7070".into(),
            state: "sluice-state".into(),
            heartbeat_timeout: "5s".into(),
            exclude_after_failures: 3,
            exclude_for: "30s".into(),
            locality_wait: "3s".into(),
            metrics_listen: None,
            ui_listen: None,
            shutdown_grace: "20s".into(),
            allowed_paths: Vec::new(),
            denied_kafka_properties: policy::DENIED_KAFKA_PROPERTIES
                .iter()
                .map(|p| p.to_string())
                .collect(),
            security: Default::default(),
        }
    }
}

impl DriverConfig {
    pub fn load(args: &DriverArgs) -> anyhow::Result<Self> {
        let c: DriverConfig = sluice_core::config::load(args.config.as_deref(), args)?;
        c.heartbeat_timeout()?;
        c.exclude_for()?;
        c.locality_wait()?;
        c.shutdown_grace()?;
        c.policy()?;
        Ok(c)
    }

    pub fn exclude_for(&self) -> anyhow::Result<Duration> {
        parse_duration(&self.exclude_for)
            .map_err(|e| anyhow::anyhow!("configuration: exclude_for: {e}"))
    }

    pub fn shutdown_grace(&self) -> anyhow::Result<Duration> {
        parse_duration(&self.shutdown_grace)
            .map_err(|e| anyhow::anyhow!("configuration: shutdown_grace: {e}"))
    }

    pub fn locality_wait(&self) -> anyhow::Result<Duration> {
        parse_duration(&self.locality_wait)
            .map_err(|e| anyhow::anyhow!("configuration: locality_wait: {e}"))
    }

    pub fn policy(&self) -> anyhow::Result<policy::JobPolicy> {
        policy::JobPolicy::new(&self.allowed_paths, &self.denied_kafka_properties)
            .map_err(|f| anyhow::anyhow!("{}", f.message))
    }

    pub fn heartbeat_timeout(&self) -> anyhow::Result<Duration> {
        parse_duration(&self.heartbeat_timeout)
            .map_err(|e| anyhow::anyhow!("configuration: heartbeat_timeout: {e}"))
    }
}

/// Runs the driver until the process is stopped (SIGTERM: see [`jobs::Registry::drain`]).
pub async fn run(config: DriverConfig) -> anyhow::Result<()> {
    let security = sluice_net::Security::load(&config.security)?;
    let state = sluice_connectors::store::open(&config.state)?;
    let timeout = config.heartbeat_timeout()?;
    let grace = config.shutdown_grace()?;
    let heartbeat_interval = (timeout / 5).max(Duration::from_millis(50));
    let (metrics, registry) = metrics::DriverMetrics::new();
    let ready = sluice_net::ops::Readiness::default();
    if let Some(addr) = &config.metrics_listen {
        sluice_net::ops::serve(addr, registry, ready.clone()).await?;
    }
    // Bind before recovering: a second driver on the same port fails here, not after it has
    // started rerunning batches.
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    security.check_bind(listener.local_addr()?, "listen")?;
    let core = core::start(core::CoreConfig {
        heartbeat_interval,
        heartbeat_timeout: timeout,
        scheduler: sluice_scheduler::SchedulerConfig {
            exclude_after_failures: config.exclude_after_failures,
            exclude_for_ms: config.exclude_for()?.as_millis() as u64,
            locality_wait_ms: config.locality_wait()?.as_millis() as u64,
        },
        executors_alive: metrics.executors_alive.clone(),
    });
    let registry = jobs::Registry::new(core.clone(), state.clone(), metrics, config.policy()?);
    // Writes a crash interrupted left staging files; a write in flight is far younger.
    let uri = state.uri.clone();
    match tokio::task::spawn_blocking(move || {
        sluice_connectors::store::clean_staging(&uri, STAGING_MAX_AGE)
    })
    .await?
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(files = n, "deleted leftover staging files under --state"),
        Err(e) => tracing::warn!("cannot clean leftover staging files under --state: {e}"),
    }
    if let Some(addr) = &config.ui_listen {
        let addr = sluice_ui::serve(addr, registry.clone(), security.clone()).await?;
        tracing::info!(%addr, "serving the web UI");
    }
    let resumed = registry.recover().await?;
    if resumed > 0 {
        tracing::info!(resumed, "resumed jobs from the catalog");
    }
    tracing::info!(listen = %listener.local_addr()?, state = %state.uri, token = security.has_token(), tls = security.scheme() == "https", "driver started");
    let driver = DriverServer::new(services::DriverService {
        core,
        heartbeat_interval,
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let jobs = JobsServer::new(services::JobsService {
        registry: registry.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    ready.set(true);
    let server = security
        .server()?
        .add_service(security.protect(driver))
        .add_service(security.protect(jobs))
        .serve_with_incoming(sluice_net::incoming(listener));
    tokio::select! {
        r = server => r?,
        _ = sluice_net::terminated() => {
            ready.set(false);
            registry.drain(grace).await;
        }
    }
    Ok(())
}
