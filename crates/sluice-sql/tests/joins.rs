//! Stream–stream joins over hand-built batches, in the manner of Spark's StreamingJoinSuite:
//! each batch's rows and watermark are chosen, every stage runs in-process as executors run
//! it (map tasks, shuffle blocks per reduce partition, the join's state per partition), and
//! the exact output of every batch is checked.

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use sluice_connectors::IpcDecoder;
use sluice_core::StageInput;
use sluice_sql::{BatchInfo, CompiledJob, MapOutput, StageOutputData, State, TaskInput};
use std::collections::BTreeMap;
use std::sync::Arc;

const TABLES: &str = "CREATE TABLE imps (ad BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
  WITH (connector = 'files', path = 'file:///nonexistent/imps', format = 'jsonl');
CREATE TABLE clicks (ad BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
  WITH (connector = 'files', path = 'file:///nonexistent/clicks', format = 'jsonl');
CREATE TABLE out WITH (connector = 'blackhole');
";

async fn compile(settings: &str, query: &str) -> Result<CompiledJob, String> {
    let sql = format!("SET partitions = 3;\n{settings}{TABLES}INSERT INTO out {query};");
    CompiledJob::compile(&sql, "join.sql")
        .await
        .map_err(|e| e.to_string())
}

/// A job's state across batches, run stage by stage as a cluster would.
struct Run {
    job: CompiledJob,
    /// Per stateful stage, each partition's state.
    state: BTreeMap<usize, Vec<State>>,
    /// Per stateful stage and partition, the deltas written so far.
    deltas: BTreeMap<(usize, usize), Vec<Vec<RecordBatch>>>,
    late: u64,
    metrics: BTreeMap<String, u64>,
}

impl Run {
    async fn new(settings: &str, query: &str) -> Run {
        Run {
            job: compile(settings, query).await.unwrap(),
            state: BTreeMap::new(),
            deltas: BTreeMap::new(),
            late: 0,
            metrics: BTreeMap::new(),
        }
    }

    /// One batch: `(ad, ts in s)` rows per table, and the watermark (s) it logged.
    async fn batch(
        &mut self,
        id: u64,
        watermark_s: Option<i64>,
        previous_s: Option<i64>,
        imps: &[(i64, i64)],
        clicks: &[(i64, i64)],
    ) -> Vec<String> {
        let info = BatchInfo {
            id,
            watermark_ms: watermark_s.map(|s| s * 1000),
            previous_watermark_ms: previous_s.map(|s| s * 1000),
        };
        self.late = 0;
        self.metrics.clear();
        let mut maps: BTreeMap<usize, Vec<MapOutput>> = BTreeMap::new();
        let mut sink = Vec::new();
        for stage in 0..self.job.fragments.len() {
            let tasks = self.inputs(stage, id, &maps, imps, clicks);
            let mut outputs = Vec::new();
            for (p, input) in tasks.into_iter().enumerate() {
                let parts = self.state.entry(stage).or_default();
                if parts.len() <= p {
                    parts.resize_with(p + 1, State::default);
                }
                let (out, update) = self
                    .job
                    .run_stage(stage, info, input, &parts[p])
                    .await
                    .unwrap();
                if let Some(u) = update {
                    parts[p] = u.state;
                    self.late += u.late_rows;
                    for (name, v) in u.metrics {
                        *self.metrics.entry(name).or_default() += v.value as u64;
                    }
                    self.deltas.entry((stage, p)).or_default().push(u.delta);
                }
                match out {
                    StageOutputData::Map { output, .. } => outputs.push(output),
                    StageOutputData::Sink { batches, .. } => sink.extend(batches),
                }
            }
            maps.insert(stage, outputs);
        }
        rows(&sink)
    }

    /// The tasks of `stage`: one per table it reads (each table's rows one split), or one per
    /// partition with the blocks of every exchange it reads.
    fn inputs(
        &self,
        stage: usize,
        batch: u64,
        maps: &BTreeMap<usize, Vec<MapOutput>>,
        imps: &[(i64, i64)],
        clicks: &[(i64, i64)],
    ) -> Vec<TaskInput> {
        let f = &self.job.fragments[stage];
        let tables: Vec<&str> = f.inputs.iter().filter_map(StageInput::source).collect();
        if !tables.is_empty() {
            return tables
                .iter()
                .map(|t| TaskInput::Split {
                    table: t.to_string(),
                    rows: vec![self.events(t, batch, if *t == "imps" { imps } else { clicks })],
                })
                .collect();
        }
        let froms: Vec<u32> = f.inputs.iter().filter_map(StageInput::upstream).collect();
        (0..3)
            .map(|p| {
                let blocks: Vec<(u32, Vec<RecordBatch>)> = froms
                    .iter()
                    .flat_map(|from| {
                        maps[&(*from as usize)].iter().map(move |m| {
                            let block = m.block(p, &[]).unwrap();
                            (*from, IpcDecoder::decode(block).unwrap())
                        })
                    })
                    .collect();
                self.job.shuffle_input(stage, blocks).unwrap()
            })
            .collect()
    }

    fn events(&self, table: &str, batch: u64, rows: &[(i64, i64)]) -> RecordBatch {
        let schema = self.job.source_schema(table).unwrap();
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| {
                let built: ArrayRef = match f.name().as_str() {
                    "ad" => Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                    "ts" => Arc::new(TimestampMillisecondArray::from_iter_values(
                        rows.iter().map(|r| r.1 * 1000),
                    )),
                    _ => Arc::new(Int64Array::from(vec![batch as i64; rows.len()])),
                };
                arrow::compute::cast(&built, f.data_type()).unwrap()
            })
            .collect();
        RecordBatch::try_new(schema, columns).unwrap()
    }

    /// Every partition's state, restored from its deltas, equals the state it holds.
    async fn assert_restores(&self) {
        for ((stage, p), deltas) in &self.deltas {
            let restored = self.job.restore_state(*stage, deltas).await.unwrap();
            assert_eq!(
                restored.num_rows(),
                self.state[stage][*p].num_rows(),
                "stage {stage} partition {p}"
            );
        }
    }
}

