//! Sinks: executors write each final-stage partition; the driver commits the batch.
//! Output names depend only on (batch, partition), so a rerun overwrites instead of duplicating.

use crate::connectors::files::FileFormat;
use crate::options::SINKS;
use crate::store::{self, Location};
use crate::{ConnectorError, Result, TableSpec};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use object_store::PutPayload;
use sluice_core::BatchId;
use std::collections::BTreeSet;

const CONSOLE_OPTIONS: &[&str] = &["num_rows"];
/// The driver holds every row a console sink shows: bounded, as Spark's console sink is in
/// practice.
const MAX_CONSOLE_ROWS: usize = 10_000;
const FILES_OPTIONS: &[&str] = &["path", "format", "csv.header", "csv.delimiter"];
/// Marks a files-sink batch directory as complete.
pub const SUCCESS_MARKER: &str = "_SUCCESS";

#[derive(Debug)]
pub enum SinkKind {
    /// Shows up to `num_rows` rows of each batch on the driver's output.
    Console { num_rows: usize },
    /// Counts rows and drops them.
    Blackhole,
    Files {
        location: Location,
        format: FileFormat,
    },
    /// Produces each row as a record; at-least-once (a rerun produces its rows again).
    Kafka(crate::connectors::kafka::KafkaSink),
}

#[derive(Debug)]
pub struct Sink {
    pub table: String,
    pub kind: SinkKind,
}

/// What writing one partition produced.
#[derive(Debug, Default)]
pub struct PartitionWritten {
    pub rows: u64,
    /// Console sink: up to `num_rows` rows as Arrow IPC, for the driver to show.
    pub console: Vec<u8>,
}

impl Sink {
    pub fn from_spec(spec: &TableSpec) -> Result<Sink> {
        let kind = match spec.connector()? {
            "console" => {
                let o = spec.options(CONSOLE_OPTIONS, &[])?;
                SinkKind::Console {
                    num_rows: o.number_in("num_rows", 0..=MAX_CONSOLE_ROWS)?.unwrap_or(20),
                }
            }
            "blackhole" => {
                spec.options(&[], &[])?;
                SinkKind::Blackhole
            }
            "files" => {
                let o = spec.options(FILES_OPTIONS, &[])?;
                SinkKind::Files {
                    location: store::open(o.required("path")?)
                        .map_err(|e| spec.error(e.to_string()))?,
                    format: FileFormat::from_options(&o)?,
                }
            }
            "kafka" => SinkKind::Kafka(crate::connectors::kafka::KafkaSink::new(spec)?),
            other => {
                return Err(spec.error(format!(
                    "unknown sink connector '{other}'; valid sink connectors: {}",
                    SINKS.join(", ")
                )));
            }
        };
        Ok(Sink {
            table: spec.name.clone(),
            kind,
        })
    }

    pub async fn write(
        &self,
        batch_id: BatchId,
        partition: u32,
        batches: &[RecordBatch],
    ) -> Result<PartitionWritten> {
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let mut out = PartitionWritten {
            rows,
            console: Vec::new(),
        };
        match &self.kind {
            SinkKind::Blackhole => {}
            SinkKind::Kafka(k) => {
                k.write(batches).await?;
            }
            SinkKind::Console { num_rows } => {
                let mut left = *num_rows;
                let mut shown = Vec::new();
                for b in batches {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(b.num_rows());
                    shown.push(b.slice(0, take));
                    left -= take;
                }
                if rows > 0 {
                    out.console = console_rows(&shown, batches[0].schema(), &self.table)?;
                }
            }
            SinkKind::Files { location, format } => {
                if rows == 0 {
                    return Ok(out);
                }
                let data = encode(batches, *format)
                    .map_err(|e| self.write_error(batch_id, partition, e))?;
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
            }
        }
        Ok(out)
    }

