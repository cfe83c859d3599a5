//! Generated gRPC types and services of `proto/sluice.proto`.
#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("sluice.v1");

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
