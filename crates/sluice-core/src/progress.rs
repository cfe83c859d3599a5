//! The progress channel: what a task reports besides success, as named metrics and small named
//! payloads, so a new statistic needs a name, not a new field in five layers. The scheduler
//! folds the metrics of a batch's tasks (each by its own rule) and hands payloads to whoever
//! asked for them (range boundaries from key samples, the driver's console); the driver keeps
//! the folded metrics in the job's status.

use std::collections::BTreeMap;

/// Rows a task read (source rows for a source stage, fetched rows for a shuffle stage).
pub const ROWS_IN: &str = "rows_in";
/// Rows a task's stage produced (written to the sink or to its exchange).
pub const ROWS_OUT: &str = "rows_out";
/// Input records sent to the dead-letter table.
pub const DEAD_LETTERS: &str = "dead_letters";
/// Input rows a windowed operator dropped as late (`<operator>.late_rows`); plain, from a task
/// that wrote them to the late-rows table (which partitions the driver commits).
pub const LATE_ROWS: &str = "late_rows";
/// Rows and bytes of a stateful operator's partition after the batch.
pub const STATE_ROWS: &str = "state_rows";
pub const STATE_BYTES: &str = "state_bytes";
/// A windowed operator's open windows after the batch, one per key and window
/// (`<operator>.open_windows`); also `<operator>.state_rows` for every stateful operator.
pub const OPEN_WINDOWS: &str = "open_windows";
/// The earliest end among a windowed operator's open windows, in ms since the epoch
/// (`<operator>.next_window_end_ms`, folded by minimum): the window the watermark closes next.
pub const NEXT_WINDOW_END_MS: &str = "next_window_end_ms";
/// Rows a stateful operator took in and emitted: `<operator>.rows_in`, `<operator>.rows_out`
/// (e.g. `agg-1.rows_in`).
pub fn operator_rows(operator: &str, direction: &str) -> String {
    format!("{operator}.{direction}")
}

/// Per source split, the smallest and largest value of each timestamp column it read, in
/// milliseconds since the epoch: `<table>.<column>.min` (folded by minimum) and `.max` (by
/// maximum). Event-time watermarks are computed from these.
pub fn column_bound(table: &str, column: &str, bound: &str) -> String {
    format!("{table}.{column}.{bound}")
}

/// Where a task's time went, in milliseconds: reading its split or fetching its shuffle
/// blocks, reading its state partition, running the operators, writing the new state version,
/// and keeping its map output or writing the sink.
pub const INPUT_MS: &str = "input_ms";
pub const STATE_READ_MS: &str = "state_read_ms";
pub const COMPUTE_MS: &str = "compute_ms";
pub const STATE_WRITE_MS: &str = "state_write_ms";
pub const OUTPUT_MS: &str = "output_ms";
/// The phases above, in the order a task passes through them.
pub const TASK_PHASES: [&str; 5] = [
    INPUT_MS,
    STATE_READ_MS,
    COMPUTE_MS,
    STATE_WRITE_MS,
    OUTPUT_MS,
];
/// Payload: one sampled range-partition key (arrow-row encoded).
pub const KEY_SAMPLE: &str = "key_sample";
/// Payload: a console sink's first rows of the partition (Arrow IPC).
pub const CONSOLE: &str = "console";
/// Payload: which reduce partitions a hash map task wrote rows for, one bit each
/// ([`partition_bits`]); a reducer is sent only the map outputs that hold rows for it, so a
/// batch's fetches follow its data rather than maps × reducers (Spark's MapStatus does this).
pub const NONEMPTY_PARTITIONS: &str = "nonempty_partitions";

/// One bit per partition, set for those with rows.
pub fn partition_bits(nonempty: impl IntoIterator<Item = bool>) -> Vec<u8> {
    let mut bits = Vec::new();
    for (i, set) in nonempty.into_iter().enumerate() {
        if i % 8 == 0 {
            bits.push(0u8);
        }
        if set {
            bits[i / 8] |= 1 << (i % 8);
        }
    }
    bits
}

