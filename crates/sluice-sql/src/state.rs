//! Running aggregation: GROUP BY without `_batch` keeps per-key state across batches.
//!
//! Only decomposable aggregates are supported (count, sum, min, max, avg as sum + count), so
//! the state of a key is a row of partial values and one merge rule per column (sum or min or
//! max). A batch then is three columnar steps, all planned by DataFusion:
//!   partials = the batch's rows aggregated into state columns (this is the batch's delta);
//!   state'   = merge(state, partials), marking the keys the batch touched;
//!   output   = the final values of the touched keys (update) or of every key (complete).
//! Restoring version N is the same merge over the latest snapshot and the deltas after it.

use crate::SqlError;
use crate::keyed::{KeyColumns, State};
use crate::operator::{BatchContext, Processed, StatefulOperator};
use crate::partial::{TwoPhase, flat_names, merge_exprs};
use crate::plan::{CompiledJob, SHUFFLE_TABLE, bind_table, flat_leaf, flat_schema};
use crate::slots::{PlanCache, TaskRows};
use crate::window::{WindowKey, merge_sessions, window_key};
use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::datatypes::{TimeUnit, TimestampMillisecondType};
use datafusion::catalog::MemTable;
use datafusion::common::DFSchemaRef;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::{empty::EmptyTable, provider_as_source};
use datafusion::functions::expr_fn::coalesce;
use datafusion::functions_aggregate::array_agg::array_agg_udaf;
use datafusion::functions_aggregate::expr_fn::array_agg;
use datafusion::functions_aggregate::expr_fn::bool_or;
use datafusion::functions_aggregate::{count::count_udaf, sum::sum_udaf};
use datafusion::functions_nested::expr_fn::{array_distinct, cardinality, flatten};
use datafusion::logical_expr::ExprFunctionExt;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::lit;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, LogicalPlanBuilder, cast, col};
use datafusion::prelude::SessionContext;
use sluice_core::progress::Metric;
use sluice_core::settings::OutputMode;
use std::sync::Arc;

/// Table name of the merged state inside the finalizing projection.
const STATE_TABLE: &str = "__state";
/// Table name of the aggregate's output inside the stage's remaining operators.
pub(crate) const AGG_TABLE: &str = "__agg";
const CHANGED: &str = "__changed";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Merge {
    Sum,
    Min,
    Max,
    /// Lists of distinct values: their union.
    Union,
}

impl Merge {
    /// Whether `apply` merges a column of this type; otherwise DataFusion's group-by does.
    fn elementwise(&self, data_type: &DataType) -> bool {
        use DataType::*;
        match self {
            Merge::Sum => data_type.is_integer() || data_type.is_floating(),
            Merge::Min | Merge::Max => {
                data_type.is_numeric()
                    || matches!(
                        data_type,
                        Boolean
                            | Utf8
                            | LargeUtf8
                            | Utf8View
                            | Binary
                            | LargeBinary
                            | Date32
                            | Date64
                            | Timestamp(..)
                            | Time32(_)
                            | Time64(_)
                            | Duration(_)
                    )
            }
            Merge::Union => false,
        }
    }

    /// Row by row: a null on one side is no value, so the other side is the result.
    fn apply(&self, before: &ArrayRef, after: &ArrayRef) -> Result<ArrayRef, SqlError> {
        use arrow::compute::kernels::{cmp, numeric, zip::zip};
        let merged = match self {
            Merge::Sum => numeric::add_wrapping(before, after)?,
            Merge::Min => zip(&cmp::lt(after, before)?, after, before)?,
            Merge::Max => zip(&cmp::gt(after, before)?, after, before)?,
            Merge::Union => unreachable!("lists of distinct values merge in DataFusion"),
        };
        let merged = zip(&arrow::compute::is_null(before)?, after, &merged)?;
        Ok(zip(&arrow::compute::is_null(after)?, before, &merged)?)
    }
}

/// How one aggregate of the query is computed from state columns.
#[derive(Debug, Clone)]
pub(crate) enum Final {
    /// The state column is the value.
    Column(usize),
    /// avg = sum / count.
    Average { sum: usize, count: usize },
    /// count(DISTINCT ...) = the length of the list of distinct values.
    Distinct(usize),
}

