//! A job's checkpoint: the only module that reads or writes the offsets and commits logs.
//!
//! Layout under the job's checkpoint prefix (see docs/architecture.md):
//!   metadata            job id, SQL text, plan fingerprint, format version
//!   offsets/<batch>     write-ahead input description of the batch, written before any task
//!   commits/<batch>     the batch is done (every task succeeded, the sink committed)
//!
//! Every file is a checksummed envelope; log entries are created with `PutMode::Create`, so a
//! second writer of the same batch fails instead of overwriting (fencing).

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sluice_core::{BatchId, SourceSplit};
use std::collections::BTreeMap;
use std::sync::Arc;

mod state;

pub use state::{RestorePlan, StateFile, StateKind, restore_plans};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{file}: {source}")]
    Store {
        file: String,
        source: object_store::Error,
    },
    #[error("{file} is corrupted: {reason}")]
    Corrupted { file: String, reason: String },
    #[error("{file} already exists: fenced by another driver writing the same job")]
    Fenced { file: String },
}

impl CheckpointError {
    /// A corrupted file stays corrupted; a store error may pass (unless access is refused).
    pub fn kind(&self) -> sluice_core::FailureKind {
        match self {
            CheckpointError::Store { source, .. } => {
                sluice_core::failure::store_failure_kind(source)
            }
            CheckpointError::Corrupted { .. } => sluice_core::FailureKind::BadPlan,
            CheckpointError::Fenced { .. } => sluice_core::FailureKind::BadPlan,
        }
    }
}

pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMetadata {
    pub job_id: String,
    pub name: String,
    pub sql: String,
    /// Where the SQL came from (a file name), for messages.
    pub origin: String,
    pub submitted_at_ms: u64,
    pub plan_fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetsEntry {
    pub batch_id: BatchId,
    pub planned_at_ms: u64,
    /// Input splits per source table, in task order.
    pub sources: BTreeMap<String, Vec<SourceSplit>>,
    /// For a job with event time: the watermark this batch runs with, and the largest event
    /// time per source of the batches committed before it (what the watermark came from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<sluice_core::watermark::Watermarks>,
    /// Each source's position after this batch, for the sources whose position is small
    /// (see [`LOGGED_POSITION_BYTES`]): a restarted driver resumes from the newest entry alone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub position: BTreeMap<String, serde_json::Value>,
}

/// The largest source position (as JSON) logged with every batch; a larger one (a files
/// source that has seen many files) is rebuilt from the latest compaction and the entries after
/// it instead, so entries stay small.
pub const LOGGED_POSITION_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitEntry {
    pub batch_id: BatchId,
    pub committed_at_ms: u64,
    pub rows_in: u64,
    pub rows_out: u64,
    /// Per event-time source, the largest event time (ms) this batch read: with the offsets
    /// entry's watermark it gives the next batch's watermark, after a restart too.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_event_ms: BTreeMap<String, i64>,
}

/// How a job ended; a job with this file is not resumed when the driver restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalState {
    /// finished | failed | stopped
    pub state: String,
    pub error: String,
    pub at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    format: u32,
    crc32: u32,
    body: String,
}

/// One job's checkpoint directory.
#[derive(Clone, Debug)]
pub struct JobCheckpoint {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    uri: String,
}

impl JobCheckpoint {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, uri: String) -> Self {
        JobCheckpoint { store, prefix, uri }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn path(&self, rel: &str) -> Path {
        Path::from_iter(self.prefix.parts().chain(Path::from(rel).parts()))
    }

    fn name(&self, rel: &str) -> String {
        format!("{}/{rel}", self.uri.trim_end_matches('/'))
    }

