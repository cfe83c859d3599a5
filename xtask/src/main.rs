//! `cargo xtask ci`: everything CI checks, from a fresh clone.
//! `cargo xtask bench`: throughput and batch latency of a real local cluster;
//! `cargo xtask bench --compare`: the same work on Sluice, Spark and Flink (see compare/).

mod bench;
mod compare;
mod standins;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "xtask")]
struct Args {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the tests need, check formatting and lints, build, run every test
    Ci,
    /// Measure a local cluster of release binaries on each workload (see xtask/src/bench.rs)
    Bench {
        /// Rows for the throughput run
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
        /// Run only these workloads (comma-separated); the others keep their last results (with
        /// --compare the report is printed, not written)
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Cargo profile of the binaries measured (dev: a quick check of a workload, not figures)
        #[arg(long, default_value = "release")]
        profile: String,
        /// Instead: run each workload on Sluice, Spark and Flink, check their results agree,
        /// and write bench/report.md, bench/results.json and plots
        #[arg(long)]
        compare: bool,
        /// Timed runs per engine and workload with --compare (medians are reported)
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Input rows per workload with --compare
        #[arg(long, default_value_t = 4_000_000)]
        compare_rows: u64,
        /// Engines to run with --compare (comma-separated: sluice, spark, flink); all when
        /// empty. A run without all of them is printed, not written
        #[arg(long, value_delimiter = ',')]
        engines: Vec<String>,
    },
    /// Rewrite README.md's headline (the comparison's table, latency floor and recoveries)
    /// from bench/results.json, as a full `bench --compare` does after its run
    Readme,
    /// A long chaos run: a Kafka job under random process kills and storage faults, checked
    /// for exact output; prints a table and writes bench/chaos.json
    Chaos {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Build the container image without a container engine: static musl binaries, assembled
    /// FROM scratch with umoci into target/image (an OCI layout and an .oci.tar archive)
    Image {
        /// Cargo profile of the binaries (release for an image you ship)
        #[arg(long, default_value = "release")]
        profile: String,
    },
}

fn main() -> anyhow::Result<()> {
    let root = root_dir()?;
    std::env::set_current_dir(&root)?;
    match Args::parse().command {
        Task::Ci => ci(),
        Task::Bench {
            compare: true,
            runs,
            compare_rows,
            only,
            engines,
            profile,
            ..
        } => {
            cargo(&["build", "--profile", &profile, "--bins"])?;
            let opts = compare::Options {
                runs,
                rows: compare_rows,
                write: only.is_empty() && engines.is_empty() && profile == "release",
                only,
                engines,
            };
            compare::compare(
                &root,
                &root.join("target").join(profile_dir(&profile)),
                &opts,
            )
        }
        Task::Bench {
            rows,
            only,
            profile,
            ..
        } => {
            cargo(&["build", "--profile", &profile, "--bins"])?;
            let bins = root.join("target").join(profile_dir(&profile));
            let opts = bench::Options {
                rows,
                write: profile == "release",
            };
            bench::bench(&root, &bins, &only, &opts)
        }
        Task::Readme => compare::headline::update_readme(&root),
        Task::Chaos { minutes, seed } => chaos(&root, minutes, seed),
        Task::Image { profile } => image(&root, &profile, &root.join("target")),
    }
}

/// The directory under target/ that a cargo profile builds into.
fn profile_dir(profile: &str) -> &str {
    if profile == "dev" { "debug" } else { profile }
}

/// A cargo command without the variables `cargo xtask` set for this process: build scripts
/// that watch them (ring watches CARGO_MANIFEST_DIR) would otherwise rebuild whenever cargo
/// runs from elsewhere, and CI's cached image build would never be reused.
fn cargo_command() -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&key.as_ref())
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("==> cargo {}", args.join(" "));
    let started = Instant::now();
    let status = cargo_command().args(args).status()?;
    eprintln!("    ({:.0} s)", started.elapsed().as_secs_f64());
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// moto's S3-compatible server, for the tests that need real object storage.
const MOTO: &str = "moto[server]==5.2.5";

fn root_dir() -> anyhow::Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf())
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/sluice"))
}

