//! Sluice's shared vocabulary. Light on purpose: the scheduler and the CLI build on it without
//! pulling in DataFusion or the Kafka client.

pub mod config;
pub mod failure;
pub mod ids;
pub mod job_state;
pub mod plan;
pub mod progress;
pub mod restart;
pub mod settings;
pub mod split;
pub mod watermark;

pub use failure::{Failure, FailureKind};
pub use ids::{ExecutorId, JobId, MapOutputId, StageAttemptId, StatePartition};
pub use job_state::JobState;
pub use plan::{ShuffleKind, StageInput, StageOutput, StageSpec, range_bounds};
pub use settings::{JobSettings, OutputMode, Trigger};
pub use split::SourceSplit;

/// A micro-batch number; batch 0 is a job's first.
pub type BatchId = u64;

/// Name of the pseudo-column every source row carries: the id of the batch that read it.
pub const BATCH_COLUMN: &str = "_batch";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Logs to stderr; the level comes from SLUICE_LOG (e.g. `info`, `sluice_driver=debug`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
