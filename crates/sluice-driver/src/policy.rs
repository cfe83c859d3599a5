//! What a job may touch. A job's SQL runs with the rights of the driver and executor
//! processes: a `files` table reads or writes any path they can, and `kafka.*` options reach
//! librdkafka as they are. The driver's policy narrows that: allowed path and bucket prefixes
//! for the files connector, and librdkafka properties that load code or run commands.

use sluice_core::{Failure, FailureKind};
use sluice_sql::CompiledJob;

/// librdkafka properties that load a library or run a program: refused unless the driver's
/// `denied_kafka_properties` says otherwise.
pub const DENIED_KAFKA_PROPERTIES: &[&str] = &[
    "plugin.library.paths",
    "ssl.engine.location",
    "ssl.providers",
    "sasl.kerberos.kinit.cmd",
];

#[derive(Debug, Clone, Default)]
pub struct JobPolicy {
    /// URIs (`file:///data`, `s3://bucket/prefix`) under which files tables may live; empty:
    /// anywhere.
    allowed_paths: Vec<String>,
    denied_kafka_properties: Vec<String>,
}

impl JobPolicy {
    /// Normalises the allowed paths as the files connector does (a plain path becomes
    /// `file:///absolute`), so that a prefix compares with what a job's path opens as.
    pub fn new(
        allowed_paths: &[String],
        denied_kafka_properties: &[String],
    ) -> Result<Self, Failure> {
        let allowed_paths = allowed_paths
            .iter()
            .map(|p| {
                sluice_connectors::store::open(p)
                    .map(|l| l.uri)
                    .map_err(|e| refused(format!("configuration: allowed_paths: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(JobPolicy {
            allowed_paths,
            denied_kafka_properties: denied_kafka_properties
                .iter()
                .map(|p| p.trim().to_ascii_lowercase())
                .collect(),
        })
    }

    /// Refuses a job with a table outside the policy, naming the table and option.
    pub fn check(&self, job: &CompiledJob) -> Result<(), Failure> {
        for t in &job.job.tables {
            let spec = &t.spec;
            if spec.connector().ok() == Some("files")
                && let Some(path) = spec.options.get("path")
            {
                self.check_path(&spec.name, path)?;
            }
            for key in spec.options.keys() {
                if let Some(prop) = key.strip_prefix("kafka.")
                    && self
                        .denied_kafka_properties
                        .contains(&prop.to_ascii_lowercase())
                {
                    return Err(refused(format!(
                        "table '{}': option '{key}' is refused by this driver (denied_kafka_properties): it makes the Kafka client load code or run a program",
                        spec.name
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_path(&self, table: &str, path: &str) -> Result<(), Failure> {
        if self.allowed_paths.is_empty() {
            return Ok(());
        }
        // A path cannot climb out of a prefix: object_store refuses '..' in any path.
        let uri = sluice_connectors::store::open(path)
            .map_err(|e| refused(format!("table '{table}': option 'path': {e}")))?
            .uri;
        let inside = |prefix: &String| {
            let prefix = prefix.trim_end_matches('/');
            uri == prefix || uri.starts_with(&format!("{prefix}/"))
        };
        if self.allowed_paths.iter().any(inside) {
            return Ok(());
        }
        Err(refused(format!(
            "table '{table}': option 'path' = '{path}' is outside the paths this driver allows (allowed_paths: {})",
            self.allowed_paths.join(", ")
        )))
    }
}

/// The job (or the driver's configuration) asks for something the policy forbids: retrying the
/// same request cannot help.
fn refused(message: String) -> Failure {
    Failure::new(FailureKind::BadPlan, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn job(path: &str, kafka_prop: &str) -> CompiledJob {
        let sql = format!(
            "CREATE TABLE src (a BIGINT) WITH (connector = 'kafka', 'bootstrap.servers' = '127.0.0.1:1', topic = 't'{kafka_prop});
CREATE TABLE out WITH (connector = 'files', path = '{path}');
INSERT INTO out SELECT a FROM src;"
        );
        CompiledJob::compile(&sql, "j.sql").await.unwrap()
    }

    #[tokio::test]
    async fn paths_outside_the_allowed_prefixes_and_code_loading_properties_are_refused() {
        let denied: Vec<String> = DENIED_KAFKA_PROPERTIES
            .iter()
            .map(|s| s.to_string())
            .collect();
        let policy = JobPolicy::new(&["/data".into(), "s3://bucket/jobs".into()], &denied).unwrap();
        policy.check(&job("/data/out", "").await).unwrap();
        policy.check(&job("file:///data", "").await).unwrap();
        policy.check(&job("s3://bucket/jobs/a", "").await).unwrap();
        for outside in ["/database/out", "/etc", "s3://bucket/jobsx"] {
            let err = policy.check(&job(outside, "").await).unwrap_err().message;
            assert!(
                err.contains("outside the paths this driver allows"),
                "{outside}: {err}"
            );
        }
        let err = policy
            .check(
                &job(
                    "/data/out",
                    ", 'kafka.plugin.library.paths' = '/tmp/evil.so'",
                )
                .await,
            )
            .unwrap_err()
            .message;
        assert!(
            err.contains("'kafka.plugin.library.paths' is refused"),
            "{err}"
        );
        JobPolicy::default()
            .check(&job("/anywhere", ", 'kafka.plugin.library.paths' = 'x'").await)
            .unwrap();
    }
}
