"""One workload of `cargo xtask bench --compare` on Flink (PyFlink's local mini-cluster).

Usage: flink_job.py '<json spec>', as spark_job.py. Parallelism 2, a checkpoint every second
on local disk, mini-batch and two-phase aggregation on, blackhole sink; with "check_out" set the
changelog is collected and the final table written there as jsonl. Prints "READY" once the
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
    env.execute_sql(SOURCE.format(name="empty", input=empty))
    return env


def timed(env, query):
    """The job's wall time less that of the same job over no input: its deployment."""
    env.execute_sql(
        "CREATE TABLE sink (key BIGINT, n BIGINT, total BIGINT) WITH ('connector' = 'blackhole')"
    )
    started = time.time()
    env.execute_sql("INSERT INTO sink " + query.replace("FROM src", "FROM empty")).wait()
    deployment = time.time() - started
    print("READY", flush=True)
    started = time.time()
    env.execute_sql("INSERT INTO sink " + query).wait()
    return int((time.time() - started - deployment) * 1000), int(deployment * 1000)


def check(env, query, out):
    """The changelog folded into the final table: what a downstream upsert sink would hold."""
    table = {}
    with env.execute_sql(query).collect() as rows:
        for row in rows:
            kind = row.get_row_kind()
            if kind in (RowKind.INSERT, RowKind.UPDATE_AFTER):
                table[row[0]] = (row[1], row[2])
            else:
                table.pop(row[0], None)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "final.jsonl"), "w") as f:
        for key, (n, total) in table.items():
            f.write(json.dumps({"key": key, "n": n, "total": total}) + "\n")


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
