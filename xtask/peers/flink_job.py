"""One workload of `cargo xtask bench --compare` on Flink (PyFlink's local mini-cluster).

Usage: flink_job.py '<json spec>', as spark_job.py. Parallelism 2, a checkpoint every second
on local disk, mini-batch and two-phase aggregation on, blackhole sink; with "check_out" set the
result's checksum is computed by Flink and written there as checksum.json. Prints "READY" once the
environment is up (after the empty job, for a timed run) and, at the end, one JSON line of
measures.
"""

import glob
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

from pyflink.common import RowKind
from pyflink.table import EnvironmentSettings, TableEnvironment

SOURCE = """CREATE TABLE {name} ({columns})
  WITH ('connector' = 'filesystem', 'path' = 'file://{input}', 'format' = 'json',
        'json.timestamp-format.standard' = 'ISO-8601'{extra})"""

COLUMNS = {
    "events": "key BIGINT, page STRING, amount BIGINT",
    "bids": "auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, date_time BIGINT",
    "timed_bids": "auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING,"
    " date_time TIMESTAMP(3), WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND",
    "ads": "user_id BIGINT, page_id BIGINT, ad_id BIGINT, ad_type STRING, event_type STRING,"
    " event_time TIMESTAMP(3), ip_address STRING,"
    " WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND",
}

WINDOW = "TABLE(TUMBLE(TABLE src, DESCRIPTOR(event_time), INTERVAL '10' SECOND))"
HOP = "TABLE(HOP(TABLE src, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))"

# The queries of compare/queries.rs in Flink's SQL, over `src`, with their sinks' columns.
QUERIES = {
    "running_count": (
        "key BIGINT, n BIGINT, total BIGINT",
        "SELECT key, COUNT(*) AS n, SUM(amount) AS total FROM src GROUP BY key",
    ),
    "q0": (
        COLUMNS["bids"],
        "SELECT auction, bidder, price, channel, url, date_time FROM src",
    ),
    "q1": (
        "auction BIGINT, bidder BIGINT, price DECIMAL(23, 3), date_time BIGINT",
        "SELECT auction, bidder, 0.908 * price AS price, date_time FROM src",
    ),
    "q2": ("auction BIGINT, price BIGINT", "SELECT auction, price FROM src WHERE MOD(auction, 123) = 0"),
    "q17": (
        "auction BIGINT, `day` STRING, total_bids BIGINT, rank1_bids BIGINT, rank2_bids BIGINT,"
        " rank3_bids BIGINT, min_price BIGINT, max_price BIGINT, avg_price BIGINT, sum_price BIGINT",
        """SELECT auction, DATE_FORMAT(TO_TIMESTAMP_LTZ(date_time, 3), 'yyyy-MM-dd') AS `day`,
  COUNT(*) AS total_bids,
  COUNT(*) FILTER (WHERE price < 10000) AS rank1_bids,
  COUNT(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
  COUNT(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
  MIN(price) AS min_price, MAX(price) AS max_price, AVG(price) AS avg_price,
  SUM(price) AS sum_price
FROM src GROUP BY auction, DATE_FORMAT(TO_TIMESTAMP_LTZ(date_time, 3), 'yyyy-MM-dd')""",
    ),
    # Nexmark's own spellings of q5 and q7.
    "q5": (
        "auction BIGINT, num BIGINT, window_end TIMESTAMP(3)",
        f"""SELECT a.auction, a.num, a.window_end FROM (
  SELECT auction, COUNT(*) AS num, window_start, window_end FROM {HOP}
  GROUP BY auction, window_start, window_end) a
JOIN (
  SELECT MAX(num) AS maxn, window_start, window_end FROM (
    SELECT COUNT(*) AS num, window_start, window_end FROM {HOP}
    GROUP BY auction, window_start, window_end) c
  GROUP BY window_start, window_end) m
ON a.window_start = m.window_start AND a.window_end = m.window_end AND a.num >= m.maxn""",
    ),
    "q7": (
        "auction BIGINT, price BIGINT, bidder BIGINT, date_time TIMESTAMP(3), window_end TIMESTAMP(3)",
        """SELECT b.auction, b.price, b.bidder, b.date_time, m.window_end
FROM src b JOIN (
  SELECT MAX(price) AS maxprice, window_end
  FROM TABLE(TUMBLE(TABLE src, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
  GROUP BY window_start, window_end) m
ON b.price = m.maxprice
WHERE b.date_time BETWEEN m.window_end - INTERVAL '10' SECOND AND m.window_end""",
    ),
    "windowed": (
        "window_start TIMESTAMP(3), page_id BIGINT, n BIGINT",
        f"""SELECT window_start, page_id, COUNT(*) AS n
FROM {WINDOW} GROUP BY window_start, window_end, page_id""",
    ),
    # Flink SQL joins a stream to a static table only through a lookup source, which files are
    # not; a regular join drops the event-time attribute, so the window is assigned before the
    # join and counted after it by its start (an updating aggregation).
    "yahoo": (
        "window_start TIMESTAMP(3), campaign_id BIGINT, `views` BIGINT",
        f"""SELECT e.window_start, c.campaign_id, COUNT(*) AS `views`
FROM (SELECT ad_id, window_start FROM {WINDOW} WHERE event_type = 'view') e
JOIN campaigns c ON e.ad_id = c.ad_id
GROUP BY e.window_start, c.campaign_id""",
    ),
}


