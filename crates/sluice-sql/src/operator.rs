//! Stateful operators: the first operator of a stage (over the rows its exchange brought) that
//! keeps per-key state across batches. The runtime owns the state: it keeps each partition's
//! versions on an executor, makes every new version durable before the task reports (a delta
//! each batch, a snapshot on the interval), restores a partition from the checkpoint where it
//! is missing, and sends a partition's task back to the executor that holds it. An operator
//! only says what its state is and how a batch changes it. The running aggregation is the
//! first implementation; windows and joins are further ones, with no new field in `Fragment`
//! and no new branch in the task runner.

use crate::SqlError;
use crate::keyed::State;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use sluice_core::{BatchId, JobSettings};

/// What an operator knows about the batch it runs in.
pub struct BatchContext<'a> {
    pub batch_id: BatchId,
    /// The event-time watermark the batch logged (ms since the epoch), for a job with one:
    /// windows ending at or before it are closed, rows for them are late.
    pub watermark_ms: Option<i64>,
    /// The watermark the batch before ran with. An operator fed by another stateful operator
    /// judges late rows by it, since its upstream emits rows as the watermark passes them
    /// (Spark's SPARK-40925 rule); it still evicts by `watermark_ms`.
    pub previous_watermark_ms: Option<i64>,
    pub settings: &'a JobSettings,
    /// Plans and runs DataFusion plans (the job's session).
    pub session: &'a SessionContext,
}

/// What one batch did to one state partition.
pub struct Processed {
    /// The rows the operator emits, in its output schema.
    pub output: Vec<RecordBatch>,
    /// Input rows dropped because their window had closed (its end at or before the batch's
    /// watermark), as the operator received them, for `late_rows.table`.
    pub late: Vec<RecordBatch>,
    /// How many input rows were late (a join counts its sides' but keeps none).
    pub late_rows: u64,
    /// The operator's own statistics for the progress channel, reported as
    /// `<operator>.<name>` (a join's `left.state_rows`, ...).
    pub metrics: Vec<(String, sluice_core::progress::Metric)>,
    /// The partition's new state version.
    pub state: State,
    /// What is written to the checkpoint for this version: replaying deltas over a snapshot
    /// with [`StatefulOperator::restore`] rebuilds the state.
    pub delta: Vec<RecordBatch>,
}

#[async_trait::async_trait]
pub trait StatefulOperator: Send + Sync {
    /// Its name in the checkpoint's `state/` directory (e.g. `agg-1`).
    fn name(&self) -> &str;

    /// What its state depends on; a checkpoint written with another signature cannot be
    /// continued.
    fn signature(&self) -> &[String];

    /// The schema of its state rows (how snapshots and deltas are stored).
    fn state_schema(&self) -> SchemaRef;

    /// The scan that stands for its output in the rest of the stage, and that output's schema.
    fn output(&self) -> (&'static str, SchemaRef);

    /// For `sluice status` and logs: the operator in one line.
    fn describe(&self) -> String;

    /// When its state rows leave the state, in words (the web UI's plan page).
    fn eviction(&self) -> String;

    /// Whether the watermark closes its state (event-time windows): such an operator emits and
    /// drops state as the watermark moves, so a batch without input can still have output.
    fn windowed(&self) -> bool {
        false
    }

    /// Whether `SET 'output_mode'` decides what it emits (an aggregation).
    fn follows_output_mode(&self) -> bool {
        false
    }

    /// Whether every row it emits is final (a join; an aggregation in append mode), so that
    /// another stateful operator may consume its output.
    fn append_only(&self) -> bool {
        false
    }

    /// One batch: the partition's input rows (per exchange the stage reads: one for an
    /// aggregation, two for a join) and its previous state in, output and the new state out.
    async fn process(
        &self,
        ctx: &BatchContext<'_>,
        inputs: Vec<Vec<RecordBatch>>,
        state: &State,
    ) -> Result<Processed, SqlError>;

    /// A state version from a snapshot followed by the deltas after it (`parts`, oldest first).
    async fn restore(
        &self,
        session: &SessionContext,
        parts: &[Vec<RecordBatch>],
    ) -> Result<State, SqlError>;
}
