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

/// Files per batch when `max_files_per_batch` is not set.
pub const DEFAULT_MAX_FILES_PER_BATCH: usize = 1000;

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
        let max_files_per_batch = opts.number_in("max_files_per_batch", 1..=1_000_000usize)?;
        Ok(FilesSource {
            table: spec.name.clone(),
            location,
            format: FileFormat::from_options(&opts, false)?,
            schema: spec.schema.clone(),
            max_files_per_batch,
        })
    }

    pub async fn plan(&self, seen: &BTreeSet<String>, ctx: &PlanContext) -> Result<Planned> {
        self.check_directory(ctx.trigger)?;
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
        // A batch is bounded even when no limit is set (a trigger 'once' takes everything).
        if ctx.trigger != Trigger::Once {
            let max = self
                .max_files_per_batch
                .unwrap_or(DEFAULT_MAX_FILES_PER_BATCH);
            if files.len() > max {
                tracing::info!(
                    table = %self.table,
                    new_files = files.len(),
                    "batch capped at {max} files (max_files_per_batch); the rest go to the next batches"
                );
                files.truncate(max);
            }
        }
        // Only the files this batch takes: a backlog of thousands is not stat'ed every batch.
        for (uri, _) in &files {
            self.check_regular(uri)?;
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

    /// A directory that does not exist is a typo in a job that runs once; a streaming job
    /// waits for it to appear. (Object stores have no directories: only local paths are checked.)
    fn check_directory(&self, trigger: Trigger) -> Result<()> {
        let Some(dir) = self.location.local_path() else {
            return Ok(());
        };
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(ConnectorError::Options {
                table: self.table.clone(),
                message: format!("option 'path': {} is not a directory", self.location.uri),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !trigger.is_bounded() => Ok(()),
            Err(e) => Err(ConnectorError::Options {
                table: self.table.clone(),
                message: format!("option 'path': {} does not exist ({e})", self.location.uri),
            }),
        }
    }

    /// Reading a FIFO or a device would block or never end: refuse it by name.
    fn check_regular(&self, uri: &str) -> Result<()> {
        let Some(path) = uri.strip_prefix("file://") else {
            return Ok(());
        };
        match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => Err(ConnectorError::Read(format!(
                "table '{}': {uri} is not a regular file (a FIFO, socket or device); move it out of {}",
                self.table, self.location.uri
            ))),
            _ => Ok(()),
        }
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
        // The name as listed, not encoded again ('%' in a name would become '%25').
        let path = object_store::path::Path::parse(format!("{}/{name}", self.location.prefix))
            .map_err(|e| {
                ConnectorError::Read(format!("table '{}': cannot read {uri}: {e}", self.table))
            })?;
        self.check_regular(uri)?;
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

    fn source(dir: &std::path::Path) -> FilesSource {
        let spec = TableSpec {
            name: "src".into(),
            schema: schema(),
            options: [("path".to_string(), format!("file://{}", dir.display()))]
                .into_iter()
                .collect(),
        };
        FilesSource::new(&spec).unwrap()
    }

    fn ctx(trigger: Trigger) -> PlanContext {
        PlanContext {
            now_ms: 0,
            job_start_ms: 0,
            trigger,
            default_splits: 1,
        }
    }

    #[tokio::test]
    async fn names_with_url_characters_are_listed_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "a~1.jsonl",
            "x[1].jsonl",
            "100%.jsonl",
            "a#b.jsonl",
            "a b.jsonl",
        ];
        for n in names {
            std::fs::write(dir.path().join(n), "{\"user_id\": 1, \"page\": \"p\"}\n").unwrap();
        }
        let src = source(dir.path());
        let planned = src
            .plan(&BTreeSet::new(), &ctx(Trigger::Once))
            .await
            .unwrap();
        assert_eq!(planned.splits.len(), names.len());
        let mut rows = 0;
        for split in &planned.splits {
            let SourceSplit::File { uri, .. } = split else {
                panic!("{split:?}")
            };
            assert!(
                names.iter().any(|n| uri.ends_with(n)),
                "{uri} is not a file's name"
            );
            rows += src.read(uri).await.unwrap()[0].num_rows();
        }
        assert_eq!(rows, names.len());
    }

    #[tokio::test]
    async fn a_fifo_is_refused_by_name_instead_of_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.jsonl");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = source(dir.path())
            .plan(&BTreeSet::new(), &ctx(Trigger::Once))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pipe.jsonl") && err.contains("not a regular file"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_missing_directory_fails_a_bounded_job_and_waits_for_a_streaming_one() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(&dir.path().join("typo"));
        let err = src
            .plan(&BTreeSet::new(), &ctx(Trigger::Once))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert_eq!(err.kind(), sluice_core::FailureKind::BadPlan);
        let streaming = ctx(Trigger::ProcessingTime(std::time::Duration::ZERO));
        assert!(
            src.plan(&BTreeSet::new(), &streaming)
                .await
                .unwrap()
                .splits
                .is_empty()
        );
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
