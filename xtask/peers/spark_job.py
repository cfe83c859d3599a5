"""One workload of `cargo xtask bench --compare` on Spark Structured Streaming.

Usage: spark_job.py '<json spec>'. The spec names the workload, the input directory of jsonl
files, files per batch, shuffle partitions and a checkpoint directory; with "check_out" set the
results go there as jsonl instead of to the noop sink. Prints "READY" once the session is up
(the harness starts counting CPU there) and, at the end, one JSON line of measures.
"""

import json
import os
import sys
import time

from pyspark.sql import SparkSession, functions as F

SCHEMAS = {
    "events": "key BIGINT, page STRING, amount BIGINT",
    "bids": "auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, date_time BIGINT",
    "timed_bids": "auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING,"
    " date_time TIMESTAMP",
    "ads": "user_id BIGINT, page_id BIGINT, ad_id BIGINT, ad_type STRING, event_type STRING,"
    " event_time TIMESTAMP, ip_address STRING",
}

# The queries of compare/queries.rs in Spark's SQL, over the streaming view `src`; each with its
# output mode (update for running aggregations, append for the stateless ones).
QUERIES = {
    "running_count": (
        "update",
        "SELECT key, count(*) AS n, sum(amount) AS total FROM src GROUP BY key",
    ),
    "q0": ("append", "SELECT auction, bidder, price, channel, url, date_time FROM src"),
    "q1": ("append", "SELECT auction, bidder, 0.908 * price AS price, date_time FROM src"),
    "q2": ("append", "SELECT auction, price FROM src WHERE auction % 123 = 0"),
    "q17": (
        "update",
        """SELECT auction, date_format(timestamp_millis(date_time), 'yyyy-MM-dd') AS day,
  count(*) AS total_bids,
  count(*) FILTER (WHERE price < 10000) AS rank1_bids,
  count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
  count(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
  min(price) AS min_price, max(price) AS max_price, avg(price) AS avg_price,
  sum(price) AS sum_price
FROM src GROUP BY auction, date_format(timestamp_millis(date_time), 'yyyy-MM-dd')""",
    ),
    # The windows' maxima joined back: on window_time(window), the event-time column a windowed
    # aggregation leaves, so the watermark bounds the join's state; window_end states it exactly.
    "q5": (
        "append",
        """WITH counts AS (
  SELECT auction, num, window.start AS window_start, window.end AS window_end,
    window_time(window) AS wt
  FROM (SELECT auction, window, count(*) AS num FROM src
        GROUP BY auction, window(date_time, '10 seconds', '2 seconds'))),
maxes AS (
  SELECT window_start, window_end, wt, max(num) AS maxn FROM counts
  GROUP BY window_start, window_end, wt)
SELECT a.auction, a.num, a.window_end FROM counts a JOIN maxes m
ON a.wt = m.wt AND a.window_start = m.window_start AND a.window_end = m.window_end
  AND a.num >= m.maxn""",
    ),
    "q7": (
        "append",
        """SELECT b.auction, b.price, b.bidder, b.date_time, m.window_end
FROM src b JOIN (
  SELECT maxprice, window.end AS window_end, window_time(window) AS wt
  FROM (SELECT window, max(price) AS maxprice FROM src GROUP BY window(date_time, '10 seconds'))) m
ON b.price = m.maxprice
  AND b.date_time BETWEEN m.window_end - INTERVAL 10 SECONDS AND m.window_end
  AND b.date_time BETWEEN m.wt - INTERVAL 11 SECONDS AND m.wt + INTERVAL 1 SECOND""",
    ),
    "windowed": (
        "append",
        """SELECT window.start AS window_start, page_id, count(*) AS n
FROM src GROUP BY window(event_time, '10 seconds'), page_id""",
    ),
    "yahoo": (
        "append",
        """SELECT window.start AS window_start, c.campaign_id, count(*) AS views
FROM src e JOIN campaigns c ON e.ad_id = c.ad_id WHERE e.event_type = 'view'
GROUP BY window(e.event_time, '10 seconds'), c.campaign_id""",
    ),
}


ROCKSDB = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"


