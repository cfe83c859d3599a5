//! Planning into stages, and running the stages in-process exactly as executors would:
//! map tasks over source splits, shuffle blocks per reduce partition, reduce tasks.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use sluice_connectors::IpcDecoder;
use sluice_connectors::connectors::datagen::Rows;
use sluice_core::{ShuffleKind, SourceSplit, StageInput, StageOutput};
use sluice_sql::{BatchInfo, CompiledJob, StageOutputData, State, TaskInput};
use std::collections::BTreeMap;

const SOURCE: &str = "CREATE TABLE clicks (user_id BIGINT, page TEXT, ts TIMESTAMP)
  WITH (connector = 'datagen', rows_per_second = '1000', seed = '7', 'fields.page.values' = 'home,cart,search,help,about', fields.user_id.min = '-50', fields.user_id.max = '500');
CREATE TABLE out WITH (connector = 'blackhole');
";

async fn compile(query: &str) -> CompiledJob {
    let sql = format!("SET partitions = 3;\n{SOURCE}INSERT INTO out {query};");
    CompiledJob::compile(&sql, "test.sql").await.unwrap()
}

fn splits() -> Vec<SourceSplit> {
    splits_from(0)
}

/// Four splits of 2500 generated rows each, starting at row `first`.
fn splits_from(first: u64) -> Vec<SourceSplit> {
    (0..4)
        .map(|i| {
            Rows {
                start: first + i * 2500,
                end: first + (i + 1) * 2500,
            }
            .into()
        })
        .collect()
}

/// Runs every stage like the cluster does, returning the sink rows per final partition.
async fn run(job: &CompiledJob, batch_id: u64) -> Vec<Vec<RecordBatch>> {
    run_with_state(job, batch_id, &splits(), &mut Vec::new(), &mut []).await
}

/// Like `run`, for a job with a running aggregate: `state` holds each partition's state and
/// is replaced by the new version; `deltas` collects each partition's delta.
async fn run_with_state(
    job: &CompiledJob,
    batch_id: u64,
    splits: &[SourceSplit],
    state: &mut Vec<State>,
    deltas: &mut [Vec<Vec<RecordBatch>>],
) -> Vec<Vec<RecordBatch>> {
    run_batch(job, batch_id.into(), splits, state, deltas)
        .await
        .0
}

/// Like `run_with_state`, for a batch with a watermark; also returns the rows dropped late.
async fn run_batch(
    job: &CompiledJob,
    batch: BatchInfo,
    splits: &[SourceSplit],
    state: &mut Vec<State>,
    deltas: &mut [Vec<Vec<RecordBatch>>],
) -> (Vec<Vec<RecordBatch>>, u64) {
    let mut inputs: Vec<TaskInput> = Vec::new();
    for split in splits {
        let rows = job.sources["clicks"].read(split, batch.id).await.unwrap();
        let table = "clicks".to_string();
        inputs.push(TaskInput::Split { table, rows });
    }
    run_inputs(job, batch, inputs, state, deltas).await
}

/// Runs one batch over the given source tasks' rows (one task each).
async fn run_inputs(
    job: &CompiledJob,
    batch: BatchInfo,
    mut inputs: Vec<TaskInput>,
    state: &mut Vec<State>,
    deltas: &mut [Vec<Vec<RecordBatch>>],
) -> (Vec<Vec<RecordBatch>>, u64) {
    let mut late = 0;
    for stage in 0..job.fragments.len() {
        let mut outputs = Vec::new();
        for (p, input) in inputs.into_iter().enumerate() {
            if state.len() <= p {
                state.push(State::default());
            }
            let (out, update) = job.run_stage(stage, batch, input, &state[p]).await.unwrap();
            if let Some(update) = update {
                state[p] = update.state;
                late += update.late_rows;
                if let Some(d) = deltas.get_mut(p) {
                    d.push(update.delta);
                }
            }
            outputs.push(out);
        }
        let maps: Vec<_> = outputs
            .into_iter()
            .map(|o| match o {
                StageOutputData::Map { output, sample, .. } => Ok((output, sample)),
                StageOutputData::Sink { batches, .. } => Err(batches),
            })
            .collect();
        if maps.iter().all(|m| m.is_err()) {
            return (maps.into_iter().map(|m| m.err().unwrap()).collect(), late);
        }
        let maps: Vec<_> = maps.into_iter().map(|m| m.ok().unwrap()).collect();
        let mut samples: Vec<Vec<u8>> = maps.iter().flat_map(|(_, s)| s.clone()).collect();
        samples.sort();
        let n = 3;
        let bounds: Vec<Vec<u8>> = if samples.is_empty() {
            vec![]
        } else {
            (1..n)
                .map(|i| samples[i * samples.len() / n].clone())
                .collect()
        };
        inputs = (0..n as u32)
            .map(|r| {
                let blocks: Vec<(u32, Vec<RecordBatch>)> = maps
                    .iter()
                    .map(|(m, _)| {
                        let block = m.block(r, &bounds).unwrap();
                        (stage as u32, IpcDecoder::decode(block).unwrap())
                    })
                    .collect();
                job.shuffle_input(stage + 1, blocks).unwrap()
            })
            .collect();
    }
    unreachable!("the last stage writes the sink")
}

