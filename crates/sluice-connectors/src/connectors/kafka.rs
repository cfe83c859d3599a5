//! Kafka, read the way Spark's direct stream reads it: the driver (not a consumer group)
//! decides each batch's input as exact offset ranges per topic-partition, and one task per
//! topic-partition reads exactly that range by assignment. Any batch can therefore be read
//! again identically after a failure. The sink produces with an idempotent producer and waits
//! for every delivery before the task reports success (at-least-once).

use crate::connector::{
    PlanContext, Planned, Position, SourceConnector, SourceFactory, SplitRead, decode_position,
    decode_split, encode_position,
};
use crate::{ConnectorError, Result, TableSpec};
use arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sluice_core::{SourceSplit, Trigger};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Columns every Kafka source row carries besides the declared ones.
pub const KEY_COLUMN: &str = "_key";
pub const PARTITION_COLUMN: &str = "_partition";
pub const OFFSET_COLUMN: &str = "_offset";
pub const TIMESTAMP_COLUMN: &str = "_timestamp";

/// Offsets per batch when `max_offsets_per_trigger` is not set.
pub const DEFAULT_MAX_OFFSETS_PER_TRIGGER: u64 = 1_000_000;

const SOURCE_OPTIONS: &[&str] = &[
    "bootstrap.servers",
    "topic",
    "topics",
    "topic_pattern",
    "format",
    "starting_offsets",
    "max_offsets_per_trigger",
    "fail_on_data_loss",
    "group.id",
    "csv.delimiter",
    "on_error",
    "dead_letter.table",
];
const SINK_OPTIONS: &[&str] = &["bootstrap.servers", "topic", "format", "key.column"];
/// How long a metadata or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a task waits for the records of its range before it fails (and is retried).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Next offset to read per topic and partition.
pub type Positions = BTreeMap<String, BTreeMap<i32, i64>>;

const KIND: &str = "kafka";

/// Offsets `[from, until)` of one topic-partition: one task's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub until: i64,
}

impl From<Range> for SourceSplit {
    fn from(r: Range) -> SourceSplit {
        SourceSplit::encode(KIND, &r)
    }
}

/// The next offset to read per topic and partition.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Read {
    #[serde(with = "positions_as_list")]
    positions: Positions,
}

pub struct Factory;

impl SourceFactory for Factory {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn open(&self, spec: &TableSpec) -> Result<Box<dyn SourceConnector>> {
        Ok(Box::new(KafkaSource::new(spec)?))
    }

    fn schema(&self, spec: &TableSpec) -> SchemaRef {
        with_metadata_columns(&spec.schema)
    }

