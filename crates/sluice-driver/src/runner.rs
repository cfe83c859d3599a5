//! One job's batch loop: trigger -> plan the input -> write-ahead offsets -> run the stages on
//! the cluster -> commit the sink -> write the commit. This file is the place to follow a batch
//! from start to end.

use crate::core::{BatchFailure, CoreHandle, CoreMsg, JobCode};
use crate::jobs::Registry;
use crate::model::{self, BatchRecorder};
use sluice_checkpoint::{CommitEntry, FinalState, JobCheckpoint, OffsetsEntry};
use sluice_connectors::{ConnectorError, PlanContext, Position, render_console};
use sluice_core::progress;
use sluice_core::restart::Restarts;
use sluice_core::watermark::{EventTime, Watermarks};
use sluice_core::{
    BatchId, Failure as JobFailure, FailureKind, JobId, JobState, SourceSplit, Trigger, now_ms,
};
use sluice_proto::{BatchOutcome, BatchStatus};
use sluice_scheduler::{BatchReport, BatchSubmission};
use sluice_sql::CompiledJob;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often an idle job with an as-fast-as-possible trigger looks for new input.
const IDLE_POLL: Duration = Duration::from_millis(100);

pub struct JobRunner {
    pub job_id: JobId,
    /// When the job was submitted: rate-based sources count from here, across driver restarts.
    pub started_at_ms: u64,
    pub sql: Arc<str>,
    pub job: CompiledJob,
    pub checkpoint: JobCheckpoint,
    pub core: CoreHandle,
    pub registry: Registry,
    pub stop: watch::Receiver<bool>,
    /// Why the loop starts again, if it does (`model::DRIVER_RESTART`, ...), for its first
    /// batch's record.
    pub started_after: &'static str,
}

enum End {
    Finished,
    Stopped,
}

/// Why a job's loop ended early.
enum Failure {
    /// Another driver wrote the same checkpoint entry first: it owns the job now.
    Fenced(String),
    /// The job failed; the failure's kind says whether a restart from the checkpoint may help.
    Failed(JobFailure),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Fenced(e) => write!(f, "{e}"),
            Failure::Failed(e) => write!(f, "{e}"),
        }
    }
}

impl From<JobFailure> for Failure {
    fn from(f: JobFailure) -> Self {
        Failure::Failed(f)
    }
}

fn checkpoint_failure(e: sluice_checkpoint::CheckpointError) -> Failure {
    match e {
        sluice_checkpoint::CheckpointError::Fenced { .. } => Failure::Fenced(e.to_string()),
        other => Failure::Failed(JobFailure::new(other.kind(), other.to_string())),
    }
}

