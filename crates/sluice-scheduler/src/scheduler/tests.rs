//! The scheduler driven through failure stories, with no network.

use super::*;
use crate::model::{AttemptOutcome, BatchTrace};
use sluice_core::progress;
use sluice_core::{FailureKind, ShuffleKind, StageInput, StageSpec};

const JOB: &str = "job-1";

fn stages(kind: Option<ShuffleKind>, partitions: u32) -> Vec<StageSpec> {
    match kind {
        None => vec![StageSpec {
            id: 0,
            inputs: vec![source("events")],
            output: StageOutput::Sink,
            stateful: false,
            describe: "scan -> sink".into(),
        }],
        Some(kind) => vec![
            StageSpec {
                id: 0,
                inputs: vec![source("events")],
                output: StageOutput::Shuffle { kind, partitions },
                stateful: false,
                describe: "scan".into(),
            },
            StageSpec {
                id: 1,
                inputs: vec![StageInput::Shuffle { from: 0, kind }],
                output: StageOutput::Sink,
                stateful: false,
                describe: "aggregate -> sink".into(),
            },
        ],
    }
}

fn source(table: &str) -> StageInput {
    StageInput::Source {
        table: table.into(),
    }
}

fn submit(splits: usize, kind: Option<ShuffleKind>, partitions: u32) -> Event {
    Event::SubmitBatch(BatchSubmission {
        job_id: JOB.into(),
        batch_id: 7,
        stages: stages(kind, partitions),
        splits: [(
            "events".to_string(),
            (0..splits).map(|i| format!("split-{i}")).collect(),
        )]
        .into(),
        max_task_attempts: 3,
        task_backoff_ms: 100,
        task_timeout_ms: 60_000,
        max_stage_attempts: 3,
        watermark_ms: Some(42),
        previous_watermark_ms: None,
    })
}

fn register(s: &mut Scheduler, id: &str, slots: u32) -> Vec<Action> {
    s.handle(
        Event::ExecutorRegistered {
            id: id.into(),
            address: format!("http://{id}"),
            slots,
        },
        0,
    )
}

type Launched = (ExecutorId, TaskLaunch);

fn launches(actions: &[Action]) -> Vec<Launched> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Launch { executor, task } => Some((executor.clone(), task.clone())),
            _ => None,
        })
        .collect()
}

fn succeed(s: &mut Scheduler, (executor, task): &Launched, now: u64) -> Vec<Action> {
    let p = task.key.partition as u8;
    s.handle(
        Event::TaskSucceeded {
            key: task.key.clone(),
            executor: executor.clone(),
            output: {
                let mut out = TaskOutput::default();
                out.count(progress::ROWS_IN, 10)
                    .count(progress::ROWS_OUT, 5)
                    .payload(progress::KEY_SAMPLE, vec![p * 10])
                    .payload(progress::KEY_SAMPLE, vec![p * 10 + 5]);
                out
            },
        },
        now,
    )
}

/// Fails the task; `retryable` picks an outage (retried) or bad input (not).
fn fail(s: &mut Scheduler, (executor, task): &Launched, retryable: bool, now: u64) -> Vec<Action> {
    let kind = if retryable {
        FailureKind::Outage
    } else {
        FailureKind::BadInput
    };
    s.handle(
        Event::TaskFailed {
            key: task.key.clone(),
            executor: executor.clone(),
            failure: Failure::new(kind, "boom"),
            fetch_failure: None,
        },
        now,
    )
}

fn failed(actions: &[Action]) -> Option<&Failure> {
    actions.iter().find_map(|a| match a {
        Action::BatchFailed { failure, .. } => Some(failure),
        _ => None,
    })
}

fn done(actions: &[Action]) -> Option<&BatchReport> {
    actions.iter().find_map(|a| match a {
        Action::BatchDone { report, .. } => Some(report),
        _ => None,
    })
}

#[test]
fn single_stage_batch_runs_every_split_within_slots() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 1);
    register(&mut s, "b", 1);
    let first = launches(&s.handle(submit(3, None, 4), 0));
    assert_eq!(first.len(), 2, "two slots, two launches");
    let execs: BTreeSet<_> = first.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(execs.len(), 2, "spread over both executors");
    assert_eq!(first[0].1.split.as_deref(), Some("split-0"));
    let third = launches(&succeed(&mut s, &first[0], 5));
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].1.key.partition, 2);
    assert!(done(&succeed(&mut s, &first[1], 6)).is_none());
    let actions = succeed(&mut s, &third[0], 9);
    let report = done(&actions).expect("batch done");
    assert_eq!(
        (
            report.rows_in,
            report.rows_out,
            report.tasks,
            report.tasks_rerun
        ),
        (30, 15, 3, 0)
    );
    assert_eq!(report.duration_ms, 9);
}

