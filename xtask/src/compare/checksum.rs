//! What each engine's check run produced, reduced to numbers that must agree across engines.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// Output rows, the sums of their `n` and `total` columns, and a sum of `n` weighted by a
/// hash of the key, so rows with the right totals under the wrong keys still differ. Small
/// enough that a peer can compute it in SQL (xtask/peers/flink_job.py does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checksum {
    pub rows: u64,
    pub n: i64,
    pub total: i64,
    pub weighted: u64,
}

impl Checksum {
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a Value>, key: &str) -> Checksum {
        let mut c = Checksum::default();
        for row in rows {
            let n = row["n"].as_i64().unwrap_or(0);
            c.rows += 1;
            c.n += n;
            c.total += row["total"].as_i64().unwrap_or(0);
            c.weighted += weight(&row[key]) * n as u64;
        }
        c
    }

    /// A checksum a peer computed itself: `{rows, n, total, weighted}`.
    pub fn from_json(v: &Value) -> Checksum {
        Checksum {
            rows: v["rows"].as_u64().unwrap_or(0),
            n: v["n"].as_i64().unwrap_or(0),
            total: v["total"].as_i64().unwrap_or(0),
            weighted: v["weighted"].as_u64().unwrap_or(0),
        }
    }

    pub fn to_json(self) -> Value {
        serde_json::json!({ "rows": self.rows, "n": self.n, "total": self.total, "weighted": self.weighted })
    }
}

fn key_text(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

/// A number key's weight is `key * 2654435761 mod 65521`, which SQL can compute without
/// overflowing; a text key's is a hash of its text, modulo the same prime.
fn weight(key: &Value) -> u64 {
    const PRIME: u64 = 65521;
    match key.as_u64() {
        Some(k) => k.wrapping_mul(2_654_435_761) % PRIME,
        None => fnv(&key_text(key)) % PRIME,
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// An update-mode changelog folded into the table it describes: per key, the row of the latest
/// batch that updated it.
pub fn final_table(batches: &BTreeMap<u64, Vec<Value>>, key: &str) -> Vec<Value> {
    let mut table: BTreeMap<String, Value> = BTreeMap::new();
    for rows in batches.values() {
        for row in rows {
            table.insert(key_text(&row[key]), row.clone());
        }
    }
    table.into_values().collect()
}

/// Every jsonl record under `dir` (recursively; names starting with `.` or `_` skipped),
/// grouped by its `batch` field (0 when it has none).
pub fn read_by_batch(dir: &Path) -> anyhow::Result<BTreeMap<u64, Vec<Value>>> {
    let mut out: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            for (i, line) in std::fs::read_to_string(&path)?.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let row: Value = serde_json::from_str(line)
                    .with_context(|| format!("{}:{}", path.display(), i + 1))?;
                let batch = row["batch"].as_u64().unwrap_or(0);
                out.entry(batch).or_default().push(row);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_latest_update_of_a_key_wins() {
        let batches = BTreeMap::from([
            (
                0,
                vec![
                    json!({"key": 1, "n": 1, "total": 5}),
                    json!({"key": 2, "n": 1, "total": 1}),
                ],
            ),
            (1, vec![json!({"key": 1, "n": 3, "total": 9})]),
        ]);
        let table = final_table(&batches, "key");
        let c = Checksum::of(&table, "key");
        assert_eq!((c.rows, c.n, c.total), (2, 4, 10));
    }

    #[test]
    fn the_same_totals_under_other_keys_differ() {
        let a = [
            json!({"key": 1, "n": 1, "total": 1}),
            json!({"key": 2, "n": 2, "total": 1}),
        ];
        let b = [
            json!({"key": 1, "n": 2, "total": 1}),
            json!({"key": 2, "n": 1, "total": 1}),
        ];
        let (ca, cb) = (Checksum::of(&a, "key"), Checksum::of(&b, "key"));
        assert_eq!((ca.rows, ca.n, ca.total), (cb.rows, cb.n, cb.total));
        assert_ne!(ca, cb);
        // What Flink's SQL computes for the same rows: sum(n * mod(key * 2654435761, 65521)).
        let sql = |k: u64, n: u64| n * ((k * 2_654_435_761) % 65_521);
        assert_eq!(ca.weighted, sql(1, 1) + sql(2, 2));
        assert_eq!(Checksum::from_json(&ca.to_json()), ca);
    }

    #[test]
    fn records_are_read_by_batch_from_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/part-0.json"),
            "{\"key\":1,\"batch\":3}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("_SUCCESS"), "").unwrap();
        std::fs::write(dir.path().join("f.jsonl"), "{\"key\":2}\n\n").unwrap();
        let by_batch = read_by_batch(dir.path()).unwrap();
        assert_eq!(by_batch.keys().copied().collect::<Vec<_>>(), vec![0, 3]);
    }
}
