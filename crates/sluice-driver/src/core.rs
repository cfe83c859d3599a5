//! The scheduler's event loop: the one task that owns the [`Scheduler`]. Executor streams, job
//! runners and timers send it messages; it feeds them to the state machine and carries out the
//! actions (send a launch down an executor's stream, answer a job runner).

use crate::model::{Clock, Snapshot};
use sluice_core::{ExecutorId, Failure, FailureKind, JobId, StageAttemptId};
use sluice_proto::driver_message::Kind as DriverKind;
use sluice_proto::{DriverMessage, LaunchTask, ReleaseShuffle, TaskResult};
use sluice_scheduler::model::BatchTrace;
use sluice_scheduler::{
    Action, BatchReport, BatchSubmission, Event, Scheduler, SchedulerConfig, TaskKey,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

pub type Outbound = mpsc::Sender<Result<DriverMessage, Status>>;

/// Excluded executors by job, as the status shows them.
type Exclusions = std::collections::BTreeMap<JobId, Vec<ExecutorId>>;

pub enum CoreMsg {
    Register {
        id: ExecutorId,
        address: String,
        slots: u32,
        outbound: Outbound,
    },
    Heartbeat {
        id: ExecutorId,
    },
    /// The executor is shutting down: it finishes its running tasks but takes no new ones.
    Draining {
        id: ExecutorId,
    },
    Result {
        executor: ExecutorId,
        result: TaskResult,
    },
    Lost {
        id: ExecutorId,
        reason: String,
    },
    Submit {
        sub: BatchSubmission,
        code: JobCode,
        reply: oneshot::Sender<Result<BatchReport, BatchFailure>>,
    },
    /// What the cluster model shows now: executors, their history, the running batches.
    Query {
        reply: oneshot::Sender<Snapshot>,
    },
    /// Stop the job's batch; `done` is answered once none of its tasks runs anywhere.
    Cancel {
        job_id: JobId,
        done: oneshot::Sender<()>,
    },
    /// The job ended: executors may drop everything they keep for it.
    Ended {
        job_id: JobId,
    },
}

/// A batch that failed on the cluster, and what ran up to the failure.
#[derive(Debug)]
pub struct BatchFailure {
    pub failure: Failure,
    pub trace: Option<Box<BatchTrace>>,
}

impl From<Failure> for BatchFailure {
    fn from(failure: Failure) -> Self {
        BatchFailure {
            failure,
            trace: None,
        }
    }
}

/// What every task launch of a job carries besides its own inputs.
#[derive(Clone, Default)]
pub struct JobCode {
    pub sql: Arc<str>,
    /// The job's checkpoint URI, where stateful tasks keep their state.
    pub checkpoint_uri: Arc<str>,
}

/// A cheap handle to the event loop.
#[derive(Clone)]
pub struct CoreHandle {
    tx: mpsc::Sender<CoreMsg>,
    alive: Arc<AtomicUsize>,
    excluded: Arc<std::sync::Mutex<Exclusions>>,
    pub clock: Clock,
}

impl CoreHandle {
    pub async fn send(&self, msg: CoreMsg) {
        // The loop lives as long as the process; a closed channel means we are shutting down.
        let _ = self.tx.send(msg).await;
    }

    /// Runs one batch to completion (or failure) on the cluster.
    pub async fn run_batch(
        &self,
        sub: BatchSubmission,
        code: JobCode,
    ) -> Result<BatchReport, BatchFailure> {
        let (reply, rx) = oneshot::channel();
        self.send(CoreMsg::Submit { sub, code, reply }).await;
        rx.await
            .map_err(|_| Failure::new(FailureKind::Outage, "driver is shutting down"))?
    }

    /// The executors, their history and the running batches, as the scheduler sees them now.
    pub async fn snapshot(&self) -> Snapshot {
        let (reply, rx) = oneshot::channel();
        self.send(CoreMsg::Query { reply }).await;
        rx.await.unwrap_or_default()
    }

    pub fn alive_executors(&self) -> usize {
        self.alive.load(Ordering::Relaxed)
    }

    /// Executors excluded from `job_id`'s tasks for failing them.
    pub fn excluded_executors(&self, job_id: &str) -> Vec<ExecutorId> {
        self.excluded
            .lock()
            .unwrap()
            .get(job_id)
            .cloned()
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub scheduler: SchedulerConfig,
    pub executors_alive: prometheus_client::metrics::gauge::Gauge,
}

struct Conn {
    outbound: Outbound,
    last_seen: Instant,
}

pub fn start(config: CoreConfig) -> CoreHandle {
    let (tx, rx) = mpsc::channel(4096);
    let alive = Arc::new(AtomicUsize::new(0));
    let excluded = Arc::new(std::sync::Mutex::new(Exclusions::new()));
    let started = Instant::now();
    let clock = Clock {
        epoch_at_start_ms: sluice_core::now_ms(),
    };
    let core = Core {
        scheduler: Scheduler::with_config(config.scheduler),
        stages_started: HashSet::new(),
        excluded: excluded.clone(),
        conns: HashMap::new(),
        waiting: HashMap::new(),
        cancelling: HashMap::new(),
        code: HashMap::new(),
        started,
        alive: alive.clone(),
        config,
        submissions: 0,
        panic_at_submission: std::env::var("SLUICE_TEST_PANIC_SCHEDULER_AT")
            .ok()
            .and_then(|v| v.parse().ok()),
    };
    tokio::spawn(async move {
        // Every job depends on the event loop: if it panics, no job can be judged failed by
        // it. Exit non-zero and let the next driver resume them all from their checkpoints.
        if let Err(e) = tokio::spawn(core.run(rx)).await
            && let Ok(payload) = e.try_into_panic()
        {
            let text = sluice_core::failure::panic_text(&*payload);
            tracing::error!("the scheduler's event loop panicked: {text}; exiting");
            std::process::exit(70);
        }
    });
    CoreHandle {
        tx,
        alive,
        excluded,
        clock,
    }
}

struct Core {
    scheduler: Scheduler,
    /// Stage attempts already announced in the log.
    stages_started: HashSet<StageAttemptId>,
    excluded: Arc<std::sync::Mutex<Exclusions>>,
    conns: HashMap<ExecutorId, Conn>,
    waiting: HashMap<JobId, oneshot::Sender<Result<BatchReport, BatchFailure>>>,
    /// Stopped jobs whose tasks still run somewhere, and who waits for them to end.
    cancelling: HashMap<JobId, Vec<oneshot::Sender<()>>>,
    code: HashMap<JobId, JobCode>,
    started: Instant,
    alive: Arc<AtomicUsize>,
    config: CoreConfig,
    /// Batches submitted so far, and (test only, from SLUICE_TEST_PANIC_SCHEDULER_AT) the
    /// submission at which the loop panics, as a bug in it would.
    submissions: u64,
    panic_at_submission: Option<u64>,
}

impl Core {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run(mut self, mut rx: mpsc::Receiver<CoreMsg>) {
        let mut liveness = tokio::time::interval(
            self.config
                .heartbeat_interval
                .min(Duration::from_millis(250)),
        );
        loop {
            let now = self.now_ms();
            let wake = self
                .scheduler
                .next_wakeup_ms(now)
                .map(|t| Duration::from_millis(t - now))
                .unwrap_or(Duration::from_secs(3600));
            let events = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.on_message(msg),
                    None => return,
                },
                _ = tokio::time::sleep(wake) => vec![Event::Tick],
                _ = liveness.tick() => self.expired(),
            };
            // A wake-up that lost the race to a heartbeat is not computed again (the due task
            // is no longer in the future), so every turn of the loop lets the scheduler
            // dispatch: without this a retry whose backoff ended while a heartbeat was being
            // handled waited for an event that never came, and its job hung.
            let events = match events.is_empty() {
                true => vec![Event::Tick],
                false => events,
            };
            let mut events = std::collections::VecDeque::from(events);
            while let Some(event) = events.pop_front() {
                let now = self.now_ms();
                let actions = self.scheduler.handle(event, now);
                events.extend(self.apply(actions));
            }
            self.answer_cancelled();
            let alive = self.scheduler.alive_executors();
            self.alive.store(alive, Ordering::Relaxed);
            self.config.executors_alive.set(alive as i64);
            *self.excluded.lock().unwrap() = self.scheduler.exclusions_by_job(self.now_ms());
        }
    }

    fn on_message(&mut self, msg: CoreMsg) -> Vec<Event> {
        match msg {
            CoreMsg::Register {
                id,
                address,
                slots,
                outbound,
            } => {
                tracing::info!(executor = %id, %address, slots, "executor registered");
                self.conns.insert(
                    id.clone(),
                    Conn {
                        outbound,
                        last_seen: Instant::now(),
                    },
                );
                vec![Event::ExecutorRegistered { id, address, slots }]
            }
            CoreMsg::Heartbeat { id } => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.last_seen = Instant::now();
                }
                vec![]
            }
            CoreMsg::Draining { id } => {
                tracing::info!(executor = %id, "executor draining: no new tasks");
                vec![Event::ExecutorDraining { id }]
            }
            CoreMsg::Result { executor, result } => {
                if let Some(c) = self.conns.get_mut(&executor) {
                    c.last_seen = Instant::now();
                }
                vec![result_event(executor, result)]
            }
            CoreMsg::Lost { id, reason } => {
                self.conns.remove(&id);
                vec![Event::ExecutorLost { id, reason }]
            }
            CoreMsg::Submit { sub, code, reply } => {
                tracing::info!(job = %sub.job_id, batch = sub.batch_id, splits = sub.splits.values().map(Vec::len).sum::<usize>(), "batch submitted");
                self.submissions += 1;
                if self.panic_at_submission == Some(self.submissions) {
                    panic!("injected panic (SLUICE_TEST_PANIC_SCHEDULER_AT)");
                }
                self.code.insert(sub.job_id.clone(), code);
                self.waiting.insert(sub.job_id.clone(), reply);
                vec![Event::SubmitBatch(sub)]
            }
            CoreMsg::Query { reply } => {
                let _ = reply.send(Snapshot {
                    executors: self.scheduler.executor_views(),
                    history: self.scheduler.executor_history().cloned().collect(),
                    running: self.scheduler.running_batches().collect(),
                });
                vec![]
            }
            CoreMsg::Cancel { job_id, done } => {
                self.waiting.remove(&job_id);
                self.cancelling
                    .entry(job_id.clone())
                    .or_default()
                    .push(done);
                vec![Event::CancelJob { job_id }]
            }
            CoreMsg::Ended { job_id } => {
                self.waiting.remove(&job_id);
                self.code.remove(&job_id);
                self.broadcast(ReleaseShuffle {
                    job_id: job_id.to_string(),
                    up_to_batch: u64::MAX,
                    job_ended: true,
                });
                vec![Event::CancelJob { job_id }]
            }
        }
    }

    /// Tells whoever stopped a job once its last task is gone (reported, or its executor lost).
    fn answer_cancelled(&mut self) {
        let scheduler = &self.scheduler;
        self.cancelling.retain(|job, waiters| {
            if scheduler.running_tasks_of(job) > 0 {
                return true;
            }
            for done in waiters.drain(..) {
                let _ = done.send(());
            }
            false
        });
    }

    /// Executors whose heartbeats stopped (a hung or partitioned process).
    fn expired(&mut self) -> Vec<Event> {
        let timeout = self.config.heartbeat_timeout;
        let dead: Vec<ExecutorId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.last_seen.elapsed() > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        dead.into_iter()
            .map(|id| {
                self.conns.remove(&id);
                Event::ExecutorLost {
                    id,
                    reason: format!("no heartbeat for {} ms", timeout.as_millis()),
                }
            })
            .collect()
    }

    fn broadcast(&self, release: ReleaseShuffle) {
        let msg = DriverMessage {
            kind: Some(DriverKind::Release(release)),
        };
        for conn in self.conns.values() {
            let _ = conn.outbound.try_send(Ok(msg.clone()));
        }
    }

    /// Carries out the scheduler's actions without ever waiting on an executor's stream: one
    /// that is full belongs to an executor that stopped reading, which is then lost (the
    /// returned events say so).
    fn apply(&mut self, actions: Vec<Action>) -> Vec<Event> {
        let mut lost = Vec::new();
        for action in actions {
            match action {
                Action::Launch { executor, task } => {
                    if !self.conns.contains_key(&executor) {
                        continue;
                    }
                    let k = &task.key;
                    let stage = StageAttemptId {
                        job: k.job_id.clone(),
                        batch: k.batch_id,
                        stage: k.stage_id,
                        attempt: k.stage_attempt,
                    };
                    if self.stages_started.insert(stage) {
                        tracing::info!(
                            job = %k.job_id,
                            batch = k.batch_id,
                            stage = k.stage_id,
                            stage_attempt = k.stage_attempt,
                            "stage started"
                        );
                    }
                    let code = self.code.get(&task.key.job_id).cloned().unwrap_or_default();
                    let msg = DriverMessage {
                        kind: Some(DriverKind::Launch(LaunchTask {
                            key: Some(to_proto_key(&task.key)),
                            sql: code.sql.to_string(),
                            checkpoint_uri: code.checkpoint_uri.to_string(),
                            source_split: task.split.unwrap_or_default(),
                            source_table: task.source.unwrap_or_default(),
                            broadcast: task
                                .broadcast
                                .into_iter()
                                .map(|(t, splits)| (t, sluice_proto::StaticFiles { splits }))
                                .collect(),
                            inputs: task
                                .inputs
                                .into_iter()
                                .map(|l| sluice_proto::MapOutputLocation {
                                    stage_id: l.stage_id,
                                    map_partition: l.map_partition,
                                    stage_attempt: l.stage_attempt,
                                    executor_id: l.executor_id.into(),
                                    address: l.address,
                                })
                                .collect(),
                            range_bounds: task.range_bounds,
                            output_partitions: task.output_partitions,
                            timeout_ms: task.timeout_ms,
                            watermark_ms: task.watermark_ms,
                            previous_watermark_ms: task.previous_watermark_ms,
                        })),
                    };
                    if let Some(event) = self.send(&executor, msg) {
                        lost.push(event);
                    }
                }
                Action::BatchDone {
                    job_id,
                    batch_id,
                    report,
                } => {
                    self.stages_started.retain(|s| s.job != job_id);
                    tracing::info!(job = %job_id, batch = batch_id, rows_in = report.rows_in, ms = report.duration_ms, rerun = report.tasks_rerun, "batch tasks done");
                    if let Some(reply) = self.waiting.remove(&job_id) {
                        let _ = reply.send(Ok(report));
                    }
                    self.broadcast(ReleaseShuffle {
                        job_id: job_id.to_string(),
                        up_to_batch: batch_id,
                        job_ended: false,
                    });
                }
                Action::CancelTasks { executor, job_id } => {
                    tracing::info!(job = %job_id, %executor, "cancelling the job's tasks");
                    let msg = DriverMessage {
                        kind: Some(DriverKind::Cancel(sluice_proto::CancelTasks {
                            job_id: job_id.into(),
                        })),
                    };
                    if let Some(event) = self.send(&executor, msg) {
                        lost.push(event);
                    }
                }
                Action::BatchFailed {
                    job_id,
                    batch_id,
                    failure,
                    trace,
                } => {
                    self.stages_started.retain(|s| s.job != job_id);
                    tracing::error!(job = %job_id, batch = batch_id, "batch failed: {failure}");
                    if let Some(reply) = self.waiting.remove(&job_id) {
                        let trace = Some(trace);
                        let _ = reply.send(Err(BatchFailure { failure, trace }));
                    }
                }
            }
        }
        lost
    }

    /// Queues a message on an executor's stream; the loss event when it cannot take it.
    fn send(&mut self, executor: &str, msg: DriverMessage) -> Option<Event> {
        let conn = self.conns.get(executor)?;
        match conn.outbound.try_send(Ok(msg)) {
            Ok(()) => None,
            // The stream is gone; its reader reports the loss and the task reruns.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!(%executor, "send failed: executor stream closed");
                None
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%executor, "executor stopped reading its stream; declaring it lost");
                self.conns.remove(executor);
                Some(Event::ExecutorLost {
                    id: executor.into(),
                    reason: "its control stream is full (it stopped reading)".into(),
                })
            }
        }
    }
}

