//! The one vocabulary of failures: every error that can end a task, a batch or a job says
//! what kind of failure it is, and the kind alone decides whether a retry can help. Connectors,
//! the SQL runtime, executors, the scheduler and the restart strategy all speak it.

use std::fmt;

/// What went wrong, from the point of view of "would doing it again help?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// The input data cannot be processed: a record that does not decode, a SQL runtime error
    /// on a value (a division by zero, a failed CAST). It fails the same way every time.
    BadInput,
    /// The job's plan or a setting cannot work: invalid SQL or options, a sink setting that
    /// cannot work, an unwritable path, a corrupted checkpoint.
    BadPlan,
    /// A bug in Sluice: a panic, a broken invariant. Rerunning the same code repeats it.
    Bug,
    /// Storage or network unavailable for now; may work on a later attempt.
    Outage,
    /// The executor running the work died or stopped answering; another one may succeed.
    LostExecutor,
}

impl FailureKind {
    pub const ALL: [FailureKind; 5] = [
        FailureKind::BadInput,
        FailureKind::BadPlan,
        FailureKind::Bug,
        FailureKind::Outage,
        FailureKind::LostExecutor,
    ];

    /// Whether another attempt (of the task, or of the job from its checkpoint) can help.
    pub fn retryable(self) -> bool {
        matches!(self, FailureKind::Outage | FailureKind::LostExecutor)
    }

    pub fn name(self) -> &'static str {
        match self {
            FailureKind::BadInput => "bad input",
            FailureKind::BadPlan => "bad plan or setting",
            FailureKind::Bug => "bug",
            FailureKind::Outage => "storage or network outage",
            FailureKind::LostExecutor => "lost executor",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failure with its kind: what every layer hands up to the next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({kind}; {})", if kind.retryable() { "a retry may help" } else { "a retry cannot help" })]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
        }
    }

    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }

    /// The same failure with `context: ` in front of its message.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Failure {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }
}

/// What a panic said (its payload is a `&str` or a `String` when it came from `panic!`).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Whether an object store error can go away by itself.
#[cfg(feature = "store")]
pub fn store_failure_kind(e: &object_store::Error) -> FailureKind {
    use object_store::Error as E;
    match e {
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented
        | E::UnknownConfigurationKey { .. } => FailureKind::BadPlan,
        E::Generic { source, .. } if io_refused(source.as_ref()) => FailureKind::BadPlan,
        _ => FailureKind::Outage,
    }
}

/// A local store reports an unwritable path as a generic error around an io::Error.
#[cfg(feature = "store")]
fn io_refused(mut e: &(dyn std::error::Error + 'static)) -> bool {
    loop {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            // Permanent: retrying the same write cannot get past any of these.
            if matches!(
                io.kind(),
                K::PermissionDenied | K::NotADirectory | K::IsADirectory | K::ReadOnlyFilesystem
            ) {
                return true;
            }
        }
        match e.source() {
            Some(inner) => e = inner,
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outages_and_lost_executors_are_retried() {
        let retried: Vec<_> = FailureKind::ALL
            .into_iter()
            .filter(|k| k.retryable())
            .collect();
        assert_eq!(
            retried,
            vec![FailureKind::Outage, FailureKind::LostExecutor]
        );
        let f = Failure::new(FailureKind::BadInput, "Divide by zero error").context("task 0.1");
        assert_eq!(
            f.to_string(),
            "task 0.1: Divide by zero error (bad input; a retry cannot help)"
        );
    }
}
