//! The web UI (`--ui-listen`) against a running cluster: its JSON API shows an executor's
//! loss and the reruns it caused where they happened, its pages render them, and with a
//! cluster token nothing is served without it.

use serde_json::Value;
use sluice_cluster_tests::{
    Browser, Cluster, bin_dir, events, free_port, http, png_size, wait_finished, write_event_files,
};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);
const TOKEN: &str = "0123456789abcdef-web-ui";

/// 4 batches of 4,000 generated rows, 6 map tasks each into 4 reducers; `extra` adds settings.
fn job(c: &Cluster, extra: &str) -> String {
    format!(
        "SET 'trigger' = 'available_now';
SET 'partitions' = '4';
SET 'task.backoff' = '50ms';
{extra}
CREATE TABLE g (k BIGINT, v BIGINT)
  WITH (connector = 'datagen', rows_per_second = '4000', total_rows = '16000', splits = '6', seed = '3',
        'fields.k.max' = '199');
CREATE TABLE o (k BIGINT, n BIGINT)
  WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO o SELECT k, count(*) FROM g GROUP BY k;
",
        c.path("out").display()
    )
}

/// A cluster whose driver serves the UI; returns it and the UI's address.
fn cluster_with_ui(mut c: Cluster, executors: usize) -> (Cluster, String) {
    let ui = format!("127.0.0.1:{}", free_port());
    c.driver_args.extend(["--ui-listen".into(), ui.clone()]);
    (Cluster::start_with(c, executors), ui)
}

fn get_json(ui: &str, path: &str, headers: &[(&str, &str)]) -> Value {
    let r = http(ui, "GET", path, headers, "");
    assert_eq!(r.code, 200, "{path}: {r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body))
}

fn get_page(ui: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let r = http(ui, "GET", path, headers, "");
    assert_eq!(r.code, 200, "{path}: {r:?}");
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/html")
    );
    r.body
}

