//! The transitions an attempt reports, typed: callers build a [`StatusUpdate`]
//! from an [`Attempt`] and a [`Transition`], never field by field.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{ProgressReport, StatusUpdate};
use crate::ledger::Status;

/// Which attempt of which job a transition or progress report belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub id: Uuid,
    /// The attempt's fencing token: the writer never lets an older one win.
    pub token: i64,
    /// 1 for the first attempt.
    pub number: i32,
}

/// The transitions an attempt reports, each with what it carries. The status
/// writer takes them as [`StatusUpdate`]s built by [`StatusUpdate::new`], so no
/// caller spells out a status with the fields that go with it.
#[derive(Debug, Clone)]
pub enum Transition {
    /// The attempt took its lease and starts.
    Running,
    Succeeded {
        result: Value,
    },
    /// Failed; runs again at `run_at`.
    Retrying {
        error: String,
        run_at: DateTime<Utc>,
    },
    Dead {
        error: String,
    },
    /// Handed back unfinished (drain): `queued` again, and the attempt does not
    /// count.
    HandedBack,
    /// The reaper found the attempt's lease expired: `queued` for another
    /// attempt, or `dead` when none is left.
    LeaseExpired {
        error: String,
        dead: bool,
    },
}

impl StatusUpdate {
    /// The update that records `transition` of `attempt`, timed now.
    pub fn new(attempt: Attempt, transition: Transition) -> StatusUpdate {
        let mut update = StatusUpdate {
            id: attempt.id,
            token: attempt.token,
            status: Status::Running,
            attempts: attempt.number,
            at: Utc::now(),
            result: None,
            last_error: None,
            run_at: None,
            progress: None,
            handed_back: false,
        };
        match transition {
            Transition::Running => {}
            Transition::Succeeded { result } => {
                update.status = Status::Succeeded;
                update.result = Some(result);
            }
            Transition::Retrying { error, run_at } => {
                update.status = Status::Retrying;
                update.last_error = Some(error);
                update.run_at = Some(run_at);
            }
            Transition::Dead { error } => {
                update.status = Status::Dead;
                update.last_error = Some(error);
            }
            Transition::HandedBack => {
                update.status = Status::Queued;
                update.attempts = attempt.number - 1;
                update.handed_back = true;
            }
            Transition::LeaseExpired { error, dead } => {
                update.status = if dead { Status::Dead } else { Status::Queued };
                update.last_error = Some(error);
            }
        }
        update
    }

    /// A progress report of `attempt`: it changes the row's progress, never its
    /// status.
    pub fn progress(attempt: Attempt, report: ProgressReport) -> StatusUpdate {
        StatusUpdate {
            progress: Some(report),
            ..StatusUpdate::new(attempt, Transition::Running)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt() -> Attempt {
        Attempt {
            id: Uuid::now_v7(),
            token: 7,
            number: 3,
        }
    }

    #[test]
    fn each_transition_sets_its_status_and_only_the_fields_it_carries() {
        let run_at = Utc::now();
        let retrying = StatusUpdate::new(
            attempt(),
            Transition::Retrying {
                error: "boom".into(),
                run_at,
            },
        );
        assert_eq!(retrying.status, Status::Retrying);
        assert_eq!(
            (retrying.last_error.as_deref(), retrying.run_at),
            (Some("boom"), Some(run_at))
        );
        assert!(retrying.result.is_none() && !retrying.handed_back);

        let done = StatusUpdate::new(
            attempt(),
            Transition::Succeeded {
                result: Value::Null,
            },
        );
        assert_eq!(
            (done.status, done.attempts, done.token),
            (Status::Succeeded, 3, 7)
        );
        assert!(done.last_error.is_none() && done.run_at.is_none());
    }

    #[test]
    fn a_handed_back_attempt_is_queued_and_not_counted() {
        let back = StatusUpdate::new(attempt(), Transition::HandedBack);
        assert_eq!(
            (back.status, back.attempts, back.handed_back),
            (Status::Queued, 2, true)
        );
    }

    #[test]
    fn an_expired_lease_requeues_the_job_or_ends_it_dead_with_the_reason() {
        let expired = |dead| {
            StatusUpdate::new(
                attempt(),
                Transition::LeaseExpired {
                    error: "lease expired".into(),
                    dead,
                },
            )
        };
        assert_eq!(expired(false).status, Status::Queued);
        assert_eq!(expired(true).status, Status::Dead);
        assert_eq!(expired(true).last_error.as_deref(), Some("lease expired"));
        assert!(!expired(false).handed_back);
    }

    #[test]
    fn a_progress_report_carries_the_report_and_no_status_change() {
        let report = ProgressReport {
            percent: 40,
            message: Some("half".into()),
        };
        let update = StatusUpdate::progress(attempt(), report.clone());
        assert_eq!(update.progress, Some(report));
        assert_eq!(update.status, Status::Running);
        assert!(update.last_error.is_none() && update.result.is_none());
    }
}
