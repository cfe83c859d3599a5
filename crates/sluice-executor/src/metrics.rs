//! The executor's Prometheus metrics (served by `--metrics-listen`), all named `sluice_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone)]
pub struct ExecutorMetrics {
    pub tasks: Family<Outcome, Counter>,
    pub tasks_running: Gauge,
    pub task_duration: Histogram,
    pub state_rows: Gauge,
    pub state_bytes: Gauge,
}

impl ExecutorMetrics {
    pub fn new() -> (Self, Registry) {
        let m = ExecutorMetrics {
            tasks: Family::default(),
            tasks_running: Gauge::default(),
            task_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            state_rows: Gauge::default(),
            state_bytes: Gauge::default(),
        };
        let mut r = Registry::with_prefix("sluice");
        r.register(
            "tasks",
            "Tasks this executor ran, by outcome",
            m.tasks.clone(),
        );
        r.register(
            "tasks_running",
            "Tasks running now",
            m.tasks_running.clone(),
        );
        r.register_with_unit(
            "task_duration",
            "Time one task took",
            Unit::Seconds,
            m.task_duration.clone(),
        );
        r.register(
            "state_rows",
            "Rows of running-aggregation state held in memory (latest version of each partition)",
            m.state_rows.clone(),
        );
        r.register_with_unit(
            "state",
            "Memory held by running-aggregation state (latest version of each partition)",
            Unit::Bytes,
            m.state_bytes.clone(),
        );
        (m, r)
    }

    pub fn task_done(&self, ok: bool, seconds: f64) {
        let outcome = if ok { "succeeded" } else { "failed" };
        self.tasks.get_or_create(&Outcome { outcome }).inc();
        self.task_duration.observe(seconds);
    }
}
