//! What a job's checkpoint holds, read straight from storage: its metadata, every logged batch
//! with its input and commit, its state files, how it ended. `sluice checkpoint inspect` prints
//! it; the web UI's checkpoint page shows it.

use anyhow::Context;
use serde_json::{Value, json};
use sluice_checkpoint::{JobCheckpoint, StateKind};

/// One job's checkpoint as a JSON document (`sluice checkpoint inspect --json`).
pub async fn describe(cp: &JobCheckpoint) -> anyhow::Result<Value> {
    let (revision, meta) = cp
        .current_metadata()
        .await?
        .with_context(|| format!("{}/metadata is missing", cp.uri()))?;
    let commits = cp.batches("commits").await?;
    let mut batches = Vec::new();
    for b in cp.batches("offsets").await? {
        let offsets = cp.read_offsets(b).await?;
        let commit = if commits.contains(&b) {
            cp.read_commit(b).await?
        } else {
            None
        };
        let input: Vec<Value> = offsets
            .iter()
            .flat_map(|o| o.sources.iter())
            .map(|(table, splits)| json!({ "table": table, "summary": sluice_connectors::summarize(splits), "splits": splits }))
            .collect();
        batches.push(json!({
            "batch": b,
            "planned_at_ms": offsets.as_ref().map(|o| o.planned_at_ms),
            "input": input,
            "committed": commit.is_some(),
            "committed_at_ms": commit.as_ref().map(|c| c.committed_at_ms),
            "rows_in": commit.as_ref().map(|c| c.rows_in),
            "rows_out": commit.as_ref().map(|c| c.rows_out),
            "watermark_ms": offsets.as_ref().and_then(|o| o.watermark.as_ref()).and_then(|w| w.watermark_ms),
            "max_event_ms": commit.as_ref().map(|c| &c.max_event_ms),
        }));
    }
    let end = cp.read_final().await?;
    let mut state = Vec::new();
    for (operator, partition) in cp.state_partitions().await? {
        let files = cp.state_files(&operator, partition).await?;
        let sides = join_sides(cp, &operator, partition, &files).await;
        state.push(json!({
            "sides": sides.map(|s| json!({
                "left": { "rows": s[0].0, "bytes": s[0].1 },
                "right": { "rows": s[1].0, "bytes": s[1].1 },
            })),
            "operator": operator,
            "partition": partition,
            "latest_version": files.iter().map(|f| f.version).max(),
            "bytes": files.iter().map(|f| f.size).sum::<u64>(),
            "files": files.iter().map(|f| json!({
                "version": f.version,
                "kind": match f.kind { StateKind::Delta => "delta", StateKind::Snapshot => "snapshot" },
                "bytes": f.size,
            })).collect::<Vec<_>>(),
        }));
    }
    Ok(json!({
        "checkpoint": cp.uri(),
        "job_id": meta.job_id,
        "name": meta.name,
        "origin": meta.origin,
        "format_version": sluice_checkpoint::FORMAT_VERSION,
        "plan_fingerprint": meta.plan_fingerprint,
        "revision": revision,
        "submitted_at_ms": meta.submitted_at_ms,
        "ended": end.map(|e| json!({ "state": e.state, "error": e.error, "at_ms": e.at_ms })),
        "batches": batches,
        "state": state,
    }))
}

/// A join's state rows and bytes per side, from its latest version (whose delta is the whole
/// state); `None` for other operators or a file that does not decode.
async fn join_sides(
    cp: &sluice_checkpoint::JobCheckpoint,
    operator: &str,
    partition: u32,
    files: &[sluice_checkpoint::StateFile],
) -> Option<[(u64, u64); 2]> {
    let latest = files.iter().max_by_key(|f| f.version)?;
    let bytes = cp
        .read_state(operator, partition, latest.version, latest.kind)
        .await
        .ok()?;
    sluice_sql::join_state_sides(&sluice_connectors::ipc_batches(&bytes).ok()?)
}
