//! `[runtime]`, `[log]` and `[queues.NAME]`: how the daemon's loops, workers and
//! logs run, and which queues it serves.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::RateLimit;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// How long a fetched job is leased before another daemon may run it again.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Most jobs taken from one queue in one round trip.
    pub fetch_batch: usize,
    /// On SIGTERM, running jobs get this long to finish before they are handed back.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How often expired leases are returned and Redis is checked for a lost epoch.
    #[serde(with = "humantime_serde")]
    pub reap_interval: Duration,
    /// How often the ledger's unfinished jobs are checked against Redis, to
    /// dispatch again those Redis lost (a daemon died between settling a job in
    /// Redis and writing its status, or a failed-over master had not yet
    /// replicated a dispatch or a lease).
    #[serde(with = "humantime_serde")]
    pub orphan_sweep_interval: Duration,
    /// Safety-net sweep of the SQL outbox, in case a NOTIFY was missed.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// An idle fetch loop polls this often even without a wake-up message.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Most status changes written to Postgres in one statement.
    pub status_batch_max: usize,
    /// Status writers committing side by side (each job always uses the same one).
    pub status_writers: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// An `EnvFilter` directive such as `info` or `jobrunner=debug,sqlx=warn`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Most jobs of this queue running at once in this daemon.
    pub concurrency: usize,
    /// Most jobs of this queue leased per period across all daemons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            lease: Duration::from_secs(30),
            fetch_batch: 64,
            drain_timeout: Duration::from_secs(30),
            reap_interval: Duration::from_secs(1),
            orphan_sweep_interval: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(250),
            status_batch_max: 1000,
            status_writers: 2,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info,sqlx=warn".to_owned(),
            format: LogFormat::Pretty,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            concurrency: 32,
            rate_limit: None,
        }
    }
}
