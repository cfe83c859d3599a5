//! `sluice replay`: committed batches of a running aggregation rerun, in one process, to
//! exactly what the cluster committed (the files sink byte for byte, every state partition
//! row for row), before and after an executor loss and a driver restart; a committed file
//! changed afterwards is reported as a mismatch. The restart is marked on the web UI's
//! timeline and in the batch's model.

use serde_json::Value;
use sluice_cluster_tests::{Cluster, free_port, http, wait_finished};
use std::time::Duration;

fn get_json(ui: &str, path: &str) -> Value {
    let r = http(ui, "GET", path, &[], "");
    assert_eq!(r.code, 200, "{path}: {r:?}");
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn replayed_batches_equal_what_was_committed_through_an_executor_loss_and_a_driver_restart() {
    let ui = format!("127.0.0.1:{}", free_port());
    let mut c = Cluster::new();
    c.driver_args.extend(["--ui-listen".into(), ui.clone()]);
    let mut c = Cluster::start_with(c, 3);
    c.wait_for_registrations(3);
    let sql = format!(
        "SET 'trigger' = 'available_now';
SET 'partitions' = '4';
SET 'task.backoff' = '50ms';
SET 'sluice.test.delay_task' = '0:1500ms';
SET 'sluice.test.pause_at' = 'before_commit:3:2s';
CREATE TABLE g (k BIGINT, v BIGINT)
  WITH (connector = 'datagen', rows_per_second = '4000', total_rows = '24000', splits = '6', seed = '11',
        'fields.k.max' = '299');
CREATE TABLE o (k BIGINT, n BIGINT, total BIGINT)
  WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT k, count(*), sum(v) FROM g GROUP BY k;
",
        c.path("out").display()
    );
    let id = c.submit(&sql).unwrap();
    // Batch 1 loses an executor while its map tasks run; batch 3 is run again by a new driver
    // after the old one died before committing it (and another executor died with it).
    c.wait_for_running_stage(&id, 1, 0);
    std::thread::sleep(Duration::from_millis(300));
    c.kill_executor(0);
    c.crash_driver_at("before_commit", 3, 1);
    let s = wait_finished(&c, &id);
    let batches = s["batches_committed"].as_u64().unwrap();
    assert!(batches >= 6, "{s}");

    let restarted = get_json(&ui, &format!("/api/jobs/{id}/batches/3"));
    assert_eq!(restarted["started_after"], "driver restart", "{restarted}");
    let page = http(&ui, "GET", &format!("/jobs/{id}"), &[], "").body;
    let marked: Vec<&str> = page
        .split("<g class=\"batch")
        .skip(1)
        .filter(|g| g.split('>').next().unwrap().contains("mark-driver-restart"))
        .collect();
    assert_eq!(marked.len(), 1, "{page}");
    assert!(marked[0].contains("data-batch=\"3\""), "{}", marked[0]);

    // Every batch reruns to what was committed: 1 lost an executor, 3 ran on a new driver.
    for n in 0..batches {
        let out = c.path(&format!("replay-{n}"));
        let r = c.sluice(&[
            "replay",
            &id,
            &n.to_string(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let text = String::from_utf8_lossy(&r.stdout);
        assert!(
            r.status.success(),
            "batch {n}: {text}\n{}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(
            text.contains("reruns to exactly what was committed"),
            "{text}"
        );
        assert!(text.contains("byte for byte equal"), "{text}");
        assert!(text.contains("row for row equal"), "{text}");
    }
    let out = c.path("replay-json");
    let json = c.sluice(&["replay", &id, "1", "--json", "--out", out.to_str().unwrap()]);
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    let states = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["what"].as_str().unwrap().starts_with("state "))
        .count();
    assert_eq!(states, 4, "one check per state partition: {report}");

    // Without a driver, from the state directory.
    c.kill_driver();
    let state = c.state_uri();
    let out = c.path("replay-offline");
    let r = c.sluice(&[
        "replay",
        &id,
        "2",
        "--checkpoint",
        &state,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{r:?}");

    // A committed file changed afterwards is a mismatch, named.
    let dir = c.path("out/batch=4");
    let part = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&part).unwrap();
    let at = bytes.iter().position(u8::is_ascii_digit).unwrap();
    bytes[at] = if bytes[at] == b'9' {
        b'8'
    } else {
        bytes[at] + 1
    };
    std::fs::write(&part, bytes).unwrap();
    let out = c.path("replay-corrupted");
    let r = c.sluice(&[
        "replay",
        &id,
        "4",
        "--checkpoint",
        &state,
        "--out",
        out.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(!r.status.success(), "{text}");
    let name = part.file_name().unwrap().to_string_lossy();
    assert!(
        text.contains("DIFFERENT") && text.contains(&format!("{name} differs")),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("batch 4 did not rerun to what was committed")
    );
}
