//! A stateful operator's state version: chunks of rows, with the rows a later batch superseded
//! masked out, and for a running aggregation an index from key to row. A batch then looks up,
//! merges and appends only the keys it touched, so its cost grows with those keys and not with
//! the state (Spark's RocksDB store and Flink's keyed state backends make the same trade).
//!
//! Versions share their chunks: the next version clones them (reference counts), masks out
//! the superseded rows copy-on-write and appends one chunk of the batch's new rows. The index
//! moves from a version to the next one built from it; a version used again (a rerun, a
//! restore) builds its own. Chunks merge size-tiered (the newest while they are at least half
//! the size of the one before), and everything is rewritten once superseded rows outnumber
//! current ones, so each row is rewritten O(log n) times and the chunks stay few.

use crate::SqlError;
use arrow::array::BooleanBufferBuilder;
use arrow::array::{ArrayRef, BooleanArray, RecordBatch, new_null_array};
use arrow::buffer::BooleanBuffer;
use arrow::compute::{concat_batches, filter_record_batch, interleave_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows, SortField};
use hashbrown::HashTable;
use std::sync::{Arc, Mutex};

/// One state version of one partition.
#[derive(Default)]
pub struct State {
    chunks: Vec<Chunk>,
    /// Handed to the next version built from this one (taken, not shared).
    index: Mutex<Option<KeyIndex>>,
}

#[derive(Clone)]
struct Chunk {
    rows: RecordBatch,
    /// The key columns row-encoded, for hashing and comparing keys; set once indexed.
    keys: Option<Arc<Rows>>,
    /// Which rows are current; `None`: all of them.
    live: Option<BooleanBuffer>,
    live_rows: usize,
}

/// Key → location (chunk << 32 | row) of its current row.
struct KeyIndex(HashTable<u64>);

fn pack(chunk: u32, row: usize) -> u64 {
    ((chunk as u64) << 32) | row as u64
}

fn unpack(loc: u64) -> (u32, usize) {
    ((loc >> 32) as u32, (loc & 0xffff_ffff) as usize)
}

fn hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

impl Chunk {
    fn new(rows: RecordBatch, keys: Option<Arc<Rows>>) -> Chunk {
        Chunk {
            live_rows: rows.num_rows(),
            rows,
            keys,
            live: None,
        }
    }

    fn current(&self) -> Result<RecordBatch, SqlError> {
        Ok(match &self.live {
            None => self.rows.clone(),
            Some(live) => filter_record_batch(&self.rows, &BooleanArray::new(live.clone(), None))?,
        })
    }

    fn key(&self, row: usize) -> &[u8] {
        let keys = self.keys.as_ref().expect("an indexed chunk has its keys");
        keys.row(row).data()
    }

    fn is_live(&self, row: usize) -> bool {
        self.live.as_ref().is_none_or(|l| l.value(row))
    }

    /// Masks out `rows` (copying the mask, which older versions may share).
    fn supersede(&mut self, rows: &[usize]) {
        let n = self.rows.num_rows();
        let mut b = BooleanBufferBuilder::new(n);
        match &self.live {
            Some(live) => b.append_buffer(live),
            None => b.append_n(n, true),
        }
        for &r in rows {
            b.set_bit(r, false);
        }
        self.live = Some(b.finish());
        self.live_rows -= rows.len();
    }
}

impl State {
    /// A version holding `batches` as they are (operators without a key index).
    pub fn from_batches(batches: Vec<RecordBatch>) -> State {
        let chunks = (batches.into_iter())
            .filter(|b| b.num_rows() > 0)
            .map(|b| Chunk::new(b, None))
            .collect();
        State {
            chunks,
            index: Mutex::new(None),
        }
    }

    /// The current rows.
    pub fn batches(&self) -> Result<Vec<RecordBatch>, SqlError> {
        current_rows(&self.chunks)
    }

    pub fn num_rows(&self) -> usize {
        self.chunks.iter().map(|c| c.live_rows).sum()
    }

    /// Memory held: the chunks (superseded rows included), their keys and the index.
    pub fn memory_size(&self) -> usize {
        let chunks: usize = (self.chunks.iter())
            .map(|c| c.rows.get_array_memory_size() + c.keys.as_ref().map_or(0, |k| k.size()))
            .sum();
        let index = self.index.lock().unwrap();
        chunks + index.as_ref().map_or(0, |i| i.0.capacity() * 8)
    }

