//! The admin listener and job events as ops and front ends use them: health and
//! readiness while Redis or Postgres go away, `/metrics` read with a strict
//! Prometheus text parser, `/jobs/{id}`, Server-Sent Events, the Redis and
//! Postgres event channels, and job progress.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use jobrunner::broker::{Received, Subscription};
use jobrunner::config::QueueConfig;
use jobrunner::ledger::Event;
use jobrunner::runtime::Daemon;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness;
use crate::helpers::{TestApp, spawn_app};
use jobrunner::ledger::Status;

fn client() -> reqwest::Client {
    // reqwest is built without a TLS provider; these requests are plain HTTP, but
    // the client still wants one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

fn admin(daemon: &Daemon) -> String {
    let addr = daemon.admin_addr().expect("the admin listener is on");
    format!("http://{addr}")
}

/// GET `path`: (status code, body as JSON or as a string).
async fn get(base: &str, path: &str) -> (u16, Value) {
    let response = client()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let code = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (code, body)
}

/// Polls `path` until it answers `code` (readiness is cached for a second).
async fn wait_for_code(base: &str, path: &str, code: u16, secs: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (got, body) = get(base, path).await;
        if got == code {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} still answers {got} after {secs}s, not {code}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readiness_follows_redis_going_away_and_coming_back() {
    let mut app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let base = admin(&daemon);
    assert_eq!(get(&base, "/healthz").await.0, 200);
    let ready = wait_for_code(&base, "/readyz", 200, 5).await;
    assert_eq!(ready["redis"], "ok", "{ready}");
    assert_eq!(ready["postgres"], "ok", "{ready}");

    app.redis.kill();
    let body = wait_for_code(&base, "/readyz", 503, 10).await;
    assert_ne!(body["redis"], "ok", "Redis is down: {body}");
    assert_eq!(body["postgres"], "ok", "{body}");
    assert_eq!(
        get(&base, "/healthz").await.0,
        200,
        "the process still runs"
    );

    app.redis.start_again();
    let body = wait_for_code(&base, "/readyz", 200, 15).await;
    assert_eq!(body["status"], "ready", "{body}");
    daemon.stop().await;
}

#[tokio::test]
async fn readiness_reports_a_postgres_that_refuses_connections() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let base = admin(&daemon);
    wait_for_code(&base, "/readyz", 200, 5).await;

    // The harness Postgres serves every test: close only this test's database.
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(app.ledger.pool())
        .await
        .unwrap();
    let pg = harness::shared_postgres();
    let admin_pool = sqlx::PgPool::connect(&pg.url("postgres")).await.unwrap();
    let block = format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false");
    sqlx::query(sqlx::AssertSqlSafe(block))
        .execute(&admin_pool)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db)
        .execute(&admin_pool)
        .await
        .unwrap();

    let body = wait_for_code(&base, "/readyz", 503, 10).await;
    assert_ne!(body["postgres"], "ok", "Postgres refuses: {body}");
    assert_eq!(body["redis"], "ok", "{body}");
    assert_eq!(get(&base, "/healthz").await.0, 200);

    let allow = format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true");
    sqlx::query(sqlx::AssertSqlSafe(allow))
        .execute(&admin_pool)
        .await
        .unwrap();
    wait_for_code(&base, "/readyz", 200, 15).await;
    admin_pool.close().await;
    daemon.stop().await;
}

