//! The `files` source: each batch takes the directory's new complete files in name order. With
//! `static = 'true'` the table is instead read whole by every batch that joins it: each batch
//! lists its files (names, sizes, ETags) and logs that version.

use crate::connector::{
    PlanContext, Planned, Position, SourceConnector, SourceFactory, SplitRead, decode_position,
    decode_split, encode_position,
};
use crate::store::{self, Location};
use crate::{ConnectorError, Result, TableSpec};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
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
    "static",
];

/// The kind of the splits this connector logs.
const SPLIT_KIND: &str = "file";
const POSITION_KIND: &str = "files";

/// One whole file. A static table's files carry their ETag, so a rerun reads the version its
/// batch logged or fails saying the file changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSplit {
    pub uri: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
}

impl From<FileSplit> for SourceSplit {
    fn from(f: FileSplit) -> SourceSplit {
        SourceSplit::encode(SPLIT_KIND, &f)
    }
}

/// The files read so far, by URI.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Seen {
    seen: BTreeSet<String>,
}

pub struct Factory;

impl SourceFactory for Factory {
    fn name(&self) -> &'static str {
        "files"
    }

    fn open(&self, spec: &TableSpec) -> Result<Box<dyn SourceConnector>> {
        Ok(Box::new(FilesSource::new(spec)?))
    }

    fn identity_options(&self) -> &'static [&'static str] {
        &["path", "format"]
    }

    fn split_kind(&self) -> &'static str {
        SPLIT_KIND
    }

    fn summarize(&self, splits: &[SourceSplit]) -> String {
        let bytes: u64 = splits
            .iter()
            .filter_map(|s| s.decode::<FileSplit>(SPLIT_KIND).ok())
            .map(|f| f.size)
            .sum();
        format!("{} files, {bytes} bytes", splits.len())
    }
}

#[async_trait::async_trait]
impl SourceConnector for FilesSource {
    fn start(&self) -> Position {
        encode_position(POSITION_KIND, &Seen::default())
    }

    fn advance(&self, position: &mut Position, splits: &[SourceSplit]) -> Result<()> {
        let mut at: Seen = decode_position(POSITION_KIND, position)?;
        for split in splits {
            at.seen
                .insert(decode_split::<FileSplit>(SPLIT_KIND, split)?.uri);
        }
        *position = encode_position(POSITION_KIND, &at);
        Ok(())
    }

    async fn plan(&self, position: &Position, ctx: &PlanContext) -> Result<Planned> {
        let at: Seen = decode_position(POSITION_KIND, position)?;
        FilesSource::plan(self, &at.seen, ctx).await
    }

    async fn read(&self, split: &SourceSplit) -> Result<SplitRead> {
        let file: FileSplit = decode_split(SPLIT_KIND, split)?;
        Ok(SplitRead {
            rows: FilesSource::read(self, &file.uri).await?,
            dead_letters: None,
        })
    }

    fn is_static(&self) -> bool {
        self.is_static
    }

    async fn list_static(&self) -> Result<Vec<SourceSplit>> {
        match self.is_static {
            true => FilesSource::list_static(self).await,
            false => Err(ConnectorError::Read(format!(
                "table '{}' is not static",
                self.table
            ))),
        }
    }

    async fn read_static(&self, split: &SourceSplit) -> Result<Vec<RecordBatch>> {
        let file: FileSplit = decode_split(SPLIT_KIND, split)?;
        self.read_version(&file.uri, file.e_tag.as_deref()).await
    }
}

/// Files per batch when `max_files_per_batch` is not set.
pub const DEFAULT_MAX_FILES_PER_BATCH: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Jsonl,
    Csv { header: bool, delimiter: u8 },
    Parquet,
}