/// Sink rows as sorted text, timestamps in seconds: `1 3 8` or `2 2 null`.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let columns: Vec<ArrayRef> = b
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Timestamp(..) => {
                    let ms =
                        arrow::compute::cast(c, &DataType::Timestamp(TimeUnit::Millisecond, None))
                            .unwrap();
                    let ms = arrow::compute::cast(&ms, &DataType::Int64).unwrap();
                    let s: Int64Array = ms
                        .as_primitive::<Int64Type>()
                        .iter()
                        .map(|v| v.map(|v| v / 1000))
                        .collect();
                    Arc::new(s) as ArrayRef
                }
                _ => arrow::compute::cast(c, &DataType::Int64).unwrap(),
            })
            .collect();
        for i in 0..b.num_rows() {
            let row: Vec<String> = columns
                .iter()
                .map(|c| {
                    let c = c.as_primitive::<Int64Type>();
                    match c.is_valid(i) {
                        true => c.value(i).to_string(),
                        false => "null".into(),
                    }
                })
                .collect();
            out.push(row.join(" "));
        }
    }
    out.sort();
    out
}

fn strs(rows: &[&str]) -> Vec<String> {
    rows.iter().map(|s| s.to_string()).collect()
}

const INTERVAL: &str = "SELECT i.ad, i.ts, c.ts FROM imps i JOIN clicks c ON i.ad = c.ad AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '10' SECOND";

