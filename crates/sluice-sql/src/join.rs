//! Stream–stream joins. Both inputs are hash-shuffled on the join keys; each partition keeps
//! both sides' rows in state until the watermark says no future row of the other side can
//! match them (Spark's state-watermark rule: the time bound solved for each side).
//!
//! - An **interval join** (`r.ts BETWEEN l.ts + a AND l.ts + b`) emits a pair in the batch in
//!   which both rows are present: the batch's new left rows against every right row, and the
//!   old left rows against the new right rows. A left row leaves when `l.ts + b` is at or
//!   before the watermark, a right row when `r.ts - a` is; an outer side's row that never
//!   matched comes out then, with NULLs.
//! - A **window join** (both sides windowed alike, joined on `window_end`) emits a window's
//!   rows, inner or outer, when the watermark closes the window.
//! - An **unbounded** inner join with `SET 'state.ttl'` keeps a row until the watermark has
//!   moved that far past the batch it arrived in.
//!
//! A row whose event time is at or before the watermark is late and dropped. An operator fed
//! by another stateful operator judges that by the previous batch's watermark (see
//! [`BatchContext::previous_watermark_ms`]).

use crate::SqlError;
use crate::keyed::State;
use crate::operator::{BatchContext, Processed, StatefulOperator};
use crate::plan::{bind_table, flat_leaf, flat_schema};
use crate::state::{conform, nullable};
use crate::window::{WINDOW_END, interval_ms};
use arrow::array::{
    ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt8Array, UInt64Array,
    new_null_array,
};
use arrow::compute::{cast, concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit, UInt64Type};
use datafusion::common::{Column, DFSchema, DFSchemaRef};
use datafusion::datasource::{empty::EmptyTable, provider_as_source};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Join, JoinType, LogicalPlan, LogicalPlanBuilder, Operator, col,
};
use datafusion::prelude::SessionContext;
use sluice_core::progress::Metric;
use sluice_core::watermark::EventTime;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The scan that stands for the join's output in the rest of its stage.
pub(crate) const JOIN_TABLE: &str = "__join";
const LEFT: &str = "__join_left";
const RIGHT: &str = "__join_right";
const RID: &str = "__rid";
const LEFT_RID: &str = "__left_rid";
const RIGHT_RID: &str = "__right_rid";

/// When a side's row leaves the state.
#[derive(Debug, Clone, Copy)]
enum Expiry {
    /// Once its event time (column `time` of the side) plus `reach_ms` is at or before the
    /// watermark: no future row of the other side can match it.
    Time { time: usize, reach_ms: i64 },
    /// Once the watermark is `ttl_ms` past the one of the batch it arrived in.
    Ttl { ttl_ms: i64 },
}

struct Side {
    /// Its rows as the exchange brings them (flat names c0..).
    schema: SchemaRef,
    expiry: Expiry,
    /// An outer side: a row that never matched comes out with NULLs when it expires.
    outer: bool,
}

/// The state of one partition, per side: the rows, whether each matched, and the watermark
/// of the batch each arrived in (for `state.ttl`; NULL until the job has a watermark).
struct Held {
    rows: RecordBatch,
    matched: Vec<bool>,
    since: Vec<Option<i64>>,
}

pub struct StreamJoin {
    operator: String,
    join_type: JoinType,
    /// A window join: pairs come out when the window closes.
    window: bool,
    sides: [Side; 2],
    /// Over the two leaves: the inner join with each side's row id (interval and TTL joins),
    /// or the join itself (window joins).
    pairs: LogicalPlan,
    output_schema: SchemaRef,
    state_schema: SchemaRef,
    signature: Vec<String>,
    /// Another stateful operator feeds it: late rows are judged by the previous watermark.
    downstream: bool,
    /// Each side's event-time column its rows expire by (none for `state.ttl`), for
    /// [`StatefulOperator::eviction`].
    time_columns: [String; 2],
}

/// What a join's condition says about time: bounds on `right time - left time`.
struct Bound {
    left: Column,
    right: Column,
    lo: Option<i64>,
    hi: Option<i64>,
}

/// What the planner knows when it meets a join of two streams.
pub(crate) struct JoinPlanning<'a> {
    /// Its stage (for the operator's name).
    pub stage: usize,
    pub event_times: &'a BTreeMap<String, EventTime>,
    pub ttl_ms: Option<i64>,
    pub downstream: bool,
}