    /// Makes the batch visible to readers (driver side, after every task succeeded).
    /// `written`: the partitions this run of the batch wrote. Any other part under the batch
    /// (an earlier or abandoned run, with more partitions or other rows) is removed first, so a
    /// committed batch holds exactly one run's output.
    pub async fn commit(&self, batch_id: BatchId, written: &[u32]) -> Result<()> {
        if let SinkKind::Files { location, format } = &self.kind {
            let dir = location.child(&format!("batch={batch_id}"));
            let keep: BTreeSet<String> = written
                .iter()
                .map(|p| format!("part-{p:05}.{}", format.extension()))
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
        }
        Ok(())
    }

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

/// Encodes batches as one Arrow IPC stream.
pub fn ipc_bytes(batches: &[RecordBatch], schema: arrow::datatypes::SchemaRef) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &schema)
        .map_err(|e| ConnectorError::Write(e.to_string()))?;
    for b in batches {
        w.write(b)
            .map_err(|e| ConnectorError::Write(e.to_string()))?;
    }
    w.finish()
        .map_err(|e| ConnectorError::Write(e.to_string()))?;
    drop(w);
    Ok(buf)
}

/// Decodes one Arrow IPC stream.
pub fn ipc_batches(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .and_then(|r| r.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| ConnectorError::Read(format!("bad Arrow IPC block: {e}")))
}

/// Renders a console-sink batch the way Spark's console sink does.
/// The rows a console sink shows travel to the driver in the task's result: wide rows are
/// cut to fewer until they fit, and the cut is logged.
const MAX_CONSOLE_BYTES: usize = 1024 * 1024;

fn console_rows(
    shown: &[RecordBatch],
    schema: arrow::datatypes::SchemaRef,
    table: &str,
) -> Result<Vec<u8>> {
    let all = arrow::compute::concat_batches(&schema, shown)
        .map_err(|e| ConnectorError::Write(e.to_string()))?;
    let mut n = all.num_rows();
    loop {
        let bytes = ipc_bytes(&[all.slice(0, n)], schema.clone())?;
        if bytes.len() <= MAX_CONSOLE_BYTES || n <= 1 {
            if n < all.num_rows() {
                tracing::info!(
                    sink = table,
                    "console rows cut to {n} of {} to stay under {} KiB",
                    all.num_rows(),
                    MAX_CONSOLE_BYTES >> 10
                );
            }
            return Ok(bytes);
        }
        n /= 2;
    }
}

