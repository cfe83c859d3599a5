//! Running one stage's operators on an executor, and partitioning its output for the shuffle.

use crate::SqlError;
use crate::keyed::State;
use crate::operator::BatchContext;
use crate::partition::partitions_of;
use crate::plan::{CompiledJob, FragmentOutput, Statics, TaskInput};
use crate::state::StateUpdate;
use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::{SortOptions, concat_batches, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use bytes::Bytes;
use datafusion::physical_expr::PhysicalExpr;
use sluice_connectors::{IpcDecoder, ipc_bytes};
use sluice_core::{BatchId, StageInput};
use std::sync::Arc;

/// Keys sampled per map task to choose range boundaries.
const SAMPLE_PER_TASK: usize = 128;

/// A map task's output, kept by its executor until the batch is done.
pub enum MapOutput {
    /// One Arrow IPC block per reduce partition; a partition without rows has no bytes.
    /// Serving a block shares these bytes, it never copies them.
    Hash { blocks: Vec<Bytes> },
    /// All rows plus their sort keys; split by range when reducers fetch (the boundaries are
    /// only known once every map task has reported its sample).
    Range(RangeKeys),
}

pub struct RangeKeys {
    pub batch: RecordBatch,
    /// arrow-row encoded sort keys: byte order is the ORDER BY order.
    pub keys: Vec<Vec<u8>>,
}

impl RangeKeys {
    /// The rows whose keys fall in reduce partition `reduce` of `bounds`, if any.
    fn part(&self, reduce: u32, bounds: &[Vec<u8>]) -> Result<Option<RecordBatch>, SqlError> {
        let idx: UInt32Array = self
            .keys
            .iter()
            .enumerate()
            .filter(|(_, k)| {
                bounds.partition_point(|b| b.as_slice() <= k.as_slice()) == reduce as usize
            })
            .map(|(i, _)| i as u32)
            .collect();
        if idx.is_empty() {
            return Ok(None);
        }
        Ok(Some(take_record_batch(&self.batch, &idx)?))
    }
}

pub enum StageOutputData {
    Map {
        output: MapOutput,
        sample: Vec<Vec<u8>>,
        rows: u64,
    },
    Sink {
        batches: Vec<RecordBatch>,
        rows: u64,
    },
}

impl MapOutput {
    /// The Arrow IPC block for one reduce partition (empty when it has no rows).
    pub fn block(&self, reduce: u32, bounds: &[Vec<u8>]) -> Result<Bytes, SqlError> {
        match self {
            MapOutput::Hash { blocks } => blocks
                .get(reduce as usize)
                .cloned()
                .ok_or_else(|| SqlError::internal(format!("no shuffle partition {reduce}"))),
            MapOutput::Range(r) => match r.part(reduce, bounds)? {
                None => Ok(Bytes::new()),
                Some(part) => Ok(ipc_bytes(&[part], r.batch.schema())?.into()),
            },
        }
    }

    /// The rows of one reduce partition, for a reducer on the executor that holds them.
    pub fn rows(&self, reduce: u32, bounds: &[Vec<u8>]) -> Result<Vec<RecordBatch>, SqlError> {
        match self {
            MapOutput::Hash { .. } => Ok(IpcDecoder::decode(self.block(reduce, bounds)?)?),
            MapOutput::Range(r) => Ok(r.part(reduce, bounds)?.into_iter().collect()),
        }
    }

    /// Which reduce partitions have rows, when known before reducers fetch (hash outputs).
    pub fn nonempty(&self) -> Option<impl Iterator<Item = bool> + '_> {
        match self {
            MapOutput::Hash { blocks } => Some(blocks.iter().map(|b| !b.is_empty())),
            MapOutput::Range(_) => None,
        }
    }

    pub fn size_bytes(&self) -> usize {
        match self {
            MapOutput::Hash { blocks } => blocks.iter().map(Bytes::len).sum(),
            MapOutput::Range(r) => {
                r.batch.get_array_memory_size() + r.keys.iter().map(Vec::len).sum::<usize>()
            }
        }
    }
}

impl CompiledJob {
    /// Fetched shuffle blocks, decoded, each with the stage that wrote it, as the stage's
    /// input rows per exchange.
    pub fn shuffle_input(
        &self,
        stage: usize,
        blocks: Vec<(u32, Vec<RecordBatch>)>,
    ) -> Result<TaskInput, SqlError> {
        let f = &self.fragments[stage];
        let edges: Vec<u32> = f.inputs.iter().filter_map(StageInput::upstream).collect();
        let mut rows = vec![Vec::new(); edges.len()];
        for (from, batches) in blocks {
            let edge = edges.iter().position(|e| *e == from).ok_or_else(|| {
                SqlError::internal(format!("stage {stage} does not read stage {from}"))
            })?;
            let schema = self.shuffle_schema(stage, edge)?;
            for b in batches.into_iter().filter(|b| b.num_rows() > 0) {
                rows[edge].push(RecordBatch::try_new(schema.clone(), b.columns().to_vec())?);
            }
        }
        Ok(TaskInput::Shuffle(rows))
    }

    /// Runs stage `stage` of `batch` (its id, or a [`BatchInfo`]) over `input` and shapes its output for the
    /// shuffle or the sink. A stage with a stateful operator starts from `state` (the
    /// previous version) and also returns the new state and the batch's delta.
    pub async fn run_stage(
        &self,
        stage: usize,
        batch: impl Into<BatchInfo>,
        input: TaskInput,
        state: &State,
    ) -> Result<(StageOutputData, Option<StateUpdate>), SqlError> {
        self.run_task(stage, batch, input, &Statics::new(), state)
            .await
    }

