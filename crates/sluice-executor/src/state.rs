//! State of stateful operators (`sluice_sql::StatefulOperator`, e.g. running aggregations) on
//! this executor: the latest versions of each partition in memory, restored from the job's
//! checkpoint when missing, and each new version made durable (a delta every batch, a snapshot
//! every `state.snapshot_interval` batches) before the task reports success.

use arrow::record_batch::RecordBatch;
use sluice_checkpoint::{CheckpointError, JobCheckpoint, StateKind, restore_plans};
use sluice_connectors::{ipc_batches, ipc_bytes, store};
use sluice_core::StatePartition;
use sluice_core::{BatchId, Failure, FailureKind};
use sluice_sql::{CompiledJob, State};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A partition's state versions in memory.
type Versions = BTreeMap<BatchId, Arc<State>>;

/// Versions kept in memory per partition: the latest and the one before it, so a rerun of the
/// latest batch (after a driver restart) starts from memory too.
const VERSIONS_KEPT: usize = 2;

#[derive(Default)]
pub struct StateCache {
    versions: Mutex<HashMap<StatePartition, Versions>>,
    checkpoints: Mutex<HashMap<String, JobCheckpoint>>,
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
        StatePartition {
            job: job_id,
            stage,
            partition,
        }: &StatePartition,
        version: BatchId,
        checkpoint_uri: &str,
    ) -> Result<State, Failure> {
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

    /// Makes version `batch` durable (its delta; a snapshot on the interval), then keeps it in
    /// memory for the partition's next task.
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
        let schema = op.state_schema();
        let encode = |rows: &[RecordBatch], schema| {
            ipc_bytes(rows, schema).map_err(|e| bug(format!("cannot encode state: {e}")))
        };
        let delta = encode(&update.delta, schema.clone())?;
        cp.write_state(op.name(), key.partition, batch, StateKind::Delta, &delta)
            .await
            .map_err(stored)?;
        if (batch + 1).is_multiple_of(job.settings.snapshot_interval) {
            let rows = update.state.batches().map_err(|e| e.into_failure())?;
            let full = encode(&rows, schema)?;
            cp.write_state(op.name(), key.partition, batch, StateKind::Snapshot, &full)
                .await
                .map_err(stored)?;
        }
        self.remember(key, batch, Arc::new(update.state));
        Ok(())
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
    }
}
