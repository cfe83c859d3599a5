//! Event-time windows in FROM: `TUMBLE(table, time_column, INTERVAL size)` becomes the table
//! with two more columns, `window_start` and `window_end`, the half-open window `[start, end)`
//! of each row, aligned to the epoch (Flink SQL's windowing table-valued function). The query
//! is rewritten before DataFusion plans it, so grouping by `window_start, window_end` is an
//! ordinary key.

use crate::SqlError;
use datafusion::sql::sqlparser::ast::{
    FunctionArg, FunctionArgExpr, Query, SetExpr, TableAlias, TableFactor, TableWithJoins,
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
        } if name.to_string().eq_ignore_ascii_case("tumble") => {
            let args: Vec<String> = args
                .args
                .iter()
                .map(arg_text)
                .collect::<Result<_, _>>()
                .map_err(|a| err(format!("TUMBLE: unsupported argument '{a}'")))?;
            let [table, time, size] = args.as_slice() else {
                return Err(err(format!(
                    "TUMBLE takes (table, time_column, INTERVAL size), e.g. TUMBLE(clicks, ts, INTERVAL '1' MINUTE); got {} arguments",
                    args.len()
                )));
            };
            if !size.to_ascii_uppercase().starts_with("INTERVAL") {
                return Err(err(format!(
                    "TUMBLE's size must be an INTERVAL, e.g. INTERVAL '1' MINUTE; got {size}"
                )));
            }
            let bin = format!("date_bin({size}, {time}, TIMESTAMP '1970-01-01T00:00:00')");
            let sql = format!(
                "SELECT *, {bin} AS {WINDOW_START}, {bin} + {size} AS {WINDOW_END} FROM {table}"
            );
            let subquery = Parser::new(&GenericDialect {})
                .try_with_sql(&sql)
                .and_then(|mut p| p.parse_query())
                .map_err(|e| err(format!("TUMBLE({table}, {time}, {size}): {e}")))?;
            // Unaliased, the windowed table keeps its name: `clicks.page` still resolves.
            let alias = alias.clone().or_else(|| {
                let last = table.rsplit('.').next().unwrap_or(table);
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

fn arg_text(arg: &FunctionArg) -> Result<String, String> {
    match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.to_string()),
        other => Err(other.to_string()),
    }
}

/// Makes the planning error (the INSERT's file and line) for a message.
pub type Fail<'a> = dyn Fn(String) -> SqlError + 'a;
