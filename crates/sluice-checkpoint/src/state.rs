//! State files of running aggregations: `state/<operator>/<partition>/<version>.delta` and
//! `<version>.snapshot`. Version N is the state after batch N.
//!
//! Executors write these (the task that computed version N), so a rerun of the same batch
//! overwrites a file with the same content: state files use plain atomic puts, not
//! create-if-absent. Each file is a binary envelope (magic, format, length, CRC32) around an
//! opaque payload (Arrow IPC); a torn or altered file is reported as corrupted, by name.

use crate::{CheckpointError, FORMAT_VERSION, JobCheckpoint, Result};
use bytes::{BufMut, Bytes, BytesMut};
use futures::TryStreamExt;
use object_store::PutPayload;
use sluice_core::BatchId;

const MAGIC: &[u8; 4] = b"SLST";
const HEADER: usize = 4 + 4 + 8 + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StateKind {
    /// The partition's changes in one batch.
    Delta,
    /// The partition's whole state.
    Snapshot,
}

impl StateKind {
    fn extension(self) -> &'static str {
        match self {
            StateKind::Delta => "delta",
            StateKind::Snapshot => "snapshot",
        }
    }
}

/// One state file as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    pub version: BatchId,
    pub kind: StateKind,
    pub size: u64,
}

/// Where a restore of one version starts and which deltas it applies, newest snapshot first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    /// None: start from the empty state before the job's first batch.
    pub snapshot: Option<BatchId>,
    pub deltas: Vec<BatchId>,
}

/// The ways to rebuild `version` from `files`, best first: the latest snapshot at or before
/// it, then older ones (used when a newer snapshot is corrupted), then deltas from the start.
/// A way is listed only if every delta it needs exists.
pub fn restore_plans(files: &[StateFile], version: BatchId) -> Vec<RestorePlan> {
    let has = |v: BatchId, kind: StateKind| files.iter().any(|f| f.version == v && f.kind == kind);
    let mut snapshots: Vec<BatchId> = files
        .iter()
        .filter(|f| f.kind == StateKind::Snapshot && f.version <= version)
        .map(|f| f.version)
        .collect();
    snapshots.sort_unstable_by(|a, b| b.cmp(a));
    snapshots.dedup();
    let mut plans: Vec<RestorePlan> = snapshots
        .into_iter()
        .map(|s| RestorePlan {
            snapshot: Some(s),
            deltas: (s + 1..=version).collect(),
        })
        .collect();
    plans.push(RestorePlan {
        snapshot: None,
        deltas: (0..=version).collect(),
    });
    plans
        .into_iter()
        .filter(|p| p.deltas.iter().all(|d| has(*d, StateKind::Delta)))
        .collect()
}

impl JobCheckpoint {
    fn state_rel(operator: &str, partition: u32) -> String {
        format!("state/{operator}/{partition}")
    }

    fn state_file_rel(operator: &str, partition: u32, version: BatchId, kind: StateKind) -> String {
        format!(
            "{}/{version}.{}",
            Self::state_rel(operator, partition),
            kind.extension()
        )
    }

    /// Writes one state file atomically (a reader sees the old file or the new one).
    pub async fn write_state(
        &self,
        operator: &str,
        partition: u32,
        version: BatchId,
        kind: StateKind,
        payload: &[u8],
    ) -> Result<()> {
        let rel = Self::state_file_rel(operator, partition, version, kind);
        let mut buf = BytesMut::with_capacity(HEADER + payload.len());
        buf.put_slice(MAGIC);
        buf.put_u32(FORMAT_VERSION);
        buf.put_u64(payload.len() as u64);
        buf.put_u32(crc32fast::hash(payload));
        buf.put_slice(payload);
        self.store
            .put(&self.path(&rel), PutPayload::from(buf.freeze()))
            .await
            .map_err(|source| CheckpointError::Store {
                file: self.name(&rel),
                source,
            })?;
        self.sync(&rel).await
    }

    /// Reads one state file's payload, checking its envelope; missing is an error too, since
    /// only listed files are read.
    pub async fn read_state(
        &self,
        operator: &str,
        partition: u32,
        version: BatchId,
        kind: StateKind,
    ) -> Result<Bytes> {
        let rel = Self::state_file_rel(operator, partition, version, kind);
        let file = self.name(&rel);
        let bytes = self
            .store
            .get(&self.path(&rel))
            .await
            .map_err(|source| CheckpointError::Store {
                file: file.clone(),
                source,
            })?
            .bytes()
            .await
            .map_err(|source| CheckpointError::Store {
                file: file.clone(),
                source,
            })?;
        let corrupted = |reason: String| CheckpointError::Corrupted {
            file: file.clone(),
            reason,
        };
        if bytes.len() < HEADER || &bytes[..4] != MAGIC {
            return Err(corrupted("not a Sluice state file".into()));
        }
        let format = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if format > FORMAT_VERSION {
            return Err(corrupted(format!(
                "format version {format} is newer than this Sluice ({FORMAT_VERSION})"
            )));
        }
        let len = u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
        let crc = u32::from_be_bytes(bytes[16..20].try_into().expect("4 bytes"));
        let payload = bytes.slice(HEADER..);
        if payload.len() != len {
            return Err(corrupted(format!(
                "truncated: {} of {len} payload bytes",
                payload.len()
            )));
        }
        if crc32fast::hash(&payload) != crc {
            return Err(corrupted("checksum mismatch".into()));
        }
        Ok(payload)
    }