#[test]
fn reducers_start_after_all_maps_and_get_every_location() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 4);
    register(&mut s, "b", 4);
    let maps = launches(&s.handle(submit(2, Some(ShuffleKind::Hash), 3), 0));
    assert_eq!(maps.len(), 2);
    assert!(
        launches(&succeed(&mut s, &maps[0], 1)).is_empty(),
        "one map still running"
    );
    let reduces = launches(&succeed(&mut s, &maps[1], 2));
    assert_eq!(reduces.len(), 3);
    for (_, r) in &reduces {
        assert_eq!(r.key.stage_id, 1);
        let locs: Vec<_> = r
            .inputs
            .iter()
            .map(|l| (l.map_partition, l.executor_id.clone(), l.address.clone()))
            .collect();
        assert_eq!(
            locs,
            vec![
                (0, maps[0].0.clone(), format!("http://{}", maps[0].0)),
                (1, maps[1].0.clone(), format!("http://{}", maps[1].0)),
            ]
        );
        assert_eq!(r.output_partitions, 0);
    }
    assert_eq!(maps[0].1.output_partitions, 3);
    let mut last = Vec::new();
    for r in &reduces {
        last = succeed(&mut s, r, 3);
    }
    assert_eq!(done(&last).expect("done").tasks, 5);
}

#[test]
fn a_reducer_is_sent_only_the_map_outputs_with_rows_for_it() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 8);
    let maps = launches(&s.handle(submit(3, Some(ShuffleKind::Hash), 4), 0));
    // Map m wrote rows for reduce partitions m and 3 only.
    let mut reduces = Vec::new();
    for (m, (executor, task)) in maps.iter().enumerate() {
        let mut out = TaskOutput::default();
        let bits = progress::partition_bits((0..4).map(|r| r == m || r == 3));
        out.payload(progress::NONEMPTY_PARTITIONS, bits);
        let event = Event::TaskSucceeded {
            key: task.key.clone(),
            executor: executor.clone(),
            output: out,
        };
        reduces.extend(launches(&s.handle(event, 1)));
    }
    let inputs: BTreeMap<u32, Vec<u32>> = (reduces.iter())
        .map(|(_, r)| {
            let maps = r.inputs.iter().map(|l| l.map_partition).collect();
            (r.key.partition, maps)
        })
        .collect();
    // Every reducer still runs (a stateful one must carry its state on), fetching nothing
    // where no map wrote for it.
    let want: BTreeMap<u32, Vec<u32>> =
        [(0, vec![0]), (1, vec![1]), (2, vec![2]), (3, vec![0, 1, 2])].into();
    assert_eq!(inputs, want);
}

#[test]
fn failed_task_retries_after_backoff_on_another_executor_then_fails_the_batch() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 1);
    register(&mut s, "b", 1);
    let first = launches(&s.handle(submit(1, None, 1), 0));
    assert!(
        launches(&fail(&mut s, &first[0], true, 10)).is_empty(),
        "backoff not elapsed"
    );
    assert_eq!(s.next_wakeup_ms(10), Some(110));
    let retry = launches(&s.handle(Event::Tick, 110));
    assert_eq!(retry.len(), 1);
    assert_ne!(retry[0].0, first[0].0, "retried on the other executor");
    assert_eq!(retry[0].1.key.task_attempt, 1);
    // Second failure: backoff doubles.
    assert!(launches(&fail(&mut s, &retry[0], true, 120)).is_empty());
    assert_eq!(s.next_wakeup_ms(120), Some(320));
    let third = launches(&s.handle(Event::Tick, 320));
    let actions = fail(&mut s, &third[0], true, 330);
    let err = failed(&actions).expect("batch failed");
    assert!(err.retryable());
    assert!(err.message.contains("(failed 3 times): boom"), "{err}");
}

#[test]
fn bad_input_fails_at_once_and_excludes_nobody() {
    let mut s = Scheduler::with_config(SchedulerConfig {
        exclude_after_failures: 1,
        ..SchedulerConfig::default()
    });
    register(&mut s, "a", 1);
    let first = launches(&s.handle(submit(1, None, 1), 0));
    let actions = fail(&mut s, &first[0], false, 1);
    let err = failed(&actions).expect("failed at once");
    assert_eq!(err.kind, FailureKind::BadInput);
    assert!(s.excluded_executors("job-1", 2).is_empty());
}

