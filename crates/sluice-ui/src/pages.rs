//! The pages and their JSON twins. Each handler reads the model through [`ClusterView`] and
//! fills a view struct with what its template shows, already formatted; the template only
//! lays it out.

use crate::auth::same_origin;
use crate::charts::{self, LineChart, Timeline};
use crate::job_views;
use crate::{ClusterView, Ui};
use askama::Template;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde_json::Value;
use sluice_proto::json;
use sluice_proto::{BatchDetail, BatchStatus, ClusterStatus, JobStatus};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) type UiState<V> = State<Arc<Ui<V>>>;

/// A rendered template as an HTML response (a template bug is a 500 naming it).
pub struct Page<T>(pub T);

impl<T: Template> IntoResponse for Page<T> {
    fn into_response(self) -> Response {
        match self.0.render() {
            Ok(html) => Html(html).into_response(),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot render the page: {e}"),
            )
                .into_response(),
        }
    }
}

pub(crate) fn not_found(what: String) -> Response {
    let page = MessagePage {
        title: "Not found".into(),
        message: what,
    };
    (StatusCode::NOT_FOUND, Page(page)).into_response()
}

pub(crate) fn api_not_found(what: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": what})),
    )
        .into_response()
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/ui.js"),
    )
}

pub async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/ui.css"),
    )
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    title: String,
    message: String,
}

/// Wall-clock ms as RFC 3339 in UTC, or "-" for none.
pub(crate) fn at(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// An event time (ms since the epoch, maybe negative or absent) as RFC 3339, or "-".
pub(crate) fn event_time(ms: Option<i64>) -> String {
    ms.and_then(|ms| u64::try_from(ms).ok())
        .map_or_else(|| "-".into(), at)
}

/// Rows per second read over the job's recent batches: their rows over the wall time from the
/// first one's start to the last one's commit (waits between batches included).
fn input_rate(batches: &[BatchStatus]) -> u64 {
    let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
        return 0;
    };
    let rows = batches.iter().map(|b| b.rows_in).sum();
    json::rows_per_second(
        rows,
        last.committed_at_ms.saturating_sub(first.started_at_ms),
    )
}

/// Rows per second while batches ran: their rows over the sum of their durations.
fn processing_rate(batches: &[BatchStatus]) -> u64 {
    let rows = batches.iter().map(|b| b.rows_in).sum();
    json::rows_per_second(rows, batches.iter().map(|b| b.duration_ms).sum())
}

// ---- jobs ----

struct JobRow {
    id: String,
    name: String,
    state: &'static str,
    input_rate: u64,
    batches: u64,
    rows_in: u64,
    restarts: u32,
    error: String,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    jobs: Vec<JobRow>,
}

pub async fn jobs<V: ClusterView>(State(ui): UiState<V>) -> Response {
    let jobs = ui
        .view
        .jobs()
        .iter()
        .map(|s| JobRow {
            id: s.job_id.clone(),
            name: s.name.clone(),
            state: s.job_state().name(),
            input_rate: input_rate(&s.recent_batches),
            batches: s.batches_committed,
            rows_in: s.rows_in,
            restarts: s.restarts,
            error: s.error.clone(),
        })
        .collect();
    Page(JobsPage { jobs }).into_response()
}

pub async fn api_jobs<V: ClusterView>(State(ui): UiState<V>) -> Json<Value> {
    Json(Value::from(
        ui.view
            .jobs()
            .iter()
            .map(json::job_json)
            .collect::<Vec<_>>(),
    ))
}

// ---- one job ----

struct BatchRow {
    id: u64,
    rows_in: u64,
    rows_out: u64,
    duration_ms: u64,
    rows_per_second: u64,
    watermark: String,
    why: String,
}

/// One stateful operator's figures in the last batch.
struct OperatorRow {
    name: String,
    state_rows: i64,
    state_bytes: String,
    open_windows: String,
    late_rows: i64,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    id: String,
    name: String,
    state: &'static str,
    error: String,
    restarts: u32,
    executors: u32,
    batches_committed: u64,
    rows_in: u64,
    rows_out: u64,
    running_batch: String,
    input_rate: u64,
    processing_rate: u64,
    stoppable: bool,
    timeline: Timeline,
    rates: LineChart,
    durations: LineChart,
    watermark: String,
    watermark_lag: String,
    sources: Vec<(String, String)>,
    operators: Vec<OperatorRow>,
    partitions: Vec<crate::job_views::PartitionRow>,
    lag: Vec<(String, String, u64)>,
    batches: Vec<BatchRow>,
}

pub async fn job<V: ClusterView>(State(ui): UiState<V>, Path(id): Path<String>) -> Response {
    let Some(s) = ui.view.job(&id) else {
        return not_found(format!("no job '{id}'"));
    };
    let details = ui.view.batches(&id);
    Page(job_page(&s, &details, ui.view.plan(&id).as_ref())).into_response()
}