/// kubernetes-validate: the Kubernetes schemas, to check the manifests offline.
const K8S_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// Installs a Python package into its own cached virtualenv (once per version) and returns
/// `bin/<program>` of it.
fn ensure_venv(name: &str, package: &str, program: &str) -> anyhow::Result<PathBuf> {
    let venv = cache_dir()?.join(name);
    let bin = venv.join("bin").join(program);
    let marker = venv.join(".installed");
    if bin.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(package) {
        return Ok(bin);
    }
    eprintln!("==> installing {package} into {}", venv.display());
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(venv.parent().context("cache dir")?)?;
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .with_context(|| format!("python3 is needed to install {package}"))?;
    let ok = Command::new(python)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()?
        .success()
        && Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", package])
            .status()?
            .success();
    if !ok || !bin.exists() {
        bail!("installing {package} failed");
    }
    std::fs::write(&marker, package)?;
    eprintln!("    ({:.0} s)", started.elapsed().as_secs_f64());
    Ok(bin)
}

/// Debian's kubectl (its kustomize renders the manifests), unpacked under the cache without
/// installing the package, so the same version runs on every machine.
fn ensure_kubectl() -> anyhow::Result<PathBuf> {
    let root = cache_dir()?.join("kubectl");
    let bin = root.join("usr/bin/kubectl");
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!(
        "==> unpacking Debian's kubernetes-client into {}",
        root.display()
    );
    let download = cache_dir()?.join("kubectl-deb");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    if !apt_get(&["download", "kubernetes-client"], &download) {
        bail!("cannot download Debian's kubernetes-client (apt-get download kubernetes-client)");
    }
    let deb = std::fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("no .deb downloaded")?;
    let ok = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()?
        .success();
    if !ok || !bin.exists() {
        bail!("cannot unpack {}", deb.display());
    }
    Ok(bin)
}

const TANSU_VERSION: &str = "0.6.0";

/// Installs tansu, the Kafka-wire broker the tests use, under the cache (once per version;
/// about 11 minutes on 2 cores) and returns its binary.
fn ensure_tansu() -> anyhow::Result<PathBuf> {
    let root = cache_dir()?.join("tansu");
    let bin = root.join("bin/tansu");
    let marker = root.join(".installed");
    if bin.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(TANSU_VERSION) {
        return Ok(bin);
    }
    eprintln!(
        "==> installing tansu {TANSU_VERSION} into {} (once; ~11 min)",
        root.display()
    );
    let started = Instant::now();
    let status = cargo_command()
        .args([
            "install",
            "tansu",
            "--version",
            TANSU_VERSION,
            "--locked",
            "--features",
            "dynostore,libsql",
            "--root",
        ])
        .arg(&root)
        // Its own target dir, so the workspace's build cache is not touched.
        .env("CARGO_TARGET_DIR", cache_dir()?.join("tansu-build"))
        .status()?;
    if !status.success() || !bin.exists() {
        bail!("installing tansu {TANSU_VERSION} failed");
    }
    std::fs::write(&marker, TANSU_VERSION)?;
    let _ = std::fs::remove_dir_all(cache_dir()?.join("tansu-build"));
    eprintln!("    ({:.0} s)", started.elapsed().as_secs_f64());
    Ok(bin)
}

fn ci() -> anyhow::Result<()> {
    let started = Instant::now();
    let moto = ensure_venv("moto-venv", MOTO, "moto_server")?;
    let validate = ensure_venv("k8s-venv", K8S_VALIDATE, "kubernetes-validate")?;
    let kubectl = ensure_kubectl()?;
    let tansu = ensure_tansu()?;
    // The web UI's tests render its pages in a real browser.
    ensure_debs(&[("chromium", "chromium")])?;
    // SAFETY: single-threaded here; the tests we start inherit them.
    unsafe {
        std::env::set_var("SLUICE_MOTO_SERVER", &moto);
        std::env::set_var("SLUICE_K8S_VALIDATE", &validate);
        std::env::set_var("SLUICE_KUBECTL", &kubectl);
        std::env::set_var("SLUICE_TANSU", &tansu);
    }
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The cluster tests start these binaries.
    cargo(&["build", "--workspace", "--bins"])?;
    let (passed, failed) = run_tests()?;
    // The image of deploy/, built and checked without a container engine.
    let image_built = image(&root_dir()?, "release", &cache_dir()?.join("image-target"));
    eprintln!("ci took {:.0} s", started.elapsed().as_secs_f64());
    if let Err(e) = &image_built {
        eprintln!("image: {e:#}");
    }
    println!("ci: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        bail!("tests failed");
    }
    image_built?;
    Ok(())
}

