//! One queue's trouble stays that queue's: on a single Redis, a queue whose keys
//! the daemon may not touch (an ACL user without them, as a misconfigured
//! managed Redis would give) holds up no other queue's jobs, and shows in
//! `/metrics` and `jobrunner queues`.

use std::time::{Duration, Instant};

use jobrunner::config::QueueConfig;
use jobrunner::ledger::{NewJob, Status};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};
use crate::topology::cli;

/// Enqueues `n` `noop` jobs on `queue` through SQL.
async fn enqueue_on(app: &TestApp, queue: &str, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let job = NewJob {
            kind: "noop".into(),
            payload: json!({ "i": i }),
            queue: Some(queue.into()),
            ..NewJob::default()
        };
        ids.push(app.ledger.enqueue(&job).await.expect("enqueue"));
    }
    ids
}

/// The value of one series in a Prometheus text page, if it is there.
fn series(page: &str, name_and_labels: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_whose_redis_keys_are_refused_holds_up_no_other_queue() {
    let mut app = spawn_app().await;
    let prefix = app.config.redis.key_prefix.clone();
    let port = app.redis.port();
    // A Redis user that may touch every key of the daemon but those of `stuck`.
    let acl = cli(
        port,
        &[
            "acl",
            "setuser",
            "jobs",
            "on",
            ">secret",
            &format!("~{prefix}:{{fine}}:*"),
            &format!("~{prefix}:workers"),
            "&*",
            "+@all",
        ],
    );
    assert_eq!(acl, "OK");
    app.config.redis.url = format!("redis://jobs:secret@127.0.0.1:{port}/0").into();
    for queue in ["stuck", "fine"] {
        app.config.queues.insert(
            queue.into(),
            QueueConfig {
                concurrency: 4,
                ..QueueConfig::default()
            },
        );
    }
    let daemon = app.start_daemon().await;

    // The stuck queue's jobs go first, so they head every outbox batch.
    let stuck = enqueue_on(&app, "stuck", 50).await;
    let started = Instant::now();
    let fine = enqueue_on(&app, "fine", 20).await;
    for id in &fine {
        assert_eq!(app.wait_final(*id, 10).await.status, Status::Succeeded);
    }
    let took = started.elapsed();
    println!("20 jobs of the healthy queue succeeded {took:?} after the first enqueue");
    assert!(
        took < Duration::from_secs(3),
        "the healthy queue waited {took:?} behind the stuck one"
    );
    let waiting = app.ledger.job(stuck[0]).await.expect("read job");
    assert_eq!(waiting.status, Status::Queued, "{waiting:?}");

    // Ops see which queue is in trouble.
    let addr = daemon.admin_addr().expect("the admin listener is on");
    let page = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let errors = series(
        &page,
        r#"jobrunner_redis_errors_total{queue="stuck",path="dispatch"}"#,
    );
    assert!(errors.is_some_and(|n| n >= 1.0), "{page}");
    assert_eq!(
        series(&page, r#"jobrunner_queue_redis_up{queue="stuck"}"#),
        Some(0.0)
    );
    assert_eq!(
        series(&page, r#"jobrunner_queue_redis_up{queue="fine"}"#),
        Some(1.0)
    );
    assert_eq!(
        series(
            &page,
            r#"jobrunner_redis_errors_total{queue="fine",path="dispatch"}"#
        ),
        None
    );
    let (code, out, err) = app.cli(&["queues"]);
    assert_eq!(code, 0, "{err}");
    let row = |queue: &str| {
        out.lines()
            .find(|l| l.starts_with(queue))
            .unwrap_or_else(|| panic!("no row for {queue} in\n{out}"))
            .to_owned()
    };
    assert!(row("stuck").contains("error: "), "{out}");
    assert!(row("stuck").contains("NOPERM"), "{out}");
    assert!(row("fine").ends_with("ok"), "{out}");

    // Once the user may touch the queue's keys, its jobs run without a restart.
    let grant = cli(
        port,
        &["acl", "setuser", "jobs", &format!("~{prefix}:{{stuck}}:*")],
    );
    assert_eq!(grant, "OK");
    for id in &stuck {
        assert_eq!(app.wait_final(*id, 20).await.status, Status::Succeeded);
    }
    daemon.stop().await;
}
