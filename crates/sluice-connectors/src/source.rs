//! Sources: planned on the driver (exact splits for a batch), read on the executors.

use crate::datagen::DatagenSource;
use crate::files::FilesSource;
use crate::options::SOURCES;
use crate::{Result, TableSpec};
use arrow::array::{ArrayRef, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use sluice_core::{BATCH_COLUMN, BatchId, SourceSplit, Trigger};
use std::collections::BTreeSet;
use std::sync::Arc;

/// What the driver knows when it plans a batch's input.
#[derive(Debug, Clone, Copy)]
pub struct PlanContext {
    pub now_ms: u64,
    pub job_start_ms: u64,
    pub trigger: Trigger,
    /// Split count for sources that can split freely (the job's `partitions`).
    pub default_splits: u32,
}

/// How far a source has been read: rebuilt on restart from the latest compacted position plus
/// the offsets entries logged since.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceProgress {
    Files {
        seen: BTreeSet<String>,
    },
    Datagen {
        next_row: u64,
    },
    /// Next offset to read per topic and partition.
    Kafka {
        #[serde(with = "crate::kafka::positions_as_list")]
        positions: crate::kafka::Positions,
    },
}

impl SourceProgress {
    /// Reads a position stored as JSON. Through text, because JSON object keys are strings
    /// and only the text parser turns them back into numbers (Kafka partition ids).
    pub fn from_json(value: &serde_json::Value) -> Result<SourceProgress, serde_json::Error> {
        serde_json::from_str(&value.to_string())
    }

    /// Records that `splits` were (or will be) read by a logged batch.
    pub fn advance(&mut self, splits: &[SourceSplit]) {
        for split in splits {
            match (&mut *self, split) {
                (SourceProgress::Files { seen }, SourceSplit::File { uri, .. }) => {
                    seen.insert(uri.clone());
                }
                (SourceProgress::Datagen { next_row }, SourceSplit::Datagen { end, .. }) => {
                    *next_row = (*next_row).max(*end);
                }
                (
                    SourceProgress::Kafka { positions },
                    SourceSplit::Kafka {
                        topic,
                        partition,
                        until,
                        ..
                    },
                ) => {
                    let next = positions
                        .entry(topic.clone())
                        .or_default()
                        .entry(*partition)
                        .or_insert(*until);
                    *next = (*next).max(*until);
                }
                _ => {}
            }
        }
    }
}

/// A batch's planned input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub splits: Vec<SourceSplit>,
    /// The source will never have more input (a bounded datagen that is used up).
    pub exhausted: bool,
    /// Records already in the source that this batch leaves for later (Kafka consumer lag
    /// after the batch), where the source can tell.
    pub backlog: Option<u64>,
}

/// What reading one split produced.
pub struct SplitRead {
    pub rows: Vec<RecordBatch>,
    /// Records that could not be decoded, for the dead-letter table.
    pub dead_letters: Option<RecordBatch>,
}

#[derive(Debug)]
pub enum Source {
    Files(FilesSource),
    Datagen(DatagenSource),
    Kafka(crate::kafka::KafkaSource),
}

impl Source {
    pub fn from_spec(spec: &TableSpec) -> Result<Source> {
        match spec.connector()? {
            "files" => Ok(Source::Files(FilesSource::new(spec)?)),
            "datagen" => Ok(Source::Datagen(DatagenSource::new(spec)?)),
            "kafka" => Ok(Source::Kafka(crate::kafka::KafkaSource::new(spec)?)),
            other => Err(spec.error(format!(
                "unknown source connector '{other}'; valid source connectors: {}",
                SOURCES.join(", ")
            ))),
        }
    }

    pub fn new_progress(&self) -> SourceProgress {
        match self {
            Source::Files(_) => SourceProgress::Files {
                seen: BTreeSet::new(),
            },
            Source::Datagen(_) => SourceProgress::Datagen { next_row: 0 },
            Source::Kafka(_) => SourceProgress::Kafka {
                positions: Default::default(),
            },
        }
    }

    /// After a batch committed with the source at `progress` (Kafka: the consumer group's
    /// offsets, for lag tools).
    pub async fn committed(&self, progress: &SourceProgress) -> Result<()> {
        match (self, progress) {
            (Source::Kafka(k), SourceProgress::Kafka { positions }) => {
                k.commit_group(positions).await
            }
            _ => Ok(()),
        }
    }

    pub async fn plan(&self, progress: &SourceProgress, ctx: &PlanContext) -> Result<Planned> {
        match (self, progress) {
            (Source::Files(f), SourceProgress::Files { seen }) => f.plan(seen, ctx).await,
            (Source::Datagen(d), SourceProgress::Datagen { next_row }) => {
                Ok(d.plan(*next_row, ctx))
            }
            (Source::Kafka(k), SourceProgress::Kafka { positions }) => k.plan(positions, ctx).await,
            _ => unreachable!("progress kind follows the source kind"),
        }
    }

