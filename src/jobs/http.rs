//! The `http` handler: runs a configured kind by POSTing its payload as JSON to
//! `[kinds.NAME.http] url`, so any service can be a job kind without Rust code.
//!
//! It owns one `reqwest::Client` per kind (built at start-up, shared by every
//! attempt), the request signature and the mapping from the response to a job
//! outcome. It must never follow redirects (a POST would silently become a GET
//! elsewhere), print the URL's query or credentials in an error (they may hold
//! tokens), or read an unbounded response into memory.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use hmac::{KeyInit, Mac};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::{Value, json};

use super::{Handler, JobContext, JobError, JobResult, Registry};
use crate::config::{HttpKindConfig, KindConfig, Secret};

/// The most of a response body kept; a longer one is cut and not parsed as JSON.
const MAX_BODY: usize = 1024 * 1024;
/// How much of a non-JSON body the result holds.
const RESULT_EXCERPT: usize = 4096;
/// How much of an error response's body goes into `last_error`.
const ERROR_EXCERPT: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "kinds.{kind}.http.hmac_secret_env: the environment variable `{var}` is not set, is empty or is not UTF-8"
    )]
    Secret { kind: String, var: String },
    #[error("kinds.{kind}.http: cannot build the HTTP client")]
    Client {
        kind: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("kinds.{kind}.http: {reason}")]
    Invalid { kind: String, reason: String },
}

pub type Result<T = (), E = Error> = std::result::Result<T, E>;

/// Registers `name` with an HTTP handler. A kind that cannot be set up (which
/// `Config::check_environment` normally catches before start-up) is still
/// registered, with a handler that ends each job `dead` saying why, so its jobs do
/// not wait forever for a handler that will never come.
pub(super) fn register(registry: &mut Registry, name: &str, kind: &KindConfig) {
    let Some(config) = &kind.http else {
        return;
    };
    match HttpHandler::new(name, config, kind.backoff.max) {
        Ok(handler) => {
            registry.register(name, handler);
        }
        Err(error) => {
            let message = crate::error_chain(&error);
            tracing::error!(kind = name, error = %message, "Kind cannot run; its jobs will end dead");
            registry.register(name, move |_: JobContext| {
                let message = message.clone();
                async move { Err(JobError::permanent(message)) }
            });
        }
    }
}

/// The handler of one configured kind.
#[derive(Clone)]
pub struct HttpHandler {
    inner: Arc<Inner>,
}

struct Inner {
    url: reqwest::Url,
    /// The URL as errors print it: no credentials, no query.
    shown_url: String,
    /// One client per kind: its connection pool is reused across attempts.
    client: reqwest::Client,
    headers: HeaderMap,
    /// The HMAC-SHA256 key, read once from the environment at start-up.
    secret: Option<Secret>,
    /// A `Retry-After` longer than this (the kind's `backoff.max`) is capped, so an
    /// upstream cannot park a job for a year.
    max_retry_after: Duration,
}

impl HttpHandler {
    pub fn new(kind: &str, config: &HttpKindConfig, max_retry_after: Duration) -> Result<Self> {
        let invalid = |reason: String| Error::Invalid {
            kind: kind.to_owned(),
            reason,
        };
        let url = reqwest::Url::parse(&config.url).map_err(|e| invalid(format!("url: {e}")))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| invalid(format!("headers: `{name}`: {e}")))?;
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|e| invalid(format!("headers.{name}: {e}")))?;
            // Configured values may be tokens: keep them out of debug output.
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let secret = match &config.hmac_secret_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(key) if !key.is_empty() => Some(Secret::from(key)),
                _ => {
                    return Err(Error::Secret {
                        kind: kind.to_owned(),
                        var: var.clone(),
                    });
                }
            },
        };
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout.min(config.timeout))
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("jobrunner/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| Error::Client {
                kind: kind.to_owned(),
                source,
            })?;
        let shown_url = format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or(""),
            url.port().map(|p| format!(":{p}")).unwrap_or_default()
        ) + url.path();
        Ok(HttpHandler {
            inner: Arc::new(Inner {
                url,
                shown_url,
                client,
                headers,
                secret,
                max_retry_after,
            }),
        })
    }
}

impl Handler for HttpHandler {
    fn run(&self, ctx: JobContext) -> BoxFuture<'static, JobResult> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.post(ctx).await })
    }
}