    fn identity_options(&self) -> &'static [&'static str] {
        &["bootstrap.servers", "topic", "topics", "topic_pattern"]
    }

    fn split_kind(&self) -> &'static str {
        KIND
    }

    fn summarize(&self, splits: &[SourceSplit]) -> String {
        splits
            .iter()
            .filter_map(|s| s.decode::<Range>(KIND).ok())
            .map(|r| format!("{}/{}:[{},{})", r.topic, r.partition, r.from, r.until))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[async_trait::async_trait]
impl SourceConnector for KafkaSource {
    fn start(&self) -> Position {
        encode_position(KIND, &Read::default())
    }

    fn advance(&self, position: &mut Position, splits: &[SourceSplit]) -> Result<()> {
        let mut at: Read = decode_position(KIND, position)?;
        for split in splits {
            let r: Range = decode_split(KIND, split)?;
            let next = at
                .positions
                .entry(r.topic)
                .or_default()
                .entry(r.partition)
                .or_insert(r.until);
            *next = (*next).max(r.until);
        }
        *position = encode_position(KIND, &at);
        Ok(())
    }

    async fn plan(&self, position: &Position, ctx: &PlanContext) -> Result<Planned> {
        let at: Read = decode_position(KIND, position)?;
        KafkaSource::plan(self, &at.positions, ctx).await
    }

    async fn read(&self, split: &SourceSplit) -> Result<SplitRead> {
        let r: Range = decode_split(KIND, split)?;
        let (rows, dead_letters) =
            KafkaSource::read(self, &r.topic, r.partition, r.from, r.until).await?;
        Ok(SplitRead {
            rows: vec![rows],
            dead_letters,
        })
    }

    async fn committed(&self, position: &Position) -> Result<()> {
        let at: Read = decode_position(KIND, position)?;
        self.commit_group(&at.positions).await
    }

    fn dead_letter_table(&self) -> Option<&str> {
        self.dead_letter_table.as_deref()
    }
}

/// Positions stored as a list of {topic, partition, next}: JSON object keys are strings, and
/// inside a tagged enum serde cannot turn them back into partition numbers.
pub mod positions_as_list {
    use super::Positions;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Entry {
        topic: String,
        partition: i32,
        next: i64,
    }

    pub fn serialize<S: Serializer>(p: &Positions, s: S) -> Result<S::Ok, S::Error> {
        p.iter()
            .flat_map(|(topic, parts)| {
                parts.iter().map(move |(partition, next)| Entry {
                    topic: topic.clone(),
                    partition: *partition,
                    next: *next,
                })
            })
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Positions, D::Error> {
        let mut out = Positions::new();
        for e in Vec::<Entry>::deserialize(d)? {
            out.entry(e.topic).or_default().insert(e.partition, e.next);
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topics {
    Named(Vec<String>),
    Pattern(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Starting {
    Earliest,
    Latest,
    /// Per topic and partition; partitions not listed start at the earliest offset.
    Exact(Positions),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    Jsonl,
    Csv {
        delimiter: u8,
    },
    /// The record value as the table's single column (TEXT or BYTEA).
    Raw,
}

pub struct KafkaSource {
    table: String,
    config: ClientConfig,
    topics: Topics,
    format: RecordFormat,
    /// Declared columns (what the record value decodes into).
    value_schema: SchemaRef,
    starting: Starting,
    max_offsets_per_trigger: Option<u64>,
    fail_on_data_loss: bool,
    group_id: Option<String>,
    /// Bad records go to this table (on_error = 'dead_letter') instead of failing the job.
    pub dead_letter_table: Option<String>,
    /// The driver's metadata client, made on first use.
    meta: Mutex<Option<Arc<BaseConsumer>>>,
    /// The executor's consumers between tasks.
    consumers: Arc<ConsumerPool>,
    /// Offsets skipped because retention deleted them (fail_on_data_loss = false).
    pub lost_offsets: AtomicU64,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("table", &self.table)
            .field("topics", &self.topics)
            .finish()
    }
}

/// The client settings: `bootstrap.servers` plus every `kafka.*` option passed through.
fn client_config(spec: &TableSpec, opts: &crate::Options<'_>) -> Result<ClientConfig> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", opts.required("bootstrap.servers")?);
    for (k, v) in &spec.options {
        if let Some(key) = k.strip_prefix("kafka.") {
            config.set(key, v);
        }
    }
    Ok(config)
}

fn record_format(opts: &crate::Options<'_>, value_schema: &SchemaRef) -> Result<RecordFormat> {
    Ok(
        match opts.one_of("format", &["jsonl", "json", "csv", "raw"], "jsonl")? {
            "csv" => RecordFormat::Csv {
                delimiter: match opts.str("csv.delimiter") {
                    None => b',',
                    Some(d) if d.len() == 1 => d.as_bytes()[0],
                    Some(d) => {
                        return Err(opts.error(format!(
                            "option 'csv.delimiter' = '{d}' must be one character"
                        )));
                    }
                },
            },
            "raw" => {
                let ok = value_schema.fields().len() == 1
                    && matches!(
                        value_schema.field(0).data_type(),
                        DataType::Utf8
                            | DataType::LargeUtf8
                            | DataType::Binary
                            | DataType::LargeBinary
                    );
                if !ok {
                    return Err(opts.error(
                    "format 'raw' needs exactly one declared column, of type TEXT or BYTEA, for the record value",
                ));
                }
                RecordFormat::Raw
            }
            _ => RecordFormat::Jsonl,
        },
    )
}

/// The declared columns plus the record's key, partition, offset and timestamp.
pub fn with_metadata_columns(declared: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = declared
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend([
        Field::new(KEY_COLUMN, DataType::Utf8, true),
        Field::new(PARTITION_COLUMN, DataType::Int32, false),
        Field::new(OFFSET_COLUMN, DataType::Int64, false),
        Field::new(
            TIMESTAMP_COLUMN,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
    ]);
    Arc::new(Schema::new(fields))
}

impl KafkaSource {
    pub fn new(spec: &TableSpec) -> Result<Self> {
        let opts = spec.options(SOURCE_OPTIONS, &["kafka."])?;
        let config = client_config(spec, &opts)?;
        let topics = match (
            opts.str("topic"),
            opts.str("topics"),
            opts.str("topic_pattern"),
        ) {
            (Some(t), None, None) => Topics::Named(vec![t.trim().to_string()]),
            (None, Some(ts), None) => Topics::Named(
                ts.split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect(),
            ),
            (None, None, Some(p)) => {
                regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                    opts.error(format!(
                        "option 'topic_pattern' = '{p}' is not a regex: {e}"
                    ))
                })?;
                Topics::Pattern(p.to_string())
            }
            _ => {
                return Err(opts.error(
                    "give exactly one of the options 'topic', 'topics' (comma-separated) or 'topic_pattern'",
                ));
            }
        };
        let starting = match opts.str("starting_offsets").map(str::trim) {
            None | Some("earliest") => Starting::Earliest,
            Some("latest") => Starting::Latest,
            Some(json) => Starting::Exact(serde_json::from_str(json).map_err(|e| {
                opts.error(format!(
                    "option 'starting_offsets' = '{json}' must be earliest, latest or JSON like {{\"topic\": {{\"0\": 42}}}} ({e})"
                ))
            })?),
        };
        let max_offsets_per_trigger = opts.number_in("max_offsets_per_trigger", 1..=u64::MAX)?;
        let dead_letter_table = match opts.one_of("on_error", &["fail", "dead_letter"], "fail")? {
            "dead_letter" => Some(
                opts.str("dead_letter.table")
                    .ok_or_else(|| {
                        opts.error(
                            "on_error = 'dead_letter' needs option 'dead_letter.table', the declared table that receives bad records",
                        )
                    })?
                    .to_string(),
            ),
            _ => None,
        };
        Ok(KafkaSource {
            table: spec.name.clone(),
            format: record_format(&opts, &spec.schema)?,
            value_schema: spec.schema.clone(),
            starting,
            max_offsets_per_trigger,
            fail_on_data_loss: opts.bool("fail_on_data_loss", true)?,
            group_id: opts.str("group.id").map(str::to_string),
            dead_letter_table,
            topics,
            config,
            meta: Mutex::new(None),
            consumers: Arc::default(),
            lost_offsets: AtomicU64::new(0),
        })
    }

    fn error(&self, message: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Read(format!("table '{}': {message}", self.table))
    }

    fn meta_client(&self) -> Result<Arc<BaseConsumer>> {
        let mut slot = self.meta.lock().unwrap();
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let client: BaseConsumer = self
            .config
            .clone()
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| self.error(format!("cannot create a Kafka client: {e}")))?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Every partition of the source's topics with its (low, high) watermarks.
    async fn watermarks(&self) -> Result<PartitionMarks> {
        let client = self.meta_client()?;
        let topics = self.topics.clone();
        let table = self.table.clone();
        tokio::task::spawn_blocking(move || fetch_watermarks(&client, &topics, &table))
            .await
            .map_err(|e| self.error(e))?
    }

    /// Decides the next batch's offset ranges from the positions read so far.
    pub async fn plan(&self, positions: &Positions, ctx: &PlanContext) -> Result<Planned> {
        let marks = self.watermarks().await?;
        // A batch is bounded even when no limit is set (a trigger 'once' takes everything).
        let cap = match (self.max_offsets_per_trigger, ctx.trigger) {
            (Some(max), _) => Some(max),
            (None, Trigger::Once) => None,
            (None, _) => Some(DEFAULT_MAX_OFFSETS_PER_TRIGGER),
        };
        plan_ranges(
            &marks,
            positions,
            &self.starting,
            cap,
            self.fail_on_data_loss,
            ctx,
        )
        .map(|(splits, lost)| {
            if lost > 0 {
                self.lost_offsets.fetch_add(lost, Ordering::Relaxed);
                tracing::warn!(
                    table = %self.table,
                    lost,
                    total = self.lost_offsets.load(Ordering::Relaxed),
                    "offsets deleted by retention before they were read were skipped (fail_on_data_loss = false)"
                );
            }
            let lag = backlog(&marks, positions, &splits);
            let behind: u64 = lag.values().sum();
            if let Some(cap) = cap
                && behind > 0
            {
                tracing::info!(
                    table = %self.table,
                    behind,
                    "batch capped at {cap} offsets (max_offsets_per_trigger); the rest go to the next batches"
                );
            }
            Planned {
                backlog: Some(lag),
                splits: splits.into_iter().map(SourceSplit::from).collect(),
                exhausted: false,
            }
        })
        .map_err(|e| self.error(e))
    }

    /// Reads exactly `[from, until)` of one partition and decodes it. With a dead-letter
    /// table, records that do not decode come back separately (in [`dead_letter_schema`]).
    pub async fn read(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        until: i64,
    ) -> Result<(RecordBatch, Option<RecordBatch>)> {
        let reader = RangeReader {
            consumers: self.consumers.clone(),
            dead_letters: self.dead_letter_table.is_some(),
            fail_on_data_loss: self.fail_on_data_loss,
            table: self.table.clone(),
            config: self.config.clone(),
            format: self.format,
            value_schema: self.value_schema.clone(),
            topic: topic.to_string(),
            partition,
            from,
            until,
        };
        tokio::task::spawn_blocking(move || reader.read())
            .await
            .map_err(|e| self.error(e))?
    }

    /// After a batch commits: record its end offsets in the consumer group (if `group.id` is
    /// set), so lag tools show the job's progress. The checkpoint stays the source of truth.
    pub async fn commit_group(&self, positions: &Positions) -> Result<()> {
        let Some(group) = self.group_id.clone() else {
            return Ok(());
        };
        let (config, positions, table) =
            (self.config.clone(), positions.clone(), self.table.clone());
        tokio::task::spawn_blocking(move || commit_offsets(&config, &group, &positions, &table))
            .await
            .map_err(|e| self.error(e))?
    }
}

fn fetch_watermarks(client: &BaseConsumer, topics: &Topics, table: &str) -> Result<PartitionMarks> {
    // The broker being unreachable may pass (retryable); a missing topic is the job's mistake.
    let error = |m: String| ConnectorError::Write(format!("table '{table}': {m}"));
    let metadata = client
        .fetch_metadata(None, REQUEST_TIMEOUT)
        .map_err(|e| error(format!("cannot read Kafka metadata: {e}")))?;
    let pattern = match topics {
        Topics::Pattern(p) => regex::Regex::new(&format!("^(?:{p})$")).ok(),
        Topics::Named(_) => None,
    };
    let wanted = |name: &str| match topics {
        Topics::Named(names) => names.iter().any(|n| n == name),
        Topics::Pattern(_) => pattern.as_ref().is_some_and(|r| r.is_match(name)),
    };
    let mut found = Vec::new();
    let mut partitions = Vec::new();
    for topic in metadata.topics().iter().filter(|t| wanted(t.name())) {
        found.push(topic.name().to_string());
        for p in topic.partitions() {
            partitions.push((topic.name().to_string(), p.id()));
        }
    }
    let out = list_offsets(client, &partitions).map_err(error)?;
    if let Topics::Named(names) = topics {
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !found.contains(n))
            .map(|m| format!("'{m}'"))
            .collect();
        if !missing.is_empty() {
            return Err(ConnectorError::Options {
                table: table.to_string(),
                message: format!("topic(s) {} do not exist on the broker", missing.join(", ")),
            });
        }
    }
    Ok(out)
}

/// Each topic partition's offsets: (low, high) watermarks.
type PartitionMarks = BTreeMap<(String, i32), (i64, i64)>;

/// Every partition's (low, high) watermark in two ListOffsets rounds (earliest, latest), one
/// request per broker each, instead of a round trip per partition: a batch's planning does not
/// grow with the topic's partition count.
fn list_offsets(
    client: &BaseConsumer,
    partitions: &[(String, i32)],
) -> std::result::Result<PartitionMarks, String> {
    let mut out = PartitionMarks::new();
    if partitions.is_empty() {
        return Ok(out);
    }
    // ListOffsets takes a timestamp: -2 means the earliest offset, -1 the latest.
    let round = |at: Offset| {
        let mut tpl = TopicPartitionList::new();
        for (topic, p) in partitions {
            tpl.add_partition_offset(topic, *p, at)
                .map_err(|e| e.to_string())?;
        }
        client
            .offsets_for_times(tpl, REQUEST_TIMEOUT)
            .map_err(|e| format!("cannot read the offsets of the topics' partitions: {e}"))
    };
    let (lows, highs) = (round(Offset::Beginning)?, round(Offset::End)?);
    for (topic, p) in partitions {
        let offset = |list: &TopicPartitionList| {
            let e = list.find_partition(topic, *p);
            match e.as_ref().map(|e| (e.error(), e.offset())) {
                Some((Ok(()), Offset::Offset(o))) => Ok(o),
                Some((Err(err), _)) => Err(err.to_string()),
                other => Err(format!("no offset in the answer ({other:?})")),
            }
            .map_err(|why| {
                format!("cannot read the offsets of topic '{topic}' partition {p}: {why}")
            })
        };
        out.insert((topic.clone(), *p), (offset(&lows)?, offset(&highs)?));
    }
    Ok(out)
}

fn commit_offsets(
    config: &ClientConfig,
    group: &str,
    positions: &Positions,
    table: &str,
) -> Result<()> {
    let error = |m: String| ConnectorError::Write(format!("table '{table}': {m}"));
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| error(format!("cannot create a Kafka client: {e}")))?;
    let mut tpl = TopicPartitionList::new();
    for (topic, parts) in positions {
        for (p, next) in parts {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*next))
                .map_err(|e| error(e.to_string()))?;
        }
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(|e| error(format!("cannot commit offsets to group '{group}': {e}")))
}

/// Consumers an executor keeps between the tasks of a job: creating one costs a connection and
/// a metadata round trip to the broker, which a task of a small batch would otherwise pay
/// every time.
#[derive(Default)]
struct ConsumerPool {
    idle: Mutex<Vec<BaseConsumer>>,
}

/// Idle consumers kept per source table: about the tasks an executor runs at once.
const MAX_IDLE_CONSUMERS: usize = 8;

impl ConsumerPool {
    fn take(&self, config: &ClientConfig, table: &str) -> Result<BaseConsumer> {
        if let Some(consumer) = self.idle.lock().unwrap().pop() {
            return Ok(consumer);
        }
        config
            .clone()
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "error")
            // librdkafka refuses assign() without a group id; this one never joins or commits.
            .set("group.id", format!("sluice-direct-{table}"))
            .create()
            .map_err(|e| ConnectorError::Write(format!("cannot create a Kafka client: {e}")))
    }

    /// Keeps a consumer whose read succeeded, unassigned so it fetches nothing while idle.
    fn give_back(&self, consumer: BaseConsumer) {
        if consumer.unassign().is_err() {
            return;
        }
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < MAX_IDLE_CONSUMERS {
            idle.push(consumer);
        }
    }
}

/// One task's read of one partition's range, run on a blocking thread.
struct RangeReader {
    consumers: Arc<ConsumerPool>,
    dead_letters: bool,
    fail_on_data_loss: bool,
    table: String,
    config: ClientConfig,
    format: RecordFormat,
    value_schema: SchemaRef,
    topic: String,
    partition: i32,
    from: i64,
    until: i64,
}

impl RangeReader {
    fn read(self) -> Result<(RecordBatch, Option<RecordBatch>)> {
        let consumer = self.consumers.take(&self.config, &self.table)?;
        let records = self.fetch(&consumer)?;
        self.consumers.give_back(consumer);
        let Some(records) = records else {
            return Ok((
                RecordBatch::new_empty(with_metadata_columns(&self.value_schema)),
                None,
            ));
        };
        self.decode(records)
    }

    /// The range's records, or None when none of it can be read any more (and that is allowed).
    fn fetch(&self, consumer: &BaseConsumer) -> Result<Option<Records>> {
        let RangeReader {
            table,
            topic,
            partition,
            until,
            ..
        } = self;
        let (partition, until) = (*partition, *until);
        let gone = Gone {
            table,
            topic,
            partition,
            fail_on_data_loss: self.fail_on_data_loss,
        };
        let from = gone.first_readable(consumer, self.from, until)?;
        if until <= from {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(from))
            .map_err(|e| ConnectorError::Write(e.to_string()))?;
        consumer.assign(&tpl).map_err(|e| {
            ConnectorError::Write(format!("cannot assign {topic}/{partition}: {e}"))
        })?;
        let mut records = Records::new(self.format);
        let mut last = from - 1;
        let started = Instant::now();
        // A deadline on progress, not on the whole range: a large range read slowly goes on as
        // long as records keep coming.
        let mut deadline = started + READ_TIMEOUT;
        while last < until - 1 {
            if Instant::now() > deadline {
                // Retryable: the broker may be slow or restarting.
                return Err(ConnectorError::Write(format!(
                    "table '{table}': no record for {} s reading topic '{topic}' partition {partition} offsets [{from}, {until}): got up to {last}",
                    READ_TIMEOUT.as_secs()
                )));
            }
            let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = msg.map_err(|e| {
                ConnectorError::Write(format!(
                    "table '{table}': reading topic '{topic}' partition {partition} at offset {}: {e}",
                    last + 1
                ))
            })?;
            // A reused consumer may still hand over what it fetched for an earlier task.
            if msg.partition() != partition || msg.topic() != topic.as_str() {
                continue;
            }
            let offset = msg.offset();
            if offset >= until {
                break;
            }
            if offset < from {
                continue;
            }
            last = offset;
            records.push(&msg);
            deadline = Instant::now() + READ_TIMEOUT;
        }
        tracing::debug!(
            %topic,
            partition,
            records = records.offsets.len(),
            ms = started.elapsed().as_millis() as u64,
            "kafka range fetched"
        );
        Ok(Some(records))
    }

    /// The records as rows; with a dead-letter table, those that do not decode come back
    /// separately instead of failing the read.
    fn decode(&self, records: Records) -> Result<(RecordBatch, Option<RecordBatch>)> {
        let (topic, partition) = (&self.topic, self.partition);
        let bad = |offset: i64, e: String| {
            ConnectorError::Read(format!(
                "table '{}': topic '{topic}' partition {partition} offset {offset}: {e}",
                self.table
            ))
        };
        let records = match records.decode(&self.value_schema, partition) {
            Ok(batch) => return Ok((batch, None)),
            Err(e) if !self.dead_letters => return Err(bad(e.offset, e.why)),
            Err(e) => *e.records,
        };
        let (good, rejected) = records.split_bad(&self.value_schema, partition);
        let batch = good
            .decode(&self.value_schema, partition)
            .map_err(|e| bad(e.offset, e.why))?;
        let dead = (!rejected.is_empty()).then(|| rejected.into_batch(topic, partition));
        Ok((batch, dead))
    }
}

/// A logged range whose records the broker no longer has (deleted by retention, or the topic
/// deleted while the job was down): fail naming it, or skip it, as `fail_on_data_loss` says.
struct Gone<'a> {
    table: &'a str,
    topic: &'a str,
    partition: i32,
    fail_on_data_loss: bool,
}

