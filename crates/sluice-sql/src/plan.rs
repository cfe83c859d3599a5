//! Planning: DataFusion turns the SELECT into an optimized logical plan, which is cut into
//! stages at every operator that needs rows of one key together: an Aggregate (hash shuffle on
//! its group keys) and a Sort (range shuffle on its sort keys). Each stage is a [`Fragment`]: a
//! logical plan whose leaves are either source scans (several under a UNION ALL) or a scan of
//! the fetched shuffle rows.

use crate::SqlError;
use crate::parse::{JobFile, parse_job};
use crate::slots::{PlanCache, Planned, TaskRows};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef};
use datafusion::datasource::{empty::EmptyTable, provider_as_source};
use datafusion::logical_expr::{
    Aggregate, Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder, Sort, TableScan, cast, col,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement;
use sluice_connectors::{Sink, Source, TableSpec, source_schema, table_schema};
use sluice_core::watermark::EventTime;
use sluice_core::{BATCH_COLUMN, JobSettings, ShuffleKind, StageInput, StageOutput, StageSpec};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The scan that stands for a stage's shuffled input rows.
pub(crate) const SHUFFLE_TABLE: &str = "__shuffle";

pub enum FragmentOutput {
    Sink,
    Hash {
        keys: Vec<Arc<dyn PhysicalExpr>>,
        partitions: u32,
    },
    Range {
        keys: Vec<(Arc<dyn PhysicalExpr>, SortOptions)>,
        partitions: u32,
    },
}

/// One stage's operators.
pub struct Fragment {
    pub plan: LogicalPlan,
    /// Per exchange the stage reads (its `Shuffle` inputs, in order), the schema of its rows.
    pub shuffle_schemas: Vec<SchemaRef>,
    /// Its input edges: the source tables it scans, or the exchange it reads.
    pub inputs: Vec<StageInput>,
    pub output: FragmentOutput,
    /// The running aggregate that runs first in this stage, over the shuffled input.
    pub operator: Option<Arc<dyn crate::operator::StatefulOperator>>,
    pub describe: String,
}

/// A job file, checked and planned.
pub struct CompiledJob {
    pub job: JobFile,
    pub settings: JobSettings,
    /// The source tables the query reads, by name.
    pub sources: BTreeMap<String, Source>,
    /// The static tables it joins (`static = 'true'`), read whole by each batch.
    pub statics: BTreeMap<String, Source>,
    pub sink_table: String,
    pub sink: Sink,
    /// Per source table, where its undecodable records go (Kafka on_error = 'dead_letter').
    pub dead_letters: BTreeMap<String, Sink>,
    /// Where event-time windows' late rows go (`SET 'late_rows.table'`).
    pub late_rows: Option<Sink>,
    /// Per source table that declares a WATERMARK, its event-time column and delay.
    pub event_times: BTreeMap<String, EventTime>,
    pub fragments: Vec<Fragment>,
    pub(crate) ctx: SessionContext,
    /// Each stage's physical plan once a task has needed it, by stage.
    planned: Vec<PlanCache>,
}

impl CompiledJob {
    pub async fn compile(sql: &str, origin: &str) -> Result<CompiledJob, SqlError> {
        let job = parse_job(sql, origin)?;
        let settings = JobSettings::from_map(&job.settings)?;
        let insert = job.insert.clone().ok_or_else(|| SqlError::Parse {
            origin: origin.into(),
            message: "the job has no INSERT INTO <sink> SELECT ... statement".into(),
        })?;
        let plan_err = |message: String| SqlError::Plan {
            origin: origin.into(),
            line: insert.line,
            message,
        };
        let sink_decl = job
            .tables
            .iter()
            .find(|t| t.spec.name == insert.target)
            .ok_or_else(|| {
                plan_err(format!(
                    "INSERT INTO '{}': no such table; declared tables: {}",
                    insert.target,
                    table_names(&job)
                ))
            })?;
        let sink = Sink::from_spec(&sink_decl.spec)?;

        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_batch_size(8192)
            .with_information_schema(false);
        let ctx = SessionContext::new_with_state(streaming_state(config));
        // Every other table is a candidate source; the query decides which one it reads.
        let mut source_specs = Vec::new();
        for t in job.tables.iter().filter(|t| t.spec.name != insert.target) {
            // A static table's rows belong to no batch: no `_batch` column.
            let schema = match t.spec.is_static() {
                true => table_schema(&t.spec),
                false => source_schema(&table_schema(&t.spec)),
            };
            ctx.register_table(&t.spec.name, Arc::new(EmptyTable::new(schema)))?;
            source_specs.push(t.spec.clone());
        }
        let mut query = insert.query.clone();
        crate::window::rewrite_windows(&mut query, &plan_err)?;
        let statement = DFStatement::Statement(Box::new(Statement::Query(query)));
        let state = ctx.state();
        let query = state
            .statement_to_plan(statement)
            .await
            .map_err(|e| plan_err(e.to_string()))?;
        let query = conform_to_sink(query, &sink_decl.spec).map_err(plan_err)?;
        let optimized = state
            .optimize(&query)
            .map_err(|e| plan_err(e.to_string()))?;

        let mut sources = BTreeMap::new();
        let mut statics = BTreeMap::new();
        let mut dead_letters = BTreeMap::new();
        let mut event_times = BTreeMap::new();
        for name in &scanned_tables(&optimized) {
            let spec = source_specs
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| {
                    plan_err(format!("'{name}' is the sink table; it cannot be read"))
                })?;
            let source = Source::from_spec(spec)?;
            if source.is_static() {
                statics.insert(name.clone(), source);
                continue;
            }
            if let Some(dead) =
                dead_letter_sink(&job, spec, &source, &insert.target).map_err(&plan_err)?
            {
                dead_letters.insert(name.clone(), dead);
            }
            if let Some(et) = event_time(&job, spec, origin)? {
                event_times.insert(name.clone(), et);
            }
            sources.insert(name.clone(), source);
        }

        if sources.is_empty() {
            return Err(plan_err(match statics.is_empty() {
                true => "the SELECT reads no source table".into(),
                false => format!(
                    "the SELECT reads only static tables ({}); join them to a streaming source table",
                    statics.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            }));
        }
        let mut cutter = Cutter {
            ctx: &ctx,
            sources: sources.keys().cloned().collect(),
            statics: statics.keys().cloned().collect(),
            scanned: Vec::new(),
            joined: Vec::new(),
            reads: Vec::new(),
            event_times: &event_times,
            ttl_ms: settings.state_ttl.map(|d| d.as_millis() as i64),
            partitions: settings.partitions,
            output_mode: settings.output_mode,
            partial_aggregation: settings.partial_aggregation,
            fragments: Vec::new(),
            pending_state: None,
        };
        let last = cutter.cut(optimized).map_err(plan_err)?;
        cutter.push(last, None).map_err(plan_err)?;
        let fragments = cutter.fragments;
        let operators: Vec<_> = fragments
            .iter()
            .filter_map(|f| f.operator.as_deref())
            .collect();
        let append = settings.output_mode == Some(sluice_core::settings::OutputMode::Append);
        // The setting applies to aggregations; a join emits in append mode only.
        let aggregates = operators.iter().any(|op| op.follows_output_mode());
        let refusal = match settings.output_mode {
            Some(_) if !aggregates && operators.is_empty() => Some(
                "SET 'output_mode' applies to running aggregations (GROUP BY without _batch); this job has none, so every batch appends its rows",
            ),
            Some(_) if !aggregates && !append => Some(
                "a join of two streams emits each joined row once (append mode): SET 'output_mode' = 'append' or leave it out",
            ),
            _ => None,
        };
        if let Some(message) = refusal {
            return Err(plan_err(message.into()));
        }
        // Late rows kept for a table are a windowed aggregation's (a join counts its own).
        let windowed = operators
            .iter()
            .any(|op| op.windowed() && op.follows_output_mode());
        if append && event_times.is_empty() {
            return Err(plan_err(
                "SET 'output_mode' = 'append' closes windows as the watermark passes them, but no source table declares a WATERMARK: add WATERMARK FOR ts AS ts - INTERVAL '10' SECOND (with your column and delay) to the windowed table's CREATE TABLE".into(),
            ));
        }
        let planned = fragments.iter().map(|_| PlanCache::default()).collect();
        let late_rows = late_rows_sink(&job, &settings, &insert.target, &sources, windowed)
            .map_err(plan_err)?;
        Ok(CompiledJob {
            late_rows,
            sources,
            statics,
            sink_table: sink_decl.spec.name.clone(),
            sink,
            dead_letters,
            event_times,
            fragments,
            settings,
            job,
            ctx,
            planned,
        })
    }

    /// The outline the scheduler needs.
    pub fn stage_specs(&self) -> Vec<StageSpec> {
        self.fragments
            .iter()
            .enumerate()
            .map(|(i, f)| StageSpec {
                id: i as u32,
                inputs: f.inputs.clone(),
                output: match &f.output {
                    FragmentOutput::Sink => StageOutput::Sink,
                    FragmentOutput::Hash { partitions, .. } => StageOutput::Shuffle {
                        kind: ShuffleKind::Hash,
                        partitions: *partitions,
                    },
                    FragmentOutput::Range { partitions, .. } => StageOutput::Shuffle {
                        kind: ShuffleKind::Range,
                        partitions: *partitions,
                    },
                },
                stateful: f.operator.is_some(),
                describe: f.describe.clone(),
            })
            .collect()
    }

    /// The job's name: the `name` setting, else the file name without its extension.
    pub fn name(&self, origin: &str) -> String {
        self.settings.name.clone().unwrap_or_else(|| {
            std::path::Path::new(origin)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| origin.to_string())
        })
    }

    /// The table `input` fills in a task of `stage` and its rows: a split's rows are its
    /// table's; the stage's other source tables read nothing in this task (their splits are
    /// other tasks').
    pub(crate) fn input_rows(
        &self,
        stage: usize,
        input: TaskInput,
    ) -> Result<(String, Vec<RecordBatch>), SqlError> {
        match input {
            TaskInput::Shuffle(mut edges) if edges.len() == 1 => {
                Ok((SHUFFLE_TABLE.to_string(), edges.pop().unwrap_or_default()))
            }
            TaskInput::Shuffle(edges) => Err(SqlError::internal(format!(
                "stage {stage} has no operator to take {} exchanges",
                edges.len()
            ))),
            TaskInput::Split { table, rows } => {
                let sources = self.fragments[stage].inputs.iter();
                match sources.filter_map(StageInput::source).any(|t| *t == table) {
                    true => Ok((table, rows)),
                    false => Err(SqlError::internal(format!(
                        "stage {stage} does not read source table '{table}'"
                    ))),
                }
            }
        }
    }

    /// The rows of every static table `stage` joins, from `statics` (the version the batch
    /// logged).
    pub(crate) fn static_rows(
        &self,
        stage: usize,
        statics: &Statics,
    ) -> Result<TaskRows, SqlError> {
        let mut rows = std::collections::HashMap::new();
        for t in self.fragments[stage]
            .inputs
            .iter()
            .filter_map(StageInput::broadcast)
        {
            let static_rows = statics
                .get(t)
                .ok_or_else(|| SqlError::internal(format!("no rows for static table '{t}'")))?;
            rows.insert(t.to_string(), static_rows.to_vec());
        }
        Ok(TaskRows(rows))
    }

    /// `stage`'s physical plan, planned on first use.
    pub(crate) async fn planned(&self, stage: usize) -> Result<Arc<Planned>, SqlError> {
        let plan = || Ok(self.fragments[stage].plan.clone());
        self.planned[stage].get(&self.ctx, plan).await
    }

    /// Reads a static table's logged version: every file in `files`.
    pub async fn read_static(
        &self,
        table: &str,
        files: &[sluice_core::SourceSplit],
    ) -> Result<Vec<arrow::record_batch::RecordBatch>, SqlError> {
        let source = self
            .statics
            .get(table)
            .ok_or_else(|| SqlError::internal(format!("no static table '{table}'")))?;
        let mut rows = Vec::new();
        for f in files {
            rows.extend(source.read_static(f).await?);
        }
        Ok(rows)
    }

    /// Points every sink the job writes (its sink, dead-letter and late-row tables) at
    /// `<root>/<table>`, so that `sluice replay` reruns a batch without touching what the job
    /// committed: a files sink keeps its format there, any other (Kafka, console) becomes a
    /// jsonl files sink, since producing the rows again would duplicate them.
    pub fn redirect_sinks(&mut self, root: &str) -> Result<(), SqlError> {
        let redirect = |spec: &TableSpec| -> Result<Option<Sink>, SqlError> {
            let mut spec = spec.clone();
            let path = format!("{}/{}", root.trim_end_matches('/'), spec.name);
            if spec.connector()? != "files" {
                spec.options = [
                    ("connector".to_string(), "files".to_string()),
                    ("format".to_string(), "jsonl".to_string()),
                ]
                .into();
            }
            spec.options.insert("path".into(), path);
            Ok(Some(Sink::from_spec(&spec)?))
        };
        if let Some(sink) = redirect(self.spec(&self.sink_table)?)? {
            self.sink = sink;
        }
        let dead: Vec<(String, String)> = self
            .sources
            .iter()
            .filter_map(|(t, s)| Some((t.clone(), s.dead_letter_table()?.to_string())))
            .collect();
        for (source, table) in dead {
            if let Some(sink) = redirect(self.spec(&table)?)? {
                self.dead_letters.insert(source, sink);
            }
        }
        if let Some(table) = self.settings.late_rows_table.clone()
            && let Some(sink) = redirect(self.spec(&table)?)?
        {
            self.late_rows = Some(sink);
        }
        Ok(())
    }

    /// The declaration of `table`.
    pub(crate) fn spec(&self, table: &str) -> Result<&TableSpec, SqlError> {
        self.job
            .tables
            .iter()
            .find(|t| t.spec.name == table)
            .map(|t| &t.spec)
            .ok_or_else(|| SqlError::internal(format!("no table '{table}'")))
    }

    /// The rows of a source table in SQL: its declared columns and `_batch`.
    pub fn source_schema(&self, table: &str) -> Result<SchemaRef, SqlError> {
        Ok(source_schema(&table_schema(self.spec(table)?)))
    }

    /// The schema of the rows of exchange `edge` (counting the stage's `Shuffle` inputs).
    pub(crate) fn shuffle_schema(&self, stage: usize, edge: usize) -> Result<SchemaRef, SqlError> {
        self.fragments[stage]
            .shuffle_schemas
            .get(edge)
            .cloned()
            .ok_or_else(|| SqlError::internal(format!("stage {stage} reads no exchange {edge}")))
    }
}

