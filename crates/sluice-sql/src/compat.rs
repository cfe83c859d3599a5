//! Whether a changed job may continue from an existing checkpoint (`sluice submit --resume`).
//!
//! As in Spark, what the checkpoint holds decides: the offsets log belongs to its sources, and
//! the state to one running aggregation (its keys, aggregates, state columns and partition
//! count). Filters and projections upstream of the state, the sink, output mode and trigger
//! may change freely.

use crate::{CompiledJob, SqlError};

impl CompiledJob {
    /// Checks that this job can continue from a checkpoint written by `previous`; the error
    /// lists every change that makes it unsafe.
    pub fn check_compatible(&self, previous: &CompiledJob) -> Result<(), SqlError> {
        let mut changes = Vec::new();
        let (was, now): (Vec<&String>, Vec<&String>) = (
            previous.sources.keys().collect(),
            self.sources.keys().collect(),
        );
        if was != now {
            let list = |t: &[&String]| {
                t.iter()
                    .map(|t| format!("'{t}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            changes.push(format!(
                "the source tables changed from {} to {} (the checkpoint's offsets belong to {})",
                list(&was),
                list(&now),
                list(&was)
            ));
        } else {
            for table in now {
                changes.extend(self.source_changes(previous, table));
            }
        }
        match (previous.running_aggregate(), self.running_aggregate()) {
            (None, None) => {}
            (Some(_), None) => changes.push(
                "the running aggregation (GROUP BY without _batch) was removed; its state cannot be dropped silently — start a new job instead".into(),
            ),
            (None, Some(_)) => changes.push(
                "a running aggregation (GROUP BY without _batch) was added; it would miss every batch already committed — start a new job instead".into(),
            ),
            (Some(old), Some(new)) => {
                let part = |sig: &[String], prefix: &str| -> Vec<String> {
                    sig.iter()
                        .filter_map(|s| s.strip_prefix(prefix).map(str::to_string))
                        .collect()
                };
                for (what, prefix) in [
                    ("GROUP BY keys", "key "),
                    ("aggregates", "aggregate "),
                    ("state columns", "state "),
                ] {
                    let (was, now) =
                        (part(old.signature(), prefix), part(new.signature(), prefix));
                    if was != now {
                        changes.push(format!(
                            "the running aggregation's {what} changed from [{}] to [{}]",
                            was.join(", "),
                            now.join(", ")
                        ));
                    }
                }
                if self.settings.partitions != previous.settings.partitions {
                    changes.push(format!(
                        "'partitions' changed from {} to {}; the state is partitioned by key into {} parts",
                        previous.settings.partitions,
                        self.settings.partitions,
                        previous.settings.partitions
                    ));
                }
                if old.name() != new.name() {
                    changes.push(format!(
                        "the running aggregation moved from stage {} to stage {}",
                        old.name(),
                        new.name()
                    ));
                }
            }
        }
        let (was, now) = (
            previous.settings.watermark_policy,
            self.settings.watermark_policy,
        );
        if was != now && !previous.event_times.is_empty() {
            changes.push(format!(
                "'watermark.policy' changed from '{}' to '{}' (the logged watermarks were computed with '{}')",
                was.name(),
                now.name(),
                was.name()
            ));
        }
        match changes.is_empty() {
            true => Ok(()),
            false => Err(SqlError::Incompatible { changes }),
        }
    }

    fn running_aggregate(&self) -> Option<&dyn crate::StatefulOperator> {
        self.fragments.iter().find_map(|f| f.operator.as_deref())
    }

    /// Another connector, path, broker or topic is another source, whose positions the
    /// checkpoint does not hold.
    fn source_changes(&self, previous: &CompiledJob, table: &str) -> Vec<String> {
        let (Ok(now), Ok(was)) = (self.spec(table), previous.spec(table)) else {
            return Vec::new();
        };
        let connector =
            |s: &sluice_connectors::TableSpec| s.connector().unwrap_or_default().to_string();
        if connector(now) != connector(was) {
            return vec![format!(
                "table '{table}': the source connector changed from '{}' to '{}'",
                connector(was),
                connector(now)
            )];
        }
        sluice_connectors::Source::identity_options(&connector(now))
            .iter()
            .filter(|k| now.options.get(**k) != was.options.get(**k))
            .map(|k| {
                let shown = |v: Option<&String>| v.map_or("(unset)".to_string(), |v| format!("'{v}'"));
                format!(
                    "table '{table}': the source's option '{k}' changed from {} to {} (the checkpoint's positions belong to the old source)",
                    shown(was.options.get(*k)),
                    shown(now.options.get(*k))
                )
            })
            .collect()
    }
}
