//! Event-time windows in FROM: `TUMBLE(table, time_column, INTERVAL size)` becomes the table
//! with two more columns, `window_start` and `window_end`, the half-open window `[start, end)`
//! of each row, aligned to the epoch (Flink SQL's windowing table-valued function).
//! `HOP(table, time_column, INTERVAL slide, INTERVAL size)` gives each row once per sliding
//! window that holds it (size / slide of them; the size must be a multiple of the slide).
//! `SESSION(table, time_column, INTERVAL gap)` gives each row its own session
//! `[ts, ts + gap)` as `session_start` and `session_end`; the running aggregation that groups by
//! them merges, per key, sessions that overlap or touch (Spark's session windows). The query
//! is rewritten before DataFusion plans it, so grouping by `window_start, window_end` is an
//! ordinary key. `GROUP BY date_bin(INTERVAL size, ts)` is a tumbling window too: see
//! [`WindowKey`] for how the running aggregation tells which key closes a window.

use crate::SqlError;
use arrow::array::{Array, ArrayRef, AsArray, Int64Array, PrimitiveArray, RecordBatch};
use arrow::compute::{SortColumn, cast, lexsort_to_indices, partition, take_record_batch};
use arrow::datatypes::{DataType, Int64Type};
use arrow::error::ArrowError;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Expr;
use datafusion::sql::sqlparser::ast::{
    FunctionArg, FunctionArgExpr, ObjectName, Query, SetExpr, TableAlias, TableFactor,
    TableWithJoins,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// Column names the window functions add.
pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";
/// Column names SESSION adds.
pub const SESSION_START: &str = "session_start";
pub const SESSION_END: &str = "session_end";

/// Rewrites every `TUMBLE(...)` in the query's FROM clauses (subqueries included).
pub fn rewrite_windows(query: &mut Query, err: &Fail<'_>) -> Result<(), SqlError> {
    rewrite_set(&mut query.body, err)
}

fn rewrite_set(body: &mut SetExpr, err: &Fail<'_>) -> Result<(), SqlError> {
    match body {
        SetExpr::Select(select) => {
            for from in &mut select.from {
                rewrite_from(from, err)?;
            }
            Ok(())
        }
        SetExpr::Query(q) => rewrite_windows(q, err),
        SetExpr::SetOperation { left, right, .. } => {
            rewrite_set(left, err)?;
            rewrite_set(right, err)
        }
        _ => Ok(()),
    }
}

fn rewrite_from(from: &mut TableWithJoins, err: &Fail<'_>) -> Result<(), SqlError> {
    rewrite_factor(&mut from.relation, err)?;
    for join in &mut from.joins {
        rewrite_factor(&mut join.relation, err)?;
    }
    Ok(())
}

fn rewrite_factor(factor: &mut TableFactor, err: &Fail<'_>) -> Result<(), SqlError> {
    match factor {
        TableFactor::Derived { subquery, .. } => rewrite_windows(subquery, err),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => rewrite_from(table_with_joins, err),
        TableFactor::Table {
            name,
            alias,
            args: Some(args),
            ..
        } if is_window_function(name) => {
            let function = name.to_string().to_ascii_uppercase();
            let args: Vec<String> = args
                .args
                .iter()
                .map(arg_text)
                .collect::<Result<_, _>>()
                .map_err(|a| err(format!("{function}: unsupported argument '{a}'")))?;
            let (table, sql) = match function.as_str() {
                "TUMBLE" => tumble(&args, err)?,
                "SESSION" => session(&args, err)?,
                _ => hop(&args, err)?,
            };
            let subquery = Parser::new(&GenericDialect {})
                .try_with_sql(&sql)
                .and_then(|mut p| p.parse_query())
                .map_err(|e| err(format!("{function}({}): {e}", args.join(", "))))?;
            // Unaliased, the windowed table keeps its name: `clicks.page` still resolves.
            let alias = alias.clone().or_else(|| {
                let last = table.rsplit('.').next().unwrap_or(&table);
                Some(TableAlias {
                    name: last.into(),
                    columns: Vec::new(),
                })
            });
            *factor = TableFactor::Derived {
                lateral: false,
                subquery,
                alias,
            };
            Ok(())
        }
        _ => Ok(()),
    }
}

fn is_window_function(name: &ObjectName) -> bool {
    let name = name.to_string();
    ["tumble", "hop", "session"]
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f))
}