def environment(spec, env=None, watch=False):
    """The settings every job shares and the tables over the input; with `watch` the input
    directory is watched for new files (an unbounded source)."""
    env = env or TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    settings = {
        "parallelism.default": "2",
        "execution.checkpointing.interval": "1s",
        "execution.checkpointing.dir": "file://" + spec["checkpoint"],
        "table.exec.mini-batch.enabled": "true",
        "table.exec.mini-batch.allow-latency": "1s",
        "table.exec.mini-batch.size": "5000",
        "table.optimizer.agg-phase-strategy": "TWO_PHASE",
        "table.local-time-zone": "UTC",
    }
    for key, value in settings.items():
        conf.set(key, value)
    columns = COLUMNS[spec["input_kind"]]
    extra = ", 'source.monitor-interval' = '100ms'" if watch else ""
    env.execute_sql(
        SOURCE.format(
            name="src", columns=columns, input=os.path.abspath(spec["input"]), extra=extra
        )
    )
    if spec["input_kind"] == "ads":
        env.execute_sql(
            SOURCE.format(
                name="campaigns",
                columns="ad_id BIGINT, campaign_id BIGINT",
                input=os.path.abspath(spec["campaigns"]),
                extra="",
            )
        )
    empty = spec["checkpoint"] + "-empty-input"
    os.makedirs(empty, exist_ok=True)
    env.execute_sql(SOURCE.format(name="src_empty", columns=columns, input=empty, extra=""))
    return env


def timed(env, columns, query):
    """The job's wall time less that of the same job over no input (its deployment), both
    after a first empty job has warmed the JVM."""
    env.execute_sql(f"CREATE TABLE sink ({columns}) WITH ('connector' = 'blackhole')")
    empty_job = "INSERT INTO sink " + re.sub(r"\bsrc\b", "src_empty", query)
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
def checksum_sql(spec, query):
    c = spec["checksum"]
    sums = ", ".join(
        f"SUM(CAST(ROUND(CAST(`{col}` AS DOUBLE) * 1000, 0) AS BIGINT)) AS s_{col}"
        for col in c["sums"]
    )
    weighted = (
        f"SUM(CAST(`{c['weight_by']}` AS BIGINT) * MOD(`{c['weight_key']}` * 2654435761, 65521))"
    )
    closed = ""
    if spec.get("window_end"):
        # Flink closes every window at the end of a bounded input; the others only those the
        # final watermark passed.
        closed = f" WHERE {spec['window_end']} <= TIMESTAMP '{spec['final_watermark']}'"
    return f"SELECT COUNT(*) AS c, {weighted} AS weighted, {sums} FROM ({query}){closed}"


def check(env, spec, query, out):
    """The final value of the checksum row over the query's changelog."""
    last = None
    with env.execute_sql(checksum_sql(spec, query)).collect() as rows:
        for row in rows:
            if row.get_row_kind() in (RowKind.INSERT, RowKind.UPDATE_AFTER):
                last = row
    names = spec["checksum"]["sums"]
    values = list(last) if last is not None else [0] * (2 + len(names))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "checksum.json"), "w") as f:
        json.dump(
            {
                "rows": values[0],
                "weighted": values[1] or 0,
                "sums": {n: v or 0 for n, v in zip(names, values[2:])},
            },
            f,
        )


def latest_checkpoint(directory):
    """The newest completed checkpoint under a job's checkpoint directory, if any."""
    done = glob.glob(os.path.join(directory, "*", "chk-*", "_metadata"))
    newest = max(done, key=lambda p: int(p.split("chk-")[-1].split(os.sep)[0]), default=None)
    return os.path.dirname(newest) if newest else None


def restart(spec):
    """The restart workload: the running count over a directory Flink keeps watching, with
    its REST endpoint on `rest_port`; restored from the newest checkpoint when there is one.
    Prints "COMMITTED <rows>" once the source has read `wait_rows` rows and a checkpoint
    triggered after that has completed (what an exactly-once sink commits on), then runs on
    until the harness kills the process."""
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    conf.set("rest.bind-port", str(spec["rest_port"]))
    resume = latest_checkpoint(spec["checkpoint"])
    if resume:
        conf.set("execution.state-recovery.path", resume)
    environment(spec, env, watch=True)
    columns, query = QUERIES["running_count"]
    env.execute_sql(f"CREATE TABLE sink ({columns}) WITH ('connector' = 'blackhole')")
    print("READY", flush=True)
    job = env.execute_sql("INSERT INTO sink " + query).get_job_client().get_job_id()
    rest = f"http://127.0.0.1:{spec['rest_port']}/jobs/{job}"

    def get(path):
        with urllib.request.urlopen(rest + path) as r:
            return json.load(r)

    def source_rows():
        vertices = get("")["vertices"]
        return next(v["metrics"]["read-records"] for v in vertices if v["name"].startswith("Source"))

    while (rows := source_rows()) < spec["wait_rows"]:
        time.sleep(0.02)
    after = int(time.time() * 1000)
    while True:
        done = get("/checkpoints")["latest"]["completed"]
        if done and done["trigger_timestamp"] > after:
            break
        time.sleep(0.02)
    print(f"COMMITTED {rows}", flush=True)
    while True:
        time.sleep(60)


