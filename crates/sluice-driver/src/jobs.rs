//! The job catalog: submitted jobs, their live status, and their runners.

use crate::core::CoreHandle;
use crate::metrics::DriverMetrics;
use crate::model::{self, BatchLog, BatchRecorder};
use crate::runner::JobRunner;
use sluice_checkpoint::{JobCheckpoint, JobMetadata};
use sluice_connectors::store::Location;
use sluice_core::{BatchId, Failure, FailureKind, JobId, JobState, now_ms};
use sluice_proto::JobStatus;
use sluice_sql::{CompiledJob, SqlError};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Batches kept in a job's status for `sluice status` and `sluice local`.
const RECENT_BATCHES: usize = 50;

struct JobEntry {
    status: JobStatus,
    stop: watch::Sender<bool>,
    /// Its recent batches in detail (stages, attempts, phases).
    batches: BatchLog,
    /// Its plan as the web UI shows it; none for a job that ended before this driver started.
    plan: Option<Arc<sluice_ui::JobPlan>>,
}

#[derive(Clone)]
pub struct Registry {
    jobs: Arc<Mutex<BTreeMap<JobId, JobEntry>>>,
    core: CoreHandle,
    state: Location,
    pub metrics: DriverMetrics,
    /// Set on SIGTERM: no job starts another batch.
    draining: Arc<AtomicBool>,
    /// Batches between "input decided" and "committed" (or failed).
    in_flight: Arc<AtomicUsize>,
    /// What jobs may touch (paths, Kafka client properties); checked at submit and resume.
    policy: Arc<crate::policy::JobPolicy>,
}

