//! A job's inside, a page each: its plan (the stage graph with its exchanges, rows and time
//! per stage, each stateful operator's eviction rule), its checkpoint (the logs, the state
//! files, how the job ended) and its windows (open windows against the watermark, and the
//! input holding the watermark back).

use crate::charts::stage_span;
use crate::pages::{Page, UiState, api_not_found, at, event_time, not_found};
use crate::{ClusterView, JobPlan};
use askama::Template;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sluice_core::progress::{
    NEXT_WINDOW_END_MS, OPEN_WINDOWS, ROWS_IN, ROWS_OUT, STATE_BYTES, STATE_ROWS,
};
use sluice_core::{ShuffleKind, StageInput, StageOutput};
use sluice_proto::{AttemptOutcome, BatchDetail, BatchOutcome, BatchStatus, JobStatus};
use std::collections::BTreeMap;

// ---- plan ----

/// One stage's figures over the committed batches the driver keeps.
#[derive(Debug, Default, Serialize)]
pub struct StageFigures {
    pub batches: u64,
    /// Tasks that succeeded (one per partition or split and batch).
    pub tasks: u64,
    pub rows_in: i64,
    pub rows_out: i64,
    /// The stage's wall time, summed over the batches.
    pub ms: u64,
}

impl StageFigures {
    pub fn ms_per_batch(&self) -> u64 {
        self.ms.checked_div(self.batches).unwrap_or(0)
    }
}

/// Per stage, what its succeeded attempts read and wrote and how long it ran.
pub fn stage_figures(details: &[BatchDetail]) -> BTreeMap<u32, StageFigures> {
    let mut out: BTreeMap<u32, StageFigures> = BTreeMap::new();
    for b in details
        .iter()
        .filter(|b| b.outcome() == BatchOutcome::Committed)
    {
        for s in &b.stages {
            let f = out.entry(s.stage_id).or_default();
            f.batches += 1;
            f.ms += stage_span(s).unwrap_or(0);
            let done = s.tasks.iter().flat_map(|t| {
                t.attempts
                    .iter()
                    .filter(|a| a.outcome() == AttemptOutcome::Succeeded)
            });
            for a in done {
                f.tasks += 1;
                f.rows_in += a.metrics.get(ROWS_IN).copied().unwrap_or(0);
                f.rows_out += a.metrics.get(ROWS_OUT).copied().unwrap_or(0);
            }
        }
    }
    out
}

/// A box of the stage graph.
pub struct Node {
    pub x: u32,
    pub y: u32,
    pub class: &'static str,
    pub label: String,
    pub detail: String,
    pub title: String,
}

/// An arrow between two boxes, with the exchange it stands for.
pub struct Edge {
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
    pub class: &'static str,
    pub label: String,
}

pub struct Graph {
    pub width: u32,
    pub height: u32,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

pub const NODE_W: u32 = 200;
pub const NODE_H: u32 = 56;
const COLUMN: u32 = 250;
const ROW: u32 = 80;
const MARGIN: u32 = 10;

/// What a box stands for.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Vertex {
    Source(String),
    Stage(u32),
    Sink,
}

