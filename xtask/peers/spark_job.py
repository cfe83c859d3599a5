"""One workload of `cargo xtask bench --compare` on Spark Structured Streaming.

Usage: spark_job.py '<json spec>'. The spec names the workload, the input directory of jsonl
files, files per batch, shuffle partitions and a checkpoint directory; with "check_out" set the
results go there as jsonl instead of to the noop sink. Prints "READY" once the session is up
(the harness starts counting CPU there) and, at the end, one JSON line of measures.
"""

import json
import sys
import time

from pyspark.sql import SparkSession, functions as F

SCHEMA = "key BIGINT, page STRING, amount BIGINT"


def session(spec):
    return (
        SparkSession.builder.master("local[2]")
        .appName("sluice-compare")
        .config("spark.sql.shuffle.partitions", str(spec["partitions"]))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.streaming.numRecentProgressUpdates", "100000")
        .config("spark.driver.memory", spec.get("memory", "4g"))
        .getOrCreate()
    )


def source(spark, spec):
    return (
        spark.readStream.schema(SCHEMA)
        .option("maxFilesPerTrigger", spec["files_per_batch"])
        .json(spec["input"])
    )


def running_count(spark, spec):
    """count(*) and sum(amount) per key, kept across batches, update mode."""
    counts = source(spark, spec).groupBy("key").agg(
        F.count("*").alias("n"), F.sum("amount").alias("total")
    )
    writer = counts.writeStream.outputMode("update")
    if spec.get("check_out"):
        out = spec["check_out"]

        def write(df, batch_id):
            df.withColumn("batch", F.lit(batch_id)).write.mode("append").json(out)

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
            per_batch.withColumn("batch", F.lit(batch_id)).write.mode("append").json(out)
        else:
            per_batch.write.format("noop").mode("overwrite").save()

    return source(spark, spec).writeStream.foreachBatch(write)


WORKLOADS = {"running_count": running_count, "batch_count": batch_count}


def main():
    spec = json.loads(sys.argv[1])
    spark = session(spec)
    spark.sparkContext.setLogLevel("ERROR")
    writer = WORKLOADS[spec["workload"]](spark, spec)
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