def session(spec, master="local[2]"):
    builder = SparkSession.builder
    if spec.get("large_state"):
        builder = builder.config("spark.sql.streaming.stateStore.providerClass", ROCKSDB)
    return (
        builder.master(master)
        .appName("sluice-compare")
        .config("spark.sql.shuffle.partitions", str(spec["partitions"]))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.streaming.numRecentProgressUpdates", "100000")
        .config("spark.driver.memory", spec.get("memory", "4g"))
        .getOrCreate()
    )


def source(spark, spec):
    rows = (
        spark.readStream.schema(SCHEMAS[spec["input_kind"]])
        .option("maxFilesPerTrigger", spec["files_per_batch"])
        .json(spec["input"])
    )
    if spec["input_kind"] == "timed_bids":
        return rows.withWatermark("date_time", "5 seconds")
    if spec["input_kind"] != "ads":
        return rows
    # The ad events' watermark (Sluice's WATERMARK FOR), and their static table of campaigns.
    campaigns = spark.read.schema("ad_id BIGINT, campaign_id BIGINT").json(spec["campaigns"])
    campaigns.createOrReplaceTempView("campaigns")
    return rows.withWatermark("event_time", "5 seconds")


def sql_query(spark, spec):
    """One of QUERIES over the input, to the noop sink or, for a check, to jsonl files."""
    mode, query = QUERIES[spec["workload"]]
    source(spark, spec).createOrReplaceTempView("src")
    writer = spark.sql(query).writeStream.outputMode(mode)
    if spec.get("check_out"):
        out = spec["check_out"]

        def write(df, batch_id):
            df.write.mode("overwrite").json(f"{out}/batch={batch_id}")

        return writer.foreachBatch(write)
    return writer.format("noop")


def batch_count(spark, spec):
    """count(*) and sum(amount) per page within each batch (Sluice's GROUP BY _batch)."""
    out = spec.get("check_out")

    def write(df, batch_id):
        per_batch = df.groupBy("page").agg(
            F.count("*").alias("n"), F.sum("amount").alias("total")
        )
        if out:
            per_batch.write.mode("overwrite").json(f"{out}/batch={batch_id}")
        else:
            per_batch.write.format("noop").mode("overwrite").save()

    return source(spark, spec).writeStream.foreachBatch(write)


def latency(spark, spec):
    """The latency floor: Spark's rate source at Sluice's rate, a trigger every
    `trigger_ms`, and per batch the count, sum and max by page of the rows that pass a filter
    (the query of Sluice's small-batch bench), until `batches` batches after `warm_up` ones.
    Prints each measured batch's duration, from its trigger to its commit log entry."""
    rows = (
        spark.readStream.format("rate")
        .option("rowsPerSecond", spec["rows_per_second"])
        .option("numPartitions", 4)
        .load()
        .selectExpr(
            "value % 100000 AS user_id",
            "format_string('p%02d', value % 20) AS page",
            "CAST(value % 500 AS DOUBLE) AS amount",
        )
    )

    def write(df, batch_id):
        (
            df.where("user_id % 10 <> 0")
            .groupBy("page")
            .agg(F.count("*"), F.sum("amount"), F.max("user_id"))
            .write.format("noop")
            .mode("overwrite")
            .save()
        )

    print("READY", flush=True)
    query = (
        rows.writeStream.foreachBatch(write)
        .option("checkpointLocation", spec["checkpoint"])
        .trigger(processingTime=f"{spec['trigger_ms']} milliseconds")
        .start()
    )
    wanted = spec["warm_up"] + spec["batches"]
    # One progress object per poll: the whole recentProgress, converted under the lock the
    # query takes to post a batch's progress, slowed batches to ~1 s once it held hundreds.
    while (query.lastProgress or {"batchId": -1})["batchId"] + 1 < wanted:
        time.sleep(0.2)
    query.stop()
    progress = query.recentProgress[spec["warm_up"] : wanted]
    print(
        json.dumps(
            {
                "rows": sum(p["numInputRows"] for p in progress),
                "batches": len(progress),
                "wall_ms": 0,
                "batch_ms": [p["batchDuration"] for p in progress],
            }
        ),
        flush=True,
    )


def start_running_count(spark, spec):
    """The running count to the noop sink, a trigger every 100 ms, on the spec's checkpoint
    (the recovery workloads); prints "READY" as it starts."""
    mode, query = QUERIES["running_count"]
    source(spark, spec).createOrReplaceTempView("src")
    print("READY", flush=True)
    return (
        spark.sql(query)
        .writeStream.outputMode(mode)
        .format("noop")
        .option("checkpointLocation", spec["checkpoint"])
        .trigger(processingTime="100 milliseconds")
        .start()
    )