impl Gone<'_> {
    /// The first offset of `[from, until)` the broker still has (`until` when none).
    fn first_readable(&self, consumer: &BaseConsumer, from: i64, until: i64) -> Result<i64> {
        if until <= from {
            return Ok(from);
        }
        let low = match consumer.fetch_watermarks(self.topic, self.partition, REQUEST_TIMEOUT) {
            Ok((low, _)) => low,
            Err(e) if unknown_partition(&e) => i64::MAX,
            Err(e) => {
                return Err(ConnectorError::Write(format!(
                    "table '{}': cannot read the offsets of topic '{}' partition {}: {e}",
                    self.table, self.topic, self.partition
                )));
            }
        };
        if low <= from {
            return Ok(from);
        }
        let missing_until = low.min(until);
        let why = if low == i64::MAX {
            "the topic or partition no longer exists"
        } else {
            "they were deleted (by retention)"
        };
        if self.fail_on_data_loss {
            // Bad input: the logged batch can never be read again, whatever we retry.
            return Err(ConnectorError::Read(format!(
                "table '{}': topic '{}' partition {} offsets [{from}, {missing_until}) of a logged batch can no longer be read: {why}; set fail_on_data_loss = 'false' to skip them",
                self.table, self.topic, self.partition
            )));
        }
        tracing::warn!(
            table = self.table,
            topic = self.topic,
            partition = self.partition,
            skipped = missing_until - from,
            "offsets [{from}, {missing_until}) of a logged batch are skipped: {why} (fail_on_data_loss = false)"
        );
        Ok(missing_until)
    }
}

