//! `jobrunner.quarantine`: what the daemon read from outside and could not record
//! as a job, not even as a dead one. Admins see it with `jobrunner quarantine`,
//! `jobrunner inspect ID` and the `jobrunner_quarantined_total` metric.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use uuid::Uuid;

use super::{Ledger, Result};
use crate::pgtext;

/// Most bytes of `raw` and `error` kept per entry.
pub const QUARANTINE_TEXT_MAX: usize = 8 * 1024;

/// One quarantined item to record.
#[derive(Debug, Clone)]
pub struct NewQuarantine<'a> {
    /// Where it was read: `ingest` (a Redis ingest entry) or `fetch` (a ready
    /// entry with no job hash).
    pub source: &'static str,
    pub queue: Option<&'a str>,
    /// The job it belongs to, when that could be told.
    pub job_id: Option<Uuid>,
    /// What was read, escaped (see `pgtext::escape`); cut to a sane size here.
    pub raw: &'a str,
    /// Why it could not be recorded as a job.
    pub error: &'a str,
}

/// A quarantined item as stored.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Quarantined {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub source: String,
    pub queue: Option<String>,
    pub job_id: Option<Uuid>,
    pub raw: String,
    pub error: String,
}

impl Ledger {
    /// Records one quarantined item and counts it in `jobrunner_quarantined_total`.
    pub async fn quarantine(&self, item: &NewQuarantine<'_>) -> Result {
        let raw = pgtext::safe(pgtext::truncate(item.raw, QUARANTINE_TEXT_MAX));
        let error = pgtext::safe(pgtext::truncate(item.error, QUARANTINE_TEXT_MAX));
        sqlx::query(
            "INSERT INTO jobrunner.quarantine (source, queue, job_id, raw, error)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(item.source)
        .bind(item.queue.map(pgtext::safe))
        .bind(item.job_id)
        .bind(raw)
        .bind(error)
        .execute(&self.pool)
        .await?;
        self.metrics.quarantined(item.source);
        Ok(())
    }

    /// The newest quarantined items, newest first; only those of `job_id` if given.
    pub async fn quarantined(&self, job_id: Option<Uuid>, limit: i64) -> Result<Vec<Quarantined>> {
        Ok(sqlx::query_as(
            "SELECT id, at, source, queue, job_id, raw, error FROM jobrunner.quarantine
             WHERE $1::uuid IS NULL OR job_id = $1
             ORDER BY id DESC LIMIT $2",
        )
        .bind(job_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}
