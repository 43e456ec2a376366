//! Flow control across daemon processes sharing one Redis and one database: a
//! kind's concurrency limit, rate limits, unique keys, cancellation, pause and
//! resume, and `on_timeout = "dead"`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jobrunner::config::{HandlerName, KindConfig, OnTimeout, QueueConfig, RateLimit};
use jobrunner::ledger::{Job, Ledger, NewJob};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, sh_command, spawn_app};
use jobrunner::ledger::Status;

/// The most intervals that overlap at any instant.
fn max_overlap(intervals: &[(i128, i128)]) -> usize {
    intervals
        .iter()
        .map(|(start, _)| {
            intervals
                .iter()
                .filter(|(s, f)| s <= start && start < f)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// The most of `times` that fall in any window `[t, t + window)`.
fn max_in_window(times: &[DateTime<Utc>], window: Duration) -> usize {
    let window = chrono::Duration::from_std(window).unwrap();
    times
        .iter()
        .map(|t| {
            times
                .iter()
                .filter(|u| *u >= t && **u < *t + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

async fn wait_all(app: &TestApp, ids: &[Uuid], secs: u64) -> Vec<Job> {
    let mut jobs = Vec::new();
    for id in ids {
        jobs.push(app.wait_final(*id, secs).await);
    }
    jobs
}

async fn enqueue_many(app: &TestApp, kind: &str, payloads: Vec<serde_json::Value>) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for payload in payloads {
        ids.push(app.enqueue(kind, payload).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_concurrency_limit_holds_across_three_daemons_and_every_job_finishes() {
    let mut app = spawn_app().await;
    // Each attempt appends its own start and end (ns) from inside the handler,
    // which runs strictly within the lease: its overlap bounds the leases' from below.
    let log = app.dir.path().join("spans.log");
    let script = format!(
        "s=$(date +%s%N); sleep 0.15; e=$(date +%s%N); echo \"$s $e\" >> {}",
        log.display()
    );
    let kind = KindConfig {
        concurrency: Some(2),
        handler: Some(HandlerName::Command),
        command: Some(sh_command(&script)),
        ..KindConfig::default()
    };
    app.config.kinds.insert("slow".into(), kind);
    let daemons: Vec<_> = (0..3).map(|_| app.spawn_daemon(&app.config)).collect();
    let ids = enqueue_many(&app, "slow", vec![json!({}); 12]).await;
    for job in wait_all(&app, &ids, 30).await {
        assert_eq!(
            (job.status.as_str(), job.attempts),
            ("succeeded", 1),
            "{job:?}"
        );
    }
    let spans: Vec<(i128, i128)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let (s, e) = l.split_once(' ').unwrap();
            (s.parse().unwrap(), e.parse().unwrap())
        })
        .collect();
    assert_eq!(spans.len(), 12);
    // Without the limit, 3 daemons with 8 slots each would run all 12 at once.
    let overlap = max_overlap(&spans);
    assert!(overlap <= 2, "{overlap} jobs of the kind ran at once");
    // Nothing is left counted against the kind, and nothing is parked.
    let mut redis = app.broker.depth("default").await.unwrap();
    for _ in 0..20 {
        if redis == (0, 0, 0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        redis = app.broker.depth("default").await.unwrap();
    }
    assert_eq!(redis, (0, 0, 0, 0));
    drop(daemons);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_rate_limit_spaces_one_contacts_jobs_without_burning_attempts() {
    let mut app = spawn_app().await;
    let kind = KindConfig {
        rate_limit: Some(RateLimit {
            limit: 3,
            period: Duration::from_secs(1),
            key: Some("/contact/id".into()),
        }),
        ..KindConfig::default()
    };
    app.config.kinds.insert("noop".into(), kind);
    let _daemons: Vec<_> = (0..2).map(|_| app.spawn_daemon(&app.config)).collect();
    let a = enqueue_many(&app, "noop", vec![json!({"contact": {"id": "a"}}); 9]).await;
    let b = enqueue_many(&app, "noop", vec![json!({"contact": {"id": "b"}}); 3]).await;
    let a_jobs = wait_all(&app, &a, 30).await;
    let b_jobs = wait_all(&app, &b, 30).await;
    for job in a_jobs.iter().chain(&b_jobs) {
        assert_eq!(
            (job.status.as_str(), job.attempts),
            ("succeeded", 1),
            "{job:?}"
        );
    }
    let mut starts: Vec<DateTime<Utc>> = a_jobs.iter().map(|j| j.started_at.unwrap()).collect();
    starts.sort();
    // 3 per second: bursts one period apart. The limit is exact on Redis's lease
    // times; start times lag a lease by a few ms, so count in a slightly shorter
    // window than the period.
    let most = max_in_window(&starts, Duration::from_millis(800));
    assert!(
        most <= 3,
        "{most} of one contact's jobs started within 800ms: {starts:?}"
    );
    let span = starts[8] - starts[0];
    assert!(
        span >= chrono::Duration::milliseconds(1900),
        "9 jobs at 3/s took only {span}"
    );
    // The other contact has its own window: not held up behind the first.
    let b_last = b_jobs.iter().map(|j| j.started_at.unwrap()).max().unwrap();
    assert!(
        b_last < starts[3],
        "contact b waited for contact a's window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_rate_limit_holds_across_two_daemons() {
    let mut app = spawn_app().await;
    app.config.queues.insert(
        "default".into(),
        QueueConfig {
            concurrency: 8,
            rate_limit: Some(RateLimit {
                limit: 2,
                period: Duration::from_millis(500),
                key: None,
            }),
        },
    );
    let _daemons: Vec<_> = (0..2).map(|_| app.spawn_daemon(&app.config)).collect();
    let ids = enqueue_many(&app, "noop", vec![json!({}); 6]).await;
    let jobs = wait_all(&app, &ids, 30).await;
    for job in &jobs {
        assert_eq!(
            (job.status.as_str(), job.attempts),
            ("succeeded", 1),
            "{job:?}"
        );
    }
    let mut starts: Vec<_> = jobs.iter().map(|j| j.started_at.unwrap()).collect();
    starts.sort();
    let most = max_in_window(&starts, Duration::from_millis(400));
    assert!(most <= 2, "{most} jobs started within 400ms: {starts:?}");
    assert!(starts[5] - starts[0] >= chrono::Duration::milliseconds(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_with_one_unique_key_make_one_job_until_it_finishes() {
    let app = spawn_app().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(app.config.database.url.expose())
        .await
        .unwrap();
    let ledger = Ledger::from_pool(pool);
    let job = NewJob {
        kind: "noop".into(),
        payload: json!({"n": 1}),
        unique_key: Some("report:42".into()),
        ..NewJob::default()
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (ledger, job) = (ledger.clone(), job.clone());
        tasks.spawn(async move { ledger.enqueue(&job).await.unwrap() });
    }
    let ids: std::collections::HashSet<Uuid> = tasks.join_all().await.into_iter().collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let first = *ids.iter().next().unwrap();
    assert_eq!(app.count_jobs().await, 1);
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM jobrunner.outbox")
        .fetch_one(app.ledger.pool())
        .await
        .unwrap();
    assert_eq!(outbox, 1);

    let daemon = app.start_daemon().await;
    assert_eq!(app.wait_final(first, 10).await.status, Status::Succeeded);
    let again = ledger.enqueue(&job).await.unwrap();
    assert_ne!(again, first, "a finished job no longer holds its key");
    assert_eq!(app.wait_final(again, 10).await.status, Status::Succeeded);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinds_unique_key_template_renders_payload_fields() {
    let mut app = spawn_app().await;
    app.config.kinds.insert(
        "noop".into(),
        KindConfig {
            unique_key: Some("contact:{from}".into()),
            ..KindConfig::default()
        },
    );
    app.ledger.sync_kinds(&app.config).await.unwrap();
    let one = app
        .enqueue("noop", json!({"from": "31612345678", "n": 1}))
        .await;
    let two = app
        .enqueue("noop", json!({"from": "31612345678", "n": 2}))
        .await;
    let other = app.enqueue("noop", json!({"from": "4477"})).await;
    assert_eq!(one, two);
    assert_ne!(one, other);
    let job = app.ledger.job(one).await.unwrap();
    assert_eq!(job.unique_key.as_deref(), Some("contact:31612345678"));
    assert_eq!(job.payload, json!({"from": "31612345678", "n": 1}));
    // Without the field there is no key: such jobs are never merged.
    let x = app.enqueue("noop", json!({"n": 3})).await;
    let y = app.enqueue("noop", json!({"n": 3})).await;
    assert_ne!(x, y);
    assert_eq!(app.ledger.job(x).await.unwrap().unique_key, None);
    assert_eq!(app.count_jobs().await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_enqueues_with_a_unique_key_only_through_sql() {
    let app = spawn_app().await;
    let (code, first, err) = app.cli(&["enqueue", "noop", "--unique-key", "k1"]);
    assert_eq!(code, 0, "{err}");
    let (_, second, _) = app.cli(&["enqueue", "noop", "--unique-key", "k1"]);
    assert_eq!(first, second);
    let (code, _, err) = app.cli(&["enqueue", "noop", "--unique-key", "k1", "--via", "redis"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--unique-key works only with --via sql"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_delayed_job_removes_it_from_redis_and_a_second_cancel_fails() {
    let app = spawn_app().await;
    let _daemons: Vec<_> = (0..2).map(|_| app.spawn_daemon(&app.config)).collect();
    let id = app
        .ledger
        .enqueue(&NewJob {
            kind: "noop".into(),
            payload: json!({}),
            run_at: Some(Utc::now() + chrono::Duration::seconds(60)),
            ..NewJob::default()
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.broker.depth("default").await.unwrap().1 != 1 {
        assert!(tokio::time::Instant::now() < deadline, "never dispatched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, out, err) = app.cli(&["cancel", &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("was scheduled; removed from its queue"),
        "{out}"
    );
    let job = app.ledger.job(id).await.unwrap();
    assert_eq!((job.status.as_str(), job.attempts), ("cancelled", 0));
    assert!(job.finished_at.is_some());
    assert_eq!(app.broker.depth("default").await.unwrap(), (0, 0, 0, 0));

    let (code, _, err) = app.cli(&["cancel", &id.to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("already cancelled"), "{err}");
    let (code, _, err) = app.cli(&["cancel", &Uuid::now_v7().to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_stops_its_handler_and_it_is_not_retried() {
    let app = spawn_app().await; // lease 2s: a missed signal would still be seen by a heartbeat
    let daemons: Vec<_> = (0..2).map(|_| app.spawn_daemon(&app.config)).collect();
    let id = app.enqueue("sleep", json!({"ms": 30_000})).await;
    app.wait_until(id, 15, "running", |j| j.status == Status::Running)
        .await;
    let (code, out, err) = app.cli(&["cancel", &id.to_string(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["redis"], "signalled", "{out}");
    assert_eq!(reply["previous_status"], "running", "{out}");
    // The handler returns early and its lease is given back, long before the 30s sleep.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while app.broker.depth("default").await.unwrap() != (0, 0, 0, 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cancelled job still holds its lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        daemons
            .iter()
            .any(|d| d.log_text().contains("Job ended cancelled")),
        "no daemon ended the attempt as cancelled"
    );
    // Past a lease and a reap: nobody ran it again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let job = app.ledger.job(id).await.unwrap();
    assert_eq!(
        (job.status.as_str(), job.attempts),
        ("cancelled", 1),
        "{job:?}"
    );
    assert_eq!(job.result, None);
    assert_eq!(app.broker.depth("default").await.unwrap(), (0, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_starts_nothing_new_on_any_daemon_until_resumed() {
    let app = spawn_app().await;
    let _daemons: Vec<_> = (0..2).map(|_| app.spawn_daemon(&app.config)).collect();
    let running = app.enqueue("sleep", json!({"ms": 1000})).await;
    app.wait_until(running, 15, "running", |j| j.status == Status::Running)
        .await;
    let (code, out, err) = app.cli(&["pause", "default"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Paused queue default"), "{out}");
    assert!(app.broker.paused("default").await.unwrap());
    let waiting = enqueue_many(&app, "noop", vec![json!({}); 4]).await;
    // The running job finishes while the queue is paused.
    let job = app.wait_final(running, 10).await;
    assert_eq!(job.status, Status::Succeeded);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for id in &waiting {
        let job = app.ledger.job(*id).await.unwrap();
        assert_eq!(
            (job.status.as_str(), job.attempts),
            ("queued", 0),
            "{job:?}"
        );
    }
    let (code, out, err) = app.cli(&["resume", "default", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""was_paused":true"#), "{out}");
    for job in wait_all(&app, &waiting, 10).await {
        assert_eq!((job.status.as_str(), job.attempts), ("succeeded", 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_survives_redis_losing_its_data() {
    let mut app = spawn_app().await;
    let (code, _, err) = app.cli(&["pause", "default"]);
    assert_eq!(code, 0, "{err}");
    app.redis.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.redis.start_again();
    let daemon = app.spawn_daemon(&app.config);
    let id = app.enqueue("noop", json!({})).await;
    // The daemon saw an empty Redis, restored the pause, then dispatched the job.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.broker.depth("default").await.map(|d| d.0).unwrap_or(0) != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dispatched: {}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(app.broker.paused("default").await.unwrap());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app.ledger.job(id).await.unwrap().status, Status::Queued);
    let (code, _, err) = app.cli(&["resume", "default"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(app.wait_final(id, 10).await.status, Status::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_with_on_timeout_dead_is_dead_after_one_timeout() {
    let mut app = spawn_app().await;
    let kind = KindConfig {
        max_attempts: 3,
        timeout: Duration::from_millis(300),
        on_timeout: OnTimeout::Dead,
        ..KindConfig::default()
    };
    app.config.kinds.insert("sleep".into(), kind);
    let daemon = app.start_daemon().await;
    let id = app.enqueue("sleep", json!({"ms": 5000})).await;
    let job = app.wait_final(id, 10).await;
    assert_eq!((job.status.as_str(), job.attempts), ("dead", 1), "{job:?}");
    assert!(
        job.last_error
            .as_deref()
            .unwrap_or("")
            .contains("timed out"),
        "{job:?}"
    );
    daemon.stop().await;
}
