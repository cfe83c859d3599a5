//! What a connector is: the source and sink interfaces every one implements and the runtime
//! calls, so that adding a connector means writing one module and adding it to the registry
//! (`connectors/mod.rs`). Splits and positions are the connector's own: the runtime logs,
//! replays and ships them as opaque JSON.

use crate::{ConnectorError, Result, TableSpec};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_core::{BatchId, SourceSplit, Trigger};

/// What the driver knows when it plans a batch's input.
#[derive(Debug, Clone, Copy)]
pub struct PlanContext {
    pub now_ms: u64,
    pub job_start_ms: u64,
    pub trigger: Trigger,
    /// Split count for sources that can split freely (the job's `partitions`).
    pub default_splits: u32,
}

/// How far a source has been read, in its connector's terms: a JSON object whose `kind` names
/// the connector. Rebuilt on restart from the latest compacted position plus the offsets
/// entries logged since.
pub type Position = serde_json::Value;

/// A batch's planned input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub splits: Vec<SourceSplit>,
    /// The source will never have more input (a bounded datagen that is used up).
    pub exhausted: bool,
    /// Records already in the source that this batch leaves for later, per source partition
    /// (Kafka consumer lag after the batch, by `topic-partition`), where the source can tell.
    pub backlog: Option<std::collections::BTreeMap<String, u64>>,
}

/// What reading one split produced.
pub struct SplitRead {
    pub rows: Vec<RecordBatch>,
    /// Records that could not be decoded, for the dead-letter table.
    pub dead_letters: Option<RecordBatch>,
}

/// One source table, opened from its declaration: planned on the driver, read on executors.
#[async_trait::async_trait]
pub trait SourceConnector: Send + Sync + std::fmt::Debug {
    /// The position before anything was read.
    fn start(&self) -> Position;

    /// Records that a logged batch read `splits`. Replaying the log through it rebuilds the
    /// position, so it must give the same result however often a split is applied.
    fn advance(&self, position: &mut Position, splits: &[SourceSplit]) -> Result<()>;

    /// The next batch's input from `position`: exact splits, replayable after any failure.
    async fn plan(&self, position: &Position, ctx: &PlanContext) -> Result<Planned>;

    /// Reads one split's rows (without `_batch`), and the records that go to the dead-letter
    /// table instead, for a connector that has one.
    async fn read(&self, split: &SourceSplit) -> Result<SplitRead>;

    /// After a batch committed with the source at `position` (Kafka: the consumer group's
    /// offsets, for lag tools). The checkpoint stays the source of truth.
    async fn committed(&self, _position: &Position) -> Result<()> {
        Ok(())
    }

    /// The declared table bad records go to, if the source has one.
    fn dead_letter_table(&self) -> Option<&str> {
        None
    }

    /// Whether the table is static: read whole by each batch that joins it, never consumed.
    fn is_static(&self) -> bool {
        false
    }

    /// A static table's current version, as the files to read.
    async fn list_static(&self) -> Result<Vec<SourceSplit>> {
        Err(ConnectorError::Read("this table is not static".into()))
    }

    /// Reads one file of a static table's logged version.
    async fn read_static(&self, _split: &SourceSplit) -> Result<Vec<RecordBatch>> {
        Err(ConnectorError::Read("this table is not static".into()))
    }
}

/// A kind of source, as `connector = '<name>'` names it.
pub trait SourceFactory: Send + Sync {
    fn name(&self) -> &'static str;

    /// Checks the table's options and opens it.
    fn open(&self, spec: &TableSpec) -> Result<Box<dyn SourceConnector>>;

    /// The columns its rows carry (before `_batch`): the declared ones, plus any metadata.
    fn schema(&self, spec: &TableSpec) -> SchemaRef {
        spec.schema.clone()
    }

    /// The options that say *which* data it reads (a directory, a broker and topics, a
    /// generator's seed): a checkpoint's positions mean nothing for another source, so a
    /// resubmission may not change them.
    fn identity_options(&self) -> &'static [&'static str] {
        &[]
    }

    /// The split kind it logs, to find the connector of a logged split.
    fn split_kind(&self) -> &'static str;

    /// One batch's splits in a few words, for `sluice checkpoint inspect`.
    fn summarize(&self, splits: &[SourceSplit]) -> String {
        format!("{} splits", splits.len())
    }
}

/// What writing one partition produced.
#[derive(Debug, Default)]
pub struct PartitionWritten {
    pub rows: u64,
    /// Console sink: up to `num_rows` rows as Arrow IPC, for the driver to show.
    pub console: Vec<u8>,
}

/// One sink table, opened from its declaration: written by executors, committed by the driver.
#[async_trait::async_trait]
pub trait SinkConnector: Send + Sync + std::fmt::Debug {
    /// Writes one final-stage partition of a batch, under a name that depends only on
    /// (batch, partition), so a rerun overwrites instead of duplicating.
    async fn write(
        &self,
        batch_id: BatchId,
        partition: u32,
        batches: &[RecordBatch],
    ) -> Result<PartitionWritten>;

    /// Makes the batch visible once every task succeeded; `written` lists the partitions this
    /// run wrote rows to, so anything else under the batch belongs to an earlier run.
    async fn commit(&self, _batch_id: BatchId, _written: &[u32]) -> Result<()> {
        Ok(())
    }

    /// For a console sink: how many rows of each batch the driver shows.
    fn console_rows(&self) -> Option<usize> {
        None
    }
}

/// A kind of sink, as `connector = '<name>'` names it.
pub trait SinkFactory: Send + Sync {
    fn name(&self) -> &'static str;

    /// Checks the table's options and opens it.
    fn open(&self, spec: &TableSpec) -> Result<Box<dyn SinkConnector>>;
}

/// A position of connector `kind` holding `fields`.
pub fn encode_position<T: Serialize>(kind: &str, fields: &T) -> Position {
    let mut value = serde_json::to_value(fields).expect("position serializes");
    if let Some(object) = value.as_object_mut() {
        object.insert("kind".into(), kind.into());
    }
    value
}

/// The fields of a position of connector `kind`. Through text, because JSON object keys are
/// strings and only the text parser turns them back into numbers (Kafka partition ids).
pub fn decode_position<T: DeserializeOwned>(kind: &str, position: &Position) -> Result<T> {
    let found = position.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    if found != kind {
        return Err(ConnectorError::Read(format!(
            "a '{found}' position is not a '{kind}' position"
        )));
    }
    serde_json::from_str(&position.to_string())
        .map_err(|e| ConnectorError::Read(format!("bad '{kind}' position: {e}")))
}

/// Decodes a split of `kind`, or says it belongs to another connector.
pub fn decode_split<T: DeserializeOwned>(kind: &str, split: &SourceSplit) -> Result<T> {
    split.decode(kind).map_err(ConnectorError::Read)
}
