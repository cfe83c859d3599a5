//! Executors, running batches, and the single `handle` entry point.

use crate::batch::{BatchReport, BatchRun, BatchSubmission, TaskOutput, TaskRun, TaskState};
use crate::model::{
    AttemptOutcome, BatchTrace, EXECUTOR_HISTORY, ExecutorChange, ExecutorEvent, ExecutorView,
    LaunchCause,
};
use sluice_core::progress::{NONEMPTY_PARTITIONS as NONEMPTY, has_partition};
use sluice_core::{BatchId, ExecutorId, Failure, JobId, StageOutput, StatePartition, range_bounds};
use std::collections::{BTreeMap, BTreeSet};

/// One attempt of one task. Every launch and every result carries it; a result whose key does
/// not match what the scheduler is waiting for is stale and ignored.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskKey {
    pub job_id: JobId,
    /// The run of the batch this launch belongs to, unique within the scheduler: a batch run
    /// again (after a stop and a resume, or a failure and a restart) never accepts a result
    /// from an earlier run, even one with the same attempt numbers.
    pub run: u64,
    pub batch_id: BatchId,
    pub stage_id: u32,
    pub stage_attempt: u32,
    pub partition: u32,
    pub task_attempt: u32,
}

/// Where one map partition's shuffle output can be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOutputLocation {
    /// The stage that wrote it (a stage may read several upstream stages' exchanges).
    pub stage_id: u32,
    pub map_partition: u32,
    pub stage_attempt: u32,
    pub executor_id: ExecutorId,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLaunch {
    pub key: TaskKey,
    /// Source split (JSON) for a task of a stage that reads sources.
    pub split: Option<String>,
    /// The source table that split belongs to.
    pub source: Option<String>,
    /// Per static table the stage joins, its files (JSON splits) in this batch.
    pub broadcast: BTreeMap<String, Vec<String>>,
    /// Map outputs to fetch, for a stage that reads a shuffle.
    pub inputs: Vec<MapOutputLocation>,
    pub range_bounds: Vec<Vec<u8>>,
    /// Partitions of the shuffle this task writes (0 when it writes the sink).
    pub output_partitions: u32,
    pub timeout_ms: u64,
    pub watermark_ms: Option<i64>,
    pub previous_watermark_ms: Option<i64>,
}

/// A map output a reducer could not fetch, and the executor that should have served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfetchedOutput {
    pub map_partition: u32,
    pub executor: ExecutorId,
}

#[derive(Debug, Clone)]
pub enum Event {
    ExecutorRegistered {
        id: ExecutorId,
        address: String,
        slots: u32,
    },
    ExecutorLost {
        id: ExecutorId,
        reason: String,
    },
    SubmitBatch(BatchSubmission),
    TaskSucceeded {
        key: TaskKey,
        executor: ExecutorId,
        output: TaskOutput,
    },
    TaskFailed {
        key: TaskKey,
        executor: ExecutorId,
        /// What went wrong; its kind decides whether the task is retried.
        failure: Failure,
        /// A shuffle block could not be fetched.
        fetch_failure: Option<UnfetchedOutput>,
    },
    CancelJob {
        job_id: JobId,
    },
    /// The executor is shutting down (SIGTERM): it keeps its running tasks and map outputs
    /// but takes no new task; its state partitions move elsewhere.
    ExecutorDraining {
        id: ExecutorId,
    },
    /// Time passed: pending retries whose backoff elapsed may launch.
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Launch {
        executor: ExecutorId,
        task: TaskLaunch,
    },
    BatchDone {
        job_id: JobId,
        batch_id: BatchId,
        report: BatchReport,
    },
    BatchFailed {
        job_id: JobId,
        batch_id: BatchId,
        /// Its kind tells the job's restart strategy whether a rerun can help.
        failure: Failure,
        /// What ran, up to the failure.
        trace: Box<BatchTrace>,
    },
    /// The job was cancelled: the executor should abort its running tasks of the job.
    CancelTasks { executor: ExecutorId, job_id: JobId },
}