/// Runs every test, echoing cargo's output and adding up its "test result" lines.
fn run_tests() -> anyhow::Result<(u64, u64)> {
    eprintln!("==> cargo test --workspace --all-targets --no-fail-fast");
    // Every test binary runs even after one fails, so one red run shows every failure.
    let mut child = cargo_command()
        .args(["test", "--workspace", "--all-targets", "--no-fail-fast"])
        .stdout(Stdio::piped())
        .spawn()?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|p| {
                        p.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        failed = 1;
    }
    Ok((passed, failed))
}

fn chaos(root: &Path, minutes: u64, seed: u64) -> anyhow::Result<()> {
    let tansu = ensure_tansu()?;
    // SAFETY: single-threaded here; the processes we start inherit it.
    unsafe { std::env::set_var("SLUICE_TANSU", &tansu) };
    cargo(&["build", "--release", "--bins"])?;
    let cfg = sluice_cluster_tests::chaos::ChaosConfig {
        duration: Duration::from_secs(minutes.max(1) * 60),
        seed,
        // About one fault every 4 seconds, of each kind in turn.
        failures_each: (minutes.max(1) * 5).max(10) as u32,
        rate: 1000,
    };
    let report = sluice_cluster_tests::chaos::run(&cfg, &root.join("target/release"));
    let rows: Vec<(&str, Value)> = vec![
        ("seed", report["seed"].clone()),
        ("minutes", json!(minutes)),
        ("executor kills survived", report["executor_kills"].clone()),
        ("driver kills survived", report["driver_kills"].clone()),
        ("executor stops survived", report["executor_stops"].clone()),
        (
            "store write failures",
            report["store_write_failures"].clone(),
        ),
        ("records produced", report["records_produced"].clone()),
        ("records lost", report["running_count"]["lost"].clone()),
        (
            "records duplicated",
            report["running_count"]["duplicated"].clone(),
        ),
        (
            "longest output stall (ms)",
            report["longest_stall_ms"].clone(),
        ),
        ("slowest recovery (ms)", report["max_recovery_ms"].clone()),
        ("exact", report["exact"].clone()),
    ];
    println!("{:<32} {:>14}", "measure", "value");
    for (name, value) in &rows {
        println!("{name:<32} {:>14}", value.to_string());
    }
    println!("\n{:>8}  {:<20} {:>12}", "AT MS", "FAULT", "RECOVERED MS");
    for e in report["schedule"].as_array().into_iter().flatten() {
        println!(
            "{:>8}  {:<20} {:>12}",
            e["at_ms"],
            e["fault"].as_str().unwrap_or_default(),
            e["recovered_ms"]
        );
    }
    std::fs::create_dir_all(root.join("bench"))?;
    std::fs::write(
        root.join("bench/chaos.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("\nwrote bench/chaos.json");
    if report["exact"] != true {
        bail!(
            "seed {seed}: output differs from what was produced: {}",
            report["running_count"]
        );
    }
    Ok(())
}

const MUSL: &str = "x86_64-unknown-linux-musl";
const IMAGE_TAG: &str = env!("CARGO_PKG_VERSION");

/// Installs Debian packages that are missing (the image build needs musl-gcc and umoci).
fn ensure_debs(programs: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _)| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("==> apt-get install {}", missing.join(" "));
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(&missing);
    if !apt_get(&args, Path::new(".")) {
        bail!("cannot install {} with apt-get", missing.join(" "));
    }
    Ok(())
}

/// `apt-get ARGS` in `dir`; once more after `apt-get update` if it fails, since a fresh
/// machine's package lists may be empty. Whether it succeeded.
fn apt_get(args: &[&str], dir: &Path) -> bool {
    let attempt = || {
        Command::new("apt-get")
            .args(args)
            .current_dir(dir)
            .status()
            .is_ok_and(|s| s.success())
    };
    attempt()
        || (Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .is_ok_and(|s| s.success())
            && attempt())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("{program} {} failed", args.join(" "));
    }
    Ok(())
}