#[tokio::test]
async fn stateless_job_is_one_stage() {
    let job = compile("SELECT user_id, upper(page) AS p FROM clicks WHERE user_id > 0").await;
    let specs = job.stage_specs();
    assert_eq!(specs.len(), 1);
    assert_eq!(
        (specs[0].inputs.clone(), specs[0].output),
        (
            vec![StageInput::Source {
                table: "clicks".into()
            }],
            StageOutput::Sink
        )
    );
    let parts = run(&job, 0).await;
    let rows: usize = parts.iter().flatten().map(|b| b.num_rows()).sum();
    let expected = {
        let mut n = 0;
        for s in splits() {
            for b in job.sources["clicks"].read(&s, 0).await.unwrap() {
                n += b
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .iter()
                    .filter(|v| v.unwrap() > 0)
                    .count();
            }
        }
        n
    };
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn per_batch_group_by_shuffles_by_key_and_counts_exactly() {
    let job = compile(
        "SELECT _batch, page, count(*) AS n, sum(user_id) AS s, min(user_id) AS lo, max(user_id) AS hi, avg(user_id) AS a, count(DISTINCT user_id) AS d FROM clicks WHERE user_id > 0 GROUP BY _batch, page",
    )
    .await;
    let specs = job.stage_specs();
    assert!(specs.len() >= 2, "{specs:?}");
    assert_eq!(
        specs[0].output,
        StageOutput::Shuffle {
            kind: ShuffleKind::Hash,
            partitions: 3
        }
    );
    let parts = run(&job, 5).await;
    // Expected, computed directly from the generated rows.
    let mut want: BTreeMap<String, (i64, i64, i64, i64, std::collections::BTreeSet<i64>)> =
        BTreeMap::new();
    for s in splits() {
        for b in job.sources["clicks"].read(&s, 5).await.unwrap() {
            let users = b.column(0).as_primitive::<Int64Type>();
            let pages = b.column(1).as_string::<i32>();
            for i in 0..b.num_rows() {
                let u = users.value(i);
                if u > 0 {
                    let e = want.entry(pages.value(i).to_string()).or_insert((
                        0,
                        0,
                        i64::MAX,
                        i64::MIN,
                        Default::default(),
                    ));
                    e.0 += 1;
                    e.1 += u;
                    e.2 = e.2.min(u);
                    e.3 = e.3.max(u);
                    e.4.insert(u);
                }
            }
        }
    }
    let mut got = BTreeMap::new();
    let mut partitions_with_rows = 0;
    for part in &parts {
        if part.iter().any(|b| b.num_rows() > 0) {
            partitions_with_rows += 1;
        }
        for b in part {
            for i in 0..b.num_rows() {
                assert_eq!(
                    b.column(0).as_primitive::<Int64Type>().value(i),
                    5,
                    "_batch"
                );
                let page = b.column(1).as_string::<i32>().value(i).to_string();
                let row = (
                    b.column(2).as_primitive::<Int64Type>().value(i),
                    b.column(3).as_primitive::<Int64Type>().value(i),
                    b.column(4).as_primitive::<Int64Type>().value(i),
                    b.column(5).as_primitive::<Int64Type>().value(i),
                    b.column(7).as_primitive::<Int64Type>().value(i),
                );
                assert!(
                    got.insert(page, row).is_none(),
                    "a key appears in one partition only"
                );
            }
        }
    }
    assert!(
        partitions_with_rows >= 2,
        "hash spreads 5 keys over several partitions"
    );
    let want: BTreeMap<_, _> = want
        .into_iter()
        .map(|(k, v)| (k, (v.0, v.1, v.2, v.3, v.4.len() as i64)))
        .collect();
    assert_eq!(got, want);
}

/// The rows a map task of stage 0 ships for the first split.
async fn map_rows(job: &CompiledJob) -> u64 {
    let rows = job.sources["clicks"].read(&splits()[0], 0).await.unwrap();
    let input = TaskInput::Split {
        table: "clicks".into(),
        rows,
    };
    match job
        .run_stage(0, 0, input, &State::default())
        .await
        .unwrap()
        .0
    {
        StageOutputData::Map { rows, .. } => rows,
        StageOutputData::Sink { .. } => panic!("stage 0 writes a shuffle"),
    }
}

fn sorted_rows(parts: &[Vec<RecordBatch>]) -> Vec<String> {
    let mut all: Vec<String> = parts.iter().flat_map(|p| rows(p)).collect();
    all.sort();
    all
}

#[tokio::test]
async fn map_tasks_aggregate_per_key_before_the_shuffle_with_the_same_results() {
    let query = "SELECT _batch, page, count(*) AS n, sum(user_id) AS s, min(user_id) AS lo, max(user_id) AS hi, avg(user_id) AS a FROM clicks WHERE user_id > 0 GROUP BY _batch, page";
    let split = compile(query).await;
    let whole = CompiledJob::compile(
        &format!("SET partitions = 3;\nSET partial_aggregation = 'false';\n{SOURCE}INSERT INTO out {query};"),
        "whole.sql",
    )
    .await
    .unwrap();
    // One row per page (5) leaves a map task, instead of every row with a positive user.
    assert_eq!(map_rows(&split).await, 5);
    assert!(map_rows(&whole).await > 1000);
    assert_eq!(
        sorted_rows(&run(&split, 3).await),
        sorted_rows(&run(&whole, 3).await)
    );
    // count(DISTINCT ...) has no partial form: its rows cross the shuffle as they are.
    let distinct = compile(&query.replace("avg(user_id)", "count(DISTINCT user_id)")).await;
    assert!(map_rows(&distinct).await > 1000);
}

#[tokio::test]
async fn a_running_aggregation_merges_partials_into_the_same_state() {
    let whole = CompiledJob::compile(
        &format!("SET partitions = 3;\nSET partial_aggregation = 'false';\n{SOURCE}INSERT INTO out {RUNNING};"),
        "whole.sql",
    )
    .await
    .unwrap();
    let split = compile(RUNNING).await;
    assert_eq!(map_rows(&split).await, 5);
    // Same state layout: a checkpoint of either continues under the other.
    assert_eq!(
        split.state_of(1).unwrap().signature(),
        whole.state_of(1).unwrap().signature()
    );
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (mut da, mut db) = (vec![Vec::new(); 3], vec![Vec::new(); 3]);
    for batch in 0..3u64 {
        let splits = splits_from(batch * 10_000);
        let out_a = run_with_state(&split, batch, &splits, &mut a, &mut da).await;
        let out_b = run_with_state(&whole, batch, &splits, &mut b, &mut db).await;
        assert_eq!(sorted_rows(&out_a), sorted_rows(&out_b), "batch {batch}");
        for p in 0..3 {
            assert_eq!(
                rows(&current(&a[p])),
                rows(&current(&b[p])),
                "state of partition {p}"
            );
            // The delta is the batch's merged partials: one row per key.
            assert_eq!(rows(&da[p][batch as usize]), rows(&db[p][batch as usize]));
        }
    }
}

#[tokio::test]
async fn order_by_range_partitions_are_sorted_and_in_order() {
    let job = compile("SELECT user_id, page FROM clicks ORDER BY user_id DESC").await;
    let specs = job.stage_specs();
    assert_eq!(
        specs[0].output,
        StageOutput::Shuffle {
            kind: ShuffleKind::Range,
            partitions: 3
        }
    );
    let parts = run(&job, 0).await;
    let per_part: Vec<Vec<i64>> = parts
        .iter()
        .map(|p| {
            p.iter()
                .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                .collect()
        })
        .collect();
    assert!(
        per_part.iter().filter(|p| !p.is_empty()).count() >= 2,
        "range spreads rows"
    );
    let all: Vec<i64> = per_part.concat();
    assert_eq!(all.len(), 10_000);
    assert!(all.windows(2).all(|w| w[0] >= w[1]), "globally descending");
}

#[tokio::test]
async fn group_by_then_order_by_has_two_shuffles() {
    let job = compile("SELECT _batch, page, count(*) AS n FROM clicks GROUP BY _batch, page ORDER BY n DESC, page").await;
    let kinds: Vec<_> = job.stage_specs().iter().map(|s| s.output).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    let parts = run(&job, 1).await;
    let counts: Vec<i64> = parts
        .iter()
        .flatten()
        .flat_map(|b| b.column(2).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(counts.len(), 5);
    assert_eq!(counts.iter().sum::<i64>(), 10_000);
    assert!(counts.windows(2).all(|w| w[0] >= w[1]));
}

#[tokio::test]
async fn refused_queries_say_why_and_where() {
    let err = |sql: &'static str| async move {
        let sql = format!("{SOURCE}\nINSERT INTO out {sql};");
        match CompiledJob::compile(&sql, "job.sql").await {
            Ok(_) => panic!("{sql} should be refused"),
            Err(e) => e.to_string(),
        }
    };
    let e = err("SELECT page, count(DISTINCT user_id) FROM clicks GROUP BY page").await;
    assert!(
        e.contains("job.sql:5:") && e.contains("DISTINCT") && e.contains("running aggregation"),
        "{e}"
    );
    let e = err("SELECT page, median(user_id) FROM clicks GROUP BY page").await;
    assert!(e.contains("'median' is not supported"), "{e}");
    let sql =
        format!("SET output_mode = 'complete';\n{SOURCE}\nINSERT INTO out SELECT * FROM clicks;");
    let e = CompiledJob::compile(&sql, "job.sql")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("output_mode") && e.contains("GROUP BY without _batch"),
        "{e}"
    );
    let e = err("SELECT nope FROM clicks").await;
    assert!(e.contains("job.sql:5:") && e.contains("nope"), "{e}");
    let e = err("SELECT * FROM clicks ORDER BY user_id LIMIT 3").await;
    assert!(e.contains("LIMIT"), "{e}");
    let e = err("SELECT * FROM missing").await;
    assert!(e.contains("missing"), "{e}");
}