/// Per static table a task joins, its rows.
pub type Statics = BTreeMap<String, Arc<Vec<arrow::record_batch::RecordBatch>>>;

/// One task's input rows.
pub enum TaskInput {
    /// The rows of one split of source table `table`.
    Split {
        table: String,
        rows: Vec<arrow::record_batch::RecordBatch>,
    },
    /// The rows fetched for this task's partition, per exchange the stage reads (in the order
    /// of its `Shuffle` inputs).
    Shuffle(Vec<Vec<arrow::record_batch::RecordBatch>>),
}

/// Replaces the scan of `table` in `plan` with a scan of `input` (all of it in memory).
pub(crate) fn bind_table(
    plan: LogicalPlan,
    table: &str,
    schema: SchemaRef,
    input: Vec<arrow::record_batch::RecordBatch>,
) -> Result<LogicalPlan, SqlError> {
    let provider = Arc::new(MemTable::try_new(schema, vec![input])?);
    let plan = plan
        .transform_up(|node| match &node {
            LogicalPlan::TableScan(scan) if scan.table_name.table() == table => {
                let bound = TableScan::try_new(
                    scan.table_name.clone(),
                    provider_as_source(provider.clone()),
                    scan.projection.clone(),
                    scan.filters.clone(),
                    scan.fetch,
                )?;
                Ok(datafusion::common::tree_node::Transformed::yes(
                    LogicalPlan::TableScan(bound),
                ))
            }
            _ => Ok(datafusion::common::tree_node::Transformed::no(node)),
        })?
        .data;
    Ok(plan)
}

