//! TLS settings for the two services, read here and applied by `ledger` (sqlx)
//! and `broker` (fred), which are the only modules that open connections.
//!
//! Postgres keeps libpq's conventions, so a managed provider's documented URL
//! works as given: `sslmode`, `sslrootcert`, `sslcert` and `sslkey` in the URL,
//! else the `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY` variables
//! ([`PgTls::resolve`]). Redis takes TLS from the URL's scheme (`rediss://` and
//! its cluster and sentinel forms) and its files from `[redis.tls]`
//! ([`RedisTls`]), which applies to every topology alike.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// libpq's `sslmode`, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// Plain text; TLS only if the server refuses plain text.
    Allow,
    /// TLS if the server offers it, without checking its certificate (the default).
    Prefer,
    /// TLS, certificate unchecked (checked as `VerifyCa` when a root CA is given).
    Require,
    /// TLS, certificate signed by a trusted CA.
    VerifyCa,
    /// TLS, certificate signed by a trusted CA and naming the host connected to.
    VerifyFull,
}

/// What the Postgres server's certificate is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates (`sslrootcert=/path`).
    File(PathBuf),
    /// The system's CA store (`sslrootcert=system`, as in libpq 16).
    System,
}

/// The TLS settings of the Postgres connection, resolved as libpq resolves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    /// `None`: the system's CA store, for the modes that check a certificate.
    pub root_cert: Option<RootCert>,
    /// A client certificate and its key, both or neither.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// `[redis.tls]`: how a `rediss://` connection checks the server and shows
/// itself. Independent of the topology: the same table serves a single server,
/// a cluster and a sentinel set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTls {
    /// PEM file of the CAs that sign the server's certificate; without it, the
    /// system's CA store.
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for servers that ask for one, with `key_file`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Check that the certificate names the host in the URL. Turn it off only
    /// for a server reached by an address its certificate does not list.
    pub verify_server_name: bool,
}

impl Default for RedisTls {
    fn default() -> Self {
        RedisTls {
            ca_file: None,
            cert_file: None,
            key_file: None,
            verify_server_name: true,
        }
    }
}

impl RedisTls {
    /// Whether anything differs from the defaults (so a plain-text URL with
    /// this table is a mistake worth refusing).
    pub fn is_set(&self) -> bool {
        *self != RedisTls::default()
    }

    /// The files this table names, with their keys.
    pub fn files(&self) -> Vec<(&'static str, &PathBuf)> {
        [
            ("redis.tls.ca_file", &self.ca_file),
            ("redis.tls.cert_file", &self.cert_file),
            ("redis.tls.key_file", &self.key_file),
        ]
        .into_iter()
        .filter_map(|(key, file)| file.as_ref().map(|f| (key, f)))
        .collect()
    }
}

/// Whether a Redis URL asks for TLS: `rediss://`, `rediss-cluster://`,
/// `rediss-sentinel://` (and the `valkeys` spellings fred reads alike).
pub fn redis_url_uses_tls(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    let base = scheme.split('-').next().unwrap_or("");
    matches!(base, "rediss" | "valkeys")
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

impl std::str::FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "`{other}` is not an sslmode (disable, allow, prefer, require, verify-ca, verify-full)"
                ));
            }
        })
    }
}