    /// Where the next version is built from this one.
    pub(crate) fn next(&self, keys: &KeyColumns) -> Result<Next, SqlError> {
        let taken = self.index.lock().unwrap().take();
        let mut chunks = self.chunks.clone();
        let index = match taken {
            Some(index) => index,
            None => {
                for c in chunks.iter_mut().filter(|c| c.keys.is_none()) {
                    c.keys = Some(Arc::new(keys.encode(&c.rows)?));
                }
                let mut table = HashTable::with_capacity(self.num_rows());
                for (i, c) in chunks.iter().enumerate() {
                    for row in (0..c.rows.num_rows()).filter(|&r| c.is_live(r)) {
                        let loc = pack(i as u32, row);
                        table.insert_unique(hash(c.key(row)), loc, |l: &u64| {
                            hash(key_at(&chunks, *l))
                        });
                    }
                }
                KeyIndex(table)
            }
        };
        Ok(Next { chunks, index })
    }
}

/// The key columns of a state schema (its first columns) and their row encoding.
pub(crate) struct KeyColumns {
    count: usize,
    converter: RowConverter,
}

impl KeyColumns {
    pub(crate) fn new(schema: &SchemaRef, count: usize) -> Result<KeyColumns, SqlError> {
        let fields = (schema.fields()[..count].iter())
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(KeyColumns {
            count,
            converter: RowConverter::new(fields)?,
        })
    }

    fn encode(&self, rows: &RecordBatch) -> Result<Rows, SqlError> {
        let columns: Vec<ArrayRef> = rows.columns()[..self.count].to_vec();
        Ok(self.converter.convert_columns(&columns)?)
    }
}

fn key_at(chunks: &[Chunk], loc: u64) -> &[u8] {
    let (chunk, row) = unpack(loc);
    chunks[chunk as usize].key(row)
}

/// A batch's keys (one row each), row-encoded, and where the state holds each.
pub(crate) struct Located {
    encoded: Arc<Rows>,
    hashes: Vec<u64>,
    found: Vec<Option<u64>>,
}

impl Located {
    pub(crate) fn any_found(&self) -> bool {
        self.found.iter().any(Option::is_some)
    }
}

/// The next version while a batch builds it.
pub(crate) struct Next {
    chunks: Vec<Chunk>,
    index: KeyIndex,
}

impl Next {
    /// Finds `rows`' keys (one row per key) in the state.
    pub(crate) fn locate(
        &self,
        keys: &KeyColumns,
        rows: &RecordBatch,
    ) -> Result<Located, SqlError> {
        let encoded = Arc::new(keys.encode(rows)?);
        let hashes: Vec<u64> = encoded.iter().map(|k| hash(k.data())).collect();
        let found = (encoded.iter().zip(&hashes))
            .map(|(key, h)| {
                let key = key.data();
                (self.index.0)
                    .find(*h, |l| key_at(&self.chunks, *l) == key)
                    .copied()
            })
            .collect();
        Ok(Located {
            encoded,
            hashes,
            found,
        })
    }

    /// The state's rows of `located`'s keys, row i for key i; a key the state lacks gets a
    /// row of nulls (every state column is nullable).
    pub(crate) fn aligned(
        &self,
        located: &Located,
        schema: &SchemaRef,
    ) -> Result<RecordBatch, SqlError> {
        let nulls = (schema.fields().iter())
            .map(|f| new_null_array(f.data_type(), 1))
            .collect();
        let nulls = RecordBatch::try_new(schema.clone(), nulls)?;
        let mut sources: Vec<&RecordBatch> = self.chunks.iter().map(|c| &c.rows).collect();
        sources.push(&nulls);
        let at: Vec<(usize, usize)> = (located.found.iter())
            .map(|loc| match loc.map(unpack) {
                Some((c, r)) => (c as usize, r),
                None => (self.chunks.len(), 0),
            })
            .collect();
        Ok(interleave_record_batch(&sources, &at)?)
    }

