//! What a refused TLS handshake means, in an operator's words. `ledger` and
//! `broker` each set up their own TLS (through sqlx and fred); both explain a
//! failure here, from the rustls error's type, never from its text.

use rustls::{AlertDescription, CertificateError};

/// The reason a handshake with `host` failed, when the error says it:
/// `trusted` names what the certificate was checked against (a CA file, the
/// system's store).
pub fn explain(error: &rustls::Error, trusted: &str, host: &str) -> Option<String> {
    match error {
        rustls::Error::InvalidCertificate(cert) => Some(match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                format!("the server's certificate is not signed by a CA in {trusted}")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server's certificate does not name the host `{host}` (connect by a name the certificate lists)"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".to_owned()
            }
            other => format!("the server's certificate was refused ({other:?})"),
        }),
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown),
        ) => Some(format!(
            "the server refused the client certificate ({alert:?}): check the certificate and key, and that the server trusts their CA"
        )),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => Some(
            "the server did not answer in TLS (is it serving plain text on this port?)".to_owned(),
        ),
        _ => None,
    }
}
