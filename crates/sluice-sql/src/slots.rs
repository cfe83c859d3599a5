//! A stage's physical plan, planned once per job on each executor and run by every task with
//! that task's rows. Each table the stage reads (a source, the shuffle, a static table, a
//! stateful operator's output) becomes a slot: a scan that takes its rows from the task's
//! context when it runs. DataFusion re-runs its own recursive queries the same way (a work
//! table, and `reset_state` on every node before each run).

use crate::SqlError;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::{TableType, provider_as_source};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, TableScan};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::prelude::SessionContext;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A task's rows per table, handed to the plan through its task context.
#[derive(Debug, Default)]
pub(crate) struct TaskRows(pub HashMap<String, Vec<RecordBatch>>);

/// A stage's plan, planned once.
pub(crate) struct Planned {
    plan: Arc<dyn ExecutionPlan>,
    /// The logical output schema, which shuffle blocks and sinks are written with.
    pub schema: SchemaRef,
}

impl Planned {
    /// Plans `plan` with every table scan turned into a slot.
    pub async fn new(ctx: &SessionContext, plan: LogicalPlan) -> Result<Planned, SqlError> {
        let plan = plan
            .transform_up(|node| match &node {
                LogicalPlan::TableScan(scan) => {
                    let slot = Slot {
                        table: scan.table_name.table().to_string(),
                        schema: scan.source.schema(),
                    };
                    let bound = TableScan::try_new(
                        scan.table_name.clone(),
                        provider_as_source(Arc::new(slot)),
                        scan.projection.clone(),
                        scan.filters.clone(),
                        scan.fetch,
                    )?;
                    Ok(Transformed::yes(LogicalPlan::TableScan(bound)))
                }
                _ => Ok(Transformed::no(node)),
            })?
            .data;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let plan = ctx.state().create_physical_plan(&plan).await?;
        Ok(Planned { plan, schema })
    }

    /// Runs the plan over one task's rows.
    pub async fn run(
        &self,
        ctx: &SessionContext,
        rows: TaskRows,
    ) -> Result<Vec<RecordBatch>, SqlError> {
        // Nodes that keep state between runs (a hash join's build side) start afresh.
        let plan = Arc::clone(&self.plan)
            .transform_up(|p| Ok(Transformed::yes(p.reset_state()?)))?
            .data;
        let state = ctx.state();
        let config = state.config().clone().with_extension(Arc::new(rows));
        let task = TaskContext::from(&state).with_session_config(config);
        Ok(datafusion::physical_plan::collect(plan, Arc::new(task)).await?)
    }
}

/// A plan planned the first time a task needs it, then kept: one per stage, and one per plan a
/// stateful operator runs itself.
#[derive(Default)]
pub(crate) struct PlanCache(Mutex<Option<Arc<Planned>>>);

impl PlanCache {
    /// The plan, planned from what `build` makes if it is not yet.
    pub async fn get(
        &self,
        ctx: &SessionContext,
        build: impl FnOnce() -> Result<LogicalPlan, SqlError>,
    ) -> Result<Arc<Planned>, SqlError> {
        if let Some(p) = self.0.lock().unwrap().clone() {
            return Ok(p);
        }
        let p = Arc::new(Planned::new(ctx, build()?).await?);
        *self.0.lock().unwrap() = Some(p.clone());
        Ok(p)
    }
}

/// A table whose rows come with each task.
#[derive(Debug)]
struct Slot {
    table: String,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for Slot {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(projected.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Arc::new(SlotExec {
            table: self.table.clone(),
            schema: self.schema.clone(),
            projection: projection.cloned(),
            properties,
        }))
    }
}

#[derive(Debug)]
struct SlotExec {
    table: String,
    /// The table's schema, before the projection.
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    properties: PlanProperties,
}

impl DisplayAs for SlotExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "SlotExec: {}", self.table)
    }
}

impl ExecutionPlan for SlotExec {
    fn name(&self) -> &str {
        "SlotExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &PlanProperties {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        let config = context.session_config();
        let rows = (config.get_extension::<TaskRows>())
            .and_then(|r| r.0.get(&self.table).cloned())
            .unwrap_or_default();
        // Rows arrive with their producer's field names and metadata; the table's own are
        // what the plan was made with.
        let rows = (rows.into_iter())
            .map(|b| RecordBatch::try_new(self.schema.clone(), b.columns().to_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        let projected = self.properties.eq_properties.schema().clone();
        let stream = MemoryStream::try_new(rows, projected, self.projection.clone())?;
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::datasource::empty::EmptyTable;

    fn table(ctx: &SessionContext, name: &str) {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        ctx.register_table(name, Arc::new(EmptyTable::new(schema)))
            .unwrap();
    }

    fn rows(values: &[i64]) -> Vec<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let column = Arc::new(Int64Array::from(values.to_vec()));
        vec![RecordBatch::try_new(schema, vec![column]).unwrap()]
    }

    async fn run(ctx: &SessionContext, planned: &Planned, a: &[i64], b: &[i64]) -> Vec<i64> {
        let input = [("a".to_string(), rows(a)), ("b".to_string(), rows(b))];
        let out = planned.run(ctx, TaskRows(input.into())).await.unwrap();
        let mut keys: Vec<i64> = (out.iter())
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        keys.sort();
        keys
    }

    #[tokio::test]
    async fn one_plan_runs_each_tasks_rows_and_a_join_builds_afresh_each_time() {
        let ctx = SessionContext::new();
        table(&ctx, "a");
        table(&ctx, "b");
        let sql = "SELECT a.k FROM a JOIN b ON a.k = b.k";
        let plan = ctx.sql(sql).await.unwrap().into_unoptimized_plan();
        let planned = Planned::new(&ctx, plan).await.unwrap();
        assert_eq!(
            run(&ctx, &planned, &[1, 2, 3], &[2, 3, 4]).await,
            vec![2, 3]
        );
        // A hash join that kept its first build side would answer [] or [2, 3] again.
        assert_eq!(run(&ctx, &planned, &[7, 8], &[8, 9, 7]).await, vec![7, 8]);
        assert_eq!(run(&ctx, &planned, &[], &[1]).await, Vec::<i64>::new());
    }
}