/// The epoch-aligned start of the `size` window holding `time`.
fn bin(size: &str, time: &str) -> String {
    format!("date_bin({size}, {time}, TIMESTAMP '1970-01-01T00:00:00')")
}

/// TUMBLE(table, time, size): the table and the query that stands for it.
fn tumble(args: &[String], err: &Fail<'_>) -> Result<(String, String), SqlError> {
    let [table, time, size] = args else {
        return Err(err(format!(
            "TUMBLE takes (table, time_column, INTERVAL size), e.g. TUMBLE(clicks, ts, INTERVAL '1' MINUTE); got {} arguments",
            args.len()
        )));
    };
    interval(size, "TUMBLE's size", err)?;
    let start = bin(size, time);
    let sql = format!(
        "SELECT *, {start} AS {WINDOW_START}, {start} + {size} AS {WINDOW_END} FROM {table}"
    );
    Ok((table.clone(), sql))
}

/// SESSION(table, time, gap): each row its own session `[time, time + gap)`, which the
/// aggregation merges with the key's overlapping sessions.
fn session(args: &[String], err: &Fail<'_>) -> Result<(String, String), SqlError> {
    let [table, time, gap] = args else {
        return Err(err(format!(
            "SESSION takes (table, time_column, INTERVAL gap), e.g. SESSION(clicks, ts, INTERVAL '5' MINUTE); got {} arguments",
            args.len()
        )));
    };
    interval(gap, "SESSION's gap", err)?;
    let sql = format!(
        "SELECT *, {time} AS {SESSION_START}, {time} + {gap} AS {SESSION_END} FROM {table}"
    );
    Ok((table.clone(), sql))
}

/// Windows of one HOP at most, so a typo cannot multiply every row a million times.
const MAX_HOPS: u64 = 100;

/// HOP(table, time, slide, size): each row once per window holding it. The newest window
/// holding `time` starts at its slide bin; the older ones start a slide earlier each.
fn hop(args: &[String], err: &Fail<'_>) -> Result<(String, String), SqlError> {
    let [table, time, slide, size] = args else {
        return Err(err(format!(
            "HOP takes (table, time_column, INTERVAL slide, INTERVAL size), e.g. HOP(clicks, ts, INTERVAL '10' SECOND, INTERVAL '1' MINUTE); got {} arguments",
            args.len()
        )));
    };
    let slide_ms = interval(slide, "HOP's slide", err)?;
    let size_ms = interval(size, "HOP's size", err)?;
    let hops = size_ms / slide_ms;
    if size_ms % slide_ms != 0 || !(1..=MAX_HOPS).contains(&hops) {
        return Err(err(format!(
            "HOP's size ({size}) must be a multiple of its slide ({slide}), at most {MAX_HOPS} times it"
        )));
    }
    // One branch per window a row falls in, over the same rows: the newest window holding a
    // row starts at its slide bin, each older one a slide earlier.
    let newest = bin(slide, time);
    let branches: Vec<String> = (0..hops)
        .map(|i| {
            let start = std::iter::once(newest.clone())
                .chain((0..i).map(|_| slide.clone()))
                .collect::<Vec<_>>()
                .join(" - ");
            format!(
                "SELECT *, {start} AS {WINDOW_START}, {start} + {size} AS {WINDOW_END} FROM {table}"
            )
        })
        .collect();
    let sql = branches.join(" UNION ALL ");
    Ok((table.clone(), sql))
}

