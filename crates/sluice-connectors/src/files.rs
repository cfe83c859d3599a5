//! The `files` source: each batch takes the directory's new complete files in name order.

use crate::source::{PlanContext, Planned};
use crate::store::{self, Location};
use crate::{ConnectorError, Result, TableSpec};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use sluice_core::{SourceSplit, Trigger};
use std::collections::BTreeSet;
use std::io::{BufRead, Cursor};
use std::sync::Arc;

const OPTIONS: &[&str] = &[
    "path",
    "format",
    "max_files_per_batch",
    "csv.header",
    "csv.delimiter",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Jsonl,
    Csv { header: bool, delimiter: u8 },
    Parquet,
}

impl FileFormat {
    /// Reads the `format` and `csv.*` options; `writable` allows parquet (sinks only).
    pub fn from_options(opts: &crate::Options<'_>, writable: bool) -> Result<FileFormat> {
        let valid: &[&str] = if writable {
            &["jsonl", "csv", "parquet"]
        } else {
            &["jsonl", "csv"]
        };
        let format = opts.one_of("format", valid, "jsonl")?;
        Ok(match format {
            "csv" => {
                let delimiter = match opts.str("csv.delimiter") {
                    None => b',',
                    Some(d) if d.len() == 1 => d.as_bytes()[0],
                    Some(d) => {
                        return Err(opts.error(format!(
                            "option 'csv.delimiter' = '{d}' must be one character"
                        )));
                    }
                };
                FileFormat::Csv {
                    header: opts.bool("csv.header", true)?,
                    delimiter,
                }
            }
            "parquet" => FileFormat::Parquet,
            _ => FileFormat::Jsonl,
        })
    }

    pub fn extension(&self) -> &'static str {
        match self {
            FileFormat::Jsonl => "jsonl",
            FileFormat::Csv { .. } => "csv",
            FileFormat::Parquet => "parquet",
        }
    }
}

#[derive(Debug)]
pub struct FilesSource {
    table: String,
    location: Location,
    format: FileFormat,
    schema: SchemaRef,
    max_files_per_batch: Option<usize>,
}

impl FilesSource {
    pub fn new(spec: &TableSpec) -> Result<Self> {
        let opts = spec.options(OPTIONS, &[])?;
        let location =
            store::open(opts.required("path")?).map_err(|e| spec.error(e.to_string()))?;
        let max_files_per_batch = opts.parse::<usize>("max_files_per_batch")?;
        if max_files_per_batch == Some(0) {
            return Err(spec.error("option 'max_files_per_batch' must be at least 1"));
        }
        Ok(FilesSource {
            table: spec.name.clone(),
            location,
            format: FileFormat::from_options(&opts, false)?,
            schema: spec.schema.clone(),
            max_files_per_batch,
        })
    }

