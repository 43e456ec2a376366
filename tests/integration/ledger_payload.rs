//! The payload that runs is the ledger's: someone who can write to Redis
//! rewrites a waiting job's hash, or puts a copy of its id on another queue. The
//! worker's admission reads the job's row; a lease runs the row's payload, and a
//! lease of another kind or on another queue than the row is refused, while the
//! job itself still runs once, as enqueued.

use std::time::Duration;

use chrono::Utc;
use jobrunner::ledger::{Job, NewJob, Status};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};
use crate::id_reuse::{redis_drained, start};
use crate::protocol::{Reply, redis_command};

const MALLORY: &str = r#"{"owner": "mallory"}"#;

/// How long the job waits before it is due: long enough for a test to rewrite
/// its Redis copy while it is still delayed.
const WAIT: Duration = Duration::from_millis(1500);

/// A `noop` job (it returns its payload) of Alice's, due after [`WAIT`].
async fn enqueue_delayed(app: &TestApp) -> Uuid {
    app.ledger
        .enqueue(&NewJob {
            kind: "noop".into(),
            payload: json!({"owner": "alice"}),
            run_at: Some(Utc::now() + WAIT),
            ..NewJob::default()
        })
        .await
        .expect("enqueue")
}

fn key(app: &TestApp, queue: &str, rest: &str) -> String {
    format!("{}:{{{queue}}}:{rest}", app.config.redis.key_prefix)
}

/// Waits until the dispatcher has put the job into Redis on `default`.
async fn dispatched(app: &TestApp, id: Uuid) -> String {
    let hash = key(app, "default", &format!("job:{id}"));
    for _ in 0..200 {
        if redis_command(app, &["HEXISTS", &hash, "payload"]) == Reply::Int(1) {
            return hash;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {id} was not dispatched into Redis");
}

/// Asserts the job is still waiting in Redis's delayed set.
fn still_waiting(app: &TestApp, id: Uuid) {
    let delayed = key(app, "default", "delayed");
    assert!(
        matches!(
            redis_command(app, &["ZRANK", &delayed, &id.to_string()]),
            Reply::Int(_)
        ),
        "job {id} was leased before its hash was rewritten"
    );
}

/// The job ran once, on its own queue and not before it was due, with the
/// payload its row holds.
fn ran_as_enqueued(job: &Job) {
    assert_eq!(job.status, Status::Succeeded, "{job:?}");
    assert_eq!(job.queue, "default");
    assert_eq!(
        job.result,
        Some(json!({"owner": "alice"})),
        "the ledger's payload ran"
    );
    assert_eq!(job.attempts, 1, "it ran once: {job:?}");
    let started = job.started_at.expect("a started job has started_at");
    assert!(
        started >= job.run_at,
        "it ran at {started}, before it was due at {}",
        job.run_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_rewritten_in_redis_while_the_job_waits_runs_as_the_ledger_holds_it() {
    let app = spawn_app().await;
    let daemon = start(&app).await;
    let id = enqueue_delayed(&app).await;
    let hash = dispatched(&app, id).await;
    assert_eq!(
        redis_command(&app, &["HSET", &hash, "payload", MALLORY]),
        Reply::Int(0),
        "the payload field was overwritten"
    );
    still_waiting(&app, id);
    ran_as_enqueued(&app.wait_final(id, 15).await);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_hash_names_another_kind_is_refused_and_the_job_runs_as_enqueued() {
    let app = spawn_app().await;
    let daemon = start(&app).await;
    let id = enqueue_delayed(&app).await;
    let hash = dispatched(&app, id).await;
    // `fail` would end the job dead: only the row's kind may run it.
    assert_eq!(
        redis_command(&app, &["HSET", &hash, "kind", "fail", "payload", MALLORY]),
        Reply::Int(0)
    );
    still_waiting(&app, id);
    // Refused, ended in Redis, and dispatched again from its row.
    ran_as_enqueued(&app.wait_final(id, 15).await);
    redis_drained(&app, "default").await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_the_id_on_another_queue_is_refused_and_never_stamps_the_row() {
    let app = spawn_app().await;
    let id = enqueue_delayed(&app).await;
    // A ready copy on `other`, written straight into Redis (not through the
    // ingest list the ingester checks): its lease's token counts on `other`.
    let hash = key(&app, "other", &format!("job:{id}"));
    let fields = [
        "HSET",
        &hash,
        "kind",
        "noop",
        "payload",
        MALLORY,
        "priority",
        "0",
        "attempts",
        "0",
        "max_attempts",
        "3",
        "run_ms",
        "0",
    ];
    assert_eq!(redis_command(&app, &fields), Reply::Int(6));
    let ready = key(&app, "other", "ready");
    assert_eq!(
        redis_command(&app, &["ZADD", &ready, "0", &id.to_string()]),
        Reply::Int(1)
    );
    let daemon = start(&app).await;
    // The copy is leased at once and refused; the job runs when due, on its queue.
    redis_drained(&app, "other").await;
    let job = app.wait_final(id, 15).await;
    ran_as_enqueued(&job);
    daemon.stop().await;
}