    /// The state files of one partition, by version.
    pub async fn state_files(&self, operator: &str, partition: u32) -> Result<Vec<StateFile>> {
        let rel = Self::state_rel(operator, partition);
        let listed: Vec<_> = self
            .store
            .list(Some(&self.path(&rel)))
            .try_collect()
            .await
            .map_err(|source| CheckpointError::Store {
                file: self.name(&rel),
                source,
            })?;
        let mut files: Vec<StateFile> = listed
            .iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                let (version, ext) = name.split_once('.')?;
                let kind = match ext {
                    "delta" => StateKind::Delta,
                    "snapshot" => StateKind::Snapshot,
                    _ => return None,
                };
                Some(StateFile {
                    version: version.parse().ok()?,
                    kind,
                    size: m.size,
                })
            })
            .collect();
        files.sort_by_key(|f| (f.version, f.kind));
        Ok(files)
    }

    /// Operators and their partitions that have state, for inspection and retention.
    pub async fn state_partitions(&self) -> Result<Vec<(String, u32)>> {
        let listed: Vec<_> = self
            .store
            .list(Some(&self.path("state")))
            .try_collect()
            .await
            .map_err(|source| CheckpointError::Store {
                file: self.name("state"),
                source,
            })?;
        let base = self.path("state");
        let mut out: Vec<(String, u32)> = listed
            .iter()
            .filter_map(|m| {
                let mut parts = m.location.prefix_match(&base)?;
                let op = parts.next()?.as_ref().to_string();
                let partition = parts.next()?.as_ref().parse().ok()?;
                Some((op, partition))
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Deletes the state files older than the latest snapshot at or before `oldest_needed`:
    /// every version from `oldest_needed` on can still be restored, and a corrupted snapshot
    /// can still fall back to an older one within the retained range.
    pub async fn prune_state(&self, oldest_needed: BatchId) -> Result<usize> {
        let mut old = Vec::new();
        for (op, partition) in self.state_partitions().await? {
            let files = self.state_files(&op, partition).await?;
            let Some(base) = files
                .iter()
                .filter(|f| f.kind == StateKind::Snapshot && f.version <= oldest_needed)
                .map(|f| f.version)
                .max()
            else {
                continue;
            };
            old.extend(
                files
                    .iter()
                    .filter(|f| f.version < base)
                    .map(|f| Self::state_file_rel(&op, partition, f.version, f.kind)),
            );
        }
        self.delete_all(old).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::path::Path;
    use std::sync::Arc;

    fn file(version: BatchId, kind: StateKind) -> StateFile {
        StateFile {
            version,
            kind,
            size: 1,
        }
    }

    #[test]
    fn restore_prefers_the_latest_snapshot_and_falls_back_to_older_ones() {
        use StateKind::*;
        let mut files: Vec<StateFile> = (0..=12).map(|v| file(v, Delta)).collect();
        files.extend([file(5, Snapshot), file(10, Snapshot)]);
        let plans = restore_plans(&files, 12);
        assert_eq!(plans[0].snapshot, Some(10));
        assert_eq!(plans[0].deltas, vec![11, 12]);
        assert_eq!(plans[1].snapshot, Some(5));
        assert_eq!(plans[1].deltas, (6..=12).collect::<Vec<_>>());
        assert_eq!(plans[2].snapshot, None);
        assert_eq!(restore_plans(&files, 10)[0].deltas, Vec::<u64>::new());
        // Retention deleted the early deltas: only snapshots 5 and 10 can start a restore.
        files.retain(|f| f.version >= 5);
        let plans = restore_plans(&files, 12);
        assert_eq!(plans.len(), 2);
        // A missing delta rules out every plan that needs it.
        files.retain(|f| !(f.version == 7 && f.kind == Delta));
        let plans = restore_plans(&files, 12);
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].snapshot, Some(10));
        assert!(restore_plans(&files, 8).is_empty());
    }

    #[tokio::test]
    async fn state_files_round_trip_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cp = JobCheckpoint::new(
            Arc::new(LocalFileSystem::new()),
            Path::from_absolute_path(dir.path()).unwrap(),
            format!("file://{}", dir.path().display()),
        );
        cp.write_state("agg-1", 2, 0, StateKind::Delta, b"zero")
            .await
            .unwrap();
        cp.write_state("agg-1", 2, 1, StateKind::Delta, b"one")
            .await
            .unwrap();
        cp.write_state("agg-1", 2, 1, StateKind::Snapshot, b"all")
            .await
            .unwrap();
        // A rerun overwrites with the same content.
        cp.write_state("agg-1", 2, 1, StateKind::Delta, b"one")
            .await
            .unwrap();
        let files = cp.state_files("agg-1", 2).await.unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(
            cp.state_partitions().await.unwrap(),
            vec![("agg-1".to_string(), 2)]
        );
        assert_eq!(
            &cp.read_state("agg-1", 2, 1, StateKind::Delta)
                .await
                .unwrap()[..],
            b"one"
        );
        let path = dir.path().join("state/agg-1/2/1.snapshot");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&path, &bytes).unwrap();
        let err = cp
            .read_state("agg-1", 2, 1, StateKind::Snapshot)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("state/agg-1/2/1.snapshot is corrupted: truncated"),
            "{err}"
        );
        bytes.push(b'X');
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = cp
            .read_state("agg-1", 2, 1, StateKind::Snapshot)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        // Retention: with snapshot 1 as the oldest needed base, version 0 goes.
        assert_eq!(cp.prune_state(1).await.unwrap(), 1);
        assert_eq!(cp.state_files("agg-1", 2).await.unwrap().len(), 2);
    }
}
