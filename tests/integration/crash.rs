//! Promise 1 and 2 under failure: daemons killed, paused, drained; Redis wiped.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobrunner::broker::RedisEnqueue;
use jobrunner::jobs::{JobContext, JobResult};
use serde_json::json;

use crate::helpers::spawn_app;
use jobrunner::ledger::Status;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_daemon_is_sigkilled_mid_run_is_rerun_by_another_daemon() {
    let app = spawn_app().await; // lease 2s
    let mut first = app.spawn_daemon(&app.config);
    let id = app.enqueue("sleep", json!({"ms": 1500})).await;
    app.wait_until(id, 15, "running", |j| j.status == Status::Running)
        .await;
    first.signal("KILL");
    first.wait_exit(5).expect("SIGKILL ends the daemon");

    let second = app.spawn_daemon(&app.config);
    let job = app.wait_final(id, 20).await;
    assert_eq!(job.status, Status::Succeeded, "{}", second.log_text());
    assert_eq!(
        job.attempts, 2,
        "the killed attempt counts, the re-run succeeds"
    );
    assert_eq!(job.result, Some(json!({"slept_ms": 1500, "attempt": 2})));
    assert!(
        job.last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("lease expired"),
        "{job:?}"
    );
    // Nothing of it is left in Redis, and nothing runs it again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.broker.depth("default").await.unwrap(), (0, 0, 0, 0));
    assert_eq!(app.ledger.job(id).await.unwrap().attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_jobs_finish_and_exits_zero() {
    let app = spawn_app().await; // drain_timeout 5s
    let mut daemon = app.spawn_daemon(&app.config);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.enqueue("sleep", json!({"ms": 800})).await);
    }
    for id in &ids {
        app.wait_until(*id, 15, "running", |j| j.status == Status::Running)
            .await;
    }
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(10)
        .expect("the daemon exits after draining");
    assert!(status.success(), "exit status {status:?}");
    for id in ids {
        let job = app.ledger.job(id).await.unwrap();
        assert_eq!(
            (job.status.as_str(), job.attempts),
            ("succeeded", 1),
            "{job:?}"
        );
    }
    assert!(daemon.log_text().contains("Draining"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_still_running_at_the_drain_deadline_is_handed_back_without_losing_an_attempt() {
    let mut app = spawn_app().await;
    app.config.runtime.lease = Duration::from_secs(60);
    app.config.runtime.drain_timeout = Duration::from_millis(300);
    let mut daemon = app.spawn_daemon(&app.config);
    let id = app.enqueue("sleep", json!({"ms": 1500})).await;
    app.wait_until(id, 15, "running", |j| j.status == Status::Running)
        .await;
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(5)
        .expect("the daemon exits at the drain deadline");
    assert!(status.success(), "exit status {status:?}");
    let job = app
        .wait_until(id, 5, "queued", |j| j.status == Status::Queued)
        .await;
    assert_eq!(job.attempts, 0, "a handed-back attempt does not count");

    // Handed back, not left to a 60s lease: the next daemon runs it at once.
    let started = tokio::time::Instant::now();
    let _next = app.spawn_daemon(&app.config);
    let job = app.wait_final(id, 20).await;
    assert_eq!((job.status.as_str(), job.attempts), ("succeeded", 1));
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_exits_at_once_without_draining() {
    let mut app = spawn_app().await;
    app.config.runtime.drain_timeout = Duration::from_secs(60);
    let mut daemon = app.spawn_daemon(&app.config);
    let id = app.enqueue("sleep", json!({"ms": 30_000})).await;
    app.wait_until(id, 15, "running", |j| j.status == Status::Running)
        .await;
    daemon.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(daemon.wait_exit(0).is_none(), "the first signal drains");
    daemon.signal("INT");
    let status = daemon
        .wait_exit(5)
        .expect("the second signal exits at once");
    assert_eq!(status.code(), Some(130), "{}", daemon.log_text());
    assert!(daemon.log_text().contains("Second stop signal"));
}

/// Records which jobs are running right now across every daemon in this process,
/// and any job seen running twice at once.
#[derive(Default)]
struct Overlap {
    running: Mutex<HashSet<uuid::Uuid>>,
    runs: Mutex<Vec<uuid::Uuid>>,
    violations: Mutex<Vec<uuid::Uuid>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_queue_never_run_the_same_job_at_once() {
    let app = spawn_app().await;
    let overlap = Arc::new(Overlap::default());
    let registry = || {
        let overlap = overlap.clone();
        let mut registry = jobrunner_kinds::registry(&app.config);
        registry.register("track", move |ctx: JobContext| {
            let overlap = overlap.clone();
            async move {
                if !overlap.running.lock().unwrap().insert(ctx.id) {
                    overlap.violations.lock().unwrap().push(ctx.id);
                }
                overlap.runs.lock().unwrap().push(ctx.id);
                tokio::time::sleep(Duration::from_millis(2)).await;
                overlap.running.lock().unwrap().remove(&ctx.id);
                JobResult::Ok(json!({}))
            }
        });
        registry
    };
    let a = app.start_daemon_with(app.config.clone(), registry()).await;
    let b = app.start_daemon_with(app.config.clone(), registry()).await;
    let mut ids = Vec::new();
    for i in 0..300 {
        let id = if i % 2 == 0 {
            app.enqueue("track", json!({ "i": i })).await
        } else {
            app.broker
                .enqueue(&RedisEnqueue {
                    queue: "default".into(),
                    kind: "track".into(),
                    payload: json!({ "i": i }).to_string(),
                    ..Default::default()
                })
                .await
                .unwrap()
        };
        ids.push(id);
    }
    for id in &ids {
        assert_eq!(app.wait_final(*id, 30).await.status, Status::Succeeded);
    }
    a.stop().await;
    b.stop().await;
    assert!(overlap.violations.lock().unwrap().is_empty());
    let runs = overlap.runs.lock().unwrap();
    let distinct: HashSet<_> = runs.iter().collect();
    assert_eq!(runs.len(), 300, "each job ran exactly once");
    assert_eq!(distinct.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_workers_late_outcome_is_rejected_by_the_fencing_token() {
    let mut app = spawn_app().await;
    app.config.runtime.lease = Duration::from_secs(1);
    let stale = app.spawn_daemon(&app.config);
    let id = app.enqueue("sleep", json!({"ms": 2500})).await;
    app.wait_until(id, 15, "running", |j| j.status == Status::Running)
        .await;
    stale.signal("STOP"); // a paused process: no heartbeats, lease expires

    let fresh = app.spawn_daemon(&app.config);
    app.wait_until(id, 15, "running attempt 2", |j| {
        j.status == Status::Running && j.attempts == 2
    })
    .await;
    stale.signal("CONT"); // its sleep is over: it tries to settle attempt 1
    tokio::time::sleep(Duration::from_millis(800)).await;
    let job = app.ledger.job(id).await.unwrap();
    assert_eq!(
        (job.status.as_str(), job.attempts),
        ("running", 2),
        "the stale attempt must not settle the job: {job:?}\n{}",
        stale.log_text()
    );
    let job = app.wait_final(id, 15).await;
    assert_eq!(job.status, Status::Succeeded);
    assert_eq!(job.result, Some(json!({"slept_ms": 2500, "attempt": 2})));
    assert!(
        stale.log_text().contains("outcome dropped"),
        "the stale daemon says it dropped its outcome:\n{}",
        stale.log_text()
    );
    drop(fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lease_cannot_ack_retry_or_heartbeat_after_it_was_reaped() {
    let app = spawn_app().await;
    app.enqueue("noop", json!({})).await;
    // No daemon: drive the broker by hand, dispatching through the outbox.
    let mut batch = app.ledger.outbox(10).await.unwrap();
    let job = batch.jobs.remove(0);
    let dispatch = jobrunner::broker::Dispatch {
        id: job.id,
        kind: &job.kind,
        payload: &job.payload,
        priority: job.priority,
        attempts: job.attempts,
        max_attempts: job.max_attempts,
        run_ms: job.run_ms.expect("an ordinary run_at"),
        revive: false,
    };
    assert_eq!(
        app.broker.dispatch("default", &[dispatch]).await.unwrap(),
        1
    );

    let first = app
        .broker
        .fetch("default", 10, Duration::from_millis(100))
        .await
        .unwrap();
    let stale = first.jobs[0].clone();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let reaped = app
        .broker
        .reap("default", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(
        (reaped[0].id, reaped[0].token, reaped[0].dead),
        (stale.id, stale.token, false)
    );

    let second = app
        .broker
        .fetch("default", 10, Duration::from_secs(30))
        .await
        .unwrap();
    let current = second.jobs[0].clone();
    assert_eq!(current.id, stale.id);
    assert!(
        current.token > stale.token,
        "tokens grow: {} then {}",
        stale.token,
        current.token
    );
    assert_eq!(current.attempt, 2);

    assert!(
        !app.broker
            .heartbeat(&stale, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(!app.broker.complete(&stale).await.unwrap());
    assert!(!app.broker.retry(&stale, Duration::ZERO).await.unwrap());
    assert!(!app.broker.release(&stale).await.unwrap());
    assert!(
        app.broker
            .heartbeat(&current, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(app.broker.complete(&current).await.unwrap());
    assert!(
        !app.broker.complete(&current).await.unwrap(),
        "a second ack is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_queued_when_redis_restarts_empty_all_still_run() {
    let mut app = spawn_app().await;
    app.config.queues.insert(
        "default".into(),
        jobrunner::config::QueueConfig {
            concurrency: 2,
            ..Default::default()
        },
    );
    let daemon = app.start_daemon().await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(app.enqueue("sleep", json!({"ms": 100})).await);
    }
    // Wait until some ran and many still wait in Redis.
    app.wait_final(ids[2], 15).await;
    let (ready, ..) = app.broker.depth("default").await.unwrap();
    assert!(ready > 10, "most jobs are still queued in Redis ({ready})");

    app.redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.redis.start_again();

    for id in &ids {
        let job = app.wait_final(*id, 45).await;
        assert_eq!(job.status, Status::Succeeded, "{job:?}");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_pending_when_a_daemon_starts_on_a_fresh_redis_run_exactly_once() {
    let app = spawn_app().await;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let mut registry = jobrunner_kinds::registry(&app.config);
    let seen = runs.clone();
    registry.register("count", move |ctx: JobContext| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(ctx.id);
            JobResult::Ok(json!({}))
        }
    });
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(app.enqueue("count", json!({ "i": i })).await);
    }
    // The Redis is new: the daemon finds no epoch marker and must re-dispatch the
    // pending jobs without running any of them twice.
    let daemon = app.start_daemon_with(app.config.clone(), registry).await;
    for id in &ids {
        assert_eq!(app.wait_final(*id, 20).await.status, Status::Succeeded);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.stop().await;
    let runs = runs.lock().unwrap();
    let distinct: HashSet<_> = runs.iter().collect();
    assert_eq!(
        (runs.len(), distinct.len()),
        (100, 100),
        "each job ran once"
    );
}

/// Every task a daemon spawns is tracked and ends before `Daemon::wait`
/// returns: the runtime holds as many live tasks after the drain as before the
/// start, with jobs finished, running into the drain and waiting in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_daemon_leaves_no_task_behind() {
    let app = spawn_app().await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    // The app's pools may still be opening connections (a task each, gone once
    // connected): count only once the number has held for 200 ms.
    let mut before = tasks();
    let mut steady = 0;
    for _ in 0..250 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = tasks();
        steady = if now == before { steady + 1 } else { 0 };
        before = now;
        if steady == 10 {
            break;
        }
    }
    let daemon = jobrunner::runtime::Daemon::start_with(
        app.config.clone(),
        jobrunner_kinds::registry(&app.config),
        app.ledger.clone(),
        app.broker.clone(),
    );
    let done = app.enqueue("noop", json!({})).await;
    assert_eq!(app.wait_final(done, 15).await.status, Status::Succeeded);
    let running = app.enqueue("sleep", json!({"ms": 500})).await;
    app.wait_until(running, 15, "running", |j| j.status == Status::Running)
        .await;
    for _ in 0..20 {
        app.enqueue("sleep", json!({"ms": 200})).await;
    }
    let during = tasks();
    assert!(
        during > before + 5,
        "a running daemon has its loops: {before} tasks before, {during} during"
    );
    daemon.stop().await;
    // A task that returned may be counted until the runtime has reaped it.
    let mut after = tasks();
    for _ in 0..50 {
        if after <= before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = tasks();
    }
    assert_eq!(
        after, before,
        "tasks alive after Daemon::wait returned ({before} before the start)"
    );
}