fn job_page(s: &JobStatus, details: &[BatchDetail], plan: Option<&crate::JobPlan>) -> JobPage {
    let recent = &s.recent_batches;
    let last = recent.last();
    let watermark = last.and_then(|b| b.watermark_ms);
    let read_up_to = s.max_event_ms.values().max().copied();
    let state = s.job_state();
    JobPage {
        id: s.job_id.clone(),
        name: s.name.clone(),
        state: state.name(),
        error: s.error.clone(),
        restarts: s.restarts,
        executors: s.executors,
        batches_committed: s.batches_committed,
        rows_in: s.rows_in,
        rows_out: s.rows_out,
        running_batch: s
            .running_batch
            .map_or_else(|| "-".into(), |b| b.to_string()),
        input_rate: input_rate(recent),
        processing_rate: processing_rate(recent),
        stoppable: matches!(
            state,
            sluice_core::JobState::Running | sluice_core::JobState::Waiting
        ),
        timeline: Timeline::of(&s.job_id, details),
        rates: charts::rates(recent),
        durations: charts::durations(recent),
        watermark: event_time(watermark),
        watermark_lag: match (watermark, read_up_to) {
            (Some(w), Some(r)) => format!("{} ms", r.saturating_sub(w)),
            _ => "-".into(),
        },
        sources: s
            .max_event_ms
            .iter()
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .map(|(t, ms)| {
                let ahead = watermark
                    .map(|w| format!(", {} ms past the watermark", ms.saturating_sub(w)))
                    .unwrap_or_default();
                (t.clone(), format!("{}{ahead}", event_time(Some(*ms))))
            })
            .collect(),
        operators: last.map_or_else(Vec::new, operators),
        partitions: job_views::partition_rows(&job_views::partition_state(details, plan)),
        lag: s
            .source_lag
            .iter()
            .map(|l| (l.table.clone(), l.partition.clone(), l.records))
            .collect(),
        batches: recent.iter().rev().map(batch_row).collect(),
    }
}

fn batch_row(b: &BatchStatus) -> BatchRow {
    BatchRow {
        id: b.batch_id,
        rows_in: b.rows_in,
        rows_out: b.rows_out,
        duration_ms: b.duration_ms,
        rows_per_second: json::rows_per_second(b.rows_in, b.duration_ms),
        watermark: event_time(b.watermark_ms),
        why: why(b),
    }
}

/// What made a batch more than a plain run: reruns and their causes, dead letters, late rows.
fn why(b: &BatchStatus) -> String {
    let mut parts = Vec::new();
    for (n, what) in [
        (b.rerun_executor_lost, "executor lost"),
        (b.rerun_fetch_failed, "fetch failed"),
        (b.rerun_task_failed, "task failed"),
    ] {
        if n > 0 {
            parts.push(format!("{n} rerun: {what}"));
        }
    }
    if b.dead_letters > 0 {
        parts.push(format!("{} to the dead-letter table", b.dead_letters));
    }
    if b.recovery_ms > 0 {
        parts.push(format!("recovered in {} ms", b.recovery_ms));
    }
    parts.join("; ")
}

/// Each stateful operator's state, windows and late rows, from `<operator>.<what>` metrics.
fn operators(b: &BatchStatus) -> Vec<OperatorRow> {
    use sluice_core::progress::{LATE_ROWS, OPEN_WINDOWS, STATE_BYTES, STATE_ROWS};
    let mut by_op: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
    for (name, v) in &b.metrics {
        if let Some((op, what)) = name.rsplit_once('.')
            && [LATE_ROWS, OPEN_WINDOWS, STATE_BYTES, STATE_ROWS].contains(&what)
        {
            by_op.entry(op).or_default().insert(what, *v);
        }
    }
    by_op
        .into_iter()
        .map(|(op, m)| OperatorRow {
            name: op.to_string(),
            state_rows: m.get(STATE_ROWS).copied().unwrap_or(0),
            state_bytes: m.get(STATE_BYTES).map_or("-".into(), |v| v.to_string()),
            open_windows: m.get(OPEN_WINDOWS).map_or("-".into(), |v| v.to_string()),
            late_rows: m.get(LATE_ROWS).copied().unwrap_or(0),
        })
        .collect()
}

pub async fn api_job<V: ClusterView>(State(ui): UiState<V>, Path(id): Path<String>) -> Response {
    match ui.view.job(&id) {
        Some(s) => Json(json::job_json(&s)).into_response(),
        None => api_not_found(format!("no job '{id}'")),
    }
}

// ---- one batch ----

struct AttemptRow {
    stage: u32,
    partition: u32,
    attempt: u32,
    executor: String,
    cause: &'static str,
    outcome: &'static str,
    ms: String,
    phases: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "batch.html")]
struct BatchPage {
    job: String,
    id: u64,
    outcome: &'static str,
    error: String,
    runs: u32,
    started: String,
    ended: String,
    phases: Vec<(String, u64)>,
    input: Vec<(String, Vec<String>)>,
    stages: Vec<(String, Vec<AttemptRow>)>,
    committed: String,
    outputs: Vec<String>,
    watermark: String,
    started_after: String,
}

