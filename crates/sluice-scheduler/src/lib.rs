//! The scheduler: a plain state machine. The driver feeds it [`Event`]s (an executor came or went,
//! a batch was submitted, a task finished, time passed) and carries out the [`Action`]s it returns
//! (launch this task there, this batch is done). Nothing here does I/O, so unit tests drive it
//! through whole failure stories without a network.
//!
//! A batch is a graph of stages (see [`sluice_core::plan`]): a stage reading sources has one
//! task per split of its tables; a stage reading exchanges has one task per shuffle partition
//! and starts when every map output of its upstream stages is available. Lost map outputs
//! (their executor died, or a reducer could not fetch them) are recomputed from lineage: the
//! map task runs again, with a new stage attempt. Every attempt is recorded ([`model`]) for the
//! cluster model the driver serves.

mod batch;
pub mod model;
mod scheduler;

pub use batch::{BatchReport, BatchSubmission, RerunCounts, TaskOutput};
pub use scheduler::{
    Action, Event, MapOutputLocation, Scheduler, SchedulerConfig, TaskKey, TaskLaunch,
    UnfetchedOutput,
};
