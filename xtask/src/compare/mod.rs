//! `cargo xtask bench --compare`: Sluice, Spark and Flink on the same files and the same
//! query, their results checked against each other, timed run by run in alternating order.

mod checksum;
mod data;
mod engines;
pub mod headline;
mod peers;
pub mod procstat;
mod queries;
mod recovery;
mod report;
mod targets;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::bail;

use checksum::Checksum;
use data::Dataset;
use engines::{Engine, Run, Sluice};
use queries::{Input, Query};
pub use report::recovery_plot;
pub use targets::cluster_markdown as cluster_targets;

pub struct Workload {
    pub id: &'static str,
    /// A few words, for the README's table.
    pub name: &'static str,
    pub title: &'static str,
    pub query: Query,
    pub input: Input,
    pub rows: u64,
    pub files: u64,
}

fn workloads(rows: u64) -> Vec<Workload> {
    let files = 40;
    let w = |id, name, title, query, input| Workload {
        id,
        name,
        title,
        query,
        input,
        rows,
        files,
    };
    let events = |keys| Input::Events { keys };
    vec![
        w(
            "running_count_1k",
            "running count by key, 1K keys",
            "running count and sum by key, 1K keys, update mode",
            Query::RunningCount,
            events(1_000),
        ),
        w(
            "running_count_100k",
            "running count by key, 100K keys",
            "running count and sum by key, 100K keys, update mode",
            Query::RunningCount,
            events(100_000),
        ),
        Workload {
            rows: rows.max(10_000_000),
            ..w(
                "running_count_10m",
                "running count by key, 10M keys",
                "running count and sum by key, 10M keys, update mode (each key once)",
                Query::RunningCount,
                events(10_000_000),
            )
        },
        w(
            "batch_count",
            "count by page per batch",
            "count and sum by page within each batch (20 pages)",
            Query::BatchCount,
            events(1_000),
        ),
        w(
            "nexmark_q0",
            "Nexmark q0 (pass-through)",
            "Nexmark q0: every bid passed through",
            Query::Q0,
            Input::Bids,
        ),
        w(
            "nexmark_q1",
            "Nexmark q1 (projection)",
            "Nexmark q1: each bid's price converted to euros",
            Query::Q1,
            Input::Bids,
        ),
        w(
            "nexmark_q2",
            "Nexmark q2 (filter)",
            "Nexmark q2: the bids of every 123rd auction",
            Query::Q2,
            Input::Bids,
        ),
        w(
            "nexmark_q17",
            "Nexmark q17 (running aggregation per auction and day)",
            "Nexmark q17: per auction and day, bids by price range and price statistics, update mode",
            Query::Q17,
            Input::Bids,
        ),
        // A quarter of the rows: Spark runs q5 at about 16K rows/s.
        Workload {
            rows: (rows / 4).max(1),
            ..w(
                "nexmark_q5",
                "Nexmark q5 (hot items over sliding windows)",
                "Nexmark q5: the auctions with the most bids in each 10-second window sliding by 2 seconds, append mode",
                Query::Q5,
                Input::TimedBids,
            )
        },
        Workload {
            rows: (rows / 4).max(1),
            ..w(
                "nexmark_q7",
                "Nexmark q7 (highest bids per window)",
                "Nexmark q7: the bids at the highest price of their 10-second window (a stream joined to its own windowed maximum), append mode",
                Query::Q7,
                Input::TimedBids,
            )
        },
        w(
            "windowed",
            "10-second windows per page, append",
            "ad events counted per page in 10-second tumbling windows, append mode",
            Query::Windowed,
            Input::Ads,
        ),
        w(
            "yahoo",
            "Yahoo job (static join, windows)",
            "the Yahoo streaming benchmark: views joined to their campaigns (a static table), counted per campaign in 10-second windows, append mode",
            Query::Yahoo,
            Input::Ads,
        ),
    ]
}

