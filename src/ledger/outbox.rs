//! The outbox: committed jobs waiting to be pushed into Redis.
//!
//! `jobrunner.enqueue` (and a retry) writes a row to `jobrunner.outbox` in the
//! producer's transaction; the dispatcher in `runtime` takes a batch with
//! [`Ledger::outbox`], hands it to `broker`, and commits, holds or buries it.
//! Held rows (`jobrunner.outbox_held`) belong to a queue whose Redis does not
//! take them now; [`Ledger::release_held`] puts them back.

use sqlx::{FromRow, Postgres, Row, Transaction};
use uuid::Uuid;

use super::{Ledger, Result, Status};

/// A committed job on its way from the outbox into Redis.
#[derive(Debug, Clone, FromRow)]
pub struct DispatchJob {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    /// The payload as JSON text, passed through to Redis untouched.
    pub payload: String,
    pub priority: i32,
    pub attempts: i32,
    pub max_attempts: i32,
    /// `run_at` in Unix milliseconds, or `None` when the row holds a time the
    /// daemon cannot carry (`infinity`, or outside the years 1970 to 9999): the
    /// dispatcher ends such a job `dead` instead of decoding the time (which panics).
    pub run_ms: Option<i64>,
    /// Put back by a retry: the job ended before, and its dispatch passes the
    /// tombstone Redis keeps for ended jobs.
    pub revive: bool,
}

/// Outbox rows taken (deleted, uncommitted) by this daemon until
/// [`OutboxBatch::commit`]; dropping the batch rolls back and leaves them for the
/// next sweep.
pub struct OutboxBatch {
    tx: Transaction<'static, Postgres>,
    pub jobs: Vec<DispatchJob>,
}

/// Takes a batch from the outbox (ids are time-ordered, so the primary key gives
/// the oldest first) and reads the jobs to dispatch. An id whose job is final
/// (cancelled before dispatch) or gone just leaves the outbox.
pub(crate) const DISPATCH: &str = "WITH picked AS (
                 DELETE FROM jobrunner.outbox
                 WHERE id = ANY(ARRAY(SELECT id FROM jobrunner.outbox ORDER BY id LIMIT $1
                                      FOR UPDATE SKIP LOCKED))
                 RETURNING id, revive)
             SELECT j.id, j.queue, j.kind, j.payload::text AS payload, j.priority, j.attempts,
                    j.max_attempts,
                    -- Compared, not decoded: a time out of range ends the job, not the loop.
                    CASE WHEN j.run_at >= '1970-01-01Z' AND j.run_at < '10000-01-01Z'
                         THEN (extract(epoch FROM j.run_at) * 1000)::bigint END AS run_ms,
                    j.id = ANY(ARRAY(SELECT id FROM picked WHERE revive)) AS revive
             FROM jobrunner.jobs j
             -- An array, not a join: a join with the CTE plans a scan of the table.
             WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
               -- A filter, never an index condition: on a ledger ANALYZE saw mostly
               -- finished, an indexable status test plans a walk of jobs_status_idx
               -- over every queued row for each batch.
               AND (j.status = ANY($2)) IS TRUE
             ORDER BY j.id";

impl Ledger {
    /// Locks up to `limit` committed, undispatched jobs for this daemon to push to
    /// Redis. Other daemons skip the locked rows.
    pub async fn outbox(&self, limit: i64) -> Result<OutboxBatch> {
        // This commit need not wait for the disk: if Postgres loses it in a crash,
        // the rows come back to the outbox and the dispatch script skips the jobs
        // Redis already holds. Waiting for fsync here would add to every pickup.
        // Sent with the BEGIN: one round trip, not two, in front of every pickup.
        let mut tx = self
            .pool
            .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
            .await?;
        let jobs = sqlx::query_as::<_, DispatchJob>(DISPATCH)
            .bind(limit)
            .bind(&Status::OPEN[..])
            .fetch_all(&mut *tx)
            .await?;
        Ok(OutboxBatch { tx, jobs })
    }
}