/// The running aggregate of a stage.
pub struct StatefulAgg {
    /// Name of the operator in the checkpoint's state/ directory.
    pub operator: String,
    /// Aggregates the stage's shuffled input into state columns (keys first).
    partial: LogicalPlan,
    /// The shuffled input rows' schema.
    input_schema: SchemaRef,
    /// Keys then state columns, flat names k0.. s0..; every column nullable.
    pub state_schema: SchemaRef,
    keys: usize,
    merges: Vec<Merge>,
    finals: Vec<Final>,
    /// The event-time window among the keys, when the GROUP BY has one.
    window: Option<WindowKey>,
    /// The shuffle scan the partial aggregate reads, for counting late rows.
    leaf: LogicalPlan,
    /// The aggregate's output, flat names c0...
    pub(crate) agg_schema: SchemaRef,
    pub output_mode: OutputMode,
    /// What the state depends on: keys, aggregates and types. A checkpoint written by a job
    /// with another signature cannot be continued.
    pub signature: Vec<String>,
    /// Another stateful operator feeds it: late rows are judged by the previous watermark.
    pub(crate) downstream: bool,
    /// Without a window, state rows are found by key (see `keyed`); a windowed aggregation's
    /// state is its open windows, which every batch scans for the closed ones anyway.
    key_columns: Option<KeyColumns>,
    /// `partial` and the final values' projection, planned once, on first use (see `slots`).
    partial_planned: PlanCache,
    final_planned: PlanCache,
}

/// What a stateful task leaves behind: the new state and the delta to persist, and what its
/// operator did (for the progress channel).
#[derive(Default)]
pub struct StateUpdate {
    pub state: State,
    pub delta: Vec<RecordBatch>,
    /// The operator's name (`agg-1`), and the rows it took in and emitted.
    pub operator: String,
    pub rows_in: u64,
    pub rows_out: u64,
    pub late_rows: u64,
    /// The late rows themselves, as the operator received them (for `late_rows.table`).
    pub late: Vec<RecordBatch>,
    /// The operator's own statistics, reported as `<operator>.<name>`.
    pub metrics: Vec<(String, Metric)>,
}

impl StatefulAgg {
    /// Plans the running aggregate `agg` whose input rows arrive as `leaf` (the shuffle scan).
    /// Returns the operator and the leaf that stands for its output in the stage's remaining
    /// operators.
    pub(crate) fn plan(
        agg: &Aggregate,
        leaf: LogicalPlan,
        input_schema: SchemaRef,
        stage: usize,
        output_mode: OutputMode,
        map_side: Option<&TwoPhase>,
    ) -> Result<(StatefulAgg, LogicalPlan), String> {
        let window = window_key(&agg.group_expr)?;
        let mut signature: Vec<String> = agg
            .group_expr
            .iter()
            .map(|e| format!("key {}", e.schema_name()))
            .collect();
        signature.extend(
            agg.aggr_expr
                .iter()
                .map(|e| format!("aggregate {}", strip_alias(e).schema_name())),
        );
        let Decomposed {
            partials: partial_exprs,
            merges,
            finals,
        } = decompose_all(&agg.aggr_expr, window.is_some())?;
        let keys = agg.group_expr.len();
        if window.is_none() && output_mode == OutputMode::Append {
            return Err("SET 'output_mode' = 'append' emits each event-time window once, when the watermark passes its end: group by the window of TUMBLE(table, ts, INTERVAL '...' MINUTE) (window_start, window_end), or use 'update'".into());
        }
        if let Some(w) = &window {
            if w.session.is_some() && output_mode == OutputMode::Update {
                return Err("session windows are emitted in append mode (each session once, when the watermark passes its end) or complete mode; in update mode a session that grows would come out again under another key: SET 'output_mode' = 'append'".into());
            }
            signature.push(w.describe());
        }
        let scan = leaf.clone();
        // Map tasks that aggregated their rows already send state-shaped partials: the
        // batch's delta is their merge. Otherwise the rows themselves arrive.
        let (partial, state_schema) = match map_side {
            Some(two) => {
                let state_schema = two.state_schema();
                let merge = two.merge(leaf, &state_schema).map_err(|e| e.to_string())?;
                (merge, state_schema)
            }
            None => {
                let partial =
                    Aggregate::try_new(Arc::new(leaf), agg.group_expr.clone(), partial_exprs)
                        .map(LogicalPlan::Aggregate)
                        .and_then(flat_names(keys))
                        .map_err(|e| e.to_string())?;
                let state_schema = nullable(partial.schema().as_arrow());
                (partial, state_schema)
            }
        };
        signature.extend(
            state_schema
                .fields()
                .iter()
                .map(|f| format!("state {}: {}", f.name(), f.data_type())),
        );
        let agg_schema: DFSchemaRef = agg.schema.clone();
        let agg_flat = flat_schema(&agg_schema);
        let upper_leaf = flat_leaf(AGG_TABLE, &agg_schema).map_err(|e| e.to_string())?;
        let key_columns = match window {
            Some(_) => None,
            None => Some(KeyColumns::new(&state_schema, keys).map_err(|e| e.to_string())?),
        };
        Ok((
            StatefulAgg {
                operator: format!("agg-{stage}"),
                partial,
                input_schema,
                state_schema,
                keys,
                merges,
                finals,
                agg_schema: agg_flat,
                output_mode,
                signature,
                window,
                leaf: scan,
                downstream: false,
                key_columns,
                partial_planned: Default::default(),
                final_planned: Default::default(),
            },
            upper_leaf,
        ))
    }

