//! Admission: may this lease run? A worker asks before it runs a handler
//! ([`super::WriterHandle::admit`]); the shard answers after writing every
//! change of the job that reached it earlier, so a final status already on its
//! way is seen. Other jobs' changes may still be lingering unwritten.
//!
//! The answer is a read (primary-key lookups, no WAL): the row exists, is not
//! final, the lease is on the row's queue and names the row's kind, and no
//! newer attempt owns it. The same read returns the row's payload and
//! `max_attempts`: an admitted lease runs with those, never with what the Redis
//! hash says, so a hash rewritten in Redis cannot change what a job does. The
//! admitted `running` write is then
//! *held* by the shard instead of written at once: when the job ends within
//! [`HOLD`], as most jobs do, its `running` and its end fold into one row write
//! (one new row version per job instead of two); a job still running after
//! [`HOLD`] gets its `running` written on its own.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::StatusUpdate;
use crate::ledger::{Ledger, Status};

/// How long an admitted `running` write may wait for its job's end to fold
/// into. The ledger says `running` at most this much later than the handler
/// started (`started_at` is the true start either way).
pub(super) const HOLD: Duration = Duration::from_millis(50);

/// The rows a batch of leases may run on: unfinished, with the lease token of
/// the attempt that owns them (compared with each lease's token in
/// [`verdicts`]), and what a lease runs: queue, kind, payload and attempt
/// budget. Primary-key lookups only.
pub(in crate::ledger) const ADMISSION: &str =
    "SELECT id, lease_token, queue, kind, payload::text, max_attempts FROM jobrunner.jobs
             WHERE id = ANY($1) AND status <> ALL($2)";

/// An unfinished row, as [`ADMISSION`] reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct Row {
    pub(super) id: Uuid,
    /// The fencing token of the attempt that owns the row, if any did yet.
    pub(super) lease_token: Option<i64>,
    pub(super) queue: String,
    pub(super) kind: String,
    /// The payload as JSON text.
    pub(super) payload: String,
    pub(super) max_attempts: i32,
}

/// A lease asking to run: its job, fencing token, and the queue and kind it
/// was leased as.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The queue the lease came from.
    pub queue: String,
    /// The kind the job's Redis hash names.
    pub kind: String,
}

/// The ledger's answer to a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The lease may run, with the row's payload (JSON text) and attempt budget.
    Run { payload: String, max_attempts: i32 },
    /// The job is final, gone, or a newer attempt owns it.
    Refused,
    /// The lease is on another queue than the row, or names another kind: a
    /// copy of the job's id that is not the job (fencing tokens are per queue,
    /// so such a lease must never stamp the row). Carries the row's queue and kind.
    Foreign { queue: String, kind: String },
}

/// An admitted `running` write waiting for its job's end.
pub(super) struct Held {
    pub(super) update: StatusUpdate,
    /// When it was admitted; it is written by `since + HOLD` at the latest.
    pub(super) since: Instant,
}

impl Held {
    /// When it is written at the latest, whether or not its job's end came.
    pub(super) fn due(&self) -> Instant {
        self.since + HOLD
    }
}

/// Splits the held writes into those that go out with this round (they are due,
/// their job has news in it, or the writer is closing) and those that wait on.
pub(super) fn release_held(
    held: Vec<Held>,
    news: &HashSet<Uuid>,
    now: Instant,
    closing: bool,
) -> (Vec<StatusUpdate>, Vec<Held>) {
    let (out, keep): (Vec<Held>, Vec<Held>) = held
        .into_iter()
        .partition(|h| closing || now >= h.due() || news.contains(&h.update.id));
    (out.into_iter().map(|h| h.update).collect(), keep)
}

/// The verdicts on `asked` (id, token, claim), given the unfinished rows
/// (`rows`, from [`ADMISSION`]) and the tokens already admitted and held: a
/// row that is final or gone refuses; a lease on another queue or of another
/// kind than its row is foreign; among the rest, one a newer attempt owns (in
/// the ledger or among the leases admitted before) refuses.
pub(super) fn verdicts(
    asked: &[(Uuid, i64, &Claim)],
    rows: &HashMap<Uuid, Row>,
    held: &HashMap<Uuid, i64>,
) -> Vec<Verdict> {
    let own = |id: &Uuid, claim: &Claim| {
        rows.get(id)
            .is_some_and(|r| r.queue == claim.queue && r.kind == claim.kind)
    };
    // Only leases of the job itself compete: a foreign copy's token counts on
    // another queue's counter and says nothing about this job's attempts.
    let mut newest: HashMap<Uuid, i64> = HashMap::with_capacity(asked.len());
    for &(id, token, claim) in asked {
        if own(&id, claim) {
            let t = newest.entry(id).or_insert(token);
            *t = (*t).max(token);
        }
    }
    asked
        .iter()
        .map(|&(id, token, claim)| {
            let Some(row) = rows.get(&id) else {
                return Verdict::Refused;
            };
            if !own(&id, claim) {
                return Verdict::Foreign {
                    queue: row.queue.clone(),
                    kind: row.kind.clone(),
                };
            }
            let open = row.lease_token.is_none_or(|t| t <= token)
                && newest.get(&id) == Some(&token)
                && held.get(&id).is_none_or(|&t| t <= token);
            if open {
                Verdict::Run {
                    payload: row.payload.clone(),
                    max_attempts: row.max_attempts,
                }
            } else {
                Verdict::Refused
            }
        })
        .collect()
}

