//! Job files to streaming plans. The driver and every executor compile the same SQL text with
//! the same code, so they agree on the stages without shipping serialized plans: the driver
//! needs only the outline ([`sluice_core::StageSpec`]), executors run a stage's operators.

mod compat;
mod exec;
mod join;
mod keyed;
mod operator;
mod parse;
mod partial;
mod partition;
mod plan;
mod slots;
mod state;
pub mod window;

pub use exec::{BatchInfo, MapOutput, RangeKeys, StageOutputData};
pub use join::join_state_sides;
pub use keyed::State;
pub use operator::{BatchContext, Processed, StatefulOperator};
pub use parse::{JobFile, parse_job, split_inserts};
pub use plan::{CompiledJob, Fragment, FragmentOutput, Statics, TaskInput};
use sluice_core::{Failure, FailureKind};
pub use state::{StateUpdate, StatefulAgg};

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{origin}:{line}:{column}: {message}")]
    Syntax {
        origin: String,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}:{line}: {message}")]
    Plan {
        origin: String,
        line: u64,
        message: String,
    },
    #[error("{0}")]
    Setting(#[from] sluice_core::settings::SettingError),
    #[error("{0}")]
    Connector(#[from] sluice_connectors::ConnectorError),
    /// A changed job cannot continue from its checkpoint: every change that makes it unsafe.
    #[error("the job cannot continue from its checkpoint: {}", changes.join("; "))]
    Incompatible { changes: Vec<String> },
    /// Running a stage failed; the kind says whether the data, the plan or Sluice is at fault.
    #[error("{message}")]
    Exec { message: String, kind: FailureKind },
}

impl SqlError {
    /// A broken invariant of Sluice's own (a bug, not the job's fault).
    pub fn internal(message: impl Into<String>) -> Self {
        SqlError::Exec {
            message: message.into(),
            kind: FailureKind::Bug,
        }
    }

    pub fn kind(&self) -> FailureKind {
        match self {
            SqlError::Exec { kind, .. } => *kind,
            SqlError::Connector(e) => e.kind(),
            _ => FailureKind::BadPlan,
        }
    }

    pub fn into_failure(self) -> Failure {
        Failure::new(self.kind(), self.to_string())
    }
}

impl From<datafusion::error::DataFusionError> for SqlError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        SqlError::Exec {
            kind: datafusion_failure_kind(&e),
            message: e.to_string(),
        }
    }
}

impl From<arrow::error::ArrowError> for SqlError {
    fn from(e: arrow::error::ArrowError) -> Self {
        SqlError::Exec {
            kind: arrow_failure_kind(&e),
            message: e.to_string(),
        }
    }
}

/// A SQL runtime error on a value (a division by zero, a failed CAST) repeats on every
/// attempt; only I/O, memory and a store may be better next time.
fn datafusion_failure_kind(e: &datafusion::error::DataFusionError) -> FailureKind {
    use datafusion::error::DataFusionError as E;
    match e.find_root() {
        E::ArrowError(a, _) => arrow_failure_kind(a),
        E::ObjectStore(s) => sluice_core::failure::store_failure_kind(s),
        E::IoError(_) | E::ResourcesExhausted(_) | E::ExecutionJoin(_) => FailureKind::Outage,
        E::Internal(_) => FailureKind::Bug,
        E::SQL(..)
        | E::Plan(_)
        | E::SchemaError(..)
        | E::Configuration(_)
        | E::NotImplemented(_) => FailureKind::BadPlan,
        _ => FailureKind::BadInput,
    }
}

fn arrow_failure_kind(e: &arrow::error::ArrowError) -> FailureKind {
    use arrow::error::ArrowError as A;
    match e {
        A::IoError(..) | A::MemoryError(_) => FailureKind::Outage,
        A::SchemaError(_) | A::NotYetImplemented(_) => FailureKind::BadPlan,
        _ => FailureKind::BadInput,
    }
}
