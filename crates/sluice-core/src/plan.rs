//! The streaming plan's shape as the scheduler sees it: stages cut at shuffles, each naming
//! the edge it reads (a source's splits, or the exchange of an upstream stage), so the
//! scheduler follows edges and never assumes a chain. Stage ids are in topological order: an
//! upstream stage has a lower id. The operators inside a stage are the SQL crate's business;
//! executors rebuild them from the job's SQL, so only this outline travels to the scheduler.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShuffleKind {
    /// Rows go to partition hash(keys) % n (GROUP BY).
    Hash,
    /// Rows go to the partition whose key range holds them; ranges come from a sample (ORDER BY).
    Range,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageInput {
    /// One task per source split of the batch.
    Source,
    /// One task per shuffle partition, reading every map output of stage `from`.
    Shuffle { from: u32, kind: ShuffleKind },
}

impl StageInput {
    /// The stage whose output this one reads, if it reads one.
    pub fn upstream(&self) -> Option<u32> {
        match self {
            StageInput::Source => None,
            StageInput::Shuffle { from, .. } => Some(*from),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageOutput {
    Shuffle { kind: ShuffleKind, partitions: u32 },
    Sink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSpec {
    pub id: u32,
    pub input: StageInput,
    pub output: StageOutput,
    /// Keeps per-partition state across batches: a partition's task goes back to the executor
    /// that holds its state in memory while that executor lives.
    pub stateful: bool,
    /// Human description of the operators, for logs and `sluice status`.
    pub describe: String,
}
