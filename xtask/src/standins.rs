//! Stand-in executors, to measure one driver with a thousand executors on one machine: each
//! speaks the real protocol (registers over its own `Driver.Attach` stream, heartbeats) and
//! answers every launch at once with success, so what is measured is the driver: scheduling,
//! launching and bookkeeping, not the work.

use sluice_proto::driver_client::DriverClient;
use sluice_proto::driver_message::Kind as DriverKind;
use sluice_proto::executor_message::Kind as ExecKind;
use sluice_proto::{ExecutorMessage, Heartbeat, Register, TaskResult};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Control streams per HTTP/2 connection: a thousand executors need not be a thousand sockets
/// (and file descriptors) in one process.
const STREAMS_PER_CONNECTION: usize = 100;

pub struct StandIns {
    /// Dropping it ends every stand-in, and with them their streams.
    _runtime: tokio::runtime::Runtime,
    launches: Arc<AtomicU64>,
}

impl StandIns {
    /// `executors` stand-ins of `slots` slots each, registered with the driver at `url`.
    pub fn start(url: &str, executors: usize, slots: u32) -> anyhow::Result<StandIns> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let launches = Arc::new(AtomicU64::new(0));
        let channels = runtime.block_on(async {
            let mut channels = Vec::new();
            for _ in 0..executors.div_ceil(STREAMS_PER_CONNECTION) {
                let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?;
                channels.push(endpoint.connect().await?);
            }
            anyhow::Ok(channels)
        })?;
        for i in 0..executors {
            let channel = channels[i / STREAMS_PER_CONNECTION].clone();
            let launches = launches.clone();
            runtime.spawn(async move {
                if let Err(e) = stand_in(channel, i, slots, &launches).await {
                    eprintln!("stand-in executor {i}: {e}");
                }
            });
        }
        Ok(StandIns {
            _runtime: runtime,
            launches,
        })
    }

    /// Launches answered so far.
    pub fn launches(&self) -> u64 {
        self.launches.load(Ordering::Relaxed)
    }
}

async fn stand_in(
    channel: Channel,
    i: usize,
    slots: u32,
    launches: &AtomicU64,
) -> anyhow::Result<()> {
    let mut client = DriverClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel::<ExecutorMessage>(1024);
    let send = |kind| ExecutorMessage { kind: Some(kind) };
    tx.send(send(ExecKind::Register(Register {
        executor_id: format!("stand-in-{i}"),
        // Never dialled: a map-only job fetches no shuffle blocks.
        shuffle_address: "127.0.0.1:9".into(),
        slots,
    })))
    .await?;
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(message) = inbound.message().await? {
        match message.kind {
            Some(DriverKind::Registered(r)) => {
                let (tx, every) = (tx.clone(), r.heartbeat_interval_ms.max(50));
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(every));
                    loop {
                        tick.tick().await;
                        let beat = ExecKind::Heartbeat(Heartbeat { running_tasks: 0 });
                        if tx.send(send(beat)).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Some(DriverKind::Launch(launch)) => {
                launches.fetch_add(1, Ordering::Relaxed);
                let result = TaskResult {
                    key: launch.key,
                    ok: true,
                    ..Default::default()
                };
                tx.send(send(ExecKind::Result(result))).await?;
            }
            _ => {}
        }
    }
    Ok(())
}
