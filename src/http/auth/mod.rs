//! Who may use the HTTP listener: bearer tokens read from `[admin] tokens_file`,
//! each with a scope, the dashboard's log-in sessions (an HttpOnly, SameSite=Strict
//! cookie and a CSRF token per session), and the `Host` check that keeps a web
//! page which rebinds its own name to this address from reading it.
//!
//! [`guard`] is the one middleware every request passes; [`need`] is the one
//! table of what each route requires, so the rules read in one place. The
//! tokens file and token digests are in `tokens`, the log-in sessions and the
//! CSRF check in `sessions`.
//!
//! **Invariant:** a request that changes state needs an `admin` token (or
//! session), and a session's request also its CSRF token. Checked by
//! `tests/integration/admin_auth.rs` and `dashboard.rs` (see
//! docs/ARCHITECTURE.md, `http`) and the tests below.
//!
//! Design note: tokens and session ids are compared as SHA-256 digests in
//! constant time (`tokens::constant_time_eq`), and never logged.

mod sessions;
mod tokens;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::HttpState;
use crate::config::AdminConfig;
use sessions::Session;
use tokens::{TokenList, read_tokens};

pub use sessions::{SESSION_COOKIE, SESSION_TTL, cookie, csrf_ok};
pub use tokens::Error;

/// What a token (or the session it opened) may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read jobs, events and the dashboard.
    Read,
    /// Also change state: cancel, retry, pause, resume, run a schedule.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// What one route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone (probes, the log-in page, static assets).
    Open,
    Read,
    Admin,
}

/// Who is asking, as [`guard`] found out; handlers read it from the request's
/// extensions.
#[derive(Debug, Clone)]
pub struct Access {
    /// `None` for an anonymous request.
    pub scope: Option<Scope>,
    /// The CSRF token the request must carry, when it came with a session cookie.
    pub csrf: Option<String>,
    /// False when the listener has no tokens: everything readable is open and
    /// nothing that changes state is served.
    pub tokens_configured: bool,
}

impl Access {
    pub fn can_act(&self) -> bool {
        self.scope == Some(Scope::Admin)
    }
}

/// The tokens, the sessions and the allowed host names of one listener.
pub struct Auth {
    /// SHA-256 of each token, with its scope.
    tokens: TokenList,
    /// `None`: any `Host` is answered.
    hosts: Option<Vec<String>>,
    metrics_need_token: bool,
    /// Session cookies are marked `Secure` when the listener speaks TLS.
    pub secure_cookies: bool,
    /// SHA-256 of the session id → the session.
    sessions: Mutex<HashMap<[u8; 32], Session>>,
}

impl Auth {
    /// Reads the tokens file `config` names (if any) and works out the allowed hosts.
    pub fn from_config(config: &AdminConfig, listen: Option<SocketAddr>) -> Result<Auth, Error> {
        let tokens = match &config.tokens_file {
            Some(path) => read_tokens(path)?,
            None => Vec::new(),
        };
        let hosts = if !config.hosts.is_empty() {
            Some(
                config
                    .hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            )
        } else if tokens.is_empty() {
            let mut names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
                .map(str::to_owned)
                .to_vec();
            if let Some(addr) = listen {
                names.push(match addr {
                    SocketAddr::V4(a) => a.ip().to_string(),
                    SocketAddr::V6(a) => format!("[{}]", a.ip()),
                });
            }
            Some(names)
        } else {
            None
        };
        Ok(Auth {
            tokens,
            hosts,
            metrics_need_token: config.metrics_need_token,
            secure_cookies: config.tls_cert.is_some(),
            sessions: Mutex::default(),
        })
    }

