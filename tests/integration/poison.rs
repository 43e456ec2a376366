//! Promise 6: one bad item never holds up another. Each test puts a poison item
//! where a batch carries it (the outbox, a queue's Redis keys, the status
//! writer), then checks that the poison ends `dead` with a readable error and
//! that ordinary jobs enqueued right after it all succeed within seconds.

use std::time::Duration;

use jobrunner::config::QueueConfig;
use jobrunner::ledger::NewJob;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, sh_kind, spawn_app};
use jobrunner::ledger::Status;

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
        assert_eq!(job.status, Status::Succeeded, "{job:?}");
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
        assert_eq!(job.status, Status::Dead, "{job:?}");
        let error = job.last_error.as_deref().unwrap_or("");
        assert!(
            error.contains("outside the range jobrunner can schedule"),
            "{error}"
        );
        assert_eq!(job.attempts, 0, "it never ran: {job:?}");
    }
    assert_eq!(app.wait_final(before, 5).await.status, Status::Succeeded);
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
    assert_eq!(job.status, Status::Succeeded, "{job:?}");
    assert_eq!(job.result, Some(json!({"stdout": "a\u{FFFD}b"})));
    let job = app.wait_final(err, 5).await;
    assert_eq!(job.status, Status::Dead, "{job:?}");
    let error = job.last_error.unwrap_or_default();
    assert!(error.contains("broken\u{FFFD}bytes"), "{error}");
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
        assert_eq!(job.status, Status::Succeeded, "{job:?}");
        assert_eq!(job.result.as_ref(), Some(payload));
    }
    for id in &poison {
        let job = app.wait_final(*id, 5).await;
        assert_eq!(job.status, Status::Dead, "{job:?}");
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
        job.status,
        Status::Queued,
        "a broken queue is not the job's fault: it waits, not dead: {job:?}"
    );

    // Once the key is fixed, the waiting job goes through.
    let _: i64 = redis.del(redis_key(&app, "broken", "ready")).await.unwrap();
    assert_eq!(app.wait_final(stuck, 10).await.status, Status::Succeeded);
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
    assert_eq!(job.status, Status::Dead, "{job:?}");
    let error = job.last_error.unwrap_or_default();
    assert!(
        error.contains("Redis refused to dispatch this job") && error.contains("not a job hash"),
        "{error}"
    );
    for id in neighbours {
        assert_eq!(app.wait_final(id, 5).await.status, Status::Succeeded);
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
        assert_eq!(job.status, Status::Succeeded, "{job:?}");
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

/// Waits until the job's row is final; returns its status and last error, read
/// without decoding the payload or result.
async fn final_status(app: &TestApp, id: Uuid, secs: u64) -> (String, Option<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, error): (String, Option<String>) =
            sqlx::query_as("SELECT status, last_error FROM jobrunner.jobs WHERE id = $1")
                .bind(id)
                .fetch_one(app.ledger.pool())
                .await
                .unwrap();
        if ["succeeded", "dead", "cancelled"].contains(&status.as_str()) {
            return (status, error);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} still {status} after {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One poison item of the property test below.
#[derive(Debug, Clone)]
enum Poison {
    /// The handler returns a string of these code points (NUL among them).
    Result(Vec<char>),
    /// The handler fails for good with this text.
    Error(Vec<char>),
    /// The handler fails with a text of about this many bytes, NULs inside.
    Huge(usize),
    /// The handler returns arrays nested this deep.
    Deep(usize),
    /// The handler reports progress with this message, then succeeds.
    Progress(Vec<char>),
    /// A producer hands this JSON text to `jobrunner.enqueue` as the payload.
    Payload(String),
    /// A row written straight into the table with this `run_at` (Postgres text).
    RunAt(String),
}

fn poison_strategy() -> impl proptest::strategy::Strategy<Value = Poison> {
    use proptest::prelude::*;
    let chars = proptest::collection::vec(
        prop_oneof![
            Just('\0'),
            any::<char>(),
            proptest::char::range('\u{d7ff}', '\u{e000}'),
        ],
        0..40,
    );
    let year = |y: i32| format!("{y:04}-06-15T12:00:00Z");
    prop_oneof![
        chars.clone().prop_map(Poison::Result),
        chars.clone().prop_map(Poison::Error),
        (1usize..2_000_000).prop_map(Poison::Huge),
        (1usize..3000).prop_map(Poison::Deep),
        chars.prop_map(Poison::Progress),
        prop_oneof![
            Just(r#"{"s": "\u0000"}"#.to_owned()),
            Just(r#"{"s": "\ud800"}"#.to_owned()),
            Just(r#"{"s": "x\udfffy", "\u0000": 1}"#.to_owned()),
            (1usize..20_000).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
            "\\PC{0,200}".prop_map(|s| serde_json::json!({ "s": s }).to_string()),
        ]
        .prop_map(Poison::Payload),
        prop_oneof![
            Just("infinity".to_owned()),
            Just("-infinity".to_owned()),
            (1i32..1970).prop_map(year),
            (10_000i32..200_000).prop_map(year),
            (1970i32..2026).prop_map(year),
            (2030i32..10_000).prop_map(year),
        ]
        .prop_map(Poison::RunAt),
    ]
}

/// A handler that does what its payload says, for the property test.
async fn probe(ctx: jobrunner::jobs::JobContext) -> jobrunner::jobs::JobResult {
    use jobrunner::jobs::JobError;
    let p = &ctx.payload;
    let text = || -> String {
        p["cp"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_u64().and_then(|c| char::from_u32(c as u32)))
            .collect()
    };
    let n = p["n"].as_u64().unwrap_or(0) as usize;
    match p["mode"].as_str() {
        Some("result") => Ok(serde_json::Value::String(text())),
        Some("error") => Err(JobError::permanent(text())),
        Some("huge") => Err(JobError::permanent("ab\0".repeat(n / 3 + 1))),
        Some("deep") => {
            let mut v = json!("bottom\0");
            for _ in 0..n {
                v = serde_json::Value::Array(vec![v]);
            }
            Ok(v)
        }
        Some("progress") => {
            ctx.progress(50, text());
            Ok(json!({}))
        }
        _ => Ok(json!({"payload": p.clone()})),
    }
}

/// Random poison next to ordinary jobs: whatever the payload, result, error
/// text, progress message or run_at, ordinary jobs all succeed, every poison
/// job ends (or is refused at enqueue, or waits for a valid future time), and
/// the daemon stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_poison_never_holds_up_ordinary_jobs_or_breaks_the_daemon() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config as PropConfig, TestRunner};

    let app = spawn_app().await;
    let mut registry = jobrunner_kinds::registry(&app.config);
    registry.register("probe", probe);
    let daemon = app.start_daemon_with(app.config.clone(), registry).await;
    let addr = daemon.admin_addr().expect("admin listener");

    let mut runner = TestRunner::new(PropConfig::with_cases(12));
    let strategy = proptest::collection::vec(poison_strategy(), 1..5);
    for case in 0..12 {
        let items = strategy
            .new_tree(&mut runner)
            .expect("a generated case")
            .current();
        let mut waiting = Vec::new(); // (id, the item, whether it must end dead)
        for item in &items {
            let cp = |s: &Vec<char>| s.iter().map(|c| *c as u32).collect::<Vec<_>>();
            let payload = match item {
                Poison::Result(s) => Some(json!({"mode": "result", "cp": cp(s)})),
                Poison::Error(s) => Some(json!({"mode": "error", "cp": cp(s)})),
                Poison::Huge(n) => Some(json!({"mode": "huge", "n": n})),
                Poison::Deep(n) => Some(json!({"mode": "deep", "n": n})),
                Poison::Progress(s) => Some(json!({"mode": "progress", "cp": cp(s)})),
                Poison::Payload(_) | Poison::RunAt(_) => None,
            };
            if let Some(payload) = payload {
                waiting.push((app.enqueue("probe", payload).await, item.clone()));
                continue;
            }
            match item {
                Poison::Payload(text) => {
                    let id: Result<Uuid, _> =
                        sqlx::query_scalar("SELECT jobrunner.enqueue('probe', $1::text::jsonb)")
                            .bind(text)
                            .fetch_one(app.ledger.pool())
                            .await;
                    // Refused at the door is a fine answer too.
                    if let Ok(id) = id {
                        waiting.push((id, item.clone()));
                    }
                }
                Poison::RunAt(at) => {
                    waiting.push((insert_raw(&app, "default", "probe", at).await, item.clone()))
                }
                _ => unreachable!("handled above"),
            }
        }
        let mut ordinary = Vec::new();
        for i in 0..5 {
            ordinary.push(app.enqueue("noop", json!({"case": case, "i": i})).await);
        }
        for id in ordinary {
            let job = app.wait_final(id, 10).await;
            assert_eq!(job.status, Status::Succeeded, "case {items:?}: {job:?}");
        }
        for (id, item) in waiting {
            let year: Option<i32> = match &item {
                Poison::RunAt(at) => at.split('-').next().and_then(|y| y.parse().ok()),
                _ => None,
            };
            if year.is_some_and(|y| (2030..10_000).contains(&y)) {
                // A valid future time: it waits (the raw row says `queued`).
                let job = app.ledger.job(id).await.unwrap();
                assert_eq!(job.status, Status::Queued, "case {items:?}: {job:?}");
                assert_eq!(job.attempts, 0, "case {items:?}: {job:?}");
                continue;
            }
            // Read raw: a payload SQL accepted may be too deep for a reader.
            let (status, error) = final_status(&app, id, 10).await;
            let in_range = year.is_some_and(|y| (1970..10_000).contains(&y));
            let job = (&status, &error, &item);
            match &item {
                Poison::RunAt(_) if !in_range => {
                    assert_eq!(status, "dead", "case {items:?}: {job:?}");
                    assert!(error.as_deref().unwrap_or("").contains("run_at"), "{job:?}");
                }
                Poison::Error(_) | Poison::Huge(_) => {
                    assert_eq!(status, "dead", "case {items:?}: {job:?}");
                }
                Poison::Result(_) | Poison::Progress(_) => {
                    assert_eq!(status, "succeeded", "case {items:?}: {job:?}");
                }
                _ => {} // ended, one way or the other
            }
        }
    }
    let body = reqwest_get(&format!("http://{addr}/readyz")).await;
    assert!(body.contains("\"ready\""), "the daemon is whole: {body}");
    daemon.stop().await;
}
