//! Event time: how far each source's events have got, and the watermark that trails them.
//! Pure state, driven by the job runner: a committed batch reports the largest event time each
//! source read (through the progress channel); the next batch's watermark is computed from
//! every batch committed before it and logged in its offsets entry before any task runs, so a
//! rerun uses exactly the watermark its first run used.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A source table's event-time column and how far the watermark trails its largest value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTime {
    pub column: String,
    pub delay_ms: u64,
}

/// How the job's watermark combines the sources' (`SET 'watermark.policy'`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatermarkPolicy {
    /// The slowest source sets the pace; nothing a slow source still sends is late (default).
    #[default]
    Min,
    /// The fastest source sets the pace; a slow source's rows may be dropped as late.
    Max,
}

impl WatermarkPolicy {
    pub fn name(self) -> &'static str {
        match self {
            WatermarkPolicy::Min => "min",
            WatermarkPolicy::Max => "max",
        }
    }
}

/// What the watermark depends on, as logged with each batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermarks {
    /// Per source table with an event-time column, the largest event time (ms since the epoch)
    /// read by the batches committed so far; absent until the source has had a row.
    #[serde(default)]
    pub max_event_ms: BTreeMap<String, i64>,
    /// The job's watermark (ms since the epoch) for the batch this is logged with; `None`
    /// until every source the policy waits for has had a row.
    #[serde(default)]
    pub watermark_ms: Option<i64>,
    /// The watermark of the batch before: an operator fed by another stateful operator judges
    /// late rows by it, so rows its upstream emitted as the watermark moved are not dropped
    /// (Spark's SPARK-40925 rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_ms: Option<i64>,
}

impl Watermarks {
    /// Takes in the largest event time a committed batch read from `table`.
    pub fn observe(&mut self, table: &str, max_ms: i64) {
        let at = self.max_event_ms.entry(table.to_string()).or_insert(max_ms);
        *at = (*at).max(max_ms);
    }

    /// A batch committed having read `read` (largest event time per source): the watermark of
    /// the batch after it.
    pub fn committed(
        &mut self,
        read: &BTreeMap<String, i64>,
        sources: &BTreeMap<String, EventTime>,
        policy: WatermarkPolicy,
    ) {
        for (table, max_ms) in read {
            self.observe(table, *max_ms);
        }
        self.previous_ms = self.watermark_ms;
        self.advance(sources, policy);
    }

    /// The watermark of the next batch: each source's largest event time minus its delay,
    /// combined by `policy`. Under `min`, a source with no row yet holds the watermark where it
    /// is (Spark's rule); under `max` it is left out. It never moves back.
    pub fn advance(&mut self, sources: &BTreeMap<String, EventTime>, policy: WatermarkPolicy) {
        let per_source = sources.iter().map(|(table, et)| {
            self.max_event_ms
                .get(table)
                .map(|max| max.saturating_sub(et.delay_ms as i64))
        });
        let next = match policy {
            WatermarkPolicy::Min => per_source
                .collect::<Option<Vec<i64>>>()
                .and_then(|w| w.into_iter().min()),
            WatermarkPolicy::Max => per_source.flatten().max(),
        };
        self.watermark_ms = match (self.watermark_ms, next) {
            (Some(was), Some(now)) => Some(was.max(now)),
            (was, now) => was.or(now),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(delays: &[(&str, u64)]) -> BTreeMap<String, EventTime> {
        delays
            .iter()
            .map(|(t, d)| {
                let et = EventTime {
                    column: "ts".into(),
                    delay_ms: *d,
                };
                (t.to_string(), et)
            })
            .collect()
    }

    #[test]
    fn the_watermark_trails_the_largest_event_time_and_never_moves_back() {
        let s = sources(&[("clicks", 10_000)]);
        let mut w = Watermarks::default();
        w.advance(&s, WatermarkPolicy::Min);
        assert_eq!(w.watermark_ms, None, "no event yet");
        w.observe("clicks", 25_000);
        w.advance(&s, WatermarkPolicy::Min);
        assert_eq!(w.watermark_ms, Some(15_000));
        w.observe("clicks", 12_000);
        w.advance(&s, WatermarkPolicy::Min);
        assert_eq!(
            w.watermark_ms,
            Some(15_000),
            "older events do not move it back"
        );
        w.observe("clicks", 40_000);
        w.advance(&s, WatermarkPolicy::Min);
        assert_eq!(w.watermark_ms, Some(30_000));
    }

    #[test]
    fn min_waits_for_every_source_and_max_follows_the_fastest() {
        let s = sources(&[("a", 0), ("b", 5_000)]);
        let (mut min, mut max) = (Watermarks::default(), Watermarks::default());
        for w in [&mut min, &mut max] {
            w.observe("a", 100_000);
        }
        min.advance(&s, WatermarkPolicy::Min);
        max.advance(&s, WatermarkPolicy::Max);
        assert_eq!(
            min.watermark_ms, None,
            "b has had no row: it holds the watermark"
        );
        assert_eq!(max.watermark_ms, Some(100_000));
        for w in [&mut min, &mut max] {
            w.observe("b", 50_000);
        }
        min.advance(&s, WatermarkPolicy::Min);
        max.advance(&s, WatermarkPolicy::Max);
        assert_eq!(min.watermark_ms, Some(45_000), "the slower source");
        assert_eq!(max.watermark_ms, Some(100_000), "never moves back");
        let json = serde_json::to_string(&min).unwrap();
        assert_eq!(serde_json::from_str::<Watermarks>(&json).unwrap(), min);
        assert_eq!(
            serde_json::from_str::<Watermarks>("{}").unwrap(),
            Watermarks::default()
        );
    }
}