# A standalone session cluster on loopback: a job manager and two task managers of two slots
# each, the job's subtasks spread over both; heartbeats and restart strategy at their defaults.
CLUSTER_CONF = """jobmanager.rpc.address: 127.0.0.1
jobmanager.bind-host: 127.0.0.1
taskmanager.bind-host: 127.0.0.1
taskmanager.host: 127.0.0.1
rest.address: 127.0.0.1
rest.bind-address: 127.0.0.1
rest.port: {port}
jobmanager.memory.process.size: 1024m
taskmanager.memory.process.size: 2048m
taskmanager.numberOfTaskSlots: 2
parallelism.default: 2
cluster.evenly-spread-out-slots: true
"""


def rest_get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as r:
        return json.load(r)


def start_cluster(spec):
    """Starts the cluster's JVMs (in this script's process group, which the harness kills)
    and waits for both task managers; returns their pids."""
    import pyflink

    home = os.path.dirname(os.path.abspath(pyflink.__file__))
    base = spec["checkpoint"] + "-cluster"
    conf, logs = os.path.join(base, "conf"), os.path.join(base, "log")
    os.makedirs(conf, exist_ok=True)
    os.makedirs(logs, exist_ok=True)
    with open(os.path.join(conf, "config.yaml"), "w") as f:
        f.write(CLUSTER_CONF.format(port=spec["rest_port"]))
    env = dict(os.environ, FLINK_CONF_DIR=conf, FLINK_LOG_DIR=logs, FLINK_PID_DIR=base)
    bin_dir = os.path.join(home, "bin")
    subprocess.run([os.path.join(bin_dir, "jobmanager.sh"), "start"], env=env, check=True)
    for _ in range(2):
        subprocess.run([os.path.join(bin_dir, "taskmanager.sh"), "start"], env=env, check=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if len(rest_get(spec["rest_port"], "/taskmanagers")["taskmanagers"]) == 2:
                break
        except OSError:
            pass
        time.sleep(0.2)
    pid_file = next(
        os.path.join(base, n) for n in os.listdir(base) if n.endswith("taskexecutor.pid")
    )
    with open(pid_file) as f:
        return [int(line) for line in f.read().split()]


def executor_kill(spec):
    """The executor-kill workload: the running count over the input on the standalone
    cluster; once its source has read `kill_at_rows` rows, one task manager is SIGKILLed.
    Prints one JSON line: the time from the kill to the next completed checkpoint (the next
    commit), and the job's restarts by then."""
    task_managers = start_cluster(spec)
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    conf.set("execution.target", "remote")
    conf.set("rest.address", "127.0.0.1")
    conf.set("rest.port", str(spec["rest_port"]))
    environment(spec, env, watch=True)
    columns, query = QUERIES["running_count"]
    env.execute_sql(f"CREATE TABLE sink ({columns}) WITH ('connector' = 'blackhole')")
    print("READY", flush=True)
    job = env.execute_sql("INSERT INTO sink " + query).get_job_client().get_job_id()
    port, path = spec["rest_port"], f"/jobs/{job}"

    def source_rows():
        try:
            vertices = rest_get(port, path)["vertices"]
        except OSError:
            return 0
        return next(v["metrics"]["read-records"] for v in vertices if v["name"].startswith("Source"))

    while source_rows() < spec["kill_at_rows"]:
        time.sleep(0.02)
    os.kill(task_managers[0], 9)
    killed_ms = time.time() * 1000
    while True:
        done = rest_get(port, path + "/checkpoints")["latest"]["completed"]
        if done and done["trigger_timestamp"] > killed_ms:
            break
        time.sleep(0.02)
    restarts = rest_get(port, path + "/metrics?get=numRestarts")
    print(
        json.dumps(
            {
                "kill_to_commit_ms": int(done["latest_ack_timestamp"] - killed_ms),
                "restarts": int(float(restarts[0]["value"])) if restarts else None,
            }
        ),
        flush=True,
    )


def main():
    spec = json.loads(sys.argv[1])
    if spec["workload"] == "executor_kill":
        executor_kill(spec)
        return
    if spec["workload"] == "restart":
        restart(spec)
        return
    columns, query = QUERIES[spec["workload"]]
    env = environment(spec)
    if spec.get("check_out"):
        print("READY", flush=True)
        check(env, spec, query, spec["check_out"])
        wall_ms, deployment_ms = 0, 0
    else:
        wall_ms, deployment_ms = timed(env, columns, query)
    # Flink reads the bounded files as one stream: no batches. The blackhole sink counts
    # nothing, so the rows are the input's; the check run shows they were all read.
    result = {"rows": spec["rows"], "batches": 0, "wall_ms": wall_ms, "deployment_ms": deployment_ms}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