#[tokio::test]
async fn sink_columns_are_positional_and_typed() {
    let sql = format!(
        "{}CREATE TABLE counts (b BIGINT, page TEXT, n INT) WITH (connector = 'blackhole');\nINSERT INTO counts SELECT _batch, page, count(*) FROM clicks GROUP BY _batch, page;",
        SOURCE.replace("CREATE TABLE out WITH (connector = 'blackhole');\n", "")
    );
    let job = CompiledJob::compile(&sql, "j.sql").await.unwrap();
    let parts = run(&job, 0).await;
    let b = parts.iter().flatten().next().unwrap();
    assert_eq!(b.schema().field(0).name(), "b");
    assert_eq!(
        b.schema().field(2).data_type(),
        &arrow::datatypes::DataType::Int32
    );
    let sql = sql.replace("n INT)", "n INT, extra TEXT)");
    let e = CompiledJob::compile(&sql, "j.sql")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("expects 4 columns"), "{e}");
    let _ = b.column(0).len();
}

type Running = BTreeMap<String, (i64, i64, i64, i64, i64)>;

/// count, sum, min, max, row count of positive user ids per page over the given splits.
async fn expected_running(job: &CompiledJob, batches: &[Vec<SourceSplit>]) -> Running {
    let mut want = Running::new();
    for (b, splits) in batches.iter().enumerate() {
        for s in splits {
            for rb in job.sources["clicks"].read(s, b as u64).await.unwrap() {
                let users = rb.column(0).as_primitive::<Int64Type>();
                let pages = rb.column(1).as_string::<i32>();
                for i in 0..rb.num_rows() {
                    let u = users.value(i);
                    if u > 0 {
                        let e = want.entry(pages.value(i).to_string()).or_insert((
                            0,
                            0,
                            i64::MAX,
                            i64::MIN,
                            0,
                        ));
                        e.0 += 1;
                        e.1 += u;
                        e.2 = e.2.min(u);
                        e.3 = e.3.max(u);
                    }
                }
            }
        }
    }
    want
}

fn emitted(parts: &[Vec<RecordBatch>]) -> Running {
    let mut got = Running::new();
    for b in parts.iter().flatten() {
        for i in 0..b.num_rows() {
            let page = b.column(0).as_string::<i32>().value(i).to_string();
            let avg = b
                .column(5)
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(i);
            let row = (
                b.column(1).as_primitive::<Int64Type>().value(i),
                b.column(2).as_primitive::<Int64Type>().value(i),
                b.column(3).as_primitive::<Int64Type>().value(i),
                b.column(4).as_primitive::<Int64Type>().value(i),
                0,
            );
            assert!(
                (avg - row.1 as f64 / row.0 as f64).abs() < 1e-9,
                "avg {avg} for {page}"
            );
            assert!(got.insert(page, row).is_none(), "each key emitted once");
        }
    }
    got
}

const RUNNING: &str = "SELECT page, count(*) AS n, sum(user_id) AS s, min(user_id) AS lo, max(user_id) AS hi, avg(user_id) AS a FROM clicks WHERE user_id > 0 GROUP BY page";

