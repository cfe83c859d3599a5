//! Event-time declarations: `WATERMARK FOR col AS col - INTERVAL ...` in a table's column list,
//! and the errors (file, line and column) for each one that cannot work.

use sluice_core::watermark::{EventTime, WatermarkPolicy};
use sluice_sql::CompiledJob;

async fn compile(columns: &str, extra: &str) -> Result<CompiledJob, String> {
    let sql = format!(
        "{extra}CREATE TABLE clicks ({columns})
  WITH (connector = 'files', path = 'file:///nonexistent/in', format = 'jsonl');
CREATE TABLE out WITH (connector = 'blackhole');
INSERT INTO out SELECT user_id FROM clicks;"
    );
    CompiledJob::compile(&sql, "job.sql")
        .await
        .map_err(|e| e.to_string())
}

fn delay(ms: u64) -> EventTime {
    EventTime {
        column: "ts".into(),
        delay_ms: ms,
    }
}

#[tokio::test]
async fn a_watermark_declares_the_event_time_column_and_its_delay() {
    for (clause, ms) in [
        ("WATERMARK FOR ts AS ts - INTERVAL '10' SECOND", 10_000),
        ("watermark for ts as ts - interval '1.5 minutes'", 90_000),
        ("WATERMARK FOR ts AS ts - INTERVAL '250' MILLISECONDS", 250),
        ("WATERMARK FOR ts AS ts", 0),
    ] {
        let job = compile(&format!("user_id BIGINT, ts TIMESTAMP, {clause}"), "")
            .await
            .unwrap_or_else(|e| panic!("{clause}: {e}"));
        assert_eq!(job.event_times["clicks"], delay(ms), "{clause}");
    }
    // Before the columns it names is fine too; a table without one has no event time.
    let job = compile(
        "WATERMARK FOR ts AS ts - INTERVAL '2' MINUTE, user_id BIGINT, ts TIMESTAMP",
        "SET 'watermark.policy' = 'max';\n",
    )
    .await
    .unwrap();
    assert_eq!(job.event_times["clicks"], delay(120_000));
    assert_eq!(job.settings.watermark_policy, WatermarkPolicy::Max);
    let plain = compile("user_id BIGINT, ts TIMESTAMP", "").await.unwrap();
    assert!(plain.event_times.is_empty());
}

#[tokio::test]
async fn a_kafka_table_may_use_the_record_timestamp() {
    let sql = "CREATE TABLE events (user_id BIGINT, WATERMARK FOR _timestamp AS _timestamp - INTERVAL '5' SECOND)
  WITH (connector = 'kafka', 'bootstrap.servers' = '127.0.0.1:1', topic = 't');
CREATE TABLE out WITH (connector = 'blackhole');
INSERT INTO out SELECT user_id FROM events;";
    let job = CompiledJob::compile(sql, "job.sql").await.unwrap();
    let et = &job.event_times["events"];
    assert_eq!((et.column.as_str(), et.delay_ms), ("_timestamp", 5_000));
    let bad = sql.replace("FOR _timestamp AS _timestamp", "FOR _stamp AS _stamp");
    let Err(err) = CompiledJob::compile(&bad, "job.sql").await else {
        panic!("planned: {bad}")
    };
    let err = err.to_string();
    assert!(
        err.starts_with(
            "job.sql:1:52: WATERMARK FOR _stamp: table 'events' has no column '_stamp'"
        ) && err.contains("_timestamp"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_watermarks_are_refused_naming_file_line_and_column() {
    let cases = [
        (
            "user_id BIGINT, ts TIMESTAMP, WATERMARK FOR tz AS tz - INTERVAL '1' SECOND",
            "job.sql:1:66: WATERMARK FOR tz: table 'clicks' has no column 'tz' (its columns: user_id, ts)",
        ),
        (
            "user_id BIGINT, ts TEXT, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND",
            "job.sql:1:61: WATERMARK FOR ts: column 'ts' of table 'clicks' is Utf8, not a TIMESTAMP",
        ),
        (
            "user_id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '-5' SECOND",
            "job.sql:1:77: the watermark's delay is negative",
        ),
        (
            "user_id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts + INTERVAL '5' SECOND",
            "job.sql:1:77: the watermark's delay is negative",
        ),
        (
            "user_id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts, WATERMARK FOR ts AS ts",
            "job.sql:1:76: table 'clicks' declares a second WATERMARK",
        ),
        (
            "user_id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' FORTNIGHT",
            "job.sql:1:77: cannot read the interval '5' fortnight",
        ),
        (
            "user_id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS user_id",
            "job.sql:1:72: WATERMARK FOR ts AS ... must be 'ts' or 'ts - INTERVAL ...'",
        ),
    ];
    for (columns, want) in cases {
        let Err(err) = compile(columns, "").await else {
            panic!("planned: {columns}")
        };
        assert!(
            err.starts_with(want),
            "{columns}\n got: {err}\nwant: {want}"
        );
    }
    let Err(err) = compile("ts TIMESTAMP", "SET 'watermark.policy' = 'median';\n").await else {
        panic!("planned with a bad policy")
    };
    assert!(
        err.contains("watermark.policy") && err.contains("'min' or 'max'"),
        "{err}"
    );
}

#[tokio::test]
async fn a_resubmission_cannot_change_the_watermark_policy() {
    let columns = "user_id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts";
    let before = compile(columns, "").await.unwrap();
    let same = compile(columns, "SET 'watermark.policy' = 'min';\n")
        .await
        .unwrap();
    same.check_compatible(&before).unwrap();
    let changed = compile(columns, "SET 'watermark.policy' = 'max';\n")
        .await
        .unwrap();
    let err = changed.check_compatible(&before).unwrap_err().to_string();
    assert!(
        err.contains("'watermark.policy' changed from 'min' to 'max'"),
        "{err}"
    );
}
