//! The HTTP listener (configured by `[admin]`): `/healthz`, `/readyz`, `/metrics`,
//! `/jobs/{id}` and `/events` (Server-Sent Events) for ops and for front ends that
//! show a job's status without polling, and the dashboard at `/` with its actions.
//! docs/OBSERVABILITY.md lists the endpoints and metrics, docs/DASHBOARD.md the
//! dashboard, docs/OPERATIONS.md "Security" the tokens.
//!
//! One file per concept: `auth/` (tokens, sessions, the `Host` check: the one
//! middleware every request passes), `probes.rs` (health, readiness, metrics, the
//! JSON job), `sse.rs` (`/events`), `actions.rs` (what changes state, through
//! `crate::control`), `dashboard/` (the pages), `tls.rs` (the optional TLS
//! acceptor).
//!
//! The daemon (`runtime`) binds the listener, hands [`serve`] an [`HttpState`]
//! and stops it with the drain. Every answer is computed from the ledger, the
//! broker and the metrics registry; this module keeps no job state of its own.
//!
//! **Invariant:** nothing here runs SQL or Redis commands itself: it calls
//! `ledger`, `broker` and `control`. Checked by
//! `tests/integration/invariants.rs::in_the_core_only_ledger_runs_sql` and
//! `::only_broker_names_the_redis_client`.
//!
//! Design note: no handler can slow the daemon: readiness is
//! cached for a second and bounded by a timeout, an SSE client reads from a
//! bounded broadcast that drops (and tells it about) what it could not keep up
//! with, and every page's query is bounded by a limit or an index range.

mod actions;
pub mod auth;
mod dashboard;
mod probes;
mod sse;
pub mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

pub use auth::Auth;

use crate::broker::Broker;
use crate::config::Config;
use crate::ledger::{Event, Ledger};
use crate::metrics::Metrics;

/// How long a readiness answer is reused.
const READY_CACHE: Duration = Duration::from_secs(1);
/// How long each readiness probe (Redis PING, Postgres `SELECT 1`) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the Redis reads behind the queue gauges may take at scrape time.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// SSE keep-alive comment interval.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How long a new SSE client waits for the relay's Redis subscription.
const FEED_READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The live events SSE clients read: a bounded broadcast, fed either by this
/// daemon's publisher or (Redis events on) by the runtime's relay from the Redis
/// channel. The relay subscribes only while at least one client is connected, so
/// a daemon nobody watches does not receive every daemon's events.
#[derive(Clone)]
pub struct EventFeed {
    /// Every SSE client subscribes; a slow one lags instead of slowing the sender.
    pub tx: broadcast::Sender<Arc<Published>>,
    relay: Option<FeedDemand>,
}

/// The relay's side of an [`EventFeed`].
#[derive(Clone)]
pub struct FeedDemand {
    /// Poked when a client arrives.
    pub wanted: Arc<tokio::sync::Notify>,
    /// True while the relay's Redis subscription is in place.
    pub ready: tokio::sync::watch::Receiver<bool>,
}

impl EventFeed {
    /// A feed of `capacity` events; with `relay`, clients wait for its subscription.
    pub fn new(capacity: usize, relay: Option<FeedDemand>) -> EventFeed {
        EventFeed {
            tx: broadcast::channel(capacity).0,
            relay,
        }
    }

    /// A receiver for one client, once every later event will reach it.
    async fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        let rx = self.tx.subscribe();
        if let Some(relay) = &self.relay {
            relay.wanted.notify_one();
            let mut ready = relay.ready.clone();
            if tokio::time::timeout(FEED_READY_TIMEOUT, ready.wait_for(|r| *r))
                .await
                .is_err()
            {
                tracing::warn!(
                    "The /events relay is not subscribed yet; the stream may miss events"
                );
            }
        }
        rx
    }
}

/// An event on its way to SSE clients: parsed once for filtering, with the exact
/// JSON text that was published.
#[derive(Debug)]
pub struct Published {
    pub event: Event,
    pub json: String,
}

