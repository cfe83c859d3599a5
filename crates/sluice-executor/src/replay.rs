//! `sluice replay`: one committed batch run again in this process, as the cluster ran it, and
//! compared with what the job committed.
//!
//! The rerun ([`replay_batch`]) reads the
//! splits and watermark its offsets entry logged, starts each state partition from the
//! version before it (read from the checkpoint, never written back), numbers the tasks of each
//! stage as the scheduler does and hands each reducer its shuffle blocks in the order it
//! fetches them (by upstream stage, then map partition). Every sink is pointed at a scratch
//! directory first (a Kafka sink becomes a jsonl files sink there: producing again would
//! duplicate what the job wrote). [`replay`] then compares: a files sink's part files byte for
//! byte, each state partition's new version row for row, and the row counts of the commit.

use crate::state::StateCache;
use arrow::compute::concat_batches;
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use serde::Serialize;
use sluice_checkpoint::{CheckpointError, JobCheckpoint, OffsetsEntry, StateKind};
use sluice_connectors::{ConnectorError, ipc_batches, store};
use sluice_core::{
    BatchId, Failure, FailureKind, JobId, ShuffleKind, SourceSplit, StageOutput, StageSpec,
    StatePartition, range_bounds,
};
use sluice_sql::{
    BatchInfo, CompiledJob, MapOutput, SqlError, StageOutputData, Statics, TaskInput,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the rerun produced.
#[derive(Debug, Default)]
pub struct Replayed {
    pub rows_in: u64,
    pub rows_out: u64,
    /// The sink stage's partitions, all written (an empty one writes nothing).
    pub sink_partitions: Vec<u32>,
    /// Per state partition, the new version's delta (what version `batch` holds in the
    /// checkpoint).
    pub deltas: BTreeMap<StatePartition, Vec<RecordBatch>>,
}

/// A stage's map outputs in task order, and how its reducers split them.
struct Exchange {
    outputs: Vec<MapOutput>,
    partitions: u32,
    /// Range boundaries (a range exchange).
    bounds: Vec<Vec<u8>>,
}

/// Reruns batch `entry.batch_id` of job `job_id` whose checkpoint is at `checkpoint_uri`.
pub async fn replay_batch(
    job: &CompiledJob,
    job_id: &JobId,
    entry: &OffsetsEntry,
    checkpoint_uri: &str,
) -> Result<Replayed, Failure> {
    let batch = BatchInfo {
        id: entry.batch_id,
        watermark_ms: entry.watermark.as_ref().and_then(|w| w.watermark_ms),
        previous_watermark_ms: entry.watermark.as_ref().and_then(|w| w.previous_ms),
    };
    let states = StateCache::default();
    let mut exchanges: Vec<Exchange> = Vec::new();
    let mut out = Replayed::default();
    for spec in job.stage_specs() {
        let statics = statics(job, &spec, entry).await?;
        let tasks = task_count(&spec, entry, &exchanges);
        let mut outputs = Vec::new();
        let mut samples = Vec::new();
        for p in 0..tasks {
            let input = match spec.reads_sources() {
                true => read_split(job, &spec, p, entry).await?,
                false => job
                    .shuffle_input(spec.id as usize, fetch(&spec, p, &exchanges)?)
                    .map_err(SqlError::into_failure)?,
            };
            if spec.reads_sources() {
                out.rows_in += rows_of(&input);
            }
            let key = StatePartition {
                job: job_id.clone(),
                stage: spec.id,
                partition: p,
            };
            let state = match job.state_of(spec.id as usize) {
                Some(_) => {
                    states
                        .before(job, &key, entry.batch_id, checkpoint_uri)
                        .await?
                        .0
                }
                None => Arc::new(sluice_sql::State::default()),
            };
            let (output, update) = job
                .run_task(spec.id as usize, batch, input, &statics, &state)
                .await
                .map_err(SqlError::into_failure)?;
            if let Some(update) = update {
                if let (Some(sink), false) = (&job.late_rows, update.late.is_empty()) {
                    sink.write(entry.batch_id, p, &update.late)
                        .await
                        .map_err(ConnectorError::into_failure)?;
                }
                out.deltas.insert(key, update.delta);
            }
            match output {
                StageOutputData::Map { output, sample, .. } => {
                    outputs.push(output);
                    samples.extend(sample);
                }
                StageOutputData::Sink { batches, rows } => {
                    job.sink
                        .write(entry.batch_id, p, &batches)
                        .await
                        .map_err(ConnectorError::into_failure)?;
                    out.rows_out += rows;
                    out.sink_partitions.push(p);
                }
            }
        }
        let (partitions, bounds) = match spec.output {
            StageOutput::Shuffle {
                kind: ShuffleKind::Range,
                partitions,
            } => (partitions, range_bounds(samples, partitions)),
            StageOutput::Shuffle { partitions, .. } => (partitions, Vec::new()),
            StageOutput::Sink => (0, Vec::new()),
        };
        exchanges.push(Exchange {
            outputs,
            partitions,
            bounds,
        });
    }
    job.sink
        .commit(entry.batch_id, &out.sink_partitions)
        .await
        .map_err(ConnectorError::into_failure)?;
    Ok(out)
}

/// A source stage: one task per logged split of each table it reads, tables in order; a
/// shuffle stage: one per partition of the exchanges it reads.
fn task_count(spec: &StageSpec, entry: &OffsetsEntry, exchanges: &[Exchange]) -> u32 {
    let splits: usize = spec
        .sources()
        .map(|t| entry.sources.get(t).map_or(0, Vec::len))
        .sum();
    let partitions = spec
        .upstreams()
        .filter_map(|u| exchanges.get(u as usize))
        .map(|e| e.partitions)
        .max()
        .unwrap_or(0);
    splits as u32 + partitions
}

/// Task `p`'s split: counting through the stage's tables in order.
fn split_of<'a>(
    spec: &'a StageSpec,
    p: u32,
    entry: &'a OffsetsEntry,
) -> Option<(&'a str, &'a SourceSplit)> {
    let mut p = p as usize;
    for table in spec.sources() {
        let splits = entry.sources.get(table).map_or(&[][..], Vec::as_slice);
        match splits.get(p) {
            Some(split) => return Some((table, split)),
            None => p -= splits.len(),
        }
    }
    None
}

