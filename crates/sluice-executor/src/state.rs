//! State of stateful operators (`sluice_sql::StatefulOperator`, e.g. running aggregations) on
//! this executor: the latest versions of each partition in memory, restored from the job's
//! checkpoint when missing, and each new version made durable (a delta every batch) before the
//! task reports success. A snapshot of the whole version is written in the background: it
//! only shortens restores (which otherwise read an older snapshot and more deltas, all kept
//! until a newer snapshot exists), so no batch waits on encoding and writing the whole state.
//! One is due after `state.snapshot_interval` batches once the deltas since the last one hold
//! `state.snapshot_changed_percent` of the state's rows: a snapshot then costs, amortized, about
//! what the batches changed, and a restore reads about twice the state at most.

use arrow::record_batch::RecordBatch;
use sluice_checkpoint::{CheckpointError, JobCheckpoint, StateKind, restore_plans};
use sluice_connectors::{ipc_batches, ipc_bytes, store};
use sluice_core::StatePartition;
use sluice_core::{BatchId, Failure, FailureKind};
use sluice_sql::{CompiledJob, State};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::task::JoinHandle;

/// A partition's state versions in memory.
type Versions = BTreeMap<BatchId, Arc<State>>;

/// Versions kept in memory per partition: the latest and the one before it, so a rerun of the
/// latest batch (after a driver restart) starts from memory too.
const VERSIONS_KEPT: usize = 2;

#[derive(Default)]
pub struct StateCache {
    versions: Mutex<HashMap<StatePartition, Versions>>,
    checkpoints: Mutex<HashMap<String, JobCheckpoint>>,
    /// Per partition: the changes since its last snapshot, and the snapshot being written.
    snapshots: Mutex<HashMap<StatePartition, Snapshots>>,
}

#[derive(Default)]
struct Snapshots {
    /// The version the counts below run to.
    version: Option<BatchId>,
    batches: u64,
    delta_rows: u64,
    /// The latest snapshot write; it waits for the one before, so they land in order.
    writing: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
}

/// A checkpoint read or write that failed, with its kind: an unreachable store may come back
/// (an outage), a refused or corrupted one will not.
fn stored(e: CheckpointError) -> Failure {
    Failure::new(e.kind(), e.to_string())
}

/// Where a task's starting state came from, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Empty,
    Memory,
    Checkpoint,
}

impl StateCache {
    fn checkpoint(&self, uri: &str) -> Result<JobCheckpoint, Failure> {
        let mut map = self.checkpoints.lock().unwrap();
        if let Some(cp) = map.get(uri) {
            return Ok(cp.clone());
        }
        let loc =
            store::open(uri).map_err(|e| Failure::new(FailureKind::BadPlan, e.to_string()))?;
        let cp = JobCheckpoint::new(loc.store, loc.prefix, loc.uri);
        map.insert(uri.to_string(), cp.clone());
        Ok(cp)
    }

    /// The state a task of `batch` starts from: version `batch - 1`.
    pub async fn before(
        &self,
        job: &CompiledJob,
        key: &StatePartition,
        batch: BatchId,
        checkpoint_uri: &str,
    ) -> Result<(Arc<State>, Origin), Failure> {
        let Some(version) = batch.checked_sub(1) else {
            return Ok((Arc::new(State::default()), Origin::Empty));
        };
        if let Some(s) = self
            .versions
            .lock()
            .unwrap()
            .get(key)
            .and_then(|v| v.get(&version))
        {
            return Ok((s.clone(), Origin::Memory));
        }
        let started = Instant::now();
        let state = self.restore(job, key, version, checkpoint_uri).await?;
        let rows = state.num_rows();
        tracing::info!(
            job = %key.job,
            stage = key.stage,
            partition = key.partition,
            version,
            rows,
            ms = started.elapsed().as_millis() as u64,
            "state restored from the checkpoint"
        );
        let state = Arc::new(state);
        self.remember(key, version, state.clone());
        Ok((state, Origin::Checkpoint))
    }