/// The image deploy/Dockerfile describes, assembled with umoci: /sluice, /sluice-driver,
/// /sluice-executor (static, stripped), the CA bundle, /tmp, user 65532, no shell.
/// `target_dir`: where cargo builds the musl binaries (CI keeps them under the cache, so only
/// its first run pays for the release build).
fn image(root: &Path, profile: &str, target_dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    ensure_debs(&[("musl-gcc", "musl-tools"), ("umoci", "umoci")])?;
    run("rustup", &["target", "add", MUSL])?;
    cargo(&[
        "build",
        "--locked",
        "--profile",
        profile,
        "--target",
        MUSL,
        "--bin",
        "sluice",
        "--target-dir",
        target_dir.to_str().context("path")?,
    ])?;
    let dir_name = if profile == "dev" { "debug" } else { profile };
    let built = target_dir.join(MUSL).join(dir_name);
    let out = root.join("target/image");
    let _ = std::fs::remove_dir_all(&out);
    let files = out.join("files");
    std::fs::create_dir_all(files.join("etc/ssl/certs"))?;
    std::fs::create_dir_all(files.join("tmp"))?;
    std::fs::set_permissions(
        files.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    std::fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        files.join("etc/ssl/certs/ca-certificates.crt"),
    )
    .context("the CA bundle (/etc/ssl/certs/ca-certificates.crt, package ca-certificates)")?;
    // One binary under three names: `sluice` is also the driver and the executor when called
    // by their names, so the image holds one copy instead of three.
    run(
        "strip",
        &[
            "-o",
            files.join("sluice").to_str().context("path")?,
            built.join("sluice").to_str().context("path")?,
        ],
    )?;
    for bin in ["sluice-driver", "sluice-executor"] {
        std::fs::hard_link(files.join("sluice"), files.join(bin))?;
    }
    let layout = out.join("oci");
    let layout_s = layout.to_str().context("path")?;
    let image = format!("{layout_s}:{IMAGE_TAG}");
    let bundle = out.join("bundle");
    let bundle_s = bundle.to_str().context("path")?;
    run("umoci", &["init", "--layout", layout_s])?;
    run("umoci", &["new", "--image", &image])?;
    run(
        "umoci",
        &["unpack", "--rootless", "--image", &image, bundle_s],
    )?;
    run(
        "cp",
        &[
            "-a",
            &format!("{}/.", files.display()),
            &format!("{bundle_s}/rootfs/"),
        ],
    )?;
    run("umoci", &["repack", "--image", &image, bundle_s])?;
    run(
        "umoci",
        &[
            "config",
            "--image",
            &image,
            "--config.user",
            "65532:65532",
            "--config.entrypoint",
            "/sluice",
            "--config.workingdir",
            "/",
            "--config.label",
            "org.opencontainers.image.title=sluice",
            "--config.label",
            &format!("org.opencontainers.image.version={IMAGE_TAG}"),
        ],
    )?;
    run("umoci", &["gc", "--layout", layout_s])?;
    // Check the image, not the build: unpack it afresh and run what it holds.
    let check = out.join("check");
    run(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &image,
            check.to_str().context("path")?,
        ],
    )?;
    let rootfs = check.join("rootfs");
    let mut listing: Vec<String> = std::fs::read_dir(&rootfs)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    listing.sort();
    for bin in ["sluice", "sluice-driver", "sluice-executor"] {
        let out = Command::new(rootfs.join(bin))
            .arg("--version")
            .env_clear()
            .output()
            .with_context(|| format!("running /{bin} from the image"))?;
        let version = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !version.starts_with(&format!("{bin} ")) {
            bail!("/{bin} --version failed in the image: {out:?}");
        }
        eprintln!("    /{bin}: {}", version.trim());
    }
    let config = Command::new("umoci")
        .args(["stat", "--image", &image, "--json"])
        .output()?;
    if !config.status.success() {
        bail!("umoci stat failed");
    }
    let archive = out.join(format!("sluice-{IMAGE_TAG}.oci.tar"));
    run(
        "tar",
        &[
            "-C",
            layout_s,
            "-cf",
            archive.to_str().context("path")?,
            ".",
        ],
    )?;
    let _ = std::fs::remove_dir_all(&bundle);
    let _ = std::fs::remove_dir_all(&check);
    let _ = std::fs::remove_dir_all(&files);
    let size = std::fs::metadata(&archive)?.len();
    println!(
        "image sluice:{IMAGE_TAG}: {} ({:.1} MiB), contents /{}; OCI layout {}; took {:.0} s",
        archive.display(),
        size as f64 / (1024.0 * 1024.0),
        listing.join(" /"),
        layout.display(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "load it with: skopeo copy oci-archive:{} docker-daemon:sluice:{IMAGE_TAG}",
        archive.display()
    );
    Ok(())
}