/// Cluster-wide scheduling policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Consecutive retryable task failures of one job after which an executor gets no more of
    /// that job's tasks for a while.
    pub exclude_after_failures: u32,
    /// How long an excluded executor gets no tasks of that job.
    pub exclude_for_ms: u64,
    /// How long a stateful task waits for the busy executor holding its state before it runs
    /// elsewhere (restoring from the checkpoint), so another job cannot starve it.
    pub locality_wait_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            exclude_after_failures: 3,
            exclude_for_ms: 30_000,
            locality_wait_ms: 3_000,
        }
    }
}

#[derive(Debug, Clone)]
struct ExecutorState {
    address: String,
    slots: u32,
    running: BTreeSet<TaskKey>,
    draining: bool,
    registered_ms: u64,
}

/// An executor as far as one job is concerned (exclusion is per job).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct JobExecutor {
    job: JobId,
    executor: ExecutorId,
}

/// An executor's record of failing one job's tasks. Exclusion is per job, so one job's bad
/// input or broken sink never slows another job down.
#[derive(Debug, Clone, Default)]
struct Exclusion {
    consecutive_failures: u32,
    until_ms: u64,
}

impl ExecutorState {
    fn free_slots(&self) -> usize {
        if self.draining {
            return 0;
        }
        (self.slots as usize).saturating_sub(self.running.len())
    }

    fn has_free_slot(&self) -> bool {
        self.free_slots() > 0
    }
}

#[derive(Debug, Default)]
pub struct Scheduler {
    config: SchedulerConfig,
    executors: BTreeMap<ExecutorId, ExecutorState>,
    /// Executors declared dead: anything they send later is ignored.
    dead: BTreeSet<ExecutorId>,
    /// Executor losses so far (a batch looks for outputs on dead executors after each).
    losses: u64,
    /// One running batch per job (batches of a job run one at a time).
    batches: BTreeMap<JobId, BatchRun>,
    /// Which executor holds each stateful partition's latest state in memory.
    state_homes: BTreeMap<StatePartition, ExecutorId>,
    exclusions: BTreeMap<JobExecutor, Exclusion>,
    /// The run number the next submitted batch gets.
    next_run: u64,
    /// Executors' registrations, drains and losses, oldest first (bounded).
    history: std::collections::VecDeque<ExecutorEvent>,
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_config(config: SchedulerConfig) -> Self {
        Scheduler {
            config,
            ..Self::default()
        }
    }

    /// Executors currently excluded from `job`'s tasks for failing them.
    pub fn excluded_executors(&self, job: &str, now_ms: u64) -> Vec<ExecutorId> {
        self.exclusions_by_job(now_ms)
            .remove(job)
            .unwrap_or_default()
    }

    /// Every job's excluded executors (alive ones only).
    pub fn exclusions_by_job(&self, now_ms: u64) -> BTreeMap<JobId, Vec<ExecutorId>> {
        let mut by_job: BTreeMap<JobId, Vec<ExecutorId>> = BTreeMap::new();
        for (JobExecutor { job, executor }, x) in &self.exclusions {
            if x.until_ms > now_ms && self.executors.contains_key(executor) {
                by_job
                    .entry(job.clone())
                    .or_default()
                    .push(executor.clone());
            }
        }
        by_job
    }

    pub fn alive_executors(&self) -> usize {
        self.executors.len()
    }

    /// The live executors, with their running tasks and the state partitions they hold.
    pub fn executor_views(&self) -> Vec<ExecutorView> {
        self.executors
            .iter()
            .map(|(id, e)| ExecutorView {
                id: id.clone(),
                address: e.address.clone(),
                slots: e.slots,
                running: e.running.iter().cloned().collect(),
                state_partitions: self
                    .state_homes
                    .iter()
                    .filter(|(_, h)| *h == id)
                    .map(|(p, _)| p.clone())
                    .collect(),
                draining: e.draining,
                registered_ms: e.registered_ms,
            })
            .collect()
    }