#[tokio::test]
async fn running_aggregation_update_mode_emits_changed_keys_with_totals() {
    let job = compile(RUNNING).await;
    assert!(job.state_of(1).is_some(), "{:?}", job.stage_specs());
    let mut state = Vec::new();
    let mut batches = Vec::new();
    for b in 0..3u64 {
        // Batch 1 reads only the first split: fewer rows, but every page still appears.
        let splits = if b == 1 {
            splits_from(b * 10_000)[..1].to_vec()
        } else {
            splits_from(b * 10_000)
        };
        batches.push(splits.clone());
        let parts = run_with_state(&job, b, &splits, &mut state, &mut vec![Vec::new(); 3]).await;
        let want = expected_running(&job, &batches).await;
        assert_eq!(emitted(&parts), want, "after batch {b}");
    }
}

#[tokio::test]
async fn running_aggregation_complete_mode_and_restore_from_deltas() {
    let sql = format!(
        "SET partitions = 3;\nSET output_mode = 'complete';\n{SOURCE}INSERT INTO out {};",
        RUNNING.replace("user_id > 0", "user_id > 0 AND page <> 'help'")
    );
    let job = CompiledJob::compile(&sql, "c.sql").await.unwrap();
    let mut state = Vec::new();
    let mut deltas: Vec<Vec<Vec<RecordBatch>>> = vec![Vec::new(); 3];
    let mut snapshots = Vec::new();
    let mut batches = Vec::new();
    for b in 0..3u64 {
        let splits = splits_from(b * 10_000)[..(b as usize + 1)].to_vec();
        batches.push(splits.clone());
        let parts = run_with_state(&job, b, &splits, &mut state, &mut deltas).await;
        let mut want = expected_running(&job, &batches).await;
        want.remove("help");
        assert_eq!(emitted(&parts), want, "complete output after batch {b}");
        snapshots.push(state.iter().map(current).collect::<Vec<_>>());
    }
    for p in 0..3 {
        // Version 2 = every delta from the start, or the snapshot of version 0 plus the rest.
        let from_deltas = job.restore_state(1, &deltas[p]).await.unwrap();
        assert_eq!(
            rows(&current(&from_deltas)),
            rows(&current(&state[p])),
            "partition {p}"
        );
        let mut parts = vec![snapshots[0][p].clone()];
        parts.extend(deltas[p][1..].iter().cloned());
        let from_snapshot = job.restore_state(1, &parts).await.unwrap();
        assert_eq!(
            rows(&current(&from_snapshot)),
            rows(&current(&state[p])),
            "partition {p}"
        );
    }
    let keys: usize = state.iter().map(|p| rows(&current(p)).len()).sum();
    assert_eq!(keys, 4, "one state row per key");
}

/// A state version's current rows.
fn current(state: &State) -> Vec<RecordBatch> {
    state.batches().unwrap()
}

/// State rows as sorted text, to compare versions.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |i| {
                b.columns()
                    .iter()
                    .map(|c| arrow::util::display::array_value_to_string(c, i).unwrap())
                    .collect::<Vec<_>>()
                    .join("|")
            })
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn resubmitting_onto_a_checkpoint_accepts_safe_changes_only() {
    let job = |partitions: u32, query: &str| {
        let sql = format!("SET partitions = {partitions};\n{SOURCE}INSERT INTO out {query};");
        async move { CompiledJob::compile(&sql, "j.sql").await.unwrap() }
    };
    let base = job(
        3,
        "SELECT page, count(*) AS n, sum(user_id) AS s FROM clicks GROUP BY page",
    )
    .await;
    // A new filter and a different projection upstream of the state: safe.
    let filtered = job(
        3,
        "SELECT page, count(*) AS n, sum(user_id) AS s FROM clicks WHERE user_id > 10 GROUP BY page",
    )
    .await;
    filtered.check_compatible(&base).unwrap();
    let refused = |new: CompiledJob| {
        let e = new.check_compatible(&base).unwrap_err().to_string();
        assert!(e.contains("cannot continue from its checkpoint"), "{e}");
        e
    };
    let e = refused(
        job(
            3,
            "SELECT user_id, count(*) AS n, sum(user_id) AS s FROM clicks GROUP BY user_id",
        )
        .await,
    );
    assert!(
        e.contains("GROUP BY keys changed from [clicks.page] to [clicks.user_id]"),
        "{e}"
    );
    let e = refused(
        job(
            3,
            "SELECT page, count(*) AS n, max(user_id) AS s FROM clicks GROUP BY page",
        )
        .await,
    );
    assert!(
        e.contains("aggregates changed") && e.contains("max(clicks.user_id)"),
        "{e}"
    );
    let e = refused(
        job(
            4,
            "SELECT page, count(*) AS n, sum(user_id) AS s FROM clicks GROUP BY page",
        )
        .await,
    );
    assert!(e.contains("'partitions' changed from 3 to 4"), "{e}");
    let e = refused(
        job(
            3,
            "SELECT _batch, page, count(*) FROM clicks GROUP BY _batch, page",
        )
        .await,
    );
    assert!(e.contains("was removed"), "{e}");
    // A stateless job may change anything but its source.
    let a = job(3, "SELECT page FROM clicks").await;
    job(5, "SELECT upper(page) FROM clicks WHERE user_id > 3")
        .await
        .check_compatible(&a)
        .unwrap();
    // Another seed (or path, or topic) is another source: the positions are not its own.
    let elsewhere = SOURCE.replacen("seed = '7'", "seed = '8'", 1);
    assert_ne!(elsewhere, SOURCE);
    let moved = CompiledJob::compile(
        &format!("{elsewhere}INSERT INTO out SELECT page FROM clicks;"),
        "j.sql",
    )
    .await
    .unwrap();
    let e = moved.check_compatible(&a).unwrap_err().to_string();
    assert!(
        e.contains("the source's option 'seed' changed from '7' to '8'"),
        "{e}"
    );
}

/// The generated rows' `ts` values, in ms, over every split.
async fn generated_times(job: &CompiledJob) -> Vec<i64> {
    use arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};
    let mut times = Vec::new();
    for split in splits() {
        for b in job.sources["clicks"].read(&split, 0).await.unwrap() {
            let ts = b.column_by_name("ts").unwrap();
            let ms = arrow::compute::cast(ts, &DataType::Timestamp(TimeUnit::Millisecond, None))
                .unwrap();
            let ms = ms.as_primitive::<TimestampMillisecondType>();
            times.extend(ms.iter().flatten());
        }
    }
    times
}