#[test]
fn lost_executor_map_outputs_are_recomputed_on_survivors() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 2);
    register(&mut s, "b", 2);
    let maps = launches(&s.handle(submit(2, Some(ShuffleKind::Hash), 2), 0));
    let on_a: Vec<_> = maps.iter().filter(|(e, _)| e == "a").collect();
    assert_eq!(on_a.len(), 1);
    succeed(&mut s, &maps[0], 1);
    let reduces = launches(&succeed(&mut s, &maps[1], 2));
    assert_eq!(reduces.len(), 2);
    // "a" dies while reducers run: its map output and its running reducer are gone.
    let lost = Event::ExecutorLost {
        id: "a".into(),
        reason: "stream closed".into(),
    };
    let after = launches(&s.handle(lost, 3));
    let rerun_maps: Vec<_> = after.iter().filter(|(_, t)| t.key.stage_id == 0).collect();
    assert_eq!(rerun_maps.len(), 1, "only the lost map partition reruns");
    assert_eq!(rerun_maps[0].0, "b");
    assert_eq!(rerun_maps[0].1.key.stage_attempt, 1);
    assert_eq!(rerun_maps[0].1.key.partition, on_a[0].1.key.partition);
    // A late result from the dead executor is ignored.
    let reduce_on_a = reduces.iter().find(|(e, _)| e == "a").unwrap();
    assert!(succeed(&mut s, reduce_on_a, 4).is_empty());
    // The reducer on b may finish; the one lost with a waits for the recomputed map output.
    let reduce_on_b = reduces.iter().find(|(e, _)| e == "b").unwrap();
    assert!(done(&succeed(&mut s, reduce_on_b, 5)).is_none());
    let again = launches(&succeed(&mut s, rerun_maps[0], 6));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1.key.partition, reduce_on_a.1.key.partition);
    assert!(again[0].1.inputs.iter().all(|l| l.executor_id == "b"));
    let report = done(&succeed(&mut s, &again[0], 7)).cloned().expect("done");
    assert_eq!(report.tasks_rerun, 2);
    assert_eq!(
        report.rerun.executor_lost, 2,
        "one map output, one running reducer"
    );
    assert_eq!(report.recovery_ms, 4, "from the loss at 3 to the end at 7");
}

#[test]
fn map_outputs_lost_too_often_fail_the_batch() {
    let mut s = Scheduler::new();
    let mut ids = 0;
    let mut add = |s: &mut Scheduler| {
        ids += 1;
        register(s, &format!("e{ids}"), 4);
        format!("e{ids}")
    };
    let mut alive = add(&mut s);
    let mut actions = s.handle(submit(1, Some(ShuffleKind::Hash), 1), 0);
    for round in 0..3 {
        let maps = launches(&actions);
        assert_eq!(maps.len(), 1, "round {round}");
        succeed(&mut s, &maps[0], 1);
        // The map output's executor dies before the reducer is done; a fresh one joins.
        let next = add(&mut s);
        let lost = Event::ExecutorLost {
            id: alive.clone().into(),
            reason: "killed".into(),
        };
        actions = s.handle(lost, 2);
        alive = next;
        if round == 2 {
            let err = failed(&actions).expect("third loss fails the batch");
            assert!(
                err.message
                    .contains("stage 0 of batch 7 lost its map outputs 3 times"),
                "{err}"
            );
        } else {
            // The reducer on the dead executor is gone; the map reruns on the new one.
            assert!(
                launches(&actions)
                    .iter()
                    .any(|(e, t)| *e == alive && t.key.stage_id == 0)
            );
            actions = launches(&actions)
                .into_iter()
                .filter(|(_, t)| t.key.stage_id == 0)
                .map(|(executor, task)| Action::Launch { executor, task })
                .collect();
        }
    }
}

#[test]
fn an_executor_that_keeps_failing_is_excluded_for_a_while() {
    let mut s = Scheduler::with_config(SchedulerConfig {
        exclude_after_failures: 2,
        exclude_for_ms: 1000,
        ..SchedulerConfig::default()
    });
    register(&mut s, "flaky", 4);
    let mut sub = submit(4, None, 1);
    if let Event::SubmitBatch(b) = &mut sub {
        b.max_task_attempts = 10;
    }
    let first = launches(&s.handle(sub, 0));
    assert_eq!(first.len(), 4);
    fail(&mut s, &first[0], true, 1);
    fail(&mut s, &first[1], true, 2);
    assert_eq!(s.excluded_executors("job-1", 2), vec!["flaky".to_string()]);
    // Excluded: nothing launches there even after the backoff.
    assert!(launches(&s.handle(Event::Tick, 500)).is_empty());
    register(&mut s, "good", 4);
    let retried = launches(&s.handle(Event::Tick, 501));
    assert_eq!(retried.len(), 2);
    assert!(retried.iter().all(|(e, _)| e == "good"));
    // The exclusion ends.
    assert!(s.excluded_executors("job-1", 1003).is_empty());
    let actions = s.handle(Event::Tick, 1003);
    let mut report = None;
    for l in retried.iter().chain(&first[2..]) {
        report = done(&succeed(&mut s, l, 1004)).cloned().or(report);
    }
    let _ = actions;
    assert_eq!(report.expect("done").rerun.task_failed, 2);
}

#[test]
fn exclusion_is_per_job() {
    let mut s = Scheduler::with_config(SchedulerConfig {
        exclude_after_failures: 1,
        exclude_for_ms: 1000,
        ..SchedulerConfig::default()
    });
    register(&mut s, "only", 4);
    let first = launches(&s.handle(submit(1, None, 1), 0));
    fail(&mut s, &first[0], true, 1);
    assert_eq!(s.excluded_executors(JOB, 2), vec!["only".to_string()]);
    // Another job's tasks still run there.
    let mut other = submit(2, None, 1);
    if let Event::SubmitBatch(b) = &mut other {
        b.job_id = "job-2".into();
    }
    let theirs = launches(&s.handle(other, 2));
    assert_eq!(theirs.len(), 2);
    assert!(
        theirs
            .iter()
            .all(|(e, t)| e == "only" && t.key.job_id == "job-2")
    );
    assert!(s.excluded_executors("job-2", 2).is_empty());
}

