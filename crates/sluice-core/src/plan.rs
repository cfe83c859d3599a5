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

/// One input edge of a stage. A stage reads either source tables (one task per split of each,
/// tables in the order listed: a UNION ALL of two tables is one stage whose tasks each read one
/// split of one table, as Spark's UnionRDD) or the exchanges of upstream stages (one task per
/// partition, reading that partition of every upstream's map outputs: two branches feeding one
/// shuffle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageInput {
    /// One task per split of source table `table` in the batch.
    Source { table: String },
    /// Partition p's task reads partition p of every map output of stage `from`.
    Shuffle { from: u32, kind: ShuffleKind },
    /// Every task reads all of static table `table` (the version its batch logged); adds no
    /// task of its own.
    Broadcast { table: String },
}

impl StageInput {
    /// The stage whose output this one reads, if it reads one.
    pub fn upstream(&self) -> Option<u32> {
        match self {
            StageInput::Shuffle { from, .. } => Some(*from),
            _ => None,
        }
    }

    /// The source table this edge reads, if it reads one.
    pub fn source(&self) -> Option<&str> {
        match self {
            StageInput::Source { table } => Some(table),
            _ => None,
        }
    }

    /// The static table this edge broadcasts, if it is one.
    pub fn broadcast(&self) -> Option<&str> {
        match self {
            StageInput::Broadcast { table } => Some(table),
            _ => None,
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
    /// Its input edges: all source tables or all upstream exchanges (never a mix), plus the
    /// static tables it joins.
    pub inputs: Vec<StageInput>,
    pub output: StageOutput,
    /// Keeps per-partition state across batches: a partition's task goes back to the executor
    /// that holds its state in memory while that executor lives.
    pub stateful: bool,
    /// Human description of the operators, for logs and `sluice status`.
    pub describe: String,
}

impl StageSpec {
    /// The stages whose exchanges this one reads.
    pub fn upstreams(&self) -> impl Iterator<Item = u32> + '_ {
        self.inputs.iter().filter_map(StageInput::upstream)
    }

    /// The source tables this stage reads, in task order.
    pub fn sources(&self) -> impl Iterator<Item = &str> + '_ {
        self.inputs.iter().filter_map(StageInput::source)
    }

    /// The static tables every task of this stage reads whole.
    pub fn broadcasts(&self) -> impl Iterator<Item = &str> + '_ {
        self.inputs.iter().filter_map(StageInput::broadcast)
    }

    pub fn reads_sources(&self) -> bool {
        self.sources().next().is_some()
    }
}

/// Picks `partitions - 1` boundaries from the sorted samples so that each range gets about the
/// same number of sampled keys. Keys are arrow-row encoded, so byte order is sort order.
pub fn range_bounds(mut samples: Vec<Vec<u8>>, partitions: u32) -> Vec<Vec<u8>> {
    samples.sort();
    if samples.is_empty() || partitions <= 1 {
        return Vec::new();
    }
    let n = samples.len();
    let mut bounds: Vec<Vec<u8>> = (1..partitions as usize)
        .map(|i| samples[(i * n / partitions as usize).min(n - 1)].clone())
        .collect();
    bounds.dedup();
    bounds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_bounds_split_samples_evenly_and_dedup() {
        let samples: Vec<Vec<u8>> = (0u8..100).rev().map(|i| vec![i]).collect();
        let b = range_bounds(samples, 4);
        assert_eq!(b, vec![vec![25], vec![50], vec![75]]);
        let same: Vec<Vec<u8>> = (0..10).map(|_| vec![7]).collect();
        assert_eq!(range_bounds(same, 4), vec![vec![7]]);
        assert!(range_bounds(Vec::new(), 4).is_empty());
    }
}
