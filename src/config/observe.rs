//! Settings of the daemon's observability surface: `[admin]` (the HTTP listener
//! for health, metrics, job lookups, live events and the dashboard, and who may
//! use it) and `[events]` (where status changes are published).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The admin HTTP listener: `/healthz`, `/readyz`, `/metrics`, `/jobs/{id}`,
/// `/events`, the dashboard at `/` and its actions.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `false` (or an empty `listen`) turns the listener off.
    pub enabled: bool,
    /// Address and port to listen on. Loopback by default. Without `tokens_file`
    /// only a loopback address is accepted: the endpoints would be open to anyone
    /// who can reach them.
    pub listen: String,
    /// A file of bearer tokens, one `SCOPE TOKEN` per line (`read` or `admin`).
    /// Without it every reading endpoint is open (on loopback only) and nothing
    /// that changes state is served.
    pub tokens_file: Option<PathBuf>,
    /// `true` puts `/metrics` behind a `read` token too (it is open by default, for
    /// scrapers that send none).
    pub metrics_need_token: bool,
    /// Host names (the `Host` header without its port) the listener answers to.
    /// Empty: any name when tokens are configured, only loopback names (and the
    /// listen address) when they are not, which keeps a web page that rebinds its
    /// own domain to 127.0.0.1 from reading the endpoints.
    pub hosts: Vec<String>,
    /// A PEM certificate chain; with `tls_key`, the listener speaks HTTPS only
    /// (and marks the dashboard's session cookie `Secure`).
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
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
            tokens_file: None,
            metrics_need_token: false,
            hosts: Vec::new(),
            tls_cert: None,
            tls_key: None,
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
        if !self.enabled || self.listen.is_empty() {
            return Ok(());
        }
        let Ok(addr) = self.listen.parse::<SocketAddr>() else {
            return Err((
                "admin.listen".into(),
                format!(
                    "`{}` is not an address and port like 127.0.0.1:9187 or [::1]:9187 (use \"\" to turn the listener off)",
                    self.listen
                ),
            ));
        };
        if !addr.ip().is_loopback() && self.tokens_file.is_none() {
            return Err((
                "admin.listen".into(),
                format!(
                    "`{}` is not a loopback address and admin.tokens_file is not set: the job payloads and \
                     events would be open to anyone who can reach it; set admin.tokens_file, or listen on 127.0.0.1",
                    self.listen
                ),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            let missing = if self.tls_cert.is_none() {
                "admin.tls_cert"
            } else {
                "admin.tls_key"
            };
            return Err((
                missing.into(),
                "set both admin.tls_cert and admin.tls_key, or neither".into(),
            ));
        }
        if let Some(bad) = self
            .hosts
            .iter()
            .find(|h| h.is_empty() || h.contains([':', '/', ' ']) && !h.starts_with('['))
        {
            return Err((
                "admin.hosts".into(),
                format!("`{bad}` is not a host name (give names without a port or scheme)"),
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
            ..AdminConfig::default()
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

    #[test]
    fn tls_needs_both_a_certificate_and_a_key() {
        let half = AdminConfig {
            tls_cert: Some("/etc/jobrunner/admin.crt".into()),
            ..AdminConfig::default()
        };
        let (key, reason) = half.validate().unwrap_err();
        assert_eq!(key, "admin.tls_key");
        assert!(reason.contains("both"), "{reason}");
        let whole = AdminConfig {
            tls_key: Some("/etc/jobrunner/admin.key".into()),
            ..half
        };
        assert!(whole.validate().is_ok());
    }

    #[test]
    fn a_non_loopback_address_needs_tokens() {
        let open = AdminConfig {
            listen: "0.0.0.0:9187".into(),
            ..AdminConfig::default()
        };
        let (key, reason) = open.validate().unwrap_err();
        assert_eq!(key, "admin.listen");
        assert!(reason.contains("admin.tokens_file"), "{reason}");
        let guarded = AdminConfig {
            tokens_file: Some("/etc/jobrunner/tokens".into()),
            ..open
        };
        assert!(guarded.validate().is_ok());
        let ipv6_loopback = AdminConfig {
            listen: "[::1]:9187".into(),
            ..AdminConfig::default()
        };
        assert!(ipv6_loopback.validate().is_ok());
    }
}
