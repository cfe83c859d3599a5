//! Whether a changed job may continue from an existing checkpoint (`sluice submit --resume`).
//!
//! As in Spark, what the checkpoint holds decides: the offsets log belongs to one source, and
//! the state to one running aggregation (its keys, aggregates, state columns and partition
//! count). Filters and projections upstream of the state, the sink, output mode and trigger
//! may change freely.

use crate::CompiledJob;

impl CompiledJob {
    /// Checks that this job can continue from a checkpoint written by `previous`; the error
    /// lists every change that makes it unsafe.
    pub fn check_compatible(&self, previous: &CompiledJob) -> Result<(), String> {
        let mut changes = Vec::new();
        if self.source_table != previous.source_table {
            changes.push(format!(
                "the source table changed from '{}' to '{}' (the checkpoint's offsets belong to '{}')",
                previous.source_table, self.source_table, previous.source_table
            ));
        } else if self.source_connector() != previous.source_connector() {
            changes.push(format!(
                "the source connector changed from '{}' to '{}'",
                previous.source_connector(),
                self.source_connector()
            ));
        } else {
            changes.extend(self.source_identity_changes(previous));
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
                    let (was, now) = (part(&old.signature, prefix), part(&new.signature, prefix));
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
                if old.operator != new.operator {
                    changes.push(format!(
                        "the running aggregation moved from stage {} to stage {}",
                        old.operator, new.operator
                    ));
                }
            }
        }
        if changes.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the job cannot continue from its checkpoint: {}",
                changes.join("; ")
            ))
        }
    }

    fn running_aggregate(&self) -> Option<&crate::StatefulAgg> {
        self.fragments.iter().find_map(|f| f.state.as_ref())
    }

    /// Another path, broker or topic is another source, whose positions the checkpoint does
    /// not hold.
    fn source_identity_changes(&self, previous: &CompiledJob) -> Vec<String> {
        let (Some(now), Some(was)) = (self.source_spec(), previous.source_spec()) else {
            return Vec::new();
        };
        let connector = self.source_connector();
        sluice_connectors::Source::identity_options(&connector)
            .iter()
            .filter(|k| now.options.get(**k) != was.options.get(**k))
            .map(|k| {
                let shown = |v: Option<&String>| v.map_or("(unset)".to_string(), |v| format!("'{v}'"));
                format!(
                    "the source's option '{k}' changed from {} to {} (the checkpoint's positions belong to the old source)",
                    shown(was.options.get(*k)),
                    shown(now.options.get(*k))
                )
            })
            .collect()
    }

    fn source_spec(&self) -> Option<&sluice_connectors::TableSpec> {
        self.job
            .tables
            .iter()
            .find(|t| t.spec.name == self.source_table)
            .map(|t| &t.spec)
    }

    fn source_connector(&self) -> String {
        self.job
            .tables
            .iter()
            .find(|t| t.spec.name == self.source_table)
            .and_then(|t| t.spec.connector().ok().map(str::to_string))
            .unwrap_or_default()
    }
}