    /// Executors' registrations, drains and losses, oldest first.
    pub fn executor_history(&self) -> impl Iterator<Item = &ExecutorEvent> {
        self.history.iter()
    }

    /// The batch each job is running now, as far as it got.
    pub fn running_batches(&self) -> impl Iterator<Item = BatchTrace> + '_ {
        self.batches.values().map(|b| b.trace(None))
    }

    fn record(&mut self, executor: &ExecutorId, change: ExecutorChange, now_ms: u64) {
        if self.history.len() >= EXECUTOR_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(ExecutorEvent {
            at_ms: now_ms,
            executor: executor.clone(),
            change,
        });
    }

    pub fn running_tasks(&self) -> usize {
        self.executors.values().map(|e| e.running.len()).sum()
    }

    /// Tasks of `job` still running on live executors (a cancelled job's until they report).
    pub fn running_tasks_of(&self, job: &str) -> usize {
        self.executors
            .values()
            .flat_map(|e| e.running.iter())
            .filter(|k| k.job_id == job)
            .count()
    }

    /// The next time, after `now_ms`, at which a pending task could launch without any event
    /// arriving (a backoff, a locality wait or an exclusion ends), so the driver knows when to
    /// send a Tick. Only future times: a task waiting for a free slot waits for an event.
    pub fn next_wakeup_ms(&self, now_ms: u64) -> Option<u64> {
        let wait = self.config.locality_wait_ms;
        let stages = || self.batches.values().flat_map(|b| b.stages.iter());
        if stages().all(|s| s.pending().next().is_none()) {
            return None;
        }
        let task_times = stages()
            .flat_map(|s| {
                // A stateful task's locality wait ends `wait` after it became pending.
                let locality = s.spec.stateful.then(|| {
                    s.first_pending_from((now_ms + 1).saturating_sub(wait))
                        .map(|t| t + wait)
                });
                [s.first_pending_from(now_ms + 1), locality.flatten()]
            })
            .flatten()
            .filter(|t| *t > now_ms)
            .min();
        let exclusion_ends = self
            .exclusions
            .values()
            .map(|x| x.until_ms)
            .filter(|t| *t > now_ms)
            .min();
        task_times.into_iter().chain(exclusion_ends).min()
    }

    pub fn handle(&mut self, event: Event, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::ExecutorRegistered { id, address, slots } => {
                self.dead.remove(&id);
                self.record(&id, ExecutorChange::Registered, now_ms);
                self.executors.insert(
                    id,
                    ExecutorState {
                        address,
                        slots: slots.max(1),
                        running: BTreeSet::new(),
                        draining: false,
                        registered_ms: now_ms,
                    },
                );
            }
            Event::ExecutorDraining { id } => {
                if let Some(e) = self.executors.get_mut(&id) {
                    e.draining = true;
                    self.state_homes.retain(|_, h| *h != id);
                    self.record(&id, ExecutorChange::Draining, now_ms);
                }
            }
            Event::ExecutorLost { id, reason } => self.executor_lost(&id, &reason, now_ms),
            Event::SubmitBatch(sub) => {
                let job = sub.job_id.clone();
                self.next_run += 1;
                self.batches
                    .insert(job, BatchRun::new(sub, self.next_run, now_ms));
            }
            Event::TaskSucceeded {
                key,
                executor,
                output,
            } => self.task_succeeded(key, executor, output, now_ms),
            Event::TaskFailed {
                key,
                executor,
                failure,
                fetch_failure,
            } => {
                if let Some(a) = self.task_failed(key, executor, failure, fetch_failure, now_ms) {
                    actions.push(a);
                }
            }
            Event::CancelJob { job_id } => {
                self.batches.remove(&job_id);
                self.state_homes.retain(|p, _| p.job != job_id);
                self.exclusions.retain(|k, _| k.job != job_id);
                for (executor, e) in &self.executors {
                    if e.running.iter().any(|k| k.job_id == job_id) {
                        actions.push(Action::CancelTasks {
                            executor: executor.clone(),
                            job_id: job_id.clone(),
                        });
                    }
                }
            }
            Event::Tick => {}
        }
        self.fail_lost_batches(now_ms, &mut actions);
        self.finish_batches(now_ms, &mut actions);
        self.refresh(now_ms);
        self.dispatch(now_ms, &mut actions);
        actions
    }

    /// The one path for a dead executor: its running tasks and its map outputs are lost.
    fn executor_lost(&mut self, id: &ExecutorId, reason: &str, now_ms: u64) {
        if self.executors.remove(id).is_none() {
            return;
        }
        tracing::warn!(executor = %id, reason, "executor lost");
        self.record(id, ExecutorChange::Lost(reason.to_string()), now_ms);
        self.dead.insert(id.clone());
        self.losses += 1;
        // Its state partitions are restored from the checkpoint wherever they run next.
        self.state_homes.retain(|_, e| e != id);
        for batch in self.batches.values_mut() {
            let mut lost = 0;
            // Downstream first (ids are topological): a reader's lost outputs make the stage it
            // reads needed again.
            for s in (0..batch.stages.len()).rev() {
                let outputs_matter = batch.stages[s].writes_shuffle() && batch.needed(s);
                let stage = &mut batch.stages[s];
                let mut lost_output = false;
                for p in 0..stage.tasks.len() {
                    match stage.tasks[p].state() {
                        // A task that kills its executor would kill every executor: its loss
                        // counts against the task's attempts (as spark.task.maxFailures does).
                        TaskState::Running { executor, .. } if executor == id => {
                            stage.set_state(p, TaskState::Idle);
                            let task = &mut stage.tasks[p];
                            task.failures += 1;
                            task.lost_with_executor = Some(reason.to_string());
                            let outcome = AttemptOutcome::Lost(reason.to_string());
                            task.ended(outcome, LaunchCause::ExecutorLost, now_ms);
                            batch.lost_with_executors.push((s, p));
                            lost += 1;
                        }
                        // Sink output is durable; only shuffle outputs die with their executor,
                        // and only matter while the next stage still needs them.
                        TaskState::Done { executor, .. } if outputs_matter && executor == id => {
                            stage.output_lost(p, LaunchCause::OutputLost);
                            lost_output = true;
                            lost += 1;
                        }
                        _ => {}
                    }
                }
                if lost_output {
                    stage.attempt += 1;
                }
            }
            if lost > 0 {
                batch.rerun.executor_lost += lost;
                batch.lost_work(now_ms);
            }
        }
    }

    /// Finds the batch and task a result is about, if it is the launch we are waiting for.
    /// A launch is known by its task attempt, which never repeats, so a map launched before its
    /// stage's attempt went up (another map's output was lost) still counts: its output is
    /// valid, stored under the stage attempt it ran in. Ignoring it would leave the task
    /// "running" forever.
    fn current_task(&mut self, key: &TaskKey, executor: &str) -> Option<(&mut BatchRun, usize)> {
        let batch = self.batches.get_mut(&key.job_id)?;
        if batch.sub.batch_id != key.batch_id || batch.run != key.run {
            return None;
        }
        let s = key.stage_id as usize;
        let stage = batch.stages.get(s)?;
        let task = stage.tasks.get(key.partition as usize)?;
        match task.state() {
            TaskState::Running {
                attempt,
                executor: e,
            } if *attempt == key.task_attempt && e == executor => Some((batch, s)),
            _ => None,
        }
    }

    fn release_slot(&mut self, key: &TaskKey, executor: &str) -> bool {
        if self.dead.contains(executor) {
            tracing::info!(?key, executor, "ignoring result from a dead executor");
            return false;
        }
        if let Some(e) = self.executors.get_mut(executor) {
            e.running.remove(key);
        }
        true
    }

    fn task_succeeded(
        &mut self,
        key: TaskKey,
        executor: ExecutorId,
        output: TaskOutput,
        now_ms: u64,
    ) {
        if !self.release_slot(&key, &executor) {
            return;
        }
        self.exclusions.remove(&JobExecutor {
            job: key.job_id.clone(),
            executor: executor.clone(),
        });
        let Some((batch, s)) = self.current_task(&key, &executor) else {
            tracing::debug!(?key, "ignoring stale task result");
            return;
        };
        // Reducers fetch the output under the attempt that wrote it.
        let stage_attempt = key.stage_attempt;
        if batch.stages[s].spec.stateful {
            let home = StatePartition {
                job: key.job_id.clone(),
                stage: key.stage_id,
                partition: key.partition,
            };
            self.state_homes.insert(home, executor.clone());
        }
        let Some((batch, s)) = self.current_task(&key, &executor) else {
            return;
        };
        let p = key.partition as usize;
        let state = TaskState::Done {
            executor,
            stage_attempt,
        };
        batch.stages[s].set_state(p, state);
        let task = &mut batch.stages[s].tasks[p];
        task.ended(AttemptOutcome::Succeeded, LaunchCause::OutputLost, now_ms);
        if let Some(a) = task.attempts.last_mut() {
            a.metrics = output
                .metrics
                .iter()
                .map(|(n, m)| (n.clone(), m.value))
                .collect();
        }
        task.output = Some(output);
        let stage = &mut batch.stages[s];
        if let StageOutput::Shuffle {
            kind: sluice_core::ShuffleKind::Range,
            partitions,
        } = stage.spec.output
            && stage.range_bounds.is_none()
            && stage.all_done()
        {
            let samples = stage
                .tasks
                .iter()
                .filter_map(|t| t.output.as_ref())
                .flat_map(|o| {
                    o.payloads(sluice_core::progress::KEY_SAMPLE)
                        .map(<[u8]>::to_vec)
                })
                .collect();
            stage.range_bounds = Some(range_bounds(samples, partitions));
        }
    }

    fn task_failed(
        &mut self,
        key: TaskKey,
        executor: ExecutorId,
        failure: Failure,
        fetch_failure: Option<UnfetchedOutput>,
        now_ms: u64,
    ) -> Option<Action> {
        if !self.release_slot(&key, &executor) {
            return None;
        }
        if let Some(UnfetchedOutput {
            executor: lost_on, ..
        }) = fetch_failure
        {
            self.fetch_failed(&key, &executor, &lost_on, &failure, now_ms);
            return None;
        }
        // Only a failure a retry may fix says something about the executor; bad input fails
        // the same way everywhere and must not exclude healthy executors.
        if failure.retryable() {
            self.count_against(&key.job_id, &executor, now_ms);
        }
        let (batch, s) = self.current_task(&key, &executor)?;
        let (job_id, batch_id) = (batch.sub.job_id.clone(), batch.sub.batch_id);
        batch.rerun.task_failed += 1;
        let max_attempts = batch.sub.max_task_attempts;
        let task = &mut batch.stages[s].tasks[key.partition as usize];
        task.failures += 1;
        let outcome = AttemptOutcome::Failed(failure.to_string());
        task.ended(outcome, LaunchCause::TaskFailed, now_ms);
        if !failure.retryable() || task.failures >= max_attempts {
            let why = if failure.retryable() {
                format!(" (failed {} times)", task.failures)
            } else {
                String::new()
            };
            let b = self.batches.remove(&job_id).expect("present");
            return Some(Action::BatchFailed {
                job_id,
                batch_id,
                failure: failure.context(format!(
                    "task {}.{} of batch {batch_id}{why}",
                    key.stage_id, key.partition
                )),
                trace: Box::new(b.trace(Some(now_ms))),
            });
        }
        let backoff = batch.sub.task_backoff_ms << (task.failures - 1).min(16);
        tracing::warn!(
            ?key,
            %executor,
            "task failed, retrying in {backoff} ms: {failure}"
        );
        let state = TaskState::Pending {
            not_before_ms: now_ms + backoff,
            avoid: Some(executor),
        };
        batch.stages[s].set_state(key.partition as usize, state);
        None
    }

    /// The reducer could not read a map output: treat that executor's outputs as lost and put
    /// the reducer back to wait for their recomputation.
    fn fetch_failed(
        &mut self,
        key: &TaskKey,
        executor: &str,
        lost_on: &str,
        failure: &Failure,
        now_ms: u64,
    ) {
        tracing::warn!(?key, executor = %lost_on, "shuffle fetch failed: {failure}");
        let Some((batch, s)) = self.current_task(key, executor) else {
            return;
        };
        batch.stages[s].set_state(key.partition as usize, TaskState::Idle);
        let task = &mut batch.stages[s].tasks[key.partition as usize];
        let outcome = AttemptOutcome::FetchFailed(failure.to_string());
        task.ended(outcome, LaunchCause::FetchFailed, now_ms);
        batch.rerun.fetch_failed += 1;
        batch.lost_work(now_ms);
        // An executor that cannot serve one block has lost them all, of every upstream.
        let upstreams: Vec<usize> = batch.upstreams(s).collect();
        for up in upstreams {
            let prev = &mut batch.stages[up];
            let mut lost = 0;
            for p in 0..prev.tasks.len() {
                if matches!(prev.tasks[p].state(), TaskState::Done { executor, .. } if executor == lost_on)
                {
                    prev.output_lost(p, LaunchCause::FetchFailed);
                    lost += 1;
                }
            }
            if lost > 0 {
                prev.attempt += 1;
                batch.rerun.fetch_failed += lost;
            }
        }
    }

    /// One more retryable failure of `job`'s tasks on `executor`; enough in a row exclude it
    /// from that job for a while.
    fn count_against(&mut self, job: &JobId, executor: &ExecutorId, now_ms: u64) {
        let config = self.config;
        let x = self
            .exclusions
            .entry(JobExecutor {
                job: job.clone(),
                executor: executor.clone(),
            })
            .or_default();
        x.consecutive_failures += 1;
        if config.exclude_after_failures > 0
            && x.consecutive_failures >= config.exclude_after_failures
        {
            tracing::warn!(
                %job,
                %executor,
                failures = x.consecutive_failures,
                "excluding executor from the job for {} ms",
                config.exclude_for_ms
            );
            x.until_ms = now_ms + config.exclude_for_ms;
            x.consecutive_failures = 0;
        }
    }

    /// Fails the batches that executor losses doomed ([`BatchRun::lost_too_often`]).
    fn fail_lost_batches(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let failed: Vec<(JobId, Failure)> = self
            .batches
            .iter()
            .filter_map(|(job, b)| Some((job.clone(), b.lost_too_often()?)))
            .collect();
        for (job_id, failure) in failed {
            let b = self.batches.remove(&job_id).expect("present");
            actions.push(Action::BatchFailed {
                job_id,
                batch_id: b.sub.batch_id,
                failure,
                trace: Box::new(b.trace(Some(now_ms))),
            });
        }
    }

    fn finish_batches(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let done: Vec<JobId> = self
            .batches
            .iter()
            .filter(|(_, b)| b.is_complete())
            .map(|(j, _)| j.clone())
            .collect();
        for job in done {
            let b = self.batches.remove(&job).expect("present");
            actions.push(Action::BatchDone {
                job_id: job,
                batch_id: b.sub.batch_id,
                report: b.report(now_ms),
            });
        }
    }

    /// Makes idle tasks pending where their inputs exist and their output is still needed.
    fn refresh(&mut self, now_ms: u64) {
        for batch in self.batches.values_mut() {
            // Outputs left on a dead executor while nobody needed them are lost once they are
            // needed again: looked for after an executor loss or a task that went back.
            let reopened = batch.stages.iter().any(|s| s.reopened);
            if reopened || batch.losses_seen != self.losses {
                batch.losses_seen = self.losses;
                for stage in &mut batch.stages {
                    stage.reopened = false;
                }
                for s in (0..batch.stages.len()).rev() {
                    if !(batch.stages[s].writes_shuffle() && batch.needed(s)) {
                        continue;
                    }
                    let stage = &mut batch.stages[s];
                    let mut lost = 0;
                    for p in 0..stage.tasks.len() {
                        if matches!(stage.tasks[p].state(), TaskState::Done { executor, .. } if self.dead.contains(executor))
                        {
                            stage.output_lost(p, LaunchCause::OutputLost);
                            lost += 1;
                        }
                    }
                    if lost > 0 {
                        stage.attempt += 1;
                        batch.rerun.executor_lost += lost;
                        batch.lost_work(now_ms);
                    }
                }
            }
            for s in 0..batch.stages.len() {
                if !batch.needed(s) || !batch.inputs_ready(s) {
                    continue;
                }
                let stage = &mut batch.stages[s];
                for p in stage.idle() {
                    let state = TaskState::Pending {
                        not_before_ms: now_ms,
                        avoid: None,
                    };
                    stage.set_state(p as usize, state);
                }
            }
        }
    }

    fn dispatch(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        // Executors with a free slot; once none is left nothing more can launch in this turn.
        let mut free: Vec<ExecutorId> = self
            .executors
            .iter()
            .filter(|(_, e)| e.has_free_slot())
            .map(|(id, _)| id.clone())
            .collect();
        let homes = &self.state_homes;
        for batch in self.batches.values_mut() {
            let job = batch.sub.job_id.clone();
            let excluded: BTreeSet<&str> = self
                .exclusions
                .iter()
                .filter(|(k, x)| k.job == job && x.until_ms > now_ms)
                .map(|(k, _)| k.executor.as_ref())
                .collect();
            let excluded = |e: &str| excluded.contains(e);
            for s in 0..batch.stages.len() {
                // A reducer launches only with every map output of its input: one that
                // waited for a slot while a map output was lost waits for its recompute
                // (launching it would silently drop that map's rows).
                if free.is_empty() || !batch.upstreams_done(s) {
                    continue;
                }
                // Walked one at a time: a turn usually launches one task of many pending.
                let mut next = batch.stages[s].next_pending(0);
                while let Some(p) = next.map(|p| p as usize) {
                    next = batch.stages[s].next_pending(p as u32 + 1);
                    let TaskState::Pending {
                        not_before_ms,
                        avoid,
                    } = batch.stages[s].tasks[p].state()
                    else {
                        continue;
                    };
                    if *not_before_ms > now_ms {
                        continue;
                    }
                    // A stateful partition waits for the executor holding its state while that
                    // one is healthy: restoring elsewhere costs more than waiting for a slot.
                    let home = batch.stages[s]
                        .spec
                        .stateful
                        .then(|| {
                            homes.get(&StatePartition {
                                job: batch.sub.job_id.clone(),
                                stage: s as u32,
                                partition: p as u32,
                            })
                        })
                        .flatten()
                        .filter(|h| {
                            avoid.as_deref() != Some(h.as_str())
                                && self.executors.contains_key(*h)
                                && !excluded(h)
                        });
                    let waited = now_ms - *not_before_ms;
                    let executor = match home {
                        Some(h) if self.executors[h].has_free_slot() => h.clone(),
                        Some(_) if waited < self.config.locality_wait_ms => continue,
                        _ => {
                            match pick_executor(&self.executors, &free, avoid.as_deref(), &excluded)
                            {
                                Some(e) => e,
                                None => continue,
                            }
                        }
                    };
                    let launch = build_launch(batch, s, p, &self.executors);
                    let stage = &mut batch.stages[s];
                    stage.tasks[p].launched(&launch.key, &executor, now_ms);
                    stage.tasks[p].launches += 1;
                    let running = TaskState::Running {
                        attempt: launch.key.task_attempt,
                        executor: executor.clone(),
                    };
                    stage.set_state(p, running);
                    let e = self.executors.get_mut(&executor).expect("picked");
                    e.running.insert(launch.key.clone());
                    if !e.has_free_slot() {
                        free.retain(|f| *f != executor);
                    }
                    actions.push(Action::Launch {
                        executor,
                        task: launch,
                    });
                    if free.is_empty() {
                        break;
                    }
                }
            }
        }
    }
}

