//! README.md's headline from bench/results.json: the throughput table, the latency floor and
//! the recoveries, between two markers. A full `bench --compare` rewrites it after writing the
//! results; `cargo xtask readme` rewrites it from the results already written.

use anyhow::{Context, bail};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

pub const START: &str = "<!-- headline: written from bench/results.json by cargo xtask readme -->";
pub const END: &str = "<!-- end of headline -->";

/// Rewrites the part of README.md between the markers from bench/results.json.
pub fn update_readme(root: &Path) -> anyhow::Result<()> {
    let results_path = root.join("bench/results.json");
    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(&results_path)
            .with_context(|| format!("cannot read {}", results_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", results_path.display()))?;
    let readme_path = root.join("README.md");
    let readme = std::fs::read_to_string(&readme_path)?;
    let (Some(start), Some(end)) = (readme.find(START), readme.find(END)) else {
        bail!("README.md has no headline markers ({START} ... {END})");
    };
    let mut results = results;
    // Results written before workloads had short names take them from the code.
    for w in results["workloads"].as_array_mut().into_iter().flatten() {
        if w.get("name").is_none()
            && let Some(known) = super::workloads(0).into_iter().find(|k| w["id"] == k.id)
        {
            w["name"] = Value::from(known.name);
        }
    }
    let updated = format!(
        "{}{START}\n{}{}",
        &readme[..start],
        markdown(&results),
        &readme[end..]
    );
    std::fs::write(&readme_path, updated)?;
    Ok(())
}

/// The table, the latency floor and the recoveries in a few lines.
pub fn markdown(results: &Value) -> String {
    let mut md = String::new();
    let machine = &results["machine"];
    let rows = |id: &str| {
        workloads(results)
            .find(|w| w["id"] == id)
            .and_then(|w| w["rows"].as_u64())
    };
    let _ = writeln!(
        md,
        "Last run, {} cores, {} jsonl rows ({} for 10M keys):\n",
        machine["cpus"],
        millions(rows("running_count_1k").unwrap_or(0) as f64),
        millions(rows("running_count_10m").unwrap_or(0) as f64)
    );
    md.push_str("| workload | Sluice rows/s | Spark rows/s | Flink rows/s | CPU-s per M rows (Sluice / Spark / Flink) | peak RSS MiB (Sluice / Spark / Flink) |\n|---|---:|---:|---:|---|---|\n");
    for w in workloads(results) {
        table_row(&mut md, w);
    }
    md.push('\n');
    latency(&mut md, &results["latency_floor"]);
    recovery(&mut md, &results["recovery"]);
    md
}

fn workloads(results: &Value) -> impl Iterator<Item = &Value> {
    results["workloads"].as_array().into_iter().flatten()
}

const ENGINES: [&str; 3] = ["sluice", "spark", "flink"];

fn table_row(md: &mut String, w: &Value) {
    let engine = |e: &str| w["engines"].get(e).filter(|v| v.is_object());
    let Some(sluice) = engine("sluice") else {
        return;
    };
    let rate = |v: &Value| v["rows_per_second"].as_f64().unwrap_or(0.0);
    let peer = |e: &str| match engine(e) {
        Some(p) if rate(p) > 0.0 => {
            format!("{} ({:.1}×)", millions(rate(p)), rate(sluice) / rate(p))
        }
        _ => "not comparable".into(),
    };
    let each = |field: &str, digits: usize| {
        ENGINES
            .map(|e| {
                engine(e)
                    .and_then(|v| v[field].as_f64())
                    .map_or("-".to_string(), |x| format!("{x:.digits$}"))
            })
            .join(" / ")
    };
    let name = w["name"].as_str().or(w["title"].as_str()).unwrap_or("?");
    let _ = writeln!(
        md,
        "| {name} | {} | {} | {} | {} | {} |",
        millions(rate(sluice)),
        peer("spark"),
        peer("flink"),
        each("cpu_seconds_per_million_rows", 2),
        each("peak_rss_mib", 0)
    );
}

fn millions(x: f64) -> String {
    format!("{:.2}M", x / 1e6)
}

fn latency(md: &mut String, floor: &Value) {
    let engines = &floor["engines"];
    let of = |e: &str| {
        let v = engines.get(e)?;
        Some(format!(
            "{} p50 {} ms, p99 {} ms",
            capitalized(e),
            v["p50_ms"].as_u64()?,
            v["p99_ms"].as_u64()?
        ))
    };
    let parts: Vec<String> = ENGINES.iter().filter_map(|e| of(e)).collect();
    if parts.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "Small batches (a {} ms trigger over ~{} rows, trigger to durable commit, {} batches): {}. Flink has no batches; its durability floor is its checkpoint interval.\n",
        floor["trigger_ms"],
        floor["rows_per_batch"],
        engines["sluice"]["batches"],
        parts.join("; ")
    );
}

fn recovery(md: &mut String, cases: &Value) {
    let mut lines = Vec::new();
    for case in cases.as_array().into_iter().flatten() {
        let what = match case["kind"].as_str() {
            Some("restart") => "the coordinator killed",
            _ => "one executor killed mid-batch",
        };
        let figures: Vec<String> = case["engines"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{} {} ({})",
                    capitalized(e["engine"].as_str().unwrap_or("?")),
                    duration(e["kill_to_commit_ms"].as_u64().unwrap_or(0)),
                    e["killed"].as_str().unwrap_or("?")
                )
            })
            .collect();
        lines.push(format!(
            "{what} with {} keys of state: {}",
            case["keys"],
            figures.join(", ")
        ));
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "Recovery, SIGKILL to the next commit (medians of 3): {}.",
        lines.join("; ")
    );
}

fn duration(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms} ms"),
        _ => format!("{:.1} s", ms as f64 / 1000.0),
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_headline_has_a_row_per_workload_with_each_peers_ratio() {
        let results = json!({
            "machine": {"cpus": 2},
            "workloads": [
                {"id": "running_count_1k", "name": "running count by key, 1K keys", "rows": 4000000,
                 "engines": {
                    "sluice": {"rows_per_second": 8e6, "cpu_seconds_per_million_rows": 0.2, "peak_rss_mib": 200.4},
                    "spark": {"rows_per_second": 4e5, "cpu_seconds_per_million_rows": 4.0, "peak_rss_mib": 2900.0},
                 }},
                {"id": "running_count_10m", "title": "a long title", "rows": 10000000,
                 "engines": {"sluice": {"rows_per_second": 2e6}}},
            ],
            "latency_floor": {"trigger_ms": 50, "rows_per_batch": 1000,
                "engines": {"sluice": {"batches": 1000, "p50_ms": 5, "p99_ms": 10}}},
            "recovery": [{"kind": "restart", "keys": 1000, "engines": [
                {"engine": "sluice", "killed": "driver", "kill_to_commit_ms": 50},
                {"engine": "spark", "killed": "driver", "kill_to_commit_ms": 11002}]}],
        });
        let md = markdown(&results);
        assert!(md.starts_with("Last run, 2 cores, 4.00M jsonl rows (10.00M for 10M keys)"));
        assert!(
            md.contains("| running count by key, 1K keys | 8.00M | 0.40M (20.0×) | not comparable | 0.20 / 4.00 / - | 200 / 2900 / - |"),
            "{md}"
        );
        assert!(md.contains("| a long title | 2.00M |"), "{md}");
        assert!(md.contains("Sluice p50 5 ms, p99 10 ms"), "{md}");
        assert!(
            md.contains("the coordinator killed with 1000 keys of state: Sluice 50 ms (driver), Spark 11.0 s (driver)"),
            "{md}"
        );
    }
}
