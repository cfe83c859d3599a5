//! Running one task: read its input (a source split or shuffle blocks), run the stage's
//! operators, and keep the output as a map output or write it to the sink.

use crate::Executor;
use crate::metrics::ExecutorMetrics;
use crate::shuffle::fetch_blocks;
use crate::statics::StaticCache;
use arrow::array::{AsArray, RecordBatch};
use sluice_connectors::ConnectorError;
use sluice_core::progress::{self, TaskProgress};
use sluice_core::{Failure, FailureKind, JobId, MapOutputId, SourceSplit, StatePartition};
use sluice_proto::{FetchFailure, LaunchTask, TaskKey, TaskResult};
use sluice_sql::{CompiledJob, SqlError, StageOutputData, Statics, TaskInput};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::{Mutex, Semaphore, watch};

pub struct TaskRunner {
    /// Tasks run on their own runtime so that CPU-heavy operators never delay heartbeats,
    /// launches or shuffle serving on the control runtime.
    runtime: Option<tokio::runtime::Runtime>,
    slots: Semaphore,
    running: AtomicUsize,
    /// Test only: every task fails (a flaky executor).
    fail_all: bool,
    /// Jobs compiled from their SQL, by job id: planning is deterministic, so every executor
    /// arrives at the driver's stages.
    /// Keyed by job id, with the SQL they came from: a resumed job may run changed SQL.
    jobs: Mutex<HashMap<JobId, (String, Arc<CompiledJob>)>>,
    /// Per job, a signal its tasks watch: sent when the driver cancels the job's tasks.
    cancels: std::sync::Mutex<HashMap<JobId, watch::Sender<()>>>,
    /// Static tables read here, per job and table, one version each.
    statics: StaticCache,
    metrics: ExecutorMetrics,
}

/// Counts a task as running for as long as it lives, however it ends.
struct Running<'a>(&'a TaskRunner);

impl<'a> Running<'a> {
    fn start(runner: &'a TaskRunner) -> Self {
        runner.running.fetch_add(1, Ordering::Relaxed);
        runner.metrics.tasks_running.inc();
        Running(runner)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.tasks_running.dec();
    }
}

/// Aborts the task on the task runtime when the future awaiting it is dropped (cancelled).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A task failure, and which map output could not be fetched when that was the cause.
struct TaskFailure {
    failure: Failure,
    fetch: Option<FetchFailure>,
}

impl From<Failure> for TaskFailure {
    fn from(failure: Failure) -> Self {
        TaskFailure {
            failure,
            fetch: None,
        }
    }
}

fn failure(kind: FailureKind, message: impl Into<String>) -> TaskFailure {
    Failure::new(kind, message).into()
}