    /// Reads one split, with the `_batch` pseudo-column appended.
    pub async fn read(&self, split: &SourceSplit, batch_id: BatchId) -> Result<Vec<RecordBatch>> {
        let read = self.read_split(split, batch_id).await?;
        match read.dead_letters {
            None => Ok(read.rows),
            Some(d) => Err(crate::ConnectorError::Read(format!(
                "{} bad records in {split:?} need the dead-letter table; use read_split",
                d.num_rows()
            ))),
        }
    }

    /// Reads one split: its rows (with `_batch`) and the records that went to the dead-letter
    /// table instead (Kafka with on_error = 'dead_letter').
    pub async fn read_split(&self, split: &SourceSplit, batch_id: BatchId) -> Result<SplitRead> {
        let mut dead_letters = None;
        let batches = match (self, split) {
            (Source::Files(f), SourceSplit::File { uri, .. }) => f.read(uri).await?,
            (Source::Datagen(d), SourceSplit::Datagen { start, end }) => d.read(*start, *end)?,
            (
                Source::Kafka(k),
                SourceSplit::Kafka {
                    topic,
                    partition,
                    from,
                    until,
                },
            ) => {
                let (rows, dead) = k.read(topic, *partition, *from, *until).await?;
                dead_letters = dead;
                vec![rows]
            }
            (_, other) => {
                return Err(crate::ConnectorError::Read(format!(
                    "split {other:?} does not belong to this source"
                )));
            }
        };
        let rows = batches
            .into_iter()
            .map(|b| with_batch_column(b, batch_id))
            .collect::<Result<_>>()?;
        Ok(SplitRead { rows, dead_letters })
    }

    /// The options that say *which* data a source reads (a directory, a broker and topics, a
    /// generator's seed): a checkpoint's positions mean nothing for another source, so a
    /// resubmission may not change them.
    pub fn identity_options(connector: &str) -> &'static [&'static str] {
        match connector {
            "files" => &["path", "format"],
            "kafka" => &["bootstrap.servers", "topic", "topics", "topic_pattern"],
            "datagen" => &["seed"],
            _ => &[],
        }
    }

    /// Whether the table is static (`static = 'true'`): read whole by each batch that joins
    /// it instead of consumed.
    pub fn is_static(&self) -> bool {
        matches!(self, Source::Files(f) if f.is_static)
    }

    /// A static table's current version, as the files to read.
    pub async fn list_static(&self) -> Result<Vec<SourceSplit>> {
        match self {
            Source::Files(f) if f.is_static => f.list_static().await,
            _ => Err(crate::ConnectorError::Read(
                "only a files table with static = 'true' is static".into(),
            )),
        }
    }

    /// Reads one file of a static table's logged version (no `_batch`: it belongs to no batch).
    pub async fn read_static(&self, split: &SourceSplit) -> Result<Vec<RecordBatch>> {
        match (self, split) {
            (Source::Files(f), SourceSplit::File { uri, e_tag, .. }) => {
                f.read_version(uri, e_tag.as_deref()).await
            }
            (_, other) => Err(crate::ConnectorError::Read(format!(
                "split {other:?} does not belong to a static table"
            ))),
        }
    }

    /// The declared table bad records go to, if the source has one.
    pub fn dead_letter_table(&self) -> Option<&str> {
        match self {
            Source::Kafka(k) => k.dead_letter_table.as_deref(),
            _ => None,
        }
    }
}

/// The columns a source table's rows carry before `_batch`: the declared ones, plus the
/// record metadata for Kafka.
pub fn table_schema(spec: &TableSpec) -> SchemaRef {
    match spec.connector() {
        Ok("kafka") => crate::kafka::with_metadata_columns(&spec.schema),
        _ => spec.schema.clone(),
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
    RecordBatch::try_new(schema, columns).map_err(|e| crate::ConnectorError::Read(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the chaos suite: a compacted Kafka position (partition ids as JSON object
    /// keys) could not be read back, so the job failed at its 100th batch after a restart.
    #[test]
    fn a_kafka_position_survives_a_json_round_trip() {
        let mut progress = SourceProgress::Kafka {
            positions: Default::default(),
        };
        progress.advance(&[SourceSplit::Kafka {
            topic: "events".into(),
            partition: 3,
            from: 0,
            until: 42,
        }]);
        let stored = serde_json::json!({ "events": progress });
        assert_eq!(
            SourceProgress::from_json(&stored["events"]).unwrap(),
            progress
        );
    }
}
