//! Running Sluice as a service: the cluster token on every gRPC call, the loopback rule
//! without one, the ops endpoint (/healthz, /readyz, /metrics), and SIGTERM draining an
//! executor and the driver with nothing lost or repeated.

use serde_json::Value;
use sluice_cluster_tests::{Cluster, events, free_port, http_get, wait_finished};
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "sluice-test-token-0123456789";
const LONG: Duration = Duration::from_secs(60);

/// A job that runs until stopped: 50 generated rows per 200 ms batch, through a shuffle.
fn endless(c: &Cluster) -> String {
    format!(
        "SET 'trigger' = '200ms';
CREATE TABLE g (k BIGINT) WITH (connector = 'datagen', rows_per_second = '250', 'fields.k.max' = '9');
CREATE TABLE o (batch BIGINT, k BIGINT, n BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT _batch, k, count(*) FROM g GROUP BY _batch, k;
",
        c.path("out").display()
    )
}

/// Counts generated rows per batch and key through a shuffle into files: `total` rows over
/// `splits` map tasks and 4 reducers; the counts must add up to `total`.
fn counting(c: &Cluster, trigger: &str, total: u64, splits: u32) -> String {
    format!(
        "SET 'trigger' = '{trigger}';
SET 'partitions' = '4';
CREATE TABLE g (k BIGINT) WITH (connector = 'datagen', rows_per_second = '1000', total_rows = '{total}', splits = '{splits}', 'fields.k.max' = '99');
CREATE TABLE o (batch BIGINT, k BIGINT, n BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT _batch, k, count(*) FROM g GROUP BY _batch, k;
",
        c.path("out").display()
    )
}

fn batches(c: &Cluster, id: &str) -> u64 {
    c.status(id).expect("status")["batches_committed"]
        .as_u64()
        .unwrap()
}

fn wait_batches(c: &Cluster, id: &str, at_least: u64) {
    let deadline = Instant::now() + LONG;
    while batches(c, id) < at_least {
        assert!(Instant::now() < deadline, "{}", c.log("driver.log"));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The CLI with `token` (None: no token at all) instead of the cluster's.
fn sluice_with_token(c: &Cluster, token: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(sluice_cluster_tests::bin_dir().join("sluice"));
    cmd.args(args).arg("--driver").arg(c.url());
    match token {
        Some(t) => cmd.env("SLUICE_TOKEN", t),
        None => cmd.env_remove("SLUICE_TOKEN"),
    };
    let out = cmd.output().expect("run sluice");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn shuffle_address(c: &Cluster, executor: usize) -> String {
    let log = c.log(&format!("executor-{executor}.log"));
    let line = log
        .lines()
        .find(|l| l.contains("executor started"))
        .expect("executor started");
    let at = line.find("shuffle_address=").unwrap() + "shuffle_address=".len();
    line[at..].split_whitespace().next().unwrap().to_string()
}

#[test]
fn a_wrong_or_missing_token_is_refused_and_the_job_is_untouched() {
    let mut c = Cluster::new();
    c.env.push(("SLUICE_TOKEN".into(), TOKEN.into()));
    let c = &mut Cluster::start_with(c, 1);
    let id = c.submit(&endless(c)).expect("submit with the token");
    wait_batches(c, &id, 2);

    // An executor with the wrong token never joins.
    let bad = c.add_executor_with_env(&[("SLUICE_TOKEN", "not-the-cluster-token-000")]);
    c.wait_for_log(
        &format!("executor-{bad}.log"),
        &["missing or wrong cluster token"],
        2,
        LONG,
    );
    let registered = events(&c.executors().unwrap(), "registered").len();
    assert_eq!(registered, 1, "only the executor with the token registered");

    // The CLI without a token, or with a wrong one, is refused, and says why.
    for token in [None, Some("not-the-cluster-token-000")] {
        for args in [vec!["stop", id.as_str()], vec!["jobs"]] {
            let (ok, text) = sluice_with_token(c, token, &args);
            assert!(!ok, "{args:?} with {token:?} was accepted: {text}");
            assert!(text.contains("cluster token"), "{text}");
            assert!(!text.contains(TOKEN), "the CLI never prints the token");
        }
    }

    // A shuffle fetch without the token is refused by the executor.
    let address = shuffle_address(c, 0);
    let code = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut client = sluice_proto::shuffle_client::ShuffleClient::connect(address)
            .await
            .expect("connect");
        client
            .fetch(sluice_proto::FetchRequest {
                job_id: id.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_err()
            .code()
    });
    assert_eq!(code, tonic::Code::Unauthenticated);

    // The job was not stopped and keeps committing.
    let before = batches(c, &id);
    wait_batches(c, &id, before + 2);
    assert_eq!(c.status(&id).unwrap()["state"], "running");
    let (ok, text) = sluice_with_token(c, Some(TOKEN), &["stop", &id]);
    assert!(ok, "{text}");
}

#[test]
fn without_a_token_a_driver_or_executor_refuses_a_non_loopback_address() {
    let c = Cluster::new();
    let bins = sluice_cluster_tests::bin_dir();
    for (bin, args) in [
        (
            "sluice-driver",
            vec![
                "--listen".to_string(),
                format!("0.0.0.0:{}", free_port()),
                "--state".into(),
                c.path("state").display().to_string(),
            ],
        ),
        (
            "sluice-driver",
            vec![
                "--listen".to_string(),
                format!("127.0.0.1:{}", free_port()),
                "--ui-listen".to_string(),
                format!("0.0.0.0:{}", free_port()),
                "--state".into(),
                c.path("state").display().to_string(),
            ],
        ),
        (
            "sluice-executor",
            vec![
                "--listen".to_string(),
                "0.0.0.0:0".into(),
                "--driver".into(),
                c.url(),
            ],
        ),
    ] {
        let out = Command::new(bins.join(bin))
            .args(&args)
            .env_remove("SLUICE_TOKEN")
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin} started without a token");
        assert!(
            err.contains("refusing to listen on 0.0.0.0") && err.contains("SLUICE_TOKEN"),
            "{bin}: {err}"
        );
    }
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name_and_labels} in:\n{text}"))
}

#[test]
fn probes_answer_and_metrics_count_what_ran() {
    let mut c = Cluster::new();
    let driver_ops = format!("127.0.0.1:{}", free_port());
    let executor_ops = format!("127.0.0.1:{}", free_port());
    // The executor comes first: alive but not ready while there is no driver.
    c.spawn_extra(
        "sluice-executor",
        &[
            "--driver".into(),
            c.url(),
            "--metrics-listen".into(),
            executor_ops.clone(),
        ],
        "executor-ops.log",
    );
    c.wait_for_log("executor-ops.log", &["serving /healthz"], 1, LONG);
    assert_eq!(http_get(&executor_ops, "/healthz").0, 200);
    assert_eq!(http_get(&executor_ops, "/readyz").0, 503);

    c.driver_args = vec!["--metrics-listen".into(), driver_ops.clone()];
    c.start_driver();
    c.wait_for_driver();
    assert_eq!(http_get(&driver_ops, "/healthz").0, 200);
    assert_eq!(http_get(&driver_ops, "/readyz"), (200, "ready\n".into()));
    let deadline = Instant::now() + LONG;
    while http_get(&executor_ops, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "executor never ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    let id = c.submit(&counting(&c, "available_now", 3000, 2)).unwrap();
    let status = wait_finished(&c, &id);
    let committed = status["batches_committed"].as_u64().unwrap();
    assert!(committed >= 3, "{status}");

    let (code, m) = http_get(&driver_ops, "/metrics");
    assert_eq!(code, 200);
    let job = format!("{{job=\"{id}\"}}");
    assert_eq!(
        metric(&m, &format!("sluice_batches_total{job}")),
        committed as f64
    );
    assert_eq!(metric(&m, &format!("sluice_input_rows_total{job}")), 3000.0);
    assert_eq!(
        metric(&m, &format!("sluice_batch_duration_seconds_count{job}")),
        committed as f64
    );
    assert_eq!(
        metric(&m, &format!("sluice_checkpoint_write_seconds_count{job}")),
        committed as f64
    );
    assert!(metric(&m, &format!("sluice_input_rows_per_second{job}")) > 0.0);
    assert_eq!(metric(&m, "sluice_executors_alive"), 1.0);
    for name in [
        "sluice_task_retries_total",
        "sluice_recomputed_partitions_total",
    ] {
        assert_eq!(metric(&m, &format!("{name}{job}")), 0.0);
    }

    let (_, m) = http_get(&executor_ops, "/metrics");
    // Each batch: one map task per split and one reducer per partition, all here.
    let tasks = metric(&m, "sluice_tasks_total{outcome=\"succeeded\"}");
    assert!(tasks >= 2.0 * committed as f64, "{m}");
    assert_eq!(metric(&m, "sluice_tasks_running"), 0.0);
    assert_eq!(
        metric(&m, "sluice_task_duration_seconds_count"),
        tasks,
        "{m}"
    );
}

/// Per-batch counts from the committed output: (batch -> rows counted).
fn counted(c: &Cluster) -> std::collections::BTreeMap<u64, u64> {
    sluice_cluster_tests::committed_jsonl(&c.path("out"))
        .into_iter()
        .map(|(b, rows)| (b, rows.iter().map(|r| r["n"].as_u64().unwrap()).sum()))
        .collect()
}

#[test]
fn sigterm_drains_an_executor_and_the_driver_and_loses_or_repeats_nothing() {
    let mut c = Cluster::new();
    c.env.push(("SLUICE_SHUTDOWN_GRACE".into(), "20s".into()));
    let c = &mut Cluster::start_with(c, 2);
    let total = 6000;
    let id = c.submit(&counting(c, "250ms", total, 4)).unwrap();
    wait_batches(c, &id, 3);

    // Scale down by one executor while batches run.
    let status = c.terminate_executor(0, Duration::from_secs(30));
    assert!(status.success(), "executor exit: {status}");
    let log = c.log("executor-0.log");
    assert!(log.contains("SIGTERM: draining"), "{log}");
    assert!(log.contains("drained"), "{log}");
    c.wait_for_executors(LONG, |e| !events(e, "draining").is_empty());
    let after = batches(c, &id);
    wait_batches(c, &id, after + 2);
    // And up again: the new executor joins the running job.
    c.add_executor();
    c.wait_for_registrations(3);
    let after = batches(c, &id);
    wait_batches(c, &id, after + 2);

    // Then stop the driver the way Kubernetes does, and start it again.
    let status = c.terminate_driver(Duration::from_secs(30));
    assert!(status.success(), "driver exit: {status}");
    let log = c.log("driver.1.log");
    assert!(log.contains("SIGTERM: finishing running batches"), "{log}");
    c.start_driver();
    c.wait_for_driver();
    let s = wait_finished(c, &id);
    assert_eq!(s["restarts"].as_u64().unwrap_or(0), 0, "{s}");

    let per_batch = counted(c);
    let sum: u64 = per_batch.values().sum();
    assert_eq!(
        sum, total,
        "every generated row counted once: {per_batch:?}"
    );
    let expected: Vec<u64> = (0..per_batch.len() as u64).collect();
    assert_eq!(
        per_batch.keys().copied().collect::<Vec<_>>(),
        expected,
        "batches are consecutive"
    );
    let failed: Vec<Value> = s["recent_batches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["rerun"]["task_failed"].as_u64().unwrap_or(0) > 0)
        .cloned()
        .collect();
    assert!(failed.is_empty(), "no task failed: {failed:?}");
}

/// A CA and one certificate for 127.0.0.1 signed by it, made with the openssl CLI.
fn certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=sluice-test-ca"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&ca);
    let mut csr = vec!["req", "-subj", "/CN=localhost"];
    csr.extend(ec);
    csr.extend(["-keyout", "node.key", "-out", "node.csr"]);
    run(&csr);
    std::fs::write(
        dir.join("node.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "node.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "node.ext",
        "-out",
        "node.pem",
    ]);
}

#[test]
fn with_tls_every_call_is_encrypted_and_plain_text_is_refused() {
    let mut c = Cluster::new();
    let certs = c.path("certs");
    std::fs::create_dir_all(&certs).unwrap();
    certificates(&certs);
    let file = |f: &str| certs.join(f).display().to_string();
    c.env = vec![
        ("SLUICE_TOKEN".into(), TOKEN.into()),
        ("SLUICE_TLS_CERT".into(), file("node.pem")),
        ("SLUICE_TLS_KEY".into(), file("node.key")),
        ("SLUICE_TLS_CA".into(), file("ca.pem")),
    ];
    c.scheme = "https";
    let c = &mut Cluster::start_with(c, 2);
    // Two executors and a shuffle: task launches, results and shuffle fetches all use TLS.
    let id = c.submit(&counting(c, "available_now", 3000, 4)).unwrap();
    wait_finished(c, &id);
    assert_eq!(counted(c).values().sum::<u64>(), 3000);
    assert!(shuffle_address(c, 0).starts_with("https://"));
    // Plain text to the TLS port does not get through.
    let plain = format!("http://127.0.0.1:{}", c.port);
    let out = c.sluice_at(&plain, &["jobs"]);
    assert!(!out.status.success(), "plain text was accepted");
}
