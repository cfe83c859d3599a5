//! Generated gRPC types and services of `proto/sluice.proto`.
#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("sluice.v1");

pub mod json;

impl From<sluice_core::FailureKind> for FailureKind {
    fn from(k: sluice_core::FailureKind) -> Self {
        use sluice_core::FailureKind as K;
        match k {
            K::BadInput => FailureKind::BadInput,
            K::BadPlan => FailureKind::BadPlan,
            K::Bug => FailureKind::Bug,
            K::Outage => FailureKind::Outage,
            K::LostExecutor => FailureKind::LostExecutor,
        }
    }
}

impl From<FailureKind> for sluice_core::FailureKind {
    /// An unspecified kind (an older executor) is taken as retryable, as failures used to be.
    fn from(k: FailureKind) -> Self {
        use sluice_core::FailureKind as K;
        match k {
            FailureKind::BadInput => K::BadInput,
            FailureKind::BadPlan => K::BadPlan,
            FailureKind::Bug => K::Bug,
            FailureKind::Outage | FailureKind::Unspecified => K::Outage,
            FailureKind::LostExecutor => K::LostExecutor,
        }
    }
}

impl From<sluice_core::JobState> for JobState {
    fn from(s: sluice_core::JobState) -> Self {
        use sluice_core::JobState as S;
        match s {
            S::Running => JobState::Running,
            S::Waiting => JobState::Waiting,
            S::Finished => JobState::Finished,
            S::Failed => JobState::Failed,
            S::Stopped => JobState::Stopped,
        }
    }
}

impl From<JobState> for sluice_core::JobState {
    /// A value this build does not know reads as failed.
    fn from(s: JobState) -> Self {
        use sluice_core::JobState as S;
        match s {
            JobState::Running => S::Running,
            JobState::Waiting => S::Waiting,
            JobState::Finished => S::Finished,
            JobState::Stopped => S::Stopped,
            JobState::Failed | JobState::Unspecified => S::Failed,
        }
    }
}

impl StopResponse {
    pub fn job_state(&self) -> sluice_core::JobState {
        self.state().into()
    }
}

impl JobStatus {
    pub fn job_state(&self) -> sluice_core::JobState {
        self.state().into()
    }

    pub fn set_job_state(&mut self, s: sluice_core::JobState) {
        self.set_state(s.into());
    }
}

/// A task's progress on the wire.
pub fn progress_to_wire(p: &sluice_core::progress::TaskProgress) -> (Vec<Metric>, Vec<Payload>) {
    use sluice_core::progress::Fold as F;
    let metrics = p
        .metrics
        .iter()
        .map(|(name, m)| Metric {
            name: name.clone(),
            value: m.value,
            fold: match m.fold {
                F::Sum => Fold::Sum,
                F::Min => Fold::Min,
                F::Max => Fold::Max,
            }
            .into(),
        })
        .collect();
    let payloads = p
        .payloads
        .iter()
        .map(|(name, data)| Payload {
            name: name.clone(),
            data: data.clone(),
        })
        .collect();
    (metrics, payloads)
}

/// A task's progress from the wire.
pub fn progress_from_wire(
    metrics: Vec<Metric>,
    payloads: Vec<Payload>,
) -> sluice_core::progress::TaskProgress {
    use sluice_core::progress::{Fold as F, Metric as M};
    let mut p = sluice_core::progress::TaskProgress::default();
    for m in metrics {
        let fold = match m.fold() {
            Fold::Sum => F::Sum,
            Fold::Min => F::Min,
            Fold::Max => F::Max,
        };
        p.record(
            &m.name,
            M {
                value: m.value,
                fold,
            },
        );
    }
    for pl in payloads {
        p.payload(&pl.name, pl.data);
    }
    p
}