/// DataFusion's session, but that `count(DISTINCT x)` stays one aggregate: a window's state
/// can hold its distinct values, where the rule would make two nested aggregations of it.
fn streaming_state(config: SessionConfig) -> datafusion::execution::SessionState {
    let rules = datafusion::optimizer::Optimizer::new()
        .rules
        .into_iter()
        .filter(|r| r.name() != "single_distinct_aggregation_to_group_by")
        .collect();
    datafusion::execution::SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_optimizer_rules(rules)
        .build()
}

/// The dead-letter sink of `source`, if it declares one: a declared table other than the
/// INSERT's sink and the source itself.
fn dead_letter_sink(
    job: &JobFile,
    spec: &TableSpec,
    source: &Source,
    target: &str,
) -> Result<Option<Sink>, String> {
    let Some(name) = source.dead_letter_table() else {
        return Ok(None);
    };
    let option = format!("table '{}': option 'dead_letter.table'", spec.name);
    side_sink(
        job,
        &option,
        name,
        target,
        &[spec.name.as_str()],
        "bad records",
    )
    .map(Some)
}

/// The sink of `SET 'late_rows.table'`, for a job with an event-time window.
fn late_rows_sink(
    job: &JobFile,
    settings: &JobSettings,
    target: &str,
    sources: &BTreeMap<String, Source>,
    windowed: bool,
) -> Result<Option<Sink>, String> {
    let Some(name) = &settings.late_rows_table else {
        return Ok(None);
    };
    if !windowed {
        return Err(format!(
            "SET 'late_rows.table' = '{name}': the job has no event-time window, so no row is ever late; group by a window (TUMBLE, HOP, SESSION or date_bin) or drop the setting"
        ));
    }
    let read: Vec<&str> = sources.keys().map(String::as_str).collect();
    side_sink(
        job,
        "SET 'late_rows.table'",
        name,
        target,
        &read,
        "late rows",
    )
    .map(Some)
}