fn unknown_partition(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::UnknownTopicOrPartition | C::UnknownPartition | C::UnknownTopic)
    )
}

/// The rows a dead-letter table receives: where the record was, its raw key and value, and
/// why it could not be decoded.
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("key", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, false),
    ]))
}

/// Records that did not decode, with why.
struct Rejected {
    records: Records,
    errors: Vec<String>,
}

impl Rejected {
    fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    fn into_batch(self, topic: &str, partition: i32) -> RecordBatch {
        let r = &self.records;
        let n = self.errors.len();
        let values = (0..n).map(|i| r.value(i).map(String::from_utf8_lossy));
        RecordBatch::try_new(
            dead_letter_schema(),
            vec![
                Arc::new(StringArray::from(vec![topic; n])),
                Arc::new(Int32Array::from_value(partition, n)),
                Arc::new(Int64Array::from(r.offsets.clone())),
                r.key_column(),
                Arc::new(values.collect::<StringArray>()),
                Arc::new(StringArray::from(self.errors)),
            ],
        )
        .expect("dead-letter columns match their schema")
    }
}

/// A one-record decode error without the decoder's "line 1: " prefix.
fn strip_line(e: &str) -> String {
    e.strip_prefix("line 1:").map_or(e, str::trim).to_string()
}

/// The records of one range, as read. Each value is copied once out of librdkafka's buffer,
/// into one buffer that the decoder reads whole (jsonl and csv, a '\n' after each value) or
/// that becomes the column itself (raw).
struct Records {
    format: RecordFormat,
    data: Vec<u8>,
    /// Where each record's value is in `data`; None for a record without one.
    values: Vec<Option<std::ops::Range<usize>>>,
    key_data: Vec<u8>,
    keys: Vec<Option<std::ops::Range<usize>>>,
    offsets: Vec<i64>,
    timestamps: Vec<Option<i64>>,
}

