//! Control: what admins do to jobs and queues. Cancelling a job, retrying one or
//! every dead one, pausing a queue, and the purge / retention deletes. The
//! unique-key rules live in the `jobrunner.enqueue` function itself
//! (migrations/20261122000007_flow_control.sql).
//!
//! Bulk retries and deletes go in batches of ids locked with `SKIP LOCKED`, so
//! they never hold a long lock and several daemons pruning at once do not wait on
//! each other.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{Error, Event, Ledger, Result, Status};

/// The `last_error` of a job cancelled with `jobrunner cancel`.
const CANCELLED_BY_REQUEST: &str = "cancelled by request";

/// What [`Ledger::cancel`] found.
#[derive(Debug, Clone)]
pub enum Cancelled {
    /// The row is now `cancelled`; it was `previous` (not final) on `queue`.
    /// `event` is the status change, for the caller to publish.
    Now {
        queue: String,
        previous: Status,
        event: Event,
    },
    /// The job had ended already; nothing changed.
    AlreadyFinal(Status),
}

/// Which dead jobs `retry --dead` takes.
#[derive(Debug, Clone, Default)]
pub struct DeadFilter {
    pub queue: Option<String>,
    pub kind: Option<String>,
}

impl Ledger {
    /// Marks a job `cancelled` unless it has ended, and drops its outbox row in the
    /// same transaction. That delete waits for a dispatcher holding the row, so
    /// once this returns the job is either in Redis already (for the broker to
    /// remove) or will never be dispatched.
    pub async fn cancel(&self, id: Uuid) -> Result<Cancelled> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM jobrunner.outbox WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM jobrunner.outbox_held WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(
            "SELECT queue, status, kind, attempts FROM jobrunner.jobs WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(Error::NotFound(id))?;
        let queue: String = row.get(0);
        let previous: Status = row.get(1);
        let (kind, attempts): (String, i32) = (row.get(2), row.get(3));
        if previous.is_final() {
            return Ok(Cancelled::AlreadyFinal(previous));
        }
        sqlx::query(
            "UPDATE jobrunner.jobs
             SET status = 'cancelled', finished_at = now(), updated_at = now(),
                 last_error = $2
             WHERE id = $1",
        )
        .bind(id)
        .bind(CANCELLED_BY_REQUEST)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let event = Event::status(
            id,
            &queue,
            &kind,
            Status::Cancelled,
            attempts,
            chrono::Utc::now(),
            Some(CANCELLED_BY_REQUEST),
        );
        Ok(Cancelled::Now {
            queue,
            previous,
            event,
        })
    }