    fn with_changed(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .state_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(CHANGED, DataType::Boolean, true));
        Arc::new(Schema::new(fields))
    }
}

impl StatefulAgg {
    /// Aggregates the stage's input rows into state columns (with `partial`, the aggregate
    /// or the aggregate of the rows whose window is still open).
    async fn partials(
        &self,
        session: &SessionContext,
        partial: LogicalPlan,
        input: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>, SqlError> {
        let plan = bind_table(partial, SHUFFLE_TABLE, self.input_schema.clone(), input)?;
        let out = session.execute_logical_plan(plan).await?.collect().await?;
        conform(out, &self.state_schema)
    }

    /// [`partials`](Self::partials) with `self.partial`, planned once per operator.
    async fn planned_partials(
        &self,
        session: &SessionContext,
        input: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>, SqlError> {
        let partial = || Ok(self.partial.clone());
        let planned = self.partial_planned.get(session, partial).await?;
        let rows = TaskRows([(SHUFFLE_TABLE.to_string(), input)].into());
        conform(planned.run(session, rows).await?, &self.state_schema)
    }

    /// The batch's partials without its late rows, and the late rows: those whose window ends
    /// at or before the watermark (its output is final, or already emitted).
    async fn on_time_partials(
        &self,
        session: &SessionContext,
        window: &WindowKey,
        watermark_ms: i64,
        input: Vec<RecordBatch>,
    ) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>), SqlError> {
        let as_ms = DataType::Timestamp(TimeUnit::Millisecond, None);
        let open = cast(window.late.clone(), as_ms).gt(lit(ScalarValue::TimestampMillisecond(
            Some(watermark_ms - window.late_offset_ms),
            None,
        )));
        let late = LogicalPlanBuilder::from(self.leaf.clone())
            .filter(open.clone().is_not_true())?
            .build()?;
        let late = bind_table(
            late,
            SHUFFLE_TABLE,
            self.input_schema.clone(),
            input.clone(),
        )?;
        let late = session.execute_logical_plan(late).await?.collect().await?;
        let late: Vec<RecordBatch> = late.into_iter().filter(|b| b.num_rows() > 0).collect();
        let partial = self
            .partial
            .clone()
            .transform_down(|p| match p {
                LogicalPlan::Aggregate(a) => {
                    let input = LogicalPlanBuilder::from(Arc::unwrap_or_clone(a.input))
                        .filter(open.clone())?
                        .build()?;
                    let a = Aggregate::try_new(Arc::new(input), a.group_expr, a.aggr_expr)?;
                    Ok(Transformed::new(
                        LogicalPlan::Aggregate(a),
                        true,
                        TreeNodeRecursion::Jump,
                    ))
                }
                other => Ok(Transformed::no(other)),
            })?
            .data;
        Ok((self.partials(session, partial, input).await?, late))
    }

    /// Merges state parts (a snapshot, deltas, new partials); a part flagged `true` marks its
    /// keys as changed. Returns keys, state columns and the changed flag.
    async fn merge(
        &self,
        session: &SessionContext,
        parts: Vec<(&[RecordBatch], bool)>,
    ) -> Result<Vec<RecordBatch>, SqlError> {
        let agg = self;
        let schema = agg.with_changed();
        let mut rows = Vec::new();
        for (batches, changed) in parts {
            rows.extend(flagged(batches, &schema, changed)?);
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(keys) = agg.window.as_ref().and_then(|w| w.session) {
            let all = arrow::compute::concat_batches(&schema, &rows)?;
            rows = vec![merge_sessions(&all, keys, agg.keys)?];
        }
        let table = Arc::new(MemTable::try_new(schema.clone(), vec![rows])?);
        let scan = LogicalPlanBuilder::scan(STATE_TABLE, provider_as_source(table), None)?;
        let fields = agg.state_schema.fields();
        let group: Vec<Expr> = fields[..agg.keys]
            .iter()
            .map(|f| col(f.name().as_str()))
            .collect();
        let mut aggs = merge_exprs(&fields[agg.keys..], &agg.merges);
        aggs.push(bool_or(col(CHANGED)).alias(CHANGED));
        // Summing a state column may widen its type (decimals); the state keeps its own. Lists
        // of distinct values were gathered as lists of lists.
        let union = |i: usize| agg.merges.get(i.wrapping_sub(agg.keys)) == Some(&Merge::Union);
        let project: Vec<Expr> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let c = col(f.name().as_str());
                let c = if union(i) {
                    array_distinct(flatten(c))
                } else {
                    c
                };
                cast(c, f.data_type().clone()).alias(f.name())
            })
            .collect();
        let plan = scan.aggregate(group, aggs)?.project(project)?.build()?;
        let out = session.execute_logical_plan(plan).await?.collect().await?;
        conform(out, &schema)
    }

