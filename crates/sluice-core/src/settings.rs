//! Job settings: the `SET 'key' = 'value';` statements of a job file.

use crate::restart::RestartStrategy;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingError {
    #[error("unknown setting '{key}'; valid settings: {}", KNOWN.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "))]
    Unknown { key: String },
    #[error("setting '{key}' = '{value}' is invalid: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

/// Every setting a job may `SET`, with what it means (the README's reference repeats these).
pub const KNOWN: &[(&str, &str)] = &[
    (
        "name",
        "a human name for the job (default: the SQL file's name)",
    ),
    (
        "trigger",
        "'<duration>' such as '1s' or '500ms' (processing-time interval; '0' = as fast as possible, the default), 'once' or 'available_now'",
    ),
    ("partitions", "number of shuffle partitions (default 4)"),
    (
        "output_mode",
        "running aggregations (GROUP BY without _batch): 'update' (default; each batch emits the keys it changed with their new values; windows the watermark passed are dropped from state), 'complete' (each batch emits the whole table; nothing dropped) or 'append' (event-time windows only: each window once, in the first batch whose watermark is at or past its end)",
    ),
    (
        "no_data_batches",
        "'true' (default) or 'false': when the watermark moved and windows wait on it, run a batch even without new input so they close promptly",
    ),
    (
        "partial_aggregation",
        "'true' (default) or 'false': map tasks aggregate their rows per key before the shuffle (count, sum, min, max, avg), so one row per key and task crosses it instead of every input row",
    ),
    (
        "late_rows.table",
        "a declared table that receives the input rows event-time windows drop as late, as the windowed aggregation received them (committed with the batch)",
    ),
    (
        "state.ttl",
        "stream-stream inner joins without a time bound: a row leaves the join's state once the watermark has moved this far past the batch it arrived in (e.g. '1h'); results can be incomplete",
    ),
    (
        "watermark.policy",
        "with several event-time sources: 'min' (default; the slowest source's watermark) or 'max' (the fastest's); part of the checkpoint",
    ),
    (
        "state.snapshot_interval",
        "stateful operators: at least N batches between full state snapshots, deltas in between (default 10)",
    ),
    (
        "state.snapshot_changed_percent",
        "stateful operators: a snapshot is also due only once the deltas since the last one hold this many rows per 100 rows of state (default 100, so snapshots cost about what the batches changed; 0: every interval)",
    ),
    (
        "task.max_attempts",
        "attempts per task before the batch fails (default 4)",
    ),
    (
        "task.backoff",
        "delay before a task's first retry, doubled for each further one (default '200ms')",
    ),
    (
        "task.timeout",
        "a task running longer than this is failed and retried elsewhere (default '10m')",
    ),
    (
        "stage.max_attempts",
        "times a stage may lose its map outputs (executor lost, fetch failed) before the batch fails (default 4)",
    ),
    (
        "checkpoint.retain_batches",
        "offsets and commit entries kept in the checkpoint; older ones are compacted into one position record (default 100)",
    ),
    (
        "restart.strategy",
        "what to do when a batch fails in a way a retry may fix: 'exponential-backoff' (default), 'fixed-delay', 'failure-rate' or 'none'",
    ),
    (
        "restart.attempts",
        "fixed-delay: restarts before the job fails (default 3)",
    ),
    (
        "restart.delay",
        "fixed-delay and failure-rate: delay before a restart (default '1s')",
    ),
    (
        "restart.initial_backoff",
        "exponential-backoff: first delay (default '1s')",
    ),
    (
        "restart.max_backoff",
        "exponential-backoff: largest delay (default '60s')",
    ),
    (
        "restart.backoff_multiplier",
        "exponential-backoff: growth of the delay per restart (default 2.0)",
    ),
    (
        "restart.reset_backoff_after",
        "exponential-backoff: a job that ran this long without failing starts over at the first delay (default '10m')",
    ),
    (
        "restart.max_failures_per_interval",
        "failure-rate: failures allowed within the interval (default 3)",
    ),
    (
        "restart.failure_rate_interval",
        "failure-rate: the interval (default '5m')",
    ),
    (
        "sluice.test.fail_task",
        "test only: '<stage>:<partition>' fails that task's first attempt in every batch",
    ),
    (
        "sluice.test.delay_task",
        "test only: '<stage>:<ms>' delays the first attempt of that stage's tasks before they read input",
    ),
    (
        "sluice.test.pause_at",
        "test only: '<step>:<batch>:<duration>' pauses the driver at a step of a batch (before_offsets, before_tasks, before_commit, after_commit)",
    ),
    (
        "sluice.test.panic_at",
        "test only: '<step>:<batch>' makes the driver's loop for the job panic at a step of a batch",
    ),
    (
        "sluice.test.delay_after_input",
        "test only: '<stage>:<ms>' delays the first attempt of that stage's tasks after they read input",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Start a batch every interval (immediately after the previous one if it overran).
    ProcessingTime(Duration),
    /// One batch with all available input, then finish.
    Once,
    /// All input available at start, in as many batches as rate limits need, then finish.
    AvailableNow,
}

impl Trigger {
    pub fn is_bounded(&self) -> bool {
        !matches!(self, Trigger::ProcessingTime(_))
    }
}

/// What a running aggregation emits each batch (Spark's output modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// The keys the batch changed, with their new values.
    Update,
    /// The whole result table.
    Complete,
    /// Each event-time window once, when the watermark passes its end; then it is dropped.
    Append,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    pub name: Option<String>,
    pub trigger: Trigger,
    pub partitions: u32,
    /// Set explicitly; a running aggregation defaults to update, other jobs refuse it.
    pub output_mode: Option<OutputMode>,
    pub snapshot_interval: u64,
    /// Delta rows since the last snapshot, per 100 state rows, before the next one is due.
    pub snapshot_changed_percent: u64,
    pub watermark_policy: crate::watermark::WatermarkPolicy,
    pub no_data_batches: bool,
    /// Map tasks pre-aggregate before the shuffle (`SET 'partial_aggregation'`).
    pub partial_aggregation: bool,
    /// Where late rows go, if anywhere (a declared table's name).
    pub late_rows_table: Option<String>,
    /// How long (in event time) an unbounded join keeps a row (`SET 'state.ttl'`).
    pub state_ttl: Option<Duration>,
    pub task_max_attempts: u32,
    pub task_backoff: Duration,
    pub task_timeout: Duration,
    pub stage_max_attempts: u32,
    /// Offsets and commit entries kept; older ones are compacted away.
    pub retain_batches: u64,
    pub restart: crate::restart::RestartStrategy,
    pub test_fail_task: Option<(u32, u32)>,
    /// (stage, delay) before / after a first attempt reads its input.
    pub test_delay_task: Option<(u32, Duration)>,
    pub test_delay_after_input: Option<(u32, Duration)>,
    /// (step, batch, pause) for the driver's batch loop.
    pub test_pause_at: Option<(String, u64, Duration)>,
    /// (step, batch) at which the driver's batch loop panics.
    pub test_panic_at: Option<(String, u64)>,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            name: None,
            trigger: Trigger::ProcessingTime(Duration::ZERO),
            partitions: 4,
            output_mode: None,
            snapshot_interval: 10,
            snapshot_changed_percent: 100,
            watermark_policy: Default::default(),
            no_data_batches: true,
            partial_aggregation: true,
            late_rows_table: None,
            state_ttl: None,
            task_max_attempts: 4,
            task_backoff: Duration::from_millis(200),
            task_timeout: Duration::from_secs(600),
            stage_max_attempts: 4,
            retain_batches: 100,
            restart: crate::restart::RestartStrategy::default(),
            test_fail_task: None,
            test_delay_task: None,
            test_delay_after_input: None,
            test_pause_at: None,
            test_panic_at: None,
        }
    }
}

