//! What the process exposes: every metric's name, type, help text and buckets
//! ([`DEFS`]), and the label values the typed recording methods take
//! ([`Channel`], [`Path`]). Declared once here, so no call site spells a name.

/// Buckets for durations, in seconds: a few ms up to five minutes.
pub(super) const SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Buckets for the status writer's batch sizes.
pub(super) const SIZES: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];
/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: name, type, help text and (for histograms) bucket bounds.
pub struct Def {
    pub name: &'static str,
    pub kind: Type,
    pub help: &'static str,
    pub(super) buckets: &'static [f64],
}

const fn def(name: &'static str, kind: Type, help: &'static str) -> Def {
    Def {
        name,
        kind,
        help,
        buckets: SECONDS,
    }
}

pub const JOBS_FINISHED: &str = "jobrunner_jobs_finished_total";
pub const JOB_DURATION: &str = "jobrunner_job_duration_seconds";
pub const QUEUE_WAIT: &str = "jobrunner_queue_wait_seconds";
pub const RETRIES: &str = "jobrunner_job_retries_total";
pub const DEAD: &str = "jobrunner_jobs_dead_total";
pub const LEASE_EXPIRED: &str = "jobrunner_lease_expired_total";
pub const STATUS_BATCH: &str = "jobrunner_status_batch_size";
pub const STATUS_WRITE: &str = "jobrunner_status_write_seconds";
pub const PG_ACQUIRE: &str = "jobrunner_postgres_acquire_seconds";
pub const EVENTS_PUBLISHED: &str = "jobrunner_events_published_total";
pub const EVENTS_DROPPED: &str = "jobrunner_events_dropped_total";
pub const QUEUE_JOBS: &str = "jobrunner_queue_jobs";
pub const QUEUE_OLDEST_READY: &str = "jobrunner_queue_oldest_ready_age_seconds";
pub const PG_CONNECTIONS: &str = "jobrunner_postgres_pool_connections";
pub const REDIS_CONNECTIONS: &str = "jobrunner_redis_pool_connections";
pub const REDIS_QUEUED: &str = "jobrunner_redis_commands_queued";
pub const REDIS_REDELIVERIES: &str = "jobrunner_redis_redeliveries_total";
pub const QUARANTINED: &str = "jobrunner_quarantined_total";
pub const UP: &str = "jobrunner_up";
pub const POISON: &str = "jobrunner_batch_poison_total";
pub const REDIS_ERRORS: &str = "jobrunner_redis_errors_total";
pub const QUEUE_REDIS_UP: &str = "jobrunner_queue_redis_up";

