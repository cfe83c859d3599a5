//! bench/report.md, bench/results.json and bench/throughput.png from the comparison.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde_json::{Value, json};

use super::engines::{Engine, Run};
use super::{Latency, Outcome, median, recovery};
use crate::bench::percentile;

/// Where Sluice's own figures are: what a comparison of engines does not show.
/// Why the Kafka jobs (the Yahoo job among them) read files here.
const KAFKA: &str = "No workload here reads Kafka: the peers' Kafka connectors (Spark's spark-sql-kafka, Flink's flink-connector-kafka) are published only to Maven Central, which this machine cannot reach (its registries: crates.io, PyPI, Debian's packages, npm), so the Yahoo job reads the same events from files on every engine; Sluice's own bench runs it over Kafka (cluster.md).";

const CLUSTER_LINK: &str = "Sluice on its own (`cargo xtask bench`): the latency floor over 1,000 batches with the time of each phase, wide shuffles, one driver with 1,000 executors, recovery from executor and driver kills, Kafka and windowed jobs, and map-side partial aggregation on and off, in [cluster.md](cluster.md); each optimisation before and after, in [changes.md](changes.md).\n";

/// An engine's medians over its runs of one workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Medians {
    pub rows_per_second: f64,
    pub cpu_seconds_per_million: f64,
    pub peak_rss_mib: f64,
    pub runs: usize,
}

impl Medians {
    pub fn of(runs: &[Run]) -> Medians {
        let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        Medians {
            rows_per_second: m(Run::rows_per_second),
            cpu_seconds_per_million: m(Run::cpu_seconds_per_million),
            peak_rss_mib: m(|r| r.peak_rss_bytes as f64 / (1 << 20) as f64),
            runs: runs.len(),
        }
    }
}

pub fn write(
    root: &Path,
    engines: &[Box<dyn Engine>],
    missing: &[(&str, String)],
    outcomes: &[Outcome],
    latency: &Latency,
    recoveries: &[recovery::Outcome],
    to_files: bool,
) -> anyhow::Result<()> {
    let mut md = markdown(engines, missing, outcomes, latency);
    recovery::markdown(&mut md, recoveries);
    super::targets::markdown(&mut md, outcomes, latency, recoveries);
    println!("{md}");
    if !to_files {
        println!("a partial run (--only): bench/report.md and bench/results.json are unchanged");
        return Ok(());
    }
    let dir = root.join("bench");
    std::fs::create_dir_all(&dir)?;
    let mut results = results_json(engines, missing, outcomes, latency);
    results["recovery"] = recovery::to_json(recoveries);
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    std::fs::write(dir.join("report.md"), &md)?;
    throughput_plot(&dir.join("throughput.png"), outcomes)?;
    latency_plot(&dir.join("latency_cdf.png"), latency)?;
    super::headline::update_readme(root)?;
    println!(
        "wrote bench/report.md, bench/results.json, bench/throughput.png, bench/latency_cdf.png and README.md's headline"
    );
    Ok(())
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    json!({ "cpus": cpus, "cpu": cpu, "memory_gib": mem_kib / (1 << 20) })
}

