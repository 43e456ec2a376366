//! Fetching source pages: one shared HTTP client per kind instance, concurrency
//! limits, redirects followed by hand, and a cap on how much of a body is read.
//!
//! It owns every outgoing request of the kind. It must never send a request the
//! [`Guard`] has not passed: IP-literal URLs are checked here before each hop, host
//! names inside the client's resolver at connect time. It never parses HTML.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, LOCATION};
use reqwest::{Client, StatusCode, redirect};
use rustls_platform_verifier::BuilderVerifierExt;
use tokio::sync::Semaphore;
use url::Url;

use super::guard::{Guard, GuardedResolver, Refused, find_refused};
use crate::DataExtractionConfig;

/// Pages of all jobs of this kind fetched at once in one daemon.
const MAX_IN_FLIGHT: usize = 8;
/// A connection that takes longer than this to open is given up, even when the
/// whole-request timeout is longer: a silent host should fail fast.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-host semaphores are dropped when idle once the map holds this many hosts.
const HOST_MAP_PRUNE_AT: usize = 1024;

/// The kind's HTTP side, built once and shared by every job of the kind.
pub struct Fetcher {
    client: Client,
    guard: Arc<Guard>,
    /// Bounds pages in flight across all jobs of the kind ([`MAX_IN_FLIGHT`]).
    overall: Semaphore,
    /// One semaphore per `host:port`, so many sources on one site do not hammer it.
    /// A std mutex: it is never held across an await.
    per_host: Mutex<HashMap<String, Arc<Semaphore>>>,
    per_host_limit: usize,
    max_body_bytes: u64,
    max_redirects: usize,
}

/// A page as read: where it ended up after redirects, and (part of) its body.
#[derive(Debug)]
pub struct Page {
    pub url: Url,
    pub body: String,
    /// The body was longer than `max_body_bytes` and was cut off there.
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("cannot fetch {url}: {reason}")]
    Unreachable { url: Url, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: Url, status: StatusCode },
    #[error("{url} redirects to `{location}`, which is not an http(s) URL")]
    BadRedirect { url: Url, location: String },
    #[error("more than {max} redirects (data_extraction.max_redirects)")]
    TooManyRedirects { max: usize },
    #[error("{url} is {content_type}, not HTML")]
    NotHtml { url: Url, content_type: String },
}

pub type Result<T = (), E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether trying again later could help: network trouble and server-side
    /// errors could pass; a refusal, a 404 or a PDF will not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

impl Fetcher {
    pub fn new(config: &DataExtractionConfig) -> Result<Fetcher> {
        let guard = Arc::new(Guard::new(&config.allow_hosts));
        // rustls with ring, configured here rather than through a process-wide
        // default provider, so nothing global changes when the kind is built.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_platform_verifier())
            .map_err(|e| Error::Client(e.to_string()))?
            .with_no_client_auth();
        let client = Client::builder()
            .tls_backend_preconfigured(tls)
            .dns_resolver(GuardedResolver {
                guard: guard.clone(),
            })
            // Each hop is checked by hand (see `fetch`); reqwest must not follow any.
            .redirect(redirect::Policy::none())
            // A proxy would resolve the host for us and defeat the guard.
            .no_proxy()
            .connect_timeout(config.fetch_timeout.min(MAX_CONNECT_TIMEOUT))
            .timeout(config.fetch_timeout)
            .user_agent(concat!(
                "jobrunner-data-extraction/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| Error::Client(jobrunner::error_chain(&e)))?;
        Ok(Fetcher {
            client,
            guard,
            overall: Semaphore::new(MAX_IN_FLIGHT),
            per_host: Mutex::new(HashMap::new()),
            per_host_limit: config.per_host_concurrency,
            max_body_bytes: config.max_body_bytes,
            max_redirects: config.max_redirects,
        })
    }

    /// Fetches one source, following up to `max_redirects` redirects, each checked
    /// by the guard before it is requested.
    pub async fn fetch(&self, source: &Url) -> Result<Page> {
        // The semaphore is never closed, so acquiring cannot fail; the error arm
        // only exists to avoid an `expect`.
        let _overall = self
            .overall
            .acquire()
            .await
            .map_err(|e| Error::Unreachable {
                url: source.clone(),
                reason: e.to_string(),
            })?;
        let mut url = source.clone();
        for _hop in 0..=self.max_redirects {
            self.guard.check_url(&url)?;
            let host = self.host_semaphore(&url);
            let _host = host.acquire().await.map_err(|e| Error::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            let response = self
                .client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| request_error(&url, e))?;
            let status = response.status();
            if status.is_redirection()
                && let Some(location) = response.headers().get(LOCATION)
            {
                let text = String::from_utf8_lossy(location.as_bytes()).into_owned();
                let next = url
                    .join(&text)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"));
                url = next.ok_or(Error::BadRedirect {
                    url: url.clone(),
                    location: text,
                })?;
                continue;
            }
            if !status.is_success() {
                return Err(Error::Status { url, status });
            }
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase());
            // No content type is read as HTML: small sites often send none.
            if let Some(ct) = content_type.filter(|ct| !ct.contains("html")) {
                return Err(Error::NotHtml {
                    url,
                    content_type: ct,
                });
            }
            return self.read_body(url, response).await;
        }
        Err(Error::TooManyRedirects {
            max: self.max_redirects,
        })
    }

    /// Reads the body chunk by chunk and stops at `max_body_bytes`, so a huge or
    /// endless page costs at most that much memory.
    async fn read_body(&self, url: Url, mut response: reqwest::Response) -> Result<Page> {
        let cap = usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX);
        let mut body: Vec<u8> = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = response.chunk().await.map_err(|e| request_error(&url, e))? {
            let room = cap - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Page {
            url,
            body: String::from_utf8_lossy(&body).into_owned(),
            truncated,
        })
    }

    fn host_semaphore(&self, url: &Url) -> Arc<Semaphore> {
        let key = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        // A poisoned map is still a valid map: the only writer inserts or prunes.
        let mut map = self.per_host.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= HOST_MAP_PRUNE_AT {
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        map.entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_host_limit)))
            .clone()
    }
}

/// A refusal from the resolver keeps its own message; anything else is network
/// trouble, described with its whole source chain.
fn request_error(url: &Url, error: reqwest::Error) -> Error {
    if let Some(refused) = find_refused(&error) {
        return Error::Refused(refused.clone());
    }
    let reason = if error.is_timeout() {
        "timed out (data_extraction.fetch_timeout)".to_owned()
    } else {
        // reqwest's own message repeats the URL; its sources say what went wrong.
        let mut parts = Vec::new();
        let mut next = std::error::Error::source(&error);
        while let Some(e) = next {
            parts.push(e.to_string());
            next = e.source();
        }
        if parts.is_empty() {
            error.to_string()
        } else {
            parts.join(": ")
        }
    };
    Error::Unreachable {
        url: url.clone(),
        reason,
    }
}
