//! Reads: one job, waiting for a job to end, per-status and per-queue counts,
//! job listings and one job in full (the CLI's and the admin endpoints' reads).
//!
//! Every read here is shaped for an index so it stays cheap on a large table:
//! counts of unfinished jobs read `jobs_status_idx` (unfinished rows are few), dead
//! counts read `jobs_queue_status_idx` per queue, the last minute's throughput reads
//! `jobs_updated_at_idx`, and listings read one status at a time (see
//! [`Ledger::list_jobs`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{FromRow, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{ALL_STATUSES, Error, INGEST_GRACE, Job, Ledger, Result, Status};

/// One queue as `jobrunner queues` shows it: counts from the ledger.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct QueueCounts {
    pub queue: String,
    /// Jobs `queued`: due, waiting for a worker.
    pub ready: i64,
    pub scheduled: i64,
    pub running: i64,
    pub retrying: i64,
    pub dead: i64,
    /// The run time of the oldest `queued` job: how long the queue has kept work waiting.
    pub oldest_waiting_since: Option<DateTime<Utc>>,
    pub succeeded_last_minute: i64,
    pub dead_last_minute: i64,
}

/// What `jobrunner jobs` filters on. `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub queue: Option<String>,
    pub status: Option<Status>,
    pub kind: Option<String>,
    /// Only jobs created at or after this.
    pub since: Option<DateTime<Utc>>,
    /// Keyset cursor: only jobs older than this `(created_at, id)`, the last row
    /// of the previous page.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// Jobs of one queue that ended in one minute, for the dashboard's throughput chart.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct MinuteCount {
    pub queue: String,
    pub minute: DateTime<Utc>,
    pub succeeded: i64,
    pub dead: i64,
}

/// One line of a job listing.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct JobSummary {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    pub status: Status,
    pub priority: i32,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// Every column of one job, for `jobrunner inspect`: the row front ends see,
/// plus the attempt history and the fencing token.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct JobDetail {
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub job: Job,
    /// Each failed attempt's error, oldest first: `[{attempt, error, at}]`.
    pub errors: Value,
    /// The fencing token of the attempt the row reflects.
    pub lease_token: Option<i64>,
}
const SUMMARY_COLUMNS: &str = "id, queue, kind, status, priority, attempts, max_attempts, \
                               LEAST(GREATEST(run_at, '1970-01-01Z'), '9999-12-31T23:59:59Z') AS run_at, \
                               created_at, finished_at, last_error";
