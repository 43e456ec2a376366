//! Re-using a job's id: a producer holding only the documented ENQUEUE script
//! sends the id of someone else's unfinished job, on another queue or on the
//! job's own. The script cannot see the ledger (nor, on a cluster, other queues)
//! and accepts it; the ingester finds the id taken, quarantines the copy, and the
//! job runs once, with the payload the ledger holds.

use std::time::Duration;

use jobrunner::config::{Config, QueueConfig};
use jobrunner::jobs::Registry;
use jobrunner::ledger::{Quarantined, Status};
use jobrunner::runtime::Daemon;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};
use crate::protocol::{Reply, enqueue_on};

const ALICE: &str = r#"{"owner": "alice"}"#;
const MALLORY: &str = r#"{"owner": "mallory"}"#;

/// The test config, serving a second queue `other` as well.
fn two_queues(app: &TestApp) -> Config {
    let mut config = app.config.clone();
    config.queues.insert(
        "other".into(),
        QueueConfig {
            concurrency: 4,
            ..QueueConfig::default()
        },
    );
    config
}

pub async fn start(app: &TestApp) -> Daemon {
    let config = two_queues(app);
    let registry = Registry::builtin(&config);
    app.start_daemon_with(config, registry).await
}

/// The quarantine entry of `id`, once the ingester wrote it.
async fn quarantined(app: &TestApp, id: Uuid) -> Quarantined {
    for _ in 0..200 {
        if let Some(q) = app.ledger.quarantined(Some(id), 5).await.unwrap().pop() {
            return q;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id}: the re-used copy was not quarantined");
}

/// The job ran once, on its own queue, with its own payload.
async fn ran_as_enqueued(app: &TestApp, id: Uuid) {
    let job = app.wait_final(id, 15).await;
    assert_eq!(job.status, Status::Succeeded, "{job:?}");
    assert_eq!(job.queue, "default");
    assert_eq!(job.payload, json!({"owner": "alice"}));
    assert_eq!(
        job.result,
        Some(json!({"owner": "alice"})),
        "the ledger's payload ran"
    );
    assert_eq!(job.attempts, 1, "it ran once");
}

pub async fn redis_drained(app: &TestApp, queue: &str) {
    for _ in 0..100 {
        if app.broker.depth(queue).await.unwrap() == (0, 0, 0, 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "queue {queue} still holds {:?}",
        app.broker.depth(queue).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sql_jobs_id_sent_through_redis_on_another_queue_is_quarantined() {
    let app = spawn_app().await;
    let id = app.enqueue("noop", json!({"owner": "alice"})).await;
    assert_eq!(
        enqueue_on(&app, "other", &id.to_string(), "noop", MALLORY, 0),
        Reply::Int(1),
        "the script cannot see the ledger"
    );
    let daemon = start(&app).await;
    ran_as_enqueued(&app, id).await;
    let q = quarantined(&app, id).await;
    assert_eq!(q.queue.as_deref(), Some("other"));
    assert!(
        q.error
            .contains("already belongs to a noop job on queue default"),
        "{}",
        q.error
    );
    assert!(
        q.raw.contains("mallory"),
        "the copy is kept for admins: {}",
        q.raw
    );
    redis_drained(&app, "other").await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sql_jobs_id_sent_through_redis_on_its_own_queue_before_dispatch_is_quarantined() {
    let app = spawn_app().await;
    let id = app.enqueue("noop", json!({"owner": "alice"})).await;
    // Not dispatched yet, so Redis holds no hash of it on `default` either.
    assert_eq!(
        enqueue_on(&app, "default", &id.to_string(), "noop", MALLORY, 0),
        Reply::Int(1)
    );
    let daemon = start(&app).await;
    // Whichever comes first, the dispatcher (which skips an id Redis holds) or
    // the ingester, the job runs with the ledger's payload.
    ran_as_enqueued(&app, id).await;
    let q = quarantined(&app, id).await;
    assert_eq!(q.queue.as_deref(), Some("default"));
    redis_drained(&app, "default").await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_jobs_id_sent_again_on_another_queue_while_it_waits_is_quarantined() {
    let app = spawn_app().await;
    let daemon = start(&app).await;
    let id = Uuid::now_v7();
    // Delayed, so it is recorded and still unfinished when the copy arrives.
    assert_eq!(
        enqueue_on(&app, "default", &id.to_string(), "noop", ALICE, 1500),
        Reply::Int(1)
    );
    for _ in 0..200 {
        if app.ledger.job(id).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        enqueue_on(&app, "other", &id.to_string(), "noop", MALLORY, 0),
        Reply::Int(1)
    );
    let q = quarantined(&app, id).await;
    assert_eq!(q.queue.as_deref(), Some("other"));
    let job = app.ledger.job(id).await.unwrap();
    assert_eq!(
        job.status,
        Status::Scheduled,
        "the waiting job was not touched"
    );
    ran_as_enqueued(&app, id).await;
    daemon.stop().await;
}
