//! Checkpoint housekeeping off the batch loop: every `checkpoint.retain_batches` batches the
//! logs are compacted and old state files pruned, in the background, so no batch waits on
//! listing and deleting files. Nothing a batch or a recovery needs is touched: the compaction
//! entry is written before the entries it replaces are deleted, and pruning keeps every state
//! file a restore from a retained batch reads.

use sluice_checkpoint::JobCheckpoint;
use sluice_core::{BatchId, JobId};
use std::time::Instant;
use tokio::task::JoinHandle;

#[derive(Default)]
pub struct Housekeeping {
    running: Option<JoinHandle<()>>,
}

impl Housekeeping {
    /// Compacts the logs up to `batch` (`position`: every source's position after it) and
    /// prunes state older than the retained batches. A round still running when the next is
    /// due makes that one skip: the next round deletes everything older anyway.
    pub fn start(
        &mut self,
        job: &JobId,
        checkpoint: &JobCheckpoint,
        batch: BatchId,
        position: serde_json::Value,
        retain: u64,
    ) {
        if self.running.as_ref().is_some_and(|h| !h.is_finished()) {
            tracing::info!(%job, batch, "housekeeping still running; this round is skipped");
            return;
        }
        let (job, checkpoint) = (job.clone(), checkpoint.clone());
        self.running = Some(tokio::spawn(async move {
            let started = Instant::now();
            let done = async {
                checkpoint.compact(batch, &position, retain).await?;
                checkpoint.prune_state(batch.saturating_sub(retain)).await
            };
            // Retried by the next round: a failure here loses nothing and holds no batch.
            match done.await {
                Ok(pruned) => tracing::debug!(
                    %job,
                    batch,
                    pruned,
                    ms = started.elapsed().as_millis() as u64,
                    "checkpoint compacted"
                ),
                Err(e) => tracing::warn!(%job, batch, "checkpoint housekeeping failed: {e}"),
            }
        }));
    }
}