/// An INTERVAL argument's length in ms (positive), or an error naming `what`.
fn interval(text: &str, what: &str, err: &Fail<'_>) -> Result<u64, SqlError> {
    let bad = || {
        err(format!(
            "{what} must be an INTERVAL of positive length, e.g. INTERVAL '1' MINUTE; got {text}"
        ))
    };
    let rest = text.trim();
    if !rest.to_ascii_uppercase().starts_with("INTERVAL") {
        return Err(bad());
    }
    let rest = rest["INTERVAL".len()..].trim();
    let (amount, unit) = match rest.strip_prefix('\'').and_then(|r| r.split_once('\'')) {
        Some((amount, unit)) => (amount, unit.trim().to_ascii_lowercase()),
        None => return Err(bad()),
    };
    let ms = crate::parse::interval_ms(&format!("{amount} {unit}")).ok_or_else(bad)?;
    match ms {
        0 => Err(bad()),
        ms => Ok(ms),
    }
}

fn arg_text(arg: &FunctionArg) -> Result<String, String> {
    match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.to_string()),
        other => Err(other.to_string()),
    }
}

/// Makes the planning error (the INSERT's file and line) for a message.
pub type Fail<'a> = dyn Fn(String) -> SqlError + 'a;

/// What makes a running aggregation an event-time window: which group key closes the window
/// and when an input row is late. The watermark passing a window's end closes it (append mode
/// emits it, its state is dropped); a row for a closed window is dropped and counted.
pub(crate) struct WindowKey {
    /// The key that, plus `end_offset_ms`, is the window's end.
    pub close_key: usize,
    pub end_offset_ms: i64,
    /// Over an input row: the row is late when this plus `late_offset_ms` is at or before the
    /// watermark.
    pub late: Expr,
    pub late_offset_ms: i64,
    /// Session windows: the start and end keys, which merging rewrites.
    pub session: Option<(usize, usize)>,
}

impl WindowKey {
    /// For the resume check: how the keys make the window.
    pub fn describe(&self) -> String {
        match (self.session, self.end_offset_ms) {
            (Some((s, e)), _) => format!("session keys {s}, {e}"),
            (None, 0) => format!("window end key {}", self.close_key),
            (None, size) => format!("window key {} ends {size} ms later", self.close_key),
        }
    }
}

/// The window among a GROUP BY's keys, if any: `window_end` (TUMBLE, HOP), `session_start`
/// with `session_end` (SESSION), or `date_bin(INTERVAL size, ts)`, a tumbling window whose
/// key is its start.
pub(crate) fn window_key(group: &[Expr]) -> Result<Option<WindowKey>, String> {
    let column = |name: &str| {
        group
            .iter()
            .position(|e| matches!(e, Expr::Column(c) if c.name == name))
    };
    let plain = |key: usize, offset: i64| WindowKey {
        close_key: key,
        end_offset_ms: offset,
        late: group[key].clone(),
        late_offset_ms: offset,
        session: None,
    };
    match (column(SESSION_START), column(SESSION_END)) {
        (Some(start), Some(end)) => {
            // A row at or before the watermark could reopen a session already emitted.
            return Ok(Some(WindowKey {
                close_key: end,
                end_offset_ms: 0,
                late: group[start].clone(),
                late_offset_ms: 0,
                session: Some((start, end)),
            }));
        }
        (None, None) => {}
        _ => {
            return Err(format!(
                "group by both {SESSION_START} and {SESSION_END} of SESSION(...): a session is the pair, merged per key"
            ));
        }
    }
    if let Some(end) = column(WINDOW_END) {
        return Ok(Some(plain(end, 0)));
    }
    for (key, e) in group.iter().enumerate() {
        if let Some(size) = date_bin_size(e)? {
            return Ok(Some(plain(key, size)));
        }
    }
    Ok(None)
}