#[test]
fn a_task_whose_executors_keep_dying_fails_the_batch() {
    let mut s = Scheduler::new();
    let mut sub = submit(1, None, 1);
    if let Event::SubmitBatch(b) = &mut sub {
        b.max_task_attempts = 2;
    }
    register(&mut s, "e0", 1);
    let mut running = launches(&s.handle(sub, 0));
    for i in 1..=2 {
        register(&mut s, &format!("e{i}"), 1);
        let lost = Event::ExecutorLost {
            id: running[0].0.clone(),
            reason: "stream closed".into(),
        };
        let actions = s.handle(lost, i);
        if i == 2 {
            let err = failed(&actions).expect("batch failed");
            assert_eq!(err.kind, FailureKind::LostExecutor);
            assert!(err.message.contains("2 executors"), "{err}");
            return;
        }
        running = launches(&actions);
        assert_eq!(running.len(), 1, "rerun after the first loss");
    }
    unreachable!();
}

#[test]
fn a_result_from_an_earlier_run_of_the_batch_is_never_accepted() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 2);
    let old = launches(&s.handle(submit(1, None, 1), 0));
    // The job is stopped while its task runs; the executor is told to abort it.
    let actions = s.handle(Event::CancelJob { job_id: JOB.into() }, 1);
    assert!(actions.contains(&Action::CancelTasks {
        executor: "a".into(),
        job_id: JOB.into()
    }));
    assert_eq!(s.running_tasks_of(JOB), 1, "running until it reports");
    // Resumed: the same batch runs again, with the same attempt numbers.
    let new = launches(&s.handle(submit(1, None, 1), 2));
    assert_eq!(new[0].1.key.task_attempt, old[0].1.key.task_attempt);
    assert_ne!(new[0].1.key.run, old[0].1.key.run);
    assert!(
        done(&succeed(&mut s, &old[0], 3)).is_none(),
        "stale run accepted"
    );
    assert_eq!(s.running_tasks_of(JOB), 1);
    assert!(done(&succeed(&mut s, &new[0], 4)).is_some());
}

#[test]
fn fetch_failure_recomputes_that_map_output() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 2);
    register(&mut s, "b", 2);
    let maps = launches(&s.handle(submit(2, Some(ShuffleKind::Hash), 1), 0));
    succeed(&mut s, &maps[0], 1);
    let reduces = launches(&succeed(&mut s, &maps[1], 2));
    let (e, t) = &reduces[0];
    let actions = s.handle(
        Event::TaskFailed {
            key: t.key.clone(),
            executor: e.clone(),
            failure: Failure::new(FailureKind::Outage, "connection refused"),
            fetch_failure: Some(UnfetchedOutput {
                map_partition: 0,
                executor: maps[0].0.clone(),
            }),
        },
        3,
    );
    let rerun = launches(&actions);
    assert_eq!(rerun.len(), 1);
    assert_eq!(
        (rerun[0].1.key.stage_id, rerun[0].1.key.stage_attempt),
        (0, 1)
    );
}

#[test]
fn range_bounds_come_from_map_samples() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 4);
    let maps = launches(&s.handle(submit(2, Some(ShuffleKind::Range), 2), 0));
    succeed(&mut s, &maps[0], 1);
    let reduces = launches(&succeed(&mut s, &maps[1], 2));
    assert_eq!(reduces.len(), 2);
    // samples [0, 5] and [10, 15]; two partitions -> one boundary at the median.
    assert_eq!(reduces[0].1.range_bounds, vec![vec![10]]);
}

#[test]
fn tasks_wait_for_an_executor() {
    let mut s = Scheduler::new();
    assert!(launches(&s.handle(submit(2, None, 1), 0)).is_empty());
    let l = launches(&register(&mut s, "late", 2));
    assert_eq!(l.len(), 2);
}

#[test]
fn cancelled_job_launches_nothing_more() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 1);
    let first = launches(&s.handle(submit(2, None, 1), 0));
    s.handle(Event::CancelJob { job_id: JOB.into() }, 1);
    assert!(succeed(&mut s, &first[0], 2).is_empty());
    assert_eq!(s.running_tasks(), 0);
}

/// A batch of a running aggregation (stage 1 keeps state), numbered `batch`.
fn stateful_batch(batch: u64) -> Event {
    let Event::SubmitBatch(mut sub) = submit(2, Some(ShuffleKind::Hash), 4) else {
        unreachable!()
    };
    sub.batch_id = batch;
    sub.stages[1].stateful = true;
    Event::SubmitBatch(sub)
}

/// Runs a whole batch, finishing tasks as they launch; returns where each reducer ran.
fn run_batch(s: &mut Scheduler, batch: u64, now: u64) -> BTreeMap<u32, ExecutorId> {
    let mut pending = launches(&s.handle(stateful_batch(batch), now));
    let mut reducers = BTreeMap::new();
    while let Some(l) = pending.pop() {
        if l.1.key.stage_id == 1 {
            reducers.insert(l.1.key.partition, l.0.clone());
        }
        let actions = succeed(s, &l, now);
        pending.extend(launches(&actions));
        if done(&actions).is_some() {
            break;
        }
    }
    reducers
}

