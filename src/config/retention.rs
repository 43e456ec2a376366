//! `[retention]`: how long final jobs stay in the ledger before the daemon deletes
//! them. Each TTL is optional; a status without one is kept forever.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Succeeded jobs are deleted this long after they finished.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub succeeded: Option<Duration>,
    /// Dead jobs are deleted this long after they died.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub dead: Option<Duration>,
    /// Cancelled jobs are deleted this long after they were cancelled.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub cancelled: Option<Duration>,
    /// How often the daemon looks for jobs past their TTL.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Most rows one delete statement removes; the pruner pauses between batches
    /// so it never holds many row locks or starves the status writers.
    pub batch: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            succeeded: None,
            dead: None,
            cancelled: None,
            interval: Duration::from_secs(60),
            batch: 1000,
        }
    }
}

impl RetentionConfig {
    /// `(key, reason)` of the first bad value, relative to `[retention]`.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        for (key, ttl) in [
            ("succeeded", self.succeeded),
            ("dead", self.dead),
            ("cancelled", self.cancelled),
        ] {
            if ttl.is_some_and(|t| t.is_zero()) {
                return Err((
                    key.into(),
                    "must be above zero (leave the key out to keep these jobs forever)".into(),
                ));
            }
        }
        if self.interval.is_zero() {
            return Err(("interval".into(), "must be above zero".into()));
        }
        if !(1..=10_000).contains(&self.batch) {
            return Err(("batch".into(), "must be from 1 to 10000".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn retention_keys_are_optional_and_survive_a_round_trip() {
        let config =
            Config::from_toml("[retention]\ndead = \"30d\"\nbatch = 500\n", "r.toml").unwrap();
        config.validate().unwrap();
        assert_eq!(config.retention.succeeded, None);
        assert_eq!(
            config.retention.dead,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(config.retention.interval, Duration::from_secs(60));
        let again = Config::from_toml(&toml::to_string(&config).unwrap(), "again").unwrap();
        assert_eq!(again.retention, config.retention);
    }

    #[test]
    fn a_zero_ttl_is_rejected_with_its_key() {
        let config = Config::from_toml("[retention]\nsucceeded = \"0s\"\n", "r.toml").unwrap();
        let text = config.validate().unwrap_err().to_string();
        assert!(text.contains("key `retention.succeeded`"), "{text}");
        let config = Config::from_toml("[retention]\nbatch = 0\n", "r.toml").unwrap();
        let text = config.validate().unwrap_err().to_string();
        assert!(text.contains("key `retention.batch`"), "{text}");
    }
}