#[tokio::test]
async fn an_inner_interval_join_emits_each_pair_once_and_evicts_as_the_watermark_moves() {
    let mut run = Run::new("", INTERVAL).await;
    let specs = run.job.stage_specs();
    assert_eq!(
        specs.len(),
        3,
        "two shuffling sides and the join: {specs:?}"
    );
    assert_eq!(specs[2].inputs.len(), 2);
    assert!(specs[2].stateful);

    // Both rows in one batch; a click before its impression or past its reach does not match.
    let out = run
        .batch(0, None, None, &[(1, 1), (2, 2)], &[(1, 5), (2, 1), (1, 30)])
        .await;
    assert_eq!(out, strs(&["1 1 5"]));
    assert_eq!(run.metrics["left.state_rows"], 2);
    assert_eq!(run.metrics["right.state_rows"], 3);

    // A click matching an impression held in state; rows at or before the watermark are late.
    let out = run
        .batch(
            1,
            Some(5),
            None,
            &[(1, 3), (3, 20)],
            &[(2, 11), (1, 4), (2, 12)],
        )
        .await;
    assert_eq!(out, strs(&["2 2 11", "2 2 12"]));
    assert_eq!(run.late, 2, "the impression at 3 s and the click at 4 s");
    assert_eq!(run.metrics["left.late_rows"], 1);

    // Watermark 12 s: impressions at 1 s and 2 s can match no future click (1 + 10, 2 + 10 <= 12);
    // clicks at or before 12 s can match no future impression.
    let out = run.batch(2, Some(12), Some(5), &[], &[(3, 25)]).await;
    assert_eq!(out, strs(&["3 20 25"]));
    assert_eq!(run.metrics["left.state_rows"], 1, "the impression at 20 s");
    assert_eq!(
        run.metrics["right.state_rows"], 2,
        "the clicks at 25 s and 30 s"
    );
    // A new impression still matches a held click.
    let out = run.batch(3, Some(12), Some(12), &[(1, 22)], &[]).await;
    assert_eq!(out, strs(&["1 22 30"]));
    run.assert_restores().await;
}

#[tokio::test]
async fn a_left_outer_join_emits_nulls_only_for_unmatched_rows_and_only_once_they_expire() {
    let query = INTERVAL.replace(" JOIN ", " LEFT JOIN ");
    let mut run = Run::new("", &query).await;
    let out = run
        .batch(0, None, None, &[(1, 1), (2, 2), (3, 3)], &[(1, 4)])
        .await;
    assert_eq!(out, strs(&["1 1 4"]));
    // Impression 3 matches in a later batch; impression 2 never does.
    let out = run.batch(1, Some(5), None, &[], &[(3, 9)]).await;
    assert_eq!(out, strs(&["3 3 9"]));
    // Watermark 11 s: impression 1 (reach 11 s) expires matched, so nothing; 2 and 3 not yet.
    let out = run.batch(2, Some(11), Some(5), &[], &[]).await;
    assert!(out.is_empty(), "{out:?}");
    let out = run.batch(3, Some(13), Some(11), &[], &[]).await;
    assert_eq!(
        out,
        strs(&["2 2 null"]),
        "only the impression that never matched"
    );
    assert_eq!(run.metrics["left.state_rows"], 0);
    run.assert_restores().await;
}

#[tokio::test]
async fn right_and_full_outer_joins_emit_each_unmatched_side() {
    let query = INTERVAL.replace(" JOIN ", " FULL JOIN ");
    let mut run = Run::new("", &query).await;
    let out = run
        .batch(0, None, None, &[(1, 1), (2, 2)], &[(1, 4), (5, 5)])
        .await;
    assert_eq!(out, strs(&["1 1 4"]));
    let out = run.batch(1, Some(20), None, &[], &[]).await;
    assert_eq!(out, strs(&["2 2 null", "null null 5"]));

    let query = INTERVAL.replace(" JOIN ", " RIGHT JOIN ");
    let mut run = Run::new("", &query).await;
    run.batch(0, None, None, &[(1, 1), (2, 2)], &[(1, 4), (5, 5)])
        .await;
    let out = run.batch(1, Some(20), None, &[], &[]).await;
    assert_eq!(out, strs(&["null null 5"]));
}