#[test]
fn stateful_partitions_return_to_the_executor_holding_their_state() {
    let mut s = Scheduler::new();
    for id in ["a", "b", "c"] {
        register(&mut s, id, 2);
    }
    let first = run_batch(&mut s, 0, 0);
    assert_eq!(first.len(), 4);
    for b in 1..4 {
        assert_eq!(run_batch(&mut s, b, b * 10), first, "batch {b}: same homes");
    }
    // The executor holding partition 0 dies: its partitions move, the others stay put.
    let lost = first[&0].clone();
    s.handle(
        Event::ExecutorLost {
            id: lost.clone(),
            reason: "killed".into(),
        },
        50,
    );
    let after = run_batch(&mut s, 4, 60);
    for (p, e) in &first {
        if *e == lost {
            assert_ne!(&after[p], e, "partition {p} restored elsewhere");
        } else {
            assert_eq!(&after[p], e, "partition {p} kept its home");
        }
    }
    assert_eq!(run_batch(&mut s, 5, 70), after, "new homes stick");
}

/// Found by the chaos suite (seed 20261125): reducers waiting for a slot when the executor
/// holding a map output died were launched without that map's location, so they computed
/// without its rows. A reducer must only launch with every map output of its input.
#[test]
fn waiting_reducers_never_launch_without_a_lost_map_output() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 2);
    register(&mut s, "b", 2);
    let maps = launches(&s.handle(submit(2, Some(ShuffleKind::Hash), 6), 0));
    assert_eq!(maps.len(), 2);
    succeed(&mut s, &maps[0], 1);
    // Both maps done: reducers start, four at a time (two slots each), two wait.
    let first = launches(&succeed(&mut s, &maps[1], 2));
    assert_eq!(first.len(), 4);
    // The executor that ran map 1 dies: its output is gone, its reducer is lost too.
    let lost = maps[1].0.clone();
    let mut launched = launches(&s.handle(
        Event::ExecutorLost {
            id: lost.clone(),
            reason: "killed".into(),
        },
        3,
    ));
    let mut pending: Vec<Launched> = first.into_iter().filter(|(e, _)| *e != lost).collect();
    pending.append(&mut launched);
    let mut now = 4;
    let mut reducers_seen = 0;
    // First launched, first finished: the reducers already running finish before the map
    // that is being recomputed, which frees slots for the waiting reducers.
    while !pending.is_empty() {
        let l = pending.remove(0);
        if l.1.key.stage_id == 1 {
            reducers_seen += 1;
            assert_eq!(
                l.1.inputs.len(),
                2,
                "reducer {:?} launched without every map output: {:?}",
                l.1.key,
                l.1.inputs
            );
        }
        let actions = succeed(&mut s, &l, now);
        now += 1;
        pending.extend(launches(&actions));
        if done(&actions).is_some() {
            break;
        }
    }
    assert!(reducers_seen >= 6, "every reducer ran");
}

/// Chaos seed 20261125: a map output was lost while another map of the same stage still ran on
/// a healthy executor. The stage's attempt went up, the running map's result (from attempt 0)
/// was then ignored as stale, and its task stayed "running" forever: the batch never finished.
#[test]
fn maps_still_running_when_the_stage_attempt_changes_still_count() {
    let mut s = Scheduler::new();
    for e in ["a", "b", "c"] {
        register(&mut s, e, 1);
    }
    let maps = launches(&s.handle(submit(3, Some(ShuffleKind::Hash), 2), 0));
    assert_eq!(maps.len(), 3);
    let on = |e: &str| maps.iter().find(|(x, _)| x == e).unwrap().clone();
    succeed(&mut s, &on("a"), 1);
    let lost = Event::ExecutorLost {
        id: "a".into(),
        reason: "killed".into(),
    };
    assert!(launches(&s.handle(lost, 2)).is_empty(), "no free slot yet");
    let d = Event::ExecutorRegistered {
        id: "d".into(),
        address: "http://d".into(),
        slots: 1,
    };
    let rerun = launches(&s.handle(d, 2));
    assert_eq!(rerun.len(), 1);
    assert_eq!(rerun[0].1.key.stage_attempt, 1);
    // The maps launched in attempt 0 finish after the attempt changed.
    assert!(launches(&succeed(&mut s, &on("b"), 3)).is_empty());
    assert!(launches(&succeed(&mut s, &on("c"), 4)).is_empty());
    let reducers = launches(&succeed(&mut s, &rerun[0], 5));
    assert_eq!(reducers.len(), 2, "every map output exists: reducers start");
    for (_, r) in &reducers {
        let mut attempts: Vec<(u32, ExecutorId, u32)> = r
            .inputs
            .iter()
            .map(|l| (l.map_partition, l.executor_id.clone(), l.stage_attempt))
            .collect();
        attempts.sort();
        let expect = |e: &str, attempt| (on(e).1.key.partition, ExecutorId::from(e), attempt);
        let mut want = vec![expect("b", 0), expect("c", 0)];
        want.push((on("a").1.key.partition, "d".into(), 1));
        want.sort();
        assert_eq!(
            attempts, want,
            "each output is fetched under the attempt that wrote it"
        );
    }
    let mut report = None;
    for (i, r) in reducers.iter().enumerate() {
        report = done(&succeed(&mut s, r, 6 + i as u64)).cloned();
    }
    assert!(report.is_some(), "the batch finishes");
}