/// Records that did not decode as a whole, given back, with the first bad one's offset.
struct Undecodable {
    records: Box<Records>,
    offset: i64,
    why: String,
}

impl std::fmt::Debug for Undecodable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "offset {}: {}", self.offset, self.why)
    }
}

impl Records {
    fn new(format: RecordFormat) -> Records {
        Records {
            format,
            data: Vec::new(),
            values: Vec::new(),
            key_data: Vec::new(),
            keys: Vec::new(),
            offsets: Vec::new(),
            timestamps: Vec::new(),
        }
    }

    fn push<M: Message>(&mut self, msg: &M) {
        let ts = msg.timestamp().to_millis();
        self.push_parts(msg.payload(), msg.key(), msg.offset(), ts);
    }

    fn push_parts(
        &mut self,
        value: Option<&[u8]>,
        key: Option<&[u8]>,
        offset: i64,
        ts: Option<i64>,
    ) {
        let span = |buf: &mut Vec<u8>, bytes: &[u8]| {
            buf.extend_from_slice(bytes);
            buf.len() - bytes.len()..buf.len()
        };
        self.values.push(value.map(|v| span(&mut self.data, v)));
        if value.is_some() && self.format != RecordFormat::Raw {
            self.data.push(b'\n');
        }
        self.keys.push(key.map(|k| span(&mut self.key_data, k)));
        self.offsets.push(offset);
        self.timestamps.push(ts);
    }

    fn len(&self) -> usize {
        self.offsets.len()
    }

    fn value(&self, i: usize) -> Option<&[u8]> {
        self.values[i].clone().map(|r| &self.data[r])
    }

    fn key(&self, i: usize) -> Option<&[u8]> {
        self.keys[i].clone().map(|r| &self.key_data[r])
    }

    /// Record `i` alone.
    fn one(&self, i: usize) -> Records {
        let mut one = Records::new(self.format);
        one.push_parts(
            self.value(i),
            self.key(i),
            self.offsets[i],
            self.timestamps[i],
        );
        one
    }

    /// Keys as text, as Spark's `CAST(key AS STRING)` shows them.
    fn key_column(&self) -> ArrayRef {
        let keys = (0..self.len()).map(|i| self.key(i).map(String::from_utf8_lossy));
        Arc::new(keys.collect::<StringArray>())
    }

    /// Separates the records that decode from those that do not, one record at a time (the
    /// slow path, taken only when the whole range does not decode at once).
    fn split_bad(self, value_schema: &SchemaRef, partition: i32) -> (Records, Rejected) {
        let mut good = Records::new(self.format);
        let mut bad = Rejected {
            records: Records::new(self.format),
            errors: Vec::new(),
        };
        for i in 0..self.len() {
            let parts = (
                self.value(i),
                self.key(i),
                self.offsets[i],
                self.timestamps[i],
            );
            match self.one(i).decode(value_schema, partition) {
                Ok(_) => good.push_parts(parts.0, parts.1, parts.2, parts.3),
                Err(e) => {
                    bad.records.push_parts(parts.0, parts.1, parts.2, parts.3);
                    bad.errors.push(e.why);
                }
            }
        }
        (good, bad)
    }

    /// Decodes the values into the declared columns and adds the metadata columns; on a bad
    /// record, gives the records back with its offset and why.
    fn decode(
        mut self,
        value_schema: &SchemaRef,
        partition: i32,
    ) -> std::result::Result<RecordBatch, Undecodable> {
        let checked = match self.format {
            RecordFormat::Raw => self.check_raw(value_schema),
            RecordFormat::Jsonl | RecordFormat::Csv { .. } => self.text_columns(value_schema),
        };
        let mut columns = match checked {
            Ok(columns) => columns,
            Err((offset, why)) => {
                return Err(Undecodable {
                    records: Box::new(self),
                    offset,
                    why,
                });
            }
        };
        if self.format == RecordFormat::Raw {
            columns.push(self.raw_column(value_schema.field(0).data_type()));
        }
        let n = self.len();
        columns.push(self.key_column());
        columns.push(Arc::new(Int32Array::from_value(partition, n)));
        columns.push(Arc::new(Int64Array::from(self.offsets)));
        columns.push(Arc::new(TimestampMillisecondArray::from(self.timestamps)));
        Ok(
            RecordBatch::try_new(with_metadata_columns(value_schema), columns)
                .expect("decoded columns match the declared ones"),
        )
    }

    /// Whether the values fit the raw column: text must be UTF-8, and offsets fit in 32 bits.
    fn check_raw(
        &self,
        value_schema: &SchemaRef,
    ) -> std::result::Result<Vec<ArrayRef>, (i64, String)> {
        if i32::try_from(self.data.len()).is_err() {
            let first = self.offsets.first().copied().unwrap_or_default();
            return Err((first, "the range's values exceed 2 GiB".into()));
        }
        if matches!(
            value_schema.field(0).data_type(),
            DataType::Utf8 | DataType::LargeUtf8
        ) {
            for i in 0..self.len() {
                if let Err(e) = std::str::from_utf8(self.value(i).unwrap_or_default()) {
                    return Err((self.offsets[i], format!("value is not UTF-8 text: {e}")));
                }
            }
        }
        Ok(Vec::new())
    }

    /// The checked values as the table's one column, over the buffer they were read into.
    fn raw_column(&mut self, target: &DataType) -> ArrayRef {
        let lengths = self
            .values
            .iter()
            .map(|v| v.as_ref().map_or(0, |r| r.len()));
        let nulls = NullBuffer::from_iter(self.values.iter().map(Option::is_some));
        let binary = BinaryArray::new(
            OffsetBuffer::from_lengths(lengths),
            Buffer::from_vec(std::mem::take(&mut self.data)),
            (nulls.null_count() > 0).then_some(nulls),
        );
        let column: ArrayRef = match target {
            DataType::Utf8 | DataType::LargeUtf8 => {
                Arc::new(StringArray::try_from_binary(binary).expect("values checked as UTF-8"))
            }
            _ => Arc::new(binary),
        };
        arrow::compute::cast(&column, target).expect("a byte column casts to TEXT or BYTEA")
    }