    /// Records a queue as paused (kept even if Redis loses its data).
    pub async fn pause_queue(&self, queue: &str) -> Result {
        sqlx::query(
            "INSERT INTO jobrunner.queue_pauses (queue) VALUES ($1) ON CONFLICT (queue) DO NOTHING",
        )
        .bind(queue)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a queue's pause; false if it was not paused.
    pub async fn resume_queue(&self, queue: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM jobrunner.queue_pauses WHERE queue = $1")
            .bind(queue)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every paused queue, for restoring Redis's flags after it lost its data.
    pub async fn paused_queues(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT queue FROM jobrunner.queue_pauses ORDER BY queue")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Puts a dead or cancelled job back to `queued` with its attempts reset, and in
    /// the outbox so a daemon dispatches it. Its error history is kept. Returns the
    /// job's queue. Fails with [`Error::NotRetryable`] for a job that is not final
    /// or succeeded, and [`Error::NotFound`] for an unknown id.
    pub async fn retry_job(&self, id: Uuid) -> Result<String> {
        let mut tx = self.pool.begin().await?;
        let queue: Option<String> = sqlx::query_scalar(
            "UPDATE jobrunner.jobs
             SET status = 'queued', attempts = 0, run_at = now(), finished_at = NULL,
                 started_at = NULL, result = NULL, updated_at = now()
             WHERE id = $1 AND status = ANY($2)
             RETURNING queue",
        )
        .bind(id)
        .bind(&Status::RETRYABLE[..])
        .fetch_optional(&mut *tx)
        .await?;
        let Some(queue) = queue else {
            drop(tx);
            let status: Option<Status> =
                sqlx::query_scalar("SELECT status FROM jobrunner.jobs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
            return Err(match status {
                Some(status) => Error::NotRetryable { id, status },
                None => Error::NotFound(id),
            });
        };
        // `revive`: the job ended, and Redis keeps a tombstone for it a while.
        sqlx::query(
            "INSERT INTO jobrunner.outbox (id, revive) VALUES ($1, true)
             ON CONFLICT (id) DO UPDATE SET revive = true",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(super::ENQUEUED_CHANNEL)
            .bind(&queue)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(queue)
    }

    /// Retries every dead job matching `filter`, `batch` per transaction. Only jobs
    /// that were dead when this call began: one that is retried, runs and dies again
    /// meanwhile is not taken twice. Returns how many were retried.
    pub async fn retry_dead(&self, filter: &DeadFilter, batch: i64) -> Result<u64> {
        let began: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await?;
        let mut total = 0;
        loop {
            let n: i64 = sqlx::query_scalar(
                "WITH retried AS (
                     UPDATE jobrunner.jobs
                     SET status = 'queued', attempts = 0, run_at = now(), finished_at = NULL,
                         started_at = NULL, result = NULL, updated_at = now()
                     WHERE id = ANY(ARRAY(
                             SELECT id FROM jobrunner.jobs
                             WHERE status = 'dead' AND updated_at < $1
                               AND ($2::text IS NULL OR queue = $2)
                               AND ($3::text IS NULL OR kind = $3)
                             ORDER BY created_at LIMIT $4
                             FOR UPDATE SKIP LOCKED))
                       AND status = 'dead'
                     RETURNING id, queue),
                 outboxed AS (
                     INSERT INTO jobrunner.outbox (id, revive) SELECT id, true FROM retried
                     ON CONFLICT (id) DO UPDATE SET revive = true),
                 notified AS (
                     SELECT pg_notify($5, queue) FROM (SELECT DISTINCT queue FROM retried) q)
                 SELECT (SELECT count(*) FROM retried) + 0 * (SELECT count(*) FROM notified)",
            )
            .bind(began)
            .bind(&filter.queue)
            .bind(&filter.kind)
            .bind(batch)
            .bind(super::ENQUEUED_CHANNEL)
            .fetch_one(&self.pool)
            .await?;
            total += n as u64;
            if n < batch {
                break;
            }
        }
        Ok(total)
    }

    /// How many final jobs of `status` ended before `cutoff` (a purge's dry run).
    pub async fn count_final_before(&self, status: Status, cutoff: DateTime<Utc>) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM jobrunner.jobs
             WHERE status = $1 AND created_at < $2 AND finished_at < $2",
        )
        .bind(status.as_str())
        .bind(cutoff)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Deletes up to `batch` jobs of a final `status` that ended before `cutoff`.
    /// Returns how many it deleted; fewer than `batch` means none are left (or the
    /// rest are locked by another pruner, which deletes them).
    ///
    /// A job is created before it ends, so `created_at < cutoff` is implied by
    /// `finished_at < cutoff`; saying it lets `jobs_status_idx` bound the scan.
    pub async fn delete_final_batch(
        &self,
        status: Status,
        cutoff: DateTime<Utc>,
        batch: i64,
    ) -> Result<u64> {
        if !status.is_final() {
            return Ok(0);
        }
        let done = sqlx::query(
            "DELETE FROM jobrunner.jobs
             WHERE id = ANY(ARRAY(
                     SELECT id FROM jobrunner.jobs
                     WHERE status = $1 AND created_at < $2 AND finished_at < $2
                     ORDER BY created_at LIMIT $3
                     FOR UPDATE SKIP LOCKED))
               AND status = $1",
        )
        .bind(status.as_str())
        .bind(cutoff)
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