/// The keys a running aggregation's input is hash-shuffled on: all of them, but for a
/// session window's start and end, so every session of a key meets in one partition.
pub(crate) fn shuffle_keys(group: &[Expr]) -> Vec<Expr> {
    let session =
        |e: &Expr| matches!(e, Expr::Column(c) if c.name == SESSION_START || c.name == SESSION_END);
    match window_key(group) {
        Ok(Some(WindowKey {
            session: Some(_), ..
        })) => group.iter().filter(|e| !session(e)).cloned().collect(),
        _ => group.to_vec(),
    }
}

/// `date_bin(INTERVAL size, ts[, origin])`'s size in ms.
fn date_bin_size(e: &Expr) -> Result<Option<i64>, String> {
    let Expr::ScalarFunction(f) = e else {
        return Ok(None);
    };
    if !f.func.name().eq_ignore_ascii_case("date_bin") {
        return Ok(None);
    }
    let ms = match f.args.first() {
        Some(Expr::Literal(v, _)) => interval_ms(v),
        _ => None,
    };
    match ms {
        Some(ms) if ms > 0 => Ok(Some(ms)),
        _ => Err(format!(
            "{e}: a date_bin window's size must be an INTERVAL literal of days or less, e.g. date_bin(INTERVAL '1 minute', ts)"
        )),
    }
}

/// An INTERVAL literal of fixed length (days or less, no months) in ms.
pub(crate) fn interval_ms(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(v.days as i64 * 86_400_000 + v.nanoseconds / 1_000_000)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(v.days as i64 * 86_400_000 + v.milliseconds as i64)
        }
        _ => None,
    }
}

/// Session rows with their keys merged: per value of the other keys, sessions that overlap
/// become one `[first start, last end)`. The caller then groups by the keys to merge their
/// aggregates.
pub(crate) fn merge_sessions(
    b: &RecordBatch,
    (start, end): (usize, usize),
    keys: usize,
) -> Result<RecordBatch, ArrowError> {
    let others: Vec<usize> = (0..keys).filter(|k| *k != start && *k != end).collect();
    let order: Vec<SortColumn> = others
        .iter()
        .chain([&start])
        .map(|k| SortColumn {
            values: b.column(*k).clone(),
            options: None,
        })
        .collect();
    let sorted = take_record_batch(b, &lexsort_to_indices(&order, None)?)?;
    let groups = match others.is_empty() {
        true => std::iter::once(0..sorted.num_rows()).collect(),
        false => {
            let others: Vec<ArrayRef> = others.iter().map(|k| sorted.column(*k).clone()).collect();
            partition(&others)?.ranges()
        }
    };
    let starts = cast(sorted.column(start), &DataType::Int64)?;
    let ends = cast(sorted.column(end), &DataType::Int64)?;
    let (starts, ends) = (
        starts.as_primitive::<Int64Type>(),
        ends.as_primitive::<Int64Type>(),
    );
    let (mut new_starts, mut new_ends) = (starts.values().to_vec(), ends.values().to_vec());
    for range in groups {
        let mut i = range.start;
        while i < range.end {
            if starts.is_null(i) || ends.is_null(i) {
                i += 1;
                continue;
            }
            let (first, mut last) = (starts.value(i), ends.value(i));
            let mut j = i + 1;
            while j < range.end && !ends.is_null(j) && starts.value(j) < last {
                last = last.max(ends.value(j));
                j += 1;
            }
            new_starts[i..j].fill(first);
            new_ends[i..j].fill(last);
            i = j;
        }
    }
    let rebuilt = |values: Vec<i64>, was: &PrimitiveArray<Int64Type>, like: &ArrayRef| {
        let values = Int64Array::new(values.into(), was.nulls().cloned());
        cast(&values, like.data_type())
    };
    let mut columns = sorted.columns().to_vec();
    columns[start] = rebuilt(new_starts, starts, sorted.column(start))?;
    columns[end] = rebuilt(new_ends, ends, sorted.column(end))?;
    RecordBatch::try_new(sorted.schema(), columns)
}