async fn read_split(
    job: &CompiledJob,
    spec: &StageSpec,
    p: u32,
    entry: &OffsetsEntry,
) -> Result<TaskInput, Failure> {
    let bug = |m: String| Failure::new(FailureKind::Bug, m);
    let (table, split) = split_of(spec, p, entry)
        .ok_or_else(|| bug(format!("stage {} has no task {p}", spec.id)))?;
    let source = job
        .sources
        .get(table)
        .ok_or_else(|| bug(format!("the job reads no source table '{table}'")))?;
    let read = source
        .read_split(split, entry.batch_id)
        .await
        .map_err(ConnectorError::into_failure)?;
    if let (Some(dead), Some(sink)) = (read.dead_letters, job.dead_letters.get(table)) {
        sink.write(entry.batch_id, p, &[dead])
            .await
            .map_err(ConnectorError::into_failure)?;
    }
    Ok(TaskInput::Split {
        table: table.to_string(),
        rows: read.rows,
    })
}

/// Partition `p` of every map output of the stages `spec` reads, as a reducer fetches them.
fn fetch(
    spec: &StageSpec,
    p: u32,
    exchanges: &[Exchange],
) -> Result<Vec<(u32, Vec<RecordBatch>)>, Failure> {
    let mut blocks = Vec::new();
    for up in spec.upstreams() {
        let e = exchanges
            .get(up as usize)
            .ok_or_else(|| Failure::new(FailureKind::Bug, format!("stage {up} has not run")))?;
        for output in &e.outputs {
            let rows = output.rows(p, &e.bounds).map_err(SqlError::into_failure)?;
            blocks.push((up, rows));
        }
    }
    Ok(blocks)
}

/// The static tables the stage joins, at the versions the batch logged.
async fn statics(
    job: &CompiledJob,
    spec: &StageSpec,
    entry: &OffsetsEntry,
) -> Result<Statics, Failure> {
    let mut statics = Statics::new();
    for table in spec.broadcasts() {
        let files = entry.sources.get(table).map_or(&[][..], Vec::as_slice);
        let rows = job
            .read_static(table, files)
            .await
            .map_err(SqlError::into_failure)?;
        statics.insert(table.to_string(), Arc::new(rows));
    }
    Ok(statics)
}

fn rows_of(input: &TaskInput) -> u64 {
    match input {
        TaskInput::Split { rows, .. } => rows.iter().map(|b| b.num_rows() as u64).sum(),
        TaskInput::Shuffle(edges) => edges.iter().flatten().map(|b| b.num_rows() as u64).sum(),
    }
}

/// One comparison of the rerun with what the job committed.
#[derive(Debug, Serialize)]
pub struct Check {
    pub what: String,
    /// False when there was nothing left to compare with (a state version pruned since).
    pub compared: bool,
    pub equal: bool,
    /// What was compared, or how it differs.
    pub detail: String,
}