/// Everything the handlers read. Cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    pub ledger: Ledger,
    pub broker: Broker,
    pub metrics: Arc<Metrics>,
    /// Queues this daemon serves: the ones the queue gauges cover.
    pub queues: Arc<Vec<String>>,
    /// Live events for SSE clients.
    pub events: EventFeed,
    /// Cancelled when the daemon starts draining: `/readyz` answers 503 from then on.
    pub draining: CancellationToken,
    /// The last readiness answer and when it was computed (see [`READY_CACHE`]).
    ready_cache: Arc<Mutex<Option<(Instant, Readiness)>>>,
    /// Cancelled when one of the daemon's essential loops ended (or panicked)
    /// before the drain: `/readyz` answers 503 from then on.
    broken: CancellationToken,
    /// Applied to every job this listener serves (`/jobs/{id}`).
    redaction: Arc<crate::redact::Redaction>,
    /// Tokens, sessions and allowed hosts.
    pub auth: Arc<Auth>,
    /// The daemon's config in force (cron schedules, event channels, queues).
    pub live: watch::Receiver<Arc<Config>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Readiness {
    redis: Result<(), String>,
    postgres: Result<(), String>,
}

impl HttpState {
    pub fn new(
        ledger: Ledger,
        broker: Broker,
        metrics: Arc<Metrics>,
        live: watch::Receiver<Arc<Config>>,
        events: EventFeed,
        draining: CancellationToken,
        auth: Arc<Auth>,
    ) -> HttpState {
        let queues: Vec<String> = live.borrow().queues.keys().cloned().collect();
        HttpState {
            ledger,
            broker,
            metrics,
            queues: Arc::new(queues),
            events,
            draining,
            ready_cache: Arc::default(),
            broken: CancellationToken::new(),
            redaction: Arc::default(),
            auth,
            live,
        }
    }

    /// Jobs are served redacted by these rules (none by default).
    pub fn with_redaction(mut self, redaction: Arc<crate::redact::Redaction>) -> HttpState {
        self.redaction = redaction;
        self
    }

    /// Readiness also fails once `broken` is cancelled.
    pub fn with_broken(mut self, broken: CancellationToken) -> HttpState {
        self.broken = broken;
        self
    }
}

/// Serves until `stop` fires; open SSE streams end then too. With `tls`, every
/// connection is a TLS one.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    stop: CancellationToken,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let app = router(state, stop.clone());
    let result = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
        Some(config) => match tls::TlsListener::new(listener, config, stop.clone()) {
            Ok(listener) => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            }
            Err(error) => Err(error),
        },
    };
    if let Err(error) = result {
        tracing::error!(%error, "Admin listener failed");
    }
}

/// The bound address, for the log line tests and ops read.
pub fn log_listening(addr: SocketAddr, tls: bool) {
    let scheme = if tls { "https" } else { "http" };
    tracing::info!(admin.addr = %addr, "Admin listener on {scheme}://{addr}");
}

fn router(state: HttpState, stop: CancellationToken) -> Router {
    Router::new()
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics_text))
        .route("/jobs/{id}", get(dashboard::job))
        .route(
            "/events",
            get(move |s: State<HttpState>, q: axum::extract::RawQuery| {
                sse::events(s, q, stop.clone(), KEEP_ALIVE)
            }),
        )
        .route("/", get(dashboard::overview))
        .route("/jobs", get(dashboard::jobs))
        .route("/cron", get(dashboard::cron))
        .route("/login", get(dashboard::login).post(actions::login))
        .route("/logout", post(actions::logout))
        .route("/assets/{name}", get(dashboard::asset))
        .route("/jobs/{id}/cancel", post(actions::cancel))
        .route("/jobs/{id}/retry", post(actions::retry))
        .route("/jobs/retry-dead", post(actions::retry_dead))
        .route("/queues/{queue}/pause", post(actions::pause))
        .route("/queues/{queue}/resume", post(actions::resume))
        .route("/cron/{name}/run", post(actions::run_cron))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .with_state(state)
}
