//! Job restart strategies, named as Flink names them. When a batch fails for a reason a retry
//! might fix (task attempts or stage attempts exhausted, a storage error), the job restarts from
//! its checkpoint after a delay; the strategy decides the delay and when to give up.

use std::collections::VecDeque;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum RestartStrategy {
    /// Never restart: the first failure fails the job.
    None,
    /// Up to `attempts` restarts, `delay` apart.
    FixedDelay { attempts: u32, delay: Duration },
    /// Unbounded restarts with a delay that grows from `initial` by `multiplier` up to `max`,
    /// and starts over once the job ran `reset_after` without failing.
    ExponentialBackoff {
        initial: Duration,
        max: Duration,
        multiplier: f64,
        reset_after: Duration,
    },
    /// Restart after `delay` unless more than `max_failures` happened within `interval`.
    FailureRate {
        max_failures: u32,
        interval: Duration,
        delay: Duration,
    },
}

impl Default for RestartStrategy {
    fn default() -> Self {
        RestartStrategy::ExponentialBackoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            reset_after: Duration::from_secs(600),
        }
    }
}

/// The strategy plus the failures seen so far.
#[derive(Debug, Clone)]
pub struct Restarts {
    strategy: RestartStrategy,
    restarts: u32,
    failures_ms: VecDeque<u64>,
    next_backoff: Option<Duration>,
    last_failure_ms: Option<u64>,
}

impl Restarts {
    pub fn new(strategy: RestartStrategy) -> Self {
        Restarts {
            strategy,
            restarts: 0,
            failures_ms: VecDeque::new(),
            next_backoff: None,
            last_failure_ms: None,
        }
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// A failure at `now_ms`: the delay before restarting, or `Err` with why not to.
    pub fn on_failure(&mut self, now_ms: u64) -> Result<Duration, String> {
        let decision = match &self.strategy {
            RestartStrategy::None => Err("the restart strategy is 'none'".to_string()),
            RestartStrategy::FixedDelay { attempts, delay } => {
                if self.restarts < *attempts {
                    Ok(*delay)
                } else {
                    Err(format!(
                        "fixed-delay restart attempts ({attempts}) exhausted"
                    ))
                }
            }
            RestartStrategy::ExponentialBackoff {
                initial,
                max,
                multiplier,
                reset_after,
            } => {
                let quiet = self
                    .last_failure_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) >= reset_after.as_millis() as u64);
                let delay = match self.next_backoff {
                    Some(d) if !quiet => d,
                    _ => *initial,
                };
                self.next_backoff = Some(delay.mul_f64(*multiplier).min(*max));
                Ok(delay)
            }
            RestartStrategy::FailureRate {
                max_failures,
                interval,
                delay,
            } => {
                self.failures_ms.push_back(now_ms);
                let window = interval.as_millis() as u64;
                while self
                    .failures_ms
                    .front()
                    .is_some_and(|t| now_ms.saturating_sub(*t) > window)
                {
                    self.failures_ms.pop_front();
                }
                if self.failures_ms.len() as u32 > *max_failures {
                    Err(format!(
                        "more than {max_failures} failures within {} s",
                        interval.as_secs()
                    ))
                } else {
                    Ok(*delay)
                }
            }
        };
        self.last_failure_ms = Some(now_ms);
        if decision.is_ok() {
            self.restarts += 1;
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_delay_gives_up_after_its_attempts() {
        let mut r = Restarts::new(RestartStrategy::FixedDelay {
            attempts: 2,
            delay: Duration::from_millis(10),
        });
        assert_eq!(r.on_failure(0), Ok(Duration::from_millis(10)));
        assert_eq!(r.on_failure(1), Ok(Duration::from_millis(10)));
        assert!(r.on_failure(2).unwrap_err().contains("exhausted"));
        assert_eq!(r.restarts(), 2);
    }

    #[test]
    fn exponential_backoff_grows_caps_and_resets() {
        let mut r = Restarts::new(RestartStrategy::ExponentialBackoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(3),
            multiplier: 2.0,
            reset_after: Duration::from_secs(100),
        });
        let delays: Vec<u64> = (0..4).map(|i| r.on_failure(i).unwrap().as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 3, 3]);
        assert_eq!(
            r.on_failure(200_000).unwrap().as_secs(),
            1,
            "quiet for 100 s: reset"
        );
    }

    #[test]
    fn failure_rate_counts_failures_in_the_window() {
        let mut r = Restarts::new(RestartStrategy::FailureRate {
            max_failures: 2,
            interval: Duration::from_secs(10),
            delay: Duration::from_millis(5),
        });
        assert!(r.on_failure(0).is_ok());
        assert!(r.on_failure(1000).is_ok());
        assert!(r.on_failure(2000).is_err(), "third failure within 10 s");
        let mut r = Restarts::new(RestartStrategy::FailureRate {
            max_failures: 2,
            interval: Duration::from_secs(10),
            delay: Duration::from_millis(5),
        });
        for t in [0, 6_000, 12_000, 18_000] {
            assert!(
                r.on_failure(t).is_ok(),
                "failures 6 s apart stay under the rate"
            );
        }
    }
}