    /// The current rows of those of `located`'s keys that the state holds, in no set order.
    pub(crate) fn found_rows(&self, located: &Located) -> Result<Option<RecordBatch>, SqlError> {
        let sources: Vec<&RecordBatch> = self.chunks.iter().map(|c| &c.rows).collect();
        let at: Vec<(usize, usize)> = (located.found.iter().flatten())
            .map(|loc| {
                let (c, r) = unpack(*loc);
                (c as usize, r)
            })
            .collect();
        if at.is_empty() {
            return Ok(None);
        }
        Ok(Some(interleave_record_batch(&sources, &at)?))
    }

    /// Makes `rows` (row i for key i of `located`) the current rows of their keys,
    /// superseding older ones.
    pub(crate) fn upsert(
        &mut self,
        keys: &KeyColumns,
        located: Located,
        rows: RecordBatch,
    ) -> Result<(), SqlError> {
        if rows.num_rows() == 0 {
            return Ok(());
        }
        let at = self.chunks.len() as u32;
        self.chunks.push(Chunk::new(rows, Some(located.encoded)));
        let mut superseded: Vec<Vec<usize>> = vec![Vec::new(); self.chunks.len()];
        let chunks = &self.chunks;
        for (i, (h, found)) in located.hashes.iter().zip(&located.found).enumerate() {
            match found {
                Some(old) => {
                    let (c, r) = unpack(*old);
                    superseded[c as usize].push(r);
                    let loc = self.index.0.find_mut(*h, |l| l == old);
                    *loc.expect("a located key is indexed") = pack(at, i);
                }
                None => {
                    (self.index.0).insert_unique(*h, pack(at, i), |l| hash(key_at(chunks, *l)));
                }
            }
        }
        for (c, rows) in superseded.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            self.chunks[c].supersede(rows);
        }
        self.compact(keys)
    }

    fn compact(&mut self, keys: &KeyColumns) -> Result<(), SqlError> {
        let live: usize = self.chunks.iter().map(|c| c.live_rows).sum();
        let all: usize = self.chunks.iter().map(|c| c.rows.num_rows()).sum();
        if all - live > live {
            return self.merge_from(0, keys);
        }
        let mut from = self.chunks.len().saturating_sub(1);
        let mut newer = self.chunks.last().map_or(0, |c| c.live_rows);
        while from > 0 && newer * 2 >= self.chunks[from - 1].live_rows {
            from -= 1;
            newer += self.chunks[from].live_rows;
        }
        match from + 1 < self.chunks.len() {
            true => self.merge_from(from, keys),
            false => Ok(()),
        }
    }

    /// Rewrites the current rows of chunks `from..` as one chunk and points the index at it.
    /// Each entry is found by its old location, so no key is compared.
    fn merge_from(&mut self, from: usize, keys: &KeyColumns) -> Result<(), SqlError> {
        let schema = self.chunks[from].rows.schema();
        let rows = concat_batches(&schema, &current_rows(&self.chunks[from..])?)?;
        let encoded = Arc::new(keys.encode(&rows)?);
        // The old locations in the order `current_rows` lists the rows.
        let old = (self.chunks.iter().enumerate().skip(from)).flat_map(|(c, chunk)| {
            (0..chunk.rows.num_rows())
                .filter(|&r| chunk.is_live(r))
                .map(move |r| pack(c as u32, r))
        });
        for (i, old) in old.enumerate() {
            let loc = (self.index.0).find_mut(hash(encoded.row(i).data()), |l| *l == old);
            *loc.expect("every current row is indexed") = pack(from as u32, i);
        }
        self.chunks.truncate(from);
        self.chunks.push(Chunk::new(rows, Some(encoded)));
        Ok(())
    }

    pub(crate) fn into_state(self) -> State {
        State {
            chunks: self.chunks,
            index: Mutex::new(Some(self.index)),
        }
    }

    /// The current rows.
    pub(crate) fn batches(&self) -> Result<Vec<RecordBatch>, SqlError> {
        current_rows(&self.chunks)
    }
}

