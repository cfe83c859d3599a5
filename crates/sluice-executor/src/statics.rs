//! Static tables on an executor. Every task of a stage that joins a static table needs all of
//! it, so each executor reads a version (the file list its batch logged) once and keeps it for
//! the job's later tasks and batches, until a batch logs another version.

use arrow::record_batch::RecordBatch;
use sluice_core::{Failure, FailureKind, JobId, SourceSplit};
use sluice_sql::{CompiledJob, SqlError};
use std::collections::HashMap;
use std::sync::Arc;

/// A static table's rows, shared by every task that joins them.
pub type StaticRows = Arc<Vec<RecordBatch>>;

/// The version of one (job, table) held here: its logged file list and its rows.
type Slot = Arc<tokio::sync::Mutex<Option<(Vec<String>, StaticRows)>>>;

/// One static table of one job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct JobTable {
    job: JobId,
    table: String,
}

#[derive(Default)]
pub struct StaticCache {
    slots: std::sync::Mutex<HashMap<JobTable, Slot>>,
}

impl StaticCache {
    /// The rows of `table` as of `files` (JSON splits, as logged): from memory when this
    /// executor holds that version, else read now. Tasks needing the same table wait for one
    /// read; other tables and jobs do not wait.
    pub async fn get(
        &self,
        job_id: &str,
        job: &CompiledJob,
        table: &str,
        files: &[String],
    ) -> Result<StaticRows, Failure> {
        let slot = self
            .slots
            .lock()
            .unwrap()
            .entry(JobTable {
                job: job_id.into(),
                table: table.to_string(),
            })
            .or_default()
            .clone();
        let mut held = slot.lock().await;
        if let Some((version, rows)) = held.as_ref()
            && version == files
        {
            return Ok(rows.clone());
        }
        let splits = files
            .iter()
            .map(|f| SourceSplit::from_json(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure::new(FailureKind::Bug, format!("bad static split: {e}")))?;
        let rows = Arc::new(
            job.read_static(table, &splits)
                .await
                .map_err(SqlError::into_failure)?,
        );
        tracing::info!(
            job = job_id,
            table,
            files = splits.len(),
            rows = rows.iter().map(|b| b.num_rows()).sum::<usize>(),
            "static table read"
        );
        *held = Some((files.to_vec(), rows.clone()));
        Ok(rows)
    }

    pub fn forget_job(&self, job_id: &str) {
        self.slots.lock().unwrap().retain(|k, _| k.job != job_id);
    }
}
