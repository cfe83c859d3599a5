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