    /// One batch of the running aggregate: the new state, the delta, and the rows to emit
    /// (final values, in the aggregate's output schema).
    async fn update_state(
        &self,
        session: &SessionContext,
        partials: Vec<RecordBatch>,
        old: &[RecordBatch],
        watermark_ms: Option<i64>,
    ) -> Result<(StateUpdate, Vec<RecordBatch>), SqlError> {
        let agg = self;
        let merged = self
            .merge(session, vec![(old, false), (partials.as_slice(), true)])
            .await?;
        // Rows of windows the watermark has passed: final now.
        let closed = |keep_closed: bool| -> Result<Vec<RecordBatch>, SqlError> {
            let (Some(w), Some(wm)) = (&agg.window, watermark_ms) else {
                return Ok(if keep_closed {
                    Vec::new()
                } else {
                    merged.clone()
                });
            };
            let mut out = Vec::new();
            for b in &merged {
                let mask = window_closed(b, w.close_key, wm - w.end_offset_ms)?;
                let mask = if keep_closed {
                    mask
                } else {
                    arrow::compute::not(&mask)?
                };
                out.push(filter_record_batch(b, &mask)?);
            }
            Ok(out)
        };
        let emit = match agg.output_mode {
            OutputMode::Complete => merged.clone(),
            OutputMode::Append => closed(true)?,
            OutputMode::Update => merged
                .iter()
                .map(|b| {
                    let changed = b
                        .column(b.num_columns() - 1)
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .expect("changed flag")
                        .clone();
                    filter_record_batch(b, &changed)
                })
                .collect::<Result<_, _>>()?,
        };
        let output = self.finalize(session, emit).await?;
        let kept = match agg.output_mode {
            OutputMode::Complete => merged,
            OutputMode::Update | OutputMode::Append => closed(false)?,
        };
        let state = without_changed(kept, agg)?;
        // Evicted windows must stay evicted on restore: a windowed operator's delta is its
        // whole (bounded) state, and restoring takes the latest.
        let delta = match agg.window {
            Some(_) => state.clone(),
            None => partials,
        };
        Ok((
            StateUpdate {
                state: State::from_batches(state),
                delta,
                ..Default::default()
            },
            output,
        ))
    }