fn boolean(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

impl JobSettings {
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Self, SettingError> {
        let mut s = JobSettings {
            restart: restart_strategy(map)?,
            ..JobSettings::default()
        };
        for (key, value) in map {
            if key.starts_with("restart.") {
                continue;
            }
            let invalid = |reason: &str| SettingError::Invalid {
                key: key.clone(),
                value: value.clone(),
                reason: reason.to_string(),
            };
            let whole = |lo: u64, hi: u64| {
                value
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (lo..=hi).contains(n))
                    .ok_or_else(|| invalid(&format!("expected a whole number from {lo} to {hi}")))
            };
            match key.as_str() {
                "name" => s.name = Some(value.clone()),
                "trigger" => s.trigger = parse_trigger(value).map_err(|r| invalid(&r))?,
                "partitions" => s.partitions = whole(1, 4096)? as u32,
                "task.max_attempts" => s.task_max_attempts = whole(1, 100)? as u32,
                "output_mode" => {
                    s.output_mode = Some(match value.trim().to_ascii_lowercase().as_str() {
                        "update" => OutputMode::Update,
                        "complete" => OutputMode::Complete,
                        "append" => OutputMode::Append,
                        _ => return Err(invalid("expected 'update', 'complete' or 'append'")),
                    })
                }
                "state.snapshot_interval" => s.snapshot_interval = whole(1, 1_000_000)?,
                "state.snapshot_changed_percent" => {
                    s.snapshot_changed_percent = whole(0, 1_000_000)?
                }
                "no_data_batches" => {
                    s.no_data_batches =
                        boolean(value).ok_or_else(|| invalid("expected 'true' or 'false'"))?
                }
                "partial_aggregation" => {
                    s.partial_aggregation =
                        boolean(value).ok_or_else(|| invalid("expected 'true' or 'false'"))?
                }
                "late_rows.table" => match value.trim() {
                    "" => return Err(invalid("expected a declared table's name")),
                    table => s.late_rows_table = Some(table.to_string()),
                },
                "state.ttl" => {
                    s.state_ttl = parse_duration(value)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .map(Some)
                        .ok_or_else(|| invalid("expected a duration such as '1h' or '10m'"))?
                }
                "watermark.policy" => {
                    use crate::watermark::WatermarkPolicy as P;
                    s.watermark_policy = match value.trim().to_ascii_lowercase().as_str() {
                        "min" => P::Min,
                        "max" => P::Max,
                        _ => return Err(invalid("expected 'min' or 'max'")),
                    }
                }
                "task.backoff" => {
                    s.task_backoff = parse_duration(value).map_err(|r| invalid(&r))?
                }
                "task.timeout" => {
                    s.task_timeout = parse_duration(value)
                        .ok()
                        .filter(|d| *d >= Duration::from_millis(100))
                        .ok_or_else(|| invalid("expected a duration of at least '100ms'"))?
                }
                "checkpoint.retain_batches" => s.retain_batches = whole(1, u32::MAX as u64)?,
                "stage.max_attempts" => s.stage_max_attempts = whole(1, 100)? as u32,
                "sluice.test.pause_at" | "sluice.test.panic_at" => {
                    const STEPS: [&str; 4] = [
                        "before_offsets",
                        "before_tasks",
                        "before_commit",
                        "after_commit",
                    ];
                    let parts: Vec<&str> = value.split(':').map(str::trim).collect();
                    let parsed = match parts.as_slice() {
                        [step, batch, pause] if STEPS.contains(step) => batch
                            .parse()
                            .ok()
                            .zip(parse_duration(pause).ok())
                            .map(|(b, d)| (step.to_string(), b, d)),
                        [step, batch] if STEPS.contains(step) && key == "sluice.test.panic_at" => {
                            batch
                                .parse()
                                .ok()
                                .map(|b| (step.to_string(), b, Duration::ZERO))
                        }
                        _ => None,
                    };
                    if key == "sluice.test.panic_at" {
                        let (step, batch, _) =
                            parsed.ok_or_else(|| invalid("expected '<step>:<batch>'"))?;
                        s.test_panic_at = Some((step, batch));
                        continue;
                    }
                    s.test_pause_at = Some(parsed.ok_or_else(|| {
                        invalid(&format!(
                            "expected '<step>:<batch>:<duration>' with step one of {}",
                            STEPS.join(", ")
                        ))
                    })?);
                }
                "sluice.test.delay_task" | "sluice.test.delay_after_input" => {
                    let parsed = value
                        .split_once(':')
                        .and_then(|(a, b)| Some((a.trim().parse().ok()?, parse_duration(b).ok()?)))
                        .ok_or_else(|| invalid("expected '<stage>:<duration>'"))?;
                    if key == "sluice.test.delay_task" {
                        s.test_delay_task = Some(parsed);
                    } else {
                        s.test_delay_after_input = Some(parsed);
                    }
                }
                "sluice.test.fail_task" => {
                    let (stage, part) = value
                        .split_once(':')
                        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
                        .ok_or_else(|| invalid("expected '<stage>:<partition>'"))?;
                    s.test_fail_task = Some((stage, part));
                }
                _ => return Err(SettingError::Unknown { key: key.clone() }),
            }
        }
        Ok(s)
    }
}