/// Another job keeping the executor that holds a state partition busy must not starve it: after
/// the locality wait the partition runs on a free executor (and restores from the checkpoint).
#[test]
fn stateful_tasks_wait_for_their_home_only_for_the_locality_wait() {
    let mut s = Scheduler::new();
    let wait = SchedulerConfig::default().locality_wait_ms;
    register(&mut s, "a", 1);
    let homes = run_batch(&mut s, 0, 0);
    assert!(homes.values().all(|e| e == "a"));
    // Another job takes a's only slot and keeps it.
    let Event::SubmitBatch(mut other) = submit(1, None, 1) else {
        unreachable!()
    };
    other.job_id = "other".into();
    let hog = launches(&s.handle(Event::SubmitBatch(other), 100));
    assert_eq!(hog[0].0, "a");
    s.handle(
        Event::ExecutorRegistered {
            id: "b".into(),
            address: "http://b".into(),
            slots: 1,
        },
        100,
    );
    // The maps run on b; the reducers then wait for a.
    let mut now = 100;
    let mut pending = launches(&s.handle(stateful_batch(1), now));
    let mut ready_at = now;
    while let Some(l) = pending.pop() {
        assert_eq!(l.1.key.stage_id, 0, "no reducer leaves its home yet");
        now += 1;
        ready_at = now;
        pending.extend(launches(&succeed(&mut s, &l, now)));
    }
    assert!(launches(&s.handle(Event::Tick, ready_at + wait - 1)).is_empty());
    assert_eq!(
        s.next_wakeup_ms(ready_at + wait - 1),
        Some(ready_at + wait),
        "the driver wakes when the wait ends"
    );
    let moved = launches(&s.handle(Event::Tick, ready_at + wait));
    assert_eq!(moved.len(), 1, "one free slot on b");
    assert_eq!((moved[0].0.as_str(), moved[0].1.key.stage_id), ("b", 1));
}

/// Tasks waiting only for a free slot need no timer: the driver sleeps until an event.
#[test]
fn no_wakeups_while_tasks_wait_only_for_slots() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 1);
    assert_eq!(launches(&s.handle(submit(3, None, 1), 0)).len(), 1);
    assert_eq!(s.next_wakeup_ms(5), None);
}

/// Scaling down: a draining executor finishes what it runs, gets nothing new, and the batch
/// completes on the others without counting a loss.
#[test]
fn a_draining_executor_gets_no_new_tasks() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 1);
    register(&mut s, "b", 1);
    let first = launches(&s.handle(submit(4, None, 1), 0));
    assert_eq!(first.len(), 2);
    let on_a = first.iter().find(|(e, _)| e == "a").unwrap().clone();
    let on_b = first.iter().find(|(e, _)| e == "b").unwrap().clone();
    s.handle(Event::ExecutorDraining { id: "a".into() }, 1);
    // a's task finishes: its freed slot is not reused.
    assert!(launches(&succeed(&mut s, &on_a, 2)).is_empty());
    let mut next = launches(&succeed(&mut s, &on_b, 3));
    let mut report = None;
    while let Some(l) = next.pop() {
        assert_eq!(l.0, "b");
        let actions = succeed(&mut s, &l, 4);
        report = done(&actions).cloned().or(report);
        next.extend(launches(&actions));
    }
    assert_eq!(report.expect("done").tasks_rerun, 0);
}

/// Two source branches (`clicks` in stage 0, `views` in stage 1) hash-shuffled into one
/// aggregating stage 2.
fn two_branches(clicks: usize, views: usize, partitions: u32) -> Event {
    let map = |id, table| StageSpec {
        id,
        inputs: vec![source(table)],
        output: StageOutput::Shuffle {
            kind: ShuffleKind::Hash,
            partitions,
        },
        stateful: false,
        describe: format!("scan {table}"),
    };
    let splits = |table: &str, n: usize| {
        let splits = (0..n).map(|i| format!("{table}-{i}")).collect();
        (table.to_string(), splits)
    };
    Event::SubmitBatch(BatchSubmission {
        job_id: JOB.into(),
        batch_id: 7,
        stages: vec![
            map(0, "clicks"),
            map(1, "views"),
            StageSpec {
                id: 2,
                inputs: (0..2)
                    .map(|from| StageInput::Shuffle {
                        from,
                        kind: ShuffleKind::Hash,
                    })
                    .collect(),
                output: StageOutput::Sink,
                stateful: false,
                describe: "aggregate -> sink".into(),
            },
        ],
        splits: [splits("clicks", clicks), splits("views", views)].into(),
        max_task_attempts: 3,
        task_backoff_ms: 100,
        task_timeout_ms: 60_000,
        max_stage_attempts: 3,
        watermark_ms: Some(42),
        previous_watermark_ms: None,
    })
}