    /// One batch of a running aggregation without a window, over keyed state: only the keys
    /// the batch touched are looked up, merged and appended (see `keyed`).
    async fn update_keyed(
        &self,
        session: &SessionContext,
        keys: &KeyColumns,
        partials: Vec<RecordBatch>,
        old: &State,
    ) -> Result<(StateUpdate, Vec<RecordBatch>), SqlError> {
        let mut next = old.next(keys)?;
        let schema = self.with_changed();
        let batch = arrow::compute::concat_batches(&self.state_schema, &partials)?;
        let located = next.locate(keys, &batch)?;
        let (located, merged) = match (located.any_found(), self.elementwise()) {
            (false, _) => (located, batch),
            (true, true) => {
                let before = next.aligned(&located, &self.state_schema)?;
                let merged = self.merge_aligned(&before, &batch)?;
                (located, merged)
            }
            (true, false) => {
                let before = Vec::from_iter(next.found_rows(&located)?);
                let parts = vec![(&before[..], true), (&partials[..], true)];
                let merged = without_changed(self.merge(session, parts).await?, self)?;
                let merged = arrow::compute::concat_batches(&self.state_schema, &merged)?;
                (next.locate(keys, &merged)?, merged)
            }
        };
        let changed = flagged(std::slice::from_ref(&merged), &schema, true)?;
        next.upsert(keys, located, merged)?;
        let emit = match self.output_mode {
            OutputMode::Complete => flagged(&next.batches()?, &schema, true)?,
            OutputMode::Update | OutputMode::Append => changed,
        };
        let output = self.finalize(session, emit).await?;
        let update = StateUpdate {
            state: next.into_state(),
            delta: partials,
            ..Default::default()
        };
        Ok((update, output))
    }

    /// Whether every state column merges row by row with Arrow kernels.
    fn elementwise(&self) -> bool {
        let columns = &self.state_schema.fields()[self.keys..];
        (self.merges.iter().zip(columns)).all(|(m, f)| m.elementwise(f.data_type()))
    }

    /// Row i of `before` (a key's state, or nulls) merged with row i of `after` (its partials).
    fn merge_aligned(
        &self,
        before: &RecordBatch,
        after: &RecordBatch,
    ) -> Result<RecordBatch, SqlError> {
        let mut columns = after.columns()[..self.keys].to_vec();
        for (i, merge) in self.merges.iter().enumerate() {
            let at = self.keys + i;
            columns.push(merge.apply(before.column(at), after.column(at))?);
        }
        Ok(RecordBatch::try_new(self.state_schema.clone(), columns)?)
    }

    /// Final aggregate values from state rows.
    async fn finalize(
        &self,
        session: &SessionContext,
        rows: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>, SqlError> {
        let rows: Vec<RecordBatch> = rows.into_iter().filter(|b| b.num_rows() > 0).collect();
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let planned = self.final_planned.get(session, || {
            let table = Arc::new(EmptyTable::new(self.with_changed()));
            let scan = LogicalPlanBuilder::scan(STATE_TABLE, provider_as_source(table), None)?;
            let exprs: Vec<Expr> = final_values(self.keys, &self.finals)
                .zip(self.agg_schema.fields())
                .map(|(e, f)| cast(e, f.data_type().clone()).alias(f.name()))
                .collect();
            Ok(scan.project(exprs)?.build()?)
        });
        let rows = TaskRows([(STATE_TABLE.to_string(), rows)].into());
        conform(planned.await?.run(session, rows).await?, &self.agg_schema)
    }
}

#[async_trait::async_trait]
impl StatefulOperator for StatefulAgg {
    fn name(&self) -> &str {
        &self.operator
    }

    fn signature(&self) -> &[String] {
        &self.signature
    }

    fn state_schema(&self) -> SchemaRef {
        self.state_schema.clone()
    }

    fn output(&self) -> (&'static str, SchemaRef) {
        (AGG_TABLE, self.agg_schema.clone())
    }

    fn describe(&self) -> String {
        format!("RunningAggregate [{}]", self.signature.join(", "))
    }

    fn eviction(&self) -> String {
        let Some(w) = &self.window else {
            return "never: one row per group key, kept for the job's life (group by an event-time window to bound it)".into();
        };
        let (window, end) = match w.session {
            Some(_) => ("a session", "its end (its last row plus the gap)"),
            None => ("a window", "its end"),
        };
        match self.output_mode {
            OutputMode::Complete => format!(
                "never: complete mode emits every window each batch, so {window} is kept after the watermark passes {end}"
            ),
            OutputMode::Append => format!(
                "{window} leaves the state once the watermark reaches {end}, and is emitted then, once; a row for a closed window is late and dropped"
            ),
            OutputMode::Update => format!(
                "{window} leaves the state once the watermark reaches {end}; its changed rows are emitted every batch until then; a row for a closed window is late and dropped"
            ),
        }
    }

    fn windowed(&self) -> bool {
        self.window.is_some()
    }

    fn follows_output_mode(&self) -> bool {
        true
    }

