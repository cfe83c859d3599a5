//! The registry: every connector Sluice knows, in one place. A connector is a module here and
//! one line in [`SOURCES`] or [`SINKS`]; nothing else names it.

use crate::connector::{SinkFactory, SourceFactory};

pub mod blackhole;
pub mod console;
pub mod datagen;
pub mod files;
pub mod files_sink;
pub mod kafka;
pub mod sequence;

/// Every source connector, by the name `connector = '...'` gives it.
static SOURCES: &[&dyn SourceFactory] = &[
    &files::Factory,
    &datagen::Factory,
    &kafka::Factory,
    &sequence::Factory,
];

/// The source connector named `name`.
pub fn source(name: &str) -> Option<&'static dyn SourceFactory> {
    SOURCES.iter().copied().find(|f| f.name() == name)
}

/// The source connector that logs splits of `kind`.
pub fn source_of_split(kind: &str) -> Option<&'static dyn SourceFactory> {
    SOURCES.iter().copied().find(|f| f.split_kind() == kind)
}

/// The names of every source connector, for error messages.
pub fn source_names() -> Vec<&'static str> {
    SOURCES.iter().map(|f| f.name()).collect()
}

/// Every sink connector, by the name `connector = '...'` gives it.
static SINKS: &[&dyn SinkFactory] = &[
    &console::Factory,
    &blackhole::Factory,
    &files_sink::Factory,
    &kafka::SinkFactory,
];

/// The sink connector named `name`.
pub fn sink(name: &str) -> Option<&'static dyn SinkFactory> {
    SINKS.iter().copied().find(|f| f.name() == name)
}

/// The names of every sink connector, for error messages.
pub fn sink_names() -> Vec<&'static str> {
    SINKS.iter().map(|f| f.name()).collect()
}