/// A declared table that a setting (`what`) names as a side output: not the INSERT's sink and
/// not one of the tables the job reads (`own`).
fn side_sink(
    job: &JobFile,
    what: &str,
    name: &str,
    target: &str,
    own: &[&str],
    rows: &str,
) -> Result<Sink, String> {
    if name == target {
        return Err(format!(
            "{what} = '{name}' is the INSERT's sink; {rows} need a table of their own"
        ));
    }
    let t = job
        .tables
        .iter()
        .find(|t| t.spec.name == name && !own.contains(&name))
        .ok_or_else(|| {
            format!(
                "{what} = '{name}' is not a declared table the job does not read; declared tables: {}",
                table_names(job)
            )
        })?;
    Sink::from_spec(&t.spec).map_err(|e| e.to_string())
}

fn table_names(job: &JobFile) -> String {
    job.tables
        .iter()
        .map(|t| t.spec.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// INSERT INTO semantics: columns match the sink's by position and take its names and types.
/// The table's WATERMARK, checked against its columns as the source reads them (connector
/// columns such as Kafka's `_timestamp` included).
fn event_time(
    job: &JobFile,
    spec: &TableSpec,
    origin: &str,
) -> Result<Option<EventTime>, SqlError> {
    let decl = job.tables.iter().find(|t| t.spec.name == spec.name);
    let Some(w) = decl.and_then(|t| t.watermark.as_ref()) else {
        return Ok(None);
    };
    let schema = table_schema(spec);
    let error = |message: String| SqlError::Syntax {
        origin: origin.to_string(),
        line: w.line,
        column: w.column_no,
        message,
    };
    match schema.field_with_name(&w.column) {
        Ok(f) if matches!(f.data_type(), DataType::Timestamp(..)) => Ok(Some(EventTime {
            column: w.column.clone(),
            delay_ms: w.delay_ms,
        })),
        Ok(f) => Err(error(format!(
            "WATERMARK FOR {}: column '{}' of table '{}' is {}, not a TIMESTAMP",
            w.column,
            w.column,
            spec.name,
            f.data_type()
        ))),
        Err(_) => Err(error(format!(
            "WATERMARK FOR {}: table '{}' has no column '{}' (its columns: {})",
            w.column,
            spec.name,
            w.column,
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn conform_to_sink(query: LogicalPlan, sink: &TableSpec) -> Result<LogicalPlan, String> {
    if sink.schema.fields().is_empty() {
        return Ok(query);
    }
    let have = query.schema().fields().len();
    let want = sink.schema.fields().len();
    if have != want {
        return Err(format!(
            "INSERT INTO '{}' expects {want} columns ({}) but the SELECT produces {have}",
            sink.name,
            sink.schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let exprs: Vec<Expr> = sink
        .schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let c = Expr::Column(Column::from(query.schema().qualified_field(i)));
            let from = query.schema().field(i).data_type();
            let e = if from == f.data_type() {
                c
            } else {
                cast(c, f.data_type().clone())
            };
            e.alias(f.name())
        })
        .collect();
    LogicalPlanBuilder::from(query)
        .project(exprs)
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())
}

fn scanned_tables(plan: &LogicalPlan) -> Vec<String> {
    let mut names = Vec::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let name = scan.table_name.table().to_string();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    names
}

struct Cutter<'a> {
    ctx: &'a SessionContext,
    /// The tables the query reads as sources.
    sources: std::collections::BTreeSet<String>,
    /// The static tables the query joins.
    statics: std::collections::BTreeSet<String>,
    /// Source tables scanned by the stage being built, in order of appearance.
    scanned: Vec<String>,
    /// Static tables joined in the stage being built.
    joined: Vec<String>,
    /// The stages whose exchanges the stage being built reads.
    reads: Vec<u32>,
    /// Per source table with a WATERMARK, its event-time column (joins check their bounds).
    event_times: &'a BTreeMap<String, EventTime>,
    /// `SET 'state.ttl'` in ms, for joins of two streams without a time bound.
    ttl_ms: Option<i64>,
    partitions: u32,
    output_mode: Option<sluice_core::settings::OutputMode>,
    /// Split decomposable aggregates into map-side partials and a merge (`partial.rs`).
    partial_aggregation: bool,
    fragments: Vec<Fragment>,
    /// A running aggregate planned on the shuffle just cut, for the stage that reads it.
    pending_state: Option<Arc<dyn crate::operator::StatefulOperator>>,
}

enum Cut {
    Hash(Vec<Expr>),
    Range(Vec<datafusion::logical_expr::SortExpr>),
}

impl Cutter<'_> {
    /// The stateful operators planned so far (those feeding the one being planned).
    fn upstream_operators(&self) -> impl Iterator<Item = &dyn crate::operator::StatefulOperator> {
        self.pending_state
            .as_deref()
            .into_iter()
            .chain(self.fragments.iter().filter_map(|f| f.operator.as_deref()))
    }

    /// An aggregate over a running aggregate's changing output would count its updates; one
    /// over final rows (a join's, a window's in append mode) is fine.
    fn refuse_nested_state(&self) -> Result<(), String> {
        if self.upstream_operators().any(|op| !op.append_only()) {
            return Err("a running aggregation (GROUP BY without _batch) feeds another aggregation or a join here (nested GROUP BYs, or a DISTINCT aggregate, which is planned as one); only final rows can feed one: window the first aggregation and SET 'output_mode' = 'append'".into());
        }
        Ok(())
    }

    /// `agg` over `child` as map-side partials and a merge, when the job allows and the
    /// aggregate splits.
    fn two_phase(&self, agg: &Aggregate, child: &LogicalPlan) -> Option<crate::partial::TwoPhase> {
        self.partial_aggregation
            .then(|| crate::partial::TwoPhase::plan(agg, child))
            .flatten()
    }

    /// Rewrites `plan` into the current (topmost) stage, pushing finished lower stages.
    fn cut(&mut self, plan: LogicalPlan) -> Result<LogicalPlan, String> {
        match plan {
            LogicalPlan::Aggregate(agg) if !agg.group_expr.iter().any(is_batch_column) => {
                // A running aggregation: per-key state across batches.
                let child = self.cut(Arc::unwrap_or_clone(agg.input.clone()))?;
                self.refuse_nested_state()?;
                let downstream = self.upstream_operators().next().is_some();
                let two = self.two_phase(&agg, &child);
                let leaf = match &two {
                    Some(t) => self.push(t.map.clone(), Some(Cut::Hash(t.shuffle_keys.clone())))?,
                    None => {
                        let keys = crate::window::shuffle_keys(&agg.group_expr);
                        self.push(child, Some(Cut::Hash(keys)))?
                    }
                };
                let mode = self
                    .output_mode
                    .unwrap_or(sluice_core::settings::OutputMode::Update);
                let input_schema =
                    flat_schema(self.fragments.last().expect("just cut").plan.schema());
                let (mut state, upper) = crate::state::StatefulAgg::plan(
                    &agg,
                    leaf,
                    input_schema,
                    self.fragments.len(),
                    mode,
                    two.as_ref(),
                )?;
                state.downstream = downstream;
                self.pending_state = Some(Arc::new(state));
                Ok(upper)
            }
            LogicalPlan::Aggregate(agg) => {
                let child = self.cut(Arc::unwrap_or_clone(agg.input.clone()))?;
                self.refuse_nested_state()?;
                if let Some(two) = self.two_phase(&agg, &child) {
                    let leaf =
                        self.push(two.map.clone(), Some(Cut::Hash(two.shuffle_keys.clone())))?;
                    return two.finish(leaf, &agg.schema).map_err(|e| e.to_string());
                }
                let leaf = self.push(child, Some(Cut::Hash(agg.group_expr.clone())))?;
                Aggregate::try_new(Arc::new(leaf), agg.group_expr, agg.aggr_expr)
                    .map(LogicalPlan::Aggregate)
                    .map_err(|e| e.to_string())
            }
            LogicalPlan::Sort(sort) => {
                if sort.fetch.is_some() {
                    return Err("ORDER BY ... LIMIT is not supported in streaming jobs yet".into());
                }
                let child = self.cut(Arc::unwrap_or_clone(sort.input))?;
                let leaf = self.push(child, Some(Cut::Range(sort.expr.clone())))?;
                Ok(LogicalPlan::Sort(Sort {
                    expr: sort.expr,
                    input: Arc::new(leaf),
                    fetch: None,
                }))
            }
            LogicalPlan::Join(join) => self.cut_join(join),
            LogicalPlan::TableScan(ref scan) => {
                let table = scan.table_name.table().to_string();
                if self.statics.contains(&table) {
                    return Err(format!(
                        "static table '{table}' is read on its own here; a static table can only be joined to a stream (stream JOIN {table} ON ...)"
                    ));
                }
                if !self.sources.contains(&table) {
                    return Err(format!("unexpected scan of '{}'", scan.table_name));
                }
                if !self.scanned.contains(&table) {
                    self.scanned.push(table);
                }
                Ok(plan)
            }
            LogicalPlan::Union(_) => {
                // A UNION ALL stays inside one stage, whose tasks each read one split of one
                // of its tables; a branch cut by its own aggregation would need a stage graph
                // with several branches, which the planner does not build yet.
                let stages = self.fragments.len();
                let inputs = plan
                    .inputs()
                    .into_iter()
                    .map(|p| self.cut(p.clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                if self.fragments.len() != stages {
                    return Err("a UNION ALL whose branches aggregate or sort on their own is not supported yet; aggregate the union instead".into());
                }
                plan.with_new_exprs(plan.expressions(), inputs)
                    .map_err(|e| e.to_string())
            }
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Unnest(_) => {
                let inputs = plan
                    .inputs()
                    .into_iter()
                    .map(|p| self.cut(p.clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                plan.with_new_exprs(plan.expressions(), inputs)
                    .map_err(|e| e.to_string())
            }
            LogicalPlan::Limit(_) => Err("LIMIT is not supported in streaming jobs yet".into()),
            LogicalPlan::Window(_) => {
                Err("window functions are not supported in streaming jobs yet".into())
            }
            other => Err(format!(
                "{} is not supported in streaming jobs yet",
                other
                    .display()
                    .to_string()
                    .split(':')
                    .next()
                    .unwrap_or("this operator")
            )),
        }
    }

    /// A join of the stream with a static table stays in the stream's stage: only the stream
    /// side is cut; the static side runs whole in every task, over the version its batch
    /// logged (a broadcast edge of the stage). Only joins that keep to the stream's rows are
    /// per batch: a static row unmatched in one task may match in another.
    fn cut_join(&mut self, join: datafusion::logical_expr::Join) -> Result<LogicalPlan, String> {
        use datafusion::logical_expr::JoinType as J;
        let streams = |p: &LogicalPlan| {
            scanned_tables(p)
                .into_iter()
                .any(|t| self.sources.contains(&t))
        };
        let stream_left = match (streams(&join.left), streams(&join.right)) {
            (true, false) => true,
            (false, true) => false,
            (true, true) => return self.cut_stream_join(join),
            (false, false) => {
                return Err(
                    "a join of static tables is read on its own here; join it to a stream".into(),
                );
            }
        };
        let keeps_stream = match join.join_type {
            J::Inner => true,
            J::Left | J::LeftSemi | J::LeftAnti | J::LeftMark => stream_left,
            J::Right | J::RightSemi | J::RightAnti => !stream_left,
            _ => false,
        };
        if !keeps_stream {
            let (l, r) = if stream_left {
                ("stream", "static table")
            } else {
                ("static table", "stream")
            };
            return Err(format!(
                "a {} join of {l} and {r} is not supported: a stream joins a static table with an inner join, or a left outer join with the stream on the left (stream LEFT JOIN static)",
                join.join_type.to_string().to_lowercase()
            ));
        }
        let (stream, fixed) = match stream_left {
            true => (join.left.clone(), join.right.clone()),
            false => (join.right.clone(), join.left.clone()),
        };
        let stream = Arc::new(self.cut(Arc::unwrap_or_clone(stream))?);
        // After the stream side: a cut inside it ends a lower stage, which joins nothing.
        for t in scanned_tables(&fixed) {
            if !self.joined.contains(&t) {
                self.joined.push(t);
            }
        }
        let (left, right) = match stream_left {
            true => (stream, fixed),
            false => (fixed, stream),
        };
        Ok(LogicalPlan::Join(datafusion::logical_expr::Join {
            left,
            right,
            ..join
        }))
    }

    /// A join of two streams gets a stage of its own: each side is cut into a stage that
    /// hash-shuffles it on its join keys, and the join stage reads both exchanges.
    fn cut_stream_join(
        &mut self,
        join: datafusion::logical_expr::Join,
    ) -> Result<LogicalPlan, String> {
        if !self.scanned.is_empty() || !self.reads.is_empty() {
            return Err("a join of two streams next to another input of the same operator is not supported yet".into());
        }
        let (left_keys, right_keys) = join_keys(&join)?;
        let left = self.cut(Arc::unwrap_or_clone(join.left.clone()))?;
        self.push(left, Some(Cut::Hash(left_keys)))?;
        let left_stage = std::mem::take(&mut self.reads);
        let right = self.cut(Arc::unwrap_or_clone(join.right.clone()))?;
        self.push(right, Some(Cut::Hash(right_keys)))?;
        self.reads = [left_stage, std::mem::take(&mut self.reads)].concat();
        self.refuse_nested_state()?;
        let how = crate::join::JoinPlanning {
            stage: self.fragments.len(),
            event_times: self.event_times,
            ttl_ms: self.ttl_ms,
            downstream: self.upstream_operators().next().is_some(),
        };
        let (op, upper) = crate::join::StreamJoin::plan(&join, &how)?;
        self.pending_state = Some(Arc::new(op));
        Ok(upper)
    }

    /// Ends the current stage with `plan`, writing a shuffle (`cut`) or the sink (`None`).
    /// Returns the leaf that reads this stage's output in the next stage.
    fn push(&mut self, plan: LogicalPlan, cut: Option<Cut>) -> Result<LogicalPlan, String> {
        let scanned = std::mem::take(&mut self.scanned);
        let joined = std::mem::take(&mut self.joined);
        let reads = std::mem::take(&mut self.reads);
        if !scanned.is_empty() && !reads.is_empty() {
            return Err(format!(
                "the source tables {} are read after an aggregation or sort of another; this is not supported yet",
                scanned.join(", ")
            ));
        }
        let mut inputs: Vec<StageInput> = scanned
            .into_iter()
            .map(|table| StageInput::Source { table })
            .collect();
        let mut shuffle_schemas = Vec::new();
        for from in reads {
            let prev = &self.fragments[from as usize];
            let kind = match prev.output {
                FragmentOutput::Range { .. } => ShuffleKind::Range,
                _ => ShuffleKind::Hash,
            };
            inputs.push(StageInput::Shuffle { from, kind });
            shuffle_schemas.push(flat_schema(prev.plan.schema()));
        }
        inputs.extend(
            joined
                .into_iter()
                .map(|table| StageInput::Broadcast { table }),
        );
        let schema = plan.schema().clone();
        let physical = |e: &Expr| {
            self.ctx
                .create_physical_expr(e.clone(), &schema)
                .map_err(|e| e.to_string())
        };
        let (output, suffix) = match cut {
            None => (FragmentOutput::Sink, "sink".to_string()),
            Some(Cut::Hash(keys)) => (
                FragmentOutput::Hash {
                    keys: keys.iter().map(physical).collect::<Result<_, _>>()?,
                    partitions: self.partitions,
                },
                "hash shuffle".to_string(),
            ),
            Some(Cut::Range(sort)) => (
                FragmentOutput::Range {
                    keys: sort
                        .iter()
                        .map(|s| {
                            Ok((
                                physical(&s.expr)?,
                                SortOptions {
                                    descending: !s.asc,
                                    nulls_first: s.nulls_first,
                                },
                            ))
                        })
                        .collect::<Result<_, String>>()?,
                    partitions: self.partitions,
                },
                "range shuffle".to_string(),
            ),
        };
        let state = self.pending_state.take();
        let mut steps = Vec::new();
        let _ = plan.apply(|n| {
            steps.push(n.display().to_string());
            Ok(TreeNodeRecursion::Continue)
        });
        steps.reverse();
        if let Some(op) = &state {
            let (table, _) = op.output();
            let at = steps.iter().position(|s| s.contains(table)).unwrap_or(0);
            steps.insert(at, op.describe());
        }
        steps.push(suffix);
        // The next stage reads this one, unless it starts a branch of its own (a join's side).
        self.reads = vec![self.fragments.len() as u32];
        self.fragments.push(Fragment {
            shuffle_schemas,
            inputs,
            output,
            operator: state,
            describe: steps.join(" -> "),
            plan,
        });
        flat_leaf(SHUFFLE_TABLE, &schema).map_err(|e| e.to_string())
    }
}

/// Both sides' join keys, of one type each so that equal keys hash alike.
fn join_keys(join: &datafusion::logical_expr::Join) -> Result<(Vec<Expr>, Vec<Expr>), String> {
    let mut left = Vec::new();
    let mut right = Vec::new();
    for (l, r) in &join.on {
        let lt = l.get_type(join.left.schema()).map_err(|e| e.to_string())?;
        let rt = r.get_type(join.right.schema()).map_err(|e| e.to_string())?;
        left.push(l.clone());
        right.push(match lt == rt {
            true => r.clone(),
            false => cast(r.clone(), lt),
        });
    }
    Ok((left, right))
}

fn is_batch_column(e: &Expr) -> bool {
    match e {
        Expr::Column(c) => c.name == BATCH_COLUMN,
        Expr::Alias(a) => is_batch_column(&a.expr),
        _ => false,
    }
}

/// A stage's output schema with plain positional names, for the shuffle scan's table.
pub(crate) fn flat_schema(schema: &DFSchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), f.is_nullable()))
            .collect::<Vec<_>>(),
    ))
}

/// A scan of `table` with flat columns c0.., renamed back to exactly `schema` (qualifiers
/// included), so the operators above it plan as if nothing had been cut.
pub(crate) fn flat_leaf(
    table: &str,
    schema: &DFSchemaRef,
) -> datafusion::error::Result<LogicalPlan> {
    let flat = flat_schema(schema);
    let scan = LogicalPlanBuilder::scan(
        table,
        provider_as_source(Arc::new(EmptyTable::new(flat))),
        None,
    )?;
    let exprs: Vec<Expr> = schema
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            col(Column::new(Some(table), format!("c{i}"))).alias_qualified(q.cloned(), f.name())
        })
        .collect();
    scan.project(exprs)?.build()
}
