//! SIGHUP: a running daemon re-reads its config file, applies what it can and
//! keeps running when the new file is broken.

use std::time::Duration;

use jobrunner::config::QueueConfig;
use serde_json::json;

use crate::helpers::{TestApp, spawn_app};
use crate::systemd::{NotifySocket, spawn_with_env};
use jobrunner::ledger::Status;

async fn running(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobrunner.jobs WHERE status = 'running'")
        .fetch_one(app.ledger.pool())
        .await
        .expect("count running jobs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_raises_a_queues_concurrency_and_survives_a_broken_file() {
    let app = spawn_app().await;
    let mut config = app.config.clone();
    config.queues.insert(
        "default".into(),
        QueueConfig {
            concurrency: 1,
            ..Default::default()
        },
    );
    let path = app.write_config(&config);
    let socket = NotifySocket::bind(app.dir.path());
    let mut daemon = spawn_with_env(
        &app,
        &path,
        &[("NOTIFY_SOCKET", socket.path.to_str().unwrap())],
    );
    socket.wait_for(15, "READY=1", |m| m == "READY=1");
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(app.enqueue("sleep", json!({"ms": 4000})).await);
    }

    // Concurrency 1: one job runs, the rest wait.
    app.wait_until(ids[0], 15, "running", |j| j.status == Status::Running)
        .await;
    for _ in 0..20 {
        assert_eq!(running(&app).await, 1, "{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    config.queues.insert(
        "default".into(),
        QueueConfig {
            concurrency: 4,
            ..Default::default()
        },
    );
    let text = jobrunner::config::with_secrets_exposed(|| toml::to_string(&config)).unwrap();
    std::fs::write(&path, text).unwrap();
    daemon.signal("HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while running(&app).await < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {} running 3s after the reload: {}",
            running(&app).await,
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = daemon.log_text();
    assert!(
        log.lines().any(|l| l.contains("Config change applied")
            && l.contains("queues.default.concurrency")
            && l.contains("from=1")
            && l.contains("to=4")),
        "{log}"
    );
    // systemd hears the reload begin and end.
    let reloading = socket.wait_for(5, "RELOADING=1", |m| m.starts_with("RELOADING=1\n"));
    let messages = socket.messages();
    assert!(
        messages[reloading..].contains(&"READY=1".to_owned()),
        "{messages:?}"
    );

    // A broken file: the error is logged and the daemon keeps its config.
    std::fs::write(&path, "[queues.default]\nconcurrency = 0\n").unwrap();
    daemon.signal("HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !daemon.log_text().contains("Config reload failed") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("Config reload failed"))
        .unwrap();
    assert!(line.contains("queues.default.concurrency"), "{line}");
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon still runs"
    );
    for id in &ids {
        assert_eq!(app.wait_final(*id, 20).await.status, Status::Succeeded);
    }

    daemon.signal("TERM");
    let status = daemon.wait_exit(15).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}
