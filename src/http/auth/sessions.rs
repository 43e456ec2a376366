//! The dashboard's log-in sessions: held in memory, keyed by the SHA-256 of the
//! session id (an HttpOnly, SameSite=Strict cookie), each with its scope, its
//! CSRF token and its expiry; and the CSRF check a session's request must pass.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};

use super::tokens::{constant_time_eq, sha256};
use super::{Access, Auth, Scope};

/// How long a dashboard log-in lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "jobrunner_session";
/// Most sessions held at once; the oldest go first beyond it.
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) scope: Scope,
    pub(super) csrf: String,
    expires: Instant,
}

impl Auth {
    /// Opens a session for a token's scope: (session id for the cookie, CSRF token).
    pub fn open_session(&self, scope: Scope) -> (String, String) {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let csrf = hex::encode(rand::random::<[u8; 32]>());
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            sha256(id.as_bytes()),
            Session {
                scope,
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        (id, csrf)
    }

    pub fn close_session(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&sha256(id.as_bytes()));
    }

    pub(super) fn session(&self, id: &str) -> Option<Session> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(&sha256(id.as_bytes()))
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }
}

/// True when the request's CSRF token is the session's (or the request came with
/// a bearer token or on a listener without tokens, where no cookie is involved).
pub fn csrf_ok(access: &Access, given: Option<&str>) -> bool {
    match (&access.csrf, given) {
        (None, _) => true,
        (Some(expected), Some(given)) => {
            constant_time_eq(&sha256(expected.as_bytes()), &sha256(given.as_bytes()))
        }
        (Some(_), None) => false,
    }
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csrf_token_must_match_the_sessions() {
        let session = Access {
            scope: Some(Scope::Admin),
            csrf: Some("abc".into()),
            tokens_configured: true,
        };
        assert!(csrf_ok(&session, Some("abc")));
        assert!(!csrf_ok(&session, Some("abd")));
        assert!(!csrf_ok(&session, None));
        let bearer = Access {
            csrf: None,
            ..session
        };
        assert!(csrf_ok(&bearer, None));
    }
}
