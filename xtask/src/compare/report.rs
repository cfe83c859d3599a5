//! bench/report.md, bench/results.json and bench/throughput.png from the comparison.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde_json::{Value, json};

use super::engines::{Engine, Run};
use super::{Outcome, median};

/// Where Sluice's own figures are: what a comparison of engines does not show.
const CLUSTER_LINK: &str = "Sluice on its own (`cargo xtask bench`): the latency floor over 1,000 batches with the time of each phase, wide shuffles, one driver with 1,000 executors, recovery from executor and driver kills, Kafka and windowed jobs, and each optimisation measured on and off, in [cluster.md](cluster.md).\n";

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
) -> anyhow::Result<()> {
    let dir = root.join("bench");
    std::fs::create_dir_all(&dir)?;
    let results = results_json(engines, missing, outcomes);
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let md = markdown(engines, missing, outcomes);
    std::fs::write(dir.join("report.md"), &md)?;
    throughput_plot(&dir.join("throughput.png"), outcomes)?;
    println!("{md}");
    println!("wrote bench/report.md, bench/results.json, bench/throughput.png");
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
                        })).collect::<Vec<_>>(),
                    }))
                })
                .collect();
            json!({
                "id": o.workload.id,
                "title": o.workload.title,
                "rows": o.workload.rows,
                "keys": o.workload.keys,
                "files": o.workload.files,
                "engines": per_engine,
                "skipped": o.skipped.iter().map(|(e, why)| json!({"engine": e, "why": why})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "machine": machine(),
        "engines": engines.iter().map(|e| json!({"name": e.name(), "version": e.version(), "settings": e.settings()})).collect::<Vec<_>>(),
        "missing": missing.iter().map(|(e, why)| json!({"engine": e, "why": why})).collect::<Vec<_>>(),
        "workloads": workloads,
    })
}

fn markdown(
    engines: &[Box<dyn Engine>],
    missing: &[(&str, String)],
    outcomes: &[Outcome],
) -> String {
    let mut md = String::from("# Sluice, Spark and Flink on the same work\n\n");
    let m = machine();
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench --compare`. Machine: {} CPUs ({}), {} GiB. Every engine reads the same jsonl files and runs the same query; a check run of each writes real output, and the comparison fails unless the outputs' row counts and checksums agree. Figures are medians over the timed runs, which alternate the engines' order. Rows per second run from the first batch's start to the last batch's end (Flink: from the job's start, less the wall time of the same job over no input); CPU and memory are of the engine's processes, from /proc.\n",
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
    md
}

fn workload_section(md: &mut String, o: &Outcome) {
    let w = o.workload;
    let _ = writeln!(
        md,
        "\n## {}: {}\n\n{} rows in {} files, {} keys.\n",
        w.id, w.title, w.rows, w.files, w.keys
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
        let _ = writeln!(
            md,
            "\nChecked: {} output rows, n = {}, total = {} (agreeing: {}).",
            c.rows,
            c.n,
            c.total,
            agree.join(", ")
        );
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
    let root = BitMapBackend::new(path, (1000, 500)).into_drawing_area();
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