impl Ledger {
    /// The unfinished rows among `ids`, by id.
    pub(super) async fn admissible(
        &self,
        ids: &[Uuid],
    ) -> crate::ledger::Result<HashMap<Uuid, Row>> {
        let mut conn = self.acquire().await?;
        // Not a kept prepared statement: Postgres plans it for these ids each
        // time, so a generic plan made while `jobs` was nearly empty (a scan of
        // the table) cannot outlive the table's growth (see `PLAN_GUARD`).
        let rows: Vec<Row> = sqlx::query_as(ADMISSION)
            .persistent(false)
            .bind(ids)
            .bind(&Status::FINAL[..])
            .fetch_all(&mut *conn)
            .await?;
        Ok(rows.into_iter().map(|r| (r.id, r)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: Uuid, token: Option<i64>) -> (Uuid, Row) {
        let row = Row {
            id,
            lease_token: token,
            queue: "default".into(),
            kind: "noop".into(),
            payload: format!(r#"{{"job": "{id}"}}"#),
            max_attempts: 3,
        };
        (id, row)
    }

    fn claim(queue: &str, kind: &str) -> Claim {
        Claim {
            queue: queue.into(),
            kind: kind.into(),
        }
    }

    /// The verdicts as run (true) or not, for the cases that only decide that.
    fn runs(v: Vec<Verdict>) -> Vec<bool> {
        v.into_iter()
            .map(|v| matches!(v, Verdict::Run { .. }))
            .collect()
    }

    #[test]
    fn a_final_or_missing_row_or_a_newer_owner_refuses_the_lease() {
        let (open, taken, gone, fresh) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let rows = HashMap::from([row(open, Some(3)), row(taken, Some(9)), row(fresh, None)]);
        let c = claim("default", "noop");
        let asked = [(open, 4, &c), (taken, 8, &c), (gone, 1, &c), (fresh, 1, &c)];
        let v = verdicts(&asked, &rows, &HashMap::new());
        assert_eq!(v[2], Verdict::Refused);
        assert_eq!(runs(v), [true, false, false, true]);
    }

    #[test]
    fn an_admitted_lease_runs_the_rows_payload_and_attempt_budget() {
        let (id, r) = row(Uuid::now_v7(), None);
        let rows = HashMap::from([(id, r.clone())]);
        let c = claim("default", "noop");
        assert_eq!(
            verdicts(&[(id, 1, &c)], &rows, &HashMap::new()),
            [Verdict::Run {
                payload: r.payload,
                max_attempts: 3
            }]
        );
    }

    #[test]
    fn a_lease_on_another_queue_or_of_another_kind_is_foreign_and_takes_nothing_from_the_job() {
        let id = Uuid::now_v7();
        let rows = HashMap::from([row(id, Some(1))]);
        let (own, queue, kind) = (
            claim("default", "noop"),
            claim("other", "noop"),
            claim("default", "fail"),
        );
        let foreign = Verdict::Foreign {
            queue: "default".into(),
            kind: "noop".into(),
        };
        // The copies carry higher tokens (another queue's counter, or a
        // rewritten hash): the job's own lease still runs.
        let v = verdicts(
            &[(id, 9, &queue), (id, 8, &kind), (id, 2, &own)],
            &rows,
            &HashMap::new(),
        );
        assert_eq!(v[0], foreign);
        assert_eq!(v[1], foreign);
        assert!(matches!(v[2], Verdict::Run { .. }), "{v:?}");
    }

    #[test]
    fn of_two_leases_of_one_job_only_the_newest_runs() {
        let id = Uuid::now_v7();
        let rows = HashMap::from([row(id, Some(1))]);
        let c = claim("default", "noop");
        assert_eq!(
            runs(verdicts(
                &[(id, 2, &c), (id, 3, &c)],
                &rows,
                &HashMap::new()
            )),
            [false, true]
        );
        let held = HashMap::from([(id, 5)]);
        assert_eq!(runs(verdicts(&[(id, 4, &c)], &rows, &held)), [false]);
        assert_eq!(runs(verdicts(&[(id, 6, &c)], &rows, &held)), [true]);
    }

    #[test]
    fn a_held_running_write_goes_out_when_due_when_its_job_has_news_or_at_the_end() {
        let update = |id| {
            crate::ledger::StatusUpdate::new(
                crate::ledger::Attempt {
                    id,
                    token: 1,
                    number: 1,
                },
                crate::ledger::Transition::Running,
            )
        };
        let now = Instant::now();
        let (old, news, quiet) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let held = || {
            vec![
                Held {
                    update: update(old),
                    since: now - HOLD,
                },
                Held {
                    update: update(news),
                    since: now,
                },
                Held {
                    update: update(quiet),
                    since: now,
                },
            ]
        };
        let (out, keep) = release_held(held(), &HashSet::from([news]), now, false);
        assert_eq!(out.iter().map(|u| u.id).collect::<Vec<_>>(), [old, news]);
        assert_eq!(keep.len(), 1);
        assert_eq!(keep[0].update.id, quiet);
        let (out, keep) = release_held(held(), &HashSet::new(), now, true);
        assert_eq!(out.len(), 3);
        assert!(keep.is_empty());
    }
}
