//! How the pool reaches Redis: the URL's topology, the ACL user and password,
//! and TLS from `[redis.tls]`.
//!
//! TLS is rustls on ring, configured here rather than by fred: the CAs are
//! `[redis.tls] ca_file` alone when it is given (the system's store otherwise),
//! the client certificate is optional, and the server's name is checked unless
//! `verify_server_name = false`. The settings hang off the fred `Config` whatever
//! its topology, so `rediss-cluster://` and `rediss-sentinel://` URLs take the
//! same table. A TLS URL always gets a TLS config; there is no plain-text
//! fallback.

use std::path::Path;
use std::sync::Arc;

use fred::types::config::{Config, TlsConfig, TlsConnector, TlsHostMapping};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

use crate::config::{RedisConfig, RedisTls};

use super::{Error, Result};

/// The fred config for `config`: topology and database from the URL, then the
/// user, the password and TLS.
pub(super) fn client_config(config: &RedisConfig) -> Result<Config> {
    let url = config.url.to_string();
    let fail = |reason: String| Error::Config {
        url: url.clone(),
        reason,
    };
    let tls = config.uses_tls();
    // fred would build its own TLS settings for a TLS scheme (the system's
    // store, failing on any unreadable certificate there); read the URL in its
    // plain form and add ours below.
    let exposed = config.url.expose();
    let plain = match exposed.split_once("://") {
        Some((scheme, rest)) if tls => format!("{}://{rest}", scheme.replacen('s', "", 1)),
        _ => exposed.to_owned(),
    };
    let mut fred_config = Config::from_url(&plain).map_err(|e| fail(e.details().to_owned()))?;
    if let Some(user) = &config.username {
        fred_config.username = Some(user.clone());
    }
    if let Some(password) = config
        .password()
        .map_err(|e| fail(crate::error_chain(&e)))?
    {
        fred_config.password = Some(password.expose().to_owned());
    }
    if tls {
        fred_config.tls = Some(TlsConfig {
            connector: TlsConnector::from(rustls_config(&config.tls).map_err(fail)?),
            hostnames: TlsHostMapping::None,
        });
    }
    Ok(fred_config)
}

/// The rustls client config `[redis.tls]` describes; the error names the file.
fn rustls_config(settings: &RedisTls) -> std::result::Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match &settings.ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("redis.tls.ca_file {}: {e}", path.display()))?;
            }
            roots
        }
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if settings.verify_server_name {
        builder.with_root_certificates(roots)
    } else {
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("TLS: {e}"))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(verifier)))
    };
    match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => {
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("redis.tls.key_file {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certificates(cert)?, key_der)
                .map_err(|e| format!("redis.tls.cert_file {}: {e}", cert.display()))
        }
        // `validate` refuses one without the other.
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Every certificate in a PEM file; a file with none is an error.
fn certificates(path: &Path) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The system's CA store. Certificates it cannot read are skipped, as long as
/// some remain.
fn system_roots() -> std::result::Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(format!(
            "no CA certificate found in the system's store{why}: set redis.tls.ca_file"
        ));
    }
    Ok(roots)
}

/// `verify_server_name = false`: the chain is checked against the CAs as
/// usual; only a name mismatch is let through.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Why the first connection of a TLS URL failed, found by repeating its
/// handshake with the same settings (fred reports the failure as text only).
/// Runs on a blocking thread, within the connect timeout; `None` when the
/// handshake succeeds or the server cannot be reached.
pub(super) async fn diagnose(config: &RedisConfig) -> Option<String> {
    if !config.uses_tls() {
        return None;
    }
    let fred = client_config(config).ok()?;
    let server = fred.server.hosts().into_iter().next()?;
    let tls = rustls_config(&config.tls).ok()?;
    let timeout = config.connect_timeout;
    let trusted = match &config.tls.ca_file {
        Some(path) => format!("redis.tls.ca_file {}", path.display()),
        None => "the system's CA store (no redis.tls.ca_file given)".to_owned(),
    };
    let host = server.host.to_string();
    let failure = tokio::task::spawn_blocking(move || handshake(tls, &host, server.port, timeout))
        .await
        .ok()??;
    match failure {
        Failure::Tls(error) => crate::tls::explain(&error, &trusted, &server.host),
        Failure::NoAnswer => Some(format!(
            "the server did not answer the TLS handshake within {} (is it serving plain text on this port?)",
            humantime::format_duration(timeout)
        )),
    }
}

/// How a repeated handshake failed.
enum Failure {
    Tls(rustls::Error),
    /// The server sent nothing back (a plain-text server waits for a command).
    NoAnswer,
}

/// One blocking TLS handshake, or `None` if it succeeded or the server could
/// not be reached at all.
fn handshake(
    tls: ClientConfig,
    host: &str,
    port: u16,
    timeout: std::time::Duration,
) -> Option<Failure> {
    use std::io::ErrorKind;
    use std::net::{TcpStream, ToSocketAddrs};

    let name = ServerName::try_from(host.to_owned()).ok()?;
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    let mut tcp = TcpStream::connect_timeout(&addr, timeout).ok()?;
    tcp.set_read_timeout(Some(timeout)).ok()?;
    tcp.set_write_timeout(Some(timeout)).ok()?;
    let mut conn = rustls::ClientConnection::new(Arc::new(tls), name).ok()?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                return Some(Failure::NoAnswer);
            }
            let inner = e.into_inner()?.downcast::<rustls::Error>().ok()?;
            return Some(Failure::Tls(*inner));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_url_always_gets_a_tls_config_and_a_plain_one_never() {
        let mut config = RedisConfig {
            url: "rediss://worker:pw@cache.example.com:6380/2".into(),
            ..RedisConfig::default()
        };
        let fred = client_config(&config).unwrap();
        assert!(fred.tls.is_some(), "rediss:// connects with TLS");
        assert_eq!(fred.username.as_deref(), Some("worker"));
        assert_eq!(fred.password.as_deref(), Some("pw"));
        assert_eq!(fred.database, Some(2));

        config.url = "redis://cache.example.com:6379/0".into();
        assert!(client_config(&config).unwrap().tls.is_none());
    }

    #[test]
    fn the_user_and_password_may_come_from_the_config() {
        let config = RedisConfig {
            url: "rediss://cache.example.com:6380".into(),
            username: Some("worker".into()),
            password: Some("from-config".into()),
            ..RedisConfig::default()
        };
        let fred = client_config(&config).unwrap();
        assert_eq!(fred.username.as_deref(), Some("worker"));
        assert_eq!(fred.password.as_deref(), Some("from-config"));
    }

    #[test]
    fn a_missing_ca_file_is_an_error_naming_it() {
        let config = RedisConfig {
            url: "rediss://cache.example.com:6380".into(),
            tls: RedisTls {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..RedisTls::default()
            },
            ..RedisConfig::default()
        };
        let err = client_config(&config).unwrap_err().to_string();
        assert!(
            err.contains("rediss://cache.example.com:6380") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
    }
}
