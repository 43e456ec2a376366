//! Retries, exhaustion and bad input: every job ends in a readable state and the
//! daemon keeps serving.

use jobrunner::ledger::Status;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_fails_twice_is_retried_and_succeeds_on_the_third_attempt() {
    let mut app = spawn_app().await;
    app.config.kinds.get_mut("fail").unwrap().max_attempts = 5;
    let daemon = app.start_daemon().await;
    let id = app.enqueue("fail", json!({"times": 2})).await;
    let job = app.wait_final(id, 15).await;
    assert_eq!(job.status, Status::Succeeded);
    assert_eq!(job.attempts, 3);
    assert_eq!(job.result, Some(json!({"failed_attempts": 2})));
    assert_eq!(
        job.last_error.as_deref(),
        Some("failed attempt 2 of the 2 asked for"),
        "the last failure stays readable after success"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_failing_ends_dead_after_max_attempts() {
    let app = spawn_app().await; // fail: max_attempts 3
    let daemon = app.start_daemon().await;
    let id = app.enqueue("fail", json!({"times": 100})).await;
    let job = app.wait_final(id, 15).await;
    assert_eq!(job.status, Status::Dead);
    assert_eq!(job.attempts, 3);
    assert_eq!(
        job.last_error.as_deref(),
        Some("failed attempt 3 of the 100 asked for (gave up after 3 attempts)")
    );
    assert!(job.finished_at.is_some());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_dead_at_once() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let id = app.enqueue("fail", json!({"permanent": true})).await;
    let job = app.wait_final(id, 10).await;
    assert_eq!((job.status.as_str(), job.attempts), ("dead", 1));
    assert_eq!(
        job.last_error.as_deref(),
        Some("failed permanently as asked")
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_and_unknown_kinds_end_dead_and_the_daemon_keeps_serving() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let bad_type = app.enqueue("sleep", json!({"ms": "soon"})).await;
    let extra_field = app.enqueue("sleep", json!({"ms": 1, "typo": true})).await;
    let unknown = app.enqueue("no-such-kind", json!({})).await;

    let job = app.wait_final(bad_type, 10).await;
    assert_eq!((job.status.as_str(), job.attempts), ("dead", 1));
    assert!(
        job.last_error
            .as_deref()
            .unwrap()
            .starts_with("bad payload: invalid type"),
        "{job:?}"
    );
    let job = app.wait_final(extra_field, 10).await;
    assert_eq!(job.status, Status::Dead);
    assert!(
        job.last_error
            .as_deref()
            .unwrap()
            .contains("unknown field `typo`"),
        "{job:?}"
    );
    let job = app.wait_final(unknown, 10).await;
    assert_eq!(job.status, Status::Dead);
    assert_eq!(
        job.last_error.as_deref(),
        Some("unknown kind `no-such-kind`: no handler is registered for it")
    );

    let after = app.enqueue("noop", json!({"still": "serving"})).await;
    assert_eq!(app.wait_final(after, 10).await.status, Status::Succeeded);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_kinds_timeout_is_retried_then_dead() {
    let mut app = spawn_app().await;
    app.config.kinds.insert(
        "sleep".into(),
        jobrunner::config::KindConfig {
            max_attempts: 2,
            timeout: std::time::Duration::from_millis(200),
            backoff: jobrunner::config::BackoffConfig {
                base: std::time::Duration::from_millis(10),
                max: std::time::Duration::from_millis(10),
            },
            ..Default::default()
        },
    );
    let daemon = app.start_daemon().await;
    let id = app.enqueue("sleep", json!({"ms": 5000})).await;
    let job = app.wait_final(id, 10).await;
    assert_eq!((job.status.as_str(), job.attempts), ("dead", 2));
    assert_eq!(
        job.last_error.as_deref(),
        Some("timed out after 200ms (gave up after 2 attempts)")
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_enqueue_with_bad_arguments_fails_in_the_producers_transaction() {
    let app = spawn_app().await;
    for (sql, expected) in [
        (
            "SELECT jobrunner.enqueue('', '{}')",
            "kind '' must be 1-64 letters",
        ),
        (
            "SELECT jobrunner.enqueue('noop', '{}', priority => 5000)",
            "priority 5000 must be from -1000 to 1000",
        ),
        (
            "SELECT jobrunner.enqueue('noop', '{}', queue => 'no spaces')",
            "queue 'no spaces' must be 1-64 letters",
        ),
    ] {
        let err = sqlx::query(sql)
            .execute(app.ledger.pool())
            .await
            .unwrap_err();
        assert!(err.to_string().contains(expected), "{sql}: {err}");
    }
    assert_eq!(app.count_jobs().await, 0);
}

/// A kind or queue name is 1-64 letters, digits, dots, dashes or underscores:
/// the ledger's CHECK constraints hold every row to that, however it was
/// written, and `enqueue` and `enqueue_many` say so at the door. Both were
/// rewritten for speed (migrations/20261129900001_cheaper_name_checks.sql);
/// this pins that they still mean the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_takes_exactly_the_names_its_rule_allows() {
    let app = spawn_app().await;
    let pool = app.ledger.pool();
    let validated: Vec<(String, bool)> = sqlx::query_as(
        "SELECT conname::text, convalidated FROM pg_constraint
         WHERE conrelid = 'jobrunner.jobs'::regclass
           AND conname IN ('jobs_kind_check', 'jobs_queue_check') ORDER BY conname",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let validated_both = vec![
        ("jobs_kind_check".to_string(), true),
        ("jobs_queue_check".to_string(), true),
    ];
    assert_eq!(validated, validated_both);

    let longest = "k".repeat(64);
    let good = ["a", "noop", "A.b-c_9", longest.as_str()];
    let too_long = "k".repeat(65);
    let bad = [
        "",
        " ",
        "a b",
        "ünïcode",
        "a\nb",
        "a/b",
        "é",
        too_long.as_str(),
    ];
    let insert = |kind: &str, queue: &str| {
        sqlx::query(
            "INSERT INTO jobrunner.jobs (id, queue, kind) VALUES (gen_random_uuid(), $1, $2)",
        )
        .bind(queue.to_owned())
        .bind(kind.to_owned())
        .execute(pool)
    };
    for name in good {
        insert(name, "default").await.unwrap();
        insert("noop", name).await.unwrap();
    }
    for name in bad {
        for (kind, queue, constraint) in [
            (name, "default", "jobs_kind_check"),
            ("noop", name, "jobs_queue_check"),
        ] {
            let err = insert(kind, queue).await.unwrap_err();
            let db = err.as_database_error().expect("a database error");
            assert_eq!(db.code().as_deref(), Some("23514"), "{name:?}: {err}");
            assert_eq!(db.constraint(), Some(constraint), "{name:?}: {err}");
        }
    }
    let enqueue = |kind: String| {
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT jobrunner.enqueue($1, '{}')")
            .bind(kind)
            .fetch_one(pool)
    };
    enqueue(longest.clone()).await.unwrap();
    let err = enqueue(too_long.clone()).await.unwrap_err();
    assert!(err.to_string().contains("must be 1-64 letters"), "{err}");
    let err = sqlx::query("SELECT jobrunner.enqueue_many('noop', ARRAY['{}'::jsonb], queue => $1)")
        .bind(too_long)
        .execute(pool)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("queue") && err.to_string().contains("must be 1-64 letters"),
        "{err}"
    );
    assert_eq!(app.count_jobs().await, 2 * good.len() as i64 + 1);
}

/// The reaper's "lease expired" can reach the status writer after the next
/// attempt has already started (or ended): its stale status must be ignored,
/// but the error is still that attempt's and belongs in the job's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_lease_expiry_keeps_its_error_without_undoing_the_newer_attempt() {
    use jobrunner::ledger::{Status, StatusUpdate, StatusWriter};
    let app = spawn_app().await; // no daemon: the writer is driven by hand
    let id = app.enqueue("noop", json!({})).await;
    let (writers, handle) = StatusWriter::new(app.ledger.clone(), 100, 1);
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|w| tokio::spawn(w.run(stop.clone())))
        .collect();
    let at = chrono::Utc::now();
    let step = |token, status, attempts, error: Option<&str>| StatusUpdate {
        at,
        last_error: error.map(str::to_string),
        ..crate::helpers::status_update(id, token, status, attempts)
    };
    handle.send(step(20, Status::Running, 2, None)).await;
    handle.send(step(20, Status::Succeeded, 2, None)).await;
    app.wait_until(id, 10, "succeeded", |j| j.status == Status::Succeeded)
        .await;
    handle
        .send(step(
            10,
            Status::Queued,
            1,
            Some("lease expired: attempt 1"),
        ))
        .await;
    drop(handle);
    for t in tasks {
        t.await.unwrap();
    }
    let job = app.ledger.job_detail(id).await.unwrap();
    assert_eq!(
        job.job.status,
        Status::Succeeded,
        "the stale status is ignored"
    );
    assert_eq!(job.job.attempts, 2);
    assert_eq!(job.lease_token, Some(20));
    assert_eq!(
        job.job.last_error.as_deref(),
        Some("lease expired: attempt 1")
    );
    assert_eq!(job.errors[0]["error"], "lease expired: attempt 1");
    assert_eq!(job.errors[0]["attempt"], 1);
}

/// An admission sees every change that reached its writer shard before it,
/// even in the same round: a lease of a job whose end is on its way is
/// refused, and one asking beside another job's end runs, with its row's
/// payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_sees_the_changes_that_reached_the_writer_before_it() {
    use jobrunner::ledger::{Claim, Status, StatusWriter, Verdict};
    let app = spawn_app().await; // no daemon: the writer is driven by hand
    let ended = app.enqueue("noop", json!({"n": 1})).await;
    let other = app.enqueue("noop", json!({"n": 2})).await;
    let asking = app.enqueue("noop", json!({"n": 3})).await;
    let queue = app.ledger.job_detail(asking).await.unwrap().job.queue;
    let claim = || Claim {
        queue: queue.clone(),
        kind: "noop".into(),
    };
    let step = |id, token, status| crate::helpers::status_update(id, token, status, 1);
    // One round each: everything is queued before the writer starts.
    let round = |end: uuid::Uuid, ask: uuid::Uuid, ask_token: i64| {
        let (writers, handle) = StatusWriter::new(app.ledger.clone(), 100, 1);
        let end = step(end, 1, Status::Succeeded);
        let ask = step(ask, ask_token, Status::Running);
        let claim = claim();
        async move {
            handle.send(end).await;
            let asker = handle.clone();
            let verdict = tokio::spawn(async move { asker.admit(ask, claim).await });
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            drop(handle);
            let stop = tokio_util::sync::CancellationToken::new();
            let tasks: Vec<_> = writers
                .into_iter()
                .map(|w| tokio::spawn(w.run(stop.clone())))
                .collect();
            let verdict = verdict.await.unwrap();
            for t in tasks {
                t.await.unwrap();
            }
            verdict
        }
    };
    assert_eq!(
        round(ended, ended, 2).await,
        Some(Verdict::Refused),
        "the end written in the same round is seen"
    );
    assert_eq!(
        round(other, asking, 1).await,
        Some(Verdict::Run {
            payload: r#"{"n": 3}"#.into(),
            max_attempts: 25
        })
    );
    for id in [ended, other] {
        let job = app.ledger.job_detail(id).await.unwrap().job;
        assert_eq!(job.status, Status::Succeeded, "{id}");
    }
}