impl TaskRunner {
    pub fn new(slots: u32, fail_all: bool, metrics: ExecutorMetrics) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(slots as usize)
            .thread_name("sluice-task")
            .enable_all()
            .build()
            .expect("task runtime");
        TaskRunner {
            runtime: Some(runtime),
            slots: Semaphore::new(slots as usize),
            running: AtomicUsize::new(0),
            fail_all,
            jobs: Mutex::new(HashMap::new()),
            cancels: std::sync::Mutex::new(HashMap::new()),
            statics: StaticCache::default(),
            metrics,
        }
    }

    pub fn report_state_size(&self, state: &crate::state::StateCache) {
        let (rows, bytes) = state.size();
        self.metrics.state_rows.set(rows as i64);
        self.metrics.state_bytes.set(bytes as i64);
    }

    pub async fn forget_job(&self, job_id: &str) {
        self.jobs.lock().await.remove(job_id);
        self.cancels.lock().unwrap().remove(job_id);
        self.statics.forget_job(job_id);
    }

    /// Aborts every task of the job running or waiting for a slot here; each reports back as
    /// cancelled.
    pub fn cancel_job(&self, job_id: &str) {
        if let Some(tx) = self.cancels.lock().unwrap().remove(job_id) {
            tracing::info!(job = job_id, "cancelling the job's tasks");
            let _ = tx.send(());
        }
    }

    fn cancel_signal(&self, job_id: &str) -> watch::Receiver<()> {
        let mut cancels = self.cancels.lock().unwrap();
        cancels
            .entry(job_id.into())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    pub async fn run(executor: Arc<Executor>, self_id: String, launch: LaunchTask) -> TaskResult {
        let this = &executor.tasks;
        let key = launch.key.clone().unwrap_or_default();
        let mut cancelled = this.cancel_signal(&key.job_id);
        let started = Instant::now();
        let timeout = match launch.timeout_ms {
            0 => std::time::Duration::MAX,
            ms => std::time::Duration::from_millis(ms),
        };
        let work = async {
            let _permit = this.slots.acquire().await.expect("semaphore open");
            let _running = Running::start(this);
            let handle = this.runtime.as_ref().expect("runtime").handle().clone();
            let (exec, k) = (executor.clone(), key.clone());
            let task =
                handle.spawn(async move { exec.tasks.execute(&exec, &self_id, &k, launch).await });
            let _abort = AbortOnDrop(task.abort_handle());
            match tokio::time::timeout(timeout, task).await {
                Ok(done) => {
                    done.unwrap_or_else(|e| Err(failure(FailureKind::Bug, panic_message(e))))
                }
                // A read that never ends (a stalled store, a pipe) must not hold the slot.
                Err(_) => Err(failure(
                    FailureKind::Outage,
                    format!("task timed out after {timeout:?} (task.timeout)"),
                )),
            }
        };
        let outcome = tokio::select! {
            outcome = work => outcome,
            _ = cancelled.changed() => {
                Err(failure(FailureKind::Outage, "task cancelled: the job was stopped"))
            }
        };
        this.metrics
            .task_done(outcome.is_ok(), started.elapsed().as_secs_f64());
        this.report_state_size(&executor.state);
        let duration_ms = started.elapsed().as_millis() as u64;
        match outcome.and_then(within_limit) {
            Ok(mut r) => {
                r.duration_ms = duration_ms;
                tracing::debug!(?key, duration_ms, "task succeeded");
                r
            }
            Err(f) => {
                tracing::warn!(?key, "task failed: {}", f.failure);
                TaskResult {
                    key: Some(key),
                    ok: false,
                    failure_kind: sluice_proto::FailureKind::from(f.failure.kind).into(),
                    error: shortened(f.failure.message),
                    fetch_failure: f.fetch,
                    duration_ms,
                    ..Default::default()
                }
            }
        }
    }

    async fn job(&self, job_id: &str, sql: &str) -> Result<Arc<CompiledJob>, TaskFailure> {
        let mut jobs = self.jobs.lock().await;
        if let Some((planned, j)) = jobs.get(job_id)
            && planned == sql
        {
            return Ok(j.clone());
        }
        let job = CompiledJob::compile(sql, job_id)
            .await
            .map_err(|e| e.into_failure().context("cannot plan job"))?;
        let job = Arc::new(job);
        jobs.insert(job_id.into(), (sql.to_string(), job.clone()));
        Ok(job)
    }

    async fn execute(
        &self,
        executor: &Executor,
        self_id: &str,
        key: &TaskKey,
        launch: LaunchTask,
    ) -> Result<TaskResult, TaskFailure> {
        let job = self.job(&key.job_id, &launch.sql).await?;
        let stage = key.stage_id as usize;
        let fragment = job
            .fragments
            .get(stage)
            .ok_or_else(|| failure(FailureKind::Bug, format!("job has no stage {stage}")))?;
        // Executors plan the SQL themselves; a different plan (another Sluice version) must not
        // run silently.
        let planned_partitions = match &fragment.output {
            sluice_sql::FragmentOutput::Sink => 0,
            sluice_sql::FragmentOutput::Hash { partitions, .. }
            | sluice_sql::FragmentOutput::Range { partitions, .. } => *partitions,
        };
        if planned_partitions != launch.output_partitions {
            return Err(failure(
                FailureKind::Bug,
                format!(
                    "this executor planned stage {stage} with {planned_partitions} output partitions, the driver with {}: mismatched Sluice versions?",
                    launch.output_partitions
                ),
            ));
        }
        let batch = sluice_sql::BatchInfo {
            id: key.batch_id,
            watermark_ms: launch.watermark_ms,
            previous_watermark_ms: launch.previous_watermark_ms,
        };
        let first_attempt = key.task_attempt == 0;
        if job.settings.test_fail_task == Some((key.stage_id, key.partition)) && first_attempt {
            return Err(failure(
                FailureKind::Outage,
                "injected failure (sluice.test.fail_task)",
            ));
        }
        if self.fail_all {
            return Err(failure(
                FailureKind::Outage,
                "injected failure (test_fail_tasks executor)",
            ));
        }
        let delay = |switch: Option<(u32, std::time::Duration)>| {
            switch
                .filter(|(stage, _)| first_attempt && *stage == key.stage_id)
                .map(|(_, d)| d)
        };
        if let Some(d) = delay(job.settings.test_delay_task) {
            tokio::time::sleep(d).await;
        }
        let mut clock = PhaseClock::start();
        let (input, dead_letters, bounds) = if fragment.inputs.iter().any(|i| i.source().is_some())
        {
            read_split(&job, key, &launch).await?
        } else {
            let blocks = fetch_blocks(
                executor,
                self_id,
                &key.job_id,
                key.batch_id,
                key.partition,
                &launch.range_bounds,
                &launch.inputs,
            )
            .await
            .map_err(|e| TaskFailure {
                failure: Failure::new(FailureKind::LostExecutor, e.message),
                fetch: Some(FetchFailure {
                    map_partition: e.location.map_partition,
                    executor_id: e.location.executor_id,
                }),
            })?;
            let input = job
                .shuffle_input(stage, blocks)
                .map_err(SqlError::into_failure)?;
            (input, 0, TaskProgress::default())
        };
        clock.lap(progress::INPUT_MS);
        if let Some(d) = delay(job.settings.test_delay_after_input) {
            tokio::time::sleep(d).await;
        }
        let rows_in: u64 = match &input {
            TaskInput::Split { rows, .. } => rows.iter().map(|b| b.num_rows() as u64).sum(),
            TaskInput::Shuffle(edges) => edges.iter().flatten().map(|b| b.num_rows() as u64).sum(),
        };
        let state_key = StatePartition {
            job: key.job_id.clone().into(),
            stage: key.stage_id,
            partition: key.partition,
        };
        let before = match job.state_of(stage) {
            Some(_) => {
                let (s, origin) = executor
                    .state
                    .before(&job, &state_key, key.batch_id, &launch.checkpoint_uri)
                    .await
                    .map_err(TaskFailure::from)?;
                tracing::debug!(?key, ?origin, "state ready");
                s
            }
            None => Arc::new(sluice_sql::State::default()),
        };
        clock.lap(progress::STATE_READ_MS);
        let mut statics = Statics::new();
        for (table, files) in &launch.broadcast {
            let rows = self
                .statics
                .get(&key.job_id, &job, table, &files.splits)
                .await?;
            statics.insert(table.clone(), rows);
        }
        let (output, update) = job
            .run_task(stage, batch, input, &statics, &before)
            .await
            .map_err(SqlError::into_failure)?;
        clock.lap(progress::COMPUTE_MS);
        let mut progress = bounds;
        progress
            .count(progress::ROWS_IN, rows_in)
            .count(progress::DEAD_LETTERS, dead_letters);
        // The new state version is durable before the task reports success, so the batch
        // never commits ahead of its state.
        if let Some(update) = update {
            let op = &update.operator;
            progress
                .count(
                    &progress::operator_rows(op, progress::ROWS_IN),
                    update.rows_in,
                )
                .count(
                    &progress::operator_rows(op, progress::ROWS_OUT),
                    update.rows_out,
                )
                .count(
                    &progress::operator_rows(op, progress::LATE_ROWS),
                    update.late_rows,
                );
            let state_rows = update.state.num_rows();
            let state_bytes = update.state.memory_size();
            progress
                .count(progress::STATE_ROWS, state_rows as u64)
                .count(progress::STATE_BYTES, state_bytes as u64)
                .count(
                    &progress::operator_rows(op, progress::STATE_ROWS),
                    state_rows as u64,
                );
            for (name, metric) in &update.metrics {
                progress.record(&progress::operator_rows(op, name), *metric);
            }
            // Written under (batch, partition) like the sink, committed by the driver with it.
            if let (Some(sink), false) = (&job.late_rows, update.late.is_empty()) {
                sink.write(key.batch_id, key.partition, &update.late)
                    .await
                    .map_err(ConnectorError::into_failure)?;
                progress.count(progress::LATE_ROWS, update.late_rows);
            }
            executor
                .state
                .commit(
                    &job,
                    &state_key,
                    key.batch_id,
                    &launch.checkpoint_uri,
                    update,
                )
                .await
                .map_err(TaskFailure::from)?;
        }
        clock.lap(progress::STATE_WRITE_MS);
        match output {
            StageOutputData::Map {
                output,
                sample,
                rows,
            } => {
                let id = MapOutputId {
                    job: key.job_id.clone().into(),
                    batch: key.batch_id,
                    stage: key.stage_id,
                    stage_attempt: key.stage_attempt,
                    partition: key.partition,
                };
                if let Some(nonempty) = output.nonempty() {
                    let bits = progress::partition_bits(nonempty);
                    progress.payload(progress::NONEMPTY_PARTITIONS, bits);
                }
                executor.store.put(id, output);
                progress.count(progress::ROWS_OUT, rows);
                for key in sample {
                    progress.payload(progress::KEY_SAMPLE, key);
                }
            }
            StageOutputData::Sink { batches, rows } => {
                let written = job
                    .sink
                    .write(key.batch_id, key.partition, &batches)
                    .await
                    .map_err(ConnectorError::into_failure)?;
                progress.count(progress::ROWS_OUT, rows);
                if !written.console.is_empty() {
                    progress.payload(progress::CONSOLE, written.console);
                }
            }
        }
        clock.lap(progress::OUTPUT_MS);
        clock.report(&mut progress);
        let (metrics, payloads) = sluice_proto::progress_to_wire(&progress);
        Ok(TaskResult {
            key: Some(key.clone()),
            ok: true,
            metrics,
            payloads,
            ..Default::default()
        })
    }
}

