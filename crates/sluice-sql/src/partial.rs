//! Map-side partial aggregation: an aggregate split into the partial values each map task
//! computes before the shuffle (one row per key and task instead of every input row) and the
//! merge its reducer does, as Spark's partial/final aggregates and Flink's two-phase
//! aggregation do. The partial values are exactly a running aggregation's state columns, so the
//! same decomposition (`state::decompose`) serves a per-batch aggregate, whose reducer merges and
//! finalizes, and a running one, whose reducer merges the partials into its state.

use crate::state::{Decomposed, Final, Merge, decompose_all, final_values};
use crate::window::window_key;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{Column, DFSchemaRef};
use datafusion::functions_aggregate::expr_fn::{max, min, sum};
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, LogicalPlanBuilder, cast, col};
use std::sync::Arc;

/// An aggregate split in two: what map tasks compute and what the reducer does with it.
pub(crate) struct TwoPhase {
    /// The map side: the aggregate's partial values per key, flat names k0.. then s0...
    pub map: LogicalPlan,
    /// What the exchange hashes: the map side's key columns. They hold the values the group
    /// expressions had, in their types, so a key lands in the partition it always did (state
    /// partitions written before keep their keys).
    pub shuffle_keys: Vec<Expr>,
    keys: usize,
    merges: Vec<Merge>,
    finals: Vec<Final>,
}

impl TwoPhase {
    /// Splits `agg` over `input` (the map stage's rows), or `None` when it cannot be split:
    /// an event-time window (its late rows are judged on the reducer, row by row), an
    /// aggregate without a merge rule, or an average of decimals (exact only in one phase).
    pub fn plan(agg: &Aggregate, input: &LogicalPlan) -> Option<TwoPhase> {
        if !matches!(window_key(&agg.group_expr), Ok(None)) {
            return None;
        }
        let Decomposed {
            partials,
            merges,
            finals,
        } = decompose_all(&agg.aggr_expr, false).ok()?;
        let keys = agg.group_expr.len();
        for (i, f) in finals.iter().enumerate() {
            let decimal = matches!(
                agg.schema.field(keys + i).data_type(),
                DataType::Decimal32(..)
                    | DataType::Decimal64(..)
                    | DataType::Decimal128(..)
                    | DataType::Decimal256(..)
            );
            if matches!(f, Final::Average { .. }) && decimal {
                return None;
            }
        }
        let map = Aggregate::try_new(Arc::new(input.clone()), agg.group_expr.clone(), partials)
            .map(LogicalPlan::Aggregate)
            .and_then(flat_names(keys))
            .ok()?;
        let shuffle_keys = (0..keys).map(|i| col(format!("k{i}"))).collect();
        Some(TwoPhase {
            map,
            shuffle_keys,
            keys,
            merges,
            finals,
        })
    }

    /// The partial rows' schema with every column nullable: a running aggregation's state.
    pub fn state_schema(&self) -> SchemaRef {
        crate::state::nullable(self.map.schema().as_arrow())
    }

    /// The reducer's merge of the partial rows `leaf` into one row per key, in `state`'s
    /// names and types (a sum of decimals widens; the state keeps its own type).
    pub fn merge(
        &self,
        leaf: LogicalPlan,
        state: &SchemaRef,
    ) -> datafusion::error::Result<LogicalPlan> {
        let fields = state.fields();
        let group: Vec<Expr> = fields[..self.keys]
            .iter()
            .map(|f| col(f.name().as_str()))
            .collect();
        let aggs = merge_exprs(&fields[self.keys..], &self.merges);
        let project: Vec<Expr> = fields
            .iter()
            .map(|f| cast(col(f.name().as_str()), f.data_type().clone()).alias(f.name()))
            .collect();
        LogicalPlanBuilder::from(leaf)
            .aggregate(group, aggs)?
            .project(project)?
            .build()
    }

    /// The reducer of a per-batch aggregate: the merge, then each aggregate's final value,
    /// named and typed exactly as `schema` (the original aggregate's output), so the operators
    /// above plan as if nothing had been split.
    pub fn finish(
        &self,
        leaf: LogicalPlan,
        schema: &DFSchemaRef,
    ) -> datafusion::error::Result<LogicalPlan> {
        let merged = self.merge(leaf, &self.state_schema())?;
        let exprs: Vec<Expr> = final_values(self.keys, &self.finals)
            .zip(schema.iter())
            .map(|(e, (q, f))| cast(e, f.data_type().clone()).alias_qualified(q.cloned(), f.name()))
            .collect();
        LogicalPlanBuilder::from(merged).project(exprs)?.build()
    }
}

/// One merge aggregate per state column, named as the column.
pub(crate) fn merge_exprs(fields: &[arrow::datatypes::FieldRef], merges: &[Merge]) -> Vec<Expr> {
    fields
        .iter()
        .zip(merges)
        .map(|(f, m)| {
            let c = col(f.name().as_str());
            match m {
                Merge::Sum => sum(c),
                Merge::Min => min(c),
                Merge::Max => max(c),
                Merge::Union => crate::state::union_values(c),
            }
            .alias(f.name())
        })
        .collect()
}

/// Renames an aggregate's output to k0.. (its keys) and s0.. (its partial values).
pub(crate) fn flat_names(
    keys: usize,
) -> impl FnOnce(LogicalPlan) -> datafusion::error::Result<LogicalPlan> {
    move |plan| {
        let flat: Vec<Expr> = plan
            .schema()
            .columns()
            .into_iter()
            .enumerate()
            .map(|(i, c): (usize, Column)| {
                let name = match i < keys {
                    true => format!("k{i}"),
                    false => format!("s{}", i - keys),
                };
                Expr::Column(c).alias(name)
            })
            .collect();
        LogicalPlanBuilder::from(plan).project(flat)?.build()
    }
}
