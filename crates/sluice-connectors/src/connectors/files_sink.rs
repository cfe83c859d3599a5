//! The `files` sink: batch N's partition P goes to `<path>/batch=<N>/part-<P>.<ext>`, and the
//! driver's commit writes `<path>/batch=<N>/_SUCCESS` once every task succeeded. A rerun writes
//! the same names, so readers of committed batches see every row exactly once.

use crate::connector::{PartitionWritten, SinkConnector, SinkFactory};
use crate::connectors::files::FileFormat;
use crate::store::{self, Location};
use crate::{ConnectorError, Result, TableSpec};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use object_store::PutPayload;
use sluice_core::BatchId;
use std::collections::BTreeSet;

const OPTIONS: &[&str] = &["path", "format", "csv.header", "csv.delimiter"];
/// Marks a files-sink batch directory as complete.
pub const SUCCESS_MARKER: &str = "_SUCCESS";

pub struct Factory;

impl SinkFactory for Factory {
    fn name(&self) -> &'static str {
        "files"
    }

    fn open(&self, spec: &TableSpec) -> Result<Box<dyn SinkConnector>> {
        let o = spec.options(OPTIONS, &[])?;
        Ok(Box::new(FilesSink {
            table: spec.name.clone(),
            location: store::open(o.required("path")?).map_err(|e| spec.error(e.to_string()))?,
            format: FileFormat::from_options(&o)?,
        }))
    }
}

#[derive(Debug)]
struct FilesSink {
    table: String,
    location: Location,
    format: FileFormat,
}

#[async_trait::async_trait]
impl SinkConnector for FilesSink {
    async fn write(
        &self,
        batch_id: BatchId,
        partition: u32,
        batches: &[RecordBatch],
    ) -> Result<PartitionWritten> {
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let out = PartitionWritten {
            rows,
            console: Vec::new(),
        };
        if rows == 0 {
            return Ok(out);
        }
        let (location, format) = (&self.location, self.format);
        let data = encode(batches, format).map_err(|e| self.write_error(batch_id, partition, e))?;
        let path = location.child(&format!(
            "batch={batch_id}/part-{partition:05}.{}",
            format.extension()
        ));
        location
            .store
            .put(&path, PutPayload::from(Bytes::from(data)))
            .await
            .map_err(|e| {
                // An unwritable path stays unwritable: the job's mistake, not an outage.
                let refused = sluice_core::failure::store_failure_kind(&e)
                    == sluice_core::FailureKind::BadPlan;
                let message = format!(
                    "cannot write batch {batch_id} partition {partition} under {}: {e}",
                    location.uri
                );
                if refused {
                    ConnectorError::Options {
                        table: self.table.clone(),
                        message,
                    }
                } else {
                    self.write_error(batch_id, partition, e.to_string())
                }
            })?;
        Ok(out)
    }

    /// Removes the parts of the batch this run did not write (an earlier or abandoned run,
    /// with more partitions or other rows), then writes `_SUCCESS`.
    async fn commit(&self, batch_id: BatchId, written: &[u32]) -> Result<()> {
        let location = &self.location;
        let dir = location.child(&format!("batch={batch_id}"));
        let keep: BTreeSet<String> = written
            .iter()
            .map(|p| format!("part-{p:05}.{}", self.format.extension()))
            .collect();
        let listed = location.store.list_with_delimiter(Some(&dir)).await;
        let objects = match listed {
            Ok(l) => l.objects,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for o in objects {
            let name = o.location.filename().unwrap_or_default();
            if name.starts_with("part-") && !keep.contains(name) {
                tracing::info!(sink = %self.table, batch = batch_id, name, "removing a part of an earlier run");
                location.store.delete(&o.location).await?;
            }
        }
        let path = location.child(&format!("batch={batch_id}/{SUCCESS_MARKER}"));
        location
            .store
            .put(&path, PutPayload::from_static(b""))
            .await?;
        Ok(())
    }
}

impl FilesSink {
    fn write_error(&self, batch_id: BatchId, partition: u32, e: String) -> ConnectorError {
        ConnectorError::Write(format!(
            "sink '{}': batch {batch_id} partition {partition}: {e}",
            self.table
        ))
    }
}

fn encode(batches: &[RecordBatch], format: FileFormat) -> std::result::Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let e = |e: &dyn std::fmt::Display| e.to_string();
    match format {
        FileFormat::Jsonl => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
            for b in batches {
                w.write(b).map_err(|x| e(&x))?;
            }
            w.finish().map_err(|x| e(&x))?;
        }
        FileFormat::Csv { header, delimiter } => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(header)
                .with_delimiter(delimiter)
                .build(&mut buf);
            for b in batches {
                w.write(b).map_err(|x| e(&x))?;
            }
        }
        FileFormat::Parquet => {
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batches[0].schema(), None)
                .map_err(|x| e(&x))?;
            for b in batches {
                w.write(b).map_err(|x| e(&x))?;
            }
            w.close().map_err(|x| e(&x))?;
        }
    }
    Ok(buf)
}