/// Counts a batch in flight while it lives.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Registry {
    pub fn new(
        core: CoreHandle,
        state: Location,
        metrics: DriverMetrics,
        policy: crate::policy::JobPolicy,
    ) -> Self {
        Registry {
            policy: Arc::new(policy),
            jobs: Arc::default(),
            core,
            state,
            metrics,
            draining: Arc::default(),
            in_flight: Arc::default(),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn batch_started(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.in_flight.clone())
    }

    /// SIGTERM: jobs start no new batch, and the running ones get up to `grace` to commit.
    /// A batch still running after that is abandoned; its input is logged, so the next driver
    /// reruns it exactly. Nothing is marked stopped: every job resumes on restart.
    pub async fn drain(&self, grace: std::time::Duration) {
        self.draining.store(true, Ordering::SeqCst);
        let running = self.in_flight.load(Ordering::SeqCst);
        tracing::info!(
            running,
            grace_ms = grace.as_millis() as u64,
            "SIGTERM: finishing running batches, starting no new ones"
        );
        let deadline = tokio::time::Instant::now() + grace;
        while self.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        match self.in_flight.load(Ordering::SeqCst) {
            0 => tracing::info!("every running batch committed; exiting"),
            n => tracing::warn!(
                abandoned = n,
                "grace period over; the abandoned batches rerun on restart"
            ),
        }
    }

    /// Submits a job file: one job per INSERT statement. Every part is checked before any
    /// starts, so a bad file starts nothing.
    pub async fn submit_file(&self, sql: String, origin: String) -> Result<Vec<String>, Failure> {
        let parts = sluice_sql::split_inserts(&sql, &origin).map_err(SqlError::into_failure)?;
        if parts.len() == 1 {
            return Ok(vec![self.submit(sql, origin, false).await?]);
        }
        for part in &parts {
            let job = CompiledJob::compile(part, &origin)
                .await
                .map_err(SqlError::into_failure)?;
            self.policy.check(&job)?;
        }
        let mut ids = Vec::new();
        for part in parts {
            ids.push(self.submit(part, origin.clone(), true).await?);
        }
        Ok(ids)
    }

    /// Checks and plans one job's SQL, records it in the catalog and starts its runner.
    /// `by_sink`: the job is one INSERT of several; its name says which sink it writes.
    pub async fn submit(
        &self,
        sql: String,
        origin: String,
        by_sink: bool,
    ) -> Result<String, Failure> {
        let compiled = CompiledJob::compile(&sql, &origin)
            .await
            .map_err(SqlError::into_failure)?;
        self.policy.check(&compiled)?;
        let job_id = uuid::Uuid::new_v4().to_string();
        let mut name = compiled.name(&origin);
        if by_sink {
            name = format!("{name}:{}", compiled.sink_table);
        }
        let checkpoint = self.checkpoint(&job_id);
        let submitted_at_ms = now_ms();
        checkpoint
            .write_metadata(&JobMetadata {
                job_id: job_id.clone(),
                name: name.clone(),
                sql: sql.clone(),
                origin,
                submitted_at_ms,
                plan_fingerprint: fingerprint(&compiled),
            })
            .await
            .map_err(stored)?;
        tracing::info!(job = %job_id, %name, stages = compiled.fragments.len(), "job submitted");
        let status = JobStatus {
            job_id: job_id.clone(),
            name,
            state: sluice_proto::JobState::Running.into(),
            submitted_at_ms,
            checkpoint_uri: checkpoint.uri().to_string(),
            ..Default::default()
        };
        self.start(status, &sql, compiled, checkpoint, "");
        Ok(job_id)
    }

    /// Continues an ended job from its checkpoint with changed SQL, after checking that the
    /// change is safe for what the checkpoint holds (its offsets log and its state).
    pub async fn resume(
        &self,
        job_id: &str,
        sql: String,
        origin: String,
    ) -> Result<String, Failure> {
        match self.get(job_id) {
            None => return Err(refused(format!("no job '{job_id}' to resume"))),
            Some(s) if s.job_state().is_active() => {
                return Err(refused(format!(
                    "job '{job_id}' is {}; stop it first (sluice stop {job_id})",
                    s.job_state()
                )));
            }
            Some(_) => {}
        }
        let compiled = CompiledJob::compile(&sql, &origin)
            .await
            .map_err(SqlError::into_failure)?;
        self.policy.check(&compiled)?;
        let checkpoint = self.checkpoint(job_id);
        let (revision, previous) = checkpoint
            .current_metadata()
            .await
            .map_err(stored)?
            .ok_or_else(|| refused(format!("{}: no metadata", checkpoint.uri())))?;
        let before = CompiledJob::compile(&previous.sql, &previous.origin)
            .await
            .map_err(|e| {
                e.into_failure()
                    .context("the checkpoint's own SQL no longer plans")
            })?;
        compiled
            .check_compatible(&before)
            .map_err(SqlError::into_failure)?;
        let name = compiled.name(&origin);
        checkpoint
            .write_revision(
                revision + 1,
                &JobMetadata {
                    job_id: job_id.to_string(),
                    name: name.clone(),
                    sql: sql.clone(),
                    origin,
                    submitted_at_ms: now_ms(),
                    plan_fingerprint: fingerprint(&compiled),
                },
            )
            .await
            .map_err(stored)?;
        checkpoint.clear_final().await.map_err(stored)?;
        let mut status = self.get(job_id).expect("checked above");
        status.name = name;
        status.set_job_state(JobState::Running);
        status.error.clear();
        tracing::info!(job = %job_id, revision = revision + 1, "job resumed with new SQL");
        self.start(status, &sql, compiled, checkpoint, model::RESUME);
        Ok(job_id.to_string())
    }

    fn checkpoint(&self, job_id: &str) -> JobCheckpoint {
        JobCheckpoint::new(
            self.state.store.clone(),
            self.state.child(&format!("jobs/{job_id}")),
            format!("{}/jobs/{job_id}", self.state.uri.trim_end_matches('/')),
        )
    }

    /// Registers a job's status and starts its batch loop; `started_after` says why it
    /// starts again, if it does (`model::DRIVER_RESTART`, `model::RESUME`).
    fn start(
        &self,
        status: JobStatus,
        sql: &str,
        job: CompiledJob,
        checkpoint: JobCheckpoint,
        started_after: &'static str,
    ) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let job_id = JobId::from(&status.job_id);
        let plan = Arc::new(crate::ui::job_plan(&job));
        let runner = JobRunner {
            job_id: job_id.clone(),
            started_at_ms: status.submitted_at_ms,
            sql: Arc::from(sql),
            job,
            checkpoint,
            core: self.core.clone(),
            registry: self.clone(),
            stop: stop_rx,
            started_after,
        };
        {
            // A resumed job keeps the batches this driver already ran for it.
            let mut jobs = self.jobs.lock().unwrap();
            let batches = jobs.remove(&job_id).map(|e| e.batches).unwrap_or_default();
            let entry = JobEntry {
                status,
                stop: stop_tx,
                batches,
                plan: Some(plan),
            };
            jobs.insert(job_id.clone(), entry);
        }
        let registry = self.clone();
        tokio::spawn(async move {
            // A panic in one job's loop is that job's bug: it fails that job, not the driver.
            if let Err(e) = tokio::spawn(runner.run()).await
                && let Ok(payload) = e.try_into_panic()
            {
                let text = sluice_core::failure::panic_text(&*payload);
                registry.fail_after_panic(&job_id, &text).await;
            }
        });
    }

    async fn fail_after_panic(&self, job_id: &str, text: &str) {
        let failure = sluice_core::Failure::new(
            sluice_core::FailureKind::Bug,
            format!("the job's batch loop panicked: {text}"),
        );
        tracing::error!(job = %job_id, "{failure}");
        self.core
            .send(crate::core::CoreMsg::Ended {
                job_id: job_id.into(),
            })
            .await;
        let end = sluice_checkpoint::FinalState {
            state: JobState::Failed.name().to_string(),
            error: failure.to_string(),
            at_ms: now_ms(),
        };
        if let Err(e) = self.checkpoint(job_id).write_final(&end).await {
            tracing::error!(job = %job_id, "cannot record how the job ended: {e}");
        }
        self.update(job_id, |s| {
            s.set_job_state(JobState::Failed);
            s.error = failure.to_string();
        });
    }

    /// Reads the job catalog under --state and resumes every job that had not ended: each one
    /// reruns its last logged but uncommitted batch with exactly its logged input. A job whose
    /// checkpoint cannot be read is reported failed, naming the file; the others resume.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        let prefix = self.state.child("jobs");
        let listing = match self.state.store.list_with_delimiter(Some(&prefix)).await {
            Ok(l) => l.common_prefixes,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut resumed = 0;
        for dir in listing {
            let Some(job_id) = dir.filename().map(str::to_string) else {
                continue;
            };
            match self.recover_job(&job_id).await {
                Ok(started) => resumed += usize::from(started),
                Err(e) => {
                    tracing::error!(job = %job_id, "cannot resume: {e}");
                    let status = JobStatus {
                        job_id: job_id.clone(),
                        name: job_id.clone(),
                        state: sluice_proto::JobState::Failed.into(),
                        error: format!("cannot resume: {e}"),
                        ..Default::default()
                    };
                    self.insert_ended(status);
                }
            }
        }
        Ok(resumed)
    }

    /// Rebuilds one job's status from its checkpoint and starts its runner unless it ended;
    /// true when it was started.
    async fn recover_job(&self, job_id: &str) -> Result<bool, sluice_checkpoint::CheckpointError> {
        let checkpoint = self.checkpoint(job_id);
        let Some((_, meta)) = checkpoint.current_metadata().await? else {
            tracing::warn!(job = %job_id, "no metadata; not a job, skipped");
            return Ok(false);
        };
        let mut status = JobStatus {
            job_id: job_id.to_string(),
            name: meta.name.clone(),
            state: sluice_proto::JobState::Running.into(),
            submitted_at_ms: meta.submitted_at_ms,
            checkpoint_uri: checkpoint.uri().to_string(),
            ..Default::default()
        };
        for b in checkpoint.batches("commits").await? {
            if let Some(c) = checkpoint.read_commit(b).await? {
                status.batches_committed += 1;
                status.rows_in += c.rows_in;
                status.rows_out += c.rows_out;
            }
        }
        if let Some(end) = checkpoint.read_final().await? {
            status.set_job_state(JobState::from_name(&end.state).unwrap_or(JobState::Failed));
            status.error = end.error;
            self.insert_ended(status);
            return Ok(false);
        }
        match CompiledJob::compile(&meta.sql, &meta.origin).await {
            Ok(job) => {
                tracing::info!(job = %job_id, name = %meta.name, "resuming job");
                self.start(status, &meta.sql, job, checkpoint, model::DRIVER_RESTART);
                Ok(true)
            }
            Err(e) => {
                status.set_job_state(JobState::Failed);
                status.error = format!("cannot resume: {e}");
                self.insert_ended(status);
                Ok(false)
            }
        }
    }

    /// Records a job that has ended (or cannot run) in the catalog, without a runner.
    fn insert_ended(&self, status: JobStatus) {
        let (stop, _) = watch::channel(true);
        self.jobs.lock().unwrap().insert(
            JobId::from(&status.job_id),
            JobEntry {
                status,
                stop,
                batches: BatchLog::default(),
                plan: None,
            },
        );
    }

    /// Records where a batch of the job is; `new_run` when it (re)starts.
    pub fn record_batch(&self, job_id: &str, batch: &BatchRecorder, new_run: bool) {
        if let Some(e) = self.jobs.lock().unwrap().get_mut(job_id) {
            let d = &batch.detail;
            e.status.running_batch =
                (d.outcome() == sluice_proto::BatchOutcome::Running).then_some(d.batch_id);
            e.batches.record(d.clone(), new_run);
        }
    }

    /// A batch of the job in detail; a running one with its tasks as far as they got.
    pub async fn batch(
        &self,
        job_id: &str,
        batch: BatchId,
    ) -> Result<sluice_proto::BatchDetail, tonic::Status> {
        let found = {
            let jobs = self.jobs.lock().unwrap();
            let e = jobs
                .get(job_id)
                .ok_or_else(|| tonic::Status::not_found(format!("no job '{job_id}'")))?;
            e.batches.get(batch).cloned().ok_or_else(|| {
                let kept = match e.batches.oldest() {
                    Some(b) => format!("this driver keeps batches {b} and later"),
                    None => "this driver has run none of its batches yet".into(),
                };
                tonic::Status::not_found(format!(
                    "job '{job_id}' has no batch {batch} here ({kept}; `sluice checkpoint inspect` reads every logged batch)"
                ))
            })?
        };
        let mut detail = found;
        if detail.outcome() == sluice_proto::BatchOutcome::Running {
            let snapshot = self.core.snapshot().await;
            if let Some(trace) = snapshot
                .running
                .iter()
                .find(|t| t.job_id == job_id && t.batch_id == batch)
            {
                detail.stages = crate::model::stage_details(trace, self.core.clock);
            }
        }
        Ok(detail)
    }

    /// Every batch the driver keeps of a job, oldest first, as last recorded.
    pub fn batch_log(&self, job_id: &str) -> Vec<sluice_proto::BatchDetail> {
        let jobs = self.jobs.lock().unwrap();
        jobs.get(job_id)
            .map_or_else(Vec::new, |e| e.batches.iter().cloned().collect())
    }

    /// The job's plan, when this driver compiled it.
    pub fn plan(&self, job_id: &str) -> Option<Arc<sluice_ui::JobPlan>> {
        self.jobs.lock().unwrap().get(job_id)?.plan.clone()
    }

    /// What a job's checkpoint holds (`sluice checkpoint inspect --json`); `None` for a job the
    /// driver does not know.
    pub async fn describe_checkpoint(
        &self,
        job_id: &str,
    ) -> Option<anyhow::Result<serde_json::Value>> {
        self.get(job_id)?;
        Some(crate::inspect::describe(&self.checkpoint(job_id)).await)
    }

    /// The executors and their drains and losses.
    pub async fn cluster(&self) -> sluice_proto::ClusterStatus {
        let snapshot = self.core.snapshot().await;
        crate::model::cluster_status(&snapshot, self.core.clock)
    }

    pub fn update(&self, job_id: &str, f: impl FnOnce(&mut JobStatus)) {
        if let Some(e) = self.jobs.lock().unwrap().get_mut(job_id) {
            f(&mut e.status);
            let n = e.status.recent_batches.len();
            if n > RECENT_BATCHES {
                e.status.recent_batches.drain(..n - RECENT_BATCHES);
            }
        }
    }

    fn view(&self, status: &JobStatus) -> JobStatus {
        let mut s = status.clone();
        s.executors = self.core.alive_executors() as u32;
        s.excluded_executors = self
            .core
            .excluded_executors(&s.job_id)
            .into_iter()
            .map(String::from)
            .collect();
        if s.job_state() == JobState::Running && s.executors == 0 {
            s.set_job_state(JobState::Waiting);
            if s.error.is_empty() {
                s.error = "no executors registered; waiting for one".into();
            }
        }
        s
    }

    pub fn list(&self) -> Vec<JobStatus> {
        let jobs = self.jobs.lock().unwrap();
        jobs.values()
            .map(|e| {
                let mut s = self.view(&e.status);
                s.recent_batches.clear();
                s
            })
            .collect()
    }

    pub fn get(&self, job_id: &str) -> Option<JobStatus> {
        let jobs = self.jobs.lock().unwrap();
        jobs.get(job_id).map(|e| self.view(&e.status))
    }

    /// Asks a job to stop; returns its state (already final jobs stay as they are).
    pub async fn stop(&self, job_id: &str) -> Option<JobState> {
        let rx = {
            let jobs = self.jobs.lock().unwrap();
            let e = jobs.get(job_id)?;
            if e.status.job_state() != JobState::Running {
                return Some(e.status.job_state());
            }
            let _ = e.stop.send(true);
            e.stop.subscribe()
        };
        drop(rx);
        // The runner notices at once and waits for the job's running tasks to be cancelled,
        // which a lost executor bounds by the heartbeat timeout; report what it ends up as.
        for _ in 0..3000 {
            if let Some(s) = self.get(job_id)
                && !s.job_state().is_active()
            {
                return Some(s.job_state());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.get(job_id).map(|s| s.job_state())
    }
}

/// A submission the job's own content or state rules out: retrying the same request cannot help.
fn refused(message: impl std::fmt::Display) -> Failure {
    Failure::new(FailureKind::BadPlan, message.to_string())
}

/// The checkpoint could not be written or read: an outage unless the store refused us for good.
fn stored(e: sluice_checkpoint::CheckpointError) -> Failure {
    Failure::new(e.kind(), e.to_string())
}

/// Identifies the plan's shape, recorded in the metadata for inspection.
fn fingerprint(job: &CompiledJob) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{:?}", job.stage_specs()).hash(&mut h);
    format!("{:016x}", h.finish())
}