impl StreamJoin {
    /// Plans the join of two streams; returns the operator and the leaf standing for its
    /// output in the rest of the stage.
    pub(crate) fn plan(
        join: &Join,
        how: &JoinPlanning<'_>,
    ) -> Result<(StreamJoin, LogicalPlan), String> {
        let kind = join.join_type;
        let outer = match kind {
            JoinType::Inner => [false, false],
            JoinType::Left => [true, false],
            JoinType::Right => [false, true],
            JoinType::Full => [true, true],
            other => {
                return Err(format!(
                    "a {} join of two streams is not supported: join two streams with an inner, left, right or full outer join",
                    other.to_string().to_lowercase()
                ));
            }
        };
        if join.on.is_empty() {
            return Err("a join of two streams needs an equality on keys (ON l.key = r.key ...): both sides are shuffled on it".into());
        }
        let (ls, rs) = (join.left.schema(), join.right.schema());
        let window = window_join(join);
        let bound = join.filter.as_ref().and_then(|f| time_bound(f, ls, rs));
        let expiry: [Expiry; 2] = match (&window, &bound, how.ttl_ms) {
            (Some((l, r)), _, _) => {
                for (c, side) in [(l, &join.left), (r, &join.right)] {
                    event_time_of(side, c, how.event_times)?;
                }
                let time = |s: &DFSchema, c: &Column| s.index_of_column(c).expect("its column");
                [
                    Expiry::Time {
                        time: time(ls, l),
                        reach_ms: 0,
                    },
                    Expiry::Time {
                        time: time(rs, r),
                        reach_ms: 0,
                    },
                ]
            }
            (None, Some(b), _) => interval_expiry(b, join, how.event_times)?,
            (None, None, Some(ttl_ms)) => {
                if kind != JoinType::Inner {
                    return Err(format!(
                        "SET 'state.ttl' bounds inner joins only: a {} join without a time bound could never say that a row will not be matched; add a time bound such as AND r.ts BETWEEN l.ts AND l.ts + INTERVAL '10' SECOND",
                        kind.to_string().to_lowercase()
                    ));
                }
                if how.event_times.is_empty() {
                    return Err("SET 'state.ttl' counts event time, but no source table declares a WATERMARK: add WATERMARK FOR ts AS ts - INTERVAL '10' SECOND to the joined tables".into());
                }
                [Expiry::Ttl { ttl_ms }; 2]
            }
            (None, None, None) => {
                return Err("a join of two streams needs a time bound, or its state grows forever: add one such as AND r.ts BETWEEN l.ts AND l.ts + INTERVAL '10' SECOND (event-time columns with a WATERMARK), join both sides' TUMBLE/HOP windows ON l.window_end = r.window_end, or SET 'state.ttl' = '1h' (inner joins; results can then be incomplete)".into());
            }
        };
        let side = |i: usize, s: &DFSchemaRef| Side {
            schema: flat_schema(s),
            expiry: expiry[i],
            outer: outer[i],
        };
        let sides = [side(0, ls), side(1, rs)];
        let pairs = pairs_plan(join, window.is_some()).map_err(|e| e.to_string())?;
        let mut signature = vec![
            format!("join {}", kind.to_string().to_lowercase()),
            format!("on {}", display_on(join)),
        ];
        signature.extend(join.filter.as_ref().map(|f| format!("filter {f}")));
        signature.extend(
            sides
                .iter()
                .map(|s| format!("side {:?}: {}", s.expiry, types(&s.schema))),
        );
        let state_schema = state_schema(&sides);
        let time_columns = match (&window, &bound) {
            (Some((l, r)), _) => [l.flat_name(), r.flat_name()],
            (None, Some(b)) => [b.left.flat_name(), b.right.flat_name()],
            (None, None) => Default::default(),
        };
        let upper = flat_leaf(JOIN_TABLE, &join.schema).map_err(|e| e.to_string())?;
        Ok((
            StreamJoin {
                operator: format!("join-{}", how.stage),
                join_type: kind,
                window: window.is_some(),
                sides,
                pairs,
                output_schema: flat_schema(&join.schema),
                state_schema,
                signature,
                downstream: how.downstream,
                time_columns,
            },
            upper,
        ))
    }

