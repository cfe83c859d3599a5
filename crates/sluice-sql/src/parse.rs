//! The job file: `SET` settings, `CREATE TABLE ... WITH (...)` declarations and one
//! `INSERT INTO sink SELECT ...`. Tokenized once with sqlparser so that every error can name the
//! file's own line and column; the SELECT goes to DataFusion as a parsed query.

use crate::SqlError;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::sql::sqlparser::ast::Query;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Span, Token, TokenWithSpan, Tokenizer};
use sluice_connectors::TableSpec;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct TableDecl {
    pub spec: TableSpec,
    pub line: u64,
    /// `WATERMARK FOR col AS col - INTERVAL ...` in its column list.
    pub watermark: Option<WatermarkDecl>,
}

/// A table's event-time column and how far behind its largest value the watermark trails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkDecl {
    pub column: String,
    pub delay_ms: u64,
    /// Where the column is named, for errors found once the table's columns are known.
    pub line: u64,
    pub column_no: u64,
}

#[derive(Debug, Clone)]
pub struct InsertDecl {
    pub target: String,
    pub query: Box<Query>,
    pub line: u64,
}

#[derive(Debug, Clone, Default)]
pub struct JobFile {
    pub settings: BTreeMap<String, String>,
    pub tables: Vec<TableDecl>,
    pub insert: Option<InsertDecl>,
}

/// A cursor over one statement's tokens.
struct Stmt<'a> {
    origin: &'a str,
    tokens: &'a [TokenWithSpan],
    pos: usize,
}

impl<'a> Stmt<'a> {
    fn peek(&self) -> Option<&'a TokenWithSpan> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<&'a TokenWithSpan> {
        let t = self.tokens.get(self.pos);
        self.pos += 1;
        t
    }

    /// An error at the current token (or the statement's last one).
    fn error(&self, message: impl Into<String>) -> SqlError {
        let t = self
            .tokens
            .get(self.pos)
            .or(self.tokens.last())
            .expect("statements are not empty");
        SqlError::Syntax {
            origin: self.origin.to_string(),
            line: t.span.start.line,
            column: t.span.start.column,
            message: message.into(),
        }
    }

    fn keyword(&mut self, kw: Keyword) -> bool {
        match self.peek().map(|t| &t.token) {
            Some(Token::Word(w)) if w.keyword == kw => {
                self.pos += 1;
                true
            }
            _ => false,
        }
    }

    fn expect_keyword(&mut self, kw: Keyword) -> Result<(), SqlError> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(self.error(format!("expected {kw:?}, found {}", self.found())))
        }
    }

    fn expect(&mut self, token: Token) -> Result<(), SqlError> {
        if self.peek().map(|t| &t.token) == Some(&token) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(format!("expected '{token}', found {}", self.found())))
        }
    }

    fn found(&self) -> String {
        self.peek()
            .map(|t| format!("'{}'", t.token))
            .unwrap_or_else(|| "end of statement".into())
    }

    /// An identifier, a quoted identifier or a string literal (option keys may be any of these).
    fn name(&mut self, what: &str) -> Result<String, SqlError> {
        match self.peek().map(|t| &t.token) {
            Some(Token::Word(w)) => {
                self.pos += 1;
                let mut name = w.value.clone();
                // Dotted keys such as bootstrap.servers, written bare.
                while let (Some(Token::Period), Some(Token::Word(next))) = (
                    self.tokens.get(self.pos).map(|t| &t.token),
                    self.tokens.get(self.pos + 1).map(|t| &t.token),
                ) {
                    name = format!("{name}.{}", next.value);
                    self.pos += 2;
                }
                Ok(name)
            }
            Some(Token::SingleQuotedString(s)) | Some(Token::DoubleQuotedString(s)) => {
                self.pos += 1;
                Ok(s.clone())
            }
            _ => Err(self.error(format!("expected {what}, found {}", self.found()))),
        }
    }

    /// A literal value: string, number or bare word.
    fn value(&mut self, what: &str) -> Result<String, SqlError> {
        match self.peek().map(|t| &t.token) {
            Some(Token::SingleQuotedString(s)) | Some(Token::DoubleQuotedString(s)) => {
                self.pos += 1;
                Ok(s.clone())
            }
            Some(Token::Number(n, _)) => {
                self.pos += 1;
                Ok(n.clone())
            }
            Some(Token::Word(w)) => {
                self.pos += 1;
                Ok(w.value.clone())
            }
            _ => Err(self.error(format!("expected {what}, found {}", self.found()))),
        }
    }

    /// Whether the token `ahead` places on is the bare word `word`.
    fn peek_word_at(&self, ahead: usize, word: &str) -> bool {
        matches!(
            self.tokens.get(self.pos + ahead).map(|t| &t.token),
            Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word)
        )
    }

    fn peek_word(&self, word: &str) -> bool {
        self.peek_word_at(0, word)
    }

    /// An error at token `pos`.
    fn error_at(&self, pos: usize, message: impl Into<String>) -> SqlError {
        Stmt { pos, ..*self }.error(message)
    }

    /// After an item of a parenthesized list: true on ',', false on ')', else an error saying
    /// what was expected `where`.
    fn list_goes_on(&mut self, place: &str) -> Result<bool, SqlError> {
        match self.next().map(|t| &t.token) {
            Some(Token::Comma) => Ok(true),
            Some(Token::RParen) => Ok(false),
            _ => {
                self.pos -= 1;
                Err(self.error(format!(
                    "expected ',' or ')' {place}, found {}",
                    self.found()
                )))
            }
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.tokens.len()
    }
}