#[tokio::test]
async fn tumble_adds_each_rows_epoch_aligned_window() {
    let job = compile(
        "SELECT _batch, window_start, window_end, count(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '1' SECOND) GROUP BY _batch, window_start, window_end",
    )
    .await;
    let mut want: BTreeMap<i64, i64> = BTreeMap::new();
    for t in generated_times(&job).await {
        *want.entry(t.div_euclid(1_000) * 1_000).or_default() += 1;
    }
    assert!(want.len() > 1, "the rows span several windows: {want:?}");
    assert_eq!(counted_windows(run(&job, 0).await, 1_000), want);
    // The windowed table keeps its name, so qualified columns still resolve.
    compile("SELECT clicks.page, window_end FROM TUMBLE(clicks, ts, INTERVAL '1' MINUTE)").await;
}

#[tokio::test]
async fn tumble_with_the_wrong_arguments_is_refused_saying_how_to_call_it() {
    for (query, want) in [
        (
            "SELECT * FROM TUMBLE(clicks, ts)",
            "test.sql:5: TUMBLE takes (table, time_column, INTERVAL size)",
        ),
        (
            "SELECT * FROM TUMBLE(clicks, ts, 10)",
            "test.sql:5: TUMBLE's size must be an INTERVAL",
        ),
    ] {
        let e = refusal(query).await;
        assert!(e.starts_with(want), "{query}: {e}");
    }
}

/// The error planning `query` over SOURCE gives; it must be refused.
async fn refusal(query: &str) -> String {
    let sql = format!("SET partitions = 3;\n{SOURCE}INSERT INTO out {query};");
    match CompiledJob::compile(&sql, "test.sql").await {
        Ok(_) => panic!("planned: {query}"),
        Err(e) => e.to_string(),
    }
}

/// Window start (ms) -> rows, from per-batch output (_batch, window_start, window_end, n),
/// checking that every window is `[start, start + size_ms)`.
fn counted_windows(out: Vec<Vec<RecordBatch>>, size_ms: i64) -> BTreeMap<i64, i64> {
    use arrow::datatypes::TimestampNanosecondType;
    let mut got = BTreeMap::new();
    for b in out.into_iter().flatten() {
        let start = b.column(1).as_primitive::<TimestampNanosecondType>();
        let end = b.column(2).as_primitive::<TimestampNanosecondType>();
        let n = b.column(3).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let s = start.value(i) / 1_000_000;
            assert_eq!(
                end.value(i) / 1_000_000,
                s + size_ms,
                "[start, start + size)"
            );
            *got.entry(s).or_default() += n.value(i);
        }
    }
    got
}

/// Window start (ms) -> count, from a windowed job's output batches (window_start, n).
fn window_counts(out: Vec<Vec<RecordBatch>>) -> BTreeMap<i64, i64> {
    use arrow::datatypes::TimestampNanosecondType;
    let mut got = BTreeMap::new();
    for b in out.into_iter().flatten() {
        let start = b.column(0).as_primitive::<TimestampNanosecondType>();
        let n = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let prev = got.insert(start.value(i) / 1_000_000, n.value(i));
            assert!(prev.is_none(), "a window emitted twice in one batch");
        }
    }
    got
}

async fn windowed(mode: &str) -> CompiledJob {
    windowed_job(
        mode,
        "SELECT window_start, count(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '1' SECOND) GROUP BY window_start, window_end",
    )
    .await
}

/// `query` over SOURCE with a watermark on `ts` (no delay), in output mode `mode`.
async fn windowed_job(mode: &str, query: &str) -> CompiledJob {
    let source = SOURCE.replace("ts TIMESTAMP)", "ts TIMESTAMP, WATERMARK FOR ts AS ts)");
    let sql = format!(
        "SET partitions = 3;\nSET 'output_mode' = '{mode}';\n{source}INSERT INTO out {query};"
    );
    CompiledJob::compile(&sql, "test.sql").await.unwrap()
}

/// Rows per 1-second window (start in ms) of the generated rows `first..first + 10000`.
async fn windows_of(job: &CompiledJob, first: u64) -> BTreeMap<i64, i64> {
    use arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};
    let mut want = BTreeMap::new();
    for split in splits_from(first) {
        for b in job.sources["clicks"].read(&split, 0).await.unwrap() {
            let ts = b.column_by_name("ts").unwrap();
            let as_ms = DataType::Timestamp(TimeUnit::Millisecond, None);
            let ms = arrow::compute::cast(ts, &as_ms).unwrap();
            for t in ms
                .as_primitive::<TimestampMillisecondType>()
                .iter()
                .flatten()
            {
                *want.entry(t.div_euclid(1000) * 1000).or_insert(0) += 1;
            }
        }
    }
    want
}

/// Restoring each partition from its deltas gives as many rows as its state holds.
async fn assert_restores(job: &CompiledJob, deltas: &[Vec<Vec<RecordBatch>>], state: &[State]) {
    for (p, parts) in deltas.iter().enumerate() {
        let restored = job.restore_state(1, parts).await.unwrap();
        assert_eq!(restored.num_rows(), state[p].num_rows(), "partition {p}");
    }
}

fn at(watermark_ms: i64, id: u64) -> BatchInfo {
    BatchInfo {
        id,
        watermark_ms: Some(watermark_ms),
        ..Default::default()
    }
}

