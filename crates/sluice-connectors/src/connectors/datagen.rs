//! The `datagen` source: rows that are a pure function of (seed, row number, column), so any
//! range of rows can be regenerated exactly after a failure.

use crate::connector::{
    PlanContext, Planned, Position, SourceConnector, SourceFactory, SplitRead, decode_position,
    decode_split, encode_position,
};
use crate::{ConnectorError, Result, TableSpec};
use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float32Array, Float64Array, Int8Array, Int16Array,
    Int32Array, Int64Array, StringBuilder, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray, TimestampSecondArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use sluice_core::{SourceSplit, Trigger};
use std::collections::BTreeMap;
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64_with_seed;

const OPTIONS: &[&str] = &["rows_per_second", "total_rows", "seed", "splits"];
const FIELD_OPTIONS: &[&str] = &["kind", "min", "max", "length", "values"];
/// Generated timestamps start here (2025-01-01T00:00:00Z) and advance 1/rows_per_second per row.
const EPOCH_MICROS: i64 = 1_735_689_600_000_000;
const ROWS_PER_CHUNK: u64 = 8192;

#[derive(Debug, Clone)]
enum FieldGen {
    Random { min: f64, max: f64, length: usize },
    Sequence { start: i64 },
    Values(Vec<String>),
}

const SPLIT_KIND: &str = "datagen";

/// Rows `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rows {
    pub start: u64,
    pub end: u64,
}

impl From<Rows> for SourceSplit {
    fn from(r: Rows) -> SourceSplit {
        SourceSplit::encode(SPLIT_KIND, &r)
    }
}

/// The next row to generate.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Next {
    next_row: u64,
}

pub struct Factory;

impl SourceFactory for Factory {
    fn name(&self) -> &'static str {
        "datagen"
    }

    fn open(&self, spec: &TableSpec) -> Result<Box<dyn SourceConnector>> {
        Ok(Box::new(DatagenSource::new(spec)?))
    }

    fn identity_options(&self) -> &'static [&'static str] {
        &["seed"]
    }

    fn split_kind(&self) -> &'static str {
        SPLIT_KIND
    }

    fn summarize(&self, splits: &[SourceSplit]) -> String {
        let rows: Vec<Rows> = splits
            .iter()
            .filter_map(|s| s.decode(SPLIT_KIND).ok())
            .collect();
        match (
            rows.iter().map(|r| r.start).min(),
            rows.iter().map(|r| r.end).max(),
        ) {
            (Some(lo), Some(hi)) => format!("rows {lo}..{hi} in {} splits", rows.len()),
            _ => "no input".into(),
        }
    }
}

#[async_trait::async_trait]
impl SourceConnector for DatagenSource {
    fn start(&self) -> Position {
        encode_position(SPLIT_KIND, &Next::default())
    }

    fn advance(&self, position: &mut Position, splits: &[SourceSplit]) -> Result<()> {
        let mut at: Next = decode_position(SPLIT_KIND, position)?;
        for split in splits {
            let rows: Rows = decode_split(SPLIT_KIND, split)?;
            at.next_row = at.next_row.max(rows.end);
        }
        *position = encode_position(SPLIT_KIND, &at);
        Ok(())
    }

    async fn plan(&self, position: &Position, ctx: &PlanContext) -> Result<Planned> {
        let at: Next = decode_position(SPLIT_KIND, position)?;
        Ok(DatagenSource::plan(self, at.next_row, ctx))
    }

    async fn read(&self, split: &SourceSplit) -> Result<SplitRead> {
        let rows: Rows = decode_split(SPLIT_KIND, split)?;
        Ok(SplitRead {
            rows: DatagenSource::read(self, rows.start, rows.end)?,
            dead_letters: None,
        })
    }
}

#[derive(Debug)]
pub struct DatagenSource {
    table: String,
    schema: SchemaRef,
    rows_per_second: u64,
    total_rows: Option<u64>,
    seed: u64,
    splits: Option<u32>,
    fields: Vec<FieldGen>,
}