    /// jsonl or csv values, decoded as one document of one line per record.
    fn text_columns(
        &self,
        value_schema: &SchemaRef,
    ) -> std::result::Result<Vec<ArrayRef>, (i64, String)> {
        let file_format = match self.format {
            RecordFormat::Csv { delimiter } => crate::FileFormat::Csv {
                header: false,
                delimiter,
            },
            _ => crate::FileFormat::Jsonl,
        };
        for i in 0..self.len() {
            let v = self.value(i).unwrap_or_default();
            if v.is_empty() {
                return Err((self.offsets[i], "empty value".into()));
            }
            if v.contains(&b'\n') {
                return Err((self.offsets[i], "value spans several lines".into()));
            }
        }
        let decode =
            |text: &[u8]| crate::connectors::files::decode(text, file_format, value_schema);
        let batches = decode(&self.data).map_err(|e| {
            // Not every decoder error names its line: find the record itself.
            (0..self.len())
                .find_map(|i| {
                    let one = self.one(i);
                    decode(&one.data)
                        .err()
                        .map(|e| (self.offsets[i], strip_line(&e)))
                })
                .unwrap_or((self.offsets[0], e))
        })?;
        let batch = arrow::compute::concat_batches(value_schema, &batches)
            .map_err(|e| (self.offsets[0], e.to_string()))?;
        if batch.num_rows() != self.len() {
            return Err((
                self.offsets[0],
                format!(
                    "{} records decoded into {} rows",
                    self.len(),
                    batch.num_rows()
                ),
            ));
        }
        Ok(batch.columns().to_vec())
    }
}

/// The planning rule, without I/O: from every partition's watermarks and the positions read
/// so far, the next batch's ranges and how many offsets were lost to retention.
///
/// A partition seen for the first time starts at `starting` (for the job's first batch) or at
/// its earliest offset (a partition added later), and gets a range even when it is empty, so
/// the offsets entry records where it starts. Otherwise only partitions with new records get a
/// range. `max_offsets` caps the whole batch, shared by backlog.
/// Records between where the job will be after these splits and each partition's high
/// watermark: the consumer lag once the batch commits.
/// Per partition (`topic-partition`), the records after the planned batch.
fn backlog(
    marks: &PartitionMarks,
    positions: &Positions,
    splits: &[Range],
) -> BTreeMap<String, u64> {
    marks
        .iter()
        .map(|((topic, p), (_, high))| {
            let planned = splits
                .iter()
                .find(|r| &r.topic == topic && r.partition == *p)
                .map(|r| r.until);
            let next = planned
                .or_else(|| positions.get(topic).and_then(|m| m.get(p)).copied())
                .unwrap_or(*high);
            (format!("{topic}-{p}"), (high - next).max(0) as u64)
        })
        .collect()
}

pub fn plan_ranges(
    marks: &PartitionMarks,
    positions: &Positions,
    starting: &Starting,
    max_offsets: Option<u64>,
    fail_on_data_loss: bool,
    _ctx: &PlanContext,
) -> std::result::Result<(Vec<Range>, u64), String> {
    let first_batch = positions.is_empty();
    let mut lost = 0u64;
    // (topic, partition, from, high, new partition)
    let mut ranges: Vec<(String, i32, i64, i64, bool)> = Vec::new();
    for ((topic, p), (low, high)) in marks {
        let known = positions.get(topic).and_then(|m| m.get(p)).copied();
        let start = match known {
            Some(next) => next,
            None if first_batch => match starting {
                Starting::Earliest => *low,
                Starting::Latest => *high,
                Starting::Exact(map) => map
                    .get(topic)
                    .and_then(|m| m.get(p))
                    .copied()
                    .unwrap_or(*low),
            },
            None => *low,
        };
        let mut from = start;
        if from < *low {
            if fail_on_data_loss {
                return Err(format!(
                    "topic '{topic}' partition {p}: offsets [{from}, {low}) were deleted (by retention) before they were read; set fail_on_data_loss = 'false' to skip them"
                ));
            }
            lost += (*low - from) as u64;
            from = *low;
        }
        if from > *high {
            return Err(format!(
                "topic '{topic}' partition {p}: the next offset to read is {from} but the partition ends at {high} (was the topic recreated?)"
            ));
        }
        ranges.push((topic.clone(), *p, from, *high, known.is_none()));
    }
    let backlog: u64 = ranges.iter().map(|r| (r.3 - r.2) as u64).sum();
    let mut takes: Vec<u64> = ranges.iter().map(|r| (r.3 - r.2) as u64).collect();
    if let Some(max) = max_offsets
        && backlog > max
    {
        // Share the cap by backlog (as Spark does), then hand out what rounding left over.
        for (t, r) in takes.iter_mut().zip(&ranges) {
            let b = (r.3 - r.2) as u64;
            *t = ((b as u128 * max as u128) / backlog as u128) as u64;
        }
        let mut left = max - takes.iter().sum::<u64>();
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse((ranges[i].3 - ranges[i].2) as u64 - takes[i]));
        for i in order {
            if left == 0 {
                break;
            }
            let room = (ranges[i].3 - ranges[i].2) as u64 - takes[i];
            let add = room.min(left);
            takes[i] += add;
            left -= add;
        }
    }
    let splits = ranges
        .into_iter()
        .zip(takes)
        .filter(|((_, _, _, _, new), take)| *take > 0 || *new)
        .map(|((topic, partition, from, _, _), take)| Range {
            topic,
            partition,
            from,
            until: from + take as i64,
        })
        .collect();
    Ok((splits, lost))
}

/// The `kafka` sink: one record per row, the value encoded as JSON, CSV or raw text, the key
/// from a chosen column; an idempotent producer, and every delivery awaited.
pub struct KafkaSink {
    table: String,
    topic: String,
    format: RecordFormat,
    key_column: Option<String>,
    config: ClientConfig,
    producer: Mutex<Option<FutureProducer>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("table", &self.table)
            .field("topic", &self.topic)
            .finish()
    }
}

/// The `kafka` sink's registry entry.
pub struct SinkFactory;

impl crate::connector::SinkFactory for SinkFactory {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn open(&self, spec: &TableSpec) -> Result<Box<dyn crate::connector::SinkConnector>> {
        Ok(Box::new(KafkaSink::new(spec)?))
    }
}

#[async_trait::async_trait]
impl crate::connector::SinkConnector for KafkaSink {
    async fn write(
        &self,
        _batch_id: sluice_core::BatchId,
        _partition: u32,
        batches: &[RecordBatch],
    ) -> Result<crate::connector::PartitionWritten> {
        KafkaSink::write(self, batches).await?;
        Ok(crate::connector::PartitionWritten {
            rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
            console: Vec::new(),
        })
    }
}

