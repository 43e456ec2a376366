//! `jobrunner.cron_fires`: which fire time of which schedule enqueued which job.
//!
//! The primary key `(schedule, fire_at)` is the whole exactly-once mechanism: a
//! daemon claims a fire time by inserting its row and enqueues the job in the same
//! transaction, so of several daemons racing for one fire time exactly one
//! commits a job, and a crash between the two leaves neither.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use super::{Ledger, Result};

/// The job a fire enqueues; `None` takes the kind's defaults, as in SQL enqueue.
#[derive(Debug, Clone)]
pub struct CronJob {
    pub kind: String,
    pub payload: Value,
    pub queue: Option<String>,
    pub priority: Option<i32>,
}

/// The latest row of one schedule, and its job's status now.
#[derive(Debug, Clone)]
pub struct CronFire {
    pub fire_at: DateTime<Utc>,
    pub job_id: Option<Uuid>,
    pub manual: bool,
    /// `None` when the job row is gone.
    pub status: Option<String>,
}

impl Ledger {
    /// Claims `(schedule, fire_at)` and enqueues `job` in one transaction. Returns
    /// the job's id, or `None` when the fire time was claimed before (by another
    /// daemon, or by this one before a retry).
    pub async fn fire_cron(
        &self,
        schedule: &str,
        fire_at: DateTime<Utc>,
        job: &CronJob,
        manual: bool,
    ) -> Result<Option<Uuid>> {
        let mut tx = self.pool.begin().await?;
        // A racing daemon's insert of the same key waits here for our commit and
        // then does nothing, so the losers never enqueue.
        let claimed = sqlx::query(
            "INSERT INTO jobrunner.cron_fires (schedule, fire_at, manual) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(schedule)
        .bind(fire_at)
        .bind(manual)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        // Named arguments: the function may gain parameters, these keep their meaning.
        let id: Uuid = sqlx::query_scalar(
            "UPDATE jobrunner.cron_fires
             SET job_id = jobrunner.enqueue(kind => $3::text, payload => $4::jsonb,
                                            queue => $5::text, priority => $6::int)
             WHERE schedule = $1 AND fire_at = $2
             RETURNING job_id",
        )
        .bind(schedule)
        .bind(fire_at)
        .bind(&job.kind)
        .bind(&job.payload)
        .bind(&job.queue)
        .bind(job.priority)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    /// The latest scheduled (not manual) fire time of each named schedule that
    /// has one: where catch-up starts.
    pub async fn cron_last_fire_times(
        &self,
        schedules: &[String],
    ) -> Result<HashMap<String, DateTime<Utc>>> {
        let rows = sqlx::query(
            "SELECT s.name, f.fire_at
             FROM UNNEST($1::text[]) AS s(name)
             CROSS JOIN LATERAL (
                 SELECT fire_at FROM jobrunner.cron_fires
                 WHERE schedule = s.name AND NOT manual
                 ORDER BY fire_at DESC LIMIT 1) f",
        )
        .bind(schedules)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The latest fire (scheduled or manual) of each named schedule, with its
    /// job's status, for `jobrunner cron list`.
    pub async fn cron_last_fires(&self, schedules: &[String]) -> Result<HashMap<String, CronFire>> {
        let rows = sqlx::query(
            "SELECT s.name, f.fire_at, f.job_id, f.manual
             FROM UNNEST($1::text[]) AS s(name)
             CROSS JOIN LATERAL (
                 SELECT fire_at, job_id, manual FROM jobrunner.cron_fires
                 WHERE schedule = s.name
                 ORDER BY fire_at DESC LIMIT 1) f",
        )
        .bind(schedules)
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<Uuid> = rows
            .iter()
            .filter_map(|r| r.get::<Option<Uuid>, _>(2))
            .collect();
        let statuses: HashMap<Uuid, String> =
            sqlx::query("SELECT id, status FROM jobrunner.jobs WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
        Ok(rows
            .into_iter()
            .map(|r| {
                let job_id: Option<Uuid> = r.get(2);
                let fire = CronFire {
                    fire_at: r.get(1),
                    job_id,
                    manual: r.get(3),
                    status: job_id.and_then(|id| statuses.get(&id).cloned()),
                };
                (r.get(0), fire)
            })
            .collect())
    }

    /// Deletes fire rows older than `keep`, except each schedule's latest
    /// scheduled one (catch-up starts there). Returns how many went.
    pub async fn prune_cron_fires(&self, keep: Duration) -> Result<u64> {
        let before = super::safe::before(Utc::now(), keep);
        let done = sqlx::query(
            "DELETE FROM jobrunner.cron_fires f
             WHERE f.fire_at < $1
               AND (f.manual OR f.fire_at < (SELECT max(g.fire_at) FROM jobrunner.cron_fires g
                                              WHERE g.schedule = f.schedule AND NOT g.manual))",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