def restart(spark, spec):
    """The restart workload: the running count over a directory that stays watched, a
    trigger every 100 ms; prints "COMMITTED <rows>" once batches holding `wait_rows` rows have
    committed (their progress is posted after the commit log entry), then runs on until the
    harness kills the process. Started again on the same checkpoint, it resumes from it."""
    q = start_running_count(spark, spec)
    counted, rows = set(), 0
    while rows < spec["wait_rows"]:
        for p in q.recentProgress:
            if p["batchId"] not in counted and p["numInputRows"] > 0:
                counted.add(p["batchId"])
                rows += p["numInputRows"]
        time.sleep(0.01)
    print(f"COMMITTED {rows}", flush=True)
    q.awaitTermination()


def executor_pids():
    """The executor JVMs this machine runs (local-cluster mode starts them as processes)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"CoarseGrainedExecutorBackend" in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return sorted(pids)


def executor_kill(spec):
    """The executor-kill workload: Spark's local-cluster mode (a master, a worker and two
    executor JVMs of one core each), the running count over the input one file per batch;
    after `kill_after` batches, `kill_delay_ms` into the next one, one executor is SIGKILLed.
    Prints one JSON line: the time from the kill to the commit of the batch it hit, and the
    durations of the batches before it. The state store is the one the restart workload uses
    for the same keys."""
    spark = session(spec, master="local-cluster[2,1,2048]")
    spark.sparkContext.setLogLevel("ERROR")
    q = start_running_count(spark, spec)

    def done():
        return [p for p in q.recentProgress if p["numInputRows"] > 0]

    while len(done()) < spec["kill_after"]:
        time.sleep(0.01)
    time.sleep(spec["kill_delay_ms"] / 1000)
    victim = executor_pids()[0]
    os.kill(victim, 9)
    killed_ms = time.time() * 1000
    while len(done()) <= spec["kill_after"]:
        time.sleep(0.01)
    before = done()[: spec["kill_after"]]
    hit = done()[spec["kill_after"]]
    committed_ms = time_ms(hit["timestamp"]) + hit["batchDuration"]
    print(
        json.dumps(
            {
                "kill_to_commit_ms": int(committed_ms - killed_ms),
                "batch_ms": [p["batchDuration"] for p in before],
                "hit_batch_ms": hit["batchDuration"],
                "hit_started_before_kill": time_ms(hit["timestamp"]) < killed_ms,
            }
        ),
        flush=True,
    )
    q.stop()
    spark.stop()


def main():
    spec = json.loads(sys.argv[1])
    # Spark binds to the machine's first address otherwise; everything here stays on loopback.
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    if spec["workload"] == "executor_kill":
        executor_kill(spec)
        return
    spark = session(spec)
    spark.sparkContext.setLogLevel("ERROR")
    if spec["workload"] == "latency":
        latency(spark, spec)
        spark.stop()
        return
    if spec["workload"] == "restart":
        restart(spark, spec)
        return
    if spec["workload"] == "batch_count":
        writer = batch_count(spark, spec)
    else:
        writer = sql_query(spark, spec)
    print("READY", flush=True)
    started = time.time()
    query = (
        writer.option("checkpointLocation", spec["checkpoint"])
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    ended = time.time()
    progress = [p for p in query.recentProgress if p["numInputRows"] > 0]
    rows = sum(p["numInputRows"] for p in progress)
    batch_ms = [p["batchDuration"] for p in progress]
    # From the first batch's trigger to the last batch's end, as for Sluice.
    first = time_ms(progress[0]["timestamp"]) if progress else started * 1000
    last = (time_ms(progress[-1]["timestamp"]) + batch_ms[-1]) if progress else ended * 1000
    print(
        json.dumps(
            {
                "rows": rows,
                "batches": len(progress),
                "wall_ms": int(last - first),
                "query_ms": int((ended - started) * 1000),
                "batch_ms": batch_ms,
            }
        ),
        flush=True,
    )
    spark.stop()


def time_ms(iso):
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


if __name__ == "__main__":
    main()
