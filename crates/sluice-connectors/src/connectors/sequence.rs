//! The `sequence` source: the numbers `0..end` in one BIGINT column, `rows_per_batch` per batch.
//! Small on purpose: it is the proof that a connector is one module plus one line in the
//! registry (`connectors/mod.rs`), and a bounded input whose every batch is known exactly.

use crate::connector::{
    PlanContext, Planned, Position, SourceConnector, SourceFactory, SplitRead, decode_position,
    decode_split, encode_position,
};
use crate::{ConnectorError, Result, TableSpec};
use arrow::array::Int64Array;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use sluice_core::{SourceSplit, Trigger};
use std::sync::Arc;

const KIND: &str = "sequence";

/// Numbers `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Numbers {
    start: u64,
    end: u64,
}

/// The next number to emit.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Next {
    next: u64,
}

pub struct Factory;

impl SourceFactory for Factory {
    fn name(&self) -> &'static str {
        KIND
    }

    fn open(&self, spec: &TableSpec) -> Result<Box<dyn SourceConnector>> {
        let opts = spec.options(&["end", "rows_per_batch", "splits"], &[])?;
        let one_bigint =
            spec.schema.fields().len() == 1 && spec.schema.field(0).data_type() == &DataType::Int64;
        if !one_bigint {
            return Err(spec.error("connector 'sequence' needs exactly one BIGINT column"));
        }
        Ok(Box::new(Sequence {
            schema: spec.schema.clone(),
            end: opts
                .number_in("end", 0..=u64::MAX / 2)?
                .ok_or_else(|| spec.error("missing option 'end'"))?,
            rows_per_batch: opts
                .number_in("rows_per_batch", 1..=100_000_000)?
                .unwrap_or(1000),
            splits: opts.number_in("splits", 1..=4096)?,
        }))
    }

    fn identity_options(&self) -> &'static [&'static str] {
        &["end"]
    }

    fn split_kind(&self) -> &'static str {
        KIND
    }

    fn summarize(&self, splits: &[SourceSplit]) -> String {
        let all: Vec<Numbers> = splits.iter().filter_map(|s| s.decode(KIND).ok()).collect();
        let lo = all.iter().map(|n| n.start).min().unwrap_or(0);
        let hi = all.iter().map(|n| n.end).max().unwrap_or(0);
        format!("numbers {lo}..{hi} in {} splits", all.len())
    }
}

#[derive(Debug)]
struct Sequence {
    schema: SchemaRef,
    end: u64,
    rows_per_batch: u64,
    splits: Option<u32>,
}

#[async_trait::async_trait]
impl SourceConnector for Sequence {
    fn start(&self) -> Position {
        encode_position(KIND, &Next::default())
    }

    fn advance(&self, position: &mut Position, splits: &[SourceSplit]) -> Result<()> {
        let mut at: Next = decode_position(KIND, position)?;
        for split in splits {
            at.next = at.next.max(decode_split::<Numbers>(KIND, split)?.end);
        }
        *position = encode_position(KIND, &at);
        Ok(())
    }

    async fn plan(&self, position: &Position, ctx: &PlanContext) -> Result<Planned> {
        let next = decode_position::<Next>(KIND, position)?.next;
        let end = match ctx.trigger {
            Trigger::Once => self.end,
            _ => self.end.min(next.saturating_add(self.rows_per_batch)),
        };
        let n = u64::from(self.splits.unwrap_or(ctx.default_splits).max(1));
        let rows = end.saturating_sub(next);
        let splits = (0..n)
            .map(|i| Numbers {
                start: next + rows * i / n,
                end: next + rows * (i + 1) / n,
            })
            .filter(|s| s.start < s.end)
            .map(|s| SourceSplit::encode(KIND, &s))
            .collect();
        Ok(Planned {
            splits,
            exhausted: end >= self.end,
            backlog: Some([(KIND.to_string(), self.end - end)].into()),
        })
    }

    async fn read(&self, split: &SourceSplit) -> Result<SplitRead> {
        let n: Numbers = decode_split(KIND, split)?;
        let values = Int64Array::from_iter_values((n.start..n.end).map(|v| v as i64));
        let batch = RecordBatch::try_new(self.schema.clone(), vec![Arc::new(values)])
            .map_err(|e| ConnectorError::Read(e.to_string()))?;
        Ok(SplitRead {
            rows: vec![batch],
            dead_letters: None,
        })
    }
}
