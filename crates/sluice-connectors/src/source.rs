//! A source table as the runtime uses it: its connector (found in the registry) plus what
//! every source shares, the `_batch` pseudo-column.

use crate::connector::{PlanContext, Planned, Position, SourceConnector, SplitRead};
use crate::{ConnectorError, Result, TableSpec, connectors};
use arrow::array::{ArrayRef, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use sluice_core::{BATCH_COLUMN, BatchId, SourceSplit};
use std::sync::Arc;

#[derive(Debug)]
pub struct Source {
    connector: Box<dyn SourceConnector>,
}

impl Source {
    pub fn from_spec(spec: &TableSpec) -> Result<Source> {
        let name = spec.connector()?;
        let factory = connectors::source(name).ok_or_else(|| {
            spec.error(format!(
                "unknown source connector '{name}'; valid source connectors: {}",
                connectors::source_names().join(", ")
            ))
        })?;
        Ok(Source {
            connector: factory.open(spec)?,
        })
    }

    /// The position before anything was read.
    pub fn new_progress(&self) -> Position {
        self.connector.start()
    }

    /// Records that `splits` were (or will be) read by a logged batch.
    pub fn advance(&self, position: &mut Position, splits: &[SourceSplit]) -> Result<()> {
        self.connector.advance(position, splits)
    }

    /// After a batch committed with the source at `position`.
    pub async fn committed(&self, position: &Position) -> Result<()> {
        self.connector.committed(position).await
    }

    pub async fn plan(&self, position: &Position, ctx: &PlanContext) -> Result<Planned> {
        self.connector.plan(position, ctx).await
    }

    /// Reads one split, with the `_batch` pseudo-column appended.
    pub async fn read(&self, split: &SourceSplit, batch_id: BatchId) -> Result<Vec<RecordBatch>> {
        let read = self.read_split(split, batch_id).await?;
        match read.dead_letters {
            None => Ok(read.rows),
            Some(d) => Err(ConnectorError::Read(format!(
                "{} bad records in {split:?} need the dead-letter table; use read_split",
                d.num_rows()
            ))),
        }
    }

    /// Reads one split: its rows (with `_batch`) and the records that went to the dead-letter
    /// table instead (Kafka with on_error = 'dead_letter').
    pub async fn read_split(&self, split: &SourceSplit, batch_id: BatchId) -> Result<SplitRead> {
        let read = self.connector.read(split).await?;
        let rows = read
            .rows
            .into_iter()
            .map(|b| with_batch_column(b, batch_id))
            .collect::<Result<_>>()?;
        Ok(SplitRead {
            rows,
            dead_letters: read.dead_letters,
        })
    }

    /// The options that say *which* data a source of `connector` reads.
    pub fn identity_options(connector: &str) -> &'static [&'static str] {
        connectors::source(connector).map_or(&[], |f| f.identity_options())
    }

    /// The declared table bad records go to, if the source has one.
    pub fn dead_letter_table(&self) -> Option<&str> {
        self.connector.dead_letter_table()
    }

    /// Whether the table is static (`static = 'true'`): read whole by each batch that joins
    /// it instead of consumed.
    pub fn is_static(&self) -> bool {
        self.connector.is_static()
    }

    /// A static table's current version, as the files to read.
    pub async fn list_static(&self) -> Result<Vec<SourceSplit>> {
        self.connector.list_static().await
    }

    /// Reads one file of a static table's logged version (no `_batch`: it belongs to no batch).
    pub async fn read_static(&self, split: &SourceSplit) -> Result<Vec<RecordBatch>> {
        self.connector.read_static(split).await
    }
}

/// The columns a source table's rows carry before `_batch`: the declared ones, plus what its
/// connector adds (Kafka's record metadata).
pub fn table_schema(spec: &TableSpec) -> SchemaRef {
    match spec.connector().ok().and_then(connectors::source) {
        Some(factory) => factory.schema(spec),
        None => spec.schema.clone(),
    }
}

/// One logged batch's splits in a few words ("3 files, 1200 bytes"), by their connector.
pub fn summarize(splits: &[SourceSplit]) -> String {
    let Some(first) = splits.first() else {
        return "no input".into();
    };
    match connectors::source_of_split(first.kind()) {
        Some(factory) => factory.summarize(splits),
        None => format!("{} '{}' splits", splits.len(), first.kind()),
    }
}

/// The schema a source's rows have in SQL: the declared columns plus `_batch`.
pub fn source_schema(declared: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = declared
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(BATCH_COLUMN, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

fn with_batch_column(batch: RecordBatch, batch_id: BatchId) -> Result<RecordBatch> {
    let schema = source_schema(&batch.schema());
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(Int64Array::from_value(
        batch_id as i64,
        batch.num_rows(),
    )));
    RecordBatch::try_new(schema, columns).map_err(|e| ConnectorError::Read(e.to_string()))
}
