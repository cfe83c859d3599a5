//! The driver's Prometheus metrics (served by `--metrics-listen`), all named `sluice_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use sluice_scheduler::BatchReport;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub job: String,
}

type PerJob<M> = Family<JobLabel, M>;
type PerJobHistogram = Family<JobLabel, Histogram, fn() -> Histogram>;

/// From 5 ms to about 40 s.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

#[derive(Clone)]
pub struct DriverMetrics {
    batches: PerJob<Counter>,
    batch_failures: PerJob<Counter>,
    batch_duration: PerJobHistogram,
    input_rows: PerJob<Counter>,
    rows_per_second: PerJob<Gauge<f64, AtomicU64>>,
    task_retries: PerJob<Counter>,
    recomputed_partitions: PerJob<Counter>,
    checkpoint_write: PerJobHistogram,
    kafka_lag: PerJob<Gauge>,
    pub executors_alive: Gauge,
}

impl DriverMetrics {
    /// The metrics and the registry that serves them.
    pub fn new() -> (Self, Registry) {
        let m = DriverMetrics {
            batches: Family::default(),
            batch_failures: Family::default(),
            batch_duration: Family::new_with_constructor(seconds_histogram),
            input_rows: Family::default(),
            rows_per_second: Family::default(),
            task_retries: Family::default(),
            recomputed_partitions: Family::default(),
            checkpoint_write: Family::new_with_constructor(seconds_histogram),
            kafka_lag: Family::default(),
            executors_alive: Gauge::default(),
        };
        let mut r = Registry::with_prefix("sluice");
        r.register("batches", "Batches committed", m.batches.clone());
        r.register(
            "batch_failures",
            "Batches that failed and made the job restart from its checkpoint",
            m.batch_failures.clone(),
        );
        r.register_with_unit(
            "batch_duration",
            "Time from a batch's first task to its last",
            Unit::Seconds,
            m.batch_duration.clone(),
        );
        r.register(
            "input_rows",
            "Input rows of committed batches",
            m.input_rows.clone(),
        );
        r.register(
            "input_rows_per_second",
            "Input rows per second of the last committed batch's run time",
            m.rows_per_second.clone(),
        );
        r.register(
            "task_retries",
            "Tasks run again because they failed",
            m.task_retries.clone(),
        );
        r.register(
            "recomputed_partitions",
            "Tasks run again because an executor was lost or a shuffle fetch failed",
            m.recomputed_partitions.clone(),
        );
        r.register_with_unit(
            "checkpoint_write",
            "Time to write a batch's offsets and commit entries and commit its sink",
            Unit::Seconds,
            m.checkpoint_write.clone(),
        );
        r.register(
            "kafka_lag_records",
            "Records in the job's Kafka topics that the last planned batch leaves for later",
            m.kafka_lag.clone(),
        );
        r.register(
            "executors_alive",
            "Executors registered and alive",
            m.executors_alive.clone(),
        );
        (m, r)
    }

    fn label(job: &str) -> JobLabel {
        JobLabel {
            job: job.to_string(),
        }
    }

    pub fn batch_committed(&self, job: &str, report: &BatchReport, checkpoint_ms: u64) {
        let l = Self::label(job);
        self.batches.get_or_create(&l).inc();
        self.input_rows.get_or_create(&l).inc_by(report.rows_in);
        self.batch_duration
            .get_or_create(&l)
            .observe(report.duration_ms as f64 / 1000.0);
        let rate = report.rows_in as f64 * 1000.0 / report.duration_ms.max(1) as f64;
        self.rows_per_second.get_or_create(&l).set(rate);
        self.task_retries
            .get_or_create(&l)
            .inc_by(report.rerun.task_failed as u64);
        self.recomputed_partitions
            .get_or_create(&l)
            .inc_by((report.rerun.executor_lost + report.rerun.fetch_failed) as u64);
        self.checkpoint_write
            .get_or_create(&l)
            .observe(checkpoint_ms as f64 / 1000.0);
    }

    pub fn batch_failed(&self, job: &str) {
        self.batch_failures.get_or_create(&Self::label(job)).inc();
    }

    pub fn kafka_lag(&self, job: &str, records: u64) {
        self.kafka_lag
            .get_or_create(&Self::label(job))
            .set(records as i64);
    }
}
