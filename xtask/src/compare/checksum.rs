//! What each engine's check run produced, reduced to numbers that must agree across engines.

use std::collections::{BTreeMap, HashMap};
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

    /// The checksum of rows given by batch.
    #[cfg(test)]
    pub fn checksum(self, batches: &BTreeMap<u64, Vec<Value>>) -> Checksum {
        let mut folder = Folder::new(self);
        batches.values().flatten().for_each(|row| folder.add(row));
        folder.finish()
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

/// What one output row adds to a checksum: its `sums` columns in thousandths (in the spec's
/// order) and its weighted value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Share {
    sums: Box<[i64]>,
    weighted: u64,
}

/// A checksum built row by row in batch order, holding per key of an update-mode changelog
/// only the latest row's share (tens of millions of rows do not fit in memory as JSON values).
pub struct Folder {
    spec: Spec,
    appended: Vec<Share>,
    latest: HashMap<u128, Share>,
}

impl Folder {
    pub fn new(spec: Spec) -> Folder {
        Folder {
            spec,
            appended: Vec::new(),
            latest: HashMap::new(),
        }
    }

    pub fn add(&mut self, row: &Value) {
        let share = Share {
            sums: self
                .spec
                .sums
                .iter()
                .map(|c| thousandths(&row[*c]))
                .collect(),
            weighted: weight(&row[self.spec.weight_key])
                .wrapping_mul(row[self.spec.weight_by].as_i64().unwrap_or(0) as u64),
        };
        if self.spec.update_key.is_empty() {
            self.appended.push(share);
        } else {
            self.latest
                .insert(key_hash(row, self.spec.update_key), share);
        }
    }

    pub fn finish(self) -> Checksum {
        let mut c = Checksum {
            sums: self.spec.sums.iter().map(|s| (s.to_string(), 0)).collect(),
            ..Checksum::default()
        };
        for share in self.appended.iter().chain(self.latest.values()) {
            c.rows += 1;
            for (column, v) in self.spec.sums.iter().zip(&share.sums) {
                let total = c.sums.get_mut(*column).expect("every sum column");
                *total = total.wrapping_add(*v);
            }
            c.weighted = c.weighted.wrapping_add(share.weighted);
        }
        c
    }
}

impl Checksum {
    #[cfg(test)]
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a Value>, spec: Spec) -> Checksum {
        let mut folder = Folder::new(Spec {
            update_key: &[],
            ..spec
        });
        rows.into_iter().for_each(|row| folder.add(row));
        folder.finish()
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

/// A key's columns hashed to 128 bits (FNV-1a), collision-free in practice at any key count
/// the bench runs.
fn key_hash(row: &Value, key: &[&str]) -> u128 {
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013B;
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for column in key {
        for b in key_text(&row[*column]).bytes().chain([0xff]) {
            h = (h ^ b as u128).wrapping_mul(PRIME);
        }
    }
    h
}

/// The checksum of the jsonl rows under `dir`, written one directory per batch (`batch=N`,
/// committed ones holding `_SUCCESS`, as Sluice's files sink and the Spark script write them),
/// folded in batch order.
pub fn read_batches(dir: &Path, spec: Spec) -> anyhow::Result<Checksum> {
    let batches = sluice_cluster_tests::committed_parts(dir)
        .with_context(|| format!("reading {}", dir.display()))?;
    let mut folder = Folder::new(spec);
    for (_, parts) in batches {
        for path in parts {
            let text = std::fs::read_to_string(&path)?;
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let row: Value = serde_json::from_str(line)
                    .with_context(|| format!("{}:{}", path.display(), i + 1))?;
                folder.add(&row);
            }
        }
    }
    Ok(folder.finish())
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
        let spec = Spec {
            update_key: &["a", "day"],
            weight_key: "a",
            weight_by: "n",
            sums: &["n"],
        };
        let c = spec.checksum(&batches);
        assert_eq!((c.rows, c.sums["n"]), (2, 7000));
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
    fn committed_batches_are_folded_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let batch = |n: u64, rows: &str, committed: bool| {
            let d = dir.path().join(format!("batch={n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("part-00000.json"), rows).unwrap();
            std::fs::write(d.join("part-00001.json#1"), "{\"key\":1,\"n\":99}\n").unwrap();
            if committed {
                std::fs::write(d.join("_SUCCESS"), "").unwrap();
            }
        };
        // Batch 10 sorts after batch 9 as a number, not as text; batch 11 never committed.
        batch(
            9,
            "{\"key\":1,\"n\":1,\"total\":1}\n\n{\"key\":2,\"n\":1,\"total\":1}\n",
            true,
        );
        batch(10, "{\"key\":1,\"n\":2,\"total\":3}\n", true);
        batch(11, "{\"key\":1,\"n\":7,\"total\":7}\n", false);
        let c = read_batches(dir.path(), COUNTS).unwrap();
        assert_eq!((c.rows, c.sums["n"], c.sums["total"]), (2, 3000, 4000));
    }
}
