//! The HTTP listener (configured by `[admin]`): `/healthz`, `/readyz`, `/metrics`, `/jobs/{id}` and
//! `/events` (Server-Sent Events), for ops and for front ends that show a job's
//! status without polling. docs/OBSERVABILITY.md lists the endpoints and metrics.
//!
//! The daemon (`runtime`) binds the listener, hands [`serve`] an [`HttpState`]
//! and stops it with the drain. Every answer is computed from the ledger, the
//! broker and the metrics registry; this module keeps no job state of its own.
//!
//! **Invariant:** nothing here runs SQL or Redis commands itself: it calls
//! `ledger` and `broker`. No handler can slow the daemon: readiness is cached for a
//! second and bounded by a timeout, and an SSE client reads from a bounded
//! broadcast that drops (and tells it about) what it could not keep up with.

mod sse;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::Broker;
use crate::ledger::{self, Event, Ledger};
use crate::metrics::{self, Metrics, Sample};

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
        queues: Vec<String>,
        events: EventFeed,
        draining: CancellationToken,
    ) -> HttpState {
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

/// Serves until `stop` fires; open SSE streams end then too.
pub async fn serve(listener: tokio::net::TcpListener, state: HttpState, stop: CancellationToken) {
    let app = router(state, stop.clone());
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "Admin listener failed");
    }
}

/// The bound address, for the log line tests and ops read.
pub fn log_listening(addr: SocketAddr) {
    tracing::info!(admin.addr = %addr, "Admin listener on http://{addr}");
}

fn router(state: HttpState, stop: CancellationToken) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/jobs/{id}", get(job))
        .route(
            "/events",
            get(move |s: State<HttpState>, q: axum::extract::RawQuery| {
                sse::events(s, q, stop.clone(), KEEP_ALIVE)
            }),
        )
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.draining.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining", "redis": "skipped", "postgres": "skipped" })),
        )
            .into_response();
    }
    if state.broken.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "broken",
                "error": "a daemon loop ended unexpectedly; see the log and restart the daemon" })),
        )
            .into_response();
    }
    let r = readiness(&state).await;
    let text = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let ok = r.redis.is_ok() && r.postgres.is_ok();
    let body = json!({
        "status": if ok { "ready" } else { "unavailable" },
        "redis": text(&r.redis),
        "postgres": text(&r.postgres),
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Probes both services, or reuses an answer younger than [`READY_CACHE`].
async fn readiness(state: &HttpState) -> Readiness {
    if let Some((at, r)) = state
        .ready_cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        && at.elapsed() < READY_CACHE
    {
        return r.clone();
    }
    let probe = |name: &'static str| {
        move |r: Result<Result<(), String>, tokio::time::error::Elapsed>| match r {
            Ok(inner) => inner,
            Err(_) => Err(format!("{name} did not answer within {PROBE_TIMEOUT:?}")),
        }
    };
    let (redis, postgres) = tokio::join!(
        tokio::time::timeout(PROBE_TIMEOUT, async {
            state
                .broker
                .ping()
                .await
                .map_err(|e| crate::error_chain(&e))
        }),
        tokio::time::timeout(PROBE_TIMEOUT, async {
            state
                .ledger
                .ping()
                .await
                .map_err(|e| crate::error_chain(&e))
        }),
    );
    let r = Readiness {
        redis: probe("Redis")(redis),
        postgres: probe("Postgres")(postgres),
    };
    *state.ready_cache.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((Instant::now(), r.clone()));
    r
}

async fn metrics_text(State(state): State<HttpState>) -> Response {
    let mut samples: Vec<Sample> = Vec::new();
    samples.push((
        metrics::UP,
        vec![],
        if state.draining.is_cancelled() {
            0.0
        } else {
            1.0
        },
    ));
    let (size, idle) = state.ledger.pool_stats();
    samples.push((
        metrics::PG_CONNECTIONS,
        vec![("state", "idle".into())],
        idle as f64,
    ));
    samples.push((
        metrics::PG_CONNECTIONS,
        vec![("state", "in_use".into())],
        size.saturating_sub(idle as u32) as f64,
    ));
    let pool = state.broker.pool_stats();
    samples.push((
        metrics::REDIS_CONNECTIONS,
        vec![("state", "connected".into())],
        pool.connected as f64,
    ));
    samples.push((
        metrics::REDIS_CONNECTIONS,
        vec![("state", "disconnected".into())],
        (pool.clients - pool.connected) as f64,
    ));
    samples.push((metrics::REDIS_QUEUED, vec![], pool.queued as f64));
    samples.push((
        metrics::REDIS_REDELIVERIES,
        vec![],
        pool.redeliveries as f64,
    ));
    let now_ms = chrono::Utc::now().timestamp_millis();
    for queue in state.queues.iter() {
        let stats =
            match tokio::time::timeout(SCRAPE_TIMEOUT, state.broker.queue_stats(queue)).await {
                Ok(Ok(stats)) => stats,
                Ok(Err(error)) => {
                    tracing::debug!(queue, error = %crate::error_chain(&error),
                        "Queue gauges unavailable for this scrape");
                    continue;
                }
                Err(_) => continue,
            };
        for (state_name, value) in [
            ("ready", stats.ready),
            ("scheduled", stats.scheduled),
            ("running", stats.running),
        ] {
            samples.push((
                metrics::QUEUE_JOBS,
                vec![("queue", queue.clone()), ("state", state_name.into())],
                value as f64,
            ));
        }
        let age = stats
            .head_ready_ms
            .map_or(0.0, |ms| (now_ms - ms).max(0) as f64 / 1000.0);
        samples.push((
            metrics::QUEUE_OLDEST_READY,
            vec![("queue", queue.clone())],
            age,
        ));
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&samples),
    )
        .into_response()
}

async fn job(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<Uuid>() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("`{id}` is not a job id (a UUID)") })),
        )
            .into_response();
    };
    match state.ledger.job(id).await {
        Ok(job) => match serde_json::to_value(&job) {
            Ok(mut job) => {
                crate::redact::apply(&state.redaction, &mut job);
                Json(job).into_response()
            }
            Err(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({ "error": format!("job {id} cannot be shown: {error}") })),
            )
                .into_response(),
        },
        Err(ledger::Error::NotFound(_)) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("job {id} not found") })),
        )
            .into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": crate::error_chain(&error) })),
        )
            .into_response(),
    }
}
