//! Per-kind settings: `[kinds.NAME]` with its queue, attempts, timeout and backoff,
//! and the `http` / `command` tables of kinds run by a generic handler. Parsing and
//! checking only; the handlers live in `jobs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::flow::{OnTimeout, RateLimit};
use super::{DEFAULT_QUEUE, Secret};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KindConfig {
    pub queue: String,
    pub max_attempts: i32,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub backoff: BackoffConfig,
    /// What an attempt that runs past `timeout` leads to: another attempt, or dead.
    pub on_timeout: OnTimeout,
    /// Most leased jobs of this kind at once, across every daemon (per queue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Most leases of this kind per period across every daemon, optionally per
    /// value of a payload field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Template of the unique key for jobs enqueued without one, e.g.
    /// `contact:{from}`; copied into `jobrunner.kinds` at start-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    /// A generic handler that runs this kind without Rust code; absent for kinds
    /// implemented in `jobs`. Its settings are in the table of the same name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<HandlerName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpKindConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandKindConfig>,
}

/// The generic handlers a kind can be configured with.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HandlerName {
    /// POST the payload to a URL (`[kinds.NAME.http]`).
    Http,
    /// Run a program with the payload on stdin (`[kinds.NAME.command]`).
    Command,
}

/// `[kinds.NAME.http]`: where and how the `http` handler posts a job.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpKindConfig {
    /// The endpoint that receives the payload as a JSON POST.
    pub url: String,
    /// Extra request headers, e.g. an `Authorization` the endpoint expects. The
    /// values may hold tokens, so they are printed hidden.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// One request, from connecting to the last byte of the response; a request
    /// over it is a retryable failure. At most the kind's `timeout`.
    #[serde(default = "default_http_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Opening the TCP (and TLS) connection; capped by `timeout`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Name of an environment variable holding the HMAC-SHA256 key; when set, every
    /// request carries `X-Jobrunner-Signature: sha256=<hex>` over the body. The key
    /// itself never appears in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_env: Option<String>,
}

/// `[kinds.NAME.command]`: the program the `command` handler runs for a job.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandKindConfig {
    /// Run directly, never through a shell (configure `/bin/sh` with `-c` for one).
    /// A name without `/` is looked up in `PATH`.
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Exit codes that mean "retrying cannot help": the job ends `dead` at once.
    /// Any other non-zero exit is retried.
    #[serde(default)]
    pub dead_exit_codes: Vec<i32>,
    /// Variables the program gets on top of a minimal environment (PATH, HOME,
    /// LANG, ...); the daemon's own environment, with its database URL, is not passed.
    /// The values may hold tokens, so they are printed hidden.
    #[serde(default)]
    pub env: BTreeMap<String, Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
}

fn default_http_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// Delay before the second attempt; each later retry doubles it.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for KindConfig {
    fn default() -> Self {
        KindConfig {
            queue: DEFAULT_QUEUE.to_owned(),
            max_attempts: 25,
            timeout: Duration::from_secs(300),
            backoff: BackoffConfig::default(),
            on_timeout: OnTimeout::Retry,
            concurrency: None,
            rate_limit: None,
            unique_key: None,
            handler: None,
            http: None,
            command: None,
        }
    }
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
        }
    }
}

/// The `handler` of a kind and its table agree, and the table's values are usable.
/// Returns the offending key and the reason.
pub(super) fn validate_handler(
    name: &str,
    kind: &KindConfig,
) -> std::result::Result<(), (String, String)> {
    let key = |rest: &str| format!("kinds.{name}.{rest}");
    let wants = |handler: HandlerName| kind.handler == Some(handler);
    if kind.http.is_some() && !wants(HandlerName::Http) {
        return Err((key("http"), "needs handler = \"http\" in the kind".into()));
    }
    if kind.command.is_some() && !wants(HandlerName::Command) {
        return Err((
            key("command"),
            "needs handler = \"command\" in the kind".into(),
        ));
    }
    match kind.handler {
        None => {}
        Some(HandlerName::Http) => {
            let Some(http) = &kind.http else {
                return Err((
                    key("http"),
                    format!("handler = \"http\" needs a [kinds.{name}.http] table with a url"),
                ));
            };
            if !(http.url.starts_with("http://") || http.url.starts_with("https://"))
                || reqwest::Url::parse(&http.url).is_err()
            {
                return Err((key("http.url"), "must be http:// or https://".into()));
            }
            for (header, value) in &http.headers {
                if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    return Err((
                        key("http.headers"),
                        format!("`{header}` is not a header name"),
                    ));
                }
                if reqwest::header::HeaderValue::from_str(value.expose()).is_err() {
                    return Err((
                        key(&format!("http.headers.{header}")),
                        "must be visible ASCII without line breaks".into(),
                    ));
                }
                let lower = header.to_ascii_lowercase();
                if lower == "content-type" || lower.starts_with("x-jobrunner-") {
                    return Err((
                        key(&format!("http.headers.{header}")),
                        "is set by jobrunner and cannot be configured".into(),
                    ));
                }
            }
            if http.timeout.is_zero() {
                return Err((key("http.timeout"), "must be above zero".into()));
            }
            if http.timeout > kind.timeout {
                return Err((
                    key("http.timeout"),
                    format!("must not exceed kinds.{name}.timeout, which stops the attempt first"),
                ));
            }
            if http.connect_timeout.is_zero() {
                return Err((key("http.connect_timeout"), "must be above zero".into()));
            }
            if http.hmac_secret_env.as_deref() == Some("") {
                return Err((
                    key("http.hmac_secret_env"),
                    "must name an environment variable".into(),
                ));
            }
        }
        Some(HandlerName::Command) => {
            let Some(command) = &kind.command else {
                return Err((
                    key("command"),
                    format!(
                        "handler = \"command\" needs a [kinds.{name}.command] table with a program"
                    ),
                ));
            };
            if command.program.is_empty() {
                return Err((key("command.program"), "must not be empty".into()));
            }
            if let Some(code) = command
                .dead_exit_codes
                .iter()
                .find(|c| !(1..=255).contains(*c))
            {
                return Err((
                    key("command.dead_exit_codes"),
                    format!("{code} is not an exit code from 1 to 255"),
                ));
            }
            if let Some(var) = command
                .env
                .keys()
                .find(|k| k.is_empty() || k.contains(['=', '\0']))
            {
                return Err((
                    key("command.env"),
                    format!("`{var}` is not an environment variable name"),
                ));
            }
        }
    }
    Ok(())
}
