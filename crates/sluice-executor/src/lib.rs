//! The executor: dials the driver and keeps one control stream open (register, heartbeats,
//! task results up; task launches down), runs tasks, and serves its shuffle outputs to peers.

mod shuffle;
mod state;
mod task;

use anyhow::Context;
use backon::BackoffBuilder;
use serde::{Deserialize, Serialize};
use shuffle::{ShuffleService, ShuffleStore};
use sluice_proto::driver_client::DriverClient;
use sluice_proto::driver_message::Kind as DriverKind;
use sluice_proto::executor_message::Kind as ExecKind;
use sluice_proto::shuffle_server::ShuffleServer;
use sluice_proto::{ExecutorMessage, Heartbeat, Register};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

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
            test_fail_tasks: false,
        }
    }
}

impl ExecutorConfig {
    pub fn load(args: &ExecutorArgs) -> anyhow::Result<Self> {
        let c: ExecutorConfig = sluice_core::config::load(args.config.as_deref(), args)?;
        anyhow::ensure!(c.slots >= 1, "configuration: slots must be at least 1");
        Ok(c)
    }
}

pub use sluice_core::init_logging;

pub(crate) struct Executor {
    pub store: ShuffleStore,
    pub state: state::StateCache,
    pub tasks: task::TaskRunner,
}

/// Runs an executor until the process is stopped.
pub async fn run(config: ExecutorConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let host = config
        .advertise_host
        .clone()
        .unwrap_or_else(|| local.ip().to_string());
    let shuffle_address = format!("http://{host}:{}", local.port());
    let executor = Arc::new(Executor {
        store: ShuffleStore::default(),
        state: state::StateCache::default(),
        tasks: task::TaskRunner::new(config.slots, config.test_fail_tasks),
    });
    let service = ShuffleServer::new(ShuffleService {
        executor: executor.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tokio::spawn(async move {
        let incoming = TcpListenerStream::new(listener);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!("shuffle server stopped: {e}");
        }
    });
    tracing::info!(%shuffle_address, driver = %config.driver, slots = config.slots, "executor started");

    let reconnect = backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    let mut delays = reconnect.build();
    loop {
        let id = uuid::Uuid::new_v4().to_string();
        match session(&config, &id, &shuffle_address, &executor).await {
            Ok(()) => {
                tracing::warn!(executor = %id, "driver closed the connection; reconnecting");
                delays = reconnect.build();
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
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

/// One registration with the driver: lasts until the control stream ends.
async fn session(
    config: &ExecutorConfig,
    id: &str,
    shuffle_address: &str,
    executor: &Arc<Executor>,
) -> anyhow::Result<()> {
    let mut client = DriverClient::connect(config.driver.clone())
        .await?
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
    let result = async {
        while let Some(msg) = inbound.message().await? {
            match msg.kind {
                Some(DriverKind::Launch(launch)) => {
                    let executor = executor.clone();
                    let tx = tx.clone();
                    let id = id.to_string();
                    tokio::spawn(async move {
                        let result = task::TaskRunner::run(executor, id, launch).await;
                        let _ = tx
                            .send(ExecutorMessage {
                                kind: Some(ExecKind::Result(result)),
                            })
                            .await;
                    });
                }
                Some(DriverKind::Release(r)) => {
                    executor.store.release(&r.job_id, r.up_to_batch);
                    if r.job_ended {
                        executor.state.drop_job(&r.job_id);
                        executor.tasks.forget_job(&r.job_id).await;
                    }
                }
                Some(DriverKind::Registered(_)) | None => {}
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    heartbeat.abort();
    result
}
