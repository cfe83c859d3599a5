//! The job page's charts as SVG geometry for the templates: the batch timeline (one stacked
//! bar of phases per batch, with what happened to it marked above) and line charts over the
//! recent batches. Hand-laid rather than drawn by a plotting crate, because each bar is an
//! element a reader hovers (its `<title>`) and follows (a link to the batch), and a test
//! finds by its class.

use sluice_proto::{BatchDetail, BatchStatus, ExecutorEvent, LaunchCause, StageDetail, json};

pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 180;
/// Room above the bars for the marks.
const MARKS: u32 = 14;

/// One batch's bar: its segments bottom-up and its marks.
pub struct Bar {
    pub batch: u64,
    pub href: String,
    pub x: u32,
    pub width: u32,
    pub title: String,
    pub segments: Vec<Segment>,
    pub marks: Vec<&'static str>,
}

pub struct Segment {
    pub class: String,
    pub y: u32,
    pub height: u32,
}

pub struct Timeline {
    pub bars: Vec<Bar>,
    /// The tallest bar's time, for the axis label.
    pub max_ms: u64,
}

impl Timeline {
    pub fn of(job: &str, batches: &[BatchDetail]) -> Timeline {
        let parts: Vec<Vec<(String, u64)>> = batches.iter().map(segments).collect();
        let max_ms = parts
            .iter()
            .map(|p| p.iter().map(|(_, ms)| ms).sum::<u64>())
            .max()
            .unwrap_or(0)
            .max(1);
        let n = batches.len().max(1) as u32;
        let step = (WIDTH / n).max(1);
        let plot = u64::from(HEIGHT - MARKS);
        let bars = batches
            .iter()
            .zip(parts)
            .enumerate()
            .map(|(i, (b, parts))| {
                let mut top = HEIGHT;
                let segments = parts
                    .iter()
                    .map(|(class, ms)| {
                        let height = (ms * plot / max_ms) as u32;
                        top -= height;
                        Segment {
                            class: class.clone(),
                            y: top,
                            height,
                        }
                    })
                    .collect();
                Bar {
                    batch: b.batch_id,
                    href: format!("/jobs/{job}/batches/{}", b.batch_id),
                    x: i as u32 * step,
                    width: step.saturating_sub(1).max(1),
                    title: title(b, &parts),
                    segments,
                    marks: marks(b),
                }
            })
            .collect();
        Timeline { bars, max_ms }
    }
}

/// A batch's time bottom-up: the driver's phases before the tasks, each stage's span (first
/// launch to last end) less its state write, the state writes (each stateful stage's slowest
/// task's), then the sink commit and the commit entry.
fn segments(b: &BatchDetail) -> Vec<(String, u64)> {
    let phase = |name: &str| b.phases.iter().find(|p| p.name == name).map_or(0, |p| p.ms);
    let mut out = vec![
        ("phase-plan".to_string(), phase("plan")),
        ("phase-offsets".to_string(), phase("offsets")),
    ];
    let stages: Vec<(u32, u64, u64)> = b
        .stages
        .iter()
        .filter_map(|s| Some((s.stage_id, stage_span(s)?, state_write(s))))
        .collect();
    if stages.is_empty() {
        out.push(("phase-tasks".into(), phase("tasks")));
    }
    for (id, ms, write) in &stages {
        out.push((
            format!("phase-stage stage-{}", id % 4),
            ms.saturating_sub(*write),
        ));
    }
    let writes: u64 = stages.iter().map(|(_, _, w)| w).sum();
    out.push(("phase-state".into(), writes));
    out.push(("phase-sink".into(), phase("sink_commit")));
    out.push(("phase-commit".into(), phase("commit")));
    out
}

/// How long a stage's slowest state write took (0 for a stage without state).
fn state_write(s: &StageDetail) -> u64 {
    s.tasks
        .iter()
        .flat_map(|t| &t.attempts)
        .filter_map(|a| a.metrics.get(sluice_core::progress::STATE_WRITE_MS))
        .max()
        .map_or(0, |ms| (*ms).max(0) as u64)
}

/// A stage's wall time in a batch: its first task's launch to its last task's end.
pub fn stage_span(s: &StageDetail) -> Option<u64> {
    let attempts = s.tasks.iter().flat_map(|t| &t.attempts);
    let start = attempts.clone().map(|a| a.launched_at_ms).min()?;
    let end = attempts.map(|a| a.ended_at_ms).max()?;
    Some(end.saturating_sub(start))
}