/// What one workload gave: each engine's checksum and runs, and the engines left out and why.
pub struct Outcome<'a> {
    pub workload: &'a Workload,
    pub checksums: Vec<(&'static str, Checksum)>,
    pub runs: BTreeMap<&'static str, Vec<Run>>,
    pub skipped: Vec<(&'static str, String)>,
    /// How an engine ran this workload where it differs from its usual settings.
    pub notes: Vec<(&'static str, &'static str)>,
}

impl Outcome<'_> {
    /// The engines whose checksum differs from Sluice's.
    fn mismatches(&self) -> Vec<String> {
        let Some((_, reference)) = self.checksums.iter().find(|(e, _)| *e == "sluice") else {
            return vec!["sluice has no checksum".into()];
        };
        self.checksums
            .iter()
            .filter(|(_, c)| c != reference)
            .map(|(e, c)| {
                format!(
                    "{}: {e} {} != sluice {}",
                    self.workload.id,
                    c.to_json(),
                    reference.to_json()
                )
            })
            .collect()
    }
}

pub struct Options {
    pub runs: usize,
    pub rows: u64,
    /// Workload ids to run; all when empty.
    pub only: Vec<String>,
    /// Engines to run; all when empty.
    pub engines: Vec<String>,
    /// Write the report and results (a partial run's report is printed, not written).
    pub write: bool,
}

pub fn compare(root: &Path, bins: &Path, opts: &Options) -> anyhow::Result<()> {
    let mut engines: Vec<Box<dyn Engine>> = vec![Box::new(Sluice {
        bins: bins.to_path_buf(),
    })];
    let mut missing = Vec::new();
    let wanted = |name: &str| opts.engines.is_empty() || opts.engines.iter().any(|e| e == name);
    if let Some(e) =
        (opts.engines.iter()).find(|e| !["sluice", "spark", "flink"].contains(&e.as_str()))
    {
        bail!("no engine {e:?}; the engines: sluice, spark, flink");
    }
    for kind in [engines::PeerKind::Spark, engines::PeerKind::Flink] {
        if !wanted(kind.name()) {
            missing.push((kind.name(), "not asked for (--engines)".to_string()));
            continue;
        }
        match peers::ensure(root, kind) {
            Ok(peer) => engines.push(Box::new(peer)),
            Err(e) => missing.push((kind.name(), format!("{e:#}"))),
        }
    }
    for (name, why) in &missing {
        eprintln!("==> skipping {name}: {why}");
    }
    let all = workloads(opts.rows);
    let unknown: Vec<&String> = (opts.only.iter())
        .filter(|id| ![LATENCY, RESTART, EXECUTOR_KILL].contains(&id.as_str()))
        .filter(|id| !all.iter().any(|w| w.id == id.as_str()))
        .collect();
    if !unknown.is_empty() {
        let ids: Vec<&str> = all
            .iter()
            .map(|w| w.id)
            .chain([LATENCY, RESTART, EXECUTOR_KILL])
            .collect();
        bail!("no workload {unknown:?}; the workloads: {}", ids.join(", "));
    }
    let workloads: Vec<Workload> = (all.into_iter())
        .filter(|w| opts.only.is_empty() || opts.only.iter().any(|id| id == w.id))
        .collect();
    let data_root = root.join("target/bench-data");
    let mut outcomes = Vec::new();
    for w in &workloads {
        let data = Dataset::ensure(&data_root, w.input, w.rows, w.files)?;
        outcomes.push(measure(w, &data, &engines, opts.runs)?);
    }
    let asked = |id: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == id);
    let latency = if asked(LATENCY) {
        latency_floors(&engines)?
    } else {
        Latency::default()
    };
    let kinds: Vec<recovery::Kind> = [
        (RESTART, recovery::Kind::Restart),
        (EXECUTOR_KILL, recovery::Kind::ExecutorKill),
    ]
    .into_iter()
    .filter(|(id, _)| asked(id))
    .map(|(_, kind)| kind)
    .collect();
    let recoveries = recovery::measure(root, &engines, opts.runs, &kinds)?;
    report::write(
        root,
        &engines,
        &missing,
        &outcomes,
        &latency,
        &recoveries,
        opts.write,
    )?;
    let mismatches: Vec<String> = outcomes.iter().flat_map(|o| o.mismatches()).collect();
    if !mismatches.is_empty() {
        bail!("the engines disagree:\n{}", mismatches.join("\n"));
    }
    Ok(())
}