impl JobRunner {
    pub async fn run(mut self) {
        let mut restarts = Restarts::new(self.job.settings.restart.clone());
        let outcome = loop {
            let result = self.run_batches().await;
            self.started_after = model::JOB_RESTART;
            if matches!(result, Err(Failure::Failed(_))) {
                self.registry.metrics.batch_failed(&self.job_id);
            }
            match result {
                Err(Failure::Failed(e)) if e.retryable() => match restarts.on_failure(now_ms()) {
                    Ok(delay) => {
                        tracing::warn!(
                            job = %self.job_id,
                            restart = restarts.restarts(),
                            delay_ms = delay.as_millis() as u64,
                            "restarting the job from its checkpoint: {e}"
                        );
                        self.registry.update(&self.job_id, |s| {
                            s.restarts = restarts.restarts();
                            s.error = format!("restarting after: {e}");
                        });
                        if !self.sleep_until(Instant::now() + delay).await {
                            break Ok(End::Stopped);
                        }
                        self.registry.update(&self.job_id, |s| s.error.clear());
                    }
                    Err(why) => {
                        break Err(Failure::Failed(e.context(format!("not restarted: {why}"))));
                    }
                },
                other => break other,
            }
        };
        self.core
            .send(CoreMsg::Ended {
                job_id: self.job_id.clone(),
            })
            .await;
        let (st, error) = match outcome {
            Ok(End::Finished) => (JobState::Finished, String::new()),
            Ok(End::Stopped) => (JobState::Stopped, String::new()),
            Err(Failure::Failed(e)) => (JobState::Failed, e.to_string()),
            Err(Failure::Fenced(e)) => {
                // The job is not ours to end: leave its checkpoint to the driver that fenced us.
                tracing::error!(job = %self.job_id, "{e}");
                self.registry.update(&self.job_id, |s| {
                    s.set_job_state(JobState::Failed);
                    s.error = e;
                });
                return;
            }
        };
        if error.is_empty() {
            tracing::info!(job = %self.job_id, "job {st}");
        } else {
            tracing::error!(job = %self.job_id, "job failed: {error}");
        }
        let end = FinalState {
            state: st.name().to_string(),
            error: error.clone(),
            at_ms: now_ms(),
        };
        if let Err(e) = self.checkpoint.write_final(&end).await {
            tracing::error!(job = %self.job_id, "cannot record how the job ended: {e}");
        }
        self.registry.update(&self.job_id, |s| {
            s.set_job_state(st);
            s.error = error;
        });
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    async fn run_batches(&mut self) -> Result<End, Failure> {
        let trigger = self.job.settings.trigger;
        let job_start_ms = self.started_at_ms;
        let (mut progress, mut next_batch, mut pending, mut watermarks, mut last_watermark) =
            self.recover().await?;
        let interval = match trigger {
            Trigger::ProcessingTime(d) => d,
            _ => Duration::ZERO,
        };
        let mut next_trigger = Instant::now();
        let mut housekeeping = crate::housekeeping::Housekeeping::default();
        loop {
            if self.stopped() {
                return Ok(End::Stopped);
            }
            let mut phases = Vec::new();
            let (entry, exhausted) = match pending.take() {
                // A batch logged but never committed: rerun it with exactly its logged input.
                Some(entry) => (entry, false),
                None => {
                    if !self.sleep_until(next_trigger).await {
                        return Ok(End::Stopped);
                    }
                    if self.registry.is_draining() {
                        // The process is about to exit; the job resumes with the next driver.
                        std::future::pending::<()>().await;
                    }
                    self.test_pause("before_offsets", next_batch).await;
                    let planning = Instant::now();
                    let ctx = PlanContext {
                        now_ms: now_ms(),
                        job_start_ms,
                        trigger,
                        default_splits: self.job.settings.partitions,
                    };
                    let planned = self.plan_sources(&progress, &ctx).await?;
                    if let Some(lag) = planned.backlog {
                        self.registry.metrics.kafka_lag(&self.job_id, lag);
                        let by_partition = planned.lag.clone();
                        self.registry
                            .update(&self.job_id, |s| s.source_lag = by_partition);
                    }
                    let tick = Instant::now();
                    next_trigger = (next_trigger + interval).max(tick);
                    if planned.splits.values().all(Vec::is_empty)
                        && !self.no_data_batch_due(&watermarks, last_watermark)
                    {
                        if planned.exhausted || trigger.is_bounded() {
                            return Ok(End::Finished);
                        }
                        if interval.is_zero() {
                            next_trigger = tick + IDLE_POLL;
                        }
                        continue;
                    }
                    let mut sources = planned.splits;
                    sources.extend(self.static_versions().await?);
                    phases.push((model::PLAN, planning.elapsed().as_millis() as u64));
                    let mut entry = OffsetsEntry {
                        batch_id: next_batch,
                        planned_at_ms: ctx.now_ms,
                        sources,
                        watermark: (!self.job.event_times.is_empty()).then(|| watermarks.clone()),
                        position: BTreeMap::new(),
                    };
                    let mut after = progress.clone();
                    self.advance(&mut after, &entry)?;
                    entry.position = logged_positions(&after);
                    // Write-ahead: the batch's input is fixed before any task runs.
                    let started = Instant::now();
                    self.checkpoint
                        .write_offsets(&entry)
                        .await
                        .map_err(checkpoint_failure)?;
                    phases.push((model::OFFSETS, started.elapsed().as_millis() as u64));
                    progress = after;
                    (entry, planned.exhausted)
                }
            };
            let batch_id = entry.batch_id;
            last_watermark = entry.watermark.as_ref().and_then(|w| w.watermark_ms);
            let mut record = BatchRecorder::begin(&self.job_id, &entry, &phases);
            record.detail.started_after = std::mem::take(&mut self.started_after).to_string();
            self.registry.record_batch(&self.job_id, &record, true);
            let _in_flight = self.registry.batch_started();
            self.test_pause("before_tasks", batch_id).await;
            let report = match self.run_batch(&entry).await {
                Ok(Some(report)) => report,
                Ok(None) => {
                    record.end(BatchOutcome::Abandoned, "the job was stopped".into());
                    self.registry.record_batch(&self.job_id, &record, false);
                    return Ok(End::Stopped);
                }
                Err(f) => {
                    if let Some(trace) = &f.trace {
                        record.stages(trace, self.core.clock);
                    }
                    record.end(BatchOutcome::Failed, f.failure.to_string());
                    self.registry.record_batch(&self.job_id, &record, false);
                    let context = format!("batch {batch_id} failed");
                    return Err(Failure::Failed(f.failure.context(context)));
                }
            };
            record.phase(model::TASKS);
            record.stages(&report.trace, self.core.clock);
            self.registry.record_batch(&self.job_id, &record, false);
            self.test_pause("before_commit", batch_id).await;
            let event_times = self.event_times_read(&report);
            if let Err(e) = self
                .commit(&entry, &report, &event_times, &mut record)
                .await
            {
                record.end(BatchOutcome::Failed, e.to_string());
                self.registry.record_batch(&self.job_id, &record, false);
                return Err(e);
            }
            // Progress reported upstream (Kafka consumer group) only once durable; the
            // checkpoint stays the source of truth, so a failure here is only a warning.
            for (table, source) in &self.job.sources {
                if let Err(e) = source.committed(&progress[table]).await {
                    tracing::warn!(job = %self.job_id, batch = batch_id, table, "{e}");
                }
            }
            // The next batch's watermark counts this one's events; it is logged with that batch.
            let policy = self.job.settings.watermark_policy;
            watermarks.committed(&event_times, &self.job.event_times, policy);
            let read = watermarks.max_event_ms.clone();
            self.registry.update(&self.job_id, |s| {
                s.max_event_ms = read.into_iter().collect()
            });
            self.test_pause("after_commit", batch_id).await;
            let retain = self.job.settings.retain_batches;
            if (batch_id + 1) % retain == 0 {
                let position = serde_json::json!(progress);
                housekeeping.start(&self.job_id, &self.checkpoint, batch_id, position, retain);
            }
            next_batch = batch_id + 1;
            // An available-now job ends once its last windows closed too.
            let closing = self.no_data_batch_due(&watermarks, last_watermark);
            if trigger == Trigger::Once || (exhausted && !closing) {
                return Ok(End::Finished);
            }
        }
    }

    /// Test only: holds the loop at `step` of `batch` so a test can kill the driver there (or
    /// panics there, as a bug in the loop would).
    async fn test_pause(&self, step: &str, batch: BatchId) {
        if self.job.settings.test_panic_at == Some((step.to_string(), batch)) {
            panic!("injected panic at {step} of batch {batch} (sluice.test.panic_at)");
        }
        if let Some((s, b, pause)) = &self.job.settings.test_pause_at
            && s == step
            && *b == batch
        {
            tracing::info!(job = %self.job_id, batch, step, "test pause");
            tokio::time::sleep(*pause).await;
        }
    }

    /// Plans every source's part of the next batch from its own position. Bad options or
    /// input stay bad; an unreachable source may come back.
    async fn plan_sources(&self, progress: &Progress, ctx: &PlanContext) -> Result<Plan, Failure> {
        let mut plan = Plan {
            splits: BTreeMap::new(),
            exhausted: true,
            backlog: None,
            lag: Vec::new(),
        };
        for (table, source) in &self.job.sources {
            let planned = source
                .plan(&progress[table], ctx)
                .await
                .map_err(|e| e.into_failure().context(format!("source table '{table}'")))?;
            plan.exhausted &= planned.exhausted;
            if let Some(lag) = planned.backlog {
                *plan.backlog.get_or_insert(0) += lag.values().sum::<u64>();
                plan.lag.extend(lag.into_iter().map(|(partition, records)| {
                    sluice_proto::SourceLag {
                        table: table.clone(),
                        partition,
                        records,
                    }
                }));
            }
            plan.splits.insert(table.clone(), planned.splits);
        }
        Ok(plan)
    }

    /// Records that a logged batch read its splits, source by source.
    fn advance(&self, progress: &mut Progress, entry: &OffsetsEntry) -> Result<(), Failure> {
        for (table, splits) in &entry.sources {
            if let (Some(p), Some(source)) = (progress.get_mut(table), self.job.sources.get(table))
            {
                source.advance(p, splits).map_err(|e| {
                    let file = format!("{}/offsets/{}", self.checkpoint.uri(), entry.batch_id);
                    JobFailure::new(
                        FailureKind::BadPlan,
                        format!("{file}: table '{table}': {e}"),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The version of every static table the batch joins (its files, sizes and ETags): logged
    /// with the batch's input so that a rerun joins the same one. A table that lists no files
    /// fails the job.
    async fn static_versions(&self) -> Result<BTreeMap<String, Vec<SourceSplit>>, Failure> {
        let mut versions = BTreeMap::new();
        for (table, source) in &self.job.statics {
            let files = source
                .list_static()
                .await
                .map_err(ConnectorError::into_failure)?;
            versions.insert(table.clone(), files);
        }
        Ok(versions)
    }

    /// Whether to run a batch without input: the watermark moved past the one the last batch
    /// ran with, and a windowed operator waits on it (Spark's no-data batches).
    fn no_data_batch_due(&self, watermarks: &Watermarks, last: Option<i64>) -> bool {
        let windowed = self
            .job
            .fragments
            .iter()
            .filter_map(|f| f.operator.as_deref())
            .any(|op| op.windowed());
        windowed && self.job.settings.no_data_batches && watermarks.watermark_ms > last
    }

    /// The largest event time each event-time source read in the batch, from its tasks'
    /// progress (`<table>.<column>.max`).
    fn event_times_read(&self, report: &BatchReport) -> BTreeMap<String, i64> {
        let read = |(table, et): (&String, &EventTime)| {
            let name = progress::column_bound(table, &et.column, "max");
            Some((table.clone(), report.metrics.get(&name)?.value))
        };
        self.job.event_times.iter().filter_map(read).collect()
    }

    /// Finds the batch to run next, every source's position before it, and the watermark state
    /// it starts from (the last logged batch's, moved on by its commit's event times when it
    /// committed). The positions come from the newest offsets entry alone when it logs them;
    /// a source it does not (a large position) is replayed from the latest compaction.
    async fn recover(&self) -> Result<Recovered, Failure> {
        let cp = &self.checkpoint;
        let logged = cp.batches("offsets").await.map_err(checkpoint_failure)?;
        let last = match logged.last() {
            Some(b) => Some(self.read_entry(*b).await?),
            None => None,
        };
        let mut progress = Progress::new();
        let mut replay = Progress::new();
        for (table, source) in &self.job.sources {
            match last
                .as_ref()
                .and_then(|e| Some((e.batch_id, e.position.get(table)?)))
            {
                Some((batch, at)) => {
                    let at = self.read_back(table, at, &format!("offsets/{batch}"))?;
                    progress.insert(table.clone(), at);
                }
                None => {
                    replay.insert(table.clone(), source.new_progress());
                }
            }
        }
        let entries_read = match replay.is_empty() {
            true => usize::from(last.is_some()),
            false => self.replay(&mut replay, &logged, last.as_ref()).await?,
        };
        tracing::info!(
            job = %self.job_id,
            entries_read,
            replayed = ?replay.keys().collect::<Vec<_>>(),
            "source positions recovered"
        );
        progress.extend(replay);
        match last {
            None => Ok((progress, 0, None, Watermarks::default(), None)),
            Some(entry) => {
                let mut watermarks = entry.watermark.clone().unwrap_or_default();
                let logged = watermarks.watermark_ms;
                let committed = cp
                    .read_commit(entry.batch_id)
                    .await
                    .map_err(checkpoint_failure)?;
                if let Some(commit) = committed {
                    let policy = self.job.settings.watermark_policy;
                    watermarks.committed(&commit.max_event_ms, &self.job.event_times, policy);
                    Ok((progress, entry.batch_id + 1, None, watermarks, logged))
                } else {
                    tracing::info!(job = %self.job_id, batch = entry.batch_id, "rerunning uncommitted batch");
                    Ok((progress, entry.batch_id, Some(entry), watermarks, logged))
                }
            }
        }
    }

    async fn read_entry(&self, batch: BatchId) -> Result<OffsetsEntry, Failure> {
        let entry = (self.checkpoint.read_offsets(batch).await).map_err(checkpoint_failure)?;
        Ok(entry.ok_or_else(|| {
            let message = format!("offsets/{batch} vanished while recovering");
            JobFailure::new(FailureKind::Outage, message)
        })?)
    }

    /// A stored position, read back through its connector now so a bad one is named at once.
    fn read_back(&self, table: &str, stored: &Position, file: &str) -> Result<Position, Failure> {
        let mut at = stored.clone();
        self.job.sources[table].advance(&mut at, &[]).map_err(|e| {
            let file = format!("{}/{file}", self.checkpoint.uri());
            JobFailure::new(
                FailureKind::BadPlan,
                format!("{file}: table '{table}': {e}"),
            )
        })?;
        Ok(at)
    }

    /// Rebuilds the positions in `progress` from the latest compaction and the logged entries
    /// after it (`last` is the newest, already read); returns how many entries it read.
    async fn replay(
        &self,
        progress: &mut Progress,
        logged: &[BatchId],
        last: Option<&OffsetsEntry>,
    ) -> Result<usize, Failure> {
        let compaction = (self.checkpoint.latest_compaction().await).map_err(checkpoint_failure)?;
        let mut after = 0;
        if let Some((batch, position)) = compaction {
            for (table, at) in progress.iter_mut() {
                if let Some(stored) = position.get(table) {
                    *at = self.read_back(table, stored, &format!("offsets/compact-{batch}"))?;
                }
            }
            after = batch + 1;
        }
        let mut read = usize::from(last.is_some());
        for b in logged.iter().filter(|b| **b >= after) {
            match last.filter(|e| e.batch_id == *b) {
                Some(entry) => self.advance(progress, entry)?,
                None => {
                    self.advance(progress, &self.read_entry(*b).await?)?;
                    read += 1;
                }
            }
        }
        Ok(read)
    }

    /// Sleeps until `at`; false when the job was stopped meanwhile.
    async fn sleep_until(&mut self, at: Instant) -> bool {
        tokio::select! {
            _ = tokio::time::sleep_until(at) => !self.stopped(),
            _ = stop_requested(&mut self.stop) => false,
        }
    }

    /// Runs the batch's stages on the cluster; `None` when the job was stopped meanwhile.
    async fn run_batch(
        &mut self,
        entry: &OffsetsEntry,
    ) -> Result<Option<BatchReport>, BatchFailure> {
        let splits = entry
            .sources
            .iter()
            .filter(|(t, _)| self.job.sources.contains_key(*t) || self.job.statics.contains_key(*t))
            .map(|(table, splits)| (table.clone(), splits.iter().map(|s| s.to_json()).collect()))
            .collect();
        let sub = BatchSubmission {
            job_id: self.job_id.clone(),
            batch_id: entry.batch_id,
            stages: self.job.stage_specs(),
            splits,
            max_task_attempts: self.job.settings.task_max_attempts,
            task_backoff_ms: self.job.settings.task_backoff.as_millis() as u64,
            task_timeout_ms: self.job.settings.task_timeout.as_millis() as u64,
            max_stage_attempts: self.job.settings.stage_max_attempts,
            watermark_ms: entry.watermark.as_ref().and_then(|w| w.watermark_ms),
            previous_watermark_ms: entry.watermark.as_ref().and_then(|w| w.previous_ms),
        };
        let core = self.core.clone();
        let code = JobCode {
            sql: self.sql.clone(),
            checkpoint_uri: Arc::from(self.checkpoint.uri()),
        };
        let run = core.run_batch(sub, code);
        tokio::select! {
            r = run => r.map(Some),
            _ = stop_requested(&mut self.stop) => {
                // Stopped means stopped: no task of this run writes anything after this returns.
                let (done, gone) = tokio::sync::oneshot::channel();
                self.core.send(CoreMsg::Cancel { job_id: self.job_id.clone(), done }).await;
                let _ = gone.await;
                Ok(None)
            }
        }
    }

    /// Makes the batch visible (sink commit) and then durable as done (commit log).
    async fn commit(
        &self,
        entry: &OffsetsEntry,
        report: &BatchReport,
        max_event_ms: &BTreeMap<String, i64>,
        record: &mut BatchRecorder,
    ) -> Result<(), Failure> {
        let batch_id = entry.batch_id;
        let started = Instant::now();
        for dead in self.job.dead_letters.values() {
            dead.commit(batch_id, &report.dead_letter_partitions)
                .await
                .map_err(ConnectorError::into_failure)?;
        }
        if let Some(late) = &self.job.late_rows {
            late.commit(batch_id, &report.late_row_partitions)
                .await
                .map_err(ConnectorError::into_failure)?;
        }
        self.job
            .sink
            .commit(batch_id, &report.sink_partitions)
            .await
            .map_err(ConnectorError::into_failure)?;
        record.phase(model::SINK_COMMIT);
        let committed_at_ms = now_ms();
        self.checkpoint
            .write_commit(&CommitEntry {
                batch_id,
                committed_at_ms,
                rows_in: report.rows_in,
                rows_out: report.rows_out,
                max_event_ms: max_event_ms.clone(),
            })
            .await
            .map_err(checkpoint_failure)?;
        record.phase(model::COMMIT);
        let offsets_ms = record.phase_ms(model::OFFSETS);
        let checkpoint_ms = started.elapsed().as_millis() as u64;
        self.registry
            .metrics
            .batch_committed(&self.job_id, report, offsets_ms + checkpoint_ms);
        let console = match self.job.sink.console_rows() {
            Some(num_rows) => {
                let text = render_console(
                    &self.job.sink_table,
                    batch_id,
                    report.rows_out,
                    &report.console,
                    num_rows,
                );
                println!("{text}");
                text
            }
            None => String::new(),
        };
        tracing::info!(
            job = %self.job_id,
            batch = batch_id,
            rows_in = report.rows_in,
            rows_out = report.rows_out,
            dead_letters = report.dead_letters,
            duration_ms = report.duration_ms,
            tasks = report.tasks,
            tasks_rerun = report.tasks_rerun,
            rerun_executor_lost = report.rerun.executor_lost,
            rerun_fetch_failed = report.rerun.fetch_failed,
            rerun_task_failed = report.rerun.task_failed,
            recovery_ms = report.recovery_ms,
            "batch committed"
        );
        let started_at_ms = record.detail.started_at_ms;
        let summary = BatchStatus {
            batch_id,
            started_at_ms,
            rows_in: report.rows_in,
            rows_out: report.rows_out,
            duration_ms: report.duration_ms,
            tasks: report.tasks,
            tasks_retried: report.tasks_rerun,
            console,
            committed_at_ms,
            rerun_task_failed: report.rerun.task_failed,
            rerun_executor_lost: report.rerun.executor_lost,
            rerun_fetch_failed: report.rerun.fetch_failed,
            recovery_ms: report.recovery_ms,
            checkpoint_ms: offsets_ms + checkpoint_ms,
            dead_letters: report.dead_letters,
            watermark_ms: entry.watermark.as_ref().and_then(|w| w.watermark_ms),
            max_event_ms: max_event_ms.clone().into_iter().collect(),
            metrics: report
                .metrics
                .iter()
                .map(|(name, m)| (name.clone(), m.value))
                .collect(),
        };
        record.detail.summary = Some(summary.clone());
        record.detail.committed = model::committed_outputs(&self.job, report);
        record.end(BatchOutcome::Committed, String::new());
        self.registry.record_batch(&self.job_id, record, false);
        self.registry.update(&self.job_id, |s| {
            s.batches_committed += 1;
            s.first_batch_started_at_ms.get_or_insert(started_at_ms);
            s.rows_in += report.rows_in;
            s.rows_out += report.rows_out;
            s.recent_batches.push(summary);
        });
        Ok(())
    }
}

/// How far each source table has been read.
type Progress = BTreeMap<String, Position>;

/// The positions small enough to log with every batch.
fn logged_positions(progress: &Progress) -> BTreeMap<String, Position> {
    (progress.iter())
        .filter(|(_, p)| p.to_string().len() <= sluice_checkpoint::LOGGED_POSITION_BYTES)
        .map(|(t, p)| (t.clone(), p.clone()))
        .collect()
}

/// Where a job resumes: every source's progress, the next batch, the logged batch to rerun
/// (if it never committed), the watermark state the next batch starts from, and the watermark
/// the last logged batch ran with.
type Recovered = (
    Progress,
    BatchId,
    Option<OffsetsEntry>,
    Watermarks,
    Option<i64>,
);

/// The next batch's input, over every source.
struct Plan {
    splits: BTreeMap<String, Vec<SourceSplit>>,
    /// Every source will never have more input.
    exhausted: bool,
    /// Records left for later, summed over the sources that can tell.
    backlog: Option<u64>,
    /// The same per source partition.
    lag: Vec<sluice_proto::SourceLag>,
}

/// Resolves once the job is asked to stop.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    // The guard wait_for returns must not live across an await: drop it here.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}