    /// Splits a side's new rows into those on time and those late (event time at or before
    /// `watermark`, or none).
    fn on_time(
        &self,
        side: usize,
        rows: RecordBatch,
        watermark: Option<i64>,
    ) -> Result<(RecordBatch, usize), SqlError> {
        let (Expiry::Time { time, .. }, Some(w)) = (self.sides[side].expiry, watermark) else {
            return Ok((rows, 0));
        };
        let times = millis(rows.column(time))?;
        let keep: BooleanArray = times
            .iter()
            .map(|t| Some(t.is_some_and(|t| t > w)))
            .collect();
        let kept = filter_record_batch(&rows, &keep)?;
        let late = rows.num_rows() - kept.num_rows();
        Ok((kept, late))
    }

    /// Which held rows of a side have expired under `watermark`.
    fn expired(
        &self,
        side: usize,
        held: &Held,
        watermark: Option<i64>,
    ) -> Result<Vec<bool>, SqlError> {
        let Some(w) = watermark else {
            return Ok(vec![false; held.rows.num_rows()]);
        };
        Ok(match self.sides[side].expiry {
            Expiry::Time { time, reach_ms } => millis(held.rows.column(time))?
                .iter()
                .map(|t| t.is_none_or(|t| t.saturating_add(reach_ms) <= w))
                .collect(),
            Expiry::Ttl { ttl_ms } => held
                .since
                .iter()
                .map(|s| s.is_some_and(|s| s.saturating_add(ttl_ms) <= w))
                .collect(),
        })
    }

