//! The probes and the JSON reads: `/healthz`, `/readyz`, `/metrics`, `/jobs/{id}`.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;
use uuid::Uuid;

use super::{HttpState, PROBE_TIMEOUT, READY_CACHE, Readiness, SCRAPE_TIMEOUT};
use crate::ledger;
use crate::metrics::{self, Sample};

pub(super) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub(super) async fn readyz(State(state): State<HttpState>) -> Response {
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
pub(super) async fn readiness(state: &HttpState) -> Readiness {
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

pub(super) async fn metrics_text(State(state): State<HttpState>) -> Response {
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
    // Side by side: a queue whose Redis node does not answer costs the scrape
    // one timeout, not one per queue, and the other queues' gauges still show.
    let broker = &state.broker;
    let reads = state.queues.iter().map(|queue| async move {
        let read = tokio::time::timeout(SCRAPE_TIMEOUT, broker.queue_stats(queue)).await;
        (queue, read)
    });
    for (queue, read) in futures::future::join_all(reads).await {
        let stats = match read {
            Ok(Ok(stats)) => Some(stats),
            Ok(Err(error)) => {
                tracing::debug!(queue, error = %crate::error_chain(&error),
                    "Queue gauges unavailable for this scrape");
                None
            }
            Err(_) => None,
        };
        samples.push((
            metrics::QUEUE_REDIS_UP,
            vec![("queue", queue.clone())],
            if stats.is_some() { 1.0 } else { 0.0 },
        ));
        let Some(stats) = stats else { continue };
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

pub(super) async fn job(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
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