impl FileFormat {
    /// Reads the `format` and `csv.*` options.
    pub fn from_options(opts: &crate::Options<'_>) -> Result<FileFormat> {
        let format = opts.one_of("format", &["jsonl", "csv", "parquet"], "jsonl")?;
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
    /// Read whole by every batch that joins it, not consumed file by file.
    pub is_static: bool,
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
            format: FileFormat::from_options(&opts)?,
            schema: spec.schema.clone(),
            max_files_per_batch,
            is_static: opts.bool("static", false)?,
        })
    }

    /// A static table's current version: all of its files, with sizes and ETags. A table
    /// with no files (a missing directory, a typo) fails the job: joining nothing is never
    /// what was meant.
    pub async fn list_static(&self) -> Result<Vec<SourceSplit>> {
        let missing = |why: String| ConnectorError::Options {
            table: self.table.clone(),
            message: format!("static table: option 'path': {why}"),
        };
        self.check_directory(Trigger::Once)?;
        let mut listing = self.data_files().await?;
        listing.sort_by(|a, b| a.location.cmp(&b.location));
        let files: Vec<SourceSplit> = listing
            .into_iter()
            .map(|m| {
                FileSplit {
                    uri: self.location.uri_of(&m.location),
                    size: m.size,
                    e_tag: m.e_tag,
                }
                .into()
            })
            .collect();
        if files.is_empty() {
            return Err(missing(format!("no files under {}", self.location.uri)));
        }
        Ok(files)
    }

    pub async fn plan(&self, seen: &BTreeSet<String>, ctx: &PlanContext) -> Result<Planned> {
        self.check_directory(ctx.trigger)?;
        let mut files: Vec<(String, u64)> = self
            .data_files()
            .await?
            .into_iter()
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
                .map(|(uri, size)| {
                    FileSplit {
                        uri,
                        size,
                        e_tag: None,
                    }
                    .into()
                })
                .collect(),
            exhausted: false,
            backlog: None,
        })
    }

    /// The data files directly under the path (hidden files, markers and temporaries left out);
    /// a directory that does not exist yet simply has none.
    async fn data_files(&self) -> Result<Vec<object_store::ObjectMeta>> {
        let listing = match self
            .location
            .store
            .list_with_delimiter(Some(&self.location.prefix))
            .await
        {
            Ok(l) => l.objects,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(listing
            .into_iter()
            .filter(|m| listed(m.location.filename().unwrap_or_default()))
            .collect())
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
        self.read_version(uri, None).await
    }

    /// Reads `uri`; with an ETag, only that version of it (a static table's logged version).
    pub async fn read_version(&self, uri: &str, e_tag: Option<&str>) -> Result<Vec<RecordBatch>> {
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
        let options = object_store::GetOptions {
            if_match: e_tag.map(str::to_string),
            ..Default::default()
        };
        let bytes = match self.location.store.get_opts(&path, options).await {
            Ok(got) => got.bytes().await?,
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) if e_tag.is_some() => {
                return Err(ConnectorError::Read(format!(
                    "static table '{}': {uri} was changed or removed after a batch logged its version (ETag {}); a rerun must join the version its batch logged — write a new version under a new name and delete the old one, never rewrite a file in place",
                    self.table,
                    e_tag.unwrap_or_default()
                )));
            }
            Err(e) => {
                return Err(ConnectorError::Read(format!(
                    "table '{}': cannot read {uri}: {e}",
                    self.table
                )));
            }
        };
        decode(&bytes, self.format, &self.schema)
            .map_err(|e| ConnectorError::Read(format!("table '{}': {uri} {e}", self.table)))
    }
}

/// Rows per decoded batch: Arrow's readers default to 1,024, and every batch costs a pass of
/// each operator above; 8K keeps a batch's columns in cache and the per-batch cost small.
const DECODE_BATCH_ROWS: usize = 8192;

/// Decodes a whole file. Errors start with "line N: " where the format allows it.
pub fn decode(
    bytes: &[u8],
    format: FileFormat,
    schema: &SchemaRef,
) -> std::result::Result<Vec<RecordBatch>, String> {
    match format {
        FileFormat::Jsonl => decode_jsonl(bytes, schema),
        FileFormat::Csv { header, delimiter } => arrow::csv::ReaderBuilder::new(schema.clone())
            .with_batch_size(DECODE_BATCH_ROWS)
            .with_header(header)
            .with_delimiter(delimiter)
            .build(Cursor::new(bytes))
            .and_then(|r| r.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| csv_error_with_file_line(&e.to_string(), header)),
        FileFormat::Parquet => decode_parquet(bytes, schema),
    }
}