impl DatagenSource {
    pub fn new(spec: &TableSpec) -> Result<Self> {
        let opts = spec.options(OPTIONS, &["fields."])?;
        let mut per_field: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
        for (key, value) in &spec.options {
            if let Some(rest) = key.strip_prefix("fields.") {
                let (col, opt) = rest.rsplit_once('.').ok_or_else(|| {
                    spec.error(format!(
                        "option '{key}' should be 'fields.<column>.<option>'"
                    ))
                })?;
                if spec.schema.field_with_name(col).is_err() {
                    return Err(spec.error(format!("option '{key}' names unknown column '{col}'")));
                }
                if !FIELD_OPTIONS.contains(&opt) {
                    return Err(spec.error(format!(
                        "unknown option '{key}'; valid field options: {}",
                        FIELD_OPTIONS.join(", ")
                    )));
                }
                per_field
                    .entry(col)
                    .or_default()
                    .insert(opt, value.as_str());
            }
        }
        let mut fields = Vec::new();
        for f in spec.schema.fields() {
            let o = per_field.remove(f.name().as_str()).unwrap_or_default();
            // Bounded so that every generated value fits its column and a string stays small.
            let num = |k: &str, d: f64| -> Result<f64> {
                let max = if k == "length" { 1e6 } else { 1e15 };
                o.get(k)
                    .map(|v| {
                        v.trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|n| (-max..=max).contains(n) && (k != "length" || *n >= 0.0))
                            .ok_or_else(|| {
                                spec.error(format!(
                                    "option 'fields.{}.{k}' = '{v}' must be a number from {} to {max}",
                                    f.name(),
                                    if k == "length" { 0.0 } else { -max }
                                ))
                            })
                    })
                    .unwrap_or(Ok(d))
            };
            supported(f.data_type())
                .map_err(|m| spec.error(format!("column '{}': {m}", f.name())))?;
            let g = match o.get("kind").copied().unwrap_or("random") {
                "sequence" => FieldGen::Sequence {
                    start: num("min", 0.0)? as i64,
                },
                "random" if o.contains_key("values") => FieldGen::Values(
                    o["values"]
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .collect(),
                ),
                "random" => FieldGen::Random {
                    min: num("min", 0.0)?,
                    max: num("max", 1000.0)?,
                    length: num("length", 8.0)? as usize,
                },
                other => {
                    return Err(spec.error(format!(
                        "option 'fields.{}.kind' = '{other}' is invalid; valid values: random, sequence",
                        f.name()
                    )));
                }
            };
            fields.push(g);
        }
        let rows_per_second = opts
            .number_in("rows_per_second", 1..=1_000_000_000u64)?
            .unwrap_or(1000);
        Ok(DatagenSource {
            table: spec.name.clone(),
            schema: spec.schema.clone(),
            rows_per_second,
            total_rows: opts.parse("total_rows")?,
            seed: opts.parse("seed")?.unwrap_or(0),
            splits: opts.number_in("splits", 1..=1_000_000)?,
            fields,
        })
    }

    pub fn plan(&self, next_row: u64, ctx: &PlanContext) -> Planned {
        let elapsed_ms = ctx.now_ms.saturating_sub(ctx.job_start_ms);
        let by_rate = self.rows_per_second.saturating_mul(elapsed_ms) / 1000;
        let available = match (ctx.trigger, self.total_rows) {
            (Trigger::ProcessingTime(_), Some(total)) => by_rate.min(total),
            (_, Some(total)) => total,
            (_, None) => by_rate,
        };
        let end = match ctx.trigger {
            // available_now respects the rate as a per-batch cap; once takes everything.
            Trigger::AvailableNow => available.min(next_row + self.rows_per_second),
            Trigger::Once => available,
            // After a long pause (a driver down for an hour) the rows due are caught up over
            // several batches of at most a minute's worth (or two intervals), not one.
            Trigger::ProcessingTime(interval) => {
                let span = (interval.as_secs_f64() * 2.0).max(60.0);
                let cap = (self.rows_per_second as f64 * span) as u64;
                if available > next_row.saturating_add(cap) {
                    tracing::info!(
                        table = %self.table,
                        behind = available - next_row,
                        "batch capped at {cap} rows ({span:.0} s at rows_per_second)"
                    );
                }
                available.min(next_row.saturating_add(cap))
            }
        };
        let exhausted = self.total_rows.is_some_and(|t| end >= t);
        let n = u64::from(self.splits.unwrap_or(ctx.default_splits).max(1));
        let rows = end.saturating_sub(next_row);
        let splits = if rows == 0 {
            Vec::new()
        } else {
            (0..n)
                .map(|i| Rows {
                    start: next_row + rows * i / n,
                    end: next_row + rows * (i + 1) / n,
                })
                .filter(|r| r.start < r.end)
                .map(SourceSplit::from)
                .collect()
        };
        Planned {
            splits,
            exhausted,
            backlog: None,
        }
    }

    pub fn read(&self, start: u64, end: u64) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        let mut lo = start;
        while lo < end {
            let hi = (lo + ROWS_PER_CHUNK).min(end);
            let columns = self
                .schema
                .fields()
                .iter()
                .zip(&self.fields)
                .enumerate()
                .map(|(c, (f, g))| self.column(c as u64, f.data_type(), g, lo, hi))
                .collect::<Vec<_>>();
            out.push(
                RecordBatch::try_new(self.schema.clone(), columns)
                    .map_err(|e| ConnectorError::Read(format!("table '{}': {e}", self.table)))?,
            );
            lo = hi;
        }
        Ok(out)
    }

    fn column(&self, c: u64, ty: &DataType, g: &FieldGen, lo: u64, hi: u64) -> ArrayRef {
        let seed = self.seed ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let hash = |row: u64| xxh3_64_with_seed(&row.to_le_bytes(), seed);
        let rows = lo..hi;
        let int = |row: u64| -> i64 {
            match g {
                FieldGen::Sequence { start } => start + row as i64,
                FieldGen::Random { min, max, .. } => {
                    let (min, max) = (*min as i64, (*max as i64).max(*min as i64));
                    min + (hash(row) % ((max - min) as u64 + 1)) as i64
                }
                FieldGen::Values(v) => (hash(row) % v.len() as u64) as i64,
            }
        };
        let float = |row: u64| -> f64 {
            match g {
                FieldGen::Random { min, max, .. } => {
                    min + (hash(row) as f64 / u64::MAX as f64) * (max - min)
                }
                _ => int(row) as f64,
            }
        };
        let micros = |row: u64| {
            EPOCH_MICROS + (row as i128 * 1_000_000 / self.rows_per_second as i128) as i64
        };
        match ty {
            DataType::Int8 => Arc::new(Int8Array::from_iter_values(rows.map(|r| int(r) as i8))),
            DataType::Int16 => Arc::new(Int16Array::from_iter_values(rows.map(|r| int(r) as i16))),
            DataType::Int32 => Arc::new(Int32Array::from_iter_values(rows.map(|r| int(r) as i32))),
            DataType::Int64 => Arc::new(Int64Array::from_iter_values(rows.map(int))),
            DataType::UInt32 => {
                Arc::new(UInt32Array::from_iter_values(rows.map(|r| int(r) as u32)))
            }
            DataType::UInt64 => {
                Arc::new(UInt64Array::from_iter_values(rows.map(|r| int(r) as u64)))
            }
            DataType::Float32 => Arc::new(Float32Array::from_iter_values(
                rows.map(|r| float(r) as f32),
            )),
            DataType::Float64 => Arc::new(Float64Array::from_iter_values(rows.map(float))),
            DataType::Boolean => Arc::new(BooleanArray::from_iter(
                rows.map(|r| Some(hash(r) & 1 == 1)),
            )),
            DataType::Utf8 => {
                // Written straight into the array's buffer: no String per row.
                use std::fmt::Write;
                let n = (hi - lo) as usize;
                let mut b = StringBuilder::with_capacity(n, n * 8);
                for r in rows {
                    match g {
                        FieldGen::Values(v) => b.append_value(&v[int(r) as usize]),
                        FieldGen::Sequence { start } => {
                            let _ = write!(b, "{}", start + r as i64);
                            b.append_value("");
                        }
                        FieldGen::Random { length, .. } => {
                            let mut buf = [0u8; 32];
                            let _ = std::io::Write::write_fmt(
                                &mut &mut buf[..],
                                format_args!("{:016x}{:016x}", hash(r), hash(r ^ u64::MAX)),
                            );
                            let text = std::str::from_utf8(&buf).unwrap_or_default();
                            b.append_value(&text[..(*length).clamp(1, 32)]);
                        }
                    }
                }
                Arc::new(b.finish())
            }
            DataType::Date32 => Arc::new(Date32Array::from_iter_values(
                rows.map(|r| (micros(r) / 86_400_000_000) as i32),
            )),
            DataType::Timestamp(unit, tz) => {
                let v = rows.map(micros);
                match unit {
                    TimeUnit::Second => Arc::new(
                        TimestampSecondArray::from_iter_values(v.map(|m| m / 1_000_000))
                            .with_timezone_opt(tz.clone()),
                    ),
                    TimeUnit::Millisecond => Arc::new(
                        TimestampMillisecondArray::from_iter_values(v.map(|m| m / 1000))
                            .with_timezone_opt(tz.clone()),
                    ),
                    TimeUnit::Microsecond => Arc::new(
                        TimestampMicrosecondArray::from_iter_values(v)
                            .with_timezone_opt(tz.clone()),
                    ),
                    TimeUnit::Nanosecond => Arc::new(
                        TimestampNanosecondArray::from_iter_values(v.map(|m| m * 1000))
                            .with_timezone_opt(tz.clone()),
                    ),
                }
            }
            other => unreachable!("checked by supported(): {other}"),
        }
    }
}

