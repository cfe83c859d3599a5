//! Job files to streaming plans. The driver and every executor compile the same SQL text with
//! the same code, so they agree on the stages without shipping serialized plans: the driver
//! needs only the outline ([`sluice_core::StageSpec`]), executors run a stage's operators.

mod compat;
mod exec;
mod parse;
mod plan;
mod state;

pub use exec::{MapOutput, RangeKeys, StageOutputData};
pub use parse::{JobFile, parse_job, split_inserts};
pub use plan::{CompiledJob, Fragment, FragmentOutput};
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
    #[error("{0}")]
    Exec(String),
}

impl From<datafusion::error::DataFusionError> for SqlError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        SqlError::Exec(e.to_string())
    }
}

impl From<arrow::error::ArrowError> for SqlError {
    fn from(e: arrow::error::ArrowError) -> Self {
        SqlError::Exec(e.to_string())
    }
}