fn split_of(l: &Launched) -> (u32, String, String) {
    let t = &l.1;
    let show = |v: &Option<String>| v.clone().unwrap_or_default();
    (t.key.stage_id, show(&t.source), show(&t.split))
}

#[test]
fn two_sources_feed_one_shuffle_and_its_reducers_read_both() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 8);
    let maps = launches(&s.handle(two_branches(2, 1, 2), 0));
    let got: Vec<_> = maps.iter().map(split_of).collect();
    assert_eq!(
        got,
        vec![
            (0, "clicks".into(), "clicks-0".into()),
            (0, "clicks".into(), "clicks-1".into()),
            (1, "views".into(), "views-0".into()),
        ],
        "both branches start at once, each task with its table's split"
    );
    assert!(launches(&succeed(&mut s, &maps[0], 1)).is_empty());
    assert!(launches(&succeed(&mut s, &maps[2], 2)).is_empty());
    let reduces = launches(&succeed(&mut s, &maps[1], 3));
    assert_eq!(reduces.len(), 2, "one task per partition of the exchange");
    for (_, r) in &reduces {
        assert_eq!((r.key.stage_id, r.split.as_deref()), (2, None));
        let locs: Vec<_> = r
            .inputs
            .iter()
            .map(|l| (l.stage_id, l.map_partition))
            .collect();
        assert_eq!(
            locs,
            vec![(0, 0), (0, 1), (1, 0)],
            "every map output of both"
        );
    }
    succeed(&mut s, &reduces[0], 4);
    let report = done(&succeed(&mut s, &reduces[1], 5))
        .expect("batch done")
        .clone();
    assert_eq!((report.rows_in, report.rows_out, report.tasks), (30, 10, 5));
}

#[test]
fn a_loss_on_one_branch_recomputes_only_that_branch() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 2);
    let clicks = launches(&s.handle(two_branches(2, 2, 2), 0));
    let views = launches(&register(&mut s, "b", 2));
    let on = |l: &[Launched]| {
        l.iter()
            .map(|t| (t.0.clone(), t.1.key.stage_id))
            .collect::<Vec<_>>()
    };
    assert_eq!(on(&clicks), vec![("a".into(), 0), ("a".into(), 0)]);
    assert_eq!(on(&views), vec![("b".into(), 1), ("b".into(), 1)]);
    let mut launched = Vec::new();
    for t in &clicks {
        launched.extend(launches(&succeed(&mut s, t, 1)));
    }
    // The clicks branch's outputs die with a; the views branch is still running on b.
    launched.extend(launches(&s.handle(
        Event::ExecutorLost {
            id: "a".into(),
            reason: "killed".into(),
        },
        2,
    )));
    for t in &views {
        launched.extend(launches(&succeed(&mut s, t, 3)));
    }
    assert_eq!(
        on(&launched),
        vec![("b".into(), 0), ("b".into(), 0)],
        "only the clicks maps again"
    );
    let mut report = None;
    let mut now = 4;
    while let Some(t) = launched.pop() {
        let actions = succeed(&mut s, &t, now);
        now += 1;
        assert!(launches(&actions).iter().all(|l| l.1.key.stage_id == 2));
        launched.extend(launches(&actions));
        report = report.or(done(&actions).cloned());
    }
    let report = report.expect("batch done");
    assert_eq!(
        (
            report.rows_in,
            report.tasks,
            report.tasks_rerun,
            report.rerun.executor_lost
        ),
        (40, 6, 2, 2),
        "each split counted once; the two clicks maps ran twice"
    );
}

/// The attempts of task `stage.partition` in a trace, as (executor, cause, outcome).
fn attempts_of(trace: &BatchTrace, stage: u32, partition: u32) -> Vec<(String, &str, &str)> {
    trace
        .attempts()
        .filter(|(s, p, _)| (*s, *p) == (stage, partition))
        .map(|(_, _, a)| (a.executor.to_string(), a.cause.name(), a.outcome.name()))
        .collect()
}

