//! Sources and sinks. Each connector validates its own options (so an unknown option names the
//! valid ones), plans a batch's input on the driver as exact [`SourceSplit`]s, and reads or
//! writes Arrow `RecordBatch`es on the executors.

mod datagen;
pub mod faults;
mod files;
pub mod kafka;
mod options;
mod sink;
mod source;
pub mod store;

pub use files::FileFormat;
pub use options::{ConnectorError, Options, TableSpec};
pub use sink::{PartitionWritten, Sink, SinkKind, ipc_batches, ipc_bytes, render_console};
pub use sluice_core::SourceSplit;
pub use source::{
    PlanContext, Planned, Source, SourceProgress, SplitRead, source_schema, table_schema,
};

pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