pub async fn batch<V: ClusterView>(
    State(ui): UiState<V>,
    Path((job, batch)): Path<(String, u64)>,
) -> Response {
    match ui.view.batch(&job, batch).await {
        Ok(b) => Page(batch_page(&b)).into_response(),
        Err(e) => not_found(e.0),
    }
}

fn batch_page(b: &BatchDetail) -> BatchPage {
    BatchPage {
        job: b.job_id.clone(),
        id: b.batch_id,
        outcome: b.outcome_name(),
        error: b.error.clone(),
        runs: b.runs,
        started: at(b.started_at_ms),
        ended: at(b.ended_at_ms),
        phases: b.phases.iter().map(|p| (p.name.clone(), p.ms)).collect(),
        input: b
            .input
            .iter()
            .map(|i| (i.table.clone(), i.splits.clone()))
            .collect(),
        stages: b
            .stages
            .iter()
            .map(|s| {
                let title = format!(
                    "stage {} (attempt {}{}): {} → {}",
                    s.stage_id,
                    s.attempt,
                    if s.stateful { ", stateful" } else { "" },
                    s.inputs.join(" + "),
                    s.output
                );
                let rows = s
                    .tasks
                    .iter()
                    .flat_map(|t| t.attempts.iter().map(move |a| (t.partition, a)))
                    .map(|(partition, a)| AttemptRow {
                        stage: s.stage_id,
                        partition,
                        attempt: a.task_attempt,
                        executor: a.executor_id.clone(),
                        cause: a.cause_name(),
                        outcome: a.outcome_name(),
                        ms: match a.ended_at_ms {
                            0 => "-".into(),
                            end => end.saturating_sub(a.launched_at_ms).to_string(),
                        },
                        phases: sluice_core::progress::TASK_PHASES
                            .iter()
                            .filter_map(|p| a.metrics.get(*p).map(|v| format!("{p} {v}")))
                            .collect::<Vec<_>>()
                            .join(", "),
                        reason: a.reason.clone(),
                    })
                    .collect();
                (title, rows)
            })
            .collect(),
        watermark: event_time(b.summary.as_ref().and_then(|s| s.watermark_ms)),
        started_after: b.started_after.clone(),
        outputs: b.committed_text(),
        committed: b.summary.as_ref().map_or_else(
            || "not committed".into(),
            |s| {
                format!(
                    "{} rows in, {} rows out, at {}",
                    s.rows_in,
                    s.rows_out,
                    at(s.committed_at_ms)
                )
            },
        ),
    }
}

pub async fn api_batch<V: ClusterView>(
    State(ui): UiState<V>,
    Path((job, batch)): Path<(String, u64)>,
) -> Response {
    match ui.view.batch(&job, batch).await {
        Ok(b) => Json(json::batch_json(&b)).into_response(),
        Err(e) => api_not_found(e.0),
    }
}

// ---- executors ----

struct ExecutorRow {
    id: String,
    address: String,
    slots: u32,
    running: usize,
    state_partitions: usize,
    state: &'static str,
    registered: String,
}

struct EventRow {
    at: String,
    executor: String,
    change: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "executors.html")]
struct ExecutorsPage {
    executors: Vec<ExecutorRow>,
    events: Vec<EventRow>,
    over_time: LineChart,
}

pub async fn executors<V: ClusterView>(State(ui): UiState<V>) -> Response {
    Page(executors_page(&ui.view.cluster().await)).into_response()
}

fn executors_page(c: &ClusterStatus) -> ExecutorsPage {
    ExecutorsPage {
        over_time: charts::executors_over_time(&c.events, sluice_core::now_ms()),
        executors: c
            .executors
            .iter()
            .map(|e| ExecutorRow {
                id: e.executor_id.clone(),
                address: e.address.clone(),
                slots: e.slots,
                running: e.running.len(),
                state_partitions: e.state_partitions.len(),
                state: if e.draining { "draining" } else { "alive" },
                registered: at(e.registered_at_ms),
            })
            .collect(),
        events: c
            .events
            .iter()
            .rev()
            .map(|e| EventRow {
                at: at(e.at_ms),
                executor: e.executor_id.clone(),
                change: e.change.clone(),
                reason: e.reason.clone(),
            })
            .collect(),
    }
}

pub async fn api_executors<V: ClusterView>(State(ui): UiState<V>) -> Json<Value> {
    Json(json::cluster_json(&ui.view.cluster().await))
}

// ---- stopping a job ----

#[derive(Template)]
#[template(path = "stop.html")]
struct StopPage {
    id: String,
    name: String,
}

/// The confirmation a stop needs: a page with one button that POSTs.
pub async fn stop_confirm<V: ClusterView>(
    State(ui): UiState<V>,
    Path(id): Path<String>,
) -> Response {
    match ui.view.job(&id) {
        Some(s) => Page(StopPage { id, name: s.name }).into_response(),
        None => not_found(format!("no job '{id}'")),
    }
}

pub async fn stop<V: ClusterView>(
    State(ui): UiState<V>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "a job is stopped from its own page").into_response();
    }
    match ui.view.stop(&id).await {
        Some(_) => Redirect::to(&format!("/jobs/{id}")).into_response(),
        None => not_found(format!("no job '{id}'")),
    }
}