fn title(b: &BatchDetail, parts: &[(String, u64)]) -> String {
    let total: u64 = parts.iter().map(|(_, ms)| ms).sum();
    let rows = b
        .summary
        .as_ref()
        .map_or_else(String::new, |s| format!(", {} rows in", s.rows_in));
    let marks = marks(b);
    let marks = if marks.is_empty() {
        String::new()
    } else {
        format!(" [{}]", marks.join(", "))
    };
    format!(
        "batch {} ({}): {total} ms{rows}{marks}",
        b.batch_id,
        b.outcome_name()
    )
}

/// What happened to a batch besides running once: each a CSS class and a word in its title.
fn marks(b: &BatchDetail) -> Vec<&'static str> {
    let causes: Vec<LaunchCause> = b
        .stages
        .iter()
        .flat_map(|s| &s.tasks)
        .flat_map(|t| &t.attempts)
        .map(|a| a.cause())
        .collect();
    let mut out = Vec::new();
    if causes
        .iter()
        .any(|c| matches!(c, LaunchCause::ExecutorLost | LaunchCause::OutputLost))
    {
        out.push("executor-lost");
    }
    if causes
        .iter()
        .any(|c| matches!(c, LaunchCause::TaskFailed | LaunchCause::FetchFailed))
    {
        out.push("retried");
    }
    if b.runs > 1 {
        out.push("rerun");
    }
    match b.started_after.as_str() {
        "driver restart" => out.push("driver-restart"),
        "job restart" => out.push("job-restart"),
        "resume" => out.push("resumed"),
        _ => {}
    }
    if b.outcome() == sluice_proto::BatchOutcome::Failed {
        out.push("failed");
    }
    if b.summary.as_ref().is_some_and(|s| s.rows_in == 0) {
        out.push("no-data");
    }
    out
}

/// A line over the recent batches, as SVG polyline points.
pub struct Series {
    pub name: &'static str,
    pub class: &'static str,
    pub points: String,
}

pub struct LineChart {
    pub series: Vec<Series>,
    pub max_label: String,
}

/// Input rate (rows over the time since the previous batch's commit) and processing rate
/// (rows over the batch's own duration), per batch.
pub fn rates(batches: &[BatchStatus]) -> LineChart {
    let mut prev_commit = None;
    let input: Vec<u64> = batches
        .iter()
        .map(|b| {
            let since = prev_commit.unwrap_or(b.started_at_ms);
            prev_commit = Some(b.committed_at_ms);
            json::rows_per_second(b.rows_in, b.committed_at_ms.saturating_sub(since))
        })
        .collect();
    let processing: Vec<u64> = batches
        .iter()
        .map(|b| json::rows_per_second(b.rows_in, b.duration_ms))
        .collect();
    chart(
        vec![
            ("input rows/s", "line-input", input),
            ("processing rows/s", "line-processing", processing),
        ],
        "rows/s",
    )
}

pub fn durations(batches: &[BatchStatus]) -> LineChart {
    let ms = batches.iter().map(|b| b.duration_ms).collect();
    chart(vec![("batch duration", "line-duration", ms)], "ms")
}

/// Executors alive and draining over time, as steps at each registration, drain and loss
/// (the events the driver keeps), up to `now_ms`.
pub fn executors_over_time(events: &[ExecutorEvent], now_ms: u64) -> LineChart {
    let mut sorted: Vec<&ExecutorEvent> = events.iter().collect();
    sorted.sort_by_key(|e| e.at_ms);
    let Some(first) = sorted.first() else {
        return LineChart {
            series: Vec::new(),
            max_label: "no executor yet".into(),
        };
    };
    let (t0, t1) = (first.at_ms, now_ms.max(first.at_ms + 1));
    let (mut alive, mut draining) = (0i64, 0i64);
    let (mut up, mut drain) = (vec![(t0, 0)], vec![(t0, 0)]);
    for e in &sorted {
        match e.change.as_str() {
            "registered" => alive += 1,
            "draining" => draining += 1,
            "lost" => alive -= 1,
            _ => {}
        }
        up.push((e.at_ms, alive.max(0)));
        drain.push((e.at_ms, draining.max(0)));
    }
    up.push((t1, alive.max(0)));
    drain.push((t1, draining.max(0)));
    let max = up.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
    let steps = |points: &[(u64, i64)]| -> String {
        let xy = |t: u64, n: i64| {
            let x = f64::from(WIDTH) * (t - t0) as f64 / (t1 - t0) as f64;
            let y = f64::from(HEIGHT) * (1.0 - n as f64 / max as f64);
            format!("{x:.1},{y:.1}")
        };
        let mut out = Vec::new();
        for pair in points.windows(2) {
            let ((ta, na), (tb, _)) = (pair[0], pair[1]);
            out.push(xy(ta, na));
            out.push(xy(tb, na));
        }
        out.join(" ")
    };
    LineChart {
        series: vec![
            Series {
                name: "alive",
                class: "line-processing",
                points: steps(&up),
            },
            Series {
                name: "draining",
                class: "line-duration",
                points: steps(&drain),
            },
        ],
        max_label: format!("{max} executors"),
    }
}

