//! What each engine's check run produced, reduced to numbers that must agree across engines.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};

/// How a query's output becomes the table that is compared, and what is summed over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// The output's key columns when it is an update-mode changelog (the latest row of a key
    /// wins); empty when every output row stands (append mode, per-batch results).
    pub update_key: &'static [&'static str],
    /// Weighted = Σ weight(row[weight_key]) × row[weight_by], so the right totals under the
    /// wrong keys still differ.
    pub weight_key: &'static str,
    pub weight_by: &'static str,
    /// Columns summed in thousandths, so a decimal and a double of the same value agree.
    pub sums: &'static [&'static str],
}

impl Spec {
    /// What a peer needs to compute the checksum itself (xtask/peers/flink_job.py does).
    pub fn to_json(self) -> Value {
        json!({ "weight_key": self.weight_key, "weight_by": self.weight_by, "sums": self.sums })
    }

    /// The checksum of a check run's output, given its rows by batch.
    pub fn checksum(self, batches: &BTreeMap<u64, Vec<Value>>) -> Checksum {
        if self.update_key.is_empty() {
            Checksum::of(batches.values().flatten(), self)
        } else {
            Checksum::of(&final_table(batches, self.update_key), self)
        }
    }
}

/// Output rows, each `sums` column's total in thousandths, and the weighted sum. Small enough
/// that a peer can compute it in SQL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checksum {
    pub rows: u64,
    pub sums: BTreeMap<String, i64>,
    pub weighted: u64,
}

impl Checksum {
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a Value>, spec: Spec) -> Checksum {
        let mut c = Checksum {
            sums: spec.sums.iter().map(|s| (s.to_string(), 0)).collect(),
            ..Checksum::default()
        };
        for row in rows {
            c.rows += 1;
            for (column, total) in c.sums.iter_mut() {
                *total = total.wrapping_add(thousandths(&row[column.as_str()]));
            }
            let by = row[spec.weight_by].as_i64().unwrap_or(0) as u64;
            c.weighted = c
                .weighted
                .wrapping_add(weight(&row[spec.weight_key]).wrapping_mul(by));
        }
        c
    }

    /// A checksum a peer computed itself: `{rows, sums: {column: total}, weighted}`.
    pub fn from_json(v: &Value) -> Checksum {
        let sums = v["sums"].as_object().into_iter().flatten();
        Checksum {
            rows: v["rows"].as_u64().unwrap_or(0),
            sums: sums
                .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0)))
                .collect(),
            weighted: v["weighted"].as_u64().unwrap_or(0),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({ "rows": self.rows, "sums": self.sums, "weighted": self.weighted })
    }
}

/// A number in thousandths, rounded: 1120.472 as a double or as a decimal is 1120472.
fn thousandths(v: &Value) -> i64 {
    match v.as_i64() {
        Some(i) => i.wrapping_mul(1000),
        None => v.as_f64().map_or(0, |f| (f * 1000.0).round() as i64),
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
pub fn final_table(batches: &BTreeMap<u64, Vec<Value>>, key: &[&str]) -> Vec<Value> {
    let mut table: BTreeMap<Vec<String>, Value> = BTreeMap::new();
    for rows in batches.values() {
        for row in rows {
            let k = key.iter().map(|c| key_text(&row[*c])).collect();
            table.insert(k, row.clone());
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

    const COUNTS: Spec = Spec {
        update_key: &["key"],
        weight_key: "key",
        weight_by: "n",
        sums: &["n", "total"],
    };

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
        let c = COUNTS.checksum(&batches);
        assert_eq!((c.rows, c.sums["n"], c.sums["total"]), (2, 4000, 10000));
        let appended = Spec {
            update_key: &[],
            ..COUNTS
        };
        assert_eq!(appended.checksum(&batches).rows, 3);
    }

    #[test]
    fn a_composite_key_folds_on_all_its_columns() {
        let batches = BTreeMap::from([
            (0, vec![json!({"a": 1, "day": "d1", "n": 1})]),
            (1, vec![json!({"a": 1, "day": "d2", "n": 2})]),
            (2, vec![json!({"a": 1, "day": "d1", "n": 5})]),
        ]);
        let table = final_table(&batches, &["a", "day"]);
        let n: Vec<i64> = table.iter().map(|r| r["n"].as_i64().unwrap()).collect();
        assert_eq!(n, vec![5, 2]);
    }

    #[test]
    fn a_decimal_and_a_double_of_one_value_agree() {
        let spec = Spec {
            update_key: &[],
            weight_key: "a",
            weight_by: "a",
            sums: &["price"],
        };
        let double = [json!({"a": 1, "price": 1120.4720000000002})];
        let decimal: Value = serde_json::from_str(r#"{"a": 1, "price": 1120.472}"#).unwrap();
        assert_eq!(Checksum::of(&double, spec), Checksum::of([&decimal], spec));
        assert_eq!(Checksum::of(&double, spec).sums["price"], 1_120_472);
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
        let (ca, cb) = (Checksum::of(&a, COUNTS), Checksum::of(&b, COUNTS));
        assert_eq!((ca.rows, &ca.sums), (cb.rows, &cb.sums));
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