/// The stages laid out left to right by depth: sources first, then each stage one column
/// right of the deepest stage it reads, the sink last.
pub fn graph(plan: &JobPlan) -> Graph {
    let mut depth: BTreeMap<Vertex, u32> = BTreeMap::new();
    let mut edges: Vec<(Vertex, Vertex, &'static str, String)> = Vec::new();
    for s in &plan.stages {
        let mut d = 1;
        for input in &s.inputs {
            let (from, class, label) =
                match input {
                    StageInput::Source { table } => (
                        Vertex::Source(table.clone()),
                        "edge-source",
                        "splits".to_string(),
                    ),
                    StageInput::Broadcast { table } => (
                        Vertex::Source(table.clone()),
                        "edge-broadcast",
                        "broadcast".to_string(),
                    ),
                    StageInput::Shuffle { from, kind } => {
                        let partitions = plan.stages.iter().find(|u| u.id == *from).and_then(|u| {
                            match u.output {
                                StageOutput::Shuffle { partitions, .. } => Some(partitions),
                                StageOutput::Sink => None,
                            }
                        });
                        let kind = match kind {
                            ShuffleKind::Hash => "hash",
                            ShuffleKind::Range => "range",
                        };
                        let label = format!("{kind} exchange × {}", partitions.unwrap_or(0));
                        (Vertex::Stage(*from), "edge-shuffle", label)
                    }
                };
            depth.entry(from.clone()).or_insert(0);
            d = d.max(depth[&from] + 1);
            edges.push((from, Vertex::Stage(s.id), class, label));
        }
        depth.insert(Vertex::Stage(s.id), d);
        if s.output == StageOutput::Sink {
            edges.push((
                Vertex::Stage(s.id),
                Vertex::Sink,
                "edge-sink",
                "commit".into(),
            ));
        }
    }
    let last = depth.values().copied().max().unwrap_or(0);
    depth.insert(Vertex::Sink, last + 1);
    let mut rows_in_column: BTreeMap<u32, u32> = BTreeMap::new();
    let mut at: BTreeMap<Vertex, (u32, u32)> = BTreeMap::new();
    let mut nodes = Vec::new();
    for (v, d) in &depth {
        let row = rows_in_column.entry(*d).or_insert(0);
        let (x, y) = (MARGIN + d * COLUMN, MARGIN + *row * ROW);
        *row += 1;
        at.insert(v.clone(), (x, y));
        nodes.push(node(plan, v, x, y));
    }
    let edges = edges
        .into_iter()
        .map(|(from, to, class, label)| {
            let (a, b) = (at[&from], at[&to]);
            Edge {
                x1: a.0 + NODE_W,
                y1: a.1 + NODE_H / 2,
                x2: b.0,
                y2: b.1 + NODE_H / 2,
                class,
                label,
            }
        })
        .collect();
    let rows = rows_in_column.values().copied().max().unwrap_or(1);
    Graph {
        width: 2 * MARGIN + (last + 1) * COLUMN + NODE_W,
        height: 2 * MARGIN + rows * ROW,
        nodes,
        edges,
    }
}

fn node(plan: &JobPlan, v: &Vertex, x: u32, y: u32) -> Node {
    let (class, label, detail, title) = match v {
        Vertex::Source(table) => {
            let stat = plan
                .stages
                .iter()
                .any(|s| s.broadcasts().any(|t| t == table));
            let detail = match plan.event_times.get(table) {
                Some(e) => format!("watermark {} - {} ms", e.column, e.delay_ms),
                None if stat => "static table".into(),
                None => "source".into(),
            };
            ("node-source", table.clone(), detail.clone(), detail)
        }
        Vertex::Stage(id) => {
            let stage = plan.stages.iter().find(|s| s.id == *id);
            let describe = stage.map_or_else(String::new, |s| s.describe.clone());
            let op = plan.operators.get(id);
            let class = if op.is_some() {
                "node-stateful"
            } else {
                "node-stage"
            };
            let detail = op.map_or_else(|| short(&describe), |o| short(&o.describe));
            (class, format!("stage {id}"), detail, describe)
        }
        Vertex::Sink => (
            "node-sink",
            plan.sink.clone(),
            "sink".into(),
            "the job's sink".into(),
        ),
    };
    Node {
        x,
        y,
        class,
        label,
        detail,
        title,
    }
}

/// At most 32 characters of a description, for a box.
fn short(s: &str) -> String {
    match s.char_indices().nth(31) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

struct StageRow {
    id: u32,
    reads: String,
    output: String,
    operators: String,
    batches: u64,
    tasks: u64,
    rows_in: i64,
    rows_out: i64,
    ms_per_batch: u64,
}

struct OperatorRow {
    stage: u32,
    name: String,
    describe: String,
    eviction: String,
}

#[derive(Template)]
#[template(path = "plan.html")]
struct PlanPage {
    id: String,
    name: String,
    graph: Graph,
    stages: Vec<StageRow>,
    operators: Vec<OperatorRow>,
    event_times: Vec<(String, String)>,
    policy: &'static str,
}

fn reads(input: &StageInput) -> String {
    match input {
        StageInput::Source { table } => format!("splits of {table}"),
        StageInput::Broadcast { table } => format!("all of static {table}"),
        StageInput::Shuffle { from, kind } => {
            format!("{kind:?} exchange of stage {from}").to_lowercase()
        }
    }
}

fn plan_page(s: &JobStatus, plan: &JobPlan, details: &[BatchDetail]) -> PlanPage {
    let figures = stage_figures(details);
    let none = StageFigures::default();
    PlanPage {
        id: s.job_id.clone(),
        name: s.name.clone(),
        graph: graph(plan),
        stages: plan
            .stages
            .iter()
            .map(|st| {
                let f = figures.get(&st.id).unwrap_or(&none);
                StageRow {
                    id: st.id,
                    reads: st.inputs.iter().map(reads).collect::<Vec<_>>().join(" + "),
                    output: match st.output {
                        StageOutput::Sink => format!("sink {}", plan.sink),
                        StageOutput::Shuffle { kind, partitions } => {
                            format!("{kind:?} exchange × {partitions}").to_lowercase()
                        }
                    },
                    operators: st.describe.clone(),
                    batches: f.batches,
                    tasks: f.tasks,
                    rows_in: f.rows_in,
                    rows_out: f.rows_out,
                    ms_per_batch: f.ms_per_batch(),
                }
            })
            .collect(),
        operators: plan
            .operators
            .iter()
            .map(|(stage, o)| OperatorRow {
                stage: *stage,
                name: o.name.clone(),
                describe: o.describe.clone(),
                eviction: o.eviction.clone(),
            })
            .collect(),
        event_times: plan
            .event_times
            .iter()
            .map(|(t, e)| (t.clone(), format!("{} - {} ms", e.column, e.delay_ms)))
            .collect(),
        policy: plan.watermark_policy.name(),
    }
}

fn no_plan(id: &str) -> String {
    format!("this driver has no plan for job '{id}': it ended before the driver started")
}

pub async fn plan<V: ClusterView>(State(ui): UiState<V>, Path(id): Path<String>) -> Response {
    let Some(s) = ui.view.job(&id) else {
        return not_found(format!("no job '{id}'"));
    };
    let Some(plan) = ui.view.plan(&id) else {
        return not_found(no_plan(&id));
    };
    Page(plan_page(&s, &plan, &ui.view.batches(&id))).into_response()
}

pub async fn api_plan<V: ClusterView>(State(ui): UiState<V>, Path(id): Path<String>) -> Response {
    let Some(plan) = ui.view.plan(&id) else {
        return api_not_found(format!("no job '{id}' with a plan here"));
    };
    let figures = stage_figures(&ui.view.batches(&id));
    Json(serde_json::json!({ "plan": plan, "stage_figures": figures })).into_response()
}

// ---- checkpoint ----

/// The parts of `sluice checkpoint inspect --json`'s document the page shows.
#[derive(Deserialize)]
struct Described {
    checkpoint: String,
    format_version: u64,
    plan_fingerprint: String,
    revision: u64,
    submitted_at_ms: u64,
    ended: Option<Ended>,
    batches: Vec<LoggedBatch>,
    state: Vec<StatePart>,
}

#[derive(Deserialize)]
struct Ended {
    state: String,
    error: String,
    at_ms: u64,
}

#[derive(Deserialize)]
struct LoggedBatch {
    batch: u64,
    planned_at_ms: Option<u64>,
    input: Vec<LoggedInput>,
    committed: bool,
    committed_at_ms: Option<u64>,
    rows_in: Option<u64>,
    rows_out: Option<u64>,
    watermark_ms: Option<i64>,
}

#[derive(Deserialize)]
struct LoggedInput {
    table: String,
    summary: String,
}

#[derive(Deserialize)]
struct StatePart {
    operator: String,
    partition: u32,
    latest_version: Option<u64>,
    bytes: u64,
    files: Vec<StateFileDoc>,
}

#[derive(Deserialize)]
struct StateFileDoc {
    version: u64,
    kind: String,
}

struct LogRow {
    batch: u64,
    planned: String,
    input: String,
    committed: String,
    rows_in: String,
    rows_out: String,
    watermark: String,
}

struct StateRow {
    operator: String,
    partition: u32,
    version: String,
    bytes: u64,
    deltas: String,
    snapshots: String,
}

#[derive(Template)]
#[template(path = "checkpoint.html")]
struct CheckpointPage {
    id: String,
    name: String,
    uri: String,
    revision: u64,
    format: u64,
    fingerprint: String,
    submitted: String,
    ended: String,
    error: String,
    log: Vec<LogRow>,
    state: Vec<StateRow>,
}

fn or_dash(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |n| n.to_string())
}

fn checkpoint_page(s: &JobStatus, doc: Described) -> CheckpointPage {
    let (ended, error) = match &doc.ended {
        Some(e) => (format!("{} at {}", e.state, at(e.at_ms)), e.error.clone()),
        None => (
            "not ended: a restarted driver resumes it".into(),
            String::new(),
        ),
    };
    CheckpointPage {
        id: s.job_id.clone(),
        name: s.name.clone(),
        uri: doc.checkpoint,
        revision: doc.revision,
        format: doc.format_version,
        fingerprint: doc.plan_fingerprint,
        submitted: at(doc.submitted_at_ms),
        ended,
        error,
        log: doc
            .batches
            .iter()
            .rev()
            .map(|b| LogRow {
                batch: b.batch,
                planned: at(b.planned_at_ms.unwrap_or(0)),
                input: b
                    .input
                    .iter()
                    .map(|i| format!("{}: {}", i.table, i.summary))
                    .collect::<Vec<_>>()
                    .join("; "),
                committed: match b.committed {
                    true => at(b.committed_at_ms.unwrap_or(0)),
                    false => "no".into(),
                },
                rows_in: or_dash(b.rows_in),
                rows_out: or_dash(b.rows_out),
                watermark: event_time(b.watermark_ms),
            })
            .collect(),
        state: doc
            .state
            .iter()
            .map(|p| {
                let versions = |kind: &str| -> Vec<u64> {
                    let mut v: Vec<u64> = p
                        .files
                        .iter()
                        .filter(|f| f.kind == kind)
                        .map(|f| f.version)
                        .collect();
                    v.sort_unstable();
                    v
                };
                let deltas = versions("delta");
                StateRow {
                    operator: p.operator.clone(),
                    partition: p.partition,
                    version: or_dash(p.latest_version),
                    bytes: p.bytes,
                    deltas: match (deltas.first(), deltas.last()) {
                        (Some(a), Some(b)) if a == b => a.to_string(),
                        (Some(a), Some(b)) => format!("{a}..{b} ({})", deltas.len()),
                        _ => "none".into(),
                    },
                    snapshots: versions("snapshot")
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            })
            .collect(),
    }
}

pub async fn checkpoint<V: ClusterView>(State(ui): UiState<V>, Path(id): Path<String>) -> Response {
    let Some(s) = ui.view.job(&id) else {
        return not_found(format!("no job '{id}'"));
    };
    let doc = match ui.view.checkpoint(&id).await {
        Ok(doc) => doc,
        Err(e) => return not_found(e.0),
    };
    match serde_json::from_value::<Described>(doc) {
        Ok(doc) => Page(checkpoint_page(&s, doc)).into_response(),
        Err(e) => not_found(format!("the checkpoint's description does not read: {e}")),
    }
}

pub async fn api_checkpoint<V: ClusterView>(
    State(ui): UiState<V>,
    Path(id): Path<String>,
) -> Response {
    match ui.view.checkpoint(&id).await {
        Ok(doc) => Json(doc).into_response(),
        Err(e) => api_not_found(e.0),
    }
}

// ---- windows ----

/// One source's part in the watermark.
#[derive(Debug, Serialize)]
pub struct SourceMark {
    pub table: String,
    pub column: String,
    pub delay_ms: u64,
    /// The largest event time its committed batches read; none before its first row.
    pub read_up_to_ms: Option<i64>,
    /// What it lets the watermark be: `read_up_to - delay`.
    pub allows_ms: Option<i64>,
    /// Whether it is the one setting the watermark now (the slowest under `min`).
    pub holds: bool,
}

/// One stateful operator's windows (or a join's held rows), against the watermark.
#[derive(Debug, Serialize)]
pub struct OperatorWindows {
    pub operator: String,
    pub stage: u32,
    pub eviction: String,
    pub open_windows: Option<i64>,
    pub state_rows: i64,
    /// The earliest end among its open windows: the next one the watermark closes.
    pub next_window_end_ms: Option<i64>,
    /// How far the watermark still has to move for it.
    pub watermark_short_ms: Option<i64>,
    /// Why the next window has not been emitted, in words.
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct Windows {
    pub watermark_ms: Option<i64>,
    pub policy: &'static str,
    pub sources: Vec<SourceMark>,
    pub operators: Vec<OperatorWindows>,
    pub partitions: Vec<PartitionState>,
}

/// One state partition after the last committed batch, as its task reported it.
#[derive(Debug, Serialize)]
pub struct PartitionState {
    pub stage: u32,
    pub partition: u32,
    pub executor: String,
    pub state_rows: i64,
    pub state_bytes: i64,
    pub open_windows: Option<i64>,
    pub next_window_end_ms: Option<i64>,
}

/// The state partitions of the last committed batch's stateful stages.
pub fn partition_state(details: &[BatchDetail], plan: Option<&JobPlan>) -> Vec<PartitionState> {
    let Some(b) = details
        .iter()
        .rev()
        .find(|b| b.outcome() == BatchOutcome::Committed)
    else {
        return Vec::new();
    };
    let op_metric = |stage: u32, what: &str| {
        let op = plan.and_then(|p| p.operators.get(&stage))?;
        Some(format!("{}.{what}", op.name))
    };
    let mut out = Vec::new();
    for s in b.stages.iter().filter(|s| s.stateful) {
        for t in &s.tasks {
            let Some(a) = t
                .attempts
                .iter()
                .rev()
                .find(|a| a.outcome() == AttemptOutcome::Succeeded)
            else {
                continue;
            };
            let get = |name: Option<String>| name.and_then(|n| a.metrics.get(&n).copied());
            out.push(PartitionState {
                stage: s.stage_id,
                partition: t.partition,
                executor: a.executor_id.clone(),
                state_rows: a.metrics.get(STATE_ROWS).copied().unwrap_or(0),
                state_bytes: a.metrics.get(STATE_BYTES).copied().unwrap_or(0),
                open_windows: get(op_metric(s.stage_id, OPEN_WINDOWS)),
                next_window_end_ms: get(op_metric(s.stage_id, NEXT_WINDOW_END_MS)),
            });
        }
    }
    out
}

/// The watermark, each source's part in it, and each operator's next window against it.
/// `read` is each source's largest event time read so far (`JobStatus.max_event_ms`).
pub fn windows_of(
    plan: &JobPlan,
    last: Option<&BatchStatus>,
    read: &std::collections::HashMap<String, i64>,
    details: &[BatchDetail],
) -> Windows {
    let watermark = last.and_then(|b| b.watermark_ms);
    let mut sources: Vec<SourceMark> = plan
        .event_times
        .iter()
        .map(|(table, e)| {
            let read = read.get(table).copied();
            SourceMark {
                table: table.clone(),
                column: e.column.clone(),
                delay_ms: e.delay_ms,
                read_up_to_ms: read,
                allows_ms: read.map(|r| r.saturating_sub(e.delay_ms as i64)),
                holds: false,
            }
        })
        .collect();
    let holder = match plan.watermark_policy {
        sluice_core::watermark::WatermarkPolicy::Min => sources
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.allows_ms.unwrap_or(i64::MIN)),
        sluice_core::watermark::WatermarkPolicy::Max => sources
            .iter()
            .enumerate()
            .filter(|(_, s)| s.allows_ms.is_some())
            .max_by_key(|(_, s)| s.allows_ms),
    }
    .map(|(i, _)| i);
    if let Some(i) = holder {
        sources[i].holds = true;
    }
    let metric = |name: &str| last.and_then(|b| b.metrics.get(name).copied());
    let operators = plan
        .operators
        .iter()
        .filter(|(_, o)| o.windowed)
        .map(|(stage, o)| {
            let next = metric(&format!("{}.{NEXT_WINDOW_END_MS}", o.name));
            let open = metric(&format!("{}.{OPEN_WINDOWS}", o.name));
            let short = next.zip(watermark).map(|(n, w)| n.saturating_sub(w).max(0));
            OperatorWindows {
                operator: o.name.clone(),
                stage: *stage,
                eviction: o.eviction.clone(),
                open_windows: open,
                state_rows: metric(&format!("{}.{STATE_ROWS}", o.name)).unwrap_or(0),
                next_window_end_ms: next,
                watermark_short_ms: short,
                why: why_open(next, watermark, holder.map(|i| &sources[i])),
            }
        })
        .collect();
    Windows {
        watermark_ms: watermark,
        policy: plan.watermark_policy.name(),
        sources,
        operators,
        partitions: partition_state(details, Some(plan)),
    }
}

/// Why the next window is still open, naming the input that would close it.
fn why_open(next: Option<i64>, watermark: Option<i64>, holder: Option<&SourceMark>) -> String {
    let Some(end) = next else {
        return "no window is open".into();
    };
    let Some(source) = holder else {
        return "no source declares a watermark".into();
    };
    let Some(w) = watermark else {
        return format!(
            "the job has no watermark yet: source {} has had no row since the job started",
            source.table
        );
    };
    if w >= end {
        return format!(
            "the watermark ({}) has passed its end: the next batch emits it",
            event_time(Some(w))
        );
    }
    let needed = end.saturating_add(source.delay_ms as i64);
    format!(
        "it ends at {}, {} ms past the watermark; source {} holds the watermark (read up to {} in {}, delay {} ms): the window closes after a batch reads a row of {} with {} at or after {}",
        event_time(Some(end)),
        end - w,
        source.table,
        event_time(source.read_up_to_ms),
        source.column,
        source.delay_ms,
        source.table,
        source.column,
        event_time(Some(needed)),
    )
}

struct SourceRow {
    table: String,
    column: String,
    delay_ms: u64,
    read_up_to: String,
    allows: String,
    holds: bool,
}

struct WindowRow {
    operator: String,
    stage: u32,
    open_windows: String,
    state_rows: i64,
    next_end: String,
    short: String,
    why: String,
    eviction: String,
}

pub(crate) struct PartitionRow {
    pub(crate) stage: u32,
    pub(crate) partition: u32,
    pub(crate) executor: String,
    pub(crate) state_rows: i64,
    pub(crate) state_bytes: i64,
    pub(crate) open_windows: String,
    pub(crate) next_end: String,
}

#[derive(Template)]
#[template(path = "windows.html")]
struct WindowsPage {
    id: String,
    name: String,
    watermark: String,
    policy: &'static str,
    sources: Vec<SourceRow>,
    operators: Vec<WindowRow>,
    partitions: Vec<PartitionRow>,
}

fn dash(v: Option<i64>) -> String {
    v.map_or_else(|| "-".into(), |n| n.to_string())
}

pub(crate) fn partition_rows(parts: &[PartitionState]) -> Vec<PartitionRow> {
    parts
        .iter()
        .map(|p| PartitionRow {
            stage: p.stage,
            partition: p.partition,
            executor: p.executor.clone(),
            state_rows: p.state_rows,
            state_bytes: p.state_bytes,
            open_windows: dash(p.open_windows),
            next_end: event_time(p.next_window_end_ms),
        })
        .collect()
}

fn windows_page(s: &JobStatus, w: &Windows) -> WindowsPage {
    WindowsPage {
        id: s.job_id.clone(),
        name: s.name.clone(),
        watermark: event_time(w.watermark_ms),
        policy: w.policy,
        sources: w
            .sources
            .iter()
            .map(|m| SourceRow {
                table: m.table.clone(),
                column: m.column.clone(),
                delay_ms: m.delay_ms,
                read_up_to: event_time(m.read_up_to_ms),
                allows: event_time(m.allows_ms),
                holds: m.holds,
            })
            .collect(),
        operators: w
            .operators
            .iter()
            .map(|o| WindowRow {
                operator: o.operator.clone(),
                stage: o.stage,
                open_windows: dash(o.open_windows),
                state_rows: o.state_rows,
                next_end: event_time(o.next_window_end_ms),
                short: o
                    .watermark_short_ms
                    .map_or_else(|| "-".into(), |ms| format!("{ms} ms")),
                why: o.why.clone(),
                eviction: o.eviction.clone(),
            })
            .collect(),
        partitions: partition_rows(&w.partitions),
    }
}

fn windows_view<V: ClusterView>(
    ui: &crate::Ui<V>,
    id: &str,
) -> Result<(JobStatus, Windows), String> {
    let s = ui.view.job(id).ok_or_else(|| format!("no job '{id}'"))?;
    let plan = ui.view.plan(id).ok_or_else(|| no_plan(id))?;
    let w = windows_of(
        &plan,
        s.recent_batches.last(),
        &s.max_event_ms,
        &ui.view.batches(id),
    );
    Ok((s, w))
}

pub async fn windows<V: ClusterView>(State(ui): UiState<V>, Path(id): Path<String>) -> Response {
    match windows_view(&ui, &id) {
        Ok((s, w)) => Page(windows_page(&s, &w)).into_response(),
        Err(e) => not_found(e),
    }
}

pub async fn api_windows<V: ClusterView>(
    State(ui): UiState<V>,
    Path(id): Path<String>,
) -> Response {
    match windows_view(&ui, &id) {
        Ok((_, w)) => Json(w).into_response(),
        Err(e) => api_not_found(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OperatorPlan;
    use sluice_core::StageSpec;
    use sluice_core::watermark::{EventTime, WatermarkPolicy};

    fn two_stages() -> JobPlan {
        JobPlan {
            stages: vec![
                StageSpec {
                    id: 0,
                    inputs: vec![StageInput::Source {
                        table: "clicks".into(),
                    }],
                    output: StageOutput::Shuffle {
                        kind: ShuffleKind::Hash,
                        partitions: 4,
                    },
                    stateful: false,
                    describe: "Projection".into(),
                },
                StageSpec {
                    id: 1,
                    inputs: vec![StageInput::Shuffle {
                        from: 0,
                        kind: ShuffleKind::Hash,
                    }],
                    output: StageOutput::Sink,
                    stateful: true,
                    describe: "RunningAggregate".into(),
                },
            ],
            operators: [(
                1,
                OperatorPlan {
                    name: "agg-1".into(),
                    describe: "RunningAggregate [window]".into(),
                    eviction: "a window leaves the state once the watermark reaches its end".into(),
                    windowed: true,
                },
            )]
            .into(),
            sink: "out".into(),
            event_times: [(
                "clicks".to_string(),
                EventTime {
                    column: "ts".into(),
                    delay_ms: 5_000,
                },
            )]
            .into(),
            watermark_policy: WatermarkPolicy::Min,
        }
    }

    #[test]
    fn the_graph_runs_from_the_sources_through_each_exchange_to_the_sink() {
        let g = graph(&two_stages());
        let labels: Vec<&str> = g.nodes.iter().map(|n| n.label.as_str()).collect();
        assert_eq!(labels, ["clicks", "stage 0", "stage 1", "out"]);
        let xs: Vec<u32> = g.nodes.iter().map(|n| n.x).collect();
        assert!(
            xs.windows(2).all(|w| w[0] < w[1]),
            "one column each: {xs:?}"
        );
        assert_eq!(g.nodes[2].class, "node-stateful");
        let edges: Vec<&str> = g.edges.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(edges, ["splits", "hash exchange × 4", "commit"]);
        assert!(g.edges.iter().all(|e| e.x1 < e.x2));
    }

    #[test]
    fn a_window_not_emitted_names_the_source_and_the_time_it_waits_for() {
        let plan = two_stages();
        let read = [("clicks".to_string(), 52_000)].into();
        let last = BatchStatus {
            watermark_ms: Some(47_000),
            metrics: [
                ("agg-1.open_windows".to_string(), 2),
                ("agg-1.next_window_end_ms".to_string(), 50_000),
            ]
            .into(),
            ..Default::default()
        };
        let w = windows_of(&plan, Some(&last), &read, &[]);
        assert!(w.sources[0].holds);
        assert_eq!(w.sources[0].allows_ms, Some(47_000));
        let op = &w.operators[0];
        assert_eq!(
            (op.open_windows, op.watermark_short_ms),
            (Some(2), Some(3_000))
        );
        assert!(
            op.why.contains("source clicks holds the watermark")
                && op.why.contains("at or after 1970-01-01T00:00:55"),
            "{}",
            op.why
        );
        let none = windows_of(&plan, None, &Default::default(), &[]);
        assert_eq!(none.operators[0].why, "no window is open");
    }
}