impl Inner {
    async fn post(&self, ctx: JobContext) -> JobResult {
        // Serialised once: the signature must cover exactly the bytes sent.
        let body = serde_json::to_vec(&ctx.payload)
            .map_err(|e| JobError::permanent(format!("cannot serialise the payload: {e}")))?;
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("X-Jobrunner-Job-Id", ctx.id.to_string())
            .header("X-Jobrunner-Attempt", ctx.attempt.to_string())
            .header("X-Jobrunner-Kind", ctx.kind.as_str());
        if let Some(key) = &self.secret {
            request = request.header(
                "X-Jobrunner-Signature",
                signature(key.expose().as_bytes(), &body),
            );
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()))
            .map(|d| d.min(self.max_retry_after));
        let (bytes, truncated) = read_capped(response, MAX_BODY)
            .await
            .map_err(|e| self.transport_error(e))?;
        tracing::debug!(
            http.status = status.as_u16(),
            bytes = bytes.len(),
            "Endpoint answered"
        );

        if status.is_success() {
            return Ok(match serde_json::from_slice::<Value>(&bytes) {
                Ok(mut value) if !truncated => {
                    // JSON may spell U+0000 as `\u0000`; the result is `jsonb`.
                    crate::pgtext::safe_json(&mut value);
                    value
                }
                _ => json!({"status": status.as_u16(), "body": excerpt(&bytes, RESULT_EXCERPT)}),
            });
        }
        let mut message = format!("POST {} returned {status}", self.shown_url);
        let text = excerpt(&bytes, ERROR_EXCERPT);
        if !text.trim().is_empty() {
            message.push_str(": ");
            message.push_str(text.trim());
        }
        if retryable(status) {
            Err(JobError::Retryable {
                message,
                retry_after,
            })
        } else if status.is_redirection() {
            Err(JobError::permanent(format!(
                "{message} (redirects are not followed: set the url to the final address)"
            )))
        } else {
            Err(JobError::permanent(message))
        }
    }

    /// No response at all: the endpoint may be restarting or overloaded, so every
    /// transport failure but a request we could not even build is worth a retry.
    fn transport_error(&self, error: reqwest::Error) -> JobError {
        // The URL is printed by us, without its query.
        let error = error.without_url();
        let what = if error.is_timeout() {
            "timed out".to_owned()
        } else if error.is_connect() {
            format!("cannot connect: {}", crate::error_chain(&error))
        } else {
            format!("failed: {}", crate::error_chain(&error))
        };
        let message = format!("POST {} {what}", self.shown_url);
        if error.is_builder() {
            JobError::permanent(message)
        } else {
            JobError::retryable(message)
        }
    }
}

/// 408, 429 and 5xx say "not now" rather than "not this": the same request may
/// succeed later. Every other non-2xx status is a verdict on the request.
fn retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// `sha256=<hex>` of HMAC-SHA256 over the exact body bytes.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length, so this cannot fail; the fallback keeps the
    // function total without a panic path.
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `Retry-After` is either delay-seconds or an HTTP date (RFC 9110 §10.2.3).
fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// Reads at most `cap` bytes of the body; the rest is left unread (the connection
/// is then dropped rather than reused). Returns the bytes and whether it was cut.
async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if bytes.len() + chunk.len() > cap {
            bytes.extend_from_slice(&chunk[..cap - bytes.len()]);
            return Ok((bytes, true));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, false))
}

/// The first `max` bytes as text, cut on a character boundary, safe for Postgres:
/// invalid UTF-8 and U+0000 (which a body or program output may hold) become U+FFFD.
pub(super) fn excerpt(bytes: &[u8], max: usize) -> String {
    let text = crate::pgtext::from_bytes(bytes);
    crate::pgtext::truncate(&text, max).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_a_known_hmac_sha256_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn an_excerpt_never_cuts_a_character_in_half() {
        assert_eq!(excerpt("héllo".as_bytes(), 2), "h");
        assert_eq!(excerpt(b"abc", 10), "abc");
        assert_eq!(excerpt(b"a\0b\xff", 10), "a\u{FFFD}b\u{FFFD}");
    }

    #[test]
    fn only_timeouts_throttling_and_server_errors_are_retried() {
        for (code, expected) in [(408, true), (429, true), (500, true), (503, true)] {
            assert_eq!(retryable(StatusCode::from_u16(code).unwrap()), expected);
        }
        for code in [400, 401, 404, 422, 301] {
            assert!(!retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }
}