    /// Runs the pairs plan over left and right rows (with row ids for an interval join).
    async fn pairs(
        &self,
        session: &SessionContext,
        left: RecordBatch,
        right: RecordBatch,
    ) -> Result<Vec<RecordBatch>, SqlError> {
        let inner = self.join_type == JoinType::Inner || !self.window;
        if inner && (left.num_rows() == 0 || right.num_rows() == 0) {
            return Ok(Vec::new());
        }
        if left.num_rows() == 0 && right.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let plan = bind_table(self.pairs.clone(), LEFT, left.schema(), vec![left])?;
        let plan = bind_table(plan, RIGHT, right.schema(), vec![right])?;
        let out = session.execute_logical_plan(plan).await?.collect().await?;
        Ok(out.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    async fn process_window(
        &self,
        ctx: &BatchContext<'_>,
        held: [Held; 2],
    ) -> Result<(Vec<RecordBatch>, [Held; 2]), SqlError> {
        let mut closed = Vec::new();
        let mut open = Vec::new();
        for (s, h) in held.into_iter().enumerate() {
            let gone = self.expired(s, &h, ctx.watermark_ms)?;
            let (c, o) = h.split(&gone)?;
            closed.push(c.rows);
            open.push(o);
        }
        let right = closed.pop().expect("two sides");
        let left = closed.pop().expect("two sides");
        let output = self.pairs(ctx.session, left, right).await?;
        let right = open.pop().expect("two sides");
        let left = open.pop().expect("two sides");
        Ok((output, [left, right]))
    }

    async fn process_interval(
        &self,
        ctx: &BatchContext<'_>,
        old: [Held; 2],
        new: [Held; 2],
    ) -> Result<(Vec<RecordBatch>, [Held; 2]), SqlError> {
        let [old_l, old_r] = old;
        let [new_l, new_r] = new;
        let mut all_l = Held::concat(old_l, new_l)?;
        let mut all_r = Held::concat(old_r, new_r)?;
        let (from_l, from_r) = (all_l.new_from, all_r.new_from);
        // Each pair has a new row on at least one side: new left × all right, old left × new right.
        let mut output = Vec::new();
        let both = [
            (
                with_ids(&all_l.held.rows, from_l..all_l.held.rows.num_rows())?,
                with_ids(&all_r.held.rows, 0..all_r.held.rows.num_rows())?,
            ),
            (
                with_ids(&all_l.held.rows, 0..from_l)?,
                with_ids(&all_r.held.rows, from_r..all_r.held.rows.num_rows())?,
            ),
        ];
        for (l, r) in both {
            for pairs in self.pairs(ctx.session, l, r).await? {
                let n = pairs.num_columns();
                for (held, id) in [(&mut all_l.held, n - 2), (&mut all_r.held, n - 1)] {
                    for i in pairs.column(id).as_primitive::<UInt64Type>().values() {
                        held.matched[*i as usize] = true;
                    }
                }
                output.push(pairs.project(&(0..n - 2).collect::<Vec<_>>())?);
            }
        }
        let mut kept = Vec::new();
        for (s, mut h) in [all_l.held, all_r.held].into_iter().enumerate() {
            for since in h.since.iter_mut().filter(|s| s.is_none()) {
                *since = ctx.watermark_ms;
            }
            let gone = self.expired(s, &h, ctx.watermark_ms)?;
            let (expired, stay) = h.split(&gone)?;
            if self.sides[s].outer {
                let unmatched: BooleanArray = expired.matched.iter().map(|m| Some(!m)).collect();
                let rows = filter_record_batch(&expired.rows, &unmatched)?;
                output.push(self.null_extended(s, &rows)?);
            }
            kept.push(stay);
        }
        let right = kept.pop().expect("two sides");
        let left = kept.pop().expect("two sides");
        Ok((output, [left, right]))
    }

    /// Rows of side `side` with NULLs for the other side's columns, in the output's shape.
    fn null_extended(&self, side: usize, rows: &RecordBatch) -> Result<RecordBatch, SqlError> {
        let n = rows.num_rows();
        let nulls = |s: &Side| -> Vec<ArrayRef> {
            s.schema
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), n))
                .collect()
        };
        let mut columns = Vec::new();
        for (s, other) in self.sides.iter().enumerate() {
            match s == side {
                true => columns.extend(rows.columns().iter().cloned()),
                false => columns.extend(nulls(other)),
            }
        }
        Ok(RecordBatch::try_new(
            nullable(&self.output_schema),
            columns,
        )?)
    }

    /// A partition's state rows, per side.
    fn held(&self, state: &[RecordBatch]) -> Result<[Held; 2], SqlError> {
        let all = concat_batches(&self.state_schema, state)?;
        let side_of = all.column(0).as_primitive::<arrow::datatypes::UInt8Type>();
        let mut out = Vec::new();
        let mut offset = 3;
        for (s, side) in self.sides.iter().enumerate() {
            let mask: BooleanArray = side_of.iter().map(|v| Some(v == Some(s as u8))).collect();
            let mine = filter_record_batch(&all, &mask)?;
            let width = side.schema.fields().len();
            let columns = mine.columns()[offset..offset + width].to_vec();
            offset += width;
            out.push(Held {
                rows: RecordBatch::try_new(nullable(&side.schema), columns)?,
                matched: mine
                    .column(1)
                    .as_boolean()
                    .iter()
                    .map(|m| m == Some(true))
                    .collect(),
                since: mine.column(2).as_primitive::<Int64Type>().iter().collect(),
            });
        }
        let right = out.pop().expect("two sides");
        Ok([out.pop().expect("two sides"), right])
    }

    /// The state rows of both sides.
    fn state_rows(&self, held: &[Held; 2]) -> Result<Vec<RecordBatch>, SqlError> {
        let mut out = Vec::new();
        for (s, h) in held.iter().enumerate() {
            let n = h.rows.num_rows();
            if n == 0 {
                continue;
            }
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(UInt8Array::from(vec![s as u8; n])),
                Arc::new(BooleanArray::from(h.matched.clone())),
                Arc::new(Int64Array::from(h.since.clone())),
            ];
            for (o, side) in self.sides.iter().enumerate() {
                match o == s {
                    true => columns.extend(h.rows.columns().iter().cloned()),
                    false => columns.extend(
                        side.schema
                            .fields()
                            .iter()
                            .map(|f| new_null_array(f.data_type(), n)),
                    ),
                }
            }
            out.push(RecordBatch::try_new(self.state_schema.clone(), columns)?);
        }
        Ok(out)
    }

    fn new_rows(&self, side: usize, input: Vec<RecordBatch>) -> Result<RecordBatch, SqlError> {
        let schema = nullable(&self.sides[side].schema);
        let batches = input
            .into_iter()
            .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(concat_batches(&schema, &batches)?)
    }
}

impl Held {
    fn new(rows: RecordBatch) -> Held {
        let n = rows.num_rows();
        Held {
            rows,
            matched: vec![false; n],
            since: vec![None; n],
        }
    }