    /// Rebuilds `version` from the checkpoint: the newest snapshot whose chain of deltas is
    /// complete and readable; a corrupted file makes it try the next older way.
    async fn restore(
        &self,
        job: &CompiledJob,
        key: &StatePartition,
        version: BatchId,
        checkpoint_uri: &str,
    ) -> Result<State, Failure> {
        let StatePartition {
            job: job_id,
            stage,
            partition,
        } = key;
        let cp = self.checkpoint(checkpoint_uri)?;
        let op = job.state_of(*stage as usize).ok_or_else(|| {
            Failure::new(
                FailureKind::Bug,
                format!("stage {stage} of job {job_id} keeps no state"),
            )
        })?;
        let files = cp
            .state_files(op.name(), *partition)
            .await
            .map_err(stored)?;
        let plans = restore_plans(&files, version);
        let fatal = |message: String| Failure::new(FailureKind::BadPlan, message);
        if plans.is_empty() {
            return Err(fatal(format!(
                "cannot restore state version {version} of {}/state/{}/{partition}: no snapshot with a complete chain of deltas ({} files there)",
                cp.uri(),
                op.name(),
                files.len()
            )));
        }
        let mut errors = Vec::new();
        for plan in plans {
            let mut reads = Vec::new();
            if let Some(s) = plan.snapshot {
                reads.push((s, StateKind::Snapshot));
            }
            reads.extend(plan.deltas.iter().map(|d| (*d, StateKind::Delta)));
            match self.read_all(&cp, op.name(), *partition, &reads).await {
                Ok(parts) => {
                    let deltas = &parts[usize::from(plan.snapshot.is_some())..];
                    self.count_restored(key, version, deltas);
                    return job
                        .restore_state(*stage as usize, &parts)
                        .await
                        .map_err(|e| e.into_failure());
                }
                Err(e @ CheckpointError::Corrupted { .. }) => {
                    tracing::warn!("{e}; trying an older snapshot");
                    errors.push(e.to_string());
                }
                Err(e) => return Err(stored(e)),
            }
        }
        Err(fatal(format!(
            "cannot restore state version {version}: {}",
            errors.join("; ")
        )))
    }

    async fn read_all(
        &self,
        cp: &JobCheckpoint,
        operator: &str,
        partition: u32,
        reads: &[(BatchId, StateKind)],
    ) -> Result<Vec<Vec<RecordBatch>>, CheckpointError> {
        let mut parts = Vec::with_capacity(reads.len());
        for (v, kind) in reads {
            let bytes = cp.read_state(operator, partition, *v, *kind).await?;
            let batches = ipc_batches(&bytes).map_err(|e| CheckpointError::Corrupted {
                file: format!("{}/state/{operator}/{partition}/{v}", cp.uri()),
                reason: e.to_string(),
            })?;
            parts.push(batches);
        }
        Ok(parts)
    }

    /// Makes version `batch` durable (its delta), then keeps it in memory for the partition's
    /// next task; on the interval, starts writing its snapshot.
    pub async fn commit(
        &self,
        job: &CompiledJob,
        key: &StatePartition,
        batch: BatchId,
        checkpoint_uri: &str,
        update: sluice_sql::StateUpdate,
    ) -> Result<(), Failure> {
        let cp = self.checkpoint(checkpoint_uri)?;
        let bug = |m: String| Failure::new(FailureKind::Bug, m);
        let op = job
            .state_of(key.stage as usize)
            .ok_or_else(|| bug(format!("stage {} keeps no state", key.stage)))?;
        let delta = ipc_bytes(&update.delta, op.state_schema())
            .map_err(|e| bug(format!("cannot encode state: {e}")))?;
        cp.write_state(op.name(), key.partition, batch, StateKind::Delta, &delta)
            .await
            .map_err(stored)?;
        let state = Arc::new(update.state);
        let delta_rows = update.delta.iter().map(|b| b.num_rows() as u64).sum();
        let state_rows = state.num_rows() as u64;
        if self.snapshot_due(&job.settings, key, batch, delta_rows, state_rows) {
            let snapshot = Snapshot {
                checkpoint: cp,
                operator: op.name().to_string(),
                schema: op.state_schema(),
                version: batch,
                state: state.clone(),
            };
            self.start_snapshot(key, snapshot);
        }
        self.remember(key, batch, state);
        Ok(())
    }

