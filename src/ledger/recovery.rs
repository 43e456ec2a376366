//! Recovery: finding jobs whose Redis copy is gone and putting them back in the
//! outbox, after Redis came back empty or when the orphan sweep finds one missing.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{Ledger, Result, Status};

impl Ledger {
    /// Puts every job of `queue` that is not final back in the outbox: used when
    /// the queue's Redis came back empty. Returns how many rows it marked.
    pub async fn redispatch_queue(&self, queue: &str) -> Result<u64> {
        let done = sqlx::query(
            "INSERT INTO jobrunner.outbox (id)
             SELECT id FROM jobrunner.jobs
             WHERE queue = $2 AND status = ANY($1)
             ON CONFLICT DO NOTHING",
        )
        .bind(&Status::OPEN[..])
        .bind(queue)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Puts the given unfinished jobs back in the outbox, for the dispatcher to
    /// put into Redis again from their rows (it skips a job Redis still holds).
    pub async fn redispatch(&self, ids: &[Uuid]) -> Result<u64> {
        let done = sqlx::query(
            "INSERT INTO jobrunner.outbox (id)
             SELECT id FROM jobrunner.jobs
             WHERE id = ANY($1) AND status = ANY($2)
             ON CONFLICT DO NOTHING",
        )
        .bind(ids)
        .bind(&Status::OPEN[..])
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Puts one unfinished job back in the outbox past its Redis tombstone: its
    /// Redis copy named another kind than its row and was ended unrun, so the
    /// dispatcher writes the job into Redis again from its row.
    pub async fn redispatch_ended(&self, id: Uuid) -> Result<u64> {
        // The outbox row and the dispatcher's wake-up in one statement.
        let done = sqlx::query(
            "WITH job AS (SELECT id, queue FROM jobrunner.jobs
                          WHERE id = $1 AND status = ANY($2)),
                  queued AS (INSERT INTO jobrunner.outbox (id, revive)
                             SELECT id, true FROM job
                             ON CONFLICT (id) DO UPDATE SET revive = true
                             RETURNING id)
             SELECT pg_notify($3, job.queue) FROM job JOIN queued USING (id)",
        )
        .bind(id)
        .bind(&Status::OPEN[..])
        .bind(super::ENQUEUED_CHANNEL)
        .fetch_all(&self.pool)
        .await?;
        Ok(done.len() as u64)
    }

    /// Puts the given jobs back in the outbox (their Redis copy was found missing),
    /// unless a status write touched them after `before`.
    pub async fn redispatch_stale(&self, ids: &[Uuid], before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "INSERT INTO jobrunner.outbox (id)
             SELECT id FROM jobrunner.jobs
             WHERE id = ANY($1) AND updated_at < $2
               AND status = ANY($3)
             ON CONFLICT DO NOTHING",
        )
        .bind(ids)
        .bind(before)
        .bind(&Status::OPEN[..])
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// One page of dispatched, non-final jobs untouched since `before`, ordered by id
    /// after `after`: the candidates whose Redis copy the orphan sweep checks.
    pub async fn stale_page(
        &self,
        before: DateTime<Utc>,
        after: Uuid,
        limit: i64,
    ) -> Result<Vec<(Uuid, String)>> {
        let rows = sqlx::query(
            "SELECT j.id, j.queue FROM jobrunner.jobs j
             WHERE j.status = ANY($4)
               AND j.updated_at < $1 AND j.id > $2
               AND NOT EXISTS (SELECT 1 FROM jobrunner.outbox o WHERE o.id = j.id)
               AND NOT EXISTS (SELECT 1 FROM jobrunner.outbox_held h WHERE h.id = j.id)
             ORDER BY j.id LIMIT $3",
        )
        .bind(before)
        .bind(after)
        .bind(limit)
        .bind(&Status::OPEN[..])
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get::<Uuid, _>(0), r.get::<String, _>(1)))
            .collect())
    }
}