    /// [`run_stage`](Self::run_stage) for a stage that joins static tables: `statics` holds
    /// each one's rows (the version the batch logged).
    pub async fn run_task(
        &self,
        stage: usize,
        batch: impl Into<BatchInfo>,
        input: TaskInput,
        statics: &Statics,
        state: &State,
    ) -> Result<(StageOutputData, Option<StateUpdate>), SqlError> {
        let batch = batch.into();
        let f = &self.fragments[stage];
        let ((table, input), update) = match (&f.operator, input) {
            (None, input) => (self.input_rows(stage, input)?, None),
            (Some(op), TaskInput::Shuffle(inputs)) => {
                let ctx = BatchContext {
                    batch_id: batch.id,
                    watermark_ms: batch.watermark_ms,
                    previous_watermark_ms: batch.previous_watermark_ms,
                    settings: &self.settings,
                    session: &self.ctx,
                };
                let rows_in = inputs.iter().flatten().map(|b| b.num_rows() as u64).sum();
                let done = op.process(&ctx, inputs, state).await?;
                let rows_out = done.output.iter().map(|b| b.num_rows() as u64).sum();
                let update = StateUpdate {
                    state: done.state,
                    delta: done.delta,
                    operator: op.name().to_string(),
                    rows_in,
                    rows_out,
                    late_rows: done.late_rows,
                    late: done.late,
                    metrics: done.metrics,
                };
                ((op.output().0.to_string(), done.output), Some(update))
            }
            (Some(_), TaskInput::Split { .. }) => {
                return Err(SqlError::internal(format!(
                    "stage {stage} keeps state but was given a source split"
                )));
            }
        };
        let mut rows = self.static_rows(stage, statics)?;
        rows.0.insert(table, input);
        let planned = self.planned(stage).await?;
        let schema = planned.schema.clone();
        let batches = planned.run(&self.ctx, rows).await?;
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        let data = match &self.fragments[stage].output {
            FragmentOutput::Sink => StageOutputData::Sink { batches, rows },
            FragmentOutput::Hash { keys, partitions } => StageOutputData::Map {
                output: hash_partition(&batches, keys, *partitions, &schema)?,
                sample: Vec::new(),
                rows,
            },
            FragmentOutput::Range { keys, .. } => {
                let batch = concat_batches(&schema, &batches)?;
                let keys = encode_keys(&batch, keys)?;
                let step = (keys.len() / SAMPLE_PER_TASK).max(1);
                let sample = keys.iter().step_by(step).cloned().collect();
                StageOutputData::Map {
                    output: MapOutput::Range(RangeKeys { batch, keys }),
                    sample,
                    rows,
                }
            }
        };
        Ok((data, update))
    }
}

fn evaluate(
    batch: &RecordBatch,
    exprs: &[Arc<dyn PhysicalExpr>],
) -> Result<Vec<ArrayRef>, SqlError> {
    exprs
        .iter()
        .map(|e| Ok(e.evaluate(batch)?.into_array(batch.num_rows())?))
        .collect()
}

fn hash_partition(
    batches: &[RecordBatch],
    keys: &[Arc<dyn PhysicalExpr>],
    partitions: u32,
    schema: &SchemaRef,
) -> Result<MapOutput, SqlError> {
    let n = partitions as usize;
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
    // No keys (a global aggregate): one group, in the first partition.
    if keys.is_empty() {
        parts[0] = batches.to_vec();
    }
    for batch in batches.iter().filter(|_| !keys.is_empty()) {
        let arrays = evaluate(batch, keys)?;
        let mut indices: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (i, p) in partitions_of(&arrays, partitions)?.into_iter().enumerate() {
            indices[p as usize].push(i as u32);
        }
        for (p, idx) in indices.into_iter().enumerate() {
            if !idx.is_empty() {
                parts[p].push(take_record_batch(batch, &UInt32Array::from(idx))?);
            }
        }
    }
    // An empty partition is not encoded at all: with many partitions most blocks of a small
    // batch are empty, and each would cost a schema message to write and to read.
    let blocks = parts
        .iter()
        .map(|p| match p.is_empty() {
            true => Ok(Bytes::new()),
            false => ipc_bytes(p, schema.clone()).map(Bytes::from),
        })
        .collect::<Result<_, _>>()?;
    Ok(MapOutput::Hash { blocks })
}

fn encode_keys(
    batch: &RecordBatch,
    keys: &[(Arc<dyn PhysicalExpr>, SortOptions)],
) -> Result<Vec<Vec<u8>>, SqlError> {
    let exprs: Vec<_> = keys.iter().map(|(e, _)| e.clone()).collect();
    let arrays = evaluate(batch, &exprs)?;
    let converter = RowConverter::new(
        arrays
            .iter()
            .zip(keys)
            .map(|(a, (_, o))| SortField::new_with_options(a.data_type().clone(), *o))
            .collect(),
    )?;
    let rows = converter.convert_columns(&arrays)?;
    Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
}

/// What a task knows of its batch: its id and the event-time watermark it logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchInfo {
    pub id: BatchId,
    pub watermark_ms: Option<i64>,
    /// The watermark of the batch before (see [`BatchContext::previous_watermark_ms`]).
    pub previous_watermark_ms: Option<i64>,
}

impl From<BatchId> for BatchInfo {
    fn from(id: BatchId) -> Self {
        BatchInfo {
            id,
            ..Default::default()
        }
    }
}
