//! Sources and sinks. Each connector validates its own options (so an unknown option names the
//! valid ones), plans a batch's input on the driver as exact splits, and reads or writes Arrow
//! `RecordBatch`es on the executors. Source connectors implement [`SourceConnector`] and are
//! listed in one registry (`connectors/mod.rs`).

pub mod connector;
pub mod connectors;
pub mod faults;
mod options;
mod sink;
mod source;
pub mod store;

pub use connector::{
    PartitionWritten, PlanContext, Planned, Position, SinkConnector, SinkFactory, SourceConnector,
    SourceFactory, SplitRead,
};
pub use connectors::console::render_console;
pub use connectors::files::FileFormat;
pub use options::{ConnectorError, Options, TableSpec};
pub use sink::{IpcDecoder, Sink, ipc_batches, ipc_bytes};
pub use sluice_core::SourceSplit;
pub use source::{Source, source_schema, summarize, table_schema};

pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
