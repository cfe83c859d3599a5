//! The `console` sink: the driver prints the first `num_rows` rows of each batch, as Spark's
//! console sink does. Each task sends its partition's first rows with its result.

use crate::connector::{PartitionWritten, SinkConnector, SinkFactory};
use crate::{ConnectorError, Result, TableSpec, ipc_batches, ipc_bytes};
use arrow::record_batch::RecordBatch;
use sluice_core::BatchId;

/// The driver holds every row a console sink shows: bounded, as Spark's console sink is in
/// practice.
const MAX_CONSOLE_ROWS: usize = 10_000;

pub struct Factory;

impl SinkFactory for Factory {
    fn name(&self) -> &'static str {
        "console"
    }

    fn open(&self, spec: &TableSpec) -> Result<Box<dyn SinkConnector>> {
        let o = spec.options(&["num_rows"], &[])?;
        Ok(Box::new(Console {
            table: spec.name.clone(),
            num_rows: o.number_in("num_rows", 0..=MAX_CONSOLE_ROWS)?.unwrap_or(20),
        }))
    }
}

#[derive(Debug)]
struct Console {
    table: String,
    num_rows: usize,
}

#[async_trait::async_trait]
impl SinkConnector for Console {
    async fn write(
        &self,
        _batch_id: BatchId,
        _partition: u32,
        batches: &[RecordBatch],
    ) -> Result<PartitionWritten> {
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let mut left = self.num_rows;
        let mut shown = Vec::new();
        for b in batches {
            if left == 0 {
                break;
            }
            let take = left.min(b.num_rows());
            shown.push(b.slice(0, take));
            left -= take;
        }
        let console = match rows {
            0 => Vec::new(),
            _ => console_rows(&shown, batches[0].schema(), &self.table)?,
        };
        Ok(PartitionWritten { rows, console })
    }

    fn console_rows(&self) -> Option<usize> {
        Some(self.num_rows)
    }
}

/// The rows a console sink shows travel to the driver in the task's result: wide rows are
/// cut to fewer until they fit, and the cut is logged.
pub(crate) const MAX_CONSOLE_BYTES: usize = 1024 * 1024;

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

/// Renders a console-sink batch the way Spark's console sink does.
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