    pub async fn plan(&self, seen: &BTreeSet<String>, ctx: &PlanContext) -> Result<Planned> {
        let listing = match self
            .location
            .store
            .list_with_delimiter(Some(&self.location.prefix))
            .await
        {
            Ok(l) => l.objects,
            // A directory that does not exist yet simply has no files.
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut files: Vec<(String, u64)> = listing
            .into_iter()
            .filter(|m| {
                let name = m.location.filename().unwrap_or_default();
                !(name.starts_with('.') || name.starts_with('_') || name.ends_with(".tmp"))
            })
            .map(|m| (self.location.uri_of(&m.location), m.size))
            .filter(|(uri, _)| !seen.contains(uri))
            .collect();
        files.sort();
        if ctx.trigger != Trigger::Once
            && let Some(max) = self.max_files_per_batch
        {
            files.truncate(max);
        }
        Ok(Planned {
            splits: files
                .into_iter()
                .map(|(uri, size)| SourceSplit::File { uri, size })
                .collect(),
            exhausted: false,
            backlog: None,
        })
    }

    pub async fn read(&self, uri: &str) -> Result<Vec<RecordBatch>> {
        let name = uri
            .strip_prefix(self.location.uri.trim_end_matches('/'))
            .map(|r| r.trim_start_matches('/'))
            .ok_or_else(|| {
                ConnectorError::Read(format!(
                    "table '{}': file {uri} is outside {}",
                    self.table, self.location.uri
                ))
            })?;
        let path = self.location.child(name);
        let bytes = self
            .location
            .store
            .get(&path)
            .await
            .map_err(|e| {
                ConnectorError::Read(format!("table '{}': cannot read {uri}: {e}", self.table))
            })?
            .bytes()
            .await?;
        decode(&bytes, self.format, &self.schema)
            .map_err(|e| ConnectorError::Read(format!("table '{}': {uri} {e}", self.table)))
    }
}

/// Decodes a whole file. Errors start with "line N: " where the format allows it.
pub fn decode(
    bytes: &[u8],
    format: FileFormat,
    schema: &SchemaRef,
) -> std::result::Result<Vec<RecordBatch>, String> {
    match format {
        FileFormat::Jsonl => decode_jsonl(bytes, schema),
        FileFormat::Csv { header, delimiter } => arrow::csv::ReaderBuilder::new(schema.clone())
            .with_header(header)
            .with_delimiter(delimiter)
            .build(Cursor::new(bytes))
            .and_then(|r| r.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| csv_error_with_file_line(&e.to_string(), header)),
        FileFormat::Parquet => Err("parquet is not readable by the files source".into()),
    }
}

/// arrow-csv counts data records from 1 ("at line N"); readers want the file's line.
fn csv_error_with_file_line(msg: &str, header: bool) -> String {
    let Some(at) = msg.find(" at line ") else {
        return msg.to_string();
    };
    let rest = &msg[at + 9..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    match digits.parse::<u64>() {
        Ok(n) => format!(
            "line {}: {}{}",
            n + u64::from(header),
            &msg[..at],
            &rest[digits.len()..]
        ),
        Err(_) => msg.to_string(),
    }
}

fn decode_jsonl(bytes: &[u8], schema: &SchemaRef) -> std::result::Result<Vec<RecordBatch>, String> {
    let whole = arrow::json::ReaderBuilder::new(schema.clone())
        .build(Cursor::new(bytes))
        .and_then(|r| r.collect::<std::result::Result<Vec<_>, _>>());
    match whole {
        Ok(batches) => Ok(batches),
        // The fast path failed: find the first bad line so the error can name it.
        Err(whole_err) => {
            for (i, line) in Cursor::new(bytes).lines().enumerate() {
                let line = line.map_err(|e| format!("line {}: {e}", i + 1))?;
                if line.trim().is_empty() {
                    continue;
                }
                let one = arrow::json::ReaderBuilder::new(Arc::clone(schema))
                    .build(Cursor::new(line.as_bytes()))
                    .and_then(|r| r.collect::<std::result::Result<Vec<_>, _>>());
                if let Err(e) = one {
                    return Err(format!("line {}: {e}", i + 1));
                }
            }
            Err(whole_err.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, true),
            Field::new("page", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn jsonl_decodes_and_names_the_bad_line() {
        let good = b"{\"user_id\": 1, \"page\": \"a\"}\n{\"user_id\": 2, \"page\": \"b\"}\n";
        let batches = decode(good, FileFormat::Jsonl, &schema()).unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        let bad = b"{\"user_id\": 1, \"page\": \"a\"}\n\n{\"user_id\": \"x\", \"page\": \"b\"}\n";
        let err = decode(bad, FileFormat::Jsonl, &schema()).unwrap_err();
        assert!(err.starts_with("line 3:"), "{err}");
        let broken = b"{\"user_id\": 1}\n{\"user_id\": 2\n";
        let err = decode(broken, FileFormat::Jsonl, &schema()).unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
    }

    #[test]
    fn csv_decodes_with_header_and_names_the_bad_line() {
        let good = b"user_id,page\n1,a\n2,b\n";
        let fmt = FileFormat::Csv {
            header: true,
            delimiter: b',',
        };
        let batches = decode(good, fmt, &schema()).unwrap();
        assert_eq!(batches[0].num_rows(), 2);
        let err = decode(b"user_id,page\n1,a\nx,b\n", fmt, &schema()).unwrap_err();
        assert!(err.starts_with("line 3: "), "{err}");
    }
}
