//! The `blackhole` sink: counts rows and drops them (for benchmarks and dry runs).

use crate::connector::{PartitionWritten, SinkConnector, SinkFactory};
use crate::{Result, TableSpec};
use arrow::record_batch::RecordBatch;
use sluice_core::BatchId;

pub struct Factory;

impl SinkFactory for Factory {
    fn name(&self) -> &'static str {
        "blackhole"
    }

    fn open(&self, spec: &TableSpec) -> Result<Box<dyn SinkConnector>> {
        spec.options(&[], &[])?;
        Ok(Box::new(Blackhole))
    }
}

#[derive(Debug)]
struct Blackhole;

#[async_trait::async_trait]
impl SinkConnector for Blackhole {
    async fn write(
        &self,
        _batch_id: BatchId,
        _partition: u32,
        batches: &[RecordBatch],
    ) -> Result<PartitionWritten> {
        Ok(PartitionWritten {
            rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
            console: Vec::new(),
        })
    }
}
