//! `sluice local`: the README's first command, run the way a new user runs it.

use sluice_cluster_tests::bin_dir;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Pids of the live processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) {
            // "pid (comm) state ppid ...": comm may hold spaces, so split after the ')'.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, r)| r)
                .unwrap_or("")
                .split_whitespace()
                .collect();
            if fields.first() != Some(&"Z")
                && fields.get(1).and_then(|p| p.parse().ok()) == Some(parent)
            {
                found.push(pid);
            }
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Processes whose command line mentions `needle` (our children carry the state dir in theirs).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

#[test]
fn builtin_example_runs_to_completion_and_shuts_the_cluster_down() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("local");
    let out = Command::new(bin_dir().join("sluice"))
        .args(["local", "--state", state.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("batch     0 |"), "{stdout}");
    assert!(stdout.contains("web UI: http://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("rows/s"), "{stdout}");
    assert!(
        stdout.contains("| /checkout |"),
        "console sink rows shown: {stdout}"
    );
    assert!(
        stdout.contains("job finished:") && stdout.contains("300000 rows in"),
        "{stdout}"
    );
    assert!(processes_mentioning(state.to_str().unwrap()).is_empty());
}

#[test]
fn ctrl_c_stops_the_job_and_every_child() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("local");
    let job = dir.path().join("forever.sql");
    std::fs::write(
        &job,
        "SET 'trigger' = '200ms';\nCREATE TABLE g (k BIGINT) WITH (connector = 'datagen', rows_per_second = '1000');\nCREATE TABLE o WITH (connector = 'blackhole');\nINSERT INTO o SELECT k FROM g;\n",
    )
    .unwrap();
    let mut child = Command::new(bin_dir().join("sluice"))
        .args([
            "local",
            job.to_str().unwrap(),
            "--executors",
            "3",
            "--state",
            state.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut batches = 0;
    while batches < 2 && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("batch ") => batches += 1,
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    assert_eq!(batches, 2, "progress lines appear as batches commit");
    let cluster = children_of(child.id());
    assert_eq!(cluster.len(), 4, "driver + 3 executors");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    // Keep draining stdout so the CLI never blocks on a full pipe while shutting down.
    let drain = std::thread::spawn(move || lines.count());
    let status = child.wait().unwrap();
    drain.join().unwrap();
    assert!(status.success(), "{status}");
    let left: Vec<u32> = cluster.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "children left behind: {left:?}");
}

#[test]
fn the_local_cluster_takes_only_its_users_token_and_keeps_its_state_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("local");
    let job = dir.path().join("forever.sql");
    std::fs::write(
        &job,
        "SET 'trigger' = '200ms';\nCREATE TABLE g (k BIGINT) WITH (connector = 'datagen', rows_per_second = '100');\nCREATE TABLE o WITH (connector = 'blackhole');\nINSERT INTO o SELECT k FROM g;\n",
    )
    .unwrap();
    let mut child = Command::new(bin_dir().join("sluice"))
        .args(["local", job.to_str().unwrap(), "--executors", "1"])
        .args(["--state", state.to_str().unwrap()])
        .env_remove("SLUICE_TOKEN")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("{first}"))
        .trim_end_matches(',')
        .to_string();
    let drain = std::thread::spawn(move || lines.count());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    let port = url.rsplit(':').next().unwrap();
    let home = std::env::var("HOME").unwrap();
    let token = std::path::Path::new(&home).join(format!(".sluice/local/127.0.0.1-{port}.token"));
    assert_eq!(mode(&token), 0o600);
    let jobs = |home: &str| {
        Command::new(bin_dir().join("sluice"))
            .args(["jobs", "--driver", &url])
            .env("HOME", home)
            .env_remove("SLUICE_TOKEN")
            .output()
            .unwrap()
    };
    // This user's CLI finds the token; another user (another HOME) has none and is refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !jobs(&home).status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(jobs(&home).status.success());
    let stranger = jobs(dir.path().to_str().unwrap());
    assert!(!stranger.status.success());
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("refused"),
        "{stranger:?}"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    drain.join().unwrap();
    assert!(!token.exists(), "the token goes with the cluster");
}
