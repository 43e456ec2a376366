//! The Postgres ledger: the system of record for every job.
//!
//! This module owns the migrations, the SQL enqueue path, the outbox the dispatcher
//! drains, the batched status writer, the cron fire table (`cron.rs`) and the
//! queries the CLI makes.
//!
//! **Invariant:** only `ledger` runs SQL on `jobrunner.jobs`. It never talks to Redis;
//! the dispatcher in `runtime` moves outbox rows into `broker`.

mod admin;
mod cron;
mod events;
mod flow;
mod plans;
mod quarantine;
pub mod safe;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{FromRow, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::config::{self, DatabaseConfig};
use crate::metrics::Metrics;

pub use admin::{ALL_STATUSES, DeadFilter, JobDetail, JobFilter, JobSummary, QueueCounts};
pub use cron::{CronFire, CronJob};
pub use events::{EVENTS_CHANNEL, Event, EventType, ProgressInfo};
pub use flow::Cancelled;
pub use plans::HotPlan;
pub use quarantine::{NewQuarantine, QUARANTINE_TEXT_MAX, Quarantined};
pub use writer::{EventSender, ProgressReport, StatusUpdate, StatusWriter, WriterHandle};

/// How long a waiter treats a missing row as "not ingested yet".
pub const INGEST_GRACE: Duration = Duration::from_secs(5);

/// The channel `jobrunner.enqueue` notifies, with the queue name as payload.
pub const ENQUEUED_CHANNEL: &str = "jobrunner_enqueued";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to Postgres at {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the database schema is not current (at {found}, this jobrunner needs {needed}): run `jobrunner migrate` or start with `jobrunner run --migrate`"
    )]
    SchemaOutdated { found: String, needed: i64 },
    #[error("migrating the database failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("job {0} not found")]
    NotFound(Uuid),
    #[error("job {id} is {status}: only a dead or cancelled job can be retried")]
    NotRetryable { id: Uuid, status: String },
    #[error("Postgres query failed")]
    Sql(#[from] sqlx::Error),
}

pub type Result<T = (), E = Error> = std::result::Result<T, E>;

/// Where a job is in its life. The strings are what the `status` column holds;
/// the CLI's `--status` takes the same names (clap's `ValueEnum`), so the list it
/// offers and checks is this enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Scheduled,
    Queued,
    Running,
    Retrying,
    Succeeded,
    Dead,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Retrying => "retrying",
            Status::Succeeded => "succeeded",
            Status::Dead => "dead",
            Status::Cancelled => "cancelled",
        }
    }

    /// A final job never changes status again.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Dead | Status::Cancelled)
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "scheduled" => Status::Scheduled,
            "queued" => Status::Queued,
            "running" => Status::Running,
            "retrying" => Status::Retrying,
            "succeeded" => Status::Succeeded,
            "dead" => Status::Dead,
            "cancelled" => Status::Cancelled,
            other => return Err(format!("unknown status `{other}`")),
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `jobrunner.jobs`, as front ends and the CLI see it.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Job {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    pub payload: Value,
    pub status: String,
    pub priority: i32,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub unique_key: Option<String>,
    pub result: Option<Value>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The last progress the job reported (0 to 100), if it ever did.
    pub progress: Option<i16>,
    pub progress_message: Option<String>,
}

impl Job {
    pub fn status(&self) -> Option<Status> {
        self.status.parse().ok()
    }
}

/// What a producer asks for; `None` fields take the kind's defaults.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    pub kind: String,
    pub payload: Value,
    pub queue: Option<String>,
    pub run_at: Option<DateTime<Utc>>,
    pub priority: i32,
    pub max_attempts: Option<i32>,
    /// While an unfinished job holds this key, enqueueing returns that job's id.
    /// `None` takes the kind's `unique_key` template, if it has one.
    pub unique_key: Option<String>,
}

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

/// A job a producer put straight into Redis, to be recorded in the ledger.
#[derive(Debug, Clone)]
pub struct IngestedJob {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    pub payload: String,
    pub priority: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// Set when the job is refused at ingest (bad payload): it is recorded `dead`.
    pub refused: Option<String>,
}