pub fn render_console(
    table: &str,
    batch_id: BatchId,
    rows: u64,
    parts: &[Vec<u8>],
    num_rows: usize,
) -> String {
    let mut batches = Vec::new();
    for p in parts {
        batches.extend(ipc_batches(p).unwrap_or_default());
    }
    let mut left = num_rows;
    let shown: Vec<RecordBatch> = batches
        .into_iter()
        .filter_map(|b| {
            let take = left.min(b.num_rows());
            left -= take;
            (take > 0).then(|| b.slice(0, take))
        })
        .collect();
    let table_text = arrow::util::pretty::pretty_format_batches(&shown)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let more = if rows as usize > num_rows {
        format!("only showing top {num_rows} of {rows} rows\n")
    } else {
        String::new()
    };
    format!(
        "-------------------------------------------\n{table}: batch {batch_id}\n-------------------------------------------\n{table_text}\n{more}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("page", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap()
    }

    fn files_sink(dir: &std::path::Path, format: &str) -> Sink {
        let mut options = BTreeMap::new();
        options.insert("connector".to_string(), "files".to_string());
        options.insert("path".to_string(), format!("file://{}", dir.display()));
        options.insert("format".to_string(), format.to_string());
        Sink::from_spec(&TableSpec {
            name: "out".into(),
            schema: batch().schema(),
            options,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn files_sink_writes_partition_then_success_and_overwrites_on_rerun() {
        let dir = tempfile::tempdir().unwrap();
        for format in ["jsonl", "csv", "parquet"] {
            let sink = files_sink(&dir.path().join(format), format);
            sink.write(3, 1, &[batch()]).await.unwrap();
            sink.write(3, 1, &[batch()]).await.unwrap();
            let part = dir
                .path()
                .join(format!("{format}/batch=3/part-00001.{format}"));
            let bytes = std::fs::read(&part).unwrap();
            if format == "jsonl" {
                assert_eq!(
                    String::from_utf8(bytes).unwrap().lines().count(),
                    3,
                    "rerun overwrote"
                );
            }
            assert!(
                !dir.path()
                    .join(format!("{format}/batch=3/_SUCCESS"))
                    .exists()
            );
            sink.commit(3, &[1]).await.unwrap();
            assert!(
                dir.path()
                    .join(format!("{format}/batch=3/_SUCCESS"))
                    .exists()
            );
        }
    }

    #[tokio::test]
    async fn an_unwritable_directory_is_the_jobs_mistake_not_an_outage() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the sink's directory should be: no retry gets past it (root included).
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"").unwrap();
        let err = files_sink(&blocked.join("out"), "jsonl")
            .write(0, 0, &[batch()])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), sluice_core::FailureKind::BadPlan, "{err}");
        assert!(
            err.to_string().contains("cannot write batch 0 partition 0"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn console_rows_are_cut_to_fit_the_task_result() {
        let wide = StringArray::from(vec!["x".repeat(100 * 1024); 20]);
        let batch = RecordBatch::try_from_iter([("v", Arc::new(wide) as _)]).unwrap();
        let mut options = BTreeMap::new();
        options.insert("connector".to_string(), "console".to_string());
        let sink = Sink::from_spec(&TableSpec {
            name: "out".into(),
            schema: batch.schema(),
            options,
        })
        .unwrap();
        let written = sink.write(0, 0, &[batch]).await.unwrap();
        assert!(
            written.console.len() <= MAX_CONSOLE_BYTES,
            "{}",
            written.console.len()
        );
        let rows: usize = ipc_batches(&written.console)
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert!((1..20).contains(&rows), "{rows}");
    }

    #[tokio::test]
    async fn committing_removes_parts_this_run_did_not_write() {
        let dir = tempfile::tempdir().unwrap();
        let sink = files_sink(dir.path(), "jsonl");
        // An earlier run of batch 0 with more partitions, then this run with fewer.
        for p in 0..8 {
            sink.write(0, p, &[batch()]).await.unwrap();
        }
        for p in [0, 2] {
            sink.write(0, p, &[batch()]).await.unwrap();
        }
        sink.commit(0, &[0, 2]).await.unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path().join("batch=0"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["_SUCCESS", "part-00000.jsonl", "part-00002.jsonl"]);
    }

    #[tokio::test]
    async fn console_sink_keeps_num_rows_and_renders() {
        let mut options = BTreeMap::new();
        options.insert("connector".to_string(), "console".to_string());
        options.insert("num_rows".to_string(), "2".to_string());
        let sink = Sink::from_spec(&TableSpec {
            name: "out".into(),
            schema: batch().schema(),
            options,
        })
        .unwrap();
        let w = sink.write(0, 0, &[batch()]).await.unwrap();
        assert_eq!(w.rows, 3);
        let text = render_console("out", 0, 3, &[w.console], 2);
        assert!(
            text.contains("| a    |") && !text.contains("| c "),
            "{text}"
        );
        assert!(text.contains("top 2 of 3"), "{text}");
    }

    #[test]
    fn unknown_sink_connector_lists_valid_ones() {
        let mut options = BTreeMap::new();
        options.insert("connector".to_string(), "kafkaa".to_string());
        let err = Sink::from_spec(&TableSpec {
            name: "out".into(),
            schema: batch().schema(),
            options,
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("console, blackhole, files"),
            "{err}"
        );
    }
}
