//! The daemon on a real Redis Cluster (three masters, three replicas, shared by
//! these tests): queues whose slots lie on different masters, both ways in, and
//! the flow controls, held across two daemons.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use jobrunner::broker::RedisEnqueue;
use jobrunner::config::{KindConfig, QueueConfig};
use jobrunner::jobs::{JobContext, JobResult, Registry};
use jobrunner::ledger::{NewJob, Status};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app_on};
use crate::topology::{cli, shared_cluster};

/// A test app on the shared cluster serving one queue per master.
async fn app_on_cluster(concurrency: usize) -> (TestApp, Vec<String>) {
    let cluster = shared_cluster();
    let queues = cluster.queue_per_master("q");
    let mut app = spawn_app_on(Some(cluster.url())).await;
    app.config.queues.clear();
    for q in &queues {
        app.config.queues.insert(
            q.clone(),
            QueueConfig {
                concurrency,
                ..QueueConfig::default()
            },
        );
    }
    (app, queues)
}

pub async fn sql_job(app: &TestApp, queue: &str, kind: &str, i: usize) -> Uuid {
    let job = NewJob {
        kind: kind.into(),
        payload: json!({ "i": i }),
        queue: Some(queue.into()),
        ..NewJob::default()
    };
    app.ledger.enqueue(&job).await.expect("SQL enqueue")
}

