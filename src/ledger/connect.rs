//! How the pool reaches Postgres: the URL, the password file and TLS.
//!
//! sqlx does the TLS (rustls on ring, the system's CA store plus `sslrootcert`);
//! this file maps libpq's rules onto it ([`PgTls`], resolved by `config`) and
//! turns a refused connection into an error that says what failed: a
//! certificate from an unknown CA, one that names another host, a server that
//! refuses plain text or has no TLS. Every error names the URL without its
//! password.
//!
//! Two differences from libpq, both documented in OPERATIONS.md: the system's CA
//! store is trusted beside `sslrootcert` (sqlx loads both), and without
//! `sslrootcert` the checking modes use the system store rather than
//! `~/.postgresql/root.crt`.

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::config::{DatabaseConfig, PgTls, RootCert, SslMode};

use super::{Error, Result};

/// The options every connection of the process uses: the URL, the password
/// from `password_file`, the TLS settings (URL, then `PGSSL*`), and
/// `application_name`. `jobrunner bench` opens its admin connection with them
/// too.
pub fn connect_options(config: &DatabaseConfig) -> Result<(PgConnectOptions, PgTls)> {
    let url = config.url.to_string();
    let fail = |reason: String| Error::Config {
        url: url.clone(),
        reason,
    };
    let tls = config.tls(|name| std::env::var(name).ok()).map_err(&fail)?;
    let mut options: PgConnectOptions = config
        .url
        .expose()
        .parse()
        .map_err(|e: sqlx::Error| fail(e.to_string()))?;
    if let Some(password) = config
        .password()
        .map_err(|e| fail(crate::error_chain(&e)))?
    {
        options = options.password(password.expose());
    }
    options = options
        .application_name("jobrunner")
        .ssl_mode(ssl_mode(tls.mode));
    // sqlx read `sslrootcert` itself, from the URL or PGSSLROOTCERT, and would
    // open `system` as a file. What it reads is set again here: the file, or an
    // empty PEM (no CA added to the system store it always loads).
    options = match &tls.root_cert {
        Some(RootCert::File(path)) => options.ssl_root_cert(path),
        Some(RootCert::System) | None => options.ssl_root_cert_from_pem(Vec::new()),
    };
    if let Some((cert, key)) = &tls.client_cert {
        options = options.ssl_client_cert(cert).ssl_client_key(key);
    }
    Ok((options, tls))
}

fn ssl_mode(mode: SslMode) -> PgSslMode {
    match mode {
        SslMode::Disable => PgSslMode::Disable,
        // Decided by `probe_allow` before the pool is built.
        SslMode::Allow => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require => PgSslMode::Require,
        SslMode::VerifyCa => PgSslMode::VerifyCa,
        SslMode::VerifyFull => PgSslMode::VerifyFull,
    }
}

/// `sslmode=allow`: plain text unless the server refuses it, then TLS. Decided
/// once, with one connection, for the whole pool.
pub(super) async fn probe_allow(options: PgConnectOptions, tls: &PgTls) -> PgConnectOptions {
    if tls.mode != SslMode::Allow {
        return options;
    }
    match sqlx::PgConnection::connect_with(&options).await {
        Err(e) if refuses_plain_text(&e) => options.ssl_mode(PgSslMode::Require),
        Ok(conn) => {
            let _ = conn.close().await;
            options
        }
        Err(_) => options,
    }
}

/// The server's answer to a connection its `pg_hba.conf` has no line for
/// (SQLSTATE 28000): what a server that takes only TLS says to plain text.
fn refuses_plain_text(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "28000")
}

/// What to tell the operator about a connection that failed, beyond sqlx's own
/// words: told by the error's type (a rustls certificate error, a database
/// error's SQLSTATE), never by its text.
pub(super) fn hint(e: &sqlx::Error, tls: &PgTls, host: &str) -> Option<String> {
    if refuses_plain_text(e) && tls.mode <= SslMode::Allow {
        return Some(format!(
            "the server refused a connection without TLS (sslmode={}): it may accept only TLS; set sslmode=require or stronger",
            tls.mode
        ));
    }
    if let sqlx::Error::Tls(inner) = e
        && inner.downcast_ref::<rustls::Error>().is_none()
        && tls.mode >= SslMode::Require
    {
        // sqlx's one TLS error that is not rustls's: the server answered the
        // TLS request with "no".
        return Some(format!(
            "sslmode={} needs TLS and the server did not agree to it (is `ssl = on` in its postgresql.conf?)",
            tls.mode
        ));
    }
    let trusted = match &tls.root_cert {
        Some(RootCert::File(path)) => format!("sslrootcert {}", path.display()),
        Some(RootCert::System) | None => "the system's CA store (no sslrootcert given)".to_owned(),
    };
    let reason = crate::tls::explain(rustls_error(e)?, &trusted, host)?;
    Some(format!("{reason} (sslmode={})", tls.mode))
}

/// The rustls error under a failed handshake: sqlx reports it as an I/O error
/// (the handshake runs over its socket) or as a TLS error.
fn rustls_error(e: &sqlx::Error) -> Option<&rustls::Error> {
    match e {
        sqlx::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>(),
        sqlx::Error::Tls(inner) => inner.downcast_ref::<rustls::Error>(),
        _ => None,
    }
}