#[tokio::test]
async fn readiness_says_draining_once_the_daemon_stops() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let base = admin(&daemon);
    wait_for_code(&base, "/readyz", 200, 5).await;
    // A job that outlives the stop request keeps the daemon draining for a while.
    let id = app.enqueue("sleep", json!({"ms": 1500})).await;
    app.wait_until(id, 5, "running", |j| j.status == Status::Running)
        .await;
    daemon.shutdown();
    let body = wait_for_code(&base, "/readyz", 503, 2).await;
    assert_eq!(body["status"], "draining", "{body}");
    daemon.wait().await;
    assert_eq!(app.wait_final(id, 5).await.status, Status::Succeeded);
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict parser for the Prometheus text format (0.0.4): every sample belongs to
/// a family declared with `# HELP` and `# TYPE` before it, names and labels are
/// well formed, values are numbers. Panics naming the line otherwise.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for (number, line) in text.lines().enumerate() {
        let at = format!("line {}: `{line}`", number + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or_else(|| panic!("{at}"));
            assert!(valid_name(name) && !help.is_empty(), "{at}");
            helped.push(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{at}"));
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{at}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{at}: twice"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "{at}: unknown comment");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{at}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("{at}: bad value")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{at}"));
                (name, parse_labels(body, &at))
            }
        };
        assert!(valid_name(name), "{at}: bad name");
        let family = types
            .keys()
            .find(|f| {
                name == f.as_str()
                    || (types[*f] == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name == format!("{f}{s}")))
            })
            .unwrap_or_else(|| panic!("{at}: no # TYPE for this family"));
        assert!(helped.contains(family), "{at}: no # HELP for {family}");
        if name.ends_with("_bucket") {
            assert!(labels.contains_key("le"), "{at}: a bucket needs le");
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

fn parse_labels(body: &str, at: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert!(!key.is_empty(), "{at}: empty label name");
        assert_eq!(chars.next(), Some('"'), "{at}: label value must be quoted");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => panic!("{at}: bad escape {other:?}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("{at}: unterminated label value"),
            }
        }
        assert!(labels.insert(key, value).is_none(), "{at}: label twice");
        match chars.next() {
            Some(',') | None => {}
            Some(c) => panic!("{at}: unexpected {c:?} after a label"),
        }
    }
    labels
}

/// The value of the one sample with this name and these labels (a subset match).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    found.first().map(|s| s.value)
}

#[tokio::test]
async fn metrics_parse_strictly_and_count_the_jobs_that_ran() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let base = admin(&daemon);
    let scrape = || async {
        let response = client()
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        parse_prometheus(&response.text().await.unwrap())
    };
    let before = scrape().await;
    let finished = [("kind", "noop"), ("state", "succeeded")];
    assert_eq!(
        value(&before, "jobrunner_jobs_finished_total", &finished),
        None
    );
    assert_eq!(value(&before, "jobrunner_up", &[]), Some(1.0));
    assert_eq!(
        value(
            &before,
            "jobrunner_queue_jobs",
            &[("queue", "default"), ("state", "ready")]
        ),
        Some(0.0)
    );

    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.enqueue("noop", json!({})).await);
    }
    ids.push(app.enqueue("fail", json!({"times": 1})).await);
    ids.push(app.enqueue("fail", json!({"permanent": true})).await);
    for id in &ids {
        app.wait_final(*id, 10).await;
    }

    let after = scrape().await;
    assert_eq!(
        value(&after, "jobrunner_jobs_finished_total", &finished),
        Some(3.0)
    );
    let fail_ok = [("kind", "fail"), ("state", "succeeded")];
    let fail_dead = [("kind", "fail"), ("state", "dead")];
    assert_eq!(
        value(&after, "jobrunner_jobs_finished_total", &fail_ok),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "jobrunner_jobs_finished_total", &fail_dead),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "jobrunner_jobs_dead_total", &[("kind", "fail")]),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "jobrunner_job_retries_total", &[("kind", "fail")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "jobrunner_job_duration_seconds_count",
            &[("kind", "noop")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &after,
            "jobrunner_job_duration_seconds_bucket",
            &[("kind", "noop"), ("le", "+Inf")]
        ),
        Some(3.0)
    );
    // Five first attempts (three no-ops, two fails); a retry's wait is not measured.
    assert_eq!(
        value(
            &after,
            "jobrunner_queue_wait_seconds_count",
            &[("queue", "default")]
        ),
        Some(5.0)
    );
    let batches = value(&after, "jobrunner_status_batch_size_count", &[]).unwrap();
    let rows = value(&after, "jobrunner_status_batch_size_sum", &[]).unwrap();
    assert!(
        batches >= 1.0 && rows >= batches,
        "{batches} batches, {rows} rows"
    );
    assert!(value(&after, "jobrunner_status_write_seconds_count", &[]).unwrap() >= 1.0);
    assert!(value(&after, "jobrunner_postgres_acquire_seconds_count", &[]).unwrap() >= 1.0);
    // `queued` events are published before the job can run; later ones follow
    // the ledger asynchronously, so only those are certain to be counted here.
    assert!(
        value(
            &after,
            "jobrunner_events_published_total",
            &[("channel", "redis")]
        )
        .unwrap()
            >= 5.0,
        "at least one event per job"
    );
    for state in ["ready", "scheduled", "running"] {
        assert_eq!(
            value(
                &after,
                "jobrunner_queue_jobs",
                &[("queue", "default"), ("state", state)]
            ),
            Some(0.0),
            "{state}"
        );
    }
    assert!(
        value(
            &after,
            "jobrunner_queue_oldest_ready_age_seconds",
            &[("queue", "default")]
        )
        .is_some()
    );
    let idle = value(
        &after,
        "jobrunner_postgres_pool_connections",
        &[("state", "idle")],
    )
    .unwrap();
    let in_use = value(
        &after,
        "jobrunner_postgres_pool_connections",
        &[("state", "in_use")],
    )
    .unwrap();
    assert!(idle + in_use >= 1.0, "the pool has connections");
    assert_eq!(
        value(
            &after,
            "jobrunner_redis_pool_connections",
            &[("state", "connected")]
        ),
        Some(app.config.redis.pool_size as f64)
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_job_is_served_as_json_and_bad_ids_get_json_errors() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let base = admin(&daemon);
    let id = app.enqueue("noop", json!({"hello": "there"})).await;
    app.wait_final(id, 10).await;
    let (code, job) = get(&base, &format!("/jobs/{id}")).await;
    assert_eq!(code, 200, "{job}");
    assert_eq!(job["id"], id.to_string());
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["result"], json!({"hello": "there"}));
    assert!(
        job.get("progress").is_some(),
        "progress is part of the job: {job}"
    );

    let (code, body) = get(&base, &format!("/jobs/{}", Uuid::now_v7())).await;
    assert_eq!(code, 404);
    assert!(
        body["error"].as_str().unwrap().contains("not found"),
        "{body}"
    );
    let (code, body) = get(&base, "/jobs/42").await;
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("`42`"), "{body}");
    daemon.stop().await;
}

