//! `[database]` and `[redis]`: where the two services are and how the pools
//! reach them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SecretUrl;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Printed with its password hidden (see [`SecretUrl`]).
    pub url: SecretUrl,
    pub max_connections: u32,
    pub min_connections: u32,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Ping a pooled connection before handing it out, so a restarted Postgres costs
    /// one failed ping rather than one failed job.
    pub test_before_acquire: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Printed with its password hidden (see [`SecretUrl`]).
    pub url: SecretUrl,
    /// Connections in the shared pool (blocking-free commands only).
    pub pool_size: usize,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Every command fails after this long instead of hanging on a half-dead socket.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Reconnect backoff starts here and doubles up to `reconnect_max_delay`, forever.
    #[serde(with = "humantime_serde")]
    pub reconnect_min_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// Every key starts with this; tests give each daemon its own prefix.
    pub key_prefix: String,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            // The role and database scripts/demo.sh creates; production sets the
            // URL in the environment (JOBRUNNER_DATABASE_URL).
            url: "postgres://jobrunner:jobrunner@127.0.0.1:5432/jobrunner".into(),
            max_connections: 16,
            min_connections: 1,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(1800),
            test_before_acquire: true,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/0".into(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            key_prefix: "jobrunner".to_owned(),
        }
    }
}