    fn append_only(&self) -> bool {
        self.window.is_some() && self.output_mode == OutputMode::Append
    }

    async fn process(
        &self,
        ctx: &BatchContext<'_>,
        inputs: Vec<Vec<RecordBatch>>,
        state: &State,
    ) -> Result<Processed, SqlError> {
        let input = inputs.into_iter().flatten().collect();
        let watermark = ctx
            .watermark_ms
            .filter(|_| self.output_mode != OutputMode::Complete);
        let late_watermark = match self.downstream {
            true => ctx.previous_watermark_ms.filter(|_| watermark.is_some()),
            false => watermark,
        };
        let (partials, late) = match (&self.window, late_watermark) {
            (Some(w), Some(wm)) => self.on_time_partials(ctx.session, w, wm, input).await?,
            _ => (self.planned_partials(ctx.session, input).await?, Vec::new()),
        };
        let (update, output) = match &self.key_columns {
            Some(keys) => {
                self.update_keyed(ctx.session, keys, partials, state)
                    .await?
            }
            None => {
                self.update_state(ctx.session, partials, &state.batches()?, watermark)
                    .await?
            }
        };
        let metrics = match &self.window {
            Some(w) => window_metrics(w, &update.state)?,
            None => Vec::new(),
        };
        Ok(Processed {
            output,
            late_rows: late.iter().map(|b| b.num_rows() as u64).sum(),
            late,
            state: update.state,
            metrics,
            delta: update.delta,
        })
    }

    async fn restore(
        &self,
        session: &SessionContext,
        parts: &[Vec<RecordBatch>],
    ) -> Result<State, SqlError> {
        if self.window.is_some() {
            return Ok(State::from_batches(
                parts.last().cloned().unwrap_or_default(),
            ));
        }
        let merged = self
            .merge(
                session,
                parts.iter().map(|p| (p.as_slice(), false)).collect(),
            )
            .await?;
        Ok(State::from_batches(without_changed(merged, self)?))
    }
}

impl CompiledJob {
    /// The stateful operator of `stage`, if it has one.
    pub fn state_of(&self, stage: usize) -> Option<&dyn StatefulOperator> {
        self.fragments
            .get(stage)
            .and_then(|f| f.operator.as_deref())
    }

    /// State version N of `stage`'s operator from the latest snapshot at or before N and the
    /// deltas after it.
    pub async fn restore_state(
        &self,
        stage: usize,
        parts: &[Vec<RecordBatch>],
    ) -> Result<State, SqlError> {
        let op = self.state_of(stage).ok_or_else(|| no_state(stage))?;
        op.restore(&self.ctx, parts).await
    }
}

/// Every aggregate of a query as state columns, their merges and final values.
pub(crate) struct Decomposed {
    pub partials: Vec<Expr>,
    pub merges: Vec<Merge>,
    pub finals: Vec<Final>,
}

pub(crate) fn decompose_all(aggr_expr: &[Expr], windowed: bool) -> Result<Decomposed, String> {
    let mut d = Decomposed {
        partials: Vec::new(),
        merges: Vec::new(),
        finals: Vec::new(),
    };
    for e in aggr_expr {
        let (partials, merges, last) = decompose(e, d.partials.len(), windowed)?;
        d.partials.extend(partials);
        d.merges.extend(merges);
        d.finals.push(last);
    }
    Ok(d)
}

/// The keys (k0..) and each aggregate's final value from state columns (s0..).
pub(crate) fn final_values(keys: usize, finals: &[Final]) -> impl Iterator<Item = Expr> + '_ {
    let s = |i: usize| col(format!("s{i}"));
    (0..keys)
        .map(|i| col(format!("k{i}")))
        .chain(finals.iter().map(move |f| match f {
            Final::Column(i) => s(*i),
            Final::Average { sum, count } => {
                cast(s(*sum), DataType::Float64) / cast(s(*count), DataType::Float64)
            }
            Final::Distinct(i) => coalesce(vec![cardinality(s(*i)), lit(0u64)]),
        }))
}

/// Merges lists of distinct values (gathered as a list of lists; flattened after).
pub(crate) fn union_values(c: Expr) -> Expr {
    array_agg(c.clone())
        .filter(c.is_not_null())
        .build()
        .expect("an aggregate takes a filter")
}

