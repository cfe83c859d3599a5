"""One workload of `cargo xtask bench --compare` on Flink (PyFlink's local mini-cluster).

Usage: flink_job.py '<json spec>', as spark_job.py. Parallelism 2, a checkpoint every second
on local disk, mini-batch and two-phase aggregation on, blackhole sink; with "check_out" set the
result's checksum is computed by Flink and written there as checksum.json. Prints "READY" once the
environment is up (after the empty job, for a timed run) and, at the end, one JSON line of
measures.
"""

import json
import os
import sys
import time

from pyflink.common import RowKind
from pyflink.table import EnvironmentSettings, TableEnvironment

SOURCE = """CREATE TABLE {name} (key BIGINT, page STRING, amount BIGINT)
  WITH ('connector' = 'filesystem', 'path' = 'file://{input}', 'format' = 'json')"""

QUERIES = {
    "running_count": "SELECT key, COUNT(*) AS n, SUM(amount) AS total FROM src GROUP BY key",
}


def environment(spec):
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    settings = {
        "parallelism.default": "2",
        "execution.checkpointing.interval": "1s",
        "execution.checkpointing.dir": "file://" + spec["checkpoint"],
        "table.exec.mini-batch.enabled": "true",
        "table.exec.mini-batch.allow-latency": "1s",
        "table.exec.mini-batch.size": "5000",
        "table.optimizer.agg-phase-strategy": "TWO_PHASE",
    }
    for key, value in settings.items():
        conf.set(key, value)
    env.execute_sql(SOURCE.format(name="src", input=os.path.abspath(spec["input"])))
    empty = spec["checkpoint"] + "-empty-input"
    os.makedirs(empty, exist_ok=True)
    env.execute_sql(SOURCE.format(name="src_empty", input=empty))
    return env


def timed(env, query):
    """The job's wall time less that of the same job over no input (its deployment), both
    after a first empty job has warmed the JVM."""
    env.execute_sql(
        "CREATE TABLE sink (key BIGINT, n BIGINT, total BIGINT) WITH ('connector' = 'blackhole')"
    )
    empty_job = "INSERT INTO sink " + query.replace("FROM src", "FROM src_empty")
    # The first job in the JVM loads the planner's classes: warm up once, then measure.
    env.execute_sql(empty_job).wait()
    started = time.time()
    env.execute_sql(empty_job).wait()
    deployment = time.time() - started
    print("READY", flush=True)
    started = time.time()
    env.execute_sql("INSERT INTO sink " + query).wait()
    return int((time.time() - started - deployment) * 1000), int(deployment * 1000)


# The checksum of the harness (compare/checksum.rs), computed by Flink over its own result:
# folding a changelog of millions of updates in Python would take minutes.
CHECKSUM = """SELECT COUNT(*) AS c, SUM(n) AS n, SUM(total) AS total,
  SUM(n * MOD(key * 2654435761, 65521)) AS weighted FROM ({query})"""


def check(env, query, out):
    """The final value of the checksum row over the query's changelog."""
    last = None
    with env.execute_sql(CHECKSUM.format(query=query)).collect() as rows:
        for row in rows:
            if row.get_row_kind() in (RowKind.INSERT, RowKind.UPDATE_AFTER):
                last = row
    c, n, total, weighted = last if last is not None else (0, 0, 0, 0)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "checksum.json"), "w") as f:
        json.dump({"rows": c, "n": n, "total": total, "weighted": weighted}, f)


def main():
    spec = json.loads(sys.argv[1])
    query = QUERIES[spec["workload"]]
    env = environment(spec)
    if spec.get("check_out"):
        print("READY", flush=True)
        check(env, query, spec["check_out"])
        wall_ms, deployment_ms = 0, 0
    else:
        wall_ms, deployment_ms = timed(env, query)
    # Flink reads the bounded files as one stream: no batches. The blackhole sink counts
    # nothing, so the rows are the input's; the check run shows they were all read.
    result = {"rows": spec["rows"], "batches": 0, "wall_ms": wall_ms, "deployment_ms": deployment_ms}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