#[tokio::test]
async fn a_window_join_emits_when_the_window_closes() {
    let query = "SELECT i.ad, i.window_start, i.n, c.n FROM
      (SELECT ad, window_start, window_end, count(*) AS n FROM TUMBLE(imps, ts, INTERVAL '10' SECOND) GROUP BY ad, window_start, window_end) i
      FULL JOIN
      (SELECT ad, window_start, window_end, count(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) GROUP BY ad, window_start, window_end) c
      ON i.ad = c.ad AND i.window_start = c.window_start AND i.window_end = c.window_end";
    // Two windowed aggregations in append mode feed the join: a window's counts reach the join
    // in the batch whose watermark closes it, and are not late there.
    let mut run = Run::new("SET 'output_mode' = 'append';\n", query).await;
    let stateful = run.job.stage_specs().iter().filter(|s| s.stateful).count();
    assert_eq!(stateful, 3);
    let out = run
        .batch(
            0,
            None,
            None,
            &[(1, 1), (1, 2), (2, 3), (1, 12)],
            &[(1, 5), (3, 8)],
        )
        .await;
    assert!(out.is_empty(), "no window has closed: {out:?}");
    let out = run.batch(1, Some(10), None, &[], &[]).await;
    assert_eq!(out, strs(&["1 0 2 1", "2 0 1 null", "null null null 1"]));
    assert_eq!(run.late, 0);
    let out = run.batch(2, Some(20), Some(10), &[], &[(1, 15)]).await;
    assert_eq!(out, strs(&["1 10 1 1"]));
    run.assert_restores().await;
}

#[tokio::test]
async fn a_window_join_of_raw_rows_pairs_rows_of_the_same_window() {
    let query =
        "SELECT i.ad, i.window_start, i.ts, c.ts FROM TUMBLE(imps, ts, INTERVAL '10' SECOND) i
      LEFT JOIN TUMBLE(clicks, ts, INTERVAL '10' SECOND) c
      ON i.ad = c.ad AND i.window_end = c.window_end";
    let mut run = Run::new("", query).await;
    let out = run
        .batch(
            0,
            None,
            None,
            &[(1, 1), (2, 2), (1, 11)],
            &[(1, 9), (2, 10)],
        )
        .await;
    assert!(out.is_empty());
    let out = run.batch(1, Some(10), None, &[(1, 3)], &[]).await;
    assert_eq!(out, strs(&["1 0 1 9", "2 0 2 null"]));
    assert_eq!(run.late, 1, "the impression at 3 s, its window closed");
}

#[tokio::test]
async fn a_join_feeds_a_windowed_aggregation() {
    let query = "SELECT date_bin(INTERVAL '10 seconds', ts) AS w, count(*) AS n FROM
        (SELECT c.ts AS ts FROM imps i JOIN clicks c ON i.ad = c.ad AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '10' SECOND)
        GROUP BY date_bin(INTERVAL '10 seconds', ts)";
    let mut run = Run::new("SET 'output_mode' = 'append';\n", query).await;
    run.batch(0, None, None, &[(1, 1), (2, 2)], &[(1, 5), (2, 8), (1, 11)])
        .await;
    let out = run.batch(1, Some(9), None, &[(3, 10)], &[(3, 12)]).await;
    assert!(out.is_empty(), "{out:?}");
    let out = run.batch(2, Some(20), Some(9), &[], &[]).await;
    assert_eq!(out, strs(&["0 2", "10 2"]));
}

#[tokio::test]
async fn state_ttl_bounds_an_inner_join_without_a_time_bound() {
    let query = "SELECT i.ad, i.ts, c.ts FROM imps i JOIN clicks c ON i.ad = c.ad";
    let mut run = Run::new("SET 'state.ttl' = '10s';\n", query).await;
    run.batch(0, None, None, &[(1, 1)], &[]).await;
    let out = run.batch(1, Some(5), None, &[], &[(1, 100)]).await;
    assert_eq!(
        out,
        strs(&["1 1 100"]),
        "no time bound: any two rows of a key match"
    );
    // Imp 1 arrived before any watermark, so its 10 s count from watermark 5 s; as in Spark,
    // a batch joins first and evicts after.
    let out = run.batch(2, Some(15), Some(5), &[], &[(1, 101)]).await;
    assert_eq!(out, strs(&["1 1 101"]));
    assert_eq!(run.metrics["left.state_rows"], 0);
    let out = run.batch(3, Some(16), Some(15), &[], &[(1, 102)]).await;
    assert!(out.is_empty(), "the impression expired: {out:?}");
}

