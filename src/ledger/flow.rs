//! Flow control in the ledger: cancelling a job and the paused-queue table. The
//! unique-key rules live in the `jobrunner.enqueue` function itself
//! (migrations/20261122000007_flow_control.sql).

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
        let row = sqlx::query(
            "SELECT queue, status, kind, attempts FROM jobrunner.jobs WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(Error::NotFound(id))?;
        let queue: String = row.get(0);
        let status: String = row.get(1);
        let (kind, attempts): (String, i32) = (row.get(2), row.get(3));
        let previous: Status = status.parse().unwrap_or(Status::Queued);
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
}
