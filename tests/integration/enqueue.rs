//! The three ways in (SQL, Redis-direct, CLI) each reach `succeeded`.

use std::time::Duration;

use jobrunner::broker::RedisEnqueue;
use serde_json::json;

use crate::helpers::spawn_app;
use jobrunner::ledger::Status;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_in_a_committed_sql_transaction_runs_and_echoes_its_payload() {
    let mut app = spawn_app().await;
    // A long sweep: only the NOTIFY from jobrunner.enqueue can wake the dispatcher in time.
    app.config.runtime.sweep_interval = Duration::from_secs(30);
    let daemon = app.start_daemon().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut tx = app.ledger.pool().begin().await.unwrap();
    let id: uuid::Uuid =
        sqlx::query_scalar("SELECT jobrunner.enqueue('noop', '{\"order\": 42}'::jsonb)")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    let committed = tokio::time::Instant::now();

    let job = app
        .wait_until(id, 10, "succeeded", |j| j.status == Status::Succeeded)
        .await;
    assert!(
        committed.elapsed() < Duration::from_secs(1),
        "a committed enqueue must be picked up within a second, took {:?}",
        committed.elapsed()
    );
    assert_eq!(job.result, Some(json!({"order": 42})));
    assert_eq!(job.attempts, 1);
    assert_eq!(job.queue, "default");
    assert!(job.started_at.is_some() && job.finished_at.is_some());
    assert!(job.finished_at >= job.started_at);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_sql_enqueue_runs_nothing() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;

    let mut tx = app.ledger.pool().begin().await.unwrap();
    let ghost: uuid::Uuid = sqlx::query_scalar("SELECT jobrunner.enqueue('noop', '{}'::jsonb)")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    // A job enqueued after the rollback finishing proves the dispatcher has looked.
    let marker = app.enqueue("noop", json!({"marker": true})).await;
    app.wait_final(marker, 10).await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    assert_eq!(app.count_jobs().await, 1, "only the marker job exists");
    assert!(app.ledger.job(ghost).await.is_err());
    let (ready, delayed, leased, ingest) = app.broker.depth("default").await.unwrap();
    assert_eq!((ready, delayed, leased, ingest), (0, 0, 0, 0));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_enqueue_uses_the_kinds_configured_queue_and_attempts() {
    let mut app = spawn_app().await;
    app.config.kinds.insert(
        "noop".into(),
        jobrunner::config::KindConfig {
            queue: "mail".into(),
            max_attempts: 7,
            ..Default::default()
        },
    );
    app.config.queues.insert("mail".into(), Default::default());
    let daemon = app.start_daemon().await; // syncs the kind defaults into the ledger
    let id = app.enqueue("noop", json!({})).await;
    let job = app.wait_final(id, 10).await;
    assert_eq!(job.queue, "mail");
    assert_eq!(job.max_attempts, 7);
    assert_eq!(job.status, Status::Succeeded);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_direct_job_gets_a_ledger_row_and_succeeds() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let id = app
        .broker
        .enqueue(&RedisEnqueue {
            queue: "default".into(),
            kind: "noop".into(),
            payload: r#"{"from":"redis"}"#.into(),
            priority: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    let job = app.wait_final(id, 10).await;
    assert_eq!(job.status, Status::Succeeded);
    assert_eq!(job.result, Some(json!({"from": "redis"})));
    assert_eq!(job.priority, 5);
    assert_eq!(
        job.max_attempts, 25,
        "the kind default fills in max_attempts 0"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_enqueue_script_rejects_bad_input_with_a_clear_error() {
    let app = spawn_app().await;
    let enqueue = |kind: &str, payload: &str, priority: i32| RedisEnqueue {
        queue: "default".into(),
        kind: kind.into(),
        payload: payload.into(),
        priority,
        ..Default::default()
    };
    let err = app
        .broker
        .enqueue(&enqueue("noop", "{not json", 0))
        .await
        .unwrap_err();
    assert!(
        jobrunner::error_chain(&err).contains("payload is not valid JSON"),
        "{err:?}"
    );
    let err = app
        .broker
        .enqueue(&enqueue("bad kind!", "{}", 0))
        .await
        .unwrap_err();
    assert!(
        jobrunner::error_chain(&err).contains("kind must be"),
        "{err:?}"
    );
    let err = app
        .broker
        .enqueue(&enqueue("noop", "{}", 5000))
        .await
        .unwrap_err();
    assert!(jobrunner::error_chain(&err).contains("priority"), "{err:?}");
    assert_eq!(
        app.broker.depth("default").await.unwrap().3,
        0,
        "nothing was queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_waits_for_its_time_then_runs() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let run_at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let id = app
        .ledger
        .enqueue(&jobrunner::ledger::NewJob {
            kind: "noop".into(),
            payload: json!({}),
            run_at: Some(run_at),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(app.ledger.job(id).await.unwrap().status, Status::Scheduled);
    let job = app.wait_final(id, 10).await;
    assert_eq!(job.status, Status::Succeeded);
    let started = job.started_at.unwrap();
    assert!(
        started >= run_at,
        "started {started} before its run_at {run_at}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_jobs_run_first() {
    let mut app = spawn_app().await;
    app.config.queues.insert(
        "default".into(),
        jobrunner::config::QueueConfig {
            concurrency: 1,
            ..Default::default()
        },
    );
    app.config.runtime.fetch_batch = 1;
    let mut ids = Vec::new();
    for priority in [0, 10, -5, 3] {
        let id = app
            .ledger
            .enqueue(&jobrunner::ledger::NewJob {
                kind: "noop".into(),
                payload: json!({ "priority": priority }),
                priority,
                ..Default::default()
            })
            .await
            .unwrap();
        ids.push(id);
    }
    // Dispatch all four before any daemon fetches: start the daemon only after the
    // outbox is drained into Redis by a first daemon with no queues.
    let mut dispatcher_only = app.config.clone();
    dispatcher_only.queues.clear();
    let dispatcher = app
        .start_daemon_with(
            dispatcher_only.clone(),
            jobrunner_kinds::registry(&dispatcher_only),
        )
        .await;
    for _ in 0..100 {
        if app.broker.depth("default").await.unwrap().0 == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.broker.depth("default").await.unwrap().0, 4);
    let daemon = app.start_daemon().await;
    let mut order = Vec::new();
    for id in &ids {
        let job = app.wait_final(*id, 10).await;
        order.push((job.started_at.unwrap(), job.priority));
    }
    order.sort();
    let priorities: Vec<i32> = order.iter().map(|(_, p)| *p).collect();
    assert_eq!(priorities, vec![10, 3, 0, -5]);
    daemon.stop().await;
    dispatcher.stop().await;
}