    /// The rows where `mask` is set, and the others.
    fn split(self, mask: &[bool]) -> Result<(Held, Held), SqlError> {
        let pick = |want: bool| -> Result<Held, SqlError> {
            let m: BooleanArray = mask.iter().map(|b| Some(*b == want)).collect();
            let keep = |i: &usize| mask[*i] == want;
            Ok(Held {
                rows: filter_record_batch(&self.rows, &m)?,
                matched: (0..mask.len())
                    .filter(keep)
                    .map(|i| self.matched[i])
                    .collect(),
                since: (0..mask.len())
                    .filter(keep)
                    .map(|i| self.since[i])
                    .collect(),
            })
        };
        Ok((pick(true)?, pick(false)?))
    }

    /// Old rows then new ones, remembering where the new ones start.
    fn concat(old: Held, new: Held) -> Result<Appended, SqlError> {
        let new_from = old.rows.num_rows();
        let rows = concat_batches(&old.rows.schema(), [&old.rows, &new.rows])?;
        let mut matched = old.matched;
        matched.extend(new.matched);
        let mut since = old.since;
        since.extend(new.since);
        Ok(Appended {
            held: Held {
                rows,
                matched,
                since,
            },
            new_from,
        })
    }
}

struct Appended {
    held: Held,
    new_from: usize,
}

/// Rows `range` of `rows`, with their index as a row id column.
fn with_ids(rows: &RecordBatch, range: std::ops::Range<usize>) -> Result<RecordBatch, SqlError> {
    let part = rows.slice(range.start, range.len());
    let mut fields: Vec<Field> = rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(RID, DataType::UInt64, false));
    let mut columns = part.columns().to_vec();
    columns.push(Arc::new(UInt64Array::from_iter_values(
        range.map(|i| i as u64),
    )));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[async_trait::async_trait]
impl StatefulOperator for StreamJoin {
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
        (JOIN_TABLE, self.output_schema.clone())
    }

    fn describe(&self) -> String {
        let how = match (self.window, self.sides[0].expiry) {
            (true, _) => "window".to_string(),
            (false, Expiry::Ttl { ttl_ms }) => format!("state.ttl {ttl_ms} ms"),
            (false, Expiry::Time { .. }) => "interval".to_string(),
        };
        format!(
            "StreamJoin [{} {how}, {}]",
            self.join_type.to_string().to_lowercase(),
            self.signature[1]
        )
    }

    fn eviction(&self) -> String {
        let side = |i: usize, name: &str| {
            let outer = match self.sides[i].outer {
                true => " (unmatched, it comes out with NULLs then)",
                false => "",
            };
            let column = &self.time_columns[i];
            match self.sides[i].expiry {
                Expiry::Time { reach_ms: 0, .. } => format!(
                    "a {name} row leaves the state once the watermark reaches its {column}{outer}"
                ),
                Expiry::Time { reach_ms, .. } => format!(
                    "a {name} row leaves the state once the watermark reaches its {column} {} {} ms, when no {} row can match it any more{outer}",
                    if reach_ms < 0 { "-" } else { "+" },
                    reach_ms.unsigned_abs(),
                    if i == 0 { "right" } else { "left" }
                ),
                Expiry::Ttl { ttl_ms } => format!(
                    "a {name} row leaves the state once the watermark is {ttl_ms} ms past the one of the batch it arrived in (state.ttl)"
                ),
            }
        };
        let pairs = match self.window {
            true => "; the window's pairs are emitted when it closes",
            false => "; pairs are emitted as soon as both rows have arrived",
        };
        format!("{}; {}{pairs}", side(0, "left"), side(1, "right"))
    }

    fn windowed(&self) -> bool {
        true
    }

    fn append_only(&self) -> bool {
        true
    }

    async fn process(
        &self,
        ctx: &BatchContext<'_>,
        inputs: Vec<Vec<RecordBatch>>,
        state: &State,
    ) -> Result<Processed, SqlError> {
        let late_watermark = match self.downstream {
            true => ctx.previous_watermark_ms,
            false => ctx.watermark_ms,
        };
        let mut inputs = inputs.into_iter();
        let mut new = Vec::new();
        let mut metrics = Vec::new();
        let mut late_rows = 0;
        for (s, name) in ["left", "right"].iter().enumerate() {
            let rows = self.new_rows(s, inputs.next().unwrap_or_default())?;
            let (rows, late) = self.on_time(s, rows, late_watermark)?;
            late_rows += late as u64;
            metrics.push((format!("{name}.late_rows"), Metric::sum(late as u64)));
            new.push(Held::new(rows));
        }
        let new: [Held; 2] = new
            .try_into()
            .map_err(|_| SqlError::internal("two sides"))?;
        let old = self.held(&state.batches()?)?;
        let (output, kept) = match self.window {
            true => {
                let [ol, or] = old;
                let [nl, nr] = new;
                let held = [Held::concat(ol, nl)?.held, Held::concat(or, nr)?.held];
                self.process_window(ctx, held).await?
            }
            false => self.process_interval(ctx, old, new).await?,
        };
        for (h, name) in kept.iter().zip(["left", "right"]) {
            let (rows, bytes) = (h.rows.num_rows(), h.rows.get_array_memory_size());
            metrics.push((format!("{name}.state_rows"), Metric::sum(rows as u64)));
            metrics.push((format!("{name}.state_bytes"), Metric::sum(bytes as u64)));
        }
        let state = self.state_rows(&kept)?;
        Ok(Processed {
            output: conform(output, &self.output_schema)?,
            late: Vec::new(),
            late_rows,
            // Expired rows must stay expired on restore: the delta is the whole (bounded) state.
            delta: state.clone(),
            state: State::from_batches(state),
            metrics,
        })
    }

    async fn restore(
        &self,
        _session: &SessionContext,
        parts: &[Vec<RecordBatch>],
    ) -> Result<State, SqlError> {
        Ok(State::from_batches(
            parts.last().cloned().unwrap_or_default(),
        ))
    }
}