/// One Server-Sent Event: its `event:` name and its `data:` as JSON.
#[derive(Debug)]
struct Sse {
    name: String,
    data: Value,
}

/// An open `/events` stream.
struct SseStream {
    response: reqwest::Response,
    buffer: String,
}

impl SseStream {
    async fn open(base: &str, query: &str) -> SseStream {
        let response = client()
            .get(format!("{base}/events?{query}"))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("open /events");
        assert_eq!(response.status().as_u16(), 200);
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(kind, "text/event-stream");
        SseStream {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped), or None after `secs`.
    async fn next(&mut self, secs: u64) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    let data = serde_json::from_str(&data).expect("event data is JSON");
                    return Some(Sse { name, data });
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .expect("read /events")?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Events until (and with) the one whose status is final.
    async fn until_final(&mut self, secs: u64) -> Vec<Sse> {
        let mut seen = Vec::new();
        while let Some(e) = self.next(secs).await {
            let done = e.name == "status"
                && ["succeeded", "dead", "cancelled"]
                    .contains(&e.data["status"].as_str().unwrap_or(""));
            seen.push(e);
            if done {
                return seen;
            }
        }
        panic!("no final event within {secs}s; saw {seen:?}");
    }
}

/// Enqueues inside a producer transaction and returns the id before the commit,
/// as an API server would, so a client can subscribe before anything happens.
async fn enqueue_in_tx(
    app: &TestApp,
    kind: &str,
    payload: Value,
) -> (Uuid, sqlx::Transaction<'static, sqlx::Postgres>) {
    let mut tx = app.ledger.pool().begin().await.unwrap();
    let id: Uuid = sqlx::query_scalar("SELECT jobrunner.enqueue($1, $2)")
        .bind(kind)
        .bind(payload)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    (id, tx)
}

#[tokio::test]
async fn sse_streams_one_jobs_status_changes_in_order() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let base = admin(&daemon);
    let (id, tx) = enqueue_in_tx(&app, "noop", json!({})).await;
    let mut stream = SseStream::open(&base, &format!("job={id}")).await;
    // Another job in the same commit: the filter must keep it out.
    let other: Uuid = sqlx::query_scalar("SELECT jobrunner.enqueue('noop', '{}')")
        .fetch_one(app.ledger.pool())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let events = stream.until_final(10).await;
    let statuses: Vec<&str> = events
        .iter()
        .map(|e| e.data["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["queued", "running", "succeeded"], "{events:?}");
    for e in &events {
        assert_eq!(e.name, "status");
        assert_eq!(e.data["id"], id.to_string(), "only the filtered job: {e:?}");
        assert_eq!(e.data["queue"], "default");
        assert_eq!(e.data["kind"], "noop");
        assert!(e.data["at"].as_str().is_some());
    }
    assert_eq!(events[1].data["attempt"], 1);
    app.wait_final(other, 10).await;
    daemon.stop().await;
}

#[tokio::test]
async fn redis_and_postgres_channels_carry_the_same_events() {
    let app = spawn_app().await;
    let mut redis_rx = subscribe_events(&app).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(app.ledger.pool())
        .await
        .unwrap();
    listener.listen("jobrunner_events").await.unwrap();
    let mut config = app.config.clone();
    config.events.postgres = true;
    let daemon = app
        .start_daemon_with(config.clone(), jobrunner_kinds::registry(&config))
        .await;

    let id = app.enqueue("fail", json!({"times": 1})).await;
    app.wait_final(id, 10).await;

    let expected = [
        Status::Queued,
        Status::Running,
        Status::Retrying,
        Status::Running,
        Status::Succeeded,
    ];
    let mut from_redis = Vec::new();
    while from_redis.len() < expected.len() {
        let text = next_text(&mut redis_rx).await;
        let e: Event = serde_json::from_str(&text).unwrap();
        if e.id == id {
            from_redis.push(text);
        }
    }
    let mut from_postgres = Vec::new();
    while from_postgres.len() < expected.len() {
        let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .expect("a Postgres notification")
            .unwrap();
        let e: Event = serde_json::from_str(n.payload()).unwrap();
        if e.id == id {
            from_postgres.push(n.payload().to_owned());
        }
    }
    assert_eq!(
        from_redis, from_postgres,
        "the same events, in the same order"
    );
    let statuses: Vec<Status> = from_redis
        .iter()
        .map(|t| serde_json::from_str::<Event>(t).unwrap().status)
        .collect();
    assert_eq!(statuses, expected);
    let retrying: Value = serde_json::from_str(&from_redis[2]).unwrap();
    assert!(
        retrying["error"]
            .as_str()
            .unwrap()
            .contains("failed attempt 1"),
        "{retrying}"
    );
    assert_eq!(retrying["attempt"], 1);
    daemon.stop().await;
    redis_rx.close().await;
}

#[tokio::test]
async fn progress_shows_in_the_job_the_cli_and_the_events() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let base = admin(&daemon);
    let mut stream = SseStream::open(&base, "kind=sleep&queue=default").await;
    let id = app
        .enqueue("sleep", json!({"ms": 400, "progress": true}))
        .await;
    let events = stream.until_final(10).await;
    let progress: Vec<(u64, String)> = events
        .iter()
        .filter(|e| e.name == "progress")
        .map(|e| {
            assert_eq!(e.data["id"], id.to_string());
            assert_eq!(e.data["type"], "progress");
            assert_eq!(e.data["status"], "running");
            (
                e.data["progress"]["percent"].as_u64().unwrap(),
                e.data["progress"]["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(!progress.is_empty(), "{events:?}");
    assert!(
        progress.windows(2).all(|w| w[0].0 < w[1].0),
        "percentages only grow: {progress:?}"
    );
    assert_eq!(
        progress.last().unwrap(),
        &(100, "slept 400 of 400 ms".to_owned())
    );
    let last = events.last().unwrap();
    assert_eq!(last.data["status"], "succeeded");

    let (_, job) = get(&base, &format!("/jobs/{id}")).await;
    assert_eq!(job["progress"], 100, "{job}");
    assert_eq!(job["progress_message"], "slept 400 of 400 ms");
    let (code, out, err) = app.cli(&["status", &id.to_string(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["progress"], 100, "{out}");
    daemon.stop().await;
}

#[tokio::test]
async fn events_reach_sse_clients_of_a_daemon_that_did_not_run_the_job() {
    let app = spawn_app().await;
    // A process serving `default` runs the job; the in-process daemon serves
    // another queue only, and its /events still shows the job's events.
    let mut runner = app.spawn_daemon(&app.config);
    let addr = wait_for_logged_admin_addr(&runner, 10);
    assert_eq!(get(&format!("http://{addr}"), "/healthz").await.0, 200);

    let mut watcher_config = app.config.clone();
    watcher_config.queues.clear();
    watcher_config.queues.insert(
        "elsewhere".into(),
        QueueConfig {
            concurrency: 1,
            ..Default::default()
        },
    );
    let watcher = app
        .start_daemon_with(
            watcher_config.clone(),
            jobrunner_kinds::registry(&watcher_config),
        )
        .await;
    let (id, tx) = enqueue_in_tx(&app, "noop", json!({})).await;
    let mut stream = SseStream::open(&admin(&watcher), &format!("job={id}")).await;
    tx.commit().await.unwrap();
    let statuses: Vec<String> = stream
        .until_final(15)
        .await
        .iter()
        .map(|e| e.data["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses.last().map(String::as_str), Some("succeeded"));
    assert!(statuses.contains(&"running".to_owned()), "{statuses:?}");
    watcher.stop().await;
    runner.signal("TERM");
    assert!(
        runner.wait_exit(10).is_some_and(|s| s.success()),
        "{}",
        runner.log_text()
    );
}

/// The admin address a daemon process logs at start-up.
fn wait_for_logged_admin_addr(daemon: &crate::helpers::DaemonProcess, secs: u64) -> SocketAddr {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let log = daemon.log_text();
        if let Some(at) = log.find("Admin listener on http://") {
            let rest = &log[at + "Admin listener on http://".len()..];
            let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
            return rest[..end].parse().expect("a logged address");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no admin address logged within {secs}s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn with_redis_events_off_sse_still_shows_this_daemons_jobs_and_redis_hears_nothing() {
    let app = spawn_app().await;
    let mut redis_rx = subscribe_events(&app).await;
    let mut config = app.config.clone();
    config.events.redis = false;
    let daemon = app
        .start_daemon_with(config.clone(), jobrunner_kinds::registry(&config))
        .await;
    let (id, tx) = enqueue_in_tx(&app, "noop", json!({})).await;
    let mut stream = SseStream::open(&admin(&daemon), &format!("job={id}")).await;
    tx.commit().await.unwrap();
    let statuses: Vec<String> = stream
        .until_final(10)
        .await
        .iter()
        .map(|e| e.data["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["queued", "running", "succeeded"]);
    // Long enough for a wrongly published event to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), redis_rx.recv())
            .await
            .is_err(),
        "nothing was published on the Redis channel"
    );
    daemon.stop().await;
    redis_rx.close().await;
}

/// `jobrunner cancel` is a status change like any other: followers of the job
/// hear `cancelled` on the event channels without a daemon in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_job_publishes_a_cancelled_event() {
    let app = spawn_app().await;
    let mut redis_rx = subscribe_events(&app).await;
    let (code, out, err) = app.cli(&["enqueue", "noop", "--delay", "1h"]);
    assert_eq!(code, 0, "{err}");
    let id: Uuid = out.trim().parse().unwrap();

    let (code, _, err) = app.cli(&["cancel", &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    let event = loop {
        let e: Event = serde_json::from_str(&next_text(&mut redis_rx).await).unwrap();
        if e.id == id {
            break e;
        }
    };
    assert_eq!(event.status, Status::Cancelled);
    assert_eq!(event.kind, "noop");
    assert_eq!(event.queue, "default");
    assert_eq!(event.error.as_deref(), Some("cancelled by request"));
    redis_rx.close().await;
}

/// A subscription to the job events channel.
async fn subscribe_events(app: &TestApp) -> Subscription {
    let subscription = app.broker.subscription().await.unwrap();
    subscription
        .subscribe(vec![app.broker.events_channel()])
        .await
        .unwrap();
    subscription
}

/// The text of the next message on `subscription`, within five seconds.
async fn next_text(subscription: &mut Subscription) -> String {
    match tokio::time::timeout(Duration::from_secs(5), subscription.recv())
        .await
        .expect("a Redis event")
    {
        Received::Message { text, .. } => text,
        other => panic!("expected a message, got {other:?}"),
    }
}