#[test]
fn the_model_records_every_attempt_with_its_executor_cause_and_outcome() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 2);
    register(&mut s, "b", 2);
    let maps = launches(&s.handle(submit(2, Some(ShuffleKind::Hash), 2), 0));
    let on_a = maps.iter().find(|(e, _)| e == "a").unwrap().1.key.partition;
    assert!(
        maps.iter().all(|(_, t)| t.watermark_ms == Some(42)),
        "every task gets the batch's logged watermark"
    );
    succeed(&mut s, &maps[0], 1);
    let reduces = launches(&succeed(&mut s, &maps[1], 2));
    let running: Vec<BatchTrace> = s.running_batches().collect();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].ended_ms, None);
    assert_eq!(
        attempts_of(&running[0], 0, on_a),
        [("a".into(), "first", "succeeded")]
    );
    let on_a_reduce = reduces.iter().find(|(e, _)| e == "a").unwrap();
    let reducer = on_a_reduce.1.key.partition;
    let views = s.executor_views();
    assert_eq!(views.len(), 2);
    assert!(views[0].running.contains(&on_a_reduce.1.key), "{views:?}");
    let lost = Event::ExecutorLost {
        id: "a".into(),
        reason: "stream closed".into(),
    };
    let rerun = launches(&s.handle(lost, 3));
    let trace = s.running_batches().next().unwrap();
    assert_eq!(
        attempts_of(&trace, 0, on_a),
        [
            ("a".into(), "first", "succeeded"),
            ("b".into(), "output_lost", "running")
        ]
    );
    let lost_reducer = trace
        .attempts()
        .find(|(st, p, _)| (*st, *p) == (1, reducer))
        .unwrap()
        .2;
    assert_eq!(
        lost_reducer.outcome,
        AttemptOutcome::Lost("stream closed".into())
    );
    assert_eq!(lost_reducer.ended_ms, Some(3));
    assert_eq!(lost_reducer.metrics, BTreeMap::new());
    // Finish everything: the report's trace has the reducer's second attempt, caused by the loss.
    let mut pending = rerun;
    for r in reduces.iter().filter(|(e, _)| e == "b") {
        succeed(&mut s, r, 4);
    }
    let mut report = None;
    while let Some(l) = pending.pop() {
        let actions = succeed(&mut s, &l, 5);
        pending.extend(launches(&actions));
        report = report.or(done(&actions).cloned());
    }
    let trace = report.expect("done").trace;
    assert_eq!(trace.ended_ms, Some(5));
    assert_eq!(
        attempts_of(&trace, 1, reducer),
        [
            ("a".into(), "first", "lost"),
            ("b".into(), "executor_lost", "succeeded")
        ]
    );
    let last = trace.attempts().last().unwrap().2;
    assert_eq!(last.metrics[progress::ROWS_IN], 10);
    let history: Vec<_> = s
        .executor_history()
        .map(|e| (e.executor.as_str(), e.change.name()))
        .collect();
    assert_eq!(
        history,
        [("a", "registered"), ("b", "registered"), ("a", "lost")]
    );
    assert_eq!(s.executor_views().len(), 1);
}

#[test]
fn a_failed_batch_carries_its_trace_and_stateful_homes_show_on_executors() {
    let mut s = Scheduler::new();
    register(&mut s, "a", 4);
    let first = launches(&s.handle(submit(1, None, 1), 0));
    let actions = fail(&mut s, &first[0], false, 9);
    let Some(Action::BatchFailed { trace, .. }) = actions
        .iter()
        .find(|a| matches!(a, Action::BatchFailed { .. }))
    else {
        panic!("failed: {actions:?}")
    };
    assert_eq!(attempts_of(trace, 0, 0), [("a".into(), "first", "failed")]);
    let a = trace.attempts().next().unwrap().2;
    assert!(a.outcome.reason().contains("boom"), "{a:?}");
    run_batch(&mut s, 1, 20);
    let held = &s.executor_views()[0].state_partitions;
    assert_eq!(
        held.len(),
        4,
        "every stateful partition lives on a: {held:?}"
    );
}

#[test]
fn a_wide_batch_on_many_executors_launches_each_task_once_and_spreads_them() {
    // 200 executors x 2 slots, 10,000 map tasks and 200 reducers: every event is handled by
    // looking at what it touches (the stage's pending and idle tasks, the executors with a
    // free slot), so this runs in moments even unoptimized.
    let mut s = Scheduler::new();
    for i in 0..200 {
        register(&mut s, &format!("e{i:03}"), 2);
    }
    let mut queue: std::collections::VecDeque<Launched> =
        launches(&s.handle(submit(10_000, Some(ShuffleKind::Hash), 200), 1)).into();
    assert_eq!(queue.len(), 400, "every slot filled at once");
    let mut per_stage = [
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    ];
    let mut per_executor: BTreeMap<ExecutorId, u32> = BTreeMap::new();
    let mut report = None;
    while let Some(l) = queue.pop_front() {
        let fresh = per_stage[l.1.key.stage_id as usize].insert(l.1.key.partition);
        assert!(
            fresh,
            "task {}.{} launched twice",
            l.1.key.stage_id, l.1.key.partition
        );
        *per_executor.entry(l.0.clone()).or_default() += 1;
        let result = Event::TaskSucceeded {
            key: l.1.key.clone(),
            executor: l.0.clone(),
            output: TaskOutput::default(),
        };
        let actions = s.handle(result, 2);
        report = report.or_else(|| done(&actions).cloned());
        queue.extend(launches(&actions));
    }
    assert_eq!((per_stage[0].len(), per_stage[1].len()), (10_000, 200));
    assert_eq!(report.expect("the batch completed").tasks, 10_200);
    // Each freed slot takes the next task: the work stays spread over every executor.
    assert_eq!(per_executor.len(), 200);
    assert!(
        per_executor.values().all(|n| (45..=57).contains(n)),
        "{per_executor:?}"
    );
}