#[test]
fn the_api_and_pages_show_an_executor_loss_and_its_reruns() {
    let (mut c, ui) = cluster_with_ui(Cluster::new(), 3);
    c.wait_for_registrations(3);
    let id = c
        .submit(&job(&c, "SET 'sluice.test.delay_task' = '0:1500ms';"))
        .unwrap();
    c.wait_for_running_stage(&id, 1, 0);
    std::thread::sleep(Duration::from_millis(300));
    c.kill_executor(0);
    let s = wait_finished(&c, &id);
    let killed = events(&c.executors().unwrap(), "lost");
    assert_eq!(killed.len(), 1);
    let killed = killed[0].as_str();

    // The API says what `sluice status --json` says, from the same model.
    let jobs = get_json(&ui, "/api/jobs", &[]);
    assert_eq!(jobs[0]["job_id"], id.as_str(), "{jobs}");
    let job = get_json(&ui, &format!("/api/jobs/{id}"), &[]);
    assert_eq!(job["state"], "finished");
    assert_eq!(job["batches_committed"], s["batches_committed"]);
    assert_eq!(job["rows_in"], 16_000);
    let lost_batch: Vec<u64> = job["recent_batches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["rerun"]["executor_lost"].as_u64() > Some(0))
        .map(|b| b["batch_id"].as_u64().unwrap())
        .collect();
    assert_eq!(lost_batch, [1], "{job}");
    let batch = get_json(&ui, &format!("/api/jobs/{id}/batches/1"), &[]);
    let reruns: Vec<&Value> = batch["stages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["tasks"].as_array().unwrap())
        .flat_map(|t| t["attempts"].as_array().unwrap())
        .filter(|a| a["cause"] == "executor_lost" || a["cause"] == "output_lost")
        .collect();
    assert!(!reruns.is_empty(), "{batch}");
    assert!(reruns.iter().all(|a| a["executor_id"] != killed));
    // What the commit made durable: the sink's partitions are exactly its part files, and the
    // running count's state has version 1 in every partition.
    let outputs = batch["committed"]["outputs"].as_array().unwrap();
    let sink = outputs.iter().find(|o| o["kind"] == "sink").unwrap();
    assert_eq!(sink["name"], "o");
    let mut parts: Vec<u64> = std::fs::read_dir(c.path("out/batch=1"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_prefix("part-")?
                .strip_suffix(".jsonl")?
                .parse()
                .ok()
        })
        .collect();
    parts.sort_unstable();
    let listed: Vec<u64> = (sink["partitions"].as_array().unwrap().iter())
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(!parts.is_empty());
    assert_eq!(listed, parts, "{batch}");
    let state = outputs.iter().find(|o| o["kind"] == "state").unwrap();
    assert_eq!(
        state["partitions"],
        serde_json::json!([0, 1, 2, 3]),
        "{batch}"
    );
    let executors = get_json(&ui, "/api/executors", &[]);
    let lost: Vec<&Value> = executors["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["change"] == "lost")
        .collect();
    assert_eq!(lost.len(), 1, "{executors}");
    assert_eq!(lost[0]["executor_id"], killed);
    let missing = http(&ui, "GET", "/api/jobs/nope", &[], "");
    assert_eq!(missing.code, 404);
    assert!(missing.body.contains("no job 'nope'"), "{}", missing.body);

    // The pages: one timeline bar per batch, the loss marked on batch 1 only, the killed
    // executor listed as lost, the batch page naming the cause of each rerun.
    let page = get_page(&ui, &format!("/jobs/{id}"), &[]);
    let bars = page.matches("<g class=\"batch").count();
    assert_eq!(
        bars as u64,
        s["batches_committed"].as_u64().unwrap(),
        "{page}"
    );
    let marked: Vec<&str> = page
        .split("<g class=\"batch")
        .skip(1)
        .filter(|g| g.split('>').next().unwrap().contains("mark-executor-lost"))
        .collect();
    assert_eq!(marked.len(), 1, "{page}");
    assert!(marked[0].contains("data-batch=\"1\""), "{}", marked[0]);
    let executors_page = get_page(&ui, "/executors", &[]);
    assert!(
        executors_page.contains(&format!(
            "class=\"event change-lost\" data-executor=\"{killed}\""
        )),
        "{executors_page}"
    );
    let batch_page = get_page(&ui, &format!("/jobs/{id}/batches/1"), &[]);
    assert!(batch_page.contains("cause-executor_lost") || batch_page.contains("cause-output_lost"));
    assert!(
        batch_page.contains("<li>sink o: partitions "),
        "{batch_page}"
    );
    assert!(
        batch_page.contains(": version 1 of partitions 0, 1, 2, 3</li>"),
        "{batch_page}"
    );
    let jobs_page = get_page(&ui, "/", &[]);
    assert!(
        jobs_page.contains(&format!("data-job=\"{id}\"")),
        "{jobs_page}"
    );

    // The same pages as a browser renders them.
    let browser = Browser::new();
    let url = |path: &str| format!("http://{ui}{path}");
    let dom = browser.dom(&url(&format!("/jobs/{id}")));
    assert_eq!(
        dom.matches("<g class=\"batch").count() as u64,
        s["batches_committed"].as_u64().unwrap(),
        "one bar per batch in the rendered timeline: {dom}"
    );
    assert_eq!(dom.matches("mark-executor-lost").count(), 1, "{dom}");
    let dom = browser.dom(&url("/executors"));
    assert!(
        dom.contains(&format!(
            "class=\"event change-lost\" data-executor=\"{killed}\""
        )),
        "the killed executor is listed as lost: {dom}"
    );
    for path in [
        "/".to_string(),
        format!("/jobs/{id}/batches/1"),
        format!("/jobs/{id}/plan"),
        format!("/jobs/{id}/checkpoint"),
        format!("/jobs/{id}/windows"),
    ] {
        let dom = browser.dom(&url(&path));
        assert!(
            dom.contains("<main id=\"content\"") && !dom.contains("Not found"),
            "{path}: {dom}"
        );
    }
    let dom = browser.dom(&url(&format!("/jobs/{id}/plan")));
    assert!(
        dom.contains("id=\"stage-graph\"") && dom.contains("hash exchange × 4"),
        "{dom}"
    );

    // The job page as the README shows it.
    let shot = bin_dir().join("ui-screenshots/job.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    browser.screenshot(&url(&format!("/jobs/{id}")), &shot, 1280, 1100);
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(png_size(&png), Some((1280, 1100)), "{}", shot.display());
    assert!(png.len() > 20_000, "a blank page? {} bytes", png.len());
}

/// Reads the hex-encoded token out of a Set-Cookie header: "sluice_token=<hex>; HttpOnly; ...".
fn cookie_of(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_string()
}

#[test]
fn with_a_cluster_token_every_request_needs_it_and_a_stop_must_come_from_the_ui() {
    let mut c = Cluster::new();
    c.env.push(("SLUICE_TOKEN".into(), TOKEN.into()));
    let (c, ui) = cluster_with_ui(c, 1);
    let id = c
        .submit(
            &job(&c, "")
                .replace("available_now", "200ms")
                .replace("'16000'", "'100000000'"),
        )
        .expect("submit");
    c.wait_until(&id, LONG, |s| s["batches_committed"].as_u64() >= Some(1));

    // The API takes the token as a bearer header only.
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/api/jobs", &format!("/api/jobs/{id}"), "/api/executors"] {
        let r = http(&ui, "GET", path, &[], "");
        assert_eq!(r.code, 401, "{path} without the token: {r:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let wrong = http(
            &ui,
            "GET",
            path,
            &[("Authorization", "Bearer not-the-token-0000")],
            "",
        );
        assert_eq!(wrong.code, 401, "{path} with a wrong token");
        get_json(&ui, path, &[("Authorization", &bearer)]);
    }

    // A page without the token is the login form, which sets an HttpOnly cookie.
    let r = http(&ui, "GET", &format!("/jobs/{id}"), &[], "");
    assert_eq!(r.code, 401);
    assert!(
        r.body.contains("id=\"login\"") && !r.body.contains(TOKEN),
        "{}",
        r.body
    );
    let wrong = http(
        &ui,
        "POST",
        "/login",
        &[],
        "token=not-the-token-0000&next=%2F",
    );
    assert_eq!(wrong.code, 401);
    assert!(wrong.body.contains("id=\"wrong-token\""));
    assert!(wrong.header("set-cookie").is_none());
    let next = format!("next=%2Fjobs%2F{id}");
    let login = http(&ui, "POST", "/login", &[], &format!("token={TOKEN}&{next}"));
    assert_eq!(login.code, 303, "{login:?}");
    assert_eq!(
        login.header("location"),
        Some(format!("/jobs/{id}").as_str())
    );
    let set = login.header("set-cookie").expect("a cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains(TOKEN),
        "the cookie does not show the token as typed"
    );
    let cookie = cookie_of(set);
    let page = get_page(&ui, &format!("/jobs/{id}"), &[("Cookie", &cookie)]);
    assert!(page.contains("id=\"timeline\""));
    // A browser without the cookie gets the login form, never the page.
    let dom = Browser::new().dom(&format!("http://{ui}/jobs/{id}"));
    assert!(
        dom.contains("id=\"login\"") && !dom.contains("id=\"timeline\""),
        "{dom}"
    );

    // Stopping asks first; another site's form is refused; the UI's own stops the job.
    let confirm = get_page(&ui, &format!("/jobs/{id}/stop"), &[("Cookie", &cookie)]);
    assert!(confirm.contains("id=\"stop\""));
    let stop = format!("/jobs/{id}/stop");
    let unauthenticated = http(&ui, "POST", &stop, &[], "");
    assert_eq!(unauthenticated.code, 401);
    let elsewhere = [
        ("Cookie", cookie.as_str()),
        ("Origin", "http://evil.example"),
    ];
    assert_eq!(http(&ui, "POST", &stop, &elsewhere, "").code, 403);
    assert_eq!(c.status(&id).unwrap()["state"], "running");
    let origin = format!("http://{ui}");
    let ours = [("Cookie", cookie.as_str()), ("Origin", origin.as_str())];
    let r = http(&ui, "POST", &stop, &ours, "");
    assert_eq!(r.code, 303, "{r:?}");
    c.wait_for(&id, &["stopped"], LONG);
}

/// 2025-01-01T00:00:00Z in ms.
const BASE_MS: i64 = 1_735_689_600_000;

#[test]
fn the_plan_windows_and_checkpoint_pages_explain_a_windowed_job() {
    let (c, ui) = cluster_with_ui(Cluster::new(), 2);
    write_event_files(
        &c.path("in"),
        &[
            &[1, 12, 7, 25],
            &[18, 3, 31, 22],
            &[40, 28, 15, 44],
            &[33, 52, 47],
        ],
    );
    let sql = format!(
        "SET 'trigger' = '200ms';
SET 'output_mode' = 'append';
SET 'partitions' = '2';
CREATE TABLE clicks (user_id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
  WITH (connector = 'files', path = 'file://{}', format = 'jsonl', max_files_per_batch = '1');
CREATE TABLE out (ws BIGINT, n BIGINT) WITH (connector = 'files', path = 'file://{}', format = 'jsonl');
INSERT INTO out SELECT to_unixtime(window_start), count(*) FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end;
",
        c.path("in").display(),
        c.path("out").display()
    );
    let id = c.submit(&sql).unwrap();
    // The last file's events end at 00:00:52: the watermark stops at 00:00:47, leaving the
    // windows [40, 50) and [50, 60) open.
    let watermark = |s: &Value| s["recent_batches"].as_array()?.last()?["watermark_ms"].as_i64();
    c.wait_until(&id, LONG, |s| watermark(s) == Some(BASE_MS + 47_000));
    let windows = get_json(&ui, &format!("/api/jobs/{id}/windows"), &[]);
    assert_eq!(windows["watermark_ms"], BASE_MS + 47_000, "{windows}");
    let source = &windows["sources"][0];
    assert_eq!(source["table"], "clicks");
    assert_eq!(source["holds"], true);
    assert_eq!(source["read_up_to_ms"], BASE_MS + 52_000);
    let op = &windows["operators"][0];
    assert_eq!(op["open_windows"], 2, "{windows}");
    assert_eq!(op["next_window_end_ms"], BASE_MS + 50_000, "{windows}");
    assert_eq!(op["watermark_short_ms"], 3_000);
    let why = op["why"].as_str().unwrap();
    assert!(
        why.contains("source clicks holds the watermark")
            && why.contains("at or after 2025-01-01T00:00:55"),
        "{why}"
    );
    let parts = windows["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{windows}");
    let open: i64 = parts
        .iter()
        .map(|p| p["open_windows"].as_i64().unwrap())
        .sum();
    assert_eq!(open, 2);
    let page = get_page(&ui, &format!("/jobs/{id}/windows"), &[]);
    assert!(
        page.contains("class=\"holds\"") && page.contains("holds the watermark"),
        "{page}"
    );

    // A row at 00:01:00 moves the watermark to 00:00:55: [40, 50) is emitted, [50, 60) is next.
    write_event_files(&c.path("more"), &[&[60]]);
    std::fs::rename(c.path("more/in-0.jsonl"), c.path("in/in-9.jsonl")).unwrap();
    c.wait_until(&id, LONG, |s| watermark(s) == Some(BASE_MS + 55_000));
    let windows = get_json(&ui, &format!("/api/jobs/{id}/windows"), &[]);
    assert_eq!(
        windows["operators"][0]["next_window_end_ms"],
        BASE_MS + 60_000,
        "{windows}"
    );

    // The plan: a source stage and a stateful one, with its eviction rule; rows per stage.
    let plan = get_json(&ui, &format!("/api/jobs/{id}/plan"), &[]);
    assert_eq!(
        plan["plan"]["stages"].as_array().unwrap().len(),
        2,
        "{plan}"
    );
    let eviction = plan["plan"]["operators"]["1"]["eviction"].as_str().unwrap();
    assert!(
        eviction.contains("leaves the state once the watermark reaches its end"),
        "{eviction}"
    );
    assert_eq!(plan["stage_figures"]["0"]["rows_in"], 16, "{plan}");
    let page = get_page(&ui, &format!("/jobs/{id}/plan"), &[]);
    assert_eq!(
        page.matches("<g class=\"node ").count(),
        4,
        "clicks, 2 stages, out: {page}"
    );
    assert!(
        page.contains("hash exchange × 2") && page.contains(eviction),
        "{page}"
    );

    // The checkpoint page's JSON twin is `sluice checkpoint inspect --json`'s document.
    let s = c.status(&id).unwrap();
    let api = get_json(&ui, &format!("/api/jobs/{id}/checkpoint"), &[]);
    let out = c.sluice(&[
        "checkpoint",
        "inspect",
        "--json",
        s["checkpoint_uri"].as_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(api, cli[0]);
    let logged = api["batches"].as_array().unwrap().len();
    assert!(logged >= 6, "{api}");
    let page = get_page(&ui, &format!("/jobs/{id}/checkpoint"), &[]);
    assert_eq!(page.matches("<tr data-batch=").count(), logged, "{page}");
    assert!(page.contains("not ended"), "{page}");
    let job_page = get_page(&ui, &format!("/jobs/{id}"), &[]);
    assert!(job_page.contains("id=\"partitions\""), "{job_page}");
}
