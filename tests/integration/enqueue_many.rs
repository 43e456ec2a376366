//! `jobrunner.enqueue_many` and the checks both SQL enqueue functions make at
//! the door: what the daemon cannot carry is refused when it is enqueued, with
//! an error naming the argument (or the element), and nothing is written.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};
use jobrunner::ledger::Status;

/// The error Postgres gave for a statement that must fail.
async fn refused(app: &TestApp, sql: &'static str) -> String {
    let error = sqlx::query(sql)
        .execute(app.ledger.pool())
        .await
        .expect_err("the statement must be refused");
    let db = error.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("22023"), "{db}");
    db.message().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_many_runs_every_payload_and_returns_ids_in_order() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT unnest(jobrunner.enqueue_many('noop',
             ARRAY['{\"n\": 1}', '{\"n\": 2}', '{\"n\": 3}']::jsonb[]))",
    )
    .fetch_all(app.ledger.pool())
    .await
    .unwrap();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        assert_eq!(id.get_version_num(), 7, "{id} is a version 7 UUID");
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
    }
    assert!(ids.is_sorted(), "ids sort in payload order: {ids:?}");
    for (n, id) in ids.iter().enumerate() {
        let job = app.wait_final(*id, 10).await;
        assert_eq!(job.status, Status::Succeeded);
        assert_eq!(
            job.result,
            Some(json!({"n": n + 1})),
            "ids come back in payload order"
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_enqueue_many_enqueues_nothing() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let mut tx = app.ledger.pool().begin().await.unwrap();
    let ghosts: Vec<Uuid> = sqlx::query_scalar(
        "SELECT unnest(jobrunner.enqueue_many('noop', ARRAY['{}', '{}']::jsonb[]))",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(ghosts.len(), 2);
    tx.rollback().await.unwrap();

    let marker = app.enqueue("noop", json!({"marker": true})).await;
    app.wait_final(marker, 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.count_jobs().await, 1, "only the marker job exists");
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM jobrunner.outbox")
        .fetch_one(app.ledger.pool())
        .await
        .unwrap();
    assert_eq!(outbox, 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_many_honours_unique_keys_and_delays() {
    let app = spawn_app().await;
    let pool = app.ledger.pool();
    // Not started yet: the keyed jobs stay unfinished, so they hold their keys.
    let held: Uuid =
        sqlx::query_scalar("SELECT jobrunner.enqueue('noop', '{}', unique_key => 'k0')")
            .fetch_one(pool)
            .await
            .unwrap();
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT unnest(jobrunner.enqueue_many('noop',
             ARRAY['{\"n\": 1}', '{\"n\": 2}', '{\"n\": 3}', '{\"n\": 4}']::jsonb[],
             unique_keys => ARRAY['k0', 'k1', 'k1', NULL]))",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        ids[0], held,
        "a key an unfinished job holds returns that job"
    );
    assert_eq!(ids[1], ids[2], "one key twice in a call gives one job");
    assert_ne!(ids[1], ids[3]);
    assert_eq!(app.count_jobs().await, 3, "k0, k1 and the unkeyed job");

    // Timed from before the call: starting the daemon may take a while on a
    // loaded machine, and the jobs' two seconds run meanwhile.
    let enqueued = tokio::time::Instant::now();
    let delayed: Vec<Uuid> = sqlx::query_scalar(
        "SELECT unnest(jobrunner.enqueue_many('noop', ARRAY['{}', '{}']::jsonb[],
             run_at => now() + interval '2 seconds'))",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let daemon = app.start_daemon().await;
    for id in &delayed {
        assert_eq!(app.ledger.job(*id).await.unwrap().status, Status::Scheduled);
    }
    for id in &delayed {
        let job = app.wait_final(*id, 10).await;
        assert_eq!(job.status, Status::Succeeded);
        assert!(
            job.started_at.unwrap() >= job.run_at,
            "a delayed job starts at its time, not before"
        );
    }
    assert!(enqueued.elapsed() >= Duration::from_millis(1500));
    daemon.stop().await;
}

#[tokio::test]
async fn payloads_at_the_nesting_limit_and_large_flat_ones_go_in() {
    let app = spawn_app().await;
    // 100 levels is the most allowed; the check walks only payloads large
    // enough to nest deeper, and a large flat one is walked and passes.
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT unnest(jobrunner.enqueue_many('noop', ARRAY[
             (repeat('[', 100) || repeat(']', 100))::jsonb,
             jsonb_build_object('text', repeat('x', 4000)),
             '{}'::jsonb]))",
    )
    .fetch_all(app.ledger.pool())
    .await
    .unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(app.count_jobs().await, 3);
}

#[tokio::test]
async fn a_bad_element_refuses_the_whole_call_and_names_its_index() {
    let app = spawn_app().await;
    let message = refused(
        &app,
        "SELECT jobrunner.enqueue_many('noop', ARRAY['{}'::jsonb, '{}',
             (repeat('[', 101) || repeat(']', 101))::jsonb, '{}'])",
    )
    .await;
    assert!(message.contains("payloads[3]"), "{message}");
    let message = refused(
        &app,
        "SELECT jobrunner.enqueue_many('noop', ARRAY['{}', '{}']::jsonb[],
             unique_keys => ARRAY['ok', repeat('x', 2000)])",
    )
    .await;
    assert!(message.contains("unique_keys[2]"), "{message}");
    assert_eq!(
        app.count_jobs().await,
        0,
        "nothing of a refused call is written"
    );
}