impl Ledger {
    pub async fn job(&self, id: Uuid) -> Result<Job> {
        sqlx::query_as::<_, Job>(
            // run_at is clamped to what chrono can decode: a row holding
            // `infinity` must read, not panic the reader.
            "SELECT id, queue, kind, payload, status, priority, attempts, max_attempts,
                    LEAST(GREATEST(run_at, '1970-01-01Z'), '9999-12-31T23:59:59Z') AS run_at,
                    unique_key, result, last_error, created_at, updated_at, started_at, finished_at,
                    progress, progress_message
             FROM jobrunner.jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(Error::NotFound(id))
    }

    /// The rows of `ids` that exist, in no particular order: one index lookup per
    /// id (the arq bridge reads where the jobs it took have got to).
    pub async fn jobs(&self, ids: &[Uuid]) -> Result<Vec<Job>> {
        Ok(sqlx::query_as::<_, Job>(
            "SELECT id, queue, kind, payload, status, priority, attempts, max_attempts,
                    LEAST(GREATEST(run_at, '1970-01-01Z'), '9999-12-31T23:59:59Z') AS run_at,
                    unique_key, result, last_error, created_at, updated_at, started_at, finished_at,
                    progress, progress_message
             FROM jobrunner.jobs WHERE id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Polls until the job is final or `timeout` passes; returns the last row read.
    /// A job enqueued straight into Redis has no row until the daemon ingests it, so
    /// "not found" counts as "not yet" for [`INGEST_GRACE`].
    pub async fn wait_final(&self, id: Uuid, timeout: Option<Duration>) -> Result<Job> {
        let start = tokio::time::Instant::now();
        let deadline = timeout.map(|t| start + t);
        loop {
            let job = match self.job(id).await {
                Err(Error::NotFound(_)) if start.elapsed() < INGEST_GRACE => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                other => other?,
            };
            let done = job.status.is_final();
            if done || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Ok(job);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Counts of jobs per status, for the demo and the benchmark.
    pub async fn count_by_status(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT status, count(*) FROM jobrunner.jobs GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Counts per queue for every queue in `configured` and every queue that has
    /// unfinished jobs, sorted by name.
    pub async fn queue_counts(&self, configured: &[String]) -> Result<Vec<QueueCounts>> {
        let mut by_queue: std::collections::BTreeMap<String, QueueCounts> = configured
            .iter()
            .map(|q| {
                let counts = QueueCounts {
                    queue: q.clone(),
                    ..QueueCounts::default()
                };
                (q.clone(), counts)
            })
            .collect();
        // Unfinished jobs are few whatever the table's size: a range of the
        // (status, created_at) index per status.
        let rows = sqlx::query(
            "SELECT queue, status, count(*) AS n,
                    -- Clamped to what the reader can decode (GREATEST skips NULL).
                    CASE WHEN bool_or(status = 'queued') THEN
                        LEAST(GREATEST(min(run_at) FILTER (WHERE status = 'queued'),
                                       '1970-01-01Z'), '9999-12-31T23:59:59Z') END AS oldest
             FROM jobrunner.jobs
             WHERE status = ANY($1)
             GROUP BY queue, status",
        )
        .bind(&Status::OPEN[..])
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let queue: String = row.get("queue");
            let status: Status = row.get("status");
            let n: i64 = row.get("n");
            let entry = by_queue
                .entry(queue.clone())
                .or_insert_with(|| QueueCounts {
                    queue,
                    ..QueueCounts::default()
                });
            match status {
                Status::Scheduled => entry.scheduled = n,
                Status::Queued => {
                    entry.ready = n;
                    entry.oldest_waiting_since = row.get("oldest");
                }
                Status::Running => entry.running = n,
                _ => entry.retrying = n,
            }
        }
        let queues: Vec<String> = by_queue.keys().cloned().collect();
        // Dead jobs may be many (they are kept for inspection): one index-only
        // count per queue on (queue, status, created_at). The last minute's ends
        // come from the updated_at index: a final row's updated_at is its end.
        let rows = sqlx::query(
            "SELECT q.queue,
                    (SELECT count(*) FROM jobrunner.jobs j
                     WHERE j.queue = q.queue AND j.status = 'dead') AS dead,
                    coalesce(m.succeeded, 0) AS succeeded_1m,
                    coalesce(m.dead, 0) AS dead_1m
             FROM unnest($1::text[]) AS q(queue)
             LEFT JOIN (
                 SELECT queue,
                        count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                        count(*) FILTER (WHERE status = 'dead') AS dead
                 FROM jobrunner.jobs
                 WHERE updated_at >= now() - interval '1 minute'
                   AND finished_at >= now() - interval '1 minute'
                   AND status = ANY($2)
                 GROUP BY queue
             ) m ON m.queue = q.queue",
        )
        .bind(&queues)
        .bind(&[Status::Succeeded, Status::Dead][..])
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let queue: String = row.get("queue");
            if let Some(entry) = by_queue.get_mut(&queue) {
                entry.dead = row.get("dead");
                entry.succeeded_last_minute = row.get("succeeded_1m");
                entry.dead_last_minute = row.get("dead_1m");
            }
        }
        Ok(by_queue.into_values().collect())
    }

    /// Jobs matching `filter`, newest first, at most `filter.limit`.
    ///
    /// Without a kind, the statement is a `UNION ALL` of one branch per status, each
    /// reading its own range of `jobs_queue_status_idx` (with a queue) or
    /// `jobs_status_idx` backwards for at most `limit` rows; the outer sort sees at
    /// most 7 · limit rows. That serves "newest first" without an index on
    /// `created_at` alone, which every insert and status write would pay for.
    /// With a kind, `jobs_kind_created_idx` serves it directly.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobSummary>> {
        let limit = filter.limit.max(0);
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new("");
        let push_conditions = |q: &mut QueryBuilder<Postgres>, status: Option<Status>| {
            q.push(" WHERE true");
            if let Some(status) = status {
                q.push(" AND status = ").push_bind(status.as_str());
            }
            if let Some(queue) = &filter.queue {
                q.push(" AND queue = ").push_bind(queue.clone());
            }
            if let Some(kind) = &filter.kind {
                q.push(" AND kind = ").push_bind(kind.clone());
            }
            if let Some(since) = filter.since {
                q.push(" AND created_at >= ").push_bind(since);
            }
            if let Some((at, id)) = filter.before {
                // The first condition bounds the index range; the second breaks
                // ties between jobs created in the same microsecond.
                q.push(" AND created_at <= ").push_bind(at);
                q.push(" AND (created_at, id) < (").push_bind(at);
                q.push(", ").push_bind(id).push(")");
            }
            q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
                .push_bind(limit);
        };
        if filter.kind.is_some() {
            q.push(format!("SELECT {SUMMARY_COLUMNS} FROM jobrunner.jobs"));
            push_conditions(&mut q, filter.status);
        } else {
            let statuses: Vec<Status> = match filter.status {
                Some(s) => vec![s],
                None => ALL_STATUSES.to_vec(),
            };
            q.push(format!("SELECT {SUMMARY_COLUMNS} FROM ("));
            for (i, status) in statuses.into_iter().enumerate() {
                if i > 0 {
                    q.push(" UNION ALL ");
                }
                q.push(format!("(SELECT {SUMMARY_COLUMNS} FROM jobrunner.jobs"));
                push_conditions(&mut q, Some(status));
                q.push(")");
            }
            q.push(") t ORDER BY created_at DESC, id DESC LIMIT ")
                .push_bind(limit);
        }
        Ok(q.build_query_as::<JobSummary>()
            .fetch_all(&self.pool)
            .await?)
    }

    /// Jobs carrying unique key `key`, newest first, at most `limit`, from
    /// `jobs_unique_key_all_idx`.
    pub async fn jobs_by_unique_key(&self, key: &str, limit: i64) -> Result<Vec<JobSummary>> {
        Ok(sqlx::query_as::<_, JobSummary>(
            "SELECT id, queue, kind, status, priority, attempts, max_attempts,
                    LEAST(GREATEST(run_at, '1970-01-01Z'), '9999-12-31T23:59:59Z') AS run_at,
                    created_at, finished_at, last_error
             FROM jobrunner.jobs WHERE unique_key = $1
             ORDER BY created_at DESC, id DESC LIMIT $2",
        )
        .bind(key)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Jobs that ended per queue and minute over the last `minutes` minutes (at
    /// most 60), from `jobs_updated_at_idx`: a final row's `updated_at` is its end.
    pub async fn ends_per_minute(&self, minutes: i64) -> Result<Vec<MinuteCount>> {
        Ok(sqlx::query_as::<_, MinuteCount>(
            "SELECT queue, date_trunc('minute', updated_at) AS minute,
                    count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                    count(*) FILTER (WHERE status = 'dead') AS dead
             FROM jobrunner.jobs
             WHERE updated_at >= date_trunc('minute', now()) - make_interval(mins => $1::int)
               AND status = ANY($2)
             GROUP BY queue, minute ORDER BY queue, minute",
        )
        .bind(minutes.clamp(1, 60) as i32 - 1)
        .bind(&[Status::Succeeded, Status::Dead][..])
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every column of one job.
    pub async fn job_detail(&self, id: Uuid) -> Result<JobDetail> {
        sqlx::query_as::<_, JobDetail>(
            "SELECT id, queue, kind, payload, status, priority, attempts, max_attempts,
                    LEAST(GREATEST(run_at, '1970-01-01Z'), '9999-12-31T23:59:59Z') AS run_at,
                    unique_key, result, last_error, created_at, updated_at, started_at,
                    finished_at, progress, progress_message, errors, lease_token
             FROM jobrunner.jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(Error::NotFound(id))
    }
}