impl OutboxBatch {
    /// Removes the batch from the outbox; call only after Redis accepted every job
    /// not set aside with [`OutboxBatch::hold`] or ended with [`OutboxBatch::bury`].
    pub async fn commit(self) -> Result {
        self.tx.commit().await?;
        Ok(())
    }

    /// Sets these jobs (id, revive) of `queue` aside in `jobrunner.outbox_held`
    /// (the queue's dispatch failed for a reason that may pass, or did not come
    /// back in time); the rest of the batch still commits. Later batches do not
    /// meet them until [`Ledger::release_held`] puts them back.
    pub async fn hold(&mut self, queue: &str, rows: &[(Uuid, bool)]) -> Result {
        if rows.is_empty() {
            return Ok(());
        }
        let (ids, revive): (Vec<Uuid>, Vec<bool>) = rows.iter().copied().unzip();
        sqlx::query(
            "INSERT INTO jobrunner.outbox_held (id, revive, queue)
             SELECT u.id, u.revive, $3 FROM UNNEST($1::uuid[], $2::bool[]) AS u(id, revive)
             ON CONFLICT DO NOTHING",
        )
        .bind(ids)
        .bind(revive)
        .bind(queue)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Ends jobs that can never be dispatched `dead`, in the batch's transaction.
    /// `errors` holds the reason per job; `None` means its `run_at` is out of range,
    /// and the message then quotes the value (the column is set to now, so every
    /// reader can decode the row again). Returns (id, queue, kind, attempts) of
    /// the rows ended.
    pub async fn bury(
        &mut self,
        ids: &[Uuid],
        errors: &[Option<String>],
    ) -> Result<Vec<(Uuid, String, String, i32)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let errors: Vec<Option<String>> = errors
            .iter()
            .map(|e| e.as_deref().map(|e| crate::pgtext::safe(e).into_owned()))
            .collect();
        let rows = sqlx::query(
            "WITH u AS (
                 SELECT u.id, COALESCE(u.error, format(
                     'run_at %s is outside the range jobrunner can schedule (years 1970 to 9999); '
                     'the job was never run', j.run_at)) AS error
                 FROM UNNEST($1::uuid[], $2::text[]) AS u(id, error)
                 JOIN jobrunner.jobs j ON j.id = u.id
                 WHERE j.id = ANY($1))
             UPDATE jobrunner.jobs AS j SET
                 status      = 'dead',
                 last_error  = u.error,
                 errors      = j.errors || jsonb_build_array(jsonb_build_object(
                                   'attempt', j.attempts, 'error', u.error, 'at', now())),
                 run_at      = CASE WHEN j.run_at >= '1970-01-01Z' AND j.run_at < '10000-01-01Z'
                                    THEN j.run_at ELSE now() END,
                 finished_at = now(),
                 updated_at  = now()
             FROM u
             WHERE j.id = u.id AND j.id = ANY($1)
               AND j.status <> ALL($3)
             RETURNING j.id, j.queue, j.kind, j.attempts",
        )
        .bind(ids)
        .bind(errors)
        .bind(&Status::FINAL[..])
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }
}

impl Ledger {
    /// Puts the held rows of `queue` back in the outbox (its Redis answers
    /// again). Returns how many.
    pub async fn release_held(&self, queue: &str) -> Result<u64> {
        let done = sqlx::query(
            "WITH back AS (DELETE FROM jobrunner.outbox_held WHERE queue = $1 RETURNING id, revive)
             INSERT INTO jobrunner.outbox (id, revive) SELECT id, revive FROM back
             ON CONFLICT DO NOTHING",
        )
        .bind(queue)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Puts back the held rows of every queue but those in `waiting`: rows
    /// another daemon set aside, or one that has stopped. Returns how many.
    pub async fn release_held_except(&self, waiting: &[String]) -> Result<u64> {
        let done = sqlx::query(
            "WITH back AS (DELETE FROM jobrunner.outbox_held WHERE queue <> ALL($1)
                           RETURNING id, revive)
             INSERT INTO jobrunner.outbox (id, revive) SELECT id, revive FROM back
             ON CONFLICT DO NOTHING",
        )
        .bind(waiting)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