/// Builds the restart strategy from the `restart.*` settings.
fn restart_strategy(map: &BTreeMap<String, String>) -> Result<RestartStrategy, SettingError> {
    let invalid = |key: &str, reason: &str| SettingError::Invalid {
        key: key.to_string(),
        value: map.get(key).cloned().unwrap_or_default(),
        reason: reason.to_string(),
    };
    let duration = |key: &str, default: &str| {
        parse_duration(map.get(key).map(String::as_str).unwrap_or(default))
            .map_err(|r| invalid(key, &r))
    };
    let number = |key: &str, default: u32, lo: u32| -> Result<u32, SettingError> {
        const HI: u32 = 1_000_000;
        map.get(key).map_or(Ok(default), |v| {
            v.trim()
                .parse()
                .ok()
                .filter(|n| (lo..=HI).contains(n))
                .ok_or_else(|| invalid(key, &format!("expected a whole number from {lo} to {HI}")))
        })
    };
    let strategy = map
        .get("restart.strategy")
        .map(|s| s.trim().to_ascii_lowercase());
    let (strategy, allowed): (RestartStrategy, &[&str]) =
        match strategy.as_deref().unwrap_or("exponential-backoff") {
            "none" | "no-restart" => (RestartStrategy::None, &[]),
            "fixed-delay" => (
                RestartStrategy::FixedDelay {
                    attempts: number("restart.attempts", 3, 0)?,
                    delay: duration("restart.delay", "1s")?,
                },
                &["restart.attempts", "restart.delay"],
            ),
            "exponential-backoff" | "exponential-delay" => (
                exponential_backoff(map, &duration, &invalid)?,
                &[
                    "restart.initial_backoff",
                    "restart.max_backoff",
                    "restart.backoff_multiplier",
                    "restart.reset_backoff_after",
                ],
            ),
            "failure-rate" => (
                RestartStrategy::FailureRate {
                    max_failures: number("restart.max_failures_per_interval", 3, 0)?,
                    interval: duration("restart.failure_rate_interval", "5m")?,
                    delay: duration("restart.delay", "1s")?,
                },
                &[
                    "restart.max_failures_per_interval",
                    "restart.failure_rate_interval",
                    "restart.delay",
                ],
            ),
            _ => {
                return Err(invalid(
                    "restart.strategy",
                    "valid strategies: exponential-backoff, fixed-delay, failure-rate, none",
                ));
            }
        };
    for key in map
        .keys()
        .filter(|k| k.starts_with("restart.") && *k != "restart.strategy")
    {
        if !allowed.contains(&key.as_str()) {
            return Err(invalid(
                key,
                &format!(
                    "not a setting of this restart strategy; it takes: {}",
                    if allowed.is_empty() {
                        "nothing".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ),
            ));
        }
    }
    Ok(strategy)
}

fn exponential_backoff(
    map: &BTreeMap<String, String>,
    duration: &dyn Fn(&str, &str) -> Result<Duration, SettingError>,
    invalid: &dyn Fn(&str, &str) -> SettingError,
) -> Result<RestartStrategy, SettingError> {
    let initial = duration("restart.initial_backoff", "1s")?;
    let max = duration("restart.max_backoff", "60s")?;
    if max < initial {
        return Err(invalid(
            "restart.max_backoff",
            &format!("must be at least restart.initial_backoff ({initial:?})"),
        ));
    }
    // Finite: an infinite multiplier turns the first retry's delay into forever.
    let multiplier = map
        .get("restart.backoff_multiplier")
        .map_or(Ok(2.0), |v| v.trim().parse::<f64>())
        .ok()
        .filter(|m| (1.0..=1000.0).contains(m))
        .ok_or_else(|| {
            invalid(
                "restart.backoff_multiplier",
                "expected a finite number from 1.0 to 1000",
            )
        })?;
    Ok(RestartStrategy::ExponentialBackoff {
        initial,
        max,
        multiplier,
        reset_after: duration("restart.reset_backoff_after", "10m")?,
    })
}

fn parse_trigger(value: &str) -> Result<Trigger, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "once" => Ok(Trigger::Once),
        "available_now" | "availablenow" => Ok(Trigger::AvailableNow),
        other => parse_duration(other).map(Trigger::ProcessingTime),
    }
}