#[tokio::test]
async fn append_mode_emits_each_window_once_when_the_watermark_passes_it_and_drops_late_rows() {
    let job = windowed("append").await;
    let first = windows_of(&job, 0).await;
    let second = windows_of(&job, 10_000).await;
    let base = *first.keys().next().unwrap();
    let (mut state, mut deltas) = (Vec::new(), vec![Vec::new(); 3]);
    // Batch 0: no watermark yet, nothing closes.
    let (out, late) = run_batch(&job, 0.into(), &splits_from(0), &mut state, &mut deltas).await;
    assert_eq!((window_counts(out), late), (BTreeMap::new(), 0));
    // Batch 1: the watermark passes every window of batch 0, and none of batch 1's.
    let wm = *second.keys().next().unwrap();
    let (out, late) = run_batch(
        &job,
        at(wm, 1),
        &splits_from(10_000),
        &mut state,
        &mut deltas,
    )
    .await;
    let closed: BTreeMap<i64, i64> = first
        .iter()
        .filter(|(s, _)| **s + 1000 <= wm)
        .map(|(s, n)| (*s, *n))
        .collect();
    assert_eq!(window_counts(out), closed);
    assert_eq!(late, 0);
    assert!(
        closed.len() >= 9 && closed.keys().next() == Some(&base),
        "{closed:?}"
    );
    // Batch 2: rows for closed windows are late (dropped, counted); five more windows close.
    let wm2 = wm + 5_000;
    let (out, late) = run_batch(
        &job,
        at(wm2, 2),
        &splits_from(5_000),
        &mut state,
        &mut deltas,
    )
    .await;
    let closing: BTreeMap<i64, i64> = first
        .iter()
        .chain(second.iter())
        .filter(|(s, _)| **s + 1000 <= wm2 && **s + 1000 > wm)
        .fold(BTreeMap::new(), |mut m, (s, n)| {
            *m.entry(*s).or_insert(0) += n;
            m
        });
    assert_eq!(window_counts(out), closing);
    let late_want: i64 = windows_of(&job, 5_000)
        .await
        .iter()
        .filter(|(s, _)| **s + 1000 <= wm2)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(late as i64, late_want);
    assert!(late_want > 9_000, "{late_want}");
    // State keeps only the open windows; restoring from the deltas gives exactly that state.
    let held: usize = state.iter().map(State::num_rows).sum();
    let open = second.keys().filter(|s| **s + 1000 > wm2).count();
    assert_eq!(held, open);
    assert_restores(&job, &deltas, &state).await;
}

#[tokio::test]
async fn update_mode_emits_changed_windows_and_evicts_closed_ones() {
    let job = windowed("update").await;
    let first = windows_of(&job, 0).await;
    let (mut state, mut deltas) = (Vec::new(), vec![Vec::new(); 3]);
    let (out, _) = run_batch(&job, 0.into(), &splits_from(0), &mut state, &mut deltas).await;
    assert_eq!(window_counts(out), first, "every window the batch changed");
    let wm = *first.keys().last().unwrap();
    let (out, late) = run_batch(&job, at(wm, 1), &splits_from(0), &mut state, &mut deltas).await;
    // Only the last window is still open: its rows count again, the others were late.
    let last = first[&wm];
    assert_eq!(window_counts(out), BTreeMap::from([(wm, 2 * last)]));
    assert_eq!(late as i64, first.values().sum::<i64>() - last);
    let held: usize = state.iter().map(State::num_rows).sum();
    assert_eq!(held, 1, "closed windows are evicted");
}

#[tokio::test]
async fn append_without_a_window_or_a_watermark_is_refused_saying_what_to_add() {
    let source = SOURCE.replace("ts TIMESTAMP)", "ts TIMESTAMP, WATERMARK FOR ts AS ts)");
    let plain = format!(
        "SET 'output_mode' = 'append';\n{source}INSERT INTO out SELECT page, count(*) FROM clicks GROUP BY page;"
    );
    let Err(e) = CompiledJob::compile(&plain, "test.sql").await else {
        panic!("planned append without a window")
    };
    assert!(
        e.to_string().contains("group by the window of TUMBLE"),
        "{e}"
    );
    let unwatermarked = format!(
        "SET 'output_mode' = 'append';\n{SOURCE}INSERT INTO out SELECT window_start, count(*) FROM TUMBLE(clicks, ts, INTERVAL '1' SECOND) GROUP BY window_start, window_end;"
    );
    let Err(e) = CompiledJob::compile(&unwatermarked, "test.sql").await else {
        panic!("planned append without a watermark")
    };
    assert!(
        e.to_string()
            .contains("add WATERMARK FOR ts AS ts - INTERVAL"),
        "{e}"
    );
}

#[tokio::test]
async fn hop_puts_each_row_in_every_sliding_window_that_holds_it() {
    let job = compile(
        "SELECT _batch, window_start, window_end, count(*) AS n FROM HOP(clicks, ts, INTERVAL '1' SECOND, INTERVAL '3' SECOND) GROUP BY _batch, window_start, window_end",
    )
    .await;
    let mut want: BTreeMap<i64, i64> = BTreeMap::new();
    for t in generated_times(&job).await {
        let newest = t.div_euclid(1_000) * 1_000;
        for i in 0..3 {
            *want.entry(newest - i * 1_000).or_default() += 1;
        }
    }
    assert_eq!(counted_windows(run(&job, 0).await, 3_000), want);
    for (query, message) in [
        (
            "SELECT * FROM HOP(clicks, ts, INTERVAL '1' SECOND)",
            "HOP takes (table, time_column, INTERVAL slide, INTERVAL size)",
        ),
        (
            "SELECT * FROM HOP(clicks, ts, INTERVAL '2' SECOND, INTERVAL '3' SECOND)",
            "HOP's size (INTERVAL '3' SECOND) must be a multiple of its slide",
        ),
        (
            "SELECT * FROM HOP(clicks, ts, INTERVAL '0' SECOND, INTERVAL '3' SECOND)",
            "HOP's slide must be an INTERVAL of positive length",
        ),
    ] {
        let e = refusal(query).await;
        assert!(e.contains(message), "{query}: {e}");
    }
}

#[tokio::test]
async fn grouping_by_date_bin_is_a_tumbling_window() {
    let job = windowed_job("append", "SELECT date_bin(INTERVAL '1 second', ts) AS second, count(*) AS n FROM clicks GROUP BY date_bin(INTERVAL '1 second', ts)").await;
    let first = windows_of(&job, 0).await;
    let second = windows_of(&job, 10_000).await;
    let (mut state, mut deltas) = (Vec::new(), vec![Vec::new(); 3]);
    let (out, _) = run_batch(&job, 0.into(), &splits_from(0), &mut state, &mut deltas).await;
    assert_eq!(window_counts(out), BTreeMap::new(), "no watermark yet");
    // The key is the window's start: it closes a size after it.
    let wm = *second.keys().next().unwrap();
    let (out, late) = run_batch(
        &job,
        at(wm, 1),
        &splits_from(10_000),
        &mut state,
        &mut deltas,
    )
    .await;
    let closed: BTreeMap<i64, i64> = first.into_iter().filter(|(s, _)| *s + 1000 <= wm).collect();
    assert!(closed.len() >= 9, "{closed:?}");
    assert_eq!((window_counts(out), late), (closed, 0));
    // Rows of those windows again: all late.
    let (out, late) = run_batch(&job, at(wm, 2), &splits_from(0), &mut state, &mut deltas).await;
    assert!(window_counts(out).is_empty());
    assert!(late > 9_000, "{late}");
}

