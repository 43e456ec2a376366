//! Admission: may this lease run? A worker asks before it runs a handler
//! ([`super::WriterHandle::admit`]); the shard answers after writing everything
//! that reached it earlier, so a final status already on its way is seen.
//!
//! The answer is a read (primary-key lookups, no WAL): the row exists, is not
//! final, and no newer attempt owns it. The admitted `running` write is then
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
/// [`Ledger::admissible`]). Primary-key lookups only.
pub(in crate::ledger) const ADMISSION: &str = "SELECT id, lease_token FROM jobrunner.jobs
             WHERE id = ANY($1) AND status <> ALL($2)";

/// An admitted `running` write waiting for its job's end.
pub(super) struct Held {
    pub(super) update: StatusUpdate,
    /// When it was admitted; it is written by `since + HOLD` at the latest.
    pub(super) since: Instant,
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
        .partition(|h| closing || now >= h.since + HOLD || news.contains(&h.update.id));
    (out.into_iter().map(|h| h.update).collect(), keep)
}

/// The leases of `asked` (id, token) to admit, given the row tokens of the
/// unfinished rows (`rows`, from [`ADMISSION`]) and the tokens already
/// admitted and held: a row that is final or gone refuses, and so does one a
/// newer attempt owns, in the ledger or among the leases admitted before.
pub(super) fn verdicts(
    asked: &[(Uuid, i64)],
    rows: &HashMap<Uuid, Option<i64>>,
    held: &HashMap<Uuid, i64>,
) -> Vec<bool> {
    let mut newest: HashMap<Uuid, i64> = HashMap::with_capacity(asked.len());
    for &(id, token) in asked {
        let t = newest.entry(id).or_insert(token);
        *t = (*t).max(token);
    }
    asked
        .iter()
        .map(|&(id, token)| {
            let open = match rows.get(&id) {
                Some(row_token) => row_token.is_none_or(|t| t <= token),
                None => false,
            };
            open && newest.get(&id) == Some(&token) && held.get(&id).is_none_or(|&t| t <= token)
        })
        .collect()
}

impl Ledger {
    /// The unfinished rows among `ids`, with their lease tokens.
    pub(super) async fn admissible(
        &self,
        ids: &[Uuid],
    ) -> crate::ledger::Result<HashMap<Uuid, Option<i64>>> {
        let mut conn = self.acquire().await?;
        // Not a kept prepared statement: Postgres plans it for these ids each
        // time, so a generic plan made while `jobs` was nearly empty (a scan of
        // the table) cannot outlive the table's growth (see `PLAN_GUARD`).
        let rows: Vec<(Uuid, Option<i64>)> = sqlx::query_as(ADMISSION)
            .persistent(false)
            .bind(ids)
            .bind(&Status::FINAL[..])
            .fetch_all(&mut *conn)
            .await?;
        Ok(rows.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_or_missing_row_or_a_newer_owner_refuses_the_lease() {
        let (open, taken, gone, fresh) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let rows = HashMap::from([(open, Some(3)), (taken, Some(9)), (fresh, None)]);
        let asked = [(open, 4), (taken, 8), (gone, 1), (fresh, 1)];
        assert_eq!(
            verdicts(&asked, &rows, &HashMap::new()),
            [true, false, false, true]
        );
    }

    #[test]
    fn of_two_leases_of_one_job_only_the_newest_runs() {
        let id = Uuid::now_v7();
        let rows = HashMap::from([(id, Some(1))]);
        assert_eq!(
            verdicts(&[(id, 2), (id, 3)], &rows, &HashMap::new()),
            [false, true]
        );
        let held = HashMap::from([(id, 5)]);
        assert_eq!(verdicts(&[(id, 4)], &rows, &held), [false]);
        assert_eq!(verdicts(&[(id, 6)], &rows, &held), [true]);
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