/// Rows and bytes per side (left, right) of a join's state version, for `sluice checkpoint
/// inspect`; `None` for another operator's state.
pub fn join_state_sides(state: &[RecordBatch]) -> Option<[(u64, u64); 2]> {
    let mut sides = [(0, 0); 2];
    for b in state {
        let schema = b.schema();
        let ours = schema.fields().len() > 3
            && schema.field(0).name() == "side"
            && schema.field(1).name() == "matched";
        if !ours {
            return None;
        }
        let side_of = b.column(0).as_primitive::<arrow::datatypes::UInt8Type>();
        let per_row = b.get_array_memory_size() as u64 / b.num_rows().max(1) as u64;
        for s in side_of.iter().flatten().filter(|s| *s < 2) {
            sides[s as usize].0 += 1;
            sides[s as usize].1 += per_row;
        }
    }
    Some(sides)
}

/// The plan of the join over the two sides' leaves: inner with row ids, or (window joins) the
/// join as declared.
fn pairs_plan(join: &Join, window: bool) -> datafusion::error::Result<LogicalPlan> {
    let ids = !window;
    let left = side_leaf(LEFT, join.left.schema(), ids.then_some(LEFT_RID))?;
    let right = side_leaf(RIGHT, join.right.schema(), ids.then_some(RIGHT_RID))?;
    let join_type = match window {
        true => join.join_type,
        false => JoinType::Inner,
    };
    let joined = LogicalPlan::Join(Join::try_new(
        Arc::new(left),
        Arc::new(right),
        join.on.clone(),
        join.filter.clone(),
        join_type,
        join.join_constraint,
        join.null_equality,
    )?);
    // The output's columns in order, then the two row ids.
    let mut exprs: Vec<Expr> = joined
        .schema()
        .columns()
        .into_iter()
        .filter(|c| c.name != LEFT_RID && c.name != RIGHT_RID)
        .map(Expr::Column)
        .collect();
    if ids {
        exprs.extend([col(LEFT_RID), col(RIGHT_RID)]);
    }
    LogicalPlanBuilder::from(joined).project(exprs)?.build()
}

/// A scan of one side's rows (flat, nullable columns, and a row id when `rid` names it),
/// renamed back to the side's schema.
fn side_leaf(
    table: &str,
    schema: &DFSchemaRef,
    rid: Option<&str>,
) -> datafusion::error::Result<LogicalPlan> {
    let flat = nullable(&flat_schema(schema));
    let mut fields: Vec<Field> = flat.fields().iter().map(|f| f.as_ref().clone()).collect();
    if rid.is_some() {
        fields.push(Field::new(RID, DataType::UInt64, false));
    }
    let scan = LogicalPlanBuilder::scan(
        table,
        provider_as_source(Arc::new(EmptyTable::new(Arc::new(Schema::new(fields))))),
        None,
    )?;
    let mut exprs: Vec<Expr> = schema
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            col(Column::new(Some(table), format!("c{i}"))).alias_qualified(q.cloned(), f.name())
        })
        .collect();
    if let Some(rid) = rid {
        exprs.push(col(Column::new(Some(table), RID)).alias(rid));
    }
    scan.project(exprs)?.build()
}