/// Times a task's phases (`progress::TASK_PHASES`) for the cluster model.
struct PhaseClock {
    since: Instant,
    laps: Vec<(&'static str, u64)>,
}

impl PhaseClock {
    fn start() -> Self {
        PhaseClock {
            since: Instant::now(),
            laps: Vec::new(),
        }
    }

    /// Ends phase `name` now; the next one starts.
    fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.laps
            .push((name, now.duration_since(self.since).as_millis() as u64));
        self.since = now;
    }

    fn report(self, progress: &mut TaskProgress) {
        for (name, ms) in self.laps {
            progress.count(name, ms);
        }
    }
}

/// The smallest and largest value of every timestamp column of a split's rows, in ms since the
/// epoch, as progress metrics (`progress::column_bound`).
fn timestamp_bounds(table: &str, rows: &[RecordBatch]) -> TaskProgress {
    use arrow::compute::{cast, max, min};
    use arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};
    let mut bounds = TaskProgress::default();
    let Some(schema) = rows.first().map(|b| b.schema()) else {
        return bounds;
    };
    let as_ms = DataType::Timestamp(TimeUnit::Millisecond, None);
    for (i, field) in schema.fields().iter().enumerate() {
        if !matches!(field.data_type(), DataType::Timestamp(..)) {
            continue;
        }
        for batch in rows {
            let Ok(ms) = cast(batch.column(i), &as_ms) else {
                continue;
            };
            let ms = ms.as_primitive::<TimestampMillisecondType>();
            let name = |bound| progress::column_bound(table, field.name(), bound);
            let fold = |value, fold| progress::Metric { value, fold };
            if let (Some(lo), Some(hi)) = (min(ms), max(ms)) {
                bounds.record(&name("min"), fold(lo, progress::Fold::Min));
                bounds.record(&name("max"), fold(hi, progress::Fold::Max));
            }
        }
    }
    bounds
}