    /// On a local --state, a written file counts only once it and its directory entry are on
    /// disk: object_store's local backend renames into place without syncing, so a power loss
    /// could leave a commit entry empty (and the job's checkpoint unreadable).
    async fn sync(&self, rel: &str) -> Result<()> {
        let Some(root) = self.uri.strip_prefix("file://") else {
            return Ok(());
        };
        let file = std::path::Path::new(root).join(rel);
        let synced = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&file)?.sync_all()?;
            match file.parent() {
                Some(dir) => std::fs::File::open(dir)?.sync_all(),
                None => Ok(()),
            }
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        synced.map_err(|e| CheckpointError::Store {
            file: self.name(rel),
            source: object_store::Error::Generic {
                store: "local",
                source: Box::new(e),
            },
        })
    }

    pub async fn write_metadata(&self, meta: &JobMetadata) -> Result<()> {
        self.create("metadata", meta).await
    }

    pub async fn read_metadata(&self) -> Result<Option<JobMetadata>> {
        self.read("metadata").await
    }

    /// The job as it runs now: the latest revision (a resubmission with changed SQL), else the
    /// original metadata. Returns the revision number too (0 for the original).
    pub async fn current_metadata(&self) -> Result<Option<(u64, JobMetadata)>> {
        if let Some(&n) = self.batches("revisions").await?.last()
            && let Some(meta) = self.read(&format!("revisions/{n}")).await?
        {
            return Ok(Some((n, meta)));
        }
        Ok(self.read_metadata().await?.map(|m| (0, m)))
    }

    /// The job as it was when a batch committed at `at_ms`: the newest revision submitted at
    /// or before then, else the original metadata.
    pub async fn metadata_at(&self, at_ms: u64) -> Result<Option<(u64, JobMetadata)>> {
        for n in self.batches("revisions").await?.into_iter().rev() {
            if let Some(meta) = self.read::<JobMetadata>(&format!("revisions/{n}")).await?
                && meta.submitted_at_ms <= at_ms
            {
                return Ok(Some((n, meta)));
            }
        }
        Ok(self.read_metadata().await?.map(|m| (0, m)))
    }

    /// Records a resubmission; created once, so two concurrent resubmissions cannot both win.
    pub async fn write_revision(&self, n: u64, meta: &JobMetadata) -> Result<()> {
        self.create(&format!("revisions/{n}"), meta).await
    }

    /// Forgets how the job ended, so that it runs again (after a resubmission).
    pub async fn clear_final(&self) -> Result<()> {
        self.delete("final").await
    }

    /// The write-ahead entry: must exist before any task of the batch runs.
    pub async fn write_offsets(&self, entry: &OffsetsEntry) -> Result<()> {
        self.create(&format!("offsets/{}", entry.batch_id), entry)
            .await
    }

    pub async fn read_offsets(&self, batch: BatchId) -> Result<Option<OffsetsEntry>> {
        self.read(&format!("offsets/{batch}")).await
    }

    pub async fn write_final(&self, end: &FinalState) -> Result<()> {
        self.create("final", end).await
    }

    pub async fn read_final(&self) -> Result<Option<FinalState>> {
        self.read("final").await
    }

    pub async fn write_commit(&self, entry: &CommitEntry) -> Result<()> {
        self.create(&format!("commits/{}", entry.batch_id), entry)
            .await
    }

    pub async fn read_commit(&self, batch: BatchId) -> Result<Option<CommitEntry>> {
        self.read(&format!("commits/{batch}")).await
    }

    /// Compacts the logs after committing `batch`: records `progress` (each source's position
    /// after `batch`, as JSON) in `offsets/compact-<batch>`, then deletes log entries older than
    /// the last `retain` batches and older compactions. Recovery reads the latest compaction
    /// plus the entries that remain.
    pub async fn compact(
        &self,
        batch: BatchId,
        progress: &serde_json::Value,
        retain: u64,
    ) -> Result<()> {
        match self
            .create(&format!("offsets/compact-{batch}"), progress)
            .await
        {
            // Already compacted by an earlier run of this step.
            Ok(()) | Err(CheckpointError::Fenced { .. }) => {}
            Err(e) => return Err(e),
        }
        let cutoff = batch.saturating_sub(retain);
        let mut old = Vec::new();
        for log in ["offsets", "commits"] {
            let batches = self.batches(log).await?;
            old.extend(
                batches
                    .into_iter()
                    .filter(|b| *b <= cutoff)
                    .map(|b| format!("{log}/{b}")),
            );
        }
        let compactions = self.compactions().await?;
        old.extend(
            compactions
                .into_iter()
                .filter(|c| *c < batch)
                .map(|c| format!("offsets/compact-{c}")),
        );
        self.delete_all(old).await?;
        Ok(())
    }

    /// The latest compaction: (batch, progress JSON).
    pub async fn latest_compaction(&self) -> Result<Option<(BatchId, serde_json::Value)>> {
        let Some(latest) = self.compactions().await?.into_iter().max() else {
            return Ok(None);
        };
        Ok(self
            .read(&format!("offsets/compact-{latest}"))
            .await?
            .map(|p| (latest, p)))
    }

    async fn compactions(&self) -> Result<Vec<BatchId>> {
        let prefix = self.path("offsets");
        let listed: Vec<_> =
            self.store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|source| CheckpointError::Store {
                    file: self.name("offsets"),
                    source,
                })?;
        Ok(listed
            .iter()
            .filter_map(|m| {
                m.location
                    .filename()?
                    .strip_prefix("compact-")?
                    .parse()
                    .ok()
            })
            .collect())
    }

    /// Deletes many files at once, with the store's bulk delete (S3: up to 1,000 per request);
    /// a file already gone is fine. Returns how many were asked for.
    pub(crate) async fn delete_all(&self, rels: Vec<String>) -> Result<usize> {
        use futures::StreamExt;
        let n = rels.len();
        let Some(first) = rels.first().cloned() else {
            return Ok(0);
        };
        let paths = futures::stream::iter(rels.iter().map(|r| Ok(self.path(r)))).boxed();
        let mut deleted = self.store.delete_stream(paths);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => {
                    return Err(CheckpointError::Store {
                        file: format!("{} (and {} more)", self.name(&first), n - 1),
                        source,
                    });
                }
            }
        }
        Ok(n)
    }

    async fn delete(&self, rel: &str) -> Result<()> {
        match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(CheckpointError::Store {
                file: self.name(rel),
                source,
            }),
        }
    }

    /// Batch ids present in a log ("offsets" or "commits"), ascending.
    pub async fn batches(&self, log: &str) -> Result<Vec<BatchId>> {
        let prefix = self.path(log);
        let listed: Vec<_> =
            self.store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|source| CheckpointError::Store {
                    file: self.name(log),
                    source,
                })?;
        let mut ids: Vec<BatchId> = listed
            .iter()
            .filter_map(|m| m.location.filename()?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    async fn create<T: Serialize>(&self, rel: &str, value: &T) -> Result<()> {
        let body = serde_json::to_string(value).expect("checkpoint entries serialize");
        let env = Envelope {
            format: FORMAT_VERSION,
            crc32: crc32fast::hash(body.as_bytes()),
            body,
        };
        let bytes = serde_json::to_vec_pretty(&env).expect("envelope serializes");
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(rel), PutPayload::from(Bytes::from(bytes)), opts)
            .await
        {
            Ok(_) => self.sync(rel).await,
            Err(object_store::Error::AlreadyExists { .. }) => Err(CheckpointError::Fenced {
                file: self.name(rel),
            }),
            Err(source) => Err(CheckpointError::Store {
                file: self.name(rel),
                source,
            }),
        }
    }

    async fn read<T: DeserializeOwned>(&self, rel: &str) -> Result<Option<T>> {
        let file = self.name(rel);
        let bytes = match self.store.get(&self.path(rel)).await {
            Ok(r) => r.bytes().await.map_err(|source| CheckpointError::Store {
                file: file.clone(),
                source,
            })?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(CheckpointError::Store { file, source }),
        };
        let corrupted = |reason: String| CheckpointError::Corrupted {
            file: file.clone(),
            reason,
        };
        let env: Envelope = serde_json::from_slice(&bytes)
            .map_err(|e| corrupted(format!("not a checkpoint envelope ({e})")))?;
        if env.format > FORMAT_VERSION {
            return Err(corrupted(format!(
                "format version {} is newer than this Sluice ({FORMAT_VERSION})",
                env.format
            )));
        }
        if crc32fast::hash(env.body.as_bytes()) != env.crc32 {
            return Err(corrupted("checksum mismatch".into()));
        }
        serde_json::from_str(&env.body)
            .map(Some)
            .map_err(|e| corrupted(format!("unexpected content ({e})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;

    fn checkpoint(dir: &std::path::Path) -> JobCheckpoint {
        JobCheckpoint::new(
            Arc::new(LocalFileSystem::new()),
            Path::from_absolute_path(dir).unwrap(),
            format!("file://{}", dir.display()),
        )
    }

    fn offsets(batch: BatchId) -> OffsetsEntry {
        OffsetsEntry {
            batch_id: batch,
            planned_at_ms: 5,
            sources: [(
                "clicks".to_string(),
                vec![SourceSplit::from_json(r#"{"kind":"datagen","start":0,"end":10}"#).unwrap()],
            )]
            .into_iter()
            .collect(),
            watermark: None,
            position: [("clicks".to_string(), serde_json::json!({"next_row": 10}))].into(),
        }
    }

    #[tokio::test]
    async fn logs_round_trip_and_list_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cp = checkpoint(dir.path());
        for b in [0, 2, 10, 1] {
            cp.write_offsets(&offsets(b)).await.unwrap();
        }
        assert_eq!(cp.batches("offsets").await.unwrap(), vec![0, 1, 2, 10]);
        assert_eq!(cp.read_offsets(10).await.unwrap(), Some(offsets(10)));
        assert_eq!(cp.read_offsets(11).await.unwrap(), None);
        assert!(cp.batches("commits").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn second_writer_of_a_batch_is_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let cp = checkpoint(dir.path());
        cp.write_offsets(&offsets(0)).await.unwrap();
        let err = cp.write_offsets(&offsets(0)).await.unwrap_err();
        assert!(matches!(err, CheckpointError::Fenced { .. }), "{err}");
        assert!(err.to_string().contains("offsets/0"), "{err}");
    }

    #[tokio::test]
    async fn corruption_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cp = checkpoint(dir.path());
        cp.write_offsets(&offsets(0)).await.unwrap();
        let file = dir.path().join("offsets/0");
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace("\\\"end\\\":10", "\\\"end\\\":11");
        std::fs::write(&file, text).unwrap();
        let err = cp.read_offsets(0).await.unwrap_err().to_string();
        assert!(
            err.contains("offsets/0 is corrupted: checksum mismatch"),
            "{err}"
        );
        std::fs::write(&file, "{\"format\":1").unwrap();
        let err = cp.read_offsets(0).await.unwrap_err().to_string();
        assert!(err.contains("offsets/0 is corrupted"), "{err}");
    }
}