/// The file's tokens with their positions, without whitespace (comments included) and EOF.
fn significant_tokens(sql: &str, origin: &str) -> Result<Vec<TokenWithSpan>, SqlError> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| SqlError::Syntax {
            origin: origin.to_string(),
            line: e.location.line,
            column: e.location.column,
            message: e.message,
        })?;
    Ok(tokens
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
        .collect())
}

/// How deep an expression may nest. SQL syntax trees are cloned and dropped by recursive code
/// (sqlparser's and DataFusion's derived Clone and Drop) that no stack guard protects, so a
/// 30,000-term OR chain would overflow a thread's stack and abort the whole process.
pub const MAX_EXPRESSION_DEPTH: usize = 1000;

/// Refuses a statement whose expressions could nest deeper than [`MAX_EXPRESSION_DEPTH`],
/// judged from its tokens before any tree is built: along every path, each operator of a chain
/// (`a OR b OR c` is a left-deep tree) and each parenthesis adds a level; a comma starts a
/// sibling, which does not.
fn check_nesting(tokens: &[TokenWithSpan], origin: &str) -> Result<(), SqlError> {
    // Operators seen so far at each parenthesis level, between commas.
    let mut levels: Vec<usize> = vec![0];
    for t in tokens {
        match &t.token {
            Token::LParen => levels.push(0),
            Token::RParen if levels.len() > 1 => {
                levels.pop();
            }
            Token::Comma => *levels.last_mut().expect("never empty") = 0,
            tok if is_operator(tok) => *levels.last_mut().expect("never empty") += 1,
            _ => {}
        }
        let depth = levels.len() + levels.iter().sum::<usize>();
        if depth > MAX_EXPRESSION_DEPTH {
            return Err(SqlError::Syntax {
                origin: origin.to_string(),
                line: t.span.start.line,
                column: t.span.start.column,
                message: format!(
                    "expression nested more than {MAX_EXPRESSION_DEPTH} levels deep; write a long list of alternatives as `x IN (v1, v2, ...)`"
                ),
            });
        }
    }
    Ok(())
}

fn is_operator(t: &Token) -> bool {
    match t {
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::BETWEEN
                | Keyword::WHEN
        ),
        Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::Mod
        | Token::Eq
        | Token::DoubleEq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::StringConcat
        | Token::Ampersand
        | Token::Pipe
        | Token::Caret => true,
        _ => false,
    }
}