impl KafkaSink {
    pub fn new(spec: &TableSpec) -> Result<Self> {
        let opts = spec.options(SINK_OPTIONS, &["kafka."])?;
        let mut config = client_config(spec, &opts)?;
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000");
        let format = match opts.one_of("format", &["jsonl", "json", "csv", "raw"], "jsonl")? {
            "csv" => RecordFormat::Csv { delimiter: b',' },
            "raw" => RecordFormat::Raw,
            _ => RecordFormat::Jsonl,
        };
        Ok(KafkaSink {
            table: spec.name.clone(),
            topic: opts.required("topic")?.to_string(),
            format,
            key_column: opts.str("key.column").map(str::to_string),
            config,
            producer: Mutex::new(None),
        })
    }

    fn producer(&self) -> Result<FutureProducer> {
        let mut slot = self.producer.lock().unwrap();
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let p: FutureProducer = self.config.create().map_err(|e| {
            ConnectorError::Write(format!(
                "table '{}': cannot create a Kafka producer: {e}",
                self.table
            ))
        })?;
        *slot = Some(p.clone());
        Ok(p)
    }

    /// Produces every row and waits until the broker acknowledged all of them.
    pub async fn write(&self, batches: &[RecordBatch]) -> Result<u64> {
        let producer = self.producer()?;
        let mut pending = Vec::new();
        for batch in batches {
            // A row that cannot be encoded in the sink's format is the job's mistake: every
            // attempt would fail the same way.
            let values =
                encode_rows(batch, self.format).map_err(|message| ConnectorError::Options {
                    table: self.table.clone(),
                    message,
                })?;
            let keys: Vec<Option<String>> = match &self.key_column {
                None => vec![None; batch.num_rows()],
                Some(k) => {
                    let col = batch
                        .column_by_name(k)
                        .ok_or_else(|| ConnectorError::Options {
                            table: self.table.clone(),
                            message: format!(
                                "option 'key.column' = '{k}' is not a column of the rows ({})",
                                batch
                                    .schema()
                                    .fields()
                                    .iter()
                                    .map(|f| f.name().as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        })?;
                    (0..batch.num_rows())
                        .map(|i| {
                            (!col.is_null(i)).then(|| {
                                arrow::util::display::array_value_to_string(col, i)
                                    .unwrap_or_default()
                            })
                        })
                        .collect()
                }
            };
            for (value, key) in values.into_iter().zip(keys) {
                let producer = producer.clone();
                let topic = self.topic.clone();
                pending.push(async move {
                    let mut record = FutureRecord::<str, [u8]>::to(&topic).payload(&value[..]);
                    if let Some(k) = key.as_deref() {
                        record = record.key(k);
                    }
                    producer
                        .send(record, Duration::from_secs(30))
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| e.to_string())
                });
            }
        }
        let n = pending.len() as u64;
        for r in futures::future::join_all(pending).await {
            r.map_err(|e| {
                ConnectorError::Write(format!(
                    "table '{}': producing to topic '{}' failed: {e}",
                    self.table, self.topic
                ))
            })?;
        }
        Ok(n)
    }
}

/// One encoded value per row: each row is encoded on its own, so a value holding a newline
/// (a quoted CSV field) or a row that encodes to an empty line stays one record.
fn encode_rows(
    batch: &RecordBatch,
    format: RecordFormat,
) -> std::result::Result<Vec<Vec<u8>>, String> {
    if let RecordFormat::Raw = format {
        if batch.num_columns() != 1 {
            return Err(format!(
                "format 'raw' writes one column, but the rows have {}",
                batch.num_columns()
            ));
        }
        let col = batch.column(0);
        return Ok((0..batch.num_rows())
            .map(|i| {
                arrow::util::display::array_value_to_string(col, i)
                    .unwrap_or_default()
                    .into_bytes()
            })
            .collect());
    }
    (0..batch.num_rows())
        .map(|i| {
            let row = batch.slice(i, 1);
            let mut buf = Vec::new();
            match format {
                RecordFormat::Csv { delimiter } => arrow::csv::WriterBuilder::new()
                    .with_header(false)
                    .with_delimiter(delimiter)
                    .build(&mut buf)
                    .write(&row),
                _ => {
                    let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
                    w.write(&row).and_then(|_| w.finish())
                }
            }
            .map_err(|e| e.to_string())?;
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            Ok(buf)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::Trigger;

    #[test]
    fn the_sink_encodes_one_record_per_row_whatever_the_values_hold() {
        use arrow::array::StringArray;
        let col = StringArray::from(vec![Some("two\nlines"), Some(""), None, Some("a,b")]);
        let batch = RecordBatch::try_from_iter([("v", Arc::new(col) as _)]).unwrap();
        for format in [
            RecordFormat::Jsonl,
            RecordFormat::Csv { delimiter: b',' },
            RecordFormat::Raw,
        ] {
            let rows = encode_rows(&batch, format).unwrap();
            assert_eq!(rows.len(), 4, "{format:?}: {rows:?}");
        }
        let csv = encode_rows(&batch, RecordFormat::Csv { delimiter: b',' }).unwrap();
        assert_eq!(csv[0], b"\"two\nlines\"");
        assert_eq!(csv[3], b"\"a,b\"");
    }

    fn ctx() -> PlanContext {
        PlanContext {
            now_ms: 0,
            job_start_ms: 0,
            trigger: Trigger::ProcessingTime(Duration::ZERO),
            default_splits: 4,
        }
    }

    fn marks(list: &[(i32, i64, i64)]) -> PartitionMarks {
        list.iter()
            .map(|(p, lo, hi)| (("t".to_string(), *p), (*lo, *hi)))
            .collect()
    }

    fn at(list: &[(i32, i64)]) -> Positions {
        [(
            "t".to_string(),
            list.iter().copied().collect::<BTreeMap<i32, i64>>(),
        )]
        .into_iter()
        .collect()
    }

    fn ranges(splits: &[Range]) -> Vec<(i32, i64, i64)> {
        splits
            .iter()
            .map(|r| (r.partition, r.from, r.until))
            .collect()
    }

    #[test]
    fn backlog_is_what_the_rate_limit_leaves_behind() {
        let m = marks(&[(0, 0, 100), (1, 0, 40)]);
        let (s, _) = plan_ranges(
            &m,
            &at(&[(0, 0), (1, 0)]),
            &Starting::Earliest,
            Some(60),
            true,
            &ctx(),
        )
        .unwrap();
        let taken: i64 = ranges(&s).iter().map(|(_, f, u)| u - f).sum();
        assert_eq!(taken, 60);
        let lag = backlog(&m, &at(&[(0, 0), (1, 0)]), &s);
        assert_eq!(lag.values().sum::<u64>(), 140 - 60);
        assert_eq!(lag.len(), 2, "one entry per partition: {lag:?}");
        let none = backlog(&m, &at(&[(0, 100), (1, 40)]), &[]);
        assert!(none.values().all(|n| *n == 0), "{none:?}");
    }

    #[test]
    fn first_batch_records_every_partition_from_the_starting_offsets() {
        let m = marks(&[(0, 0, 10), (1, 5, 5), (2, 0, 7)]);
        let (s, _) = plan_ranges(
            &m,
            &Positions::new(),
            &Starting::Earliest,
            None,
            true,
            &ctx(),
        )
        .unwrap();
        assert_eq!(ranges(&s), vec![(0, 0, 10), (1, 5, 5), (2, 0, 7)]);
        let (s, _) =
            plan_ranges(&m, &Positions::new(), &Starting::Latest, None, true, &ctx()).unwrap();
        assert_eq!(ranges(&s), vec![(0, 10, 10), (1, 5, 5), (2, 7, 7)]);
        let exact = Starting::Exact(at(&[(0, 4)]));
        let (s, _) = plan_ranges(&m, &Positions::new(), &exact, None, true, &ctx()).unwrap();
        assert_eq!(ranges(&s), vec![(0, 4, 10), (1, 5, 5), (2, 0, 7)]);
    }

    #[test]
    fn later_batches_read_only_new_records_and_pick_up_new_partitions() {
        let m = marks(&[(0, 0, 12), (1, 0, 5), (2, 0, 3)]);
        let (s, _) = plan_ranges(
            &m,
            &at(&[(0, 10), (1, 5)]),
            &Starting::Latest,
            None,
            true,
            &ctx(),
        )
        .unwrap();
        // Partition 1 has nothing new; partition 2 is new and starts at its earliest offset.
        assert_eq!(ranges(&s), vec![(0, 10, 12), (2, 0, 3)]);
    }

    #[test]
    fn the_rate_limit_is_shared_by_backlog_and_used_fully() {
        let m = marks(&[(0, 0, 1000), (1, 0, 100), (2, 0, 0)]);
        let pos = at(&[(0, 0), (1, 0), (2, 0)]);
        let (s, _) = plan_ranges(&m, &pos, &Starting::Earliest, Some(110), true, &ctx()).unwrap();
        assert_eq!(ranges(&s), vec![(0, 0, 100), (1, 0, 10)]);
        let (s, _) = plan_ranges(&m, &pos, &Starting::Earliest, Some(7), true, &ctx()).unwrap();
        let total: i64 = ranges(&s).iter().map(|r| r.2 - r.1).sum();
        assert_eq!(total, 7);
    }

    #[test]
    fn deleted_offsets_fail_by_default_and_are_skipped_and_counted_otherwise() {
        // Retention moved partition 0's earliest offset to 50; we had read up to 20.
        let m = marks(&[(0, 50, 80)]);
        let pos = at(&[(0, 20)]);
        let err = plan_ranges(&m, &pos, &Starting::Earliest, None, true, &ctx()).unwrap_err();
        assert!(
            err.contains("topic 't' partition 0: offsets [20, 50) were deleted"),
            "{err}"
        );
        let (s, lost) = plan_ranges(&m, &pos, &Starting::Earliest, None, false, &ctx()).unwrap();
        assert_eq!((ranges(&s), lost), (vec![(0, 50, 80)], 30));
    }

    #[test]
    fn bad_records_are_named_by_offset() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let r = records_of(
            RecordFormat::Jsonl,
            &[b"{\"n\": 1}", b"{\"n\": \"x\"}", b"{\"n\": 3}"],
        );
        let e = r.decode(&schema, 0).unwrap_err();
        assert_eq!(e.offset, 8, "{}", e.why);
        // The records come back whole, for the dead-letter path.
        assert_eq!(e.records.len(), 3);
        let multi = records_of(RecordFormat::Jsonl, &[b"{\"n\": 1}", b"{\"n\":\n 2}"]);
        let e = multi.decode(&schema, 0).unwrap_err();
        assert_eq!((e.offset, e.why.as_str()), (8, "value spans several lines"));
    }

    fn records_of(format: RecordFormat, values: &[&[u8]]) -> Records {
        let mut r = Records::new(format);
        for (i, v) in values.iter().enumerate() {
            r.push_parts(
                Some(*v),
                Some(format!("k{i}").as_bytes()),
                7 + i as i64,
                Some(1000),
            );
        }
        r
    }

    #[test]
    fn csv_and_raw_values_decode_with_the_metadata_columns() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let csv = RecordFormat::Csv { delimiter: b',' };
        let b = records_of(csv, &[b"1,a", b"2,b"])
            .decode(&schema, 3)
            .unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.schema().field(2).name(), KEY_COLUMN);
        let keys = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(keys.value(1), "k1");
        let offsets = b.column(4).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(offsets.values(), &[7, 8]);
        let parts = b.column(3).as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!(parts.value(1), 3);
        let e = records_of(csv, &[b"1,a", b"x,b"])
            .decode(&schema, 3)
            .unwrap_err();
        assert_eq!(e.offset, 8, "{}", e.why);

        let text = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, true)]));
        let mut r = records_of(RecordFormat::Raw, &[b"hello", b"world"]);
        r.push_parts(None, None, 9, None);
        r.push_parts(Some(b"!"), None, 10, None);
        let b = r.decode(&text, 0).unwrap();
        let lines = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let lines: Vec<Option<&str>> = lines.iter().collect();
        assert_eq!(lines, [Some("hello"), Some("world"), None, Some("!")]);
        let e = records_of(RecordFormat::Raw, &[b"ok", &[0xff, 0xfe]])
            .decode(&text, 0)
            .unwrap_err();
        assert_eq!(e.offset, 8, "{}", e.why);
        let bytes = Arc::new(Schema::new(vec![Field::new(
            "b",
            DataType::LargeBinary,
            true,
        )]));
        let b = records_of(RecordFormat::Raw, &[b"ok", &[0xff, 0xfe]])
            .decode(&bytes, 0)
            .unwrap();
        let col = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::LargeBinaryArray>();
        assert_eq!(col.unwrap().value(1), &[0xff, 0xfe]);
    }

    #[test]
    fn split_bad_keeps_the_good_records_in_order() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let r = records_of(
            RecordFormat::Jsonl,
            &[b"{\"n\": 1}", b"oops", b"{\"n\": 3}"],
        );
        let (good, bad) = r.split_bad(&schema, 0);
        assert_eq!(good.offsets, vec![7, 9]);
        assert_eq!(good.value(1), Some(b"{\"n\": 3}".as_slice()));
        assert_eq!(bad.records.offsets, vec![8]);
        let dead = bad.into_batch("t", 0);
        assert_eq!(dead.num_rows(), 1);
        assert_eq!(dead.schema(), dead_letter_schema());
        let value = dead
            .column(4)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(value.value(0), "oops");
        assert_eq!(good.decode(&schema, 0).unwrap().num_rows(), 2);
    }
}