impl Check {
    fn of(what: String, equal: bool, detail: String) -> Check {
        Check {
            what,
            compared: true,
            equal,
            detail,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub job_id: String,
    pub name: String,
    pub checkpoint: String,
    pub batch: BatchId,
    /// The job's SQL revision the batch committed under (0: as first submitted).
    pub revision: u64,
    /// Per source table, its logged input in a few words.
    pub input: Vec<String>,
    pub watermark_ms: Option<i64>,
    /// Where the rerun wrote.
    pub out: String,
    pub rows_in: u64,
    pub rows_out: u64,
    pub checks: Vec<Check>,
}

impl ReplayReport {
    /// Whether everything compared was equal.
    pub fn matches(&self) -> bool {
        self.checks.iter().all(|c| c.equal || !c.compared)
    }
}

fn stored(e: CheckpointError) -> Failure {
    Failure::new(e.kind(), e.to_string())
}

/// Reruns committed batch `batch` of the job whose checkpoint is `cp`, writing under `out` (a
/// path or URI), and compares the result with what the job committed.
pub async fn replay(
    cp: &JobCheckpoint,
    batch: BatchId,
    out: &str,
) -> Result<ReplayReport, Failure> {
    let refused = |m: String| Failure::new(FailureKind::BadPlan, m);
    let commit = cp
        .read_commit(batch)
        .await
        .map_err(stored)?
        .ok_or_else(|| {
            refused(format!(
                "{}: batch {batch} has no commit entry; replay reruns committed batches",
                cp.uri()
            ))
        })?;
    let entry = cp
        .read_offsets(batch)
        .await
        .map_err(stored)?
        .ok_or_else(|| refused(format!("{}/offsets/{batch} is missing (pruned?)", cp.uri())))?;
    let (revision, meta) = cp
        .metadata_at(commit.committed_at_ms)
        .await
        .map_err(stored)?
        .ok_or_else(|| refused(format!("{}/metadata is missing", cp.uri())))?;
    let mut job = CompiledJob::compile(&meta.sql, &meta.origin)
        .await
        .map_err(SqlError::into_failure)?;
    let committed = files_sink(&job)?;
    let out = store::open(out).map_err(|e| refused(e.to_string()))?;
    job.redirect_sinks(&out.uri)
        .map_err(SqlError::into_failure)?;
    let ran = replay_batch(&job, &JobId::from(&meta.job_id), &entry, cp.uri()).await?;
    let mut checks = vec![Check::of(
        "rows".into(),
        (ran.rows_in, ran.rows_out) == (commit.rows_in, commit.rows_out),
        format!(
            "committed {} in, {} out; replayed {} in, {} out",
            commit.rows_in, commit.rows_out, ran.rows_in, ran.rows_out
        ),
    )];
    match committed {
        Some((table, at)) => {
            let replayed = store::open(&format!("{}/{table}", out.uri.trim_end_matches('/')))
                .map_err(|e| refused(e.to_string()))?;
            checks.push(compare_files(&table, &at, &replayed, batch).await?);
        }
        None => checks.push(Check {
            what: format!("sink {}", job.sink_table),
            compared: false,
            equal: true,
            detail: format!(
                "not a files sink: it keeps no record of which rows a batch wrote, so only the row count is compared (the replayed rows are under {}/{})",
                out.uri.trim_end_matches('/'),
                job.sink_table
            ),
        }),
    }
    for (key, delta) in &ran.deltas {
        checks.push(compare_state(cp, &job, key, batch, delta).await?);
    }
    Ok(ReplayReport {
        job_id: meta.job_id,
        name: meta.name,
        checkpoint: cp.uri().to_string(),
        batch,
        revision,
        input: entry
            .sources
            .iter()
            .map(|(t, s)| format!("{t}: {}", sluice_connectors::summarize(s)))
            .collect(),
        watermark_ms: entry.watermark.as_ref().and_then(|w| w.watermark_ms),
        out: out.uri,
        rows_in: ran.rows_in,
        rows_out: ran.rows_out,
        checks,
    })
}

/// The job's sink table and where it writes, when it is a files sink.
fn files_sink(job: &CompiledJob) -> Result<Option<(String, store::Location)>, Failure> {
    let Some(spec) = job
        .job
        .tables
        .iter()
        .find(|t| t.spec.name == job.sink_table)
    else {
        return Ok(None);
    };
    let spec = &spec.spec;
    match (spec.connector().ok(), spec.options.get("path")) {
        (Some("files"), Some(path)) => {
            let at =
                store::open(path).map_err(|e| Failure::new(FailureKind::BadPlan, e.to_string()))?;
            Ok(Some((spec.name.clone(), at)))
        }
        _ => Ok(None),
    }
}

/// The files of batch `batch` under a files sink, by name.
async fn batch_files(
    at: &store::Location,
    batch: BatchId,
) -> Result<BTreeMap<String, Vec<u8>>, Failure> {
    let dir = at.child(&format!("batch={batch}"));
    let unreadable = |e: object_store::Error| {
        Failure::new(
            FailureKind::Outage,
            format!("cannot read {}: {e}", at.uri_of(&dir)),
        )
    };
    let listed: Vec<object_store::ObjectMeta> = at
        .store
        .list(Some(&dir))
        .try_collect()
        .await
        .map_err(unreadable)?;
    let mut files = BTreeMap::new();
    for meta in listed {
        let bytes = at
            .store
            .get(&meta.location)
            .await
            .map_err(unreadable)?
            .bytes()
            .await
            .map_err(unreadable)?;
        let name = meta.location.filename().unwrap_or_default().to_string();
        files.insert(name, bytes.to_vec());
    }
    Ok(files)
}

/// A files sink's batch directory, committed against replayed, byte for byte.
async fn compare_files(
    table: &str,
    committed: &store::Location,
    replayed: &store::Location,
    batch: BatchId,
) -> Result<Check, Failure> {
    let (a, b) = (
        batch_files(committed, batch).await?,
        batch_files(replayed, batch).await?,
    );
    let mut differences = Vec::new();
    for (name, bytes) in &a {
        match b.get(name) {
            None => differences.push(format!("{name} was committed but not replayed")),
            Some(other) if other != bytes => differences.push(format!(
                "{name} differs (committed {} bytes, replayed {}){}",
                bytes.len(),
                other.len(),
                first_difference(bytes, other)
            )),
            Some(_) => {}
        }
    }
    for name in b.keys().filter(|n| !a.contains_key(*n)) {
        differences.push(format!("{name} was replayed but not committed"));
    }
    let dir = committed.uri_of(&committed.child(&format!("batch={batch}")));
    let detail = match differences.is_empty() {
        true => format!("{} files under {dir}, byte for byte equal", a.len()),
        false => format!("{dir}: {}", differences.join("; ")),
    };
    Ok(Check::of(
        format!("sink {table}"),
        differences.is_empty(),
        detail,
    ))
}

/// Where two byte strings first differ, for the report.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(at) => format!(", first at byte {at}"),
        None => String::new(),
    }
}

