//! The executor: dials the driver and keeps one control stream open (register, heartbeats,
//! task results up; task launches down), runs tasks, and serves its shuffle outputs to peers.

pub mod metrics;
pub mod replay;
mod shuffle;
mod state;
mod statics;
mod task;

use anyhow::Context;
use backon::BackoffBuilder;
use serde::{Deserialize, Serialize};
use shuffle::{ShuffleService, ShuffleStore};
use sluice_proto::driver_client::DriverClient;
use sluice_proto::driver_message::Kind as DriverKind;
use sluice_proto::executor_message::Kind as ExecKind;
use sluice_proto::shuffle_server::ShuffleServer;
use sluice_proto::{Draining, ExecutorMessage, Heartbeat, Register};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Largest gRPC message accepted (shuffle blocks travel in chunks well below it).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// `sluice-executor` command line; every flag may also come from the config file or SLUICE_*.
#[derive(Debug, clap::Parser, Serialize)]
#[command(
    name = "sluice-executor",
    version,
    about = "Sluice executor: runs tasks for the driver"
)]
pub struct ExecutorArgs {
    /// Driver URL, e.g. http://127.0.0.1:7070
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Address to serve shuffle blocks on (port 0 picks a free one)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Host name or IP that peers use to reach this executor (default: the listen IP)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_host: Option<String>,
    /// Tasks run at once
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// Serve /healthz, /readyz and /metrics (Prometheus) on this address, e.g. 0.0.0.0:9090
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// On SIGTERM, how long to wait for running tasks to finish and for the shuffle outputs
    /// this executor serves to be released before exiting (e.g. '25s')
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<String>,
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
pub struct ExecutorConfig {
    pub driver: String,
    pub listen: String,
    pub advertise_host: Option<String>,
    pub slots: u32,
    pub metrics_listen: Option<String>,
    pub shutdown_grace: String,
    #[serde(flatten)]
    pub security: sluice_net::SecurityConfig,
    /// Test only (SLUICE_TEST_FAIL_TASKS=true): every task fails, as on a broken host.
    pub test_fail_tasks: bool,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            driver: "http://127.0.0.1:7070".into(),
            listen: "127.0.0.1:0".into(),
            advertise_host: None,
            slots: 2,
            metrics_listen: None,
            shutdown_grace: "25s".into(),
            security: Default::default(),
            test_fail_tasks: false,
        }
    }
}

impl ExecutorConfig {
    pub fn load(args: &ExecutorArgs) -> anyhow::Result<Self> {
        let c: ExecutorConfig = sluice_core::config::load(args.config.as_deref(), args)?;
        anyhow::ensure!(c.slots >= 1, "configuration: slots must be at least 1");
        c.shutdown_grace()?;
        Ok(c)
    }

    pub fn shutdown_grace(&self) -> anyhow::Result<std::time::Duration> {
        sluice_core::settings::parse_duration(&self.shutdown_grace)
            .map_err(|e| anyhow::anyhow!("configuration: shutdown_grace: {e}"))
    }
}

pub use sluice_core::init_logging;

pub(crate) struct Executor {
    pub store: ShuffleStore,
    pub state: state::StateCache,
    pub tasks: task::TaskRunner,
    pub security: sluice_net::Security,
    pub ready: sluice_net::ops::Readiness,
    /// Set on SIGTERM.
    pub draining: tokio::sync::watch::Sender<bool>,
    /// Launches received whose result has not been handed to the control stream yet.
    pub in_flight: AtomicUsize,
}

/// Runs an executor until the process is stopped. SIGTERM drains it: the driver is told, no
/// new task comes, and the process exits once its running tasks have reported and the shuffle
/// outputs it serves are released (or the grace period ends), so scaling down fails nothing.
pub async fn run(config: ExecutorConfig) -> anyhow::Result<()> {
    let security = sluice_net::Security::load(&config.security)?;
    let grace = config.shutdown_grace()?;
    let (metrics, registry) = metrics::ExecutorMetrics::new();
    let ready = sluice_net::ops::Readiness::default();
    if let Some(addr) = &config.metrics_listen {
        sluice_net::ops::serve(addr, registry, ready.clone()).await?;
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    security.check_bind(local, "listen")?;
    let host = config
        .advertise_host
        .clone()
        .unwrap_or_else(|| local.ip().to_string());
    let shuffle_address = format!("{}://{host}:{}", security.scheme(), local.port());
    let executor = Arc::new(Executor {
        store: ShuffleStore::new(security.clone()),
        state: state::StateCache::default(),
        tasks: task::TaskRunner::new(config.slots, config.test_fail_tasks, metrics),
        security: security.clone(),
        ready,
        draining: tokio::sync::watch::channel(false).0,
        in_flight: AtomicUsize::new(0),
    });
    let service = ShuffleServer::new(ShuffleService {
        executor: executor.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let server = security
        .server()?
        .add_service(security.protect(service))
        .serve_with_incoming(sluice_net::incoming(listener));
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!("shuffle server stopped: {e}");
        }
    });
    tracing::info!(%shuffle_address, driver = %config.driver, slots = config.slots, "executor started");
    let sessions = tokio::spawn(sessions(config, shuffle_address, executor.clone()));
    sluice_net::terminated().await;
    drain(&executor, grace).await;
    sessions.abort();
    Ok(())
}

/// Delays between attempts to reach the driver: growing while it cannot be reached, back to
/// the first one as soon as a registration succeeds. (Resetting only after a clean end made
/// every restart of a killed driver take longer than the last.) The first is short: a
/// restarted driver listens within tens of milliseconds, and a 100 ms first delay made a
/// driver-only restart slower than one that lost every executor too (new executors register
/// at once).
struct Reconnect {
    builder: backon::ExponentialBuilder,
    delays: backon::ExponentialBackoff,
}

