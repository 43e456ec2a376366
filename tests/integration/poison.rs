//! Promise 6: one bad item never holds up another. Each test puts a poison item
//! where a batch carries it (the outbox, a queue's Redis keys, the status
//! writer), then checks that the poison ends `dead` with a readable error and
//! that ordinary jobs enqueued right after it all succeed within seconds.

use std::collections::BTreeMap;
use std::time::Duration;

use jobrunner::config::{CommandKindConfig, HandlerName, KindConfig, QueueConfig};
use jobrunner::ledger::NewJob;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};

/// A `command` kind running `script` with `/bin/sh`, failing fast.
pub fn sh_kind(script: &str) -> KindConfig {
    let mut kind = KindConfig {
        max_attempts: 3,
        handler: Some(HandlerName::Command),
        command: Some(CommandKindConfig {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            dead_exit_codes: vec![3],
            env: BTreeMap::new(),
            working_dir: None,
        }),
        ..KindConfig::default()
    };
    kind.backoff.base = Duration::from_millis(20);
    kind.backoff.max = Duration::from_millis(50);
    kind
}

/// Writes a job row and its outbox row straight into the tables, as a row
/// written before validation existed (or by a hand-written INSERT) would be.
async fn insert_raw(app: &TestApp, queue: &str, kind: &str, run_at: &str) -> Uuid {
    let id = Uuid::now_v7();
    let mut tx = app.ledger.pool().begin().await.unwrap();
    sqlx::query(
        "INSERT INTO jobrunner.jobs (id, queue, kind, payload, status, run_at)
         VALUES ($1, $2, $3, '{}', 'queued', $4::timestamptz)",
    )
    .bind(id)
    .bind(queue)
    .bind(kind)
    .bind(run_at)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("INSERT INTO jobrunner.outbox (id) VALUES ($1)")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

/// Enqueues `n` noop jobs on `queue` and checks they all succeed within `secs`.
async fn ordinary_jobs_succeed(app: &TestApp, queue: &str, n: usize, secs: u64) {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = app
            .ledger
            .enqueue(&NewJob {
                kind: "noop".into(),
                payload: json!({"i": i}),
                queue: Some(queue.into()),
                ..NewJob::default()
            })
            .await
            .unwrap();
        ids.push(id);
    }
    for id in ids {
        let job = app.wait_final(id, secs).await;
        assert_eq!(job.status, "succeeded", "{job:?}");
    }
}

async fn redis_client(app: &TestApp) -> fred::prelude::Client {
    use fred::prelude::*;
    let config = fred::types::config::Config::from_url(app.config.redis.url.expose()).unwrap();
    let client = Builder::from_config(config).build().unwrap();
    client.init().await.unwrap();
    client
}