impl PgTls {
    /// Each setting from the URL's query (`sslmode`, `sslrootcert`, `sslcert`,
    /// `sslkey`), else from its `PGSSL*` variable (`var` looks one up), else
    /// libpq's default. Then libpq's rules: a root CA file makes `require` check
    /// the CA (`verify-ca`); `sslrootcert=system` means `verify-full` and refuses
    /// a weaker mode. The error says which setting is wrong and where it came from.
    pub fn resolve(url: &str, var: impl Fn(&str) -> Option<String>) -> Result<PgTls, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let query = |names: &[&str]| {
            parsed
                .query_pairs()
                .find(|(key, _)| names.contains(&key.as_ref()))
                .map(|(_, value)| value.into_owned())
        };
        let setting = |names: &[&str], env: &'static str| {
            match query(names) {
                Some(value) => Some((value, format!("`{}` in the URL", names[0]))),
                None => var(env).map(|value| (value, format!("${env}"))),
            }
            .filter(|(value, _)| !value.is_empty())
        };
        let mode = setting(&["sslmode", "ssl-mode"], "PGSSLMODE")
            .map(|(value, from)| {
                value
                    .parse::<SslMode>()
                    .map(|mode| (mode, from.clone()))
                    .map_err(|e| format!("{from}: {e}"))
            })
            .transpose()?;
        let root_cert = setting(&["sslrootcert", "ssl-root-cert", "ssl-ca"], "PGSSLROOTCERT").map(
            |(value, _)| match value.as_str() {
                "system" => RootCert::System,
                _ => RootCert::File(value.into()),
            },
        );
        let cert = setting(&["sslcert", "ssl-cert"], "PGSSLCERT");
        let key = setting(&["sslkey", "ssl-key"], "PGSSLKEY");
        let client_cert = match (cert, key) {
            (Some((cert, _)), Some((key, _))) => Some((cert.into(), key.into())),
            (None, None) => None,
            (Some((_, from)), None) => {
                return Err(format!("{from} names a client certificate without sslkey"));
            }
            (None, Some((_, from))) => {
                return Err(format!("{from} names a client key without sslcert"));
            }
        };
        let mode = match (mode, &root_cert) {
            (Some((mode, from)), Some(RootCert::System)) if mode < SslMode::VerifyFull => {
                return Err(format!(
                    "{from}: sslmode {mode} cannot be used with sslrootcert=system (use verify-full)"
                ));
            }
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (Some((SslMode::Require, _)), Some(RootCert::File(_))) => SslMode::VerifyCa,
            (Some((mode, _)), _) => mode,
            (None, _) => SslMode::Prefer,
        };
        Ok(PgTls {
            mode,
            root_cert,
            client_cert,
        })
    }

    /// The files these settings name, for the start-up check.
    pub fn files(&self) -> Vec<(&'static str, &PathBuf)> {
        let mut files = Vec::new();
        if let Some(RootCert::File(path)) = &self.root_cert {
            files.push(("sslrootcert", path));
        }
        if let Some((cert, key)) = &self.client_cert {
            files.push(("sslcert", cert));
            files.push(("sslkey", key));
        }
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(url: &str, env: &[(&str, &str)]) -> Result<PgTls, String> {
        PgTls::resolve(url, |name| {
            env.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn without_settings_the_mode_is_prefer() {
        let tls = resolve("postgres://db/x", &[]).unwrap();
        assert_eq!(tls.mode, SslMode::Prefer);
        assert_eq!(tls.root_cert, None);
        assert_eq!(tls.client_cert, None);
    }

    #[test]
    fn the_url_wins_over_the_environment() {
        let env = [("PGSSLMODE", "disable"), ("PGSSLROOTCERT", "/env/ca.pem")];
        let tls = resolve(
            "postgres://db/x?sslmode=verify-full&sslrootcert=/url/ca.pem",
            &env,
        )
        .unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(RootCert::File("/url/ca.pem".into())));
        let tls = resolve("postgres://db/x", &env).unwrap();
        assert_eq!(tls.mode, SslMode::Disable);
        assert_eq!(tls.root_cert, Some(RootCert::File("/env/ca.pem".into())));
    }

    #[test]
    fn require_with_a_root_certificate_checks_the_ca_as_libpq_does() {
        let tls = resolve("postgres://db/x?sslmode=require&sslrootcert=/ca.pem", &[]).unwrap();
        assert_eq!(tls.mode, SslMode::VerifyCa);
        let tls = resolve("postgres://db/x?sslmode=require", &[]).unwrap();
        assert_eq!(tls.mode, SslMode::Require);
    }

    #[test]
    fn sslrootcert_system_means_verify_full_and_refuses_weaker_modes() {
        let tls = resolve("postgres://db/x?sslrootcert=system", &[]).unwrap();
        assert_eq!(
            (tls.mode, tls.root_cert),
            (SslMode::VerifyFull, Some(RootCert::System))
        );
        let err = resolve(
            "postgres://db/x?sslrootcert=system",
            &[("PGSSLMODE", "require")],
        )
        .unwrap_err();
        assert_eq!(
            err,
            "$PGSSLMODE: sslmode require cannot be used with sslrootcert=system (use verify-full)"
        );
    }

    #[test]
    fn a_bad_mode_names_where_it_came_from() {
        let err = resolve("postgres://db/x?sslmode=verify", &[]).unwrap_err();
        assert!(
            err.starts_with("`sslmode` in the URL: `verify` is not an sslmode"),
            "{err}"
        );
        let err = resolve("postgres://db/x", &[("PGSSLMODE", "on")]).unwrap_err();
        assert!(err.starts_with("$PGSSLMODE: `on`"), "{err}");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let err = resolve("postgres://db/x?sslcert=/c.pem", &[]).unwrap_err();
        assert_eq!(
            err,
            "`sslcert` in the URL names a client certificate without sslkey"
        );
        let tls = resolve("postgres://db/x?sslcert=/c.pem", &[("PGSSLKEY", "/k.pem")]).unwrap();
        assert_eq!(tls.client_cert, Some(("/c.pem".into(), "/k.pem".into())));
    }

    #[test]
    fn tls_schemes_are_told_from_plain_ones() {
        for url in [
            "rediss://h:6380",
            "rediss-cluster://h:1",
            "rediss-sentinel://h:1/0?sentinelServiceName=m",
            "valkeys://h",
        ] {
            assert!(redis_url_uses_tls(url), "{url}");
        }
        for url in ["redis://h", "redis-cluster://h:1", "redis+unix:///s"] {
            assert!(!redis_url_uses_tls(url), "{url}");
        }
    }
}
