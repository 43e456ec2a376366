//! The Postgres ledger: the system of record for every job.
//!
//! This file holds the [`Ledger`] type (the pool), the migrations and schema
//! check, the SQL enqueue path and the error type. Each concept has its own file:
//! `outbox.rs` (the dispatch statement and [`OutboxBatch`]), `ingest.rs` (jobs
//! producers put straight into Redis), `recovery.rs` (putting jobs Redis lost back
//! in the outbox), `queries.rs` (reads), `control.rs` (cancel, retry, pause, purge),
//! `schema.rs` (migrations, the ledger's and those of the kinds above the core, and
//! the schema check), `writer/` (the batched status writer), `events.rs`, `cron.rs`, `quarantine.rs`,
//! `plans.rs` (the hot statements' plans) and `safe.rs`.
//!
//! **Invariant:** only `ledger` runs SQL on `jobrunner.jobs`. It never talks to Redis;
//! the dispatcher in `runtime` moves outbox rows into `broker`. Checked by
//! `tests/integration/invariants.rs::only_ledger_runs_sql_on_the_ledger_tables`
//! and `::only_broker_names_the_redis_client`.

mod connect;
mod control;
mod cron;
mod events;
mod external;
mod ingest;
mod outbox;
mod plans;
mod quarantine;
mod queries;
mod recovery;
pub mod safe;
mod schema;
mod status;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{FromRow, PgPool, Postgres};
use uuid::Uuid;

use crate::config::{self, DatabaseConfig};
use crate::metrics::Metrics;

pub use connect::connect_options;
pub use control::{Cancelled, DeadFilter};
pub use cron::{CronFire, CronJob};
pub use events::{EVENTS_CHANNEL, Event, EventType, ProgressInfo};
pub use external::ExternalId;
pub use ingest::{Conflict, IngestOutcome, IngestedJob};
pub use outbox::{DispatchJob, OutboxBatch};
pub use plans::HotPlan;
pub use quarantine::{NewQuarantine, QUARANTINE_TEXT_MAX, Quarantined};
pub use queries::{JobDetail, JobFilter, JobSummary, MinuteCount, QueueCounts};
pub use schema::{migrator, schema_version};
pub use sqlx::postgres::PgConnectOptions;
pub use status::{ALL_STATUSES, Status};
pub use writer::{
    Attempt, Claim, EventSender, ProgressReport, StatusUpdate, StatusWriter, Transition, Verdict,
    WriterHandle,
};

/// How long a waiter treats a missing row as "not ingested yet".
pub const INGEST_GRACE: Duration = Duration::from_secs(5);

/// The channel `jobrunner.enqueue` notifies, with the queue name as payload.
pub const ENQUEUED_CHANNEL: &str = "jobrunner_enqueued";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to Postgres at {url}{}", hint.as_ref().map(|h| format!(": {h}")).unwrap_or_default())]
    Connect {
        url: String,
        /// What failed, in the operator's terms, when the error shows it (a
        /// certificate from an unknown CA, a server that refuses plain text).
        hint: Option<String>,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot connect to Postgres at {url}: {reason}")]
    Config { url: String, reason: String },
    #[error(
        "the database schema is not current (at {found}, this jobrunner needs {needed}): run `jobrunner migrate` or start with `jobrunner run --migrate`"
    )]
    SchemaOutdated { found: String, needed: i64 },
    #[error("migrating the database failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("job {0} not found")]
    NotFound(Uuid),
    #[error("job {id} is {status}: only a dead or cancelled job can be retried")]
    NotRetryable { id: Uuid, status: Status },
    #[error("Postgres query failed")]
    Sql(#[from] sqlx::Error),
}

pub type Result<T = (), E = Error> = std::result::Result<T, E>;

/// One row of `jobrunner.jobs`, as front ends and the CLI see it.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Job {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    pub payload: Value,
    pub status: Status,
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

/// The shared Postgres pool and every query on the ledger.
#[derive(Clone, Debug)]
pub struct Ledger {
    pool: PgPool,
    /// Where the status writer and the ingester record batch sizes and pool waits.
    metrics: Arc<Metrics>,
}

impl Ledger {
    /// Builds the process's one Postgres pool and checks that the server answers.
    pub async fn connect(config: &DatabaseConfig) -> Result<Ledger> {
        let url = config.url.to_string();
        let (options, tls) = connect_options(config)?;
        let options = connect::probe_allow(options, &tls).await;
        let host = options.get_host().to_owned();
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .acquire_timeout(config.acquire_timeout)
            .idle_timeout(Some(config.idle_timeout))
            .max_lifetime(Some(config.max_lifetime))
            .test_before_acquire(config.test_before_acquire)
            .connect_with(options)
            .await
            .map_err(|source| Error::Connect {
                url,
                hint: connect::hint(&source, &tls, &host),
                source,
            })?;
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

    /// `SELECT 1` on a pooled connection: does Postgres answer? (The daemon's
    /// watchdog check.)
    pub async fn probe(&self) -> Result {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
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
    /// A connection listening on [`ENQUEUED_CHANNEL`]. It holds one pooled
    /// connection for as long as it lives.
    pub async fn listener(&self) -> Result<sqlx::postgres::PgListener> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(ENQUEUED_CHANNEL).await?;
        Ok(listener)
    }
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
