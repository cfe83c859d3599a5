//! The performance issue's targets against one comparison's figures: each met or missed, by
//! how much, and for a miss what bounds it.

use std::fmt::Write as _;

use serde_json::Value;

use super::report::Medians;
use super::{Latency, Outcome, recovery};
use crate::bench::percentile;

/// What bounds the running count over jsonl files, from a profile (see the text).
const JSONL_BOUND: &str = "JSON decoding: in a `perf record -a -g` of running_count_1k on Sluice (release build, 4M rows, 2026-12-04), the task threads spent 54% of their CPU in arrow-json (its tape decoder 39%, the conversion of the tape into columns 15%) and 9% more in memchr over the lines, against under 5% in the aggregation; the same job over datagen, with no JSON, runs 89M rows/s (cluster.md, partial aggregation). 20M rows/s on jsonl needs a faster JSON decoder than arrow-json's";

/// One target: what is measured, the goal, the figure, and whether it is met.
struct Target {
    what: &'static str,
    goal: &'static str,
    figure: Option<f64>,
    /// Met when the figure is at least (or, for times, at most) this.
    threshold: f64,
    at_most: bool,
    unit: fn(f64) -> String,
    bound: Option<&'static str>,
}

impl Target {
    fn row(&self) -> String {
        let Some(v) = self.figure else {
            return format!(
                "| {} | {} | not measured in this run | - |",
                self.what, self.goal
            );
        };
        let met = if self.at_most {
            v <= self.threshold
        } else {
            v >= self.threshold
        };
        let verdict = match (met, self.at_most) {
            (true, _) => "met".to_string(),
            (false, false) => format!("missed: {:.2}× short", self.threshold / v.max(1e-9)),
            (false, true) => format!("missed: {:.2}× over", v / self.threshold.max(1e-9)),
        };
        let verdict = match (met, self.bound) {
            (false, Some(bound)) => format!("{verdict}; bound by {bound}"),
            _ => verdict,
        };
        format!(
            "| {} | {} | {} | {verdict} |",
            self.what,
            self.goal,
            (self.unit)(v)
        )
    }
}

fn rate(v: f64) -> String {
    format!("{:.2}M rows/s", v / 1e6)
}

fn times(v: f64) -> String {
    format!("{v:.1}×")
}

fn per_second(v: f64) -> String {
    format!("{v:.0}/s")
}

fn ms(v: f64) -> String {
    format!("{v:.0} ms")
}

/// The median rows per second of `engine` on workload `id`.
fn rows_per_second(outcomes: &[Outcome], id: &str, engine: &str) -> Option<f64> {
    let o = outcomes.iter().find(|o| o.workload.id == id)?;
    Some(Medians::of(o.runs.get(engine)?).rows_per_second)
}

/// Sluice's rate over a peer's, on workload `id`.
fn ratio(outcomes: &[Outcome], id: &str, peer: &str) -> Option<f64> {
    Some(rows_per_second(outcomes, id, "sluice")? / rows_per_second(outcomes, id, peer)?)
}

/// Sluice's median time from a kill to the next commit, for a case and what was killed.
fn recovery_ms(recoveries: &[recovery::Outcome], case: &str, killed: &str) -> Option<f64> {
    let o = recoveries.iter().find(|o| o.case.id == case)?;
    let ms = o.ms.get(&("sluice", killed))?;
    Some(super::median(ms.iter().map(|&m| m as f64).collect()))
}

pub fn markdown(
    md: &mut String,
    outcomes: &[Outcome],
    latency: &Latency,
    recoveries: &[recovery::Outcome],
) {
    let latency_ms = |q: f64| {
        let mut ms = latency.batch_ms.get("sluice")?.clone();
        ms.sort_unstable();
        Some(percentile(&ms, q) as f64)
    };
    let targets = [
        Target {
            what: "running count by 1K keys (jsonl files)",
            goal: "≥ 20M rows/s",
            figure: rows_per_second(outcomes, "running_count_1k", "sluice"),
            threshold: 20e6,
            at_most: false,
            unit: rate,
            bound: Some(JSONL_BOUND),
        },
        Target {
            what: "the same, Sluice ÷ Spark",
            goal: "≥ 5×",
            figure: ratio(outcomes, "running_count_1k", "spark"),
            threshold: 5.0,
            at_most: false,
            unit: times,
            bound: None,
        },
        Target {
            what: "the same, Sluice ÷ Flink",
            goal: "≥ 7×",
            figure: ratio(outcomes, "running_count_1k", "flink"),
            threshold: 7.0,
            at_most: false,
            unit: times,
            bound: None,
        },
        Target {
            what: "Nexmark q17",
            goal: "≥ 2M events/s",
            figure: rows_per_second(outcomes, "nexmark_q17", "sluice"),
            threshold: 2e6,
            at_most: false,
            unit: rate,
            bound: None,
        },
        Target {
            what: "1,000-row batches end to end, p50 (local checkpoints)",
            goal: "≤ 10 ms",
            figure: latency_ms(0.5),
            threshold: 10.0,
            at_most: true,
            unit: ms,
            bound: None,
        },
        Target {
            what: "the same, p99",
            goal: "≤ 25 ms",
            figure: latency_ms(0.99),
            threshold: 25.0,
            at_most: true,
            unit: ms,
            bound: None,
        },
        Target {
            what: "driver killed → next commit (1K keys)",
            goal: "≤ 1 s",
            figure: recovery_ms(recoveries, "restart_1k", "driver"),
            threshold: 1000.0,
            at_most: true,
            unit: ms,
            bound: None,
        },
        Target {
            what: "driver killed → next commit (1.5M keys)",
            goal: "≤ 1 s",
            figure: recovery_ms(recoveries, "restart_1_5m", "driver"),
            threshold: 1000.0,
            at_most: true,
            unit: ms,
            bound: None,
        },
        Target {
            what: "driver and every executor killed, 1.5M keys → next commit",
            goal: "≤ 2 s",
            figure: recovery_ms(recoveries, "restart_1_5m", "driver and both executors"),
            threshold: 2000.0,
            at_most: true,
            unit: ms,
            bound: None,
        },
    ];
    table(
        md,
        "The performance issue's targets on this 2-core machine, against the figures above. The others are Sluice's own and measured by `cargo xtask bench`, with their own table in cluster.md: batches on the S3 server (≤ 50 ms p50), batch time over 10M keys proportional to the keys changed, a batch of 1,000 splits × 1,000 partitions under a second, and one driver scheduling ≥ 20,000 tasks/s for 1,000 executors.",
        &targets,
    );
}