/// The executor with the most free slots among `free`, the first by id on a tie, other than
/// `avoid` when there is another.
fn pick_executor(
    executors: &BTreeMap<ExecutorId, ExecutorState>,
    free: &[ExecutorId],
    avoid: Option<&str>,
    excluded: &impl Fn(&str) -> bool,
) -> Option<ExecutorId> {
    let slots = |id: &ExecutorId| executors.get(id).map_or(0, ExecutorState::free_slots);
    let best = |skip: Option<&str>| {
        free.iter()
            .filter(|id| slots(id) > 0 && !excluded(id) && Some(id.as_str()) != skip)
            .max_by_key(|id| (slots(id), std::cmp::Reverse((*id).clone())))
            .cloned()
    };
    best(avoid).or_else(|| best(None))
}

fn build_launch(
    batch: &BatchRun,
    s: usize,
    p: usize,
    executors: &BTreeMap<ExecutorId, ExecutorState>,
) -> TaskLaunch {
    let stage = &batch.stages[s];
    let key = TaskKey {
        job_id: batch.sub.job_id.clone(),
        run: batch.run,
        batch_id: batch.sub.batch_id,
        stage_id: s as u32,
        stage_attempt: stage.attempt,
        partition: p as u32,
        task_attempt: stage.tasks[p].launches,
    };
    let mut inputs = Vec::new();
    let mut range_bounds = Vec::new();
    for up in batch.upstreams(s) {
        let prev = &batch.stages[up];
        // A map output known to hold no rows for partition p is not fetched at all.
        let has_rows = |t: &&TaskRun| {
            let bits = t.output.as_ref().and_then(|o| o.payloads(NONEMPTY).next());
            bits.is_none_or(|bits| has_partition(bits, p as u32))
        };
        inputs.extend(
            prev.tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| has_rows(t))
                .filter_map(|(m, t)| match t.state() {
                    TaskState::Done {
                        executor,
                        stage_attempt,
                    } => Some(MapOutputLocation {
                        stage_id: up as u32,
                        map_partition: m as u32,
                        stage_attempt: *stage_attempt,
                        executor_id: executor.clone(),
                        address: executors
                            .get(executor)
                            .map(|e| e.address.clone())
                            .unwrap_or_default(),
                    }),
                    _ => None,
                }),
        );
        if let Some(bounds) = &prev.range_bounds {
            range_bounds = bounds.clone();
        }
    }
    let split = batch.source_split(s, p);
    let broadcast = stage
        .spec
        .broadcasts()
        .map(|t| {
            let files = batch.sub.splits.get(t).cloned().unwrap_or_default();
            (t.to_string(), files)
        })
        .collect();
    TaskLaunch {
        key,
        broadcast,
        split: split.map(|(_, split)| split.to_string()),
        source: split.map(|(table, _)| table.to_string()),
        inputs,
        range_bounds,
        output_partitions: match stage.spec.output {
            StageOutput::Shuffle { partitions, .. } => partitions,
            StageOutput::Sink => 0,
        },
        timeout_ms: batch.sub.task_timeout_ms,
        watermark_ms: batch.sub.watermark_ms,
        previous_watermark_ms: batch.sub.previous_watermark_ms,
    }
}

#[cfg(test)]
mod tests;