#[tokio::test]
async fn joins_that_cannot_be_bounded_are_refused_with_what_to_add() {
    let bare = "SELECT i.ad FROM imps i JOIN clicks c ON i.ad = c.ad";
    for (settings, query, want) in [
        ("", bare, "needs a time bound"),
        (
            "",
            "SELECT i.ad FROM imps i JOIN clicks c ON i.ad = c.ad AND c.ts >= i.ts",
            "no upper end",
        ),
        (
            "",
            "SELECT i.ad FROM imps i JOIN clicks c ON i.ad = c.ad AND c.ts <= i.ts + INTERVAL '1' SECOND",
            "no lower end",
        ),
        (
            "SET 'state.ttl' = '1h';\n",
            &bare.replace(" JOIN ", " LEFT JOIN "),
            "inner joins only",
        ),
        (
            "",
            "SELECT i.ad FROM imps i JOIN clicks c ON c.ts BETWEEN i.ts AND i.ts + INTERVAL '1' SECOND",
            "equality on keys",
        ),
        ("SET 'output_mode' = 'update';\n", INTERVAL, "append mode"),
        (
            "",
            "SELECT i.ad FROM imps i WHERE i.ad IN (SELECT ad FROM clicks)",
            "join of two streams is not supported",
        ),
        (
            "",
            "SELECT i.ad FROM imps i JOIN (SELECT ad, ts + INTERVAL '0' SECOND AS ts, CAST(ad AS TIMESTAMP) AS t2 FROM clicks) c ON i.ad = c.ad AND c.t2 BETWEEN i.ts AND i.ts + INTERVAL '1' SECOND",
            "not an event-time column",
        ),
        (
            "",
            "SELECT i.ad FROM (SELECT ad, count(*) AS n, max(ts) AS ts FROM imps GROUP BY ad) i JOIN clicks c ON i.ad = c.ad AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '1' SECOND",
            "only final rows can feed one",
        ),
    ] {
        let err = compile(settings, query)
            .await
            .err()
            .unwrap_or_else(|| panic!("{query} was accepted"));
        assert!(err.contains(want), "{query}: {err}");
        assert!(
            err.starts_with("join.sql:"),
            "names the file and line: {err}"
        );
    }
    let no_watermark = TABLES.replace(", WATERMARK FOR ts AS ts", "");
    let sql = format!("{no_watermark}INSERT INTO out {INTERVAL};");
    let err = CompiledJob::compile(&sql, "join.sql")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no source table declares a WATERMARK"),
        "{err}"
    );
}

#[tokio::test]
async fn join_state_stays_bounded_over_a_long_run() {
    let query = INTERVAL.replace(" JOIN ", " LEFT JOIN ");
    let mut run = Run::new("", &query).await;
    let mut held = Vec::new();
    let mut pairs = 0;
    // 40 batches, each 10 s of event time: 5 impressions and 5 clicks, each click 3 s after an
    // impression of its ad; the watermark trails the last batch by 5 s.
    for b in 0..40i64 {
        let t = b * 10;
        let imps: Vec<(i64, i64)> = (0..5).map(|k| (b * 5 + k, t + k)).collect();
        let clicks: Vec<(i64, i64)> = (0..5).map(|k| (b * 5 + k, t + k + 3)).collect();
        let watermark = (b > 0).then(|| t - 5);
        let previous = (b > 1).then(|| t - 15);
        let out = run
            .batch(b as u64, watermark, previous, &imps, &clicks)
            .await;
        pairs += out.iter().filter(|r| !r.ends_with("null")).count();
        assert!(
            out.iter().all(|r| !r.ends_with("null")),
            "every row matched: {out:?}"
        );
        held.push(run.metrics["left.state_rows"] + run.metrics["right.state_rows"]);
    }
    assert_eq!(pairs, 40 * 5);
    assert!(
        held.iter().all(|n| *n <= 20),
        "at most two batches of rows held: {held:?}"
    );
    run.assert_restores().await;
}