/// A job file with several INSERT statements is several jobs (as Flink's SQL client runs each
/// INSERT as its own job): one text per INSERT, holding every SET and CREATE TABLE and that
/// INSERT, with the other INSERTs blanked out so that line and column numbers stay true.
pub fn split_inserts(sql: &str, origin: &str) -> Result<Vec<String>, SqlError> {
    let tokens = significant_tokens(sql, origin)?;
    let mut inserts = Vec::new();
    for stmt in tokens.split(|t| t.token == Token::SemiColon) {
        if let Some(first) = stmt.first()
            && matches!(&first.token, Token::Word(w) if w.keyword == Keyword::INSERT)
        {
            let last = stmt.last().expect("non-empty");
            inserts.push((first.span.start, last.span.end));
        }
    }
    if inserts.len() <= 1 {
        return Ok(vec![sql.to_string()]);
    }
    // Byte offset of each line's start, to turn (line, column) into a position.
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let at = |loc: datafusion::sql::sqlparser::tokenizer::Location| -> usize {
        let start = line_starts[(loc.line as usize)
            .saturating_sub(1)
            .min(line_starts.len() - 1)];
        sql[start..]
            .char_indices()
            .nth((loc.column as usize).saturating_sub(1))
            .map_or(sql.len(), |(i, _)| start + i)
    };
    let ranges: Vec<(usize, usize)> = inserts.iter().map(|(s, e)| (at(*s), at(*e))).collect();
    Ok((0..ranges.len())
        .map(|keep| {
            let mut text = sql.to_string();
            // Last first: a blanked character may be shorter in bytes than what it replaces
            // ('é' is two), which would shift every later range.
            for (i, (s, e)) in ranges.iter().enumerate().rev() {
                if i != keep {
                    let blank: String = sql[*s..*e]
                        .chars()
                        .map(|c| if c == '\n' { '\n' } else { ' ' })
                        .collect();
                    text.replace_range(*s..*e, &blank);
                }
            }
            text
        })
        .collect())
}