/// Parses '250ms', '1s', '1.5s', '2m', '1h' or a bare number of milliseconds ('0').
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let v = value.trim().to_ascii_lowercase();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("expected a duration such as '500ms', '1s' or '2m', got '{value}'"))?;
    let secs = match unit.trim() {
        "" | "ms" => n / 1000.0,
        "s" | "sec" | "second" | "seconds" => n,
        "m" | "min" | "minute" | "minutes" => n * 60.0,
        "h" | "hour" | "hours" => n * 3600.0,
        u => return Err(format!("unknown duration unit '{u}' (use ms, s, m or h)")),
    };
    if !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("duration '{value}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_triggers_and_partitions() {
        let s = JobSettings::from_map(&map(&[("trigger", "1s"), ("partitions", "8")])).unwrap();
        assert_eq!(s.trigger, Trigger::ProcessingTime(Duration::from_secs(1)));
        assert_eq!(s.partitions, 8);
        let s = JobSettings::from_map(&map(&[("trigger", "available_now")])).unwrap();
        assert_eq!(s.trigger, Trigger::AvailableNow);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    }

    #[test]
    fn restart_settings_build_the_strategy_and_reject_foreign_keys() {
        let s = JobSettings::from_map(&map(&[
            ("restart.strategy", "fixed-delay"),
            ("restart.attempts", "5"),
            ("restart.delay", "2s"),
        ]))
        .unwrap();
        assert_eq!(
            s.restart,
            RestartStrategy::FixedDelay {
                attempts: 5,
                delay: Duration::from_secs(2)
            }
        );
        assert_eq!(JobSettings::default().restart, RestartStrategy::default());
        let err = JobSettings::from_map(&map(&[
            ("restart.strategy", "none"),
            ("restart.delay", "1s"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("'restart.delay'") && err.contains("takes: nothing"),
            "{err}"
        );
        let err = JobSettings::from_map(&map(&[("restart.strategy", "sometimes")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("fixed-delay, failure-rate, none"), "{err}");
    }

    #[test]
    fn every_documented_setting_is_accepted() {
        let sample = |key: &str| match key {
            "trigger" => "1s",
            "task.backoff" | "task.timeout" | "restart.delay" | "state.ttl" => "1s",
            "sluice.test.fail_task" => "0:0",
            "sluice.test.delay_task" | "sluice.test.delay_after_input" => "0:1s",
            "sluice.test.pause_at" => "before_tasks:1:1s",
            "sluice.test.panic_at" => "before_tasks:1",
            "name" => "x",
            "output_mode" => "complete",
            "watermark.policy" => "max",
            "no_data_batches" | "partial_aggregation" => "false",
            _ => "2",
        };
        for (key, _) in KNOWN.iter().filter(|(k, _)| !k.starts_with("restart.")) {
            JobSettings::from_map(&map(&[(key, sample(key))]))
                .unwrap_or_else(|e| panic!("{key}: {e}"));
        }
    }

    #[test]
    fn unknown_and_invalid_settings_are_named() {
        let err = JobSettings::from_map(&map(&[("trigerr", "1s")])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("'trigerr'") && msg.contains("trigger"),
            "{msg}"
        );
        let err = JobSettings::from_map(&map(&[("partitions", "zero")])).unwrap_err();
        assert!(err.to_string().contains("partitions"), "{err}");
        let err = JobSettings::from_map(&map(&[("trigger", "5 parsecs")])).unwrap_err();
        assert!(err.to_string().contains("unknown duration unit"), "{err}");
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        for (key, value) in [
            ("restart.backoff_multiplier", "inf"),
            ("restart.backoff_multiplier", "NaN"),
            ("restart.backoff_multiplier", "0.5"),
            ("restart.max_backoff", "10ms"),
            ("partitions", "0"),
            ("partitions", "100000"),
            ("task.max_attempts", "-1"),
            ("state.snapshot_interval", "0"),
            ("state.snapshot_changed_percent", "-5"),
            ("checkpoint.retain_batches", "0"),
            ("trigger", "-1s"),
            ("task.backoff", "1e400s"),
        ] {
            let err = JobSettings::from_map(&map(&[(key, value)]))
                .err()
                .unwrap_or_else(|| panic!("{key} = {value} was accepted"));
            assert!(err.to_string().contains(key), "{err}");
        }
        let mut failure_rate = map(&[("restart.strategy", "failure-rate")]);
        failure_rate.insert("restart.max_failures_per_interval".into(), "1e9".into());
        assert!(JobSettings::from_map(&failure_rate).is_err());
    }
}