fn redis_key(app: &TestApp, queue: &str, what: &str) -> String {
    format!("{}:{{{queue}}}:{what}", app.config.redis.key_prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_at_the_daemon_cannot_carry_ends_dead_and_every_later_job_still_runs() {
    let app = spawn_app().await;
    // Rows already in the database when the daemon starts, as after an upgrade.
    let poison = [
        insert_raw(&app, "default", "noop", "infinity").await,
        insert_raw(&app, "default", "noop", "-infinity").await,
        insert_raw(&app, "default", "noop", "20000-01-01T00:00:00Z").await,
    ];
    let before = app.enqueue("noop", json!({"before": true})).await;
    let daemon = app.start_daemon().await;

    for id in poison {
        let job = app.wait_final(id, 5).await;
        assert_eq!(job.status, "dead", "{job:?}");
        let error = job.last_error.as_deref().unwrap_or("");
        assert!(
            error.contains("outside the range jobrunner can schedule"),
            "{error}"
        );
        assert_eq!(job.attempts, 0, "it never ran: {job:?}");
    }
    assert_eq!(app.wait_final(before, 5).await.status, "succeeded");
    let started = tokio::time::Instant::now();
    ordinary_jobs_succeed(&app, "default", 40, 5).await;
    assert!(started.elapsed() < Duration::from_secs(5));

    // The error quotes the value the row held.
    let job = app.ledger.job(poison[0]).await.unwrap();
    assert!(
        job.last_error.as_deref().unwrap_or("").contains("infinity"),
        "{job:?}"
    );
    // The daemon is whole: its loops still run and it says it is ready.
    let addr = daemon.admin_addr().expect("admin listener");
    let body = reqwest_get(&format!("http://{addr}/readyz")).await;
    assert!(body.contains("\"ready\""), "{body}");
    daemon.stop().await;
}

async fn reqwest_get(url: &str) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_in_a_commands_output_are_escaped_and_hold_up_nothing() {
    let mut app = spawn_app().await;
    app.config
        .kinds
        .insert("nul-out".into(), sh_kind(r#"printf 'a\000b'"#));
    app.config.kinds.insert(
        "nul-err".into(),
        sh_kind(r#"printf 'broken\000bytes \377\376' >&2; exit 3"#),
    );
    let daemon = app.start_daemon().await;
    let out = app.enqueue("nul-out", json!({})).await;
    let err = app.enqueue("nul-err", json!({})).await;
    ordinary_jobs_succeed(&app, "default", 40, 5).await;

    let job = app.wait_final(out, 5).await;
    assert_eq!(job.status, "succeeded", "{job:?}");
    assert_eq!(job.result, Some(json!({"stdout": "a\\u0000b"})));
    let job = app.wait_final(err, 5).await;
    assert_eq!(job.status, "dead", "{job:?}");
    let error = job.last_error.unwrap_or_default();
    assert!(error.contains("broken\\u0000bytes"), "{error}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_postgres_refuses_ends_that_job_dead_and_the_rest_are_written() {
    let mut app = spawn_app().await;
    // A real refusal by Postgres (SQLSTATE 23514) for results carrying "poison".
    sqlx::query(
        "ALTER TABLE jobrunner.jobs ADD CONSTRAINT no_poison_result
         CHECK (result IS NULL OR NOT result ? 'poison')",
    )
    .execute(app.ledger.pool())
    .await
    .unwrap();
    // Echoes its payload back as its result.
    app.config.kinds.insert("echo".into(), sh_kind("cat"));
    app.config.runtime.status_batch_max = 1000;
    let daemon = app.start_daemon().await;

    let mut ids = Vec::new();
    let mut poison = Vec::new();
    for i in 0..60 {
        let payload = if i % 20 == 7 {
            json!({"poison": i})
        } else {
            json!({"ok": i})
        };
        let id = app.enqueue("echo", payload.clone()).await;
        if i % 20 == 7 {
            poison.push(id);
        } else {
            ids.push((id, payload));
        }
    }
    let started = tokio::time::Instant::now();
    for (id, payload) in &ids {
        let job = app.wait_final(*id, 10).await;
        assert_eq!(job.status, "succeeded", "{job:?}");
        assert_eq!(job.result.as_ref(), Some(payload));
    }
    for id in &poison {
        let job = app.wait_final(*id, 5).await;
        assert_eq!(job.status, "dead", "{job:?}");
        let error = job.last_error.unwrap_or_default();
        assert!(
            error.contains("could not store this job's succeeded status")
                && error.contains("no_poison_result"),
            "{error}"
        );
        assert_eq!(job.result, None);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_queues_failing_dispatch_holds_back_no_other_queue() {
    use fred::prelude::*;
    let mut app = spawn_app().await;
    app.config
        .queues
        .insert("broken".into(), QueueConfig::default());
    let redis = redis_client(&app).await;
    // The queue's ready set is a string: every dispatch to it fails (WRONGTYPE).
    let _: () = redis
        .set(redis_key(&app, "broken", "ready"), "x", None, None, false)
        .await
        .unwrap();
    let stuck = app
        .ledger
        .enqueue(&NewJob {
            kind: "noop".into(),
            payload: json!({}),
            queue: Some("broken".into()),
            ..NewJob::default()
        })
        .await
        .unwrap();
    let daemon = app.start_daemon().await;

    // Others flow while the broken queue keeps failing, through several rounds.
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        ordinary_jobs_succeed(&app, "default", 20, 2).await;
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let job = app.ledger.job(stuck).await.unwrap();
    assert_eq!(
        job.status, "queued",
        "a broken queue is not the job's fault: it waits, not dead: {job:?}"
    );

    // Once the key is fixed, the waiting job goes through.
    let _: i64 = redis.del(redis_key(&app, "broken", "ready")).await.unwrap();
    assert_eq!(app.wait_final(stuck, 10).await.status, "succeeded");
    let _ = redis.quit().await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_redis_refuses_alone_ends_dead_and_its_queue_goes_on() {
    use fred::prelude::*;
    let app = spawn_app().await;
    let redis = redis_client(&app).await;
    // A row whose job key in Redis holds something that is not a job hash.
    let poison = insert_raw(&app, "default", "noop", "now").await;
    let _: () = redis
        .set(
            redis_key(&app, "default", &format!("job:{poison}")),
            "x",
            None,
            None,
            false,
        )
        .await
        .unwrap();
    let mut neighbours = Vec::new();
    for _ in 0..30 {
        neighbours.push(app.enqueue("noop", json!({})).await);
    }
    let daemon = app.start_daemon().await;

    let job = app.wait_final(poison, 5).await;
    assert_eq!(job.status, "dead", "{job:?}");
    let error = job.last_error.unwrap_or_default();
    assert!(
        error.contains("Redis refused to dispatch this job") && error.contains("not a job hash"),
        "{error}"
    );
    for id in neighbours {
        assert_eq!(app.wait_final(id, 5).await.status, "succeeded");
    }
    ordinary_jobs_succeed(&app, "default", 20, 3).await;
    let _ = redis.quit().await;
    daemon.stop().await;
}

/// Repeats "Redis comes back empty under load": SQL producers keep enqueueing
/// at 10 jobs/s while Redis is killed and restarted empty, over and over. Every
/// run of every job appends a line to a file (job id, start time), so the test
/// counts real executions, not what the daemon believes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_runs_after_it_ended_however_often_redis_comes_back_empty() {
    const OUTAGES: usize = 10;
    let mut app = spawn_app().await;
    let runs_file = app.dir.path().join("runs.log");
    app.config.kinds.insert(
        "mark".into(),
        sh_kind(&format!(
            r#"echo "$JOBRUNNER_JOB_ID $(date +%s%N)" >> '{}'"#,
            runs_file.display()
        )),
    );
    // Timeouts happen during an outage, as in production.
    app.config.redis.command_timeout = Duration::from_secs(1);
    let daemon = app.start_daemon().await;

    let stop = tokio_util::sync::CancellationToken::new();
    let producer = {
        let (ledger, stop) = (app.ledger.clone(), stop.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.is_cancelled() {
                tick.tick().await;
                let job = NewJob {
                    kind: "mark".into(),
                    payload: json!({"n": ids.len()}),
                    ..NewJob::default()
                };
                ids.push(ledger.enqueue(&job).await.expect("SQL enqueue"));
            }
            ids
        })
    };
    for _ in 0..OUTAGES {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        app.redis.kill();
        tokio::time::sleep(Duration::from_millis(2000)).await;
        app.redis.start_again();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    let ids = producer.await.unwrap();
    assert!(ids.len() >= 300, "only {} jobs enqueued", ids.len());

    let mut jobs = Vec::new();
    for id in &ids {
        let job = app.wait_final(*id, 60).await;
        assert_eq!(job.status, "succeeded", "{job:?}");
        jobs.push(job);
    }
    // A late dispatch would re-run a job seconds after it ended: give it time.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let text = std::fs::read_to_string(&runs_file).expect("the runs file");
    let mut runs: std::collections::HashMap<Uuid, Vec<i64>> = Default::default();
    for line in text.lines() {
        let (id, ns) = line.split_once(' ').expect("id and time");
        runs.entry(id.parse().expect("a job id"))
            .or_default()
            .push(ns.parse().expect("nanoseconds"));
    }
    let mut repeated = 0;
    for job in &jobs {
        let started = runs.get(&job.id).cloned().unwrap_or_default();
        let finished = job.finished_at.expect("a finished job has finished_at");
        let finished_ns = finished.timestamp_nanos_opt().expect("a near time");
        for ns in &started {
            assert!(
                *ns <= finished_ns,
                "job {} ran at {ns} after it succeeded at {finished_ns}: {job:?}",
                job.id
            );
        }
        assert_eq!(
            job.attempts as usize,
            started.len(),
            "the ledger's attempts must equal the real runs of {}: {job:?}",
            job.id
        );
        repeated += usize::from(started.len() > 1);
    }
    eprintln!(
        "{} jobs over {OUTAGES} Redis outages; {repeated} ran more than once, each run counted",
        jobs.len()
    );
    daemon.stop().await;
}