    pub fn tokens_configured(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Whether a `Host` header value may be answered.
    fn host_allowed(&self, host: Option<&str>) -> bool {
        let Some(allowed) = &self.hosts else {
            return true;
        };
        let Some(host) = host else {
            return false;
        };
        let name = strip_port(host).to_ascii_lowercase();
        allowed.contains(&name)
    }

    /// Who sent the request: a bearer token, else a session cookie.
    fn access(&self, headers: &HeaderMap) -> Access {
        let configured = self.tokens_configured();
        if !configured {
            return Access {
                scope: Some(Scope::Read),
                csrf: None,
                tokens_configured: false,
            };
        }
        if let Some(token) = bearer(headers) {
            return Access {
                scope: self.scope_of(token),
                csrf: None,
                tokens_configured: true,
            };
        }
        let session = cookie(headers, SESSION_COOKIE).and_then(|id| self.session(id));
        Access {
            scope: session.as_ref().map(|s| s.scope),
            csrf: session.map(|s| s.csrf),
            tokens_configured: true,
        }
    }
}

/// What each route requires. Everything not named here needs `read`; every
/// `POST` other than log-in and log-out needs `admin`.
pub fn need(method: &Method, path: &str, metrics_need_token: bool) -> Need {
    match (method, path) {
        (_, "/healthz" | "/readyz" | "/login") => Need::Open,
        (_, p) if p.starts_with("/assets/") => Need::Open,
        (_, "/metrics") if !metrics_need_token => Need::Open,
        (&Method::POST, "/logout") => Need::Read,
        (&Method::POST, _) => Need::Admin,
        _ => Need::Read,
    }
}

/// The middleware: checks `Host`, finds who is asking, refuses what they may not
/// do, and hands the [`Access`] to the handler.
pub async fn guard(State(state): State<HttpState>, mut request: Request, next: Next) -> Response {
    let auth = &state.auth;
    let path = request.uri().path().to_owned();
    let required = need(request.method(), &path, auth.metrics_need_token);
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    // What is open to anyone (probes, open metrics, the log-in page) is open
    // whatever the name; the check guards what a token would.
    if required != Need::Open && !auth.host_allowed(host) {
        let host = host.unwrap_or("(none)").to_owned();
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            &format!("this listener does not answer to Host `{host}` (see admin.hosts)"),
        );
    }
    let access = auth.access(request.headers());
    let refused = match (required, access.scope) {
        (Need::Open, _) => None,
        (Need::Read, Some(_)) => None,
        (Need::Admin, Some(Scope::Admin)) => None,
        (_, None) => Some((
            StatusCode::UNAUTHORIZED,
            "a token is needed: send `Authorization: Bearer <token>`, or log in at /login",
        )),
        (Need::Admin, Some(Scope::Read)) if !access.tokens_configured => Some((
            StatusCode::FORBIDDEN,
            "this listener has no admin tokens (admin.tokens_file), so it changes nothing",
        )),
        (Need::Admin, Some(Scope::Read)) => {
            Some((StatusCode::FORBIDDEN, "this needs an admin-scoped token"))
        }
    };
    if let Some((code, reason)) = refused {
        // A browser asking for a page gets the log-in form instead of JSON.
        if code == StatusCode::UNAUTHORIZED && super::dashboard::wants_html(request.headers()) {
            return super::dashboard::login_page(code, None);
        }
        return refuse(code, reason);
    }
    request.extensions_mut().insert(access);
    next.run(request).await
}

/// A JSON refusal; 401s say how to authenticate.
pub fn refuse(code: StatusCode, reason: &str) -> Response {
    let mut response = (code, Json(json!({ "error": reason }))).into_response();
    if code == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `host:port`, `[v6]:port` or a bare name → the name.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::tokens::parse_tokens;
    use super::*;

    #[test]
    fn a_token_is_known_by_its_scope_and_a_near_miss_is_not() {
        let auth = Auth {
            tokens: parse_tokens("admin 0123456789abcdef0123\nread fedcba9876543210fedc").unwrap(),
            hosts: None,
            metrics_need_token: false,
            secure_cookies: false,
            sessions: Mutex::default(),
        };
        assert_eq!(auth.scope_of("0123456789abcdef0123"), Some(Scope::Admin));
        assert_eq!(auth.scope_of("fedcba9876543210fedc"), Some(Scope::Read));
        assert_eq!(auth.scope_of("0123456789abcdef012"), None);
        assert_eq!(auth.scope_of(""), None);
        let (id, csrf) = auth.open_session(Scope::Read);
        assert_eq!(auth.session(&id).map(|s| s.scope), Some(Scope::Read));
        assert_eq!(auth.session(&id).map(|s| s.csrf), Some(csrf));
        auth.close_session(&id);
        assert!(auth.session(&id).is_none());
    }

    #[test]
    fn without_tokens_only_loopback_names_are_answered() {
        let auth = Auth::from_config(
            &AdminConfig::default(),
            Some("127.0.0.1:9187".parse().unwrap()),
        )
        .unwrap();
        for ok in [
            "localhost:9187",
            "127.0.0.1:9187",
            "[::1]:9187",
            "LOCALHOST",
        ] {
            assert!(auth.host_allowed(Some(ok)), "{ok}");
        }
        for bad in [
            "evil.example:9187",
            "evil.example",
            "127.0.0.1.evil.example",
        ] {
            assert!(!auth.host_allowed(Some(bad)), "{bad}");
        }
        assert!(!auth.host_allowed(None));
    }

    #[test]
    fn every_post_but_log_in_needs_admin_and_probes_are_open() {
        assert_eq!(need(&Method::GET, "/healthz", true), Need::Open);
        assert_eq!(need(&Method::GET, "/metrics", false), Need::Open);
        assert_eq!(need(&Method::GET, "/metrics", true), Need::Read);
        assert_eq!(need(&Method::GET, "/jobs/x", false), Need::Read);
        assert_eq!(need(&Method::GET, "/events", false), Need::Read);
        assert_eq!(need(&Method::POST, "/jobs/x/cancel", false), Need::Admin);
        assert_eq!(need(&Method::POST, "/login", false), Need::Open);
        assert_eq!(need(&Method::POST, "/logout", false), Need::Read);
    }
}