    /// Counts version `batch`'s changes; whether its snapshot is due. A history this executor
    /// has not seen (a restore counts its deltas) starts counting here.
    fn snapshot_due(
        &self,
        settings: &sluice_core::settings::JobSettings,
        key: &StatePartition,
        batch: BatchId,
        delta_rows: u64,
        state_rows: u64,
    ) -> bool {
        let mut all = self.snapshots.lock().unwrap();
        let s = all.entry(key.clone()).or_default();
        if s.version.is_none_or(|v| v + 1 != batch) {
            (s.batches, s.delta_rows) = (0, 0);
        }
        s.version = Some(batch);
        s.batches += 1;
        s.delta_rows += delta_rows;
        let due = s.batches >= settings.snapshot_interval
            && s.delta_rows * 100 >= state_rows * settings.snapshot_changed_percent;
        if due {
            (s.batches, s.delta_rows) = (0, 0);
        }
        due
    }

    /// A restored version's changes since its snapshot: the deltas it read.
    fn count_restored(&self, key: &StatePartition, version: BatchId, deltas: &[Vec<RecordBatch>]) {
        let mut all = self.snapshots.lock().unwrap();
        let s = all.entry(key.clone()).or_default();
        s.version = Some(version);
        s.batches = deltas.len() as u64;
        s.delta_rows = deltas.iter().flatten().map(|b| b.num_rows() as u64).sum();
    }

    /// Writes `snapshot` after the partition's previous one; skipped while that one has not
    /// even started, so a slow store holds at most two extra versions in memory.
    fn start_snapshot(&self, key: &StatePartition, snapshot: Snapshot) {
        let mut all = self.snapshots.lock().unwrap();
        let s = all.entry(key.clone()).or_default();
        let previous = s.writing.take();
        if let Some((_, started)) = previous.as_ref().filter(|(h, _)| !h.is_finished())
            && !started.load(Ordering::Acquire)
        {
            tracing::info!(
                job = %key.job,
                partition = key.partition,
                version = snapshot.version,
                "two snapshots are already waiting to be written; this one is skipped"
            );
            s.writing = previous;
            return;
        }
        let started = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (key, started) = (key.clone(), started.clone());
            async move {
                if let Some((previous, _)) = previous {
                    let _ = previous.await;
                }
                started.store(true, Ordering::Release);
                let (at, version) = (Instant::now(), snapshot.version);
                match snapshot.write(key.partition).await {
                    Ok(bytes) => tracing::debug!(
                        job = %key.job,
                        partition = key.partition,
                        version,
                        bytes,
                        ms = at.elapsed().as_millis() as u64,
                        "state snapshot written"
                    ),
                    // Restores use an older snapshot and more deltas meanwhile.
                    Err(e) => tracing::warn!(
                        job = %key.job,
                        partition = key.partition,
                        version,
                        "state snapshot not written: {e}"
                    ),
                }
            }
        });
        s.writing = Some((task, started));
    }

    fn remember(&self, key: &StatePartition, version: BatchId, state: Arc<State>) {
        let mut all = self.versions.lock().unwrap();
        let versions = all.entry(key.clone()).or_default();
        versions.insert(version, state);
        while versions.len() > VERSIONS_KEPT {
            versions.pop_first();
        }
    }

    /// Rows and bytes of the latest version of every partition held here.
    pub fn size(&self) -> (u64, u64) {
        let all = self.versions.lock().unwrap();
        all.values()
            .filter_map(|v| v.last_key_value())
            .fold((0, 0), |(rows, bytes), (_, s)| {
                (rows + s.num_rows() as u64, bytes + s.memory_size() as u64)
            })
    }

    /// Drops everything kept for a job that ended.
    pub fn drop_job(&self, job_id: &str) {
        self.versions.lock().unwrap().retain(|k, _| k.job != job_id);
        self.snapshots
            .lock()
            .unwrap()
            .retain(|k, _| k.job != job_id);
    }
}