fn chart(lines: Vec<(&'static str, &'static str, Vec<u64>)>, unit: &str) -> LineChart {
    let max = lines
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let series = lines
        .into_iter()
        .map(|(name, class, values)| {
            let step = f64::from(WIDTH) / (values.len().max(2) - 1) as f64;
            let points = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let y = f64::from(HEIGHT) * (1.0 - *v as f64 / max as f64);
                    format!("{:.1},{:.1}", i as f64 * step, y)
                })
                .collect::<Vec<_>>()
                .join(" ");
            Series {
                name,
                class,
                points,
            }
        })
        .collect();
    LineChart {
        series,
        max_label: format!("{max} {unit}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{Phase, TaskAttempt, TaskDetail};

    fn batch(id: u64, causes: &[LaunchCause], rows_in: u64) -> BatchDetail {
        let attempts = causes
            .iter()
            .enumerate()
            .map(|(i, c)| TaskAttempt {
                launched_at_ms: 1_000 + i as u64 * 10,
                ended_at_ms: 1_020 + i as u64 * 10,
                cause: (*c).into(),
                ..Default::default()
            })
            .collect();
        BatchDetail {
            batch_id: id,
            runs: 1,
            phases: vec![
                Phase {
                    name: "plan".into(),
                    ms: 2,
                },
                Phase {
                    name: "commit".into(),
                    ms: 3,
                },
            ],
            stages: vec![StageDetail {
                stage_id: 0,
                tasks: vec![TaskDetail {
                    attempts,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            summary: Some(BatchStatus {
                rows_in,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn one_bar_per_batch_with_its_stages_and_marks() {
        let t = Timeline::of(
            "j",
            &[
                batch(0, &[LaunchCause::First], 10),
                batch(1, &[LaunchCause::First, LaunchCause::ExecutorLost], 0),
            ],
        );
        assert_eq!(t.bars.len(), 2);
        assert_eq!(t.bars[1].href, "/jobs/j/batches/1");
        // plan 2 + stage span 30 + commit 3 is the tallest bar.
        assert_eq!(t.max_ms, 35);
        let classes: Vec<&str> = t.bars[1]
            .segments
            .iter()
            .map(|s| s.class.as_str())
            .collect();
        assert_eq!(
            classes,
            [
                "phase-plan",
                "phase-offsets",
                "phase-stage stage-0",
                "phase-state",
                "phase-sink",
                "phase-commit"
            ]
        );
        let stage = &t.bars[1].segments[2];
        assert!(stage.class.contains("phase-stage"));
        assert_eq!(t.bars[1].marks, vec!["executor-lost", "no-data"]);
        assert!(t.bars[0].marks.is_empty());
        assert!(t.bars[1].title.contains("[executor-lost, no-data]"));
    }

    #[test]
    fn executors_over_time_step_at_each_registration_and_loss() {
        let event = |at_ms, change: &str| ExecutorEvent {
            at_ms,
            executor_id: "e".into(),
            change: change.into(),
            reason: String::new(),
        };
        let events = [
            event(1_000, "registered"),
            event(1_000, "registered"),
            event(3_000, "lost"),
        ];
        let c = executors_over_time(&events, 5_000);
        assert_eq!(c.max_label, "2 executors");
        // Two alive from the start, one after the loss at the middle of the span.
        assert!(
            c.series[0].points.contains("480.0,0.0 480.0,90.0"),
            "{}",
            c.series[0].points
        );
        assert!(
            c.series[0].points.ends_with("960.0,90.0"),
            "{}",
            c.series[0].points
        );
    }

    #[test]
    fn the_first_batch_after_a_driver_restart_is_marked() {
        let mut b = batch(4, &[LaunchCause::First], 10);
        b.started_after = "driver restart".into();
        let t = Timeline::of("j", &[b, batch(5, &[LaunchCause::First], 10)]);
        assert_eq!(t.bars[0].marks, vec!["driver-restart"]);
        assert!(t.bars[1].marks.is_empty());
    }
}