#[tokio::test]
async fn values_the_daemon_cannot_carry_are_refused_at_enqueue() {
    let app = spawn_app().await;
    for (sql, names) in [
        (
            "SELECT jobrunner.enqueue('noop', '{}', run_at => 'infinity')",
            "run_at infinity",
        ),
        (
            "SELECT jobrunner.enqueue('noop', '{}', run_at => '-infinity')",
            "run_at -infinity",
        ),
        (
            "SELECT jobrunner.enqueue('noop', '{}', run_at => '10000-01-01Z')",
            "run_at",
        ),
        (
            "SELECT jobrunner.enqueue('noop', '{}', run_at => '1969-12-31Z')",
            "run_at",
        ),
        (
            "SELECT jobrunner.enqueue_many('noop', ARRAY['{}']::jsonb[], run_at => 'infinity')",
            "jobrunner.enqueue_many: run_at infinity",
        ),
        (
            "SELECT jobrunner.enqueue('noop', '{}', priority => 1001)",
            "priority 1001",
        ),
        (
            "SELECT jobrunner.enqueue('noop', '{}', max_attempts => 0)",
            "max_attempts 0",
        ),
        ("SELECT jobrunner.enqueue(repeat('k', 65), '{}')", "kind"),
        (
            "SELECT jobrunner.enqueue('noop', '{}', queue => 'a b')",
            "queue",
        ),
        (
            "SELECT jobrunner.enqueue('noop', '{}', unique_key => repeat('u', 1025))",
            "unique_key",
        ),
        (
            "SELECT jobrunner.enqueue('noop', (repeat('{\"a\":', 100) || '1' || repeat('}', 100))::jsonb)",
            "payload nests deeper than 100 levels",
        ),
    ] {
        let message = refused(&app, sql).await;
        assert!(message.contains(names), "{sql}: {message}");
    }
    // The edges themselves are accepted.
    sqlx::query(
        "SELECT jobrunner.enqueue('noop', (repeat('{\"a\":', 99) || '1' || repeat('}', 99))::jsonb,
             run_at => '9999-12-31 23:59:59Z', priority => 1000)",
    )
    .execute(app.ledger.pool())
    .await
    .unwrap();
    assert_eq!(app.count_jobs().await, 1);
}