/// Hand-built `clicks` rows for one source task: (user_id, page, ts in ms).
async fn events(job: &CompiledJob, batch: u64, rows: &[(i64, &str, i64)]) -> TaskInput {
    use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
    use std::sync::Arc;
    let one = Rows { start: 0, end: 1 }.into();
    let schema = job.sources["clicks"].read(&one, batch).await.unwrap()[0].schema();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| {
            let built: ArrayRef = match f.name().as_str() {
                "user_id" => Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                "page" => Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                "ts" => Arc::new(TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| r.2),
                )),
                _ => Arc::new(Int64Array::from(vec![batch as i64; rows.len()])),
            };
            arrow::compute::cast(&built, f.data_type()).unwrap()
        })
        .collect();
    let rows = vec![RecordBatch::try_new(schema, columns).unwrap()];
    TaskInput::Split {
        table: "clicks".into(),
        rows,
    }
}

/// (user_id, session start s, session end s, n) rows of a session job's output.
fn sessions(out: Vec<Vec<RecordBatch>>) -> Vec<(i64, i64, i64, i64)> {
    use arrow::datatypes::TimestampNanosecondType;
    let mut got = Vec::new();
    for b in out.into_iter().flatten() {
        let user = b.column(0).as_primitive::<Int64Type>();
        let start = b.column(1).as_primitive::<TimestampNanosecondType>();
        let end = b.column(2).as_primitive::<TimestampNanosecondType>();
        let n = b.column(3).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let s = |ns: i64| ns / 1_000_000_000;
            got.push((
                user.value(i),
                s(start.value(i)),
                s(end.value(i)),
                n.value(i),
            ));
        }
    }
    got.sort();
    got
}

const SESSIONS: &str = "SELECT user_id, session_start, session_end, count(*) AS n FROM SESSION(clicks, ts, INTERVAL '10' SECOND) GROUP BY user_id, session_start, session_end";

#[tokio::test]
async fn session_windows_merge_per_key_and_close_when_the_watermark_passes_their_end() {
    let job = windowed_job("append", SESSIONS).await;
    let (mut state, mut deltas) = (Vec::new(), vec![Vec::new(); 3]);
    let held = |state: &Vec<State>| -> usize { state.iter().map(State::num_rows).sum() };
    let s = 1_000;
    // Batch 0, no watermark: user 1 has [0, 15) and [30, 40), user 2 has [0, 10).
    let input = vec![
        events(&job, 0, &[(1, "a", 0), (1, "a", 5 * s), (2, "a", 0)]).await,
        events(&job, 0, &[(1, "b", 30 * s)]).await,
    ];
    let (out, late) = run_inputs(&job, 0.into(), input, &mut state, &mut deltas).await;
    assert_eq!((sessions(out), late), (vec![], 0));
    assert_eq!(held(&state), 3);
    // Batch 1, watermark 10 s: user 1's 12 s extends [0, 15) to [0, 22), and 21 s bridges it
    // with [30, 40) into [0, 40). User 1's 3 s is at or before the watermark: late (it could
    // have reopened a session already emitted). User 2's [0, 10) closes.
    let input = vec![
        events(&job, 1, &[(1, "a", 12 * s), (2, "a", 25 * s)]).await,
        events(&job, 1, &[(1, "a", 21 * s), (1, "a", 3 * s)]).await,
    ];
    let (out, late) = run_inputs(&job, at(10 * s, 1), input, &mut state, &mut deltas).await;
    assert_eq!((sessions(out), late), (vec![(2, 0, 10, 1)], 1));
    assert_eq!(
        held(&state),
        2,
        "user 1's one session and user 2's [25, 35)"
    );
    // Batch 2 without input, watermark 45 s: both sessions close, state is empty.
    let input = vec![events(&job, 2, &[]).await];
    let (out, late) = run_inputs(&job, at(45 * s, 2), input, &mut state, &mut deltas).await;
    assert_eq!(
        (sessions(out), late),
        (vec![(1, 0, 40, 5), (2, 25, 35, 1)], 0)
    );
    assert_eq!(held(&state), 0);
    for parts in &deltas {
        let restored = job.restore_state(1, parts).await.unwrap();
        assert_eq!(restored.num_rows(), 0);
    }
}

#[tokio::test]
async fn session_windows_are_refused_in_update_mode_and_need_both_keys() {
    let e = refusal(SESSIONS).await;
    assert!(e.contains("SET 'output_mode' = 'append'"), "{e}");
    let e = refusal(
        "SELECT user_id, session_start, count(*) FROM SESSION(clicks, ts, INTERVAL '10' SECOND) GROUP BY user_id, session_start",
    )
    .await;
    assert!(
        e.contains("group by both session_start and session_end"),
        "{e}"
    );
    let e = refusal("SELECT * FROM SESSION(clicks, ts)").await;
    assert!(
        e.contains("SESSION takes (table, time_column, INTERVAL gap)"),
        "{e}"
    );
}

/// (ts in ms, user_id) of the generated rows `first..first + 10000`.
async fn generated_users(job: &CompiledJob, first: u64) -> Vec<(i64, i64)> {
    use arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};
    let mut rows = Vec::new();
    for split in splits_from(first) {
        for b in job.sources["clicks"].read(&split, 0).await.unwrap() {
            let as_ms = DataType::Timestamp(TimeUnit::Millisecond, None);
            let ts = arrow::compute::cast(b.column_by_name("ts").unwrap(), &as_ms).unwrap();
            let ts = ts.as_primitive::<TimestampMillisecondType>();
            let users = b.column_by_name("user_id").unwrap();
            let users = users.as_primitive::<Int64Type>();
            rows.extend((0..b.num_rows()).map(|i| (ts.value(i), users.value(i))));
        }
    }
    rows
}

