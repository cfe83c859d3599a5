//! Event-time windows in FROM: `TUMBLE(table, time_column, INTERVAL size)` becomes the table
//! with two more columns, `window_start` and `window_end`, the half-open window `[start, end)`
//! of each row, aligned to the epoch (Flink SQL's windowing table-valued function).
//! `HOP(table, time_column, INTERVAL slide, INTERVAL size)` gives each row once per sliding
//! window that holds it (size / slide of them; the size must be a multiple of the slide). The query
//! is rewritten before DataFusion plans it, so grouping by `window_start, window_end` is an
//! ordinary key.

use crate::SqlError;
use datafusion::sql::sqlparser::ast::{
    FunctionArg, FunctionArgExpr, ObjectName, Query, SetExpr, TableAlias, TableFactor,
    TableWithJoins,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// Column names the window functions add.
pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";

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
    name.eq_ignore_ascii_case("tumble") || name.eq_ignore_ascii_case("hop")
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