/// A state version to write as a snapshot.
struct Snapshot {
    checkpoint: JobCheckpoint,
    operator: String,
    schema: arrow::datatypes::SchemaRef,
    version: BatchId,
    state: Arc<State>,
}

impl Snapshot {
    /// Encodes (on a blocking thread: it is the whole state) and writes it; returns its size.
    async fn write(self, partition: u32) -> anyhow::Result<usize> {
        let (state, schema) = (self.state.clone(), self.schema.clone());
        let bytes = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
            Ok(ipc_bytes(&state.batches()?, schema)?)
        })
        .await??;
        let kind = StateKind::Snapshot;
        (self.checkpoint)
            .write_state(&self.operator, partition, self.version, kind, &bytes)
            .await?;
        Ok(bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::settings::JobSettings;

    fn partition() -> StatePartition {
        StatePartition {
            job: "j".into(),
            stage: 1,
            partition: 0,
        }
    }

    /// The batches (of `batches`) whose snapshot is due, each changing `delta` of `state` rows.
    fn due(
        cache: &StateCache,
        settings: &JobSettings,
        batches: std::ops::Range<u64>,
        delta: u64,
        state: u64,
    ) -> Vec<u64> {
        batches
            .filter(|b| cache.snapshot_due(settings, &partition(), *b, delta, state))
            .collect()
    }

    #[test]
    fn a_snapshot_is_due_once_the_changes_since_the_last_add_up_to_the_state() {
        let settings = JobSettings::default();
        let cache = StateCache::default();
        // A tenth of the state per batch: every 10 batches, the interval.
        assert_eq!(due(&cache, &settings, 0..30, 100, 1_000), vec![9, 19, 29]);
        // A hundredth: every 100 batches, so a snapshot costs what the batches changed.
        assert_eq!(
            due(&cache, &settings, 30..330, 10, 1_000),
            vec![129, 229, 329]
        );
        // 0%: every interval, as a fixed schedule.
        let every = JobSettings {
            snapshot_changed_percent: 0,
            snapshot_interval: 2,
            ..Default::default()
        };
        assert_eq!(
            due(&StateCache::default(), &every, 0..6, 1, 1_000),
            vec![1, 3, 5]
        );
    }

    #[test]
    fn a_restore_counts_the_deltas_it_read_and_a_gap_starts_over() {
        let settings = JobSettings::default();
        let cache = StateCache::default();
        let rows = |n: usize| {
            let schema = Arc::new(arrow::datatypes::Schema::new(vec![
                arrow::datatypes::Field::new("k", arrow::datatypes::DataType::Int64, true),
            ]));
            let column = Arc::new(arrow::array::Int64Array::from(vec![1; n]));
            vec![RecordBatch::try_new(schema, vec![column]).unwrap()]
        };
        // Version 40 restored from a snapshot plus 9 deltas of 100 rows: one more is enough.
        cache.count_restored(&partition(), 40, &vec![rows(100); 9]);
        assert_eq!(due(&cache, &settings, 41..42, 100, 1_000), vec![41]);
        // A version this executor did not see the batch before of counts from itself.
        assert_eq!(due(&cache, &settings, 60..70, 100, 1_000), vec![69]);
    }
}
