//! A sink table as the runtime uses it: its connector (found in the registry). Executors write
//! each final-stage partition; the driver commits the batch. Output names depend only on
//! (batch, partition), so a rerun overwrites instead of duplicating.

pub use crate::connector::PartitionWritten;
use crate::connector::SinkConnector;
use crate::{ConnectorError, Result, TableSpec, connectors};
use arrow::record_batch::RecordBatch;
use sluice_core::BatchId;

#[derive(Debug)]
pub struct Sink {
    pub table: String,
    connector: Box<dyn SinkConnector>,
}

impl Sink {
    pub fn from_spec(spec: &TableSpec) -> Result<Sink> {
        let name = spec.connector()?;
        let factory = connectors::sink(name).ok_or_else(|| {
            spec.error(format!(
                "unknown sink connector '{name}'; valid sink connectors: {}",
                connectors::sink_names().join(", ")
            ))
        })?;
        Ok(Sink {
            table: spec.name.clone(),
            connector: factory.open(spec)?,
        })
    }

    /// Writes one final-stage partition of a batch (on an executor).
    pub async fn write(
        &self,
        batch_id: BatchId,
        partition: u32,
        batches: &[RecordBatch],
    ) -> Result<PartitionWritten> {
        self.connector.write(batch_id, partition, batches).await
    }

    /// Makes the batch visible to readers (driver side, after every task succeeded).
    /// `written`: the partitions this run of the batch wrote; anything else under the batch
    /// (an earlier or abandoned run) is removed first, so a committed batch holds exactly one
    /// run's output.
    pub async fn commit(&self, batch_id: BatchId, written: &[u32]) -> Result<()> {
        self.connector.commit(batch_id, written).await
    }

    /// For a console sink: how many rows of each batch the driver shows.
    pub fn console_rows(&self) -> Option<usize> {
        self.connector.console_rows()
    }
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

/// Decodes one Arrow IPC stream that arrives in pieces. Column buffers alias the pieces
/// (no copy) wherever a message lies within one piece; only a message split across pieces is
/// copied, into the decoder's own buffer. A stream of no bytes at all is no rows.
#[derive(Default)]
pub struct IpcDecoder {
    decoder: arrow::ipc::reader::StreamDecoder,
    batches: Vec<RecordBatch>,
    fed: bool,
}

impl IpcDecoder {
    pub fn push(&mut self, piece: bytes::Bytes) -> Result<()> {
        let mut buffer = arrow::buffer::Buffer::from(piece);
        self.fed |= !buffer.is_empty();
        while !buffer.is_empty() {
            if let Some(batch) = self.decoder.decode(&mut buffer).map_err(bad_block)? {
                self.batches.push(batch);
            }
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Vec<RecordBatch>> {
        if self.fed {
            self.decoder.finish().map_err(bad_block)?;
        }
        Ok(self.batches)
    }

    /// A whole stream at once.
    pub fn decode(block: bytes::Bytes) -> Result<Vec<RecordBatch>> {
        let mut decoder = IpcDecoder::default();
        decoder.push(block)?;
        decoder.finish()
    }
}

fn bad_block(e: arrow::error::ArrowError) -> ConnectorError {
    ConnectorError::Read(format!("bad Arrow IPC block: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::console::MAX_CONSOLE_BYTES;
    use crate::render_console;
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

    #[test]
    fn an_ipc_stream_decodes_from_pieces_of_any_size() {
        let one = batch();
        let stream =
            bytes::Bytes::from(ipc_bytes(&[one.clone(), one.clone()], one.schema()).unwrap());
        for size in [1, 7, 64, stream.len()] {
            let mut decoder = IpcDecoder::default();
            for start in (0..stream.len()).step_by(size) {
                let end = (start + size).min(stream.len());
                decoder.push(stream.slice(start..end)).unwrap();
            }
            assert_eq!(
                decoder.finish().unwrap(),
                vec![one.clone(), one.clone()],
                "pieces of {size}"
            );
        }
        assert!(IpcDecoder::decode(bytes::Bytes::new()).unwrap().is_empty());
        let cut = stream.slice(..stream.len() - 9);
        let err = IpcDecoder::decode(cut).expect_err("a truncated stream");
        assert!(err.to_string().contains("bad Arrow IPC block"), "{err}");
    }
}