/// Checks, then times, one workload on every engine that can run it. A peer that fails is
/// reported and left out; Sluice failing fails the comparison.
fn measure<'a>(
    w: &'a Workload,
    data: &Dataset,
    engines: &[Box<dyn Engine>],
    runs: usize,
) -> anyhow::Result<Outcome<'a>> {
    let mut out = Outcome {
        workload: w,
        checksums: Vec::new(),
        runs: BTreeMap::new(),
        skipped: Vec::new(),
        notes: Vec::new(),
    };
    let mut active: Vec<&dyn Engine> = Vec::new();
    for e in engines {
        if let Some(why) = e.unsupported(w.query) {
            out.skipped.push((e.name(), why.to_string()));
            continue;
        }
        let scratch = tempfile::tempdir()?;
        eprintln!("==> {}: checking {}", w.id, e.name());
        match e.check(w, data, scratch.path()) {
            Ok(c) => {
                out.checksums.push((e.name(), c));
                (out.notes).extend(e.notes(w).into_iter().map(|n| (e.name(), n)));
                active.push(e.as_ref());
            }
            Err(err) if e.name() != "sluice" => out
                .skipped
                .push((e.name(), format!("check run failed: {err:#}"))),
            Err(err) => return Err(err),
        }
    }
    // Alternate the order run by run, so no engine always runs on a warm or a cold page cache.
    for run in 0..runs {
        for i in 0..active.len() {
            let e = active[(i + run) % active.len()];
            let scratch = tempfile::tempdir()?;
            let r = e.run(w, data, scratch.path())?;
            eprintln!(
                "    {} run {}: {:.0} rows/s, {:.2} CPU-s per M rows, {} MiB peak",
                e.name(),
                run + 1,
                r.rows_per_second(),
                r.cpu_seconds_per_million(),
                r.peak_rss_bytes >> 20
            );
            out.runs.entry(e.name()).or_default().push(r);
        }
    }
    Ok(out)
}

/// The ids `--only` selects the latency floor and the recovery workloads by.
const LATENCY: &str = "latency_floor";
const RESTART: &str = "restart";
const EXECUTOR_KILL: &str = "executor_kill";

/// Each engine's small batches, end to end; and the engines left out and why.
#[derive(Default)]
pub struct Latency {
    pub batch_ms: BTreeMap<&'static str, Vec<u64>>,
    pub skipped: Vec<(&'static str, String)>,
}

/// One run of the latency floor per engine: over 1,000 batches, the distribution is the
/// measure, so one run each rather than medians of runs.
fn latency_floors(engines: &[Box<dyn Engine>]) -> anyhow::Result<Latency> {
    let mut out = Latency::default();
    for e in engines {
        eprintln!("==> latency floor: {}", e.name());
        let scratch = tempfile::tempdir()?;
        match e.latency_floor(scratch.path()) {
            Ok(ms) => {
                let mut sorted = ms.clone();
                sorted.sort_unstable();
                eprintln!(
                    "    {} batches, p50 {} ms, p99 {} ms",
                    ms.len(),
                    crate::bench::percentile(&sorted, 0.5),
                    crate::bench::percentile(&sorted, 0.99)
                );
                out.batch_ms.insert(e.name(), ms);
            }
            Err(err) if e.name() != "sluice" => out.skipped.push((e.name(), format!("{err:#}"))),
            Err(err) => return Err(err),
        }
    }
    Ok(out)
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn a_peer_with_other_totals_is_a_mismatch() {
        let w = &workloads(10)[0];
        let batches = |n: i64| BTreeMap::from([(0, vec![json!({"key": 1, "n": n, "total": 2})])]);
        let checksum = |b| w.query.checksum().checksum(&b);
        let outcome = Outcome {
            workload: w,
            checksums: vec![
                ("sluice", checksum(batches(1))),
                ("spark", checksum(batches(1))),
                ("flink", checksum(batches(2))),
            ],
            runs: BTreeMap::new(),
            skipped: Vec::new(),
            notes: Vec::new(),
        };
        let m = outcome.mismatches();
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("flink"), "{m:?}");
    }
}
