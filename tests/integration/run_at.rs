//! Jobs enqueued for later (`run_at` in SQL, `--at` on the CLI) wait
//! as `scheduled` and run once their time has come, never before.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};
use jobrunner::ledger::Status;

/// The job stays `scheduled` while its time is ahead, then succeeds, starting no
/// earlier than its `run_at`.
async fn waits_then_runs(app: &TestApp, id: Uuid, run_at: DateTime<Utc>) {
    let job = app.ledger.job(id).await.unwrap();
    assert_eq!(job.status, Status::Scheduled);
    assert_eq!(job.run_at, run_at);
    let before = run_at - chrono::Duration::milliseconds(500);
    if let Ok(wait) = (before - Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
    let job = app.ledger.job(id).await.unwrap();
    assert_eq!(
        (job.status.as_str(), job.started_at),
        ("scheduled", None),
        "half a second before its time the job has not started"
    );
    let job = app.wait_final(id, 15).await;
    assert_eq!(job.status, Status::Succeeded);
    assert!(job.started_at.expect("started") >= run_at, "{job:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_through_sql_with_run_at_two_seconds_ahead_waits_then_runs() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let (id, run_at): (Uuid, DateTime<Utc>) = sqlx::query_as(
        // now() is the transaction's start, so both columns name the same time.
        "SELECT jobrunner.enqueue(kind => 'noop', payload => '{}',
                                  run_at => now() + interval '2 seconds'),
                now() + interval '2 seconds'",
    )
    .fetch_one(app.ledger.pool())
    .await
    .unwrap();
    waits_then_runs(&app, id, run_at).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_at_an_rfc3339_time_waits_then_runs_and_a_past_time_runs_now() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    // Whole milliseconds survive the trip through the CLI and Postgres exactly.
    let at = DateTime::from_timestamp_millis(
        (Utc::now() + chrono::Duration::seconds(2)).timestamp_millis(),
    )
    .unwrap();
    // Written with an offset: the same instant as `at`.
    let text = at
        .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
        .to_rfc3339();
    let (code, out, err) = app.cli(&["enqueue", "noop", "--at", &text]);
    assert_eq!(code, 0, "{err}");
    let id: Uuid = out.trim().parse().expect("prints the id");
    waits_then_runs(&app, id, at).await;

    let (code, out, err) = app.cli(&["enqueue", "noop", "--at", "2020-01-01T00:00:00Z"]);
    assert_eq!(code, 0, "{err}");
    let job = app.wait_final(out.trim().parse().unwrap(), 10).await;
    assert_eq!(job.status, Status::Succeeded);
    assert!(
        job.run_at > Utc::now() - chrono::Duration::seconds(30),
        "a past time means now: {job:?}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_at_refuses_a_bad_time_and_delay_at_the_same_time() {
    let app = spawn_app().await;
    let (code, _, err) = app.cli(&["enqueue", "noop", "--at", "tomorrow 9am"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`tomorrow 9am` is not an RFC 3339 time like 2026-12-01T09:00:00Z"),
        "{err}"
    );
    let (code, _, err) = app.cli(&["enqueue", "noop", "--at", "2026-12-01T09:00:00"]);
    assert_eq!(code, 2, "a time without an offset is ambiguous: {err}");
    let (code, _, err) = app.cli(&[
        "enqueue",
        "noop",
        "--at",
        "2026-12-01T09:00:00Z",
        "--delay",
        "10m",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--delay") && err.contains("cannot be used with"),
        "{err}"
    );
    assert_eq!(app.count_jobs().await, 0);
}