pub fn parse_job(sql: &str, origin: &str) -> Result<JobFile, SqlError> {
    let dialect = GenericDialect {};
    let tokens = significant_tokens(sql, origin)?;
    let mut job = JobFile::default();
    for stmt_tokens in tokens.split(|t| t.token == Token::SemiColon) {
        if stmt_tokens.is_empty() {
            continue;
        }
        check_nesting(stmt_tokens, origin)?;
        let mut s = Stmt {
            origin,
            tokens: stmt_tokens,
            pos: 0,
        };
        let line = stmt_tokens[0].span.start.line;
        if s.keyword(Keyword::SET) {
            let key = s.name("a setting name")?;
            if !s.keyword(Keyword::TO) {
                s.expect(Token::Eq)?;
            }
            let value = s.value("a value")?;
            if !s.at_end() {
                return Err(s.error(format!("unexpected {} after SET", s.found())));
            }
            job.settings.insert(key, value);
        } else if s.keyword(Keyword::CREATE) {
            let decl = parse_create_table(&mut s, line)?;
            if job.tables.iter().any(|t| t.spec.name == decl.spec.name) {
                return Err(SqlError::Syntax {
                    origin: origin.to_string(),
                    line,
                    column: stmt_tokens[0].span.start.column,
                    message: format!("table '{}' is declared twice", decl.spec.name),
                });
            }
            job.tables.push(decl);
        } else if s.keyword(Keyword::INSERT) {
            if job.insert.is_some() {
                return Err(s.error(
                    "a job has exactly one INSERT INTO statement (a file with several is submitted as one job per INSERT)",
                ));
            }
            s.expect_keyword(Keyword::INTO)?;
            let target = s.name("the sink table's name")?;
            let mut rest = stmt_tokens[s.pos..].to_vec();
            if rest.is_empty() {
                return Err(s.error("expected a SELECT after INSERT INTO"));
            }
            // An explicit end, so "unexpected end" errors carry a position too.
            let end = stmt_tokens[stmt_tokens.len() - 1].span.end;
            rest.push(TokenWithSpan::new(Token::EOF, Span::new(end, end)));
            let mut parser = Parser::new(&dialect).with_tokens_with_locations(rest);
            let query = parser.parse_query().map_err(|e| SqlError::Parse {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
            let rest = parser.peek_token();
            if rest.token != Token::EOF {
                return Err(SqlError::Syntax {
                    origin: origin.to_string(),
                    line: rest.span.start.line,
                    column: rest.span.start.column,
                    message: format!("unexpected '{}' after the query", rest.token),
                });
            }
            job.insert = Some(InsertDecl {
                target,
                query,
                line,
            });
        } else {
            return Err(s.error(format!(
                "expected SET, CREATE TABLE or INSERT INTO, found {}",
                s.found()
            )));
        }
    }
    Ok(job)
}

fn parse_create_table(s: &mut Stmt<'_>, line: u64) -> Result<TableDecl, SqlError> {
    s.expect_keyword(Keyword::TABLE)?;
    let name = s.name("a table name")?;
    let mut fields = Vec::new();
    let mut declared_watermark = None;
    if s.peek().map(|t| &t.token) == Some(&Token::LParen) {
        s.next();
        let mut watermark: Option<WatermarkDecl> = None;
        loop {
            if s.peek_word("WATERMARK") && s.peek_word_at(1, "FOR") {
                let at = s.pos;
                let decl = parse_watermark(s)?;
                if watermark.is_some() {
                    s.pos = at;
                    return Err(s.error(format!(
                        "table '{name}' declares a second WATERMARK; a table has at most one"
                    )));
                }
                watermark = Some(decl);
                match s.list_goes_on("after the WATERMARK")? {
                    true => continue,
                    false => break,
                }
            }
            let col = s.name("a column name")?;
            let type_start = s.pos;
            let mut depth = 0;
            let mut words = Vec::new();
            while let Some(t) = s.peek() {
                match &t.token {
                    Token::Comma | Token::RParen if depth == 0 => break,
                    Token::LParen => depth += 1,
                    Token::RParen => depth -= 1,
                    _ => {}
                }
                words.push(t.token.to_string());
                s.next();
            }
            // "BIGINT NOT NULL": the constraint words follow the type.
            let not_null = words.windows(2).position(|w| {
                w[0].eq_ignore_ascii_case("NOT") && w[1].eq_ignore_ascii_case("NULL")
            });
            let nullable = not_null.is_none();
            let type_words = &words[..not_null.unwrap_or(words.len())];
            let type_text = type_words
                .join(" ")
                .replace(" ( ", "(")
                .replace("( ", "(")
                .replace(" )", ")")
                .replace(" , ", ",")
                .replace(" ,", ",");
            let data_type = sql_type(&type_text).ok_or_else(|| {
                let at = Stmt {
                    origin: s.origin,
                    tokens: s.tokens,
                    pos: type_start,
                };
                at.error(format!(
                    "unknown type '{type_text}' for column '{col}'; valid types: BIGINT, INT, SMALLINT, TINYINT, DOUBLE, FLOAT, REAL, DECIMAL(p,s), TEXT, VARCHAR, STRING, BOOLEAN, TIMESTAMP, DATE"
                ))
            })?;
            fields.push(Field::new(col, data_type, nullable));
            match s.next().map(|t| &t.token) {
                Some(Token::Comma) => continue,
                Some(Token::RParen) => break,
                _ => return Err(s.error("expected ',' or ')' in the column list")),
            }
        }
        check_watermark_column(s.origin, &name, &fields, watermark.as_ref())?;
        declared_watermark = watermark;
    }
    let mut options = BTreeMap::new();
    if s.keyword(Keyword::WITH) {
        s.expect(Token::LParen)?;
        loop {
            let key = s.name("an option name")?;
            s.expect(Token::Eq)?;
            let value = s.value("an option value")?;
            options.insert(key, value);
            match s.list_goes_on("in WITH options")? {
                true => continue,
                false => break,
            }
        }
    }
    if !s.at_end() {
        return Err(s.error(format!("unexpected {} after CREATE TABLE", s.found())));
    }
    if !options.contains_key("connector") {
        return Err(SqlError::Syntax {
            origin: s.origin.to_string(),
            line,
            column: 1,
            message: format!("table '{name}' needs WITH (connector = '...')"),
        });
    }
    Ok(TableDecl {
        spec: TableSpec {
            name,
            schema: Arc::new(Schema::new(fields)),
            options,
        },
        line,
        watermark: declared_watermark,
    })
}

/// `WATERMARK FOR ts AS ts [- INTERVAL '10' SECOND]` (also `INTERVAL '10 seconds'`), as in
/// Flink SQL; the cursor is on WATERMARK and ends after the clause.
fn parse_watermark(s: &mut Stmt<'_>) -> Result<WatermarkDecl, SqlError> {
    s.pos += 2; // WATERMARK FOR
    let at = s.peek().map(|t| t.span.start);
    let column = s.name("the event-time column after WATERMARK FOR")?;
    s.expect_keyword(Keyword::AS)?;
    let again = s.name("the event-time column after AS")?;
    if again != column {
        s.pos -= 1;
        return Err(s.error(format!(
            "WATERMARK FOR {column} AS ... must be '{column}' or '{column} - INTERVAL ...', found '{again}'"
        )));
    }
    let delay_ms = match s.peek().map(|t| &t.token) {
        Some(Token::Minus) => {
            s.next();
            parse_interval(s, false)?
        }
        Some(Token::Plus) => {
            s.next();
            parse_interval(s, true)?
        }
        _ => 0,
    };
    let at = at.expect("a name was read");
    Ok(WatermarkDecl {
        column,
        delay_ms,
        line: at.line,
        column_no: at.column,
    })
}

/// `INTERVAL '10' SECOND` or `INTERVAL '10 seconds'` as milliseconds; `added` (a `+`) or a
/// negative amount would put the watermark ahead of the events, which is refused.
fn parse_interval(s: &mut Stmt<'_>, added: bool) -> Result<u64, SqlError> {
    let start = s.pos;
    s.expect_keyword(Keyword::INTERVAL)?;
    let amount = match s.next().map(|t| &t.token) {
        Some(Token::SingleQuotedString(v)) => v.trim().to_string(),
        _ => {
            s.pos -= 1;
            return Err(s.error(format!(
                "expected the interval's amount as a string, e.g. INTERVAL '10' SECOND, found {}",
                s.found()
            )));
        }
    };
    let unit = match s.peek().map(|t| &t.token) {
        Some(Token::Word(w)) if w.quote_style.is_none() => {
            s.next();
            w.value.to_ascii_lowercase()
        }
        _ => String::new(),
    };
    let negative = added || amount.starts_with('-');
    let text = format!("{} {unit}", amount.trim_start_matches('-'));
    let ms = interval_ms(&text).ok_or_else(|| {
        s.error_at(
            start,
            format!("cannot read the interval '{amount}' {unit}: use e.g. INTERVAL '10' SECOND"),
        )
    })?;
    if negative && ms > 0 {
        return Err(s.error_at(
            start,
            "the watermark's delay is negative (the watermark would run ahead of the events); write 'ts - INTERVAL ...' with a positive amount",
        ));
    }
    Ok(ms)
}

/// "10 second", "1.5 minutes", "500 milliseconds", "10 seconds " as milliseconds.
pub(crate) fn interval_ms(text: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    let amount: f64 = words.next()?.parse().ok()?;
    let unit = words.next().unwrap_or("second");
    if words.next().is_some() || !amount.is_finite() || amount < 0.0 {
        return None;
    }
    let scale = match unit {
        "ms" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "minute" | "minutes" => 60_000.0,
        "h" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        _ => return None,
    };
    Some((amount * scale).round() as u64)
}

/// The WATERMARK's column must be a declared TIMESTAMP column. Connector columns (Kafka's
/// `_timestamp`) are not in the list; they are checked when the job is planned.
fn check_watermark_column(
    origin: &str,
    table: &str,
    fields: &[Field],
    watermark: Option<&WatermarkDecl>,
) -> Result<(), SqlError> {
    let Some(w) = watermark else {
        return Ok(());
    };
    let error = |message: String| SqlError::Syntax {
        origin: origin.to_string(),
        line: w.line,
        column: w.column_no,
        message,
    };
    match fields.iter().find(|f| f.name() == &w.column) {
        Some(f) if !matches!(f.data_type(), DataType::Timestamp(..)) => Err(error(format!(
            "WATERMARK FOR {}: column '{}' of table '{table}' is {}, not a TIMESTAMP",
            w.column,
            w.column,
            f.data_type()
        ))),
        Some(_) => Ok(()),
        None if w.column.starts_with('_') => Ok(()),
        None => Err(error(format!(
            "WATERMARK FOR {}: table '{table}' has no column '{}' (its columns: {})",
            w.column,
            w.column,
            fields
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Maps a SQL column type to Arrow, as DataFusion does for the common types.
fn sql_type(text: &str) -> Option<DataType> {
    let t = text.trim().to_ascii_uppercase();
    let (base, args) = match t.split_once('(') {
        Some((b, a)) => (
            b.trim().to_string(),
            Some(a.trim_end_matches(')').to_string()),
        ),
        None => (t.clone(), None),
    };
    Some(match base.as_str() {
        "BIGINT" | "INT8" | "LONG" => DataType::Int64,
        "INT" | "INTEGER" | "INT4" => DataType::Int32,
        "SMALLINT" | "INT2" => DataType::Int16,
        "TINYINT" => DataType::Int8,
        "DOUBLE" | "DOUBLE PRECISION" | "FLOAT8" => DataType::Float64,
        "FLOAT" | "REAL" | "FLOAT4" => DataType::Float32,
        "TEXT" | "VARCHAR" | "STRING" | "CHAR" | "CHARACTER VARYING" => DataType::Utf8,
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TIMESTAMP" => DataType::Timestamp(TimeUnit::Nanosecond, None),
        "DATE" => DataType::Date32,
        "DECIMAL" | "NUMERIC" => {
            let (p, s) = match args {
                Some(a) => {
                    let mut it = a.split(',').map(|x| x.trim().parse::<u8>());
                    let p = it.next()?.ok()?;
                    let s = it.next().map(|x| x.ok()).unwrap_or(Some(0))?;
                    (p, s as i8)
                }
                None => (38, 10),
            };
            DataType::Decimal128(p, s)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "-- a job\nSET 'trigger' = '1s';\nSET partitions = 4;\nCREATE TABLE clicks (user_id BIGINT, page TEXT, ts TIMESTAMP)\n  WITH (connector = 'files', 'path' = 'file:///data/in', format = 'jsonl', bootstrap.servers = 'x');\nCREATE TABLE page_counts (batch BIGINT NOT NULL, page VARCHAR(20), n DECIMAL(10,2))\n  WITH (connector = 'console');\nINSERT INTO page_counts SELECT _batch, page, count(*) FROM clicks GROUP BY _batch, page;\n";

    #[test]
    fn parses_settings_tables_and_insert() {
        let job = parse_job(JOB, "job.sql").unwrap();
        assert_eq!(job.settings["trigger"], "1s");
        assert_eq!(job.settings["partitions"], "4");
        let clicks = &job.tables[0].spec;
        assert_eq!(clicks.name, "clicks");
        assert_eq!(clicks.options["path"], "file:///data/in");
        assert_eq!(clicks.options["bootstrap.servers"], "x");
        assert_eq!(
            clicks.schema.field(2).data_type(),
            &DataType::Timestamp(TimeUnit::Nanosecond, None)
        );
        let out = &job.tables[1].spec;
        assert!(!out.schema.field(0).is_nullable());
        assert_eq!(out.schema.field(0).data_type(), &DataType::Int64);
        assert_eq!(out.schema.field(1).data_type(), &DataType::Utf8);
        assert_eq!(
            out.schema.field(2).data_type(),
            &DataType::Decimal128(10, 2)
        );
        assert_eq!(job.tables[1].line, 6);
        let insert = job.insert.unwrap();
        assert_eq!(insert.target, "page_counts");
        assert_eq!(insert.line, 8);
    }

    #[test]
    fn errors_name_line_and_column() {
        let err = parse_job(
            "SET a = 1;\nCREATE TABLE t (x BIGNUM) WITH (connector = 'console');",
            "j.sql",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("j.sql:2:19: unknown type 'BIGNUM'"),
            "{err}"
        );
        let err = parse_job("\n\nINSERT INTO t SELECT a FROM t WHERE;", "j.sql")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Line: 3"), "{err}");
        let err = parse_job("SELECT 1;", "j.sql").unwrap_err().to_string();
        assert!(err.starts_with("j.sql:1:1: expected SET"), "{err}");
        let err = parse_job("CREATE TABLE t (x INT) WITH (connector 'a');", "j.sql")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("j.sql:1:40: expected '='"), "{err}");
    }

    #[test]
    fn several_inserts_become_one_text_each_with_true_positions() {
        let sql = "SET 'trigger' = '1s';\nCREATE TABLE a (x BIGINT) WITH (connector = 'datagen');\nCREATE TABLE o1 WITH (connector = 'blackhole');\nCREATE TABLE o2 WITH (connector = 'blackhole');\nINSERT INTO o1 SELECT x FROM a;\nINSERT INTO o2\n  SELECT x + 1 FROM a WHERE x > 3;\n";
        let parts = split_inserts(sql, "two.sql").unwrap();
        assert_eq!(parts.len(), 2);
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(part.lines().count(), sql.lines().count());
            let job = parse_job(part, "two.sql").unwrap();
            assert_eq!(job.tables.len(), 3);
            let insert = job.insert.unwrap();
            assert_eq!(insert.target, format!("o{}", i + 1));
            assert_eq!(insert.line, 5 + i as u64);
        }
        assert_eq!(
            split_inserts("INSERT INTO o SELECT 1;", "x").unwrap().len(),
            1
        );
    }

    #[test]
    fn expressions_nested_too_deep_are_refused_before_any_tree_is_built() {
        let chain = |n: usize| {
            (0..n)
                .map(|i| format!("a = {i}"))
                .collect::<Vec<_>>()
                .join(" OR ")
        };
        let job = |cond: String| {
            format!(
                "CREATE TABLE t (a BIGINT) WITH (connector = 'datagen');\nCREATE TABLE o WITH (connector = 'blackhole');\nINSERT INTO o SELECT a FROM t\n  WHERE {cond};"
            )
        };
        let err = parse_job(&job(chain(30_000)), "j.sql")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("j.sql:4:") && err.contains("nested more than 1000"),
            "{err}"
        );
        let parens = format!("{}a{}", "(".repeat(2000), ")".repeat(2000));
        assert!(parse_job(&job(format!("{parens} = 1")), "j.sql").is_err());
        parse_job(&job(chain(200)), "j.sql").unwrap();
        // Many siblings are wide, not deep.
        let wide = (0..3000)
            .map(|i| format!("a + {i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "CREATE TABLE t (a BIGINT) WITH (connector = 'datagen');\nCREATE TABLE o WITH (connector = 'blackhole');\nINSERT INTO o SELECT {wide} FROM t;"
        );
        parse_job(&sql, "j.sql").unwrap();
    }

    #[test]
    fn non_ascii_text_in_an_insert_keeps_the_others_intact() {
        let sql = "CREATE TABLE a (page TEXT) WITH (connector = 'datagen');
CREATE TABLE o1 WITH (connector = 'blackhole');
CREATE TABLE o2 WITH (connector = 'blackhole');
CREATE TABLE o3 WITH (connector = 'blackhole');
INSERT INTO o1 SELECT page FROM a WHERE page = 'café';
INSERT INTO o2 SELECT page FROM a WHERE page = 'naïve – ✓';
INSERT INTO o3 SELECT page FROM a;
";
        let parts = split_inserts(sql, "j.sql").unwrap();
        assert_eq!(parts.len(), 3);
        for (i, part) in parts.iter().enumerate() {
            let job = parse_job(part, "j.sql").unwrap_or_else(|e| panic!("part {i}: {e}"));
            let insert = job.insert.unwrap();
            assert_eq!(insert.target, format!("o{}", i + 1));
            assert_eq!(insert.line, 5 + i as u64);
        }
        assert!(parts[0].contains("'café'") && parts[1].contains("'naïve – ✓'"));
    }
}
