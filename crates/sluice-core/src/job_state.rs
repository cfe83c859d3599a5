//! A job's lifecycle state, one enum for the driver, the wire and the CLI.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Running,
    /// Running, but no executor is registered to run its tasks.
    Waiting,
    Finished,
    Failed,
    Stopped,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Running,
        JobState::Waiting,
        JobState::Finished,
        JobState::Failed,
        JobState::Stopped,
    ];

    /// The name shown to people and kept in a checkpoint's `final` record.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Waiting => "waiting",
            JobState::Finished => "finished",
            JobState::Failed => "failed",
            JobState::Stopped => "stopped",
        }
    }

    pub fn from_name(name: &str) -> Option<JobState> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Still running its batches (or waiting for an executor to run them).
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Running | JobState::Waiting)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in JobState::ALL {
            assert_eq!(JobState::from_name(s.name()), Some(s));
        }
        assert_eq!(JobState::from_name("exploded"), None);
    }
}