/// Flags, the watermark of arrival, then the left side's columns and the right side's, all
/// nullable (a row holds one side's).
fn state_schema(sides: &[Side; 2]) -> SchemaRef {
    let mut fields = vec![
        Field::new("side", DataType::UInt8, false),
        Field::new("matched", DataType::Boolean, false),
        Field::new("since_ms", DataType::Int64, true),
    ];
    for (s, side) in sides.iter().enumerate() {
        let prefix = ["l", "r"][s];
        fields.extend(
            side.schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| Field::new(format!("{prefix}{i}"), f.data_type().clone(), true)),
        );
    }
    Arc::new(Schema::new(fields))
}

/// Both sides joined on `window_end`: the columns, when so.
fn window_join(join: &Join) -> Option<(Column, Column)> {
    join.on
        .iter()
        .find_map(|(l, r)| match (strip(l), strip(r)) {
            (Expr::Column(a), Expr::Column(b)) if a.name == WINDOW_END && b.name == WINDOW_END => {
                Some((a.clone(), b.clone()))
            }
            _ => None,
        })
}

/// Each side's expiry from the time bound: a left row can still match while
/// `left time + hi` is after the watermark, a right row while `right time - lo` is.
fn interval_expiry(
    b: &Bound,
    join: &Join,
    event_times: &BTreeMap<String, EventTime>,
) -> Result<[Expiry; 2], String> {
    let (l, r) = (b.left.flat_name(), b.right.flat_name());
    let (lo, hi) = match (b.lo, b.hi) {
        (Some(lo), Some(hi)) => (lo, hi),
        (None, _) => return Err(unbounded("lower", &format!("{r} >= {l}"))),
        (_, None) => {
            let example = format!("{r} <= {l} + INTERVAL '10' SECOND");
            return Err(unbounded("upper", &example));
        }
    };
    event_time_of(&join.left, &b.left, event_times)?;
    event_time_of(&join.right, &b.right, event_times)?;
    let index = |s: &DFSchema, c: &Column| s.index_of_column(c).expect("its column");
    Ok([
        Expiry::Time {
            time: index(join.left.schema(), &b.left),
            reach_ms: hi,
        },
        Expiry::Time {
            time: index(join.right.schema(), &b.right),
            reach_ms: lo.saturating_neg(),
        },
    ])
}

fn unbounded(missing: &str, example: &str) -> String {
    format!(
        "the join's time bound has no {missing} end, so a row of one side could be matched forever and its state would grow: add one such as AND {example}"
    )
}

/// The time bound in a join's filter: comparisons of one side's column (plus or minus an
/// INTERVAL) with the other's, as bounds on `right - left`.
fn time_bound(filter: &Expr, left: &DFSchema, right: &DFSchema) -> Option<Bound> {
    let mut bound: Option<Bound> = None;
    let mut conjuncts: Vec<(Expr, Operator, Expr)> = Vec::new();
    for e in split_conjunction(filter) {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left: a,
                op,
                right: b,
            }) => conjuncts.push((a.as_ref().clone(), *op, b.as_ref().clone())),
            Expr::Between(bw) if !bw.negated => {
                conjuncts.push((
                    bw.expr.as_ref().clone(),
                    Operator::GtEq,
                    bw.low.as_ref().clone(),
                ));
                conjuncts.push((
                    bw.expr.as_ref().clone(),
                    Operator::LtEq,
                    bw.high.as_ref().clone(),
                ));
            }
            _ => {}
        }
    }
    for (a, op, b) in conjuncts {
        let (Some((ca, oa)), Some((cb, ob))) = (term(&a), term(&b)) else {
            continue;
        };
        // Normalize to `right + x  op  left + y`, i.e. right - left  op  y - x.
        let (r, l, op, d) = if right.has_column(&ca) && left.has_column(&cb) {
            (ca, cb, op, ob - oa)
        } else if left.has_column(&ca) && right.has_column(&cb) {
            let Some(op) = op.swap() else { continue };
            (cb, ca, op, oa - ob)
        } else {
            continue;
        };
        let b = bound.get_or_insert_with(|| Bound {
            left: l.clone(),
            right: r.clone(),
            lo: None,
            hi: None,
        });
        if b.left != l || b.right != r {
            continue;
        }
        match op {
            Operator::Lt | Operator::LtEq => b.hi = Some(b.hi.map_or(d, |h| h.min(d))),
            Operator::Gt | Operator::GtEq => b.lo = Some(b.lo.map_or(d, |x| x.max(d))),
            Operator::Eq => {
                b.lo = Some(b.lo.map_or(d, |x| x.max(d)));
                b.hi = Some(b.hi.map_or(d, |h| h.min(d)));
            }
            _ => {}
        }
    }
    bound
}