pub fn to_proto_key(k: &TaskKey) -> sluice_proto::TaskKey {
    sluice_proto::TaskKey {
        job_id: k.job_id.to_string(),
        run: k.run,
        batch_id: k.batch_id,
        stage_id: k.stage_id,
        stage_attempt: k.stage_attempt,
        partition: k.partition,
        task_attempt: k.task_attempt,
    }
}

fn result_event(executor: ExecutorId, r: TaskResult) -> Event {
    let k = r.key.unwrap_or_default();
    let key = TaskKey {
        job_id: k.job_id.into(),
        run: k.run,
        batch_id: k.batch_id,
        stage_id: k.stage_id,
        stage_attempt: k.stage_attempt,
        partition: k.partition,
        task_attempt: k.task_attempt,
    };
    if r.ok {
        Event::TaskSucceeded {
            key,
            executor,
            output: sluice_proto::progress_from_wire(r.metrics, r.payloads),
        }
    } else {
        Event::TaskFailed {
            key,
            executor,
            failure: Failure::new(
                sluice_proto::FailureKind::try_from(r.failure_kind)
                    .unwrap_or_default()
                    .into(),
                r.error,
            ),
            fetch_failure: r.fetch_failure.map(|f| sluice_scheduler::UnfetchedOutput {
                map_partition: f.map_partition,
                executor: f.executor_id.into(),
            }),
        }
    }
}
