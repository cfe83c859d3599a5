//! Identities the runtime keys its maps by, as named types rather than tuples.

use crate::{BatchId, JobId};

/// One partition of a stateful stage's state: its versions live on one executor at a time and
/// under `state/<operator>/<partition>/` in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatePartition {
    pub job: JobId,
    pub stage: u32,
    pub partition: u32,
}

/// One map task's output, as reducers fetch it: under the stage attempt that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapOutputId {
    pub job: JobId,
    pub batch: BatchId,
    pub stage: u32,
    pub stage_attempt: u32,
    pub partition: u32,
}