/// The targets `cargo xtask bench` measures on Sluice alone (cluster.json), as a table.
pub fn cluster_markdown(md: &mut String, r: &std::collections::BTreeMap<String, Value>) {
    let at = |workload: &str, path: &str| crate::bench::figure(r, workload, path).as_f64();
    // Proportional means the time per changed key stays put when ten times the keys change.
    let per_key_growth = at("state_scaling", "changed_10pct.batch_p50_ms")
        .zip(at("state_scaling", "changed_1pct.batch_p50_ms"))
        .map(|(ten, one)| ten / one.max(1e-9) / 10.0);
    let targets = [
        Target {
            what: "1,000-row batches, checkpoints on the S3 server (moto), p50",
            goal: "≤ 50 ms",
            figure: at("small_batches_s3", "end_to_end_ms.p50"),
            threshold: 50.0,
            at_most: true,
            unit: ms,
            bound: None,
        },
        Target {
            what: "10M keys of state: batch time per changed key, 10% changed over 1%",
            goal: "≤ 1.5× (1× is proportional)",
            figure: per_key_growth,
            threshold: 1.5,
            at_most: true,
            unit: times,
            bound: None,
        },
        Target {
            what: "trivial batch, 1,000 splits × 1,000 partitions",
            goal: "< 1 s",
            figure: at("wide_shuffle", "1000x1000.batch_ms.p50"),
            threshold: 999.0,
            at_most: true,
            unit: ms,
            bound: None,
        },
        Target {
            what: "one driver, 1,000 executors: tasks scheduled",
            goal: "≥ 20,000/s",
            figure: at("scheduling", "tasks_per_second.p50"),
            threshold: 20_000.0,
            at_most: false,
            unit: per_second,
            bound: None,
        },
    ];
    table(
        md,
        "The performance issue's targets measured here; the ones that need the peers are in report.md.",
        &targets,
    );
}

/// A "Targets" section: its intro, then one row per target.
fn table(md: &mut String, intro: &str, targets: &[Target]) {
    let _ = write!(
        md,
        "\n## Targets\n\n{intro}\n\n| target | goal | measured | |\n|---|---|---|---|\n"
    );
    for t in targets {
        let _ = writeln!(md, "{}", t.row());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(figure: f64, at_most: bool) -> Target {
        Target {
            what: "w",
            goal: "g",
            figure: Some(figure),
            threshold: 10.0,
            at_most,
            unit: ms,
            bound: Some("the disk"),
        }
    }

    #[test]
    fn a_miss_says_by_how_much_and_what_bounds_it() {
        assert_eq!(target(12.0, false).row(), "| w | g | 12 ms | met |");
        assert_eq!(
            target(5.0, false).row(),
            "| w | g | 5 ms | missed: 2.00× short; bound by the disk |"
        );
        assert_eq!(
            target(25.0, true).row(),
            "| w | g | 25 ms | missed: 2.50× over; bound by the disk |"
        );
        let unmeasured = Target {
            figure: None,
            ..target(0.0, true)
        };
        assert!(unmeasured.row().contains("not measured"));
    }

    #[test]
    fn the_cluster_targets_read_their_figures_from_cluster_json() {
        let r: std::collections::BTreeMap<String, Value> = serde_json::from_value(serde_json::json!({
            "small_batches_s3": {"end_to_end_ms": {"p50": 70}},
            "state_scaling": {"changed_1pct": {"batch_p50_ms": 35}, "changed_10pct": {"batch_p50_ms": 361}},
            "scheduling": {"tasks_per_second": {"p50": 82508}},
        }))
        .unwrap();
        let mut md = String::new();
        cluster_markdown(&mut md, &r);
        let row = |what: &str| md.lines().find(|l| l.contains(what)).unwrap().to_string();
        assert!(row("S3 server").ends_with("| 70 ms | missed: 1.40× over |"));
        assert!(row("per changed key").ends_with("| 1.0× | met |"));
        assert!(row("1,000 splits").contains("not measured"));
        assert!(row("tasks scheduled").ends_with("| 82508/s | met |"));
    }
}