impl Reconnect {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        let builder = backon::ExponentialBuilder::new()
            .with_min_delay(Self::FIRST)
            .with_max_delay(Self::MAX)
            .with_jitter()
            .without_max_times();
        Reconnect {
            delays: builder.build(),
            builder,
        }
    }

    fn registered(&mut self) {
        self.delays = self.builder.build();
    }

    fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(Self::MAX)
    }
}

/// Registers with the driver again and again (a restarted driver, a dropped stream).
async fn sessions(config: ExecutorConfig, shuffle_address: String, executor: Arc<Executor>) {
    let mut reconnect = Reconnect::new();
    loop {
        let id = uuid::Uuid::new_v4().to_string();
        let mut registered = false;
        let result = session(&config, &id, &shuffle_address, &executor, || {
            registered = true
        })
        .await;
        if registered {
            reconnect.registered();
        }
        executor.ready.set(false);
        match result {
            Ok(()) => {
                tracing::warn!(executor = %id, "driver closed the connection; reconnecting");
            }
            Err(e) => {
                let delay = reconnect.next_delay();
                tracing::warn!(
                    "driver at {} not reachable ({e:#}); retrying in {} ms",
                    config.driver,
                    delay.as_millis()
                );
                tokio::time::sleep(delay).await;
            }
        }
        // Outputs of a session the driver no longer knows are useless.
        executor.store.clear();
    }
}

/// SIGTERM: take no new task, let the running ones report, and wait for the shuffle outputs
/// peers may still fetch to be released.
async fn drain(executor: &Executor, grace: Duration) {
    executor.ready.set(false);
    let _ = executor.draining.send(true);
    tracing::info!(
        running = executor.in_flight.load(Ordering::SeqCst),
        grace_ms = grace.as_millis() as u64,
        "SIGTERM: draining"
    );
    let deadline = tokio::time::Instant::now() + grace;
    let idle = || executor.in_flight.load(Ordering::SeqCst) == 0 && executor.store.is_empty();
    while !idle() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if idle() {
        // Let the last results leave on the control stream.
        tokio::time::sleep(Duration::from_millis(200)).await;
        tracing::info!("drained: every task reported and every shuffle output was released");
    } else {
        tracing::warn!(
            running = executor.in_flight.load(Ordering::SeqCst),
            "grace period over; the driver reruns what this executor still had"
        );
    }
}

/// One registration with the driver: lasts until the control stream ends.
async fn session(
    config: &ExecutorConfig,
    id: &str,
    shuffle_address: &str,
    executor: &Arc<Executor>,
    on_registered: impl FnOnce(),
) -> anyhow::Result<()> {
    let mut client = DriverClient::new(executor.security.connect(&config.driver).await?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<ExecutorMessage>(1024);
    tx.send(ExecutorMessage {
        kind: Some(ExecKind::Register(Register {
            executor_id: id.to_string(),
            shuffle_address: shuffle_address.to_string(),
            slots: config.slots,
        })),
    })
    .await?;
    let mut inbound = client
        .attach(ReceiverStream::new(rx))
        .await
        .context("attach")?
        .into_inner();
    let first = inbound
        .message()
        .await?
        .context("driver closed the stream")?;
    let interval = match first.kind {
        Some(DriverKind::Registered(r)) => Duration::from_millis(r.heartbeat_interval_ms.max(50)),
        other => anyhow::bail!("expected Registered, got {other:?}"),
    };
    tracing::info!(executor = %id, "registered with driver {}", config.driver);
    on_registered();
    executor.ready.set(!*executor.draining.borrow());
    let hb_tx = tx.clone();
    let hb_exec = executor.clone();
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let msg = ExecutorMessage {
                kind: Some(ExecKind::Heartbeat(Heartbeat {
                    running_tasks: hb_exec.tasks.running() as u32,
                })),
            };
            if hb_tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    // Tells this driver once when the executor starts draining (also if it already was).
    let drain_tx = tx.clone();
    let mut draining = executor.draining.subscribe();
    let drain_notice = tokio::spawn(async move {
        if draining.wait_for(|d| *d).await.is_ok() {
            let msg = ExecutorMessage {
                kind: Some(ExecKind::Draining(Draining {})),
            };
            let _ = drain_tx.send(msg).await;
        }
    });
    let result = async {
        while let Some(msg) = inbound.message().await? {
            match msg.kind {
                Some(DriverKind::Launch(launch)) => {
                    let executor = executor.clone();
                    let tx = tx.clone();
                    let id = id.to_string();
                    executor.in_flight.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let result = task::TaskRunner::run(executor.clone(), id, launch).await;
                        let _ = tx
                            .send(ExecutorMessage {
                                kind: Some(ExecKind::Result(result)),
                            })
                            .await;
                        executor.in_flight.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                Some(DriverKind::Release(r)) => {
                    executor.store.release(&r.job_id, r.up_to_batch);
                    if r.job_ended {
                        executor.state.drop_job(&r.job_id);
                        executor.tasks.forget_job(&r.job_id).await;
                    }
                    executor.tasks.report_state_size(&executor.state);
                }
                Some(DriverKind::Cancel(c)) => executor.tasks.cancel_job(&c.job_id),
                Some(DriverKind::Registered(_)) | None => {}
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    heartbeat.abort();
    drain_notice.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::Reconnect;

    #[test]
    fn a_registration_resets_the_reconnect_delay() {
        let mut r = Reconnect::new();
        let grown: Vec<_> = (0..12).map(|_| r.next_delay()).collect();
        assert!(grown[11] >= Reconnect::MAX / 2, "{grown:?}");
        r.registered();
        // Jitter adds at most the delay itself.
        assert!(r.next_delay() <= Reconnect::FIRST * 2);
    }
}