/// Every metric this process exposes.
pub const DEFS: &[Def] = &[
    def(
        JOBS_FINISHED,
        Type::Counter,
        "Jobs this daemon ran to an end state, by kind and state (succeeded or dead).",
    ),
    def(
        JOB_DURATION,
        Type::Histogram,
        "Run time of one attempt's handler, by kind.",
    ),
    def(
        QUEUE_WAIT,
        Type::Histogram,
        "Time from a job becoming due to its first attempt's lease by this daemon, by queue.",
    ),
    def(
        RETRIES,
        Type::Counter,
        "Failed attempts that were scheduled to run again, by kind.",
    ),
    def(
        DEAD,
        Type::Counter,
        "Jobs that ended dead (attempts spent or a permanent error), by kind.",
    ),
    def(
        LEASE_EXPIRED,
        Type::Counter,
        "Leases this daemon's reaper found expired (a worker stopped responding), by queue.",
    ),
    Def {
        name: STATUS_BATCH,
        kind: Type::Histogram,
        help: "Rows written by one statement of the batched status writer.",
        buckets: SIZES,
    },
    def(
        STATUS_WRITE,
        Type::Histogram,
        "Time one status-writer batch took in Postgres, including waiting for a connection.",
    ),
    def(
        PG_ACQUIRE,
        Type::Histogram,
        "Wait for a pooled Postgres connection in the status writer and the ingester.",
    ),
    def(
        EVENTS_PUBLISHED,
        Type::Counter,
        "Job events published, by channel (redis or postgres).",
    ),
    def(
        EVENTS_DROPPED,
        Type::Counter,
        "Job events not published because the channel failed or its buffer was full, by channel.",
    ),
    def(
        QUEUE_JOBS,
        Type::Gauge,
        "Jobs in Redis per queue and state: ready, scheduled (delayed or retrying), running (leased).",
    ),
    def(
        QUEUE_OLDEST_READY,
        Type::Gauge,
        "Age of the job at the head of the queue's ready set (the oldest of the highest priority waiting).",
    ),
    def(
        PG_CONNECTIONS,
        Type::Gauge,
        "Connections of the Postgres pool, by state (idle or in_use).",
    ),
    def(
        REDIS_CONNECTIONS,
        Type::Gauge,
        "Clients of the Redis pool, by state (connected or disconnected).",
    ),
    def(
        REDIS_QUEUED,
        Type::Gauge,
        "Redis commands buffered in the pool, not yet sent.",
    ),
    def(
        REDIS_REDELIVERIES,
        Type::Counter,
        "Redis commands sent again after a connection closed while waiting for the reply.",
    ),
    def(
        POISON,
        Type::Counter,
        "Items a batch could not write for a reason of their own, found by splitting the batch, by path (dispatch, status, events): the job was recorded dead, or the event dropped.",
    ),
    def(
        QUARANTINED,
        Type::Counter,
        "Items read from outside that could not be recorded as a job and were kept in jobrunner.quarantine, by source.",
    ),
    def(
        REDIS_ERRORS,
        Type::Counter,
        "Redis calls of one queue that failed, by queue and path (dispatch, ingest, fetch, ack, recovery); each queue retries and backs off on its own.",
    ),
    def(
        QUEUE_REDIS_UP,
        Type::Gauge,
        "1 when the queue's Redis (its cluster master) answered this scrape, 0 when it did not, by queue.",
    ),
    def(
        UP,
        Type::Gauge,
        "1 while the daemon runs; 0 once it is draining.",
    ),
];

/// Label pairs of one series, in a fixed order.
pub(super) type Labels = Vec<(&'static str, String)>;

/// A value read at scrape time: (metric name, labels, value).
pub type Sample = (&'static str, Labels, f64);

/// Where a job event went (the `channel` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Redis,
    Postgres,
    /// The publisher's buffer, full because it fell behind the status writers.
    Buffer,
}

impl Channel {
    pub(super) const ALL: [Channel; 3] = [Channel::Redis, Channel::Postgres, Channel::Buffer];

    /// The label value, also used as the `channel` field of log lines.
    pub fn label(self) -> &'static str {
        match self {
            Channel::Redis => "redis",
            Channel::Postgres => "postgres",
            Channel::Buffer => "buffer",
        }
    }
}

/// Which batch found a poison item (the `path` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Dispatch,
    Status,
    Events,
}

impl Path {
    pub(super) const ALL: [Path; 3] = [Path::Dispatch, Path::Status, Path::Events];

    pub(super) fn label(self) -> &'static str {
        match self {
            Path::Dispatch => "dispatch",
            Path::Status => "status",
            Path::Events => "events",
        }
    }
}

/// Which of a queue's Redis calls failed (the `path` label of
/// [`REDIS_ERRORS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisPath {
    /// The outbox moving the queue's SQL-enqueued jobs into Redis.
    Dispatch,
    /// Claiming or promoting the queue's Redis-enqueued jobs.
    Ingest,
    /// Leasing the queue's jobs.
    Fetch,
    /// Settling a lease: complete, retry, release, heartbeat.
    Ack,
    /// The epoch check, the reaper and the orphan check.
    Recovery,
}

impl RedisPath {
    pub(super) fn label(self) -> &'static str {
        match self {
            RedisPath::Dispatch => "dispatch",
            RedisPath::Ingest => "ingest",
            RedisPath::Fetch => "fetch",
            RedisPath::Ack => "ack",
            RedisPath::Recovery => "recovery",
        }
    }
}
