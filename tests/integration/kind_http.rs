//! Kinds configured with `handler = "http"`, posting to a real HTTP server the test
//! starts on loopback: what the endpoint receives and how its answers end the job.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use hmac::{KeyInit, Mac};
use jobrunner::config::{HandlerName, HttpKindConfig, KindConfig};
use serde_json::{Value, json};

use crate::helpers::spawn_app;
use jobrunner::ledger::Status;

/// What the test server saw: when each request came and its headers and body.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(Instant, HeaderMap, Bytes)>>>);

impl Seen {
    fn record(&self, headers: &HeaderMap, body: &Bytes) -> usize {
        let mut seen = self.0.lock().unwrap();
        seen.push((Instant::now(), headers.clone(), body.clone()));
        seen.len()
    }

    fn times(&self) -> Vec<Instant> {
        self.0.lock().unwrap().iter().map(|(t, _, _)| *t).collect()
    }
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn http_kind(url: String, timeout: Duration) -> KindConfig {
    let mut kind = KindConfig {
        max_attempts: 3,
        handler: Some(HandlerName::Http),
        http: Some(HttpKindConfig {
            url,
            headers: BTreeMap::from([("Authorization".into(), "Bearer test-token".into())]),
            timeout,
            connect_timeout: Duration::from_secs(1),
            hmac_secret_env: None,
        }),
        ..KindConfig::default()
    };
    kind.backoff.base = Duration::from_millis(20);
    kind.backoff.max = Duration::from_secs(5);
    kind
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// The test's copy of the key: it reuses a variable every process has, because
/// setting one is unsafe in a multi-threaded test binary.
const KEY_VAR: &str = "PATH";

/// Checks the signature as an endpoint would, and answers with what it received.
async fn signed_hook(
    State(seen): State<Seen>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    seen.record(&headers, &body);
    let key = std::env::var(KEY_VAR).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(&body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    if header(&headers, "x-jobrunner-signature") != expected {
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    axum::Json(json!({
        "received": serde_json::from_slice::<Value>(&body).unwrap(),
        "job": header(&headers, "x-jobrunner-job-id"),
        "attempt": header(&headers, "x-jobrunner-attempt"),
        "authorization": header(&headers, "authorization"),
        "content_type": header(&headers, "content-type"),
    }))
    .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_post_succeeds_with_the_endpoints_json_as_result() {
    let seen = Seen::default();
    let base = serve(
        Router::new()
            .route("/hook", post(signed_hook))
            .with_state(seen.clone()),
    )
    .await;
    let mut app = spawn_app().await;
    let mut kind = http_kind(format!("{base}/hook"), Duration::from_secs(5));
    kind.http.as_mut().unwrap().hmac_secret_env = Some(KEY_VAR.into());
    app.config.kinds.insert("mailer".into(), kind);
    let daemon = app.start_daemon().await;

    let id = app
        .enqueue("mailer", json!({"to": "ada@example.com", "n": 1}))
        .await;
    let job = app.wait_final(id, 10).await;
    assert_eq!(job.status, Status::Succeeded, "{job:?}");
    assert_eq!(
        job.result,
        Some(json!({
            "received": {"to": "ada@example.com", "n": 1},
            "job": id.to_string(),
            "attempt": "1",
            "authorization": "Bearer test-token",
            "content_type": "application/json",
        }))
    );
    let calls: Vec<_> = seen
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, h, _)| header(h, "x-jobrunner-job-id"))
        .collect();
    // Without a crash the endpoint hears about the job exactly once.
    assert_eq!(calls, vec![id.to_string()]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_retry_after_is_retried_after_that_delay_then_succeeds() {
    let seen = Seen::default();
    let hook = |State(seen): State<Seen>, headers: HeaderMap, body: Bytes| async move {
        if seen.record(&headers, &body) == 1 {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [("Retry-After", "1")],
                "busy",
            )
                .into_response()
        } else {
            axum::Json(json!({"ok": true})).into_response()
        }
    };
    let base = serve(
        Router::new()
            .route("/hook", post(hook))
            .with_state(seen.clone()),
    )
    .await;
    let mut app = spawn_app().await;
    // Backoff alone would retry after ~20ms; only Retry-After explains a 1s gap.
    app.config.kinds.insert(
        "mailer".into(),
        http_kind(format!("{base}/hook"), Duration::from_secs(5)),
    );
    let daemon = app.start_daemon().await;

    let id = app.enqueue("mailer", json!({})).await;
    let job = app.wait_final(id, 15).await;
    assert_eq!((job.status.as_str(), job.attempts), ("succeeded", 2));
    assert_eq!(job.result, Some(json!({"ok": true})));
    assert_eq!(
        job.last_error,
        Some(format!(
            "POST {base}/hook returned 503 Service Unavailable: busy"
        ))
    );
    let times = seen.times();
    let gap = times[1] - times[0];
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_is_dead_at_once_and_a_plain_answer_is_kept_as_text() {
    let router = Router::new()
        .route(
            "/missing",
            post(|| async { (StatusCode::NOT_FOUND, "no hook here") }),
        )
        .route("/plain", post(|| async { "ok, queued" }));
    let base = serve(router).await;
    let mut app = spawn_app().await;
    app.config.kinds.insert(
        "gone".into(),
        http_kind(
            format!("{base}/missing?token=s3cret"),
            Duration::from_secs(5),
        ),
    );
    app.config.kinds.insert(
        "plain".into(),
        http_kind(format!("{base}/plain"), Duration::from_secs(5)),
    );
    let daemon = app.start_daemon().await;

    let gone = app.enqueue("gone", json!({})).await;
    let plain = app.enqueue("plain", json!({})).await;
    let job = app.wait_final(gone, 10).await;
    assert_eq!((job.status.as_str(), job.attempts), ("dead", 1));
    assert_eq!(
        job.last_error,
        Some(format!(
            "POST {base}/missing returned 404 Not Found: no hook here"
        )),
        "the error names the status and the body, and never the query's token"
    );
    let job = app.wait_final(plain, 10).await;
    assert_eq!(job.status, Status::Succeeded);
    assert_eq!(
        job.result,
        Some(json!({"status": 200, "body": "ok, queued"}))
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_timeout_is_retried() {
    let seen = Seen::default();
    let hook = |State(seen): State<Seen>, headers: HeaderMap, body: Bytes| async move {
        if seen.record(&headers, &body) == 1 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        axum::Json(json!({"answered": true}))
    };
    let base = serve(
        Router::new()
            .route("/slow", post(hook))
            .with_state(seen.clone()),
    )
    .await;
    let mut app = spawn_app().await;
    app.config.kinds.insert(
        "slow".into(),
        http_kind(format!("{base}/slow"), Duration::from_millis(300)),
    );
    let daemon = app.start_daemon().await;

    let id = app.enqueue("slow", json!({})).await;
    let job = app.wait_final(id, 10).await;
    assert_eq!((job.status.as_str(), job.attempts), ("succeeded", 2));
    assert_eq!(job.last_error, Some(format!("POST {base}/slow timed out")));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_with_nul_or_invalid_utf8_are_stored_with_replacement_characters() {
    let router = Router::new()
        .route(
            "/json",
            post(|| async {
                (
                    [("content-type", "application/json")],
                    r#"{"x": "a\u0000b"}"#,
                )
            }),
        )
        .route("/bytes", post(|| async { Bytes::from_static(b"ok\0\xff") }))
        .route(
            "/broken",
            post(|| async {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Bytes::from_static(b"bad\0\xfe"),
                )
            }),
        );
    let base = serve(router).await;
    let mut app = spawn_app().await;
    for name in ["json", "bytes", "broken"] {
        app.config.kinds.insert(
            format!("hook-{name}"),
            http_kind(format!("{base}/{name}"), Duration::from_secs(5)),
        );
    }
    let daemon = app.start_daemon().await;
    let json_id = app.enqueue("hook-json", json!({})).await;
    let bytes_id = app.enqueue("hook-bytes", json!({})).await;
    let broken_id = app.enqueue("hook-broken", json!({})).await;
    let job = app.wait_final(json_id, 10).await;
    assert_eq!(job.status, Status::Succeeded, "{job:?}");
    assert_eq!(job.result, Some(json!({"x": "a\u{FFFD}b"})));
    let job = app.wait_final(bytes_id, 10).await;
    assert_eq!(job.status, Status::Succeeded, "{job:?}");
    assert_eq!(
        job.result,
        Some(json!({"status": 200, "body": "ok\u{FFFD}\u{FFFD}"}))
    );
    let job = app.wait_final(broken_id, 10).await;
    assert_eq!((job.status.as_str(), job.attempts), ("dead", 1), "{job:?}");
    assert!(
        job.last_error.unwrap().ends_with("bad\u{FFFD}\u{FFFD}"),
        "the error keeps the body, made safe"
    );
    let good = app.enqueue("noop", json!({})).await;
    assert_eq!(app.wait_final(good, 10).await.status, Status::Succeeded);
    daemon.stop().await;
}