/// One aggregate of the query as state columns (first at `at`, named s<i>), how each merges,
/// and how its value is computed from them.
fn decompose(
    e: &Expr,
    at: usize,
    windowed: bool,
) -> Result<(Vec<Expr>, Vec<Merge>, Final), String> {
    let inner = strip_alias(e);
    let Expr::AggregateFunction(f) = inner else {
        return Err(format!("unsupported aggregate expression {e}"));
    };
    let name = f.func.name().to_ascii_lowercase();
    if !f.params.order_by.is_empty() {
        return Err(format!(
            "{e}: ordered aggregates are not supported in a running aggregation"
        ));
    }
    let with_func = |func, distinct, filter| {
        Expr::AggregateFunction(AggregateFunction::new_udf(
            func,
            f.params.args.clone(),
            distinct,
            filter,
            Vec::new(),
            f.params.null_treatment,
        ))
    };
    let named = |e: Expr, i: usize| e.alias(format!("s{i}"));
    if f.params.distinct {
        let [arg] = f.params.args.as_slice() else {
            return Err(format!("{e}: DISTINCT takes one argument here"));
        };
        if name != "count" || !windowed {
            return Err(format!(
                "{e}: DISTINCT is supported as count(DISTINCT ...) in an event-time window (TUMBLE, HOP, SESSION or date_bin), whose state of distinct values is dropped when the window closes; a running aggregation without a window would keep every value forever"
            ));
        }
        // The window's distinct values, as a list.
        let present = arg.clone().is_not_null();
        let filter = match &f.params.filter {
            Some(other) => other.as_ref().clone().and(present),
            None => present,
        };
        let values = with_func(array_agg_udaf(), true, Some(Box::new(filter)));
        return Ok((
            vec![named(values, at)],
            vec![Merge::Union],
            Final::Distinct(at),
        ));
    }
    let filter = f.params.filter.clone();
    match name.as_str() {
        "count" | "sum" | "min" | "max" => {
            let merge = match name.as_str() {
                "min" => Merge::Min,
                "max" => Merge::Max,
                _ => Merge::Sum,
            };
            Ok((
                vec![named(inner.clone(), at)],
                vec![merge],
                Final::Column(at),
            ))
        }
        "avg" | "mean" => Ok((
            vec![
                named(with_func(sum_udaf(), false, filter.clone()), at),
                named(with_func(count_udaf(), false, filter), at + 1),
            ],
            vec![Merge::Sum, Merge::Sum],
            Final::Average {
                sum: at,
                count: at + 1,
            },
        )),
        other => Err(format!(
            "{e}: '{other}' is not supported in a running aggregation; supported: count, sum, min, max, avg, and count(DISTINCT ...) in a window (or add _batch to the GROUP BY for per-batch results)"
        )),
    }
}

fn no_state(stage: usize) -> SqlError {
    SqlError::internal(format!("stage {stage} keeps no state"))
}

fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        _ => e,
    }
}

pub(crate) fn nullable(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

/// Re-labels computed batches with `schema` (same column types, our names, nullable).
pub(crate) fn conform(
    batches: Vec<RecordBatch>,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, SqlError> {
    batches
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| Ok(RecordBatch::try_new(schema.clone(), b.columns().to_vec())?))
        .collect()
}

/// State rows with the changed flag (the schema `with_changed` gives) set to `changed`.
fn flagged(
    rows: &[RecordBatch],
    schema: &SchemaRef,
    changed: bool,
) -> Result<Vec<RecordBatch>, SqlError> {
    (rows.iter())
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            let mut columns = b.columns().to_vec();
            columns.push(Arc::new(BooleanArray::from(vec![changed; b.num_rows()])));
            Ok(RecordBatch::try_new(schema.clone(), columns)?)
        })
        .collect()
}

fn without_changed(
    merged: Vec<RecordBatch>,
    agg: &StatefulAgg,
) -> Result<Vec<RecordBatch>, SqlError> {
    merged
        .into_iter()
        .map(|b| {
            let mut columns = b.columns().to_vec();
            columns.pop();
            Ok(RecordBatch::try_new(agg.state_schema.clone(), columns)?)
        })
        .collect()
}