pub async fn redis_job(app: &TestApp, queue: &str, kind: &str, i: usize) -> Uuid {
    let job = RedisEnqueue {
        queue: queue.into(),
        kind: kind.into(),
        payload: json!({ "i": i }).to_string(),
        ..RedisEnqueue::default()
    };
    app.broker.enqueue(&job).await.expect("Redis enqueue")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_redis_enqueued_jobs_of_queues_on_every_master_succeed() {
    let (app, queues) = app_on_cluster(8).await;
    let masters: std::collections::HashSet<u16> = queues
        .iter()
        .map(|q| shared_cluster().master_of(q))
        .collect();
    assert_eq!(masters.len(), 3, "one queue per master: {queues:?}");
    let daemon = app.start_daemon().await;
    let mut ids = Vec::new();
    for q in &queues {
        for i in 0..20 {
            ids.push(sql_job(&app, q, "noop", i).await);
            ids.push(redis_job(&app, q, "noop", i).await);
        }
    }
    for id in &ids {
        assert_eq!(app.wait_final(*id, 20).await.status, Status::Succeeded);
    }
    // The CLI reads every queue on its own master.
    let (code, out, err) = app.cli(&["queues"]);
    assert_eq!(code, 0, "{err}");
    for q in &queues {
        let row = out.lines().find(|l| l.starts_with(q.as_str()));
        assert!(row.is_some_and(|r| r.ends_with("ok")), "{q} in\n{out}");
    }
    let (code, out, _) = app.cli(&["config"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("# Redis: cluster, seed nodes 127.0.0.1:"),
        "{out}"
    );
    daemon.stop().await;

    // The benchmark's clean-up finds the prefix's keys on every master.
    let deleted = app.broker.delete_prefix().await.expect("delete prefix");
    assert!(deleted >= 3, "{deleted} keys deleted");
    let pattern = format!("{}:*", app.config.redis.key_prefix);
    for node in &shared_cluster().nodes {
        if !cli(node.port, &["role"]).starts_with("master") {
            continue;
        }
        let left = cli(node.port, &["--scan", "--pattern", &pattern]);
        assert_eq!(left, "", "keys left on {}", node.port);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_priorities_limits_cancel_and_pause_hold_across_two_daemons_on_a_cluster() {
    let (mut app, queues) = app_on_cluster(4).await;
    let (limited, paused, plain) = (&queues[0], &queues[1], &queues[2]);
    app.config.kinds.insert(
        "slow".into(),
        KindConfig {
            queue: limited.clone(),
            concurrency: Some(2),
            ..KindConfig::default()
        },
    );
    // Jobs of `slow` count how many run at once, across both daemons.
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let registry = || {
        let (running, most) = (running.clone(), most.clone());
        let mut registry = Registry::builtin(&app.config);
        registry.register("slow", move |_ctx: JobContext| {
            let (running, most) = (running.clone(), most.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                JobResult::Ok(json!({}))
            }
        });
        registry
    };
    app.ledger
        .sync_kinds(&app.config)
        .await
        .expect("sync kinds");
    let a = app.start_daemon_with(app.config.clone(), registry()).await;
    let b = app.start_daemon_with(app.config.clone(), registry()).await;

    // A kind's concurrency limit holds across the fleet.
    let mut slow = Vec::new();
    for i in 0..10 {
        slow.push(sql_job(&app, limited, "slow", i).await);
    }
    // A pause holds across the fleet.
    let (code, _, err) = app.cli(&["pause", paused]);
    assert_eq!(code, 0, "{err}");
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(sql_job(&app, paused, "noop", i).await);
    }
    // Priorities order the leases: on a queue no daemon serves, FETCH is called
    // here as a worker would.
    let mut by_priority = Vec::new();
    for priority in [0, 10, 5] {
        let job = NewJob {
            kind: "noop".into(),
            payload: json!({}),
            queue: Some("unserved".into()),
            priority,
            ..NewJob::default()
        };
        by_priority.push(app.ledger.enqueue(&job).await.expect("enqueue"));
    }
    // A delay, and a cancel of a job that waits for its time.
    let delayed = NewJob {
        kind: "noop".into(),
        payload: json!({}),
        queue: Some(plain.clone()),
        run_at: Some(Utc::now() + chrono::Duration::milliseconds(1500)),
        ..NewJob::default()
    };
    let enqueued_at = Utc::now();
    let delayed = app.ledger.enqueue(&delayed).await.expect("enqueue");
    let later = NewJob {
        run_at: Some(Utc::now() + chrono::Duration::hours(1)),
        kind: "noop".into(),
        payload: json!({}),
        queue: Some(plain.clone()),
        ..NewJob::default()
    };
    let cancelled = app.ledger.enqueue(&later).await.expect("enqueue");
    app.wait_until(cancelled, 10, "in Redis", |_| true).await;
    let (code, _, err) = app.cli(&["cancel", &cancelled.to_string()]);
    assert_eq!(code, 0, "{err}");

    for id in &slow {
        assert_eq!(app.wait_final(*id, 20).await.status, Status::Succeeded);
    }
    assert!(most.load(Ordering::SeqCst) <= 2, "{most:?} ran at once");
    let job = app.wait_final(delayed, 10).await;
    assert_eq!(job.status, Status::Succeeded);
    assert!(job.started_at.expect("started") >= enqueued_at + chrono::Duration::milliseconds(1400));
    assert_eq!(app.wait_final(cancelled, 5).await.status, Status::Cancelled);
    for id in &held {
        let job = app.ledger.job(*id).await.expect("read job");
        assert_eq!(job.status, Status::Queued, "paused: {job:?}");
    }
    let resumed_at = Utc::now();
    let (code, _, err) = app.cli(&["resume", paused]);
    assert_eq!(code, 0, "{err}");
    for id in &held {
        let job = app.wait_final(*id, 10).await;
        assert_eq!(job.status, Status::Succeeded);
        assert!(job.started_at.expect("started") >= resumed_at, "{job:?}");
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.broker.depth("unserved").await.expect("depth").0 < 3 {
        assert!(tokio::time::Instant::now() < deadline, "never dispatched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fetched = app
        .broker
        .fetch("unserved", 3, Duration::from_secs(30))
        .await
        .expect("fetch");
    let order: Vec<Uuid> = fetched.jobs.iter().map(|j| j.id).collect();
    assert_eq!(order, [by_priority[1], by_priority[2], by_priority[0]]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_reach_idle_queues_on_every_master() {
    // With polling all but off, a job reaches an idle queue's fetch (SQL path)
    // or ingest (Redis path) loop only through the wake-up published on the
    // cluster, from whichever master holds the queue.
    let (mut app, queues) = app_on_cluster(4).await;
    let poll = Duration::from_secs(60);
    app.config.runtime.poll_interval = poll;
    let daemon = app.start_daemon().await;
    // Every loop has found its queue empty and sleeps.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for round in 0..2 {
        for q in &queues {
            let started = std::time::Instant::now();
            let id = if round == 0 {
                sql_job(&app, q, "noop", 0).await
            } else {
                redis_job(&app, q, "noop", 0).await
            };
            assert_eq!(app.wait_final(id, 20).await.status, Status::Succeeded);
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(10),
                "queue {q}: the job waited {took:?}, as if for the {poll:?} poll"
            );
            // Idle again before the next queue's job.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    daemon.stop().await;
}