/// Whether partition `p` is set in [`partition_bits`]' output.
pub fn has_partition(bits: &[u8], p: u32) -> bool {
    bits.get(p as usize / 8)
        .is_some_and(|b| b & (1 << (p % 8)) != 0)
}

/// How a metric of many tasks becomes one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    Sum,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub value: i64,
    pub fold: Fold,
}

impl Metric {
    /// A counter: tasks' values add up.
    pub fn sum(value: u64) -> Metric {
        Metric {
            value: value as i64,
            fold: Fold::Sum,
        }
    }

    /// A bound whose batch value is the smallest over tasks.
    pub fn min(value: i64) -> Metric {
        Metric {
            value,
            fold: Fold::Min,
        }
    }

    fn fold(&mut self, other: Metric) {
        self.value = match self.fold {
            Fold::Sum => self.value.saturating_add(other.value),
            Fold::Min => self.value.min(other.value),
            Fold::Max => self.value.max(other.value),
        };
    }
}

/// Named metrics, folded by their own rules.
pub type Metrics = BTreeMap<String, Metric>;

/// What one task reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskProgress {
    pub metrics: Metrics,
    /// (name, bytes), in the order reported; a name may repeat.
    pub payloads: Vec<(String, Vec<u8>)>,
}

impl TaskProgress {
    /// Adds `value` to counter `name`.
    pub fn count(&mut self, name: &str, value: u64) -> &mut Self {
        self.record(name, Metric::sum(value))
    }

    /// Records `value` of a metric whose batch value is the smallest (`Fold::Min`) or the
    /// largest (`Fold::Max`) over tasks, e.g. event times.
    pub fn record(&mut self, name: &str, metric: Metric) -> &mut Self {
        match self.metrics.get_mut(name) {
            Some(m) => m.fold(metric),
            None => {
                self.metrics.insert(name.to_string(), metric);
            }
        }
        self
    }

    pub fn payload(&mut self, name: &str, bytes: Vec<u8>) -> &mut Self {
        self.payloads.push((name.to_string(), bytes));
        self
    }

    /// A metric's value, 0 when the task did not report it.
    pub fn get(&self, name: &str) -> i64 {
        self.metrics.get(name).map_or(0, |m| m.value)
    }

    /// The payloads named `name`, in the order reported.
    pub fn payloads<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.payloads
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }
}

/// Folds every task's metrics into one set.
pub fn fold<'a>(tasks: impl IntoIterator<Item = &'a TaskProgress>) -> Metrics {
    let mut all = TaskProgress::default();
    for t in tasks {
        for (name, m) in &t.metrics {
            all.record(name, *m);
        }
    }
    all.metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_fold_by_their_own_rule_and_payloads_keep_their_order() {
        let task = |rows, low, high| {
            let mut p = TaskProgress::default();
            p.count(ROWS_IN, rows)
                .record(
                    "t_min",
                    Metric {
                        value: low,
                        fold: Fold::Min,
                    },
                )
                .record(
                    "t_max",
                    Metric {
                        value: high,
                        fold: Fold::Max,
                    },
                )
                .payload(KEY_SAMPLE, vec![rows as u8]);
            p
        };
        let (a, b) = (task(3, 10, 20), task(4, 5, 15));
        let all = fold([&a, &b]);
        let value = |n: &str| all[n].value;
        assert_eq!((value(ROWS_IN), value("t_min"), value("t_max")), (7, 5, 20));
        assert_eq!(a.get(DEAD_LETTERS), 0);
        assert_eq!(a.payloads(KEY_SAMPLE).collect::<Vec<_>>(), vec![&[3u8][..]]);
        assert_eq!(a.payloads(CONSOLE).count(), 0);
    }

    #[test]
    fn partition_bits_round_trip() {
        let set = [3u32, 8, 9, 1000];
        let bits = partition_bits((0..1001).map(|p| set.contains(&p)));
        assert_eq!(bits.len(), 126);
        for p in 0..1010 {
            assert_eq!(has_partition(&bits, p), set.contains(&p), "partition {p}");
        }
    }
}