fn results_json(
    engines: &[Box<dyn Engine>],
    missing: &[(&str, String)],
    outcomes: &[Outcome],
    latency: &Latency,
) -> Value {
    let workloads: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            let per_engine: serde_json::Map<String, Value> = o
                .runs
                .iter()
                .map(|(name, runs)| {
                    let m = Medians::of(runs);
                    let checksum = o.checksums.iter().find(|(e, _)| e == name).map(|(_, c)| c.to_json());
                    (name.to_string(), json!({
                        "rows_per_second": m.rows_per_second,
                        "cpu_seconds_per_million_rows": m.cpu_seconds_per_million,
                        "peak_rss_mib": m.peak_rss_mib,
                        "checksum": checksum,
                        "runs": runs.iter().map(|r| json!({
                            "rows": r.rows, "wall_ms": r.wall_ms, "cpu_ms": r.cpu_ms,
                            "peak_rss_bytes": r.peak_rss_bytes, "batches": r.batches,
                            "batch_ms": r.batch_ms,
                        })).collect::<Vec<_>>(),
                    }))
                })
                .collect();
            json!({
                "id": o.workload.id,
                "name": o.workload.name,
                "title": o.workload.title,
                "rows": o.workload.rows,
                "input": o.workload.input.describe(),
                "files": o.workload.files,
                "engines": per_engine,
                "skipped": o.skipped.iter().map(|(e, why)| json!({"engine": e, "why": why})).collect::<Vec<_>>(),
                "notes": o.notes.iter().map(|(e, note)| json!({"engine": e, "note": note})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "machine": machine(),
        "engines": engines.iter().map(|e| json!({"name": e.name(), "version": e.version(), "settings": e.settings()})).collect::<Vec<_>>(),
        "missing": missing.iter().map(|(e, why)| json!({"engine": e, "why": why})).collect::<Vec<_>>(),
        "workloads": workloads,
        "latency_floor": {
            "trigger_ms": crate::bench::SMALL_TRIGGER_MS,
            "rows_per_batch": crate::bench::SMALL_ROWS_PER_BATCH,
            "warm_up_batches_left_out": crate::bench::SMALL_WARM_UP,
            "engines": latency.batch_ms.iter().map(|(e, ms)| {
                let sorted = sorted(ms);
                (e.to_string(), json!({
                    "batches": ms.len(),
                    "p50_ms": percentile(&sorted, 0.5),
                    "p99_ms": percentile(&sorted, 0.99),
                    "max_ms": sorted.last(),
                    "end_to_end_ms": ms,
                }))
            }).collect::<serde_json::Map<_, _>>(),
            "skipped": latency.skipped.iter().map(|(e, why)| json!({"engine": e, "why": why})).collect::<Vec<_>>(),
        },
    })
}

fn sorted(ms: &[u64]) -> Vec<u64> {
    let mut v = ms.to_vec();
    v.sort_unstable();
    v
}

fn markdown(
    engines: &[Box<dyn Engine>],
    missing: &[(&str, String)],
    outcomes: &[Outcome],
    latency: &Latency,
) -> String {
    let mut md = String::from("# Sluice, Spark and Flink on the same work\n\n");
    let m = machine();
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench --compare`. Machine: {} CPUs ({}), {} GiB. Every engine reads the same jsonl files and runs the same query; a check run of each writes real output, and the comparison fails unless the outputs' row counts and checksums agree. Figures are medians over the timed runs, which alternate the engines' order. Rows per second run from the first batch's start to the last batch's end (Flink: from the job's start, less the wall time of the same job over no input); CPU and memory are of the engine's processes, from /proc. {KAFKA}\n",
        m["cpus"],
        m["cpu"].as_str().unwrap_or(""),
        m["memory_gib"]
    );
    md.push_str("| engine | version | settings |\n|---|---|---|\n");
    for e in engines {
        let _ = writeln!(md, "| {} | {} | {} |", e.name(), e.version(), e.settings());
    }
    for (name, why) in missing {
        let _ = writeln!(md, "| {name} | not run | {why} |");
    }
    md.push_str("\n![throughput per workload](throughput.png)\n\n");
    md.push_str(CLUSTER_LINK);
    for o in outcomes {
        workload_section(&mut md, o);
    }
    if !latency.batch_ms.is_empty() {
        latency_section(&mut md, latency);
    }
    md
}

fn latency_section(md: &mut String, latency: &Latency) {
    use crate::bench::{SMALL_ROWS_PER_BATCH, SMALL_TRIGGER_MS, SMALL_WARM_UP};
    let _ = writeln!(
        md,
        "\n## latency_floor: small batches, end to end\n\nRows arrive at {} per second from each engine's own generator (Sluice's datagen, Spark's rate source) with a trigger every {SMALL_TRIGGER_MS} ms, so a batch that keeps up holds about {SMALL_ROWS_PER_BATCH} rows; each batch counts, sums and takes the max by page of the rows passing a filter. A batch's time runs from its trigger to its durable commit (Sluice: planning its input to its commit entry; Spark: the progress event's batchDuration, to its commit log entry). The first {SMALL_WARM_UP} batches are left out; one run per engine, its whole distribution reported.\n\n![batch durations, cumulative](latency_cdf.png)\n",
        SMALL_ROWS_PER_BATCH * 1000 / SMALL_TRIGGER_MS
    );
    md.push_str("| engine | batches | p50 (ms) | p99 (ms) | max (ms) | this p50 ÷ Sluice's |\n|---|---:|---:|---:|---:|---:|\n");
    let p50 = |ms: &[u64]| percentile(&sorted(ms), 0.5);
    let sluice = latency.batch_ms.get("sluice").map(|ms| p50(ms));
    for (name, ms) in ENGINES
        .iter()
        .filter_map(|e| Some((e, latency.batch_ms.get(e)?)))
    {
        let s = sorted(ms);
        let ratio = sluice.map_or(String::from("-"), |base| {
            format!("{:.1}×", p50(ms) as f64 / base.max(1) as f64)
        });
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {ratio} |",
            s.len(),
            percentile(&s, 0.5),
            percentile(&s, 0.99),
            s.last().unwrap_or(&0)
        );
    }
    for (name, why) in &latency.skipped {
        let _ = writeln!(md, "\n{name} not run: {why}");
    }
}

fn workload_section(md: &mut String, o: &Outcome) {
    let w = o.workload;
    let _ = writeln!(
        md,
        "\n## {}: {}\n\n{} rows in {} files: {}.\n",
        w.id,
        w.title,
        w.rows,
        w.files,
        w.input.describe()
    );
    md.push_str("| engine | rows/s | CPU-s per M rows | peak RSS (MiB) | Sluice's rows/s ÷ this | runs |\n|---|---:|---:|---:|---:|---:|\n");
    let sluice = o.runs.get("sluice").map(|r| Medians::of(r));
    for (name, runs) in ENGINES.iter().filter_map(|e| Some((e, o.runs.get(e)?))) {
        let m = Medians::of(runs);
        let ratio = sluice.map_or(String::from("-"), |s| {
            format!("{:.2}×", s.rows_per_second / m.rows_per_second.max(1e-9))
        });
        let _ = writeln!(
            md,
            "| {name} | {:.0} | {:.2} | {:.0} | {ratio} | {} |",
            m.rows_per_second, m.cpu_seconds_per_million, m.peak_rss_mib, m.runs
        );
    }
    if let Some((_, c)) = o.checksums.first() {
        let agree: Vec<&str> = o.checksums.iter().map(|(e, _)| *e).collect();
        let sums: Vec<String> = c
            .sums
            .iter()
            .map(|(col, v)| format!("Σ {col} = {}", *v as f64 / 1000.0))
            .collect();
        let _ = writeln!(
            md,
            "\nChecked: {} output rows, {}, weighted {} (agreeing: {}).",
            c.rows,
            sums.join(", "),
            c.weighted,
            agree.join(", ")
        );
    }
    for (name, note) in &o.notes {
        let _ = writeln!(md, "\n{name}: {note}.");
    }
    for (name, why) in &o.skipped {
        let _ = writeln!(md, "\n{name} not run: {why}");
    }
}

const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];
const ENGINES: [&str; 3] = ["sluice", "spark", "flink"];

/// Grouped bars: per workload, each engine's median rows per second.
fn throughput_plot(path: &Path, outcomes: &[Outcome]) -> anyhow::Result<()> {
    register_font()?;
    let max = outcomes
        .iter()
        .flat_map(|o| o.runs.values().map(|r| Medians::of(r).rows_per_second))
        .fold(1.0, f64::max);
    let root = BitMapBackend::new(path, (1400, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = outcomes.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("rows per second (median)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(90)
        .build_cartesian_2d(0.0..n, 0.0..max * 1.15)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&|v| format!("{:.1}M", v / 1e6))
        .draw()?;
    for (i, o) in outcomes.iter().enumerate() {
        for (j, engine) in ENGINES.iter().enumerate() {
            let Some(runs) = o.runs.get(engine) else {
                continue;
            };
            let v = Medians::of(runs).rows_per_second;
            let x0 = i as f64 + 0.1 + j as f64 * 0.27;
            chart.draw_series([Rectangle::new(
                [(x0, 0.0), (x0 + 0.25, v)],
                COLORS[j].filled(),
            )])?;
            chart.draw_series([Text::new(
                format!("{:.2}M", v / 1e6),
                (x0, v + max * 0.02),
                ("sans-serif", 13),
            )])?;
        }
        chart.draw_series([Text::new(
            o.workload.id.to_string(),
            (i as f64 + 0.2, -max * 0.04),
            ("sans-serif", 15),
        )])?;
    }
    for (j, engine) in ENGINES.iter().enumerate() {
        chart
            .draw_series([Rectangle::new([(0.0, 0.0), (0.0, 0.0)], COLORS[j].filled())])?
            .label(*engine)
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], COLORS[j].filled())
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present().context("writing the plot")?;
    Ok(())
}

/// The share of batches at or under each duration, per engine, on a log scale of ms.
fn latency_plot(path: &Path, latency: &Latency) -> anyhow::Result<()> {
    if latency.batch_ms.is_empty() {
        return Ok(());
    }
    register_font()?;
    let max = (latency.batch_ms.values().flatten().copied())
        .max()
        .unwrap_or(1)
        .max(10) as f64;
    let root = BitMapBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "small batches: share done within a time, trigger to durable commit",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0..max * 1.2).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("ms (log scale)")
        .y_desc("share of batches")
        .draw()?;
    for (j, engine) in ENGINES.iter().enumerate() {
        let Some(ms) = latency.batch_ms.get(engine) else {
            continue;
        };
        let s = sorted(ms);
        let n = s.len() as f64;
        let points =
            (s.iter().enumerate()).map(|(i, &v)| ((v as f64).max(1.0), (i + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(points, COLORS[j].stroke_width(2)))?
            .label(*engine)
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 15, y)], COLORS[j].stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present().context("writing the plot")?;
    Ok(())
}

/// One bar per batch from its start to its commit, in ms relative to an executor's kill (a
/// red line), the batches that reran tasks in red.
pub fn recovery_plot(path: &Path, timeline: &[Value]) -> anyhow::Result<()> {
    let span = |b: &Value| {
        let at = |f: &str| b[f].as_i64().unwrap_or(0) as f64;
        (
            at("started_ms"),
            at("committed_ms"),
            b["tasks_rerun"].as_u64().unwrap_or(0) > 0,
        )
    };
    let spans: Vec<(f64, f64, bool)> = timeline.iter().map(span).collect();
    let (lo, hi) = spans
        .iter()
        .fold((0.0f64, 1.0f64), |(lo, hi), s| (lo.min(s.0), hi.max(s.1)));
    register_font()?;
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = spans.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "executor killed at 0: each batch from start to commit",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(lo - 200.0..hi + 200.0, 0.0..n)?;
    chart
        .configure_mesh()
        .x_desc("ms from the kill")
        .y_desc("batch")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (i, (start, end, rerun)) in spans.iter().enumerate() {
        let color = if *rerun { RED } else { COLORS[0] };
        let y = i as f64;
        chart.draw_series([Rectangle::new(
            [(*start, y + 0.15), (*end, y + 0.85)],
            color.filled(),
        )])?;
    }
    chart.draw_series([PathElement::new(
        [(0.0, 0.0), (0.0, n)],
        RED.stroke_width(2),
    )])?;
    root.present().context("writing the plot")?;
    Ok(())
}

/// Plots need a font: DejaVu Sans from Debian's fonts-dejavu-core, installed when missing.
fn register_font() -> anyhow::Result<()> {
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    if !Path::new(FONT).exists() {
        crate::apt_get(
            &["install", "-y", "-qq", "fonts-dejavu-core"],
            Path::new("."),
        );
    }
    let bytes = std::fs::read(FONT).with_context(|| format!("reading the plot font {FONT}"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
    Ok(())
}