fn current_rows(chunks: &[Chunk]) -> Result<Vec<RecordBatch>, SqlError> {
    (chunks.iter())
        .filter(|c| c.live_rows > 0)
        .map(Chunk::current)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use std::collections::BTreeMap;

    type Model = BTreeMap<Option<i64>, i64>;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k0", DataType::Int64, true),
            Field::new("s0", DataType::Int64, true),
        ]))
    }

    fn rows(pairs: &[(Option<i64>, i64)]) -> RecordBatch {
        let keys: Int64Array = pairs.iter().map(|(k, _)| *k).collect();
        let values: Int64Array = pairs.iter().map(|(_, v)| Some(*v)).collect();
        RecordBatch::try_new(schema(), vec![Arc::new(keys), Arc::new(values)]).unwrap()
    }

    fn contents(state: &State) -> Model {
        let mut out = Model::new();
        for b in state.batches().unwrap() {
            let (k, v) = (
                b.column(0).as_primitive::<Int64Type>(),
                b.column(1).as_primitive::<Int64Type>(),
            );
            for i in 0..b.num_rows() {
                let key = k.is_valid(i).then(|| k.value(i));
                assert!(out.insert(key, v.value(i)).is_none(), "key {key:?} twice");
            }
        }
        out
    }

    /// One batch adding `delta` to each of its keys, as the running aggregation does.
    fn apply(state: &State, keys: &KeyColumns, delta: &[(Option<i64>, i64)]) -> State {
        let mut next = state.next(keys).unwrap();
        let batch = rows(delta);
        let located = next.locate(keys, &batch).unwrap();
        let found = next.found_rows(&located).unwrap();
        let before = contents(&State::from_batches(found.into_iter().collect()));
        let aligned = next.aligned(&located, &schema()).unwrap();
        let aligned = aligned.column(1).as_primitive::<Int64Type>();
        let merged: Vec<_> = (delta.iter().enumerate())
            .map(|(i, (k, d))| {
                let old = before.get(k).copied();
                assert_eq!(aligned.is_valid(i).then(|| aligned.value(i)), old);
                (*k, old.unwrap_or(0) + d)
            })
            .collect();
        next.upsert(keys, located, rows(&merged)).unwrap();
        next.into_state()
    }

    /// Batch `b`'s distinct keys: a few big batches over 0..20,000, then many small ones
    /// that keep rewriting a hot range (superseded rows pile up and force compactions).
    fn batch(b: u64) -> Vec<(Option<i64>, i64)> {
        let (n, range) = if b < 3 {
            (6_000, 20_000)
        } else {
            (1 + b * 37 % 3_000, 20_000)
        };
        let mut seen = BTreeMap::new();
        let mut x = b
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        for _ in 0..n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = (x >> 33) as i64 % range;
            seen.insert(
                if key == 7 { None } else { Some(key) },
                (x >> 40) as i64 % 100,
            );
        }
        seen.into_iter().collect()
    }

    #[test]
    fn versions_match_a_model_and_the_chunks_stay_few() {
        let keys = KeyColumns::new(&schema(), 1).unwrap();
        let mut state = Arc::new(State::default());
        let mut model = Model::new();
        let mut kept = Vec::new();
        for b in 0..200 {
            let delta = batch(b);
            for (k, d) in &delta {
                *model.entry(*k).or_default() += d;
            }
            state = Arc::new(apply(&state, &keys, &delta));
            assert_eq!(contents(&state), model, "after batch {b}");
            assert!(
                state.chunks.len() <= 16,
                "{} chunks after batch {b}",
                state.chunks.len()
            );
            if b % 50 == 10 {
                kept.push((b, state.clone(), model.clone()));
            }
        }
        // A kept version gave its index away; a rerun from it builds one and sees its keys.
        for (b, old, model) in kept {
            let delta = batch(b + 1);
            let mut want = model.clone();
            for (k, d) in &delta {
                *want.entry(*k).or_default() += d;
            }
            assert_eq!(
                contents(&apply(&old, &keys, &delta)),
                want,
                "rerun of {}",
                b + 1
            );
            assert_eq!(contents(&old), model, "version {b} unchanged by later ones");
        }
    }

    #[test]
    fn a_version_without_an_index_is_indexed_on_first_use() {
        let keys = KeyColumns::new(&schema(), 1).unwrap();
        let restored = State::from_batches(vec![
            rows(&[(Some(1), 10), (None, 5)]),
            rows(&[(Some(2), 1)]),
        ]);
        let next = apply(&restored, &keys, &[(Some(2), 4), (None, 1), (Some(3), 3)]);
        let want = Model::from([(None, 6), (Some(1), 10), (Some(2), 5), (Some(3), 3)]);
        assert_eq!(contents(&next), want);
        assert_eq!(next.num_rows(), 4);
    }
}
