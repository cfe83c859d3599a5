//! Stream–static joins: how they are planned (the static side is a broadcast edge of the
//! stream's stage, never a cut), which joins are refused and why, and a task's output.

use arrow::array::{AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use sluice_connectors::connectors::datagen::Rows;
use sluice_core::{SourceSplit, StageInput};
use sluice_sql::{CompiledJob, StageOutputData, Statics, TaskInput};
use std::collections::BTreeMap;
use std::sync::Arc;

const TABLES: &str = "CREATE TABLE clicks (user_id BIGINT, page TEXT)
  WITH (connector = 'datagen', seed = '7', 'fields.page.values' = 'home,cart,search', fields.user_id.min = '1', fields.user_id.max = '9');
CREATE TABLE views (user_id BIGINT, page TEXT) WITH (connector = 'datagen', seed = '8');
CREATE TABLE pages (page TEXT, title TEXT)
  WITH (connector = 'files', path = 'file:///nonexistent/pages', format = 'jsonl', static = 'true');
CREATE TABLE out WITH (connector = 'blackhole');
";

async fn compile(query: &str) -> Result<CompiledJob, String> {
    let sql = format!("SET partitions = 2;\n{TABLES}INSERT INTO out {query};");
    CompiledJob::compile(&sql, "job.sql")
        .await
        .map_err(|e| e.to_string())
}

async fn refused(query: &str) -> String {
    match compile(query).await {
        Ok(_) => panic!("planned: {query}"),
        Err(e) => e,
    }
}

fn pages() -> Statics {
    let schema = Arc::new(Schema::new(vec![
        Field::new("page", DataType::Utf8, true),
        Field::new("title", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["home", "cart"])),
            Arc::new(StringArray::from(vec!["Home", "Cart"])),
        ],
    )
    .unwrap();
    BTreeMap::from([("pages".to_string(), Arc::new(vec![batch]))])
}

async fn sink_rows(job: &CompiledJob, statics: &Statics) -> Vec<RecordBatch> {
    let split = SourceSplit::from(Rows { start: 0, end: 300 });
    let rows = job.sources["clicks"].read(&split, 0).await.unwrap();
    let input = TaskInput::Split {
        table: "clicks".into(),
        rows,
    };
    match job
        .run_task(0, 0, input, statics, &sluice_sql::State::default())
        .await
        .unwrap()
        .0
    {
        StageOutputData::Sink { batches, .. } => batches,
        StageOutputData::Map { .. } => panic!("one stage"),
    }
}

fn count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

#[tokio::test]
async fn an_inner_join_stays_in_the_streams_stage_with_a_broadcast_edge() {
    let job = compile("SELECT c.user_id, p.title FROM clicks c JOIN pages p ON c.page = p.page")
        .await
        .unwrap();
    let specs = job.stage_specs();
    assert_eq!(specs.len(), 1, "no shuffle for the join: {specs:?}");
    assert_eq!(
        specs[0].inputs,
        vec![
            StageInput::Source {
                table: "clicks".into()
            },
            StageInput::Broadcast {
                table: "pages".into()
            },
        ]
    );
    assert!(job.statics.contains_key("pages") && !job.sources.contains_key("pages"));
    let out = sink_rows(&job, &pages()).await;
    // Only home and cart have a title: search rows drop out of the inner join.
    let split = SourceSplit::from(Rows { start: 0, end: 300 });
    let mut want = 0;
    for b in job.sources["clicks"].read(&split, 0).await.unwrap() {
        want += b
            .column(1)
            .as_string::<i32>()
            .iter()
            .filter(|p| matches!(p, Some("home" | "cart")))
            .count();
    }
    assert!(want > 0 && want < 300);
    assert_eq!(count(&out), want);
    for b in &out {
        assert!(b.column(1).as_string::<i32>().iter().all(|t| t.is_some()));
    }
}

#[tokio::test]
async fn a_left_join_keeps_every_stream_row_and_a_running_aggregate_reads_it() {
    let job =
        compile("SELECT c.user_id, p.title FROM clicks c LEFT JOIN pages p ON c.page = p.page")
            .await
            .unwrap();
    let out = sink_rows(&job, &pages()).await;
    assert_eq!(count(&out), 300, "every click, matched or not");
    let nulls: usize = out.iter().map(|b| b.column(1).null_count()).sum();
    assert!(nulls > 0, "search has no title");
    // The join runs in the map stage; the running aggregate after the shuffle joins nothing.
    let job = compile(
        "SELECT p.title, count(*) FROM clicks c JOIN pages p ON c.page = p.page GROUP BY p.title",
    )
    .await
    .unwrap();
    let specs = job.stage_specs();
    assert!(specs[0].broadcasts().eq(["pages"]), "{specs:?}");
    assert!(specs[1].stateful && specs[1].broadcasts().next().is_none());
}

#[tokio::test]
async fn a_join_after_a_per_batch_aggregation_broadcasts_to_the_upper_stage() {
    let job = compile(
        "SELECT x.page, x.n, p.title FROM (SELECT _batch, page, count(*) AS n FROM clicks GROUP BY _batch, page) x JOIN pages p ON x.page = p.page",
    )
    .await
    .unwrap();
    let specs = job.stage_specs();
    assert_eq!(specs.len(), 2);
    assert!(specs[0].broadcasts().next().is_none(), "{specs:?}");
    assert!(specs[1].broadcasts().eq(["pages"]), "{specs:?}");
}

#[tokio::test]
async fn joins_that_are_not_per_batch_are_refused_saying_which_are_supported() {
    let supported = "a stream joins a static table with an inner join, or a left outer join with the stream on the left";
    for (query, what) in [
        (
            "SELECT p.title, c.user_id FROM pages p LEFT JOIN clicks c ON c.page = p.page",
            "a left join of static table and stream is not supported",
        ),
        (
            "SELECT c.user_id, p.title FROM clicks c FULL JOIN pages p ON c.page = p.page",
            "a full join of stream and static table is not supported",
        ),
        (
            "SELECT c.user_id, p.title FROM clicks c RIGHT JOIN pages p ON c.page = p.page",
            "a right join of stream and static table is not supported",
        ),
    ] {
        let e = refused(query).await;
        assert!(e.contains(what) && e.contains(supported), "{query}: {e}");
        assert!(e.starts_with("job.sql:"), "names the file and line: {e}");
    }
    let e = refused("SELECT c.user_id FROM clicks c JOIN views v ON c.user_id = v.user_id").await;
    assert!(
        e.contains("a join of two streams needs a time bound"),
        "{e}"
    );
    let e = refused("SELECT page, title FROM pages").await;
    assert!(
        e.contains("reads only static tables (pages); join them to a streaming source"),
        "{e}"
    );
    let e = refused("SELECT page FROM clicks UNION ALL SELECT page FROM pages").await;
    assert!(
        e.contains("static table 'pages' is read on its own here"),
        "{e}"
    );
}

#[tokio::test]
async fn only_a_files_table_can_be_static() {
    let sql = "CREATE TABLE d (k BIGINT) WITH (connector = 'datagen', static = 'true');
CREATE TABLE s (k BIGINT) WITH (connector = 'datagen');
CREATE TABLE out WITH (connector = 'blackhole');
INSERT INTO out SELECT s.k FROM s JOIN d ON s.k = d.k;";
    let e = CompiledJob::compile(sql, "job.sql")
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("table 'd'") && e.contains("unknown option 'static'"),
        "{e}"
    );
}