#[tokio::test]
async fn count_distinct_in_a_window_counts_each_value_once_across_batches() {
    let job = compile(
        "SELECT window_start, count(DISTINCT user_id) AS users, count(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '1' SECOND) GROUP BY window_start, window_end",
    )
    .await;
    let (mut state, mut deltas) = (Vec::new(), vec![Vec::new(); 3]);
    run_batch(&job, 0.into(), &splits_from(0), &mut state, &mut deltas).await;
    // Batch 1 reads rows 5000.. again with new ones: the users it repeats count once.
    let (out, _) = run_batch(&job, 1.into(), &splits_from(5_000), &mut state, &mut deltas).await;
    let (before, now) = (
        generated_users(&job, 0).await,
        generated_users(&job, 5_000).await,
    );
    let changed: std::collections::BTreeSet<i64> =
        now.iter().map(|(t, _)| t.div_euclid(1000) * 1000).collect();
    let mut want: BTreeMap<i64, (std::collections::BTreeSet<i64>, i64)> = BTreeMap::new();
    for (t, user) in before.iter().chain(&now) {
        let w = want.entry(t.div_euclid(1000) * 1000).or_default();
        w.0.insert(*user);
        w.1 += 1;
    }
    let want: BTreeMap<i64, (i64, i64)> = want
        .into_iter()
        .filter(|(s, _)| changed.contains(s))
        .map(|(s, (users, n))| (s, (users.len() as i64, n)))
        .collect();
    let mut got = BTreeMap::new();
    for b in out.into_iter().flatten() {
        use arrow::datatypes::TimestampNanosecondType;
        let start = b.column(0).as_primitive::<TimestampNanosecondType>();
        let (users, n) = (
            b.column(1).as_primitive::<Int64Type>(),
            b.column(2).as_primitive::<Int64Type>(),
        );
        for i in 0..b.num_rows() {
            got.insert(start.value(i) / 1_000_000, (users.value(i), n.value(i)));
        }
    }
    assert!(
        want.values().any(|(users, n)| users < n),
        "users repeat in a window"
    );
    assert_eq!(got, want);
    // The state restored from the deltas gives the same counts on the next batch.
    assert_restores(&job, &deltas, &state).await;
    let e = refusal("SELECT page, count(DISTINCT user_id) FROM clicks GROUP BY page").await;
    assert!(
        e.contains("DISTINCT is supported as count(DISTINCT ...) in an event-time window"),
        "{e}"
    );
}

#[tokio::test]
async fn sliding_windows_over_out_of_order_input_continue_exactly_from_restored_state() {
    let job = windowed_job("append", "SELECT window_start, count(*) AS n FROM HOP(clicks, ts, INTERVAL '1' SECOND, INTERVAL '3' SECOND) GROUP BY window_start, window_end").await;
    // Out of order: rows 10000.. come before rows 5000..; watermarks as the driver would log.
    let firsts = [0, 10_000, 5_000, 20_000];
    let mut marks = vec![None];
    let mut max = i64::MIN;
    for first in &firsts[..3] {
        let times = generated_users(&job, *first).await;
        max = max.max(times.iter().map(|(t, _)| *t).max().unwrap());
        marks.push(Some(max));
    }
    let batch = |i: usize| BatchInfo {
        id: i as u64,
        watermark_ms: marks[i],
        ..Default::default()
    };
    let run_all = |restore_after: Option<usize>| {
        let job = &job;
        async move {
            let (mut state, mut deltas) = (Vec::new(), vec![Vec::new(); 3]);
            let mut outputs = Vec::new();
            for (i, first) in firsts.iter().enumerate() {
                let splits = splits_from(*first);
                let (out, late) = run_batch(job, batch(i), &splits, &mut state, &mut deltas).await;
                outputs.push((window_counts(out), late));
                if restore_after == Some(i) {
                    // As an executor that lost the partitions would: from the checkpoint.
                    for (p, parts) in deltas.iter().enumerate() {
                        state[p] = job.restore_state(1, parts).await.unwrap();
                    }
                }
            }
            outputs
        }
    };
    let straight = run_all(None).await;
    assert!(straight[2].1 > 0, "rows 5000.. are partly late");
    assert!(
        straight.iter().map(|(w, _)| w.len()).sum::<usize>() > 10,
        "{straight:?}"
    );
    for after in 0..3 {
        assert_eq!(
            run_all(Some(after)).await,
            straight,
            "restored after batch {after}"
        );
    }
}

#[tokio::test]
async fn a_long_run_over_sliding_windows_keeps_state_bounded() {
    let job = windowed_job("update", "SELECT window_start, user_id, count(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, user_id").await;
    let (mut state, mut deltas) = (Vec::new(), vec![Vec::new(); 3]);
    let users = 50;
    let mut emitted = 0;
    for b in 0..40i64 {
        // Batch b: every user once a second over [10b, 10b + 10) s; the watermark is the
        // last batch's latest event.
        let rows: Vec<(i64, &str, i64)> = (0..users)
            .flat_map(|u| (0..10).map(move |s| (u, "p", (b * 10 + s) * 1000)))
            .collect();
        let input = vec![events(&job, b as u64, &rows).await];
        let watermark_ms = (b > 0).then(|| (b * 10 - 1) * 1000);
        let batch = BatchInfo {
            id: b as u64,
            watermark_ms,
            ..Default::default()
        };
        let (out, late) = run_inputs(&job, batch, input, &mut state, &mut deltas).await;
        assert_eq!(late, 0);
        emitted += out.iter().flatten().map(|b| b.num_rows()).sum::<usize>();
        let held: usize = state.iter().map(State::num_rows).sum();
        // This batch's windows and the last one's, which ends just after the watermark.
        let bound = users as usize * if b == 0 { 1 } else { 2 };
        assert_eq!(held, bound, "batch {b}");
    }
    assert_eq!(
        emitted,
        40 * users as usize,
        "each batch updates its own windows"
    );
}