/// Reads the task's split of its source table. Bad records go to that table's dead-letter
/// table under this (batch, partition), so a rerun overwrites them too; the driver commits that
/// table with the batch. Returns the rows and how many records went to the dead letters.
async fn read_split(
    job: &CompiledJob,
    key: &TaskKey,
    launch: &LaunchTask,
) -> Result<(TaskInput, u64, TaskProgress), TaskFailure> {
    let table = &launch.source_table;
    let bug = |m: String| failure(FailureKind::Bug, m);
    let source = job
        .sources
        .get(table)
        .ok_or_else(|| bug(format!("the job reads no source table '{table}'")))?;
    let split = SourceSplit::from_json(&launch.source_split)
        .map_err(|e| bug(format!("bad source split: {e}")))?;
    let read = source
        .read_split(&split, key.batch_id)
        .await
        .map_err(ConnectorError::into_failure)?;
    let mut dead_letters = 0;
    if let (Some(dead), Some(sink)) = (read.dead_letters, job.dead_letters.get(table)) {
        dead_letters = dead.num_rows() as u64;
        sink.write(key.batch_id, key.partition, &[dead])
            .await
            .map_err(ConnectorError::into_failure)?;
    }
    let bounds = timestamp_bounds(table, &read.rows);
    let input = TaskInput::Split {
        table: table.clone(),
        rows: read.rows,
    };
    Ok((input, dead_letters, bounds))
}