/// `column`, `column + INTERVAL` or `column - INTERVAL`: the column and the offset in ms.
fn term(e: &Expr) -> Option<(Column, i64)> {
    match strip(e) {
        Expr::Column(c) => Some((c.clone(), 0)),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (c, base) = term(left)?;
            let Expr::Literal(v, _) = strip(right) else {
                return None;
            };
            let ms = interval_ms(v)?;
            match op {
                Operator::Plus => Some((c, base + ms)),
                Operator::Minus => Some((c, base - ms)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Cast(c) => strip(&c.expr),
        Expr::TryCast(c) => strip(&c.expr),
        Expr::Alias(a) => strip(&a.expr),
        other => other,
    }
}

/// Refuses a time column that the watermark does not bound.
fn event_time_of(
    side: &LogicalPlan,
    c: &Column,
    event_times: &BTreeMap<String, EventTime>,
) -> Result<(), String> {
    if event_times.is_empty() {
        return Err(format!(
            "the join bounds {} in time, but no source table declares a WATERMARK: add WATERMARK FOR ts AS ts - INTERVAL '10' SECOND (your column and delay) to both joined tables",
            c.flat_name()
        ));
    }
    match is_event_time(side, c, event_times) {
        true => Ok(()),
        false => Err(format!(
            "the join's time bound uses {}, which is not an event-time column: bound the join by each side's WATERMARK column (or a window over it)",
            c.flat_name()
        )),
    }
}

/// Whether column `c` of `plan`'s output is a source's watermarked column, or a window over it
/// (`date_bin` of it, plus or minus an interval), through projections, filters and aggregations.
fn is_event_time(plan: &LogicalPlan, c: &Column, ets: &BTreeMap<String, EventTime>) -> bool {
    let Ok(i) = plan.schema().index_of_column(c) else {
        return false;
    };
    match plan {
        LogicalPlan::TableScan(scan) => ets
            .get(scan.table_name.table())
            .is_some_and(|et| et.column == c.name),
        LogicalPlan::Projection(p) => is_event_time_expr(&p.expr[i], &p.input, ets),
        LogicalPlan::Aggregate(a) => a
            .group_expr
            .get(i)
            .is_some_and(|e| is_event_time_expr(e, &a.input, ets)),
        LogicalPlan::Union(u) => u.inputs.iter().all(|input| {
            let column = Column::from(input.schema().qualified_field(i));
            is_event_time(input, &column, ets)
        }),
        LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) | LogicalPlan::Join(_) => {
            plan.inputs().iter().any(|input| {
                let (q, f) = plan.schema().qualified_field(i);
                let column = match plan {
                    LogicalPlan::SubqueryAlias(_) => {
                        Column::from(input.schema().qualified_field(i))
                    }
                    _ => Column::new(q.cloned(), f.name()),
                };
                is_event_time(input, &column, ets)
            })
        }
        _ => false,
    }
}

fn is_event_time_expr(e: &Expr, input: &LogicalPlan, ets: &BTreeMap<String, EventTime>) -> bool {
    match strip(e) {
        Expr::Column(c) => is_event_time(input, c, ets),
        Expr::BinaryExpr(BinaryExpr { left, op, right })
            if matches!(op, Operator::Plus | Operator::Minus)
                && matches!(strip(right), Expr::Literal(..)) =>
        {
            is_event_time_expr(left, input, ets)
        }
        Expr::ScalarFunction(f) if f.func.name().eq_ignore_ascii_case("date_bin") => f
            .args
            .get(1)
            .is_some_and(|t| is_event_time_expr(t, input, ets)),
        _ => false,
    }
}

/// A timestamp column as ms since the epoch.
fn millis(a: &ArrayRef) -> Result<Int64Array, SqlError> {
    let ms = cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    Ok(cast(&ms, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

fn display_on(join: &Join) -> String {
    join.on
        .iter()
        .map(|(l, r)| format!("{l} = {r}"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn types(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.data_type().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
