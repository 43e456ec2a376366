//! Settings of the daemon's observability surface: `[admin]` (the HTTP listener
//! for health, metrics, job lookups and live events) and `[events]` (where status
//! changes are published).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The admin HTTP listener: `/healthz`, `/readyz`, `/metrics`, `/jobs/{id}`,
/// `/events`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `false` (or an empty `listen`) turns the listener off.
    pub enabled: bool,
    /// Address and port to listen on. Loopback by default: the endpoints carry no
    /// authentication, so expose them beyond the machine only on purpose.
    pub listen: String,
}

/// Publishing of job status changes to other processes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// PUBLISH every status change on the Redis channel `prefix:events`. The
    /// `/events` endpoint reads that channel, so it shows every daemon's jobs.
    pub redis: bool,
    /// NOTIFY every status change on the Postgres channel `jobrunner_events`.
    /// Off by default: it adds a few milliseconds to every SQL-enqueued job's
    /// pickup (measured in docs/PROTOCOL.md); turn it on for LISTEN-based front ends.
    pub postgres: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: "127.0.0.1:9187".to_owned(),
        }
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            redis: true,
            postgres: false,
        }
    }
}

impl AdminConfig {
    /// The address to bind, or `None` when the listener is off.
    pub fn address(&self) -> Option<SocketAddr> {
        if !self.enabled || self.listen.is_empty() {
            return None;
        }
        self.listen.parse().ok()
    }

    /// (key, reason) of the first bad setting.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if self.enabled && !self.listen.is_empty() && self.listen.parse::<SocketAddr>().is_err() {
            return Err((
                "admin.listen".into(),
                format!(
                    "`{}` is not an address and port like 127.0.0.1:9187 or [::1]:9187 (use \"\" to turn the listener off)",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_is_on_loopback_by_default_and_can_be_turned_off() {
        let on = AdminConfig::default();
        assert_eq!(on.address(), Some("127.0.0.1:9187".parse().unwrap()));
        let empty = AdminConfig {
            listen: String::new(),
            ..AdminConfig::default()
        };
        assert_eq!(empty.address(), None);
        assert!(empty.validate().is_ok());
        let off = AdminConfig {
            enabled: false,
            listen: "nonsense".into(),
        };
        assert_eq!(off.address(), None);
        assert!(off.validate().is_ok());
    }

    #[test]
    fn a_host_name_instead_of_an_address_is_rejected_with_its_key() {
        let bad = AdminConfig {
            listen: "localhost:9187".into(),
            ..AdminConfig::default()
        };
        let (key, reason) = bad.validate().unwrap_err();
        assert_eq!(key, "admin.listen");
        assert!(reason.contains("localhost:9187"), "{reason}");
    }
}