/// What [`Ledger::insert_ingested`] did besides inserting.
#[derive(Debug, Default)]
pub struct IngestOutcome {
    /// Ids whose row already existed and is final: a producer re-sent them.
    pub finished: Vec<Uuid>,
    /// Ids that Postgres refused even as `dead`: quarantined instead.
    pub quarantined: Vec<Uuid>,
}

/// The shared Postgres pool and every query on the ledger.
#[derive(Clone, Debug)]
pub struct Ledger {
    pool: PgPool,
    /// Where the status writer and the ingester record batch sizes and pool waits.
    metrics: Arc<Metrics>,
}

fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!();
    migrator.dangerous_set_table_name("jobrunner._sqlx_migrations");
    migrator.create_schema("jobrunner");
    migrator
}

/// The newest migration this binary knows.
pub fn schema_version() -> i64 {
    migrator().iter().map(|m| m.version).max().unwrap_or(0)
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
               AND (j.status IN ('scheduled', 'queued', 'retrying', 'running')) IS TRUE
             ORDER BY j.id";

impl Ledger {
    /// Builds the process's one Postgres pool and checks that the server answers.
    pub async fn connect(config: &DatabaseConfig) -> Result<Ledger> {
        let url = config.url.to_string();
        let options: PgConnectOptions =
            config
                .url
                .expose()
                .parse()
                .map_err(|source| Error::Connect {
                    url: url.clone(),
                    source,
                })?;
        let options = options.application_name("jobrunner");
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .acquire_timeout(config.acquire_timeout)
            .idle_timeout(Some(config.idle_timeout))
            .max_lifetime(Some(config.max_lifetime))
            .test_before_acquire(config.test_before_acquire)
            .connect_with(options)
            .await
            .map_err(|source| Error::Connect { url, source })?;
        Ok(Ledger {
            pool,
            metrics: Arc::default(),
        })
    }

    pub fn from_pool(pool: PgPool) -> Ledger {
        Ledger {
            pool,
            metrics: Arc::default(),
        }
    }

    /// The same pool, recording into the daemon's `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Ledger {
        self.metrics = metrics;
        self
    }

    /// (connections open, of which idle) in the pool.
    pub fn pool_stats(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    /// A pooled connection, with the wait recorded in `jobrunner_postgres_acquire_seconds`.
    async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<Postgres>> {
        let start = std::time::Instant::now();
        let conn = self.pool.acquire().await;
        self.metrics.postgres_acquire(start.elapsed());
        Ok(conn?)
    }

    /// The shared pool, for handlers that write their own tables.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies every pending migration. Safe to run from several processes at once:
    /// the migrator takes an advisory lock.
    pub async fn migrate(&self) -> Result {
        migrator().run(&self.pool).await?;
        Ok(())
    }

    /// `SELECT 1` on a pooled connection: does Postgres answer? (The daemon's
    /// watchdog check.)
    pub async fn probe(&self) -> Result {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Fails with [`Error::SchemaOutdated`] unless every migration this binary
    /// knows has been applied.
    pub async fn check_schema(&self) -> Result {
        let needed = schema_version();
        let applied: Option<i64> = match sqlx::query_scalar(
            "SELECT max(version) FROM jobrunner._sqlx_migrations WHERE success",
        )
        .fetch_one(&self.pool)
        .await
        {
            Ok(v) => v,
            // 42P01: undefined table, 3F000: undefined schema: never migrated.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P01") | Some("3F000")) =>
            {
                None
            }
            Err(e) => return Err(e.into()),
        };
        match applied {
            Some(v) if v >= needed => Ok(()),
            Some(v) => Err(Error::SchemaOutdated {
                found: format!("version {v}"),
                needed,
            }),
            None => Err(Error::SchemaOutdated {
                found: "no jobrunner schema".into(),
                needed,
            }),
        }
    }

    /// Copies per-kind defaults from the config so SQL producers that give only a
    /// kind land on its queue with its attempt limit.
    pub async fn sync_kinds(&self, config: &config::Config) -> Result {
        let mut kinds = Vec::new();
        let mut queues = Vec::new();
        let mut attempts = Vec::new();
        let mut unique_keys = Vec::new();
        for (k, c) in &config.kinds {
            kinds.push(k.clone());
            queues.push(c.queue.clone());
            attempts.push(c.max_attempts);
            unique_keys.push(c.unique_key.clone());
        }
        sqlx::query(
            "INSERT INTO jobrunner.kinds (kind, queue, max_attempts, unique_key)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[])
             ON CONFLICT (kind) DO UPDATE
               SET queue = EXCLUDED.queue, max_attempts = EXCLUDED.max_attempts,
                   unique_key = EXCLUDED.unique_key, updated_at = now()
             WHERE (jobrunner.kinds.queue, jobrunner.kinds.max_attempts, jobrunner.kinds.unique_key)
                   IS DISTINCT FROM (EXCLUDED.queue, EXCLUDED.max_attempts, EXCLUDED.unique_key)",
        )
        .bind(kinds)
        .bind(queues)
        .bind(attempts)
        .bind(unique_keys)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Enqueues through `jobrunner.enqueue`, exactly as a SQL producer would. With a
    /// unique key held by an unfinished job, returns that job's id.
    pub async fn enqueue(&self, job: &NewJob) -> Result<Uuid> {
        let id = sqlx::query_scalar("SELECT jobrunner.enqueue($1, $2, $3, $4, $5, $6, $7)")
            .bind(&job.kind)
            .bind(&job.payload)
            .bind(&job.queue)
            .bind(job.run_at)
            .bind(job.priority)
            .bind(job.max_attempts)
            .bind(&job.unique_key)
            .fetch_one(&self.pool)
            .await?;
        Ok(id)
    }

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
            let done = job.status().is_some_and(Status::is_final);
            if done || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Ok(job);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Locks up to `limit` committed, undispatched jobs for this daemon to push to
    /// Redis. Other daemons skip the locked rows.
    pub async fn outbox(&self, limit: i64) -> Result<OutboxBatch> {
        let mut tx = self.pool.begin().await?;
        // This commit need not wait for the disk: if Postgres loses it in a crash,
        // the rows come back to the outbox and the dispatch script skips the jobs
        // Redis already holds. Waiting for fsync here would add to every pickup.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let jobs = sqlx::query_as::<_, DispatchJob>(DISPATCH)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        Ok(OutboxBatch { tx, jobs })
    }

    /// Records jobs producers put straight into Redis. Idempotent: a row that exists
    /// already is left alone, so a re-ingest after a crash does no harm. Returns the
    /// ids whose row already exists *and is final*: a producer re-sent a finished
    /// job's id, and it must not run again.
    ///
    /// A row Postgres refuses (bad data the script could not see) does not block the
    /// batch: the batch is retried row by row and each refused row is recorded
    /// `dead` with the reason, so one bad job never stalls a queue.
    pub async fn insert_ingested(&self, jobs: &mut [IngestedJob]) -> Result<IngestOutcome> {
        let mut outcome = IngestOutcome::default();
        // A data error names no row: halve the batch until the culprits stand alone,
        // so one poison row costs about 2·log2(n) statements, and the rest go in.
        // A transient error returns at once; the caller retries the whole batch,
        // which the `ON CONFLICT DO NOTHING` makes harmless for the parts done.
        let mut pending = Vec::new();
        pending.push(0..jobs.len());
        while let Some(range) = pending.pop() {
            if range.is_empty() {
                continue;
            }
            let part = &mut jobs[range.clone()];
            match self.insert_ingested_batch(part).await {
                Ok(ids) => outcome.finished.extend(ids),
                Err(Error::Sql(sqlx::Error::Database(e))) if is_data_error(e.code().as_deref()) => {
                    if part.len() > 1 {
                        let mid = range.start + part.len() / 2;
                        pending.push(mid..range.end);
                        pending.push(range.start..mid);
                    } else {
                        let reason = format!("the ledger refused this job: {}", e.message());
                        if self.refuse_ingested(&mut part[0], reason).await? {
                            outcome.quarantined.push(part[0].id);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(outcome)
    }

    /// Records one ingested job Postgres refused as `dead`, with every value it
    /// carries made as plain as possible; if even that is refused, quarantines it.
    /// True when it was quarantined.
    async fn refuse_ingested(&self, job: &mut IngestedJob, reason: String) -> Result<bool> {
        let now = Utc::now();
        job.refused = Some(match job.refused.take() {
            Some(earlier) => format!("{earlier}; {reason}"),
            None => reason,
        });
        job.run_at = now;
        job.created_at = now;
        job.priority = job.priority.clamp(-1000, 1000);
        job.max_attempts = job.max_attempts.max(1);
        match self.insert_ingested_batch(std::slice::from_mut(job)).await {
            Ok(_) => Ok(false),
            Err(Error::Sql(sqlx::Error::Database(e))) if is_data_error(e.code().as_deref()) => {
                let raw = serde_json::json!({
                    "id": job.id, "kind": job.kind, "payload": job.payload,
                    "priority": job.priority, "max_attempts": job.max_attempts,
                })
                .to_string();
                let error = format!(
                    "{}; recording it dead failed too: {}",
                    job.refused.as_deref().unwrap_or_default(),
                    e.message()
                );
                self.quarantine(&NewQuarantine {
                    source: "ingest",
                    queue: Some(&job.queue),
                    job_id: Some(job.id),
                    raw: &raw,
                    error: &error,
                })
                .await?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    async fn insert_ingested_batch(&self, jobs: &[IngestedJob]) -> Result<Vec<Uuid>> {
        let mut cols = IngestColumns::default();
        for job in jobs {
            cols.push(job);
        }
        let ids = cols.ids.clone();
        let mut conn = self.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let inserted = sqlx::query(
            "INSERT INTO jobrunner.jobs
               (id, queue, kind, payload, status, priority, max_attempts, run_at, created_at,
                last_error, finished_at)
             SELECT u.id, u.queue, u.kind, u.payload::jsonb, u.status, u.priority, u.max_attempts,
                    u.run_at, u.created_at, u.last_error,
                    CASE WHEN u.status = 'dead' THEN now() END
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                         $7::int[], $8::timestamptz[], $9::timestamptz[], $10::text[])
               AS u(id, queue, kind, payload, status, priority, max_attempts, run_at, created_at,
                    last_error)
             ON CONFLICT (id) DO NOTHING
             RETURNING id",
        )
        .bind(cols.ids)
        .bind(cols.queues)
        .bind(cols.kinds)
        .bind(cols.payloads)
        .bind(cols.statuses)
        .bind(cols.priorities)
        .bind(cols.max_attempts)
        .bind(cols.run_ats)
        .bind(cols.created_ats)
        .bind(cols.errors)
        .fetch_all(&mut *tx)
        .await?;
        let inserted: std::collections::HashSet<Uuid> = inserted.iter().map(|r| r.get(0)).collect();
        let existing: Vec<Uuid> = ids
            .into_iter()
            .filter(|id| !inserted.contains(id))
            .collect();
        // Rows that existed before this insert and are final: the statement above
        // left them alone, and their ids must not run again. Usually there are none.
        let finished = if existing.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar(
                "SELECT id FROM jobrunner.jobs
                 WHERE id = ANY($1) AND status IN ('succeeded', 'dead', 'cancelled')",
            )
            .bind(existing)
            .fetch_all(&mut *tx)
            .await?
        };
        tx.commit().await?;
        Ok(finished)
    }

    /// Puts every job that is not final back in the outbox: used when Redis came
    /// back empty. Returns how many rows it marked.
    pub async fn redispatch_all(&self) -> Result<u64> {
        let done = sqlx::query(
            "INSERT INTO jobrunner.outbox (id)
             SELECT id FROM jobrunner.jobs
             WHERE status IN ('scheduled', 'queued', 'retrying', 'running')
             ON CONFLICT DO NOTHING",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Puts the given jobs back in the outbox (their Redis copy was found missing),
    /// unless a status write touched them after `before`.
    pub async fn redispatch_stale(&self, ids: &[Uuid], before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "INSERT INTO jobrunner.outbox (id)
             SELECT id FROM jobrunner.jobs
             WHERE id = ANY($1) AND updated_at < $2
               AND status IN ('scheduled', 'queued', 'retrying', 'running')
             ON CONFLICT DO NOTHING",
        )
        .bind(ids)
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// A connection listening on [`ENQUEUED_CHANNEL`]. It holds one pooled
    /// connection for as long as it lives.
    pub async fn listener(&self) -> Result<sqlx::postgres::PgListener> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(ENQUEUED_CHANNEL).await?;
        Ok(listener)
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
             WHERE j.status IN ('scheduled', 'queued', 'retrying', 'running')
               AND j.updated_at < $1 AND j.id > $2
               AND NOT EXISTS (SELECT 1 FROM jobrunner.outbox o WHERE o.id = j.id)
             ORDER BY j.id LIMIT $3",
        )
        .bind(before)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get::<Uuid, _>(0), r.get::<String, _>(1)))
            .collect())
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
}

impl OutboxBatch {
    /// Removes the batch from the outbox; call only after Redis accepted every job
    /// not handed back with [`OutboxBatch::requeue`] or ended with [`OutboxBatch::bury`].
    pub async fn commit(self) -> Result {
        self.tx.commit().await?;
        Ok(())
    }

    /// Leaves these jobs in the outbox for a later round (their queue's dispatch
    /// failed for a reason that may pass); the rest of the batch still commits.
    pub async fn requeue(&mut self, ids: &[Uuid]) -> Result {
        if ids.is_empty() {
            return Ok(());
        }
        let revive: Vec<bool> = ids
            .iter()
            .map(|id| self.jobs.iter().any(|j| j.id == *id && j.revive))
            .collect();
        sqlx::query(
            "INSERT INTO jobrunner.outbox (id, revive)
             SELECT * FROM UNNEST($1::uuid[], $2::bool[]) ON CONFLICT DO NOTHING",
        )
        .bind(ids)
        .bind(revive)
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
               AND j.status NOT IN ('succeeded', 'dead', 'cancelled')
             RETURNING j.id, j.queue, j.kind, j.attempts",
        )
        .bind(ids)
        .bind(errors)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }
}

/// SQLSTATE classes 22 (data exception) and 23 (constraint violation): the row is
/// wrong, not the connection.
fn is_data_error(code: Option<&str>) -> bool {
    code.is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
}

impl Error {
    /// Whether the failure is an item's fault, so retrying the same values can
    /// never succeed: SQLSTATE classes 22 (data exception), 23 (constraint
    /// violation) and 54 (program limit exceeded: too deep, too long), or a value
    /// the client could not encode or decode. Anything else (connection lost,
    /// timeout, serialization failure 40001, deadlock 40P01, admin shutdown 57P0x,
    /// a schema mismatch) may pass, and retries the whole batch.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Sql(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54")),
            Error::Sql(sqlx::Error::Encode(_) | sqlx::Error::ColumnDecode { .. }) => true,
            _ => false,
        }
    }
}

#[derive(Default)]
struct IngestColumns {
    ids: Vec<Uuid>,
    queues: Vec<String>,
    kinds: Vec<String>,
    payloads: Vec<String>,
    statuses: Vec<&'static str>,
    priorities: Vec<i32>,
    max_attempts: Vec<i32>,
    run_ats: Vec<DateTime<Utc>>,
    created_ats: Vec<DateTime<Utc>>,
    errors: Vec<Option<String>>,
}

impl IngestColumns {
    fn push(&mut self, job: &IngestedJob) {
        let (status, payload) = match &job.refused {
            // A refused payload may not be JSON at all: keep the text as a JSON string.
            Some(_) => (
                Status::Dead,
                Value::String(crate::pgtext::safe(&job.payload).into_owned()).to_string(),
            ),
            None if job.run_at > Utc::now() => (Status::Scheduled, job.payload.clone()),
            None => (Status::Queued, job.payload.clone()),
        };
        self.ids.push(job.id);
        self.queues.push(job.queue.clone());
        self.kinds.push(job.kind.clone());
        self.payloads.push(payload);
        self.statuses.push(status.as_str());
        self.priorities.push(job.priority);
        self.max_attempts.push(job.max_attempts);
        self.run_ats.push(job.run_at);
        self.created_ats.push(job.created_at);
        self.errors.push(
            job.refused
                .as_deref()
                .map(|e| crate::pgtext::safe(e).into_owned()),
        );
    }
}