/// A state partition's version `batch` in the checkpoint against the replayed one, row for row.
async fn compare_state(
    cp: &JobCheckpoint,
    job: &CompiledJob,
    key: &StatePartition,
    batch: BatchId,
    replayed: &[RecordBatch],
) -> Result<Check, Failure> {
    let bug = |m: String| Failure::new(FailureKind::Bug, m);
    let op = job
        .state_of(key.stage as usize)
        .ok_or_else(|| bug(format!("stage {} keeps no state", key.stage)))?;
    let what = format!("state {} partition {}", op.name(), key.partition);
    let stored = match cp
        .read_state(op.name(), key.partition, batch, StateKind::Delta)
        .await
    {
        Ok(bytes) => ipc_batches(&bytes).map_err(|e| bug(e.to_string()))?,
        Err(CheckpointError::Store {
            source: object_store::Error::NotFound { .. },
            ..
        }) => {
            return Ok(Check {
                what,
                compared: false,
                equal: false,
                detail: format!("version {batch} is no longer kept (pruned): not compared"),
            });
        }
        Err(e) => {
            return Ok(Check::of(
                what,
                false,
                format!("version {batch} does not read: {e}"),
            ));
        }
    };
    let schema = op.state_schema();
    let rows = |b: &[RecordBatch]| concat_batches(&schema, b).map_err(|e| bug(e.to_string()));
    let (a, b) = (rows(&stored)?, rows(replayed)?);
    let equal = a.num_rows() == b.num_rows()
        && a.columns()
            .iter()
            .zip(b.columns())
            .all(|(x, y)| x.as_ref() == y.as_ref());
    let detail = format!(
        "version {batch}: committed {} rows, replayed {}{}",
        a.num_rows(),
        b.num_rows(),
        if equal {
            ", row for row equal"
        } else {
            ", different rows"
        }
    );
    Ok(Check::of(what, equal, detail))
}