/// Which rows of a state batch belong to windows ending at or before the watermark.
/// A windowed aggregation's open windows (its state rows, one per key and window) and the
/// earliest end among them: what the watermark must pass for the next output.
fn window_metrics(w: &WindowKey, state: &State) -> Result<Vec<(String, Metric)>, SqlError> {
    use sluice_core::progress::{NEXT_WINDOW_END_MS, OPEN_WINDOWS};
    let as_ms = DataType::Timestamp(TimeUnit::Millisecond, None);
    let mut next: Option<i64> = None;
    for b in state.batches()? {
        let keys = arrow::compute::cast(b.column(w.close_key), &as_ms)?;
        if let Some(min) = arrow::compute::min(keys.as_primitive::<TimestampMillisecondType>()) {
            next = Some(next.map_or(min, |n| n.min(min)));
        }
    }
    let mut metrics = vec![(
        OPEN_WINDOWS.to_string(),
        Metric::sum(state.num_rows() as u64),
    )];
    if let Some(key) = next {
        let end = key.saturating_add(w.end_offset_ms);
        metrics.push((NEXT_WINDOW_END_MS.to_string(), Metric::min(end)));
    }
    Ok(metrics)
}

fn window_closed(b: &RecordBatch, key: usize, watermark_ms: i64) -> Result<BooleanArray, SqlError> {
    let as_ms = DataType::Timestamp(TimeUnit::Millisecond, None);
    let ends = arrow::compute::cast(b.column(key), &as_ms)?;
    let ends = ends.as_primitive::<TimestampMillisecondType>();
    Ok(ends
        .iter()
        .map(|end| Some(end.is_some_and(|end| end <= watermark_ms)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Float64Array, Int64Array, StringArray};

    /// Every pair of (null, smaller, larger) on each side.
    fn sides<T: Copy>(lo: T, hi: T) -> (Vec<Option<T>>, Vec<Option<T>>) {
        let values = [None, Some(lo), Some(hi)];
        let before = values.iter().flat_map(|v| [*v; 3]).collect();
        let after = (0..3).flat_map(|_| values).collect();
        (before, after)
    }

    fn merged<T: Copy>(a: Option<T>, b: Option<T>, f: impl Fn(T, T) -> T) -> Option<T> {
        match (a, b) {
            (Some(a), Some(b)) => Some(f(a, b)),
            (a, b) => a.or(b),
        }
    }

    /// `sides(lo, hi)` as the arrays `A` of the before and after sides.
    fn arrays<T: Copy, A>(lo: T, hi: T) -> (Vec<Option<T>>, Vec<Option<T>>, ArrayRef, ArrayRef)
    where
        A: From<Vec<Option<T>>> + Array + 'static,
    {
        let (b, a) = sides(lo, hi);
        let (before, after) = (A::from(b.clone()), A::from(a.clone()));
        (b, a, Arc::new(before), Arc::new(after))
    }

    #[test]
    fn row_by_row_merges_treat_a_null_side_as_no_value() {
        let (b, a, before, after) = arrays::<_, Int64Array>(-3i64, i64::MAX);
        let sum = Merge::Sum.apply(&before, &after).unwrap();
        let want: Int64Array = (b.iter().zip(&a))
            .map(|(x, y)| merged(*x, *y, i64::wrapping_add))
            .collect();
        assert_eq!(sum.as_primitive::<arrow::datatypes::Int64Type>(), &want);

        let (b, a, before, after) = arrays::<_, Float64Array>(-0.5f64, 2.0);
        let min = Merge::Min.apply(&before, &after).unwrap();
        let want: Float64Array = (b.iter().zip(&a))
            .map(|(x, y)| merged(*x, *y, f64::min))
            .collect();
        assert_eq!(min.as_primitive::<arrow::datatypes::Float64Type>(), &want);

        let (b, a, before, after) = arrays::<_, StringArray>("apple", "pear");
        let max = Merge::Max.apply(&before, &after).unwrap();
        let want: StringArray = (b.iter().zip(&a))
            .map(|(x, y)| merged(*x, *y, std::cmp::max))
            .collect();
        assert_eq!(max.as_string::<i32>(), &want);
        assert_eq!(max.null_count(), 1);
    }

    #[test]
    fn only_sums_of_numbers_and_comparable_extremes_merge_row_by_row() {
        assert!(Merge::Sum.elementwise(&DataType::Int64));
        assert!(!Merge::Sum.elementwise(&DataType::Decimal128(20, 2)));
        assert!(Merge::Max.elementwise(&DataType::Utf8));
        let list = DataType::new_list(DataType::Int64, true);
        assert!(!Merge::Union.elementwise(&list));
        assert!(!Merge::Min.elementwise(&list));
    }
}