/// Whether a listed name is a data file: hidden files, markers and temporaries are not.
fn listed(name: &str) -> bool {
    !(name.starts_with('.') || name.starts_with('_') || name.ends_with(".tmp"))
}

/// Reads the declared columns, by name, from a Parquet file, cast to the declared types.
fn decode_parquet(
    bytes: &[u8],
    schema: &SchemaRef,
) -> std::result::Result<Vec<RecordBatch>, String> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::copy_from_slice(bytes),
    )
    .and_then(|b| b.with_batch_size(DECODE_BATCH_ROWS).build())
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                let column = batch
                    .column_by_name(f.name())
                    .ok_or_else(|| format!("no column '{}' in the file", f.name()))?;
                arrow::compute::cast(column, f.data_type())
                    .map_err(|e| format!("column '{}': {e}", f.name()))
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        out.push(RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?);
    }
    Ok(out)
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
        .with_batch_size(DECODE_BATCH_ROWS)
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
            let FileSplit { uri, .. } = split.decode(SPLIT_KIND).unwrap();
            let uri = &uri;
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

    fn static_source(dir: &std::path::Path, format: &str) -> FilesSource {
        let spec = TableSpec {
            name: "dim".into(),
            schema: schema(),
            options: [
                ("path", format!("file://{}", dir.display())),
                ("format", format.to_string()),
                ("static", "true".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        };
        FilesSource::new(&spec).unwrap()
    }

    #[tokio::test]
    async fn a_static_version_is_read_as_logged_or_fails_naming_the_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("users.jsonl");
        std::fs::write(&file, "{\"user_id\": 1, \"page\": \"p\"}\n").unwrap();
        let src = static_source(dir.path(), "jsonl");
        let version = src.list_static().await.unwrap();
        let [split] = &version[..] else {
            panic!("{version:?}")
        };
        let FileSplit { uri, size, e_tag } = &split.decode(SPLIT_KIND).unwrap();
        assert_eq!((*size, e_tag.is_some()), (28, true));
        let rows = src.read_version(uri, e_tag.as_deref()).await.unwrap();
        assert_eq!(rows[0].num_rows(), 1);
        // Rewritten in place: the logged version is gone, and the error says so.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(
            &file,
            "{\"user_id\": 2, \"page\": \"q\"}\n{\"user_id\": 3}\n",
        )
        .unwrap();
        let err = src
            .read_version(uri, e_tag.as_deref())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("users.jsonl")
                && err.contains("was changed or removed after a batch logged its version"),
            "{err}"
        );
        // An empty directory is as wrong as a missing one.
        let empty = tempfile::tempdir().unwrap();
        let err = static_source(empty.path(), "jsonl")
            .list_static()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("table 'dim'") && err.contains("no files under"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn parquet_is_read_by_column_name_and_cast_to_the_declared_types() {
        let dir = tempfile::tempdir().unwrap();
        // Columns in another order, user_id as Int32: read by name, cast to BIGINT.
        let written = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("page", DataType::Utf8, true),
                Field::new("user_id", DataType::Int32, true),
            ])),
            vec![
                Arc::new(arrow::array::StringArray::from(vec!["a", "b"])),
                Arc::new(arrow::array::Int32Array::from(vec![7, 8])),
            ],
        )
        .unwrap();
        let mut bytes = Vec::new();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(&mut bytes, written.schema(), None).unwrap();
        w.write(&written).unwrap();
        w.close().unwrap();
        std::fs::write(dir.path().join("d.parquet"), &bytes).unwrap();
        let src = static_source(dir.path(), "parquet");
        let version = src.list_static().await.unwrap();
        let FileSplit { uri, e_tag, .. } = &version[0].decode(SPLIT_KIND).unwrap();
        let rows = src.read_version(uri, e_tag.as_deref()).await.unwrap();
        assert_eq!(rows[0].schema(), schema());
        let ids = rows[0]
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(ids.values(), &[7, 8]);
        let err = decode(b"not parquet", FileFormat::Parquet, &schema()).unwrap_err();
        assert!(!err.is_empty());
    }
}
