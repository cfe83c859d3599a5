//! The Kubernetes manifests, checked without a cluster: rendered with kustomize, validated
//! against the Kubernetes schemas (kubernetes-validate --strict), and then run: the driver,
//! executor and submit containers are started as local processes with the command, arguments,
//! environment (ConfigMaps, Secret, field refs) and config files the manifests give them, and
//! their liveness and readiness probes are asked on the ports the manifests name.
//!
//! Only what cannot exist outside a cluster is rewritten, and nothing else: listen addresses
//! become 127.0.0.1 with free ports, in-cluster names (the driver Service, the S3 endpoint)
//! point at the local driver and a local S3 server (moto), the pod IP is 127.0.0.1, and the
//! mount paths become temporary directories.
//!
//! Tools: SLUICE_KUBECTL (else `kubectl`) and SLUICE_K8S_VALIDATE (else `kubernetes-validate`),
//! both installed by `cargo xtask ci`.

use serde_json::{Value, json};
use sluice_cluster_tests::{S3Server, free_port, http_get};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// `kubectl kustomize DIR`: the manifests as Kubernetes would receive them.
fn render(dir: &str) -> String {
    let kubectl = tool("SLUICE_KUBECTL", "kubectl");
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(repo().join(dir))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {kubectl} (cargo xtask ci installs it): {e}"));
    assert!(
        out.status.success(),
        "kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs kubernetes-validate --strict on `yaml`: Ok or the validator's complaint.
fn validate(yaml: &str) -> Result<(), String> {
    let validator = tool("SLUICE_K8S_VALIDATE", "kubernetes-validate");
    let out = pipe(Command::new(&validator).args(["--strict", "-"]), yaml)
        .unwrap_or_else(|e| panic!("cannot run {validator} (cargo xtask ci installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(text)
    }
}

/// Runs `cmd` with `input` on its standard input; its output.
fn pipe(cmd: &mut Command, input: &str) -> std::io::Result<std::process::Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    child.wait_with_output()
}

/// The rendered YAML as JSON documents (PyYAML comes with kubernetes-validate).
fn documents(yaml: &str) -> Vec<Value> {
    let validator = PathBuf::from(tool("SLUICE_K8S_VALIDATE", "kubernetes-validate"));
    let python = validator
        .parent()
        .map(|d| d.join("python"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "python3".into());
    let out = pipe(
        Command::new(python).args([
            "-c",
            "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ]),
        yaml,
    )
    .expect("python");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    for dir in ["deploy/k8s", "deploy/k8s/submit"] {
        let yaml = render(dir);
        validate(&yaml).unwrap_or_else(|e| panic!("{dir}:\n{e}"));
    }
    // The validator does reject what Kubernetes would: a misspelled field.
    let broken = render("deploy/k8s").replace("readinessProbe:", "readinesProbe:");
    let err = validate(&broken).expect_err("a misspelled field passed");
    assert!(err.contains("readinesProbe"), "{err}");
}

fn find<'a>(docs: &'a [Value], kind: &str, name_prefix: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(name_prefix))
        })
        .unwrap_or_else(|| panic!("no {kind} {name_prefix}*"))
}

/// One container of the manifests, ready to run here.
struct Container {
    spec: Value,
    env: BTreeMap<String, String>,
    /// Files of the volumes it mounts, by mount path.
    mounts: BTreeMap<String, BTreeMap<String, String>>,
}

fn container(docs: &[Value], kind: &str, name: &str) -> Container {
    let pod = &find(docs, kind, name)["spec"]["template"]["spec"];
    let spec = pod["containers"][0].clone();
    let data = |kind: &str, name: &str| -> BTreeMap<String, String> {
        let d = find(docs, kind, name);
        let mut out: BTreeMap<String, String> = d["data"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        for (k, v) in d["stringData"].as_object().into_iter().flatten() {
            out.insert(k.clone(), v.as_str().unwrap().to_string());
        }
        out
    };
    let mut env = BTreeMap::new();
    for from in spec["envFrom"].as_array().into_iter().flatten() {
        if let Some(name) = from["configMapRef"]["name"].as_str() {
            env.extend(data("ConfigMap", name));
        }
        if let Some(name) = from["secretRef"]["name"].as_str() {
            env.extend(data("Secret", name));
        }
    }
    for e in spec["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            data("Secret", r["name"].as_str().unwrap())[r["key"].as_str().unwrap()].clone()
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP" {
            "127.0.0.1".into()
        } else {
            panic!("unsupported env source in {e}");
        };
        env.insert(name, value);
    }
    let mut mounts = BTreeMap::new();
    for m in spec["volumeMounts"].as_array().into_iter().flatten() {
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        let mut files = BTreeMap::new();
        if let Some(cm) = volume["configMap"]["name"].as_str() {
            let all = data("ConfigMap", cm);
            match volume["configMap"]["items"].as_array() {
                Some(items) => {
                    for i in items {
                        files.insert(
                            i["path"].as_str().unwrap().to_string(),
                            all[i["key"].as_str().unwrap()].clone(),
                        );
                    }
                }
                None => files = all,
            }
        }
        mounts.insert(m["mountPath"].as_str().unwrap().to_string(), files);
    }
    Container { spec, env, mounts }
}

/// The local port standing in for each container port, by port name and number.
struct Ports(BTreeMap<String, u16>);

impl Ports {
    fn new(c: &Container) -> Ports {
        let mut map = BTreeMap::new();
        for p in c.spec["ports"].as_array().into_iter().flatten() {
            let local = free_port();
            map.insert(p["name"].as_str().unwrap().to_string(), local);
            map.insert(p["containerPort"].to_string(), local);
        }
        Ports(map)
    }

    fn local(&self, port: &Value) -> u16 {
        let key = port
            .as_str()
            .map(str::to_string)
            .unwrap_or(port.to_string());
        self.0[&key]
    }

    /// `0.0.0.0:<container port>` becomes `127.0.0.1:<local port>`.
    fn rewrite(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (k, local) in &self.0 {
            if k.parse::<u16>().is_ok() {
                out = out.replace(&format!("0.0.0.0:{k}"), &format!("127.0.0.1:{local}"));
            }
        }
        out
    }
}

/// Children killed when the test ends, pass or fail.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `c` as a local process, with exactly its environment (plus `rewrites` applied to
/// values and files) and its mounts as temporary directories.
fn run(c: &Container, dir: &Path, rewrite: &dyn Fn(&str) -> String, log: &str) -> (Child, PathBuf) {
    let mut args: Vec<String> = c.spec["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut locals = Vec::new();
    for (mount, files) in &c.mounts {
        let local = dir.join(format!("mnt{}", mount.replace('/', "_")));
        std::fs::create_dir_all(&local).unwrap();
        for (name, content) in files {
            std::fs::write(local.join(name), rewrite(content)).unwrap();
        }
        locals.push((mount.clone(), local));
    }
    // A path argument under a mount moves with it (the longest mount that holds it).
    locals.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    for a in &mut args {
        if let Some((m, local)) = locals.iter().find(|(m, _)| a.starts_with(&format!("{m}/"))) {
            *a = format!("{}{}", local.display(), &a[m.len()..]);
        }
    }
    let command = c.spec["command"][0].as_str().unwrap();
    let bin = sluice_cluster_tests::bin_dir().join(command.trim_start_matches('/'));
    let log = dir.join(log);
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin)
        .args(&args)
        .env_clear()
        .envs(c.env.iter().map(|(k, v)| (k.clone(), rewrite(v))))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start");
    (child, log)
}

/// Calls `check` until it succeeds, for up to a minute; on timeout, fails with its last
/// complaint and the process log.
fn eventually<T>(log: &Path, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{last}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asks the container's liveness and readiness probes until both answer 200.
fn wait_probes(c: &Container, ports: &Ports, log: &Path) {
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &c.spec[probe]["httpGet"];
        let addr = format!("127.0.0.1:{}", ports.local(&get["port"]));
        let path = get["path"].as_str().unwrap();
        eventually(log, || {
            let answer = std::net::TcpStream::connect(&addr)
                .ok()
                .map(|_| http_get(&addr, path).0);
            match answer {
                Some(200) => Ok(()),
                other => Err(format!("{probe} {path} on {addr}: {other:?}")),
            }
        });
    }
}

#[test]
fn the_manifests_run_as_given_and_their_probes_answer() {
    let docs = documents(&render("deploy/k8s"));
    let submit_docs = documents(&render("deploy/k8s/submit"));
    let driver = container(&docs, "Deployment", "sluice-driver");
    let executor = container(&docs, "Deployment", "sluice-executor");
    // The Job reads the Secret of the main manifests.
    let mut all = submit_docs.clone();
    all.extend(docs.iter().cloned());
    let submit = container(&all, "Job", "sluice-submit");

    let s3 = S3Server::start("sluice");
    let endpoint = s3
        .env()
        .into_iter()
        .find(|(k, _)| k == "AWS_ENDPOINT_URL")
        .unwrap()
        .1;
    let cluster_endpoint = driver.env["AWS_ENDPOINT"].clone();
    let dir = tempfile::tempdir().unwrap();
    let driver_ports = Ports::new(&driver);
    let executor_ports = Ports::new(&executor);
    let service = find(&docs, "Service", "sluice-driver");
    let service_name = service["metadata"]["name"].as_str().unwrap();
    let grpc = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .unwrap()["port"]
        .clone();
    let driver_url = format!("http://{service_name}:{grpc}");
    let local_driver = format!("http://127.0.0.1:{}", driver_ports.local(&json!("grpc")));
    // Each container's own ports; the in-cluster names for everyone.
    let to_local = |ports: Option<&Ports>, text: &str| -> String {
        let text = text
            .replace(&cluster_endpoint, &endpoint)
            .replace(&driver_url, &local_driver);
        match ports {
            Some(p) => p.rewrite(&text),
            None => text,
        }
    };
    let mut procs = Procs(Vec::new());
    let mut logs = Vec::new();
    // The driver first: the executor's readiness needs it.
    for (c, ports, log) in [
        (&driver, &driver_ports, "driver.log"),
        (&executor, &executor_ports, "executor.log"),
    ] {
        let (child, log) = run(c, dir.path(), &|t| to_local(Some(ports), t), log);
        procs.0.push(child);
        wait_probes(c, ports, &log);
        logs.push(log);
    }
    let driver_log = &logs[0];
    let text = std::fs::read_to_string(driver_log).unwrap();
    assert!(
        text.contains("token=true"),
        "the Secret's token is in use:\n{text}"
    );
    assert!(text.contains("s3://sluice/state"), "{text}");

    // The example submission, as its Job runs it.
    let (mut child, submit_log) = run(&submit, dir.path(), &|t| to_local(None, t), "submit.log");
    let status = child.wait().unwrap();
    let out = std::fs::read_to_string(&submit_log).unwrap();
    assert!(status.success(), "submit: {out}");
    let job = out.trim().to_string();
    // It runs on the cluster the manifests describe.
    let sluice = sluice_cluster_tests::bin_dir().join("sluice");
    let s = eventually(driver_log, || {
        let status = Command::new(&sluice)
            .args(["status", &job, "--json", "--driver", &local_driver])
            .env("SLUICE_TOKEN", &driver.env["SLUICE_TOKEN"])
            .output()
            .unwrap();
        let s: Value = serde_json::from_slice(&status.stdout).unwrap_or(Value::Null);
        match s["batches_committed"].as_u64() {
            Some(n) if n >= 2 => Ok(s),
            _ => Err(format!("job {job} has not committed 2 batches: {s}")),
        }
    });
    assert_eq!(s["state"], "running", "{s}");
}