fn supported(ty: &DataType) -> std::result::Result<(), String> {
    match ty {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float32
        | DataType::Float64
        | DataType::Boolean
        | DataType::Utf8
        | DataType::Date32
        | DataType::Timestamp(_, _) => Ok(()),
        other => Err(format!("datagen cannot generate type {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::{Field, Schema};
    use std::time::Duration;

    #[test]
    fn text_columns_hold_sequence_numbers_random_hex_and_listed_values() {
        let text = |opts: &[(&str, &str)]| {
            let d = DatagenSource::new(&spec(opts)).unwrap();
            let batch = d.read(5, 8).unwrap().remove(0);
            let pages = batch
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            pages
                .iter()
                .map(|p| p.unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let seq = text(&[("fields.page.kind", "sequence"), ("fields.page.min", "100")]);
        assert_eq!(seq, ["105", "106", "107"]);
        let random = text(&[("fields.page.length", "20")]);
        assert!(
            random
                .iter()
                .all(|s| s.len() == 20 && s.chars().all(|c| c.is_ascii_hexdigit()))
        );
        assert_ne!(random[0], random[1]);
        assert!(
            text(&[("fields.page.values", "x,y")])
                .iter()
                .all(|p| p == "x" || p == "y")
        );
    }

    fn spec(opts: &[(&str, &str)]) -> TableSpec {
        let mut options: BTreeMap<String, String> = opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        options.insert("connector".into(), "datagen".into());
        TableSpec {
            name: "clicks".into(),
            schema: Arc::new(Schema::new(vec![
                Field::new("user_id", DataType::Int64, true),
                Field::new("page", DataType::Utf8, true),
                Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
            ])),
            options,
        }
    }

    fn ctx(trigger: Trigger, elapsed_ms: u64) -> PlanContext {
        PlanContext {
            now_ms: 10_000 + elapsed_ms,
            job_start_ms: 10_000,
            trigger,
            default_splits: 3,
        }
    }

    #[test]
    fn any_range_regenerates_exactly() {
        let d =
            DatagenSource::new(&spec(&[("fields.page.values", "a,b,c"), ("seed", "42")])).unwrap();
        let whole = arrow::compute::concat_batches(&d.schema, &d.read(0, 20_000).unwrap()).unwrap();
        let part =
            arrow::compute::concat_batches(&d.schema, &d.read(10_000, 10_100).unwrap()).unwrap();
        assert_eq!(whole.slice(10_000, 100), part);
        let pages = part
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert!(pages.iter().all(|p| matches!(p, Some("a" | "b" | "c"))));
        let users = part
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert!(users.values().iter().all(|u| (0..=1000).contains(u)));
    }

    #[test]
    fn plans_by_rate_and_stops_at_total() {
        let d = DatagenSource::new(&spec(&[
            ("rows_per_second", "1000"),
            ("total_rows", "2500"),
        ]))
        .unwrap();
        let t = Trigger::ProcessingTime(Duration::from_secs(1));
        let p = d.plan(0, &ctx(t, 1000));
        assert_eq!(p.splits.len(), 3);
        assert_eq!(p.splits[0], Rows { start: 0, end: 333 }.into());
        assert_eq!(
            p.splits[2],
            Rows {
                start: 666,
                end: 1000
            }
            .into()
        );
        assert!(!p.exhausted);
        let p = d.plan(1000, &ctx(t, 9000));
        assert_eq!(
            p.splits.last(),
            Some(
                &Rows {
                    start: 2000,
                    end: 2500
                }
                .into()
            )
        );
        assert!(p.exhausted);
        assert!(d.plan(2500, &ctx(t, 9000)).splits.is_empty());
        let once = d.plan(0, &ctx(Trigger::Once, 0));
        assert_eq!(
            once.splits.last(),
            Some(
                &Rows {
                    start: 1666,
                    end: 2500
                }
                .into()
            )
        );
    }

    #[test]
    fn catching_up_after_a_long_pause_takes_several_bounded_batches() {
        let d = DatagenSource::new(&spec(&[("rows_per_second", "1000")])).unwrap();
        let t = Trigger::ProcessingTime(Duration::from_secs(1));
        // An hour of rows is due: the batch takes a minute of them.
        let p = d.plan(0, &ctx(t, 3_600_000));
        let end = p
            .splits
            .iter()
            .map(|s| s.decode::<Rows>(SPLIT_KIND).unwrap().end)
            .max();
        assert_eq!(end, Some(60_000));
    }

    #[test]
    fn bad_options_are_named() {
        let err = DatagenSource::new(&spec(&[("rows_per_sec", "5")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'rows_per_sec'") && err.contains("rows_per_second"),
            "{err}"
        );
        let err = DatagenSource::new(&spec(&[("fields.nope.min", "5")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown column 'nope'"), "{err}");
    }
}
