//! Values that must never reach a log line, an error message or `jobrunner config`:
//! passwords in connection URLs, request headers, a command's environment, and the
//! keys read from the environment at start-up (HMAC keys, API keys).
//!
//! [`Secret`] hides the whole value; [`SecretUrl`] hides only the password, so
//! the host and database stay visible where a URL is printed. `Debug`, `Display`
//! and `Serialize` all show the hidden form; the value itself comes only from
//! `expose()`. The one exception is a serialisation that must carry the real
//! values to another reader (a reload comparing configs, the benchmark writing
//! its daemon's file): it runs inside [`with_secrets_exposed`], so it is written
//! down where it happens.
//!
//! Not a vault: the value stays in ordinary memory for as long as the config
//! lives, and a caller that `expose()`s it can still print it.

use std::cell::Cell;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a hidden value prints as.
pub const HIDDEN: &str = "***";

/// A secret printed as [`HIDDEN`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

/// A connection URL whose password is printed as [`HIDDEN`]
/// (`postgres://app:***@db:5432/jobs`); a URL without one prints as it is.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

thread_local! {
    /// True while [`with_secrets_exposed`] runs on this thread.
    static EXPOSED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with secrets serialising as their real values on this thread, for a
/// copy of the config that another reader needs whole. Serialisation is
/// synchronous, so the flag cannot leak to other work; it is reset even if `f`
/// panics.
pub fn with_secrets_exposed<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            EXPOSED.with(|e| e.set(self.0));
        }
    }
    let _reset = Reset(EXPOSED.with(|e| e.replace(true)));
    f()
}

fn exposed() -> bool {
    EXPOSED.with(Cell::get)
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself. Call it only where the value is used, never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(url.into())
    }

    /// The URL with its password. Call it only to connect, never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(HIDDEN, f)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(HIDDEN)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if exposed() { &self.0 } else { HIDDEN })
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if exposed() {
            s.serialize_str(&self.0)
        } else {
            s.serialize_str(&redact_url(&self.0))
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SecretUrl, D::Error> {
        String::deserialize(d).map(SecretUrl)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> SecretUrl {
        SecretUrl(url)
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> SecretUrl {
        SecretUrl(url.to_owned())
    }
}

/// The query parameters that carry a password in a connection URL (libpq's
/// `password`, fred's `sentinelPassword`); compared without case.
const PASSWORD_PARAMS: [&str; 3] = ["password", "sslpassword", "sentinelpassword"];

/// Hides the password in a connection URL for printing: the one in the user
/// part and any given as a query parameter (`?password=…`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (userinfo, host) = match rest.rsplit_once('@') {
        Some((userinfo, host)) => (Some(userinfo), host),
        None => (None, rest),
    };
    let host = redact_query(host);
    match userinfo {
        Some(userinfo) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:{HIDDEN}@{host}"),
            None => format!("{scheme}://{userinfo}@{host}"),
        },
        None => format!("{scheme}://{host}"),
    }
}

/// `host/db?a=1&password=x` → `host/db?a=1&password=***`.
fn redact_query(host: &str) -> String {
    let Some((path, query)) = host.split_once('?') else {
        return host.to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if PASSWORD_PARAMS.contains(&key.to_ascii_lowercase().as_str()) => {
                format!("{key}={HIDDEN}")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

/// Reads a secret kept in a file (a `password_file`): the whole file, less the
/// line ending an editor or `echo` leaves at its end.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<Secret> {
    let mut text = std::fs::read_to_string(path)?;
    while text.ends_with(['\n', '\r']) {
        text.pop();
    }
    Ok(Secret(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_hidden_when_printing() {
        assert_eq!(
            redact_url("postgres://app:secret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn a_password_given_as_a_query_parameter_is_hidden() {
        assert_eq!(
            redact_url("postgres://db/x?sslmode=require&password=hunter2"),
            "postgres://db/x?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url(
                "rediss-sentinel://w:pw@s:26379/0?sentinelServiceName=m&sentinelPassword=sp"
            ),
            "rediss-sentinel://w:***@s:26379/0?sentinelServiceName=m&sentinelPassword=***"
        );
        assert_eq!(
            redact_url("rediss://:pw@cache:6380"),
            "rediss://:***@cache:6380"
        );
    }

    #[test]
    fn a_password_file_loses_its_final_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, " two words \r\n").unwrap();
        assert_eq!(read_secret_file(&path).unwrap().expose(), " two words ");
    }

    #[test]
    fn a_password_holding_an_at_sign_is_hidden_whole() {
        let url = SecretUrl::new("postgres://app:p@ss@db/x");
        assert_eq!(url.to_string(), "postgres://app:***@db/x");
        assert_eq!(url.expose(), "postgres://app:p@ss@db/x");
    }

    #[test]
    fn secrets_print_hidden_and_expose_gives_the_value() {
        let key = Secret::new("hunter2");
        assert_eq!(format!("{key} {key:?}"), "*** \"***\"");
        assert_eq!(key.expose(), "hunter2");
        assert_eq!(serde_json::to_string(&key).unwrap(), "\"***\"");
        assert_eq!(
            with_secrets_exposed(|| serde_json::to_string(&key).unwrap()),
            "\"hunter2\""
        );
        assert_eq!(
            serde_json::to_string(&key).unwrap(),
            "\"***\"",
            "hidden again afterwards"
        );
    }
}