/// A result must fit one control-stream message with room to spare: one that does not would
/// end the executor's session every time, so it fails the task, saying why.
const MAX_RESULT_BYTES: usize = 16 * 1024 * 1024;
/// An error's text is for people; a decoder that quotes a whole record gets cut.
const MAX_ERROR_CHARS: usize = 4096;

fn within_limit(r: TaskResult) -> Result<TaskResult, TaskFailure> {
    use prost::Message;
    let bytes = r.encoded_len();
    if bytes > MAX_RESULT_BYTES {
        return Err(failure(
            FailureKind::BadPlan,
            format!(
                "the task's result is {bytes} bytes, over the {} MiB limit (console rows or sampled sort keys too large)",
                MAX_RESULT_BYTES >> 20
            ),
        ));
    }
    Ok(r)
}

fn shortened(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_ERROR_CHARS) {
        let total = message.chars().count();
        message.truncate(cut);
        message.push_str(&format!("… ({} more characters)", total - MAX_ERROR_CHARS));
    }
    message
}

/// A panicking task is a bug, and the same input would panic again.
fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => format!(
            "task panicked: {}",
            sluice_core::failure::panic_text(&*payload)
        ),
        Err(_) => "task was cancelled".into(),
    }
}

impl Drop for TaskRunner {
    fn drop(&mut self) {
        // Dropping a runtime from async code panics; let its threads wind down on their own.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_report_the_bounds_of_their_timestamp_columns_in_ms() {
        use arrow::array::{Int64Array, TimestampMicrosecondArray};
        use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        let batch = |n: Vec<i64>, ts: Vec<Option<i64>>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(n)),
                    Arc::new(TimestampMicrosecondArray::from(ts)),
                ],
            )
            .unwrap()
        };
        let rows = [
            batch(vec![1, 2], vec![Some(5_000_000), None]),
            batch(vec![3], vec![Some(2_500_000)]),
        ];
        let p = timestamp_bounds("clicks", &rows);
        assert_eq!(p.get("clicks.ts.min"), 2_500);
        assert_eq!(p.get("clicks.ts.max"), 5_000);
        assert_eq!(p.metrics.len(), 2, "only timestamp columns: {p:?}");
        assert!(timestamp_bounds("clicks", &[]).metrics.is_empty());
    }

    #[test]
    fn a_result_over_the_limit_fails_the_task_and_long_errors_are_cut() {
        let sample = |n: usize, bytes: usize| {
            let p = sluice_proto::Payload {
                name: progress::KEY_SAMPLE.into(),
                data: vec![0u8; bytes],
            };
            vec![p; n]
        };
        let small = TaskResult {
            ok: true,
            payloads: sample(4, 1024),
            ..Default::default()
        };
        assert!(within_limit(small).is_ok());
        let huge = TaskResult {
            ok: true,
            payloads: sample(17, 1 << 20),
            ..Default::default()
        };
        let err = within_limit(huge).expect_err("over the limit").failure;
        assert_eq!(err.kind, FailureKind::BadPlan);
        assert!(err.message.contains("over the 16 MiB limit"), "{err}");
        let cut = shortened("é".repeat(5000));
        assert!(cut.starts_with(&"é".repeat(4096)) && cut.ends_with("(904 more characters)"));
        assert_eq!(shortened("short".into()), "short");
    }
}
