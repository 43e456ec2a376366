//! arq wire compatibility, with the keys written the way arq's client writes
//! them (the Python suite in clients/python/tests drives arq's own client; these
//! run without Python): jobs taken from an arq queue run as jobrunner jobs, and
//! arq's result record and queue entry end the way arq's worker leaves them.

use std::io::BufRead;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{TestApp, send_to_redis, spawn_app};
use jobrunner::arq::pickle::{self, Value};
use jobrunner::arq::{ArqConfig, ArqFunction};
use jobrunner::config::Config;
use jobrunner::ledger::Status;

/// A reply as a minimal RESP client reads it.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Nil,
    Int(i64),
    Bytes(Vec<u8>),
    Array(Vec<Reply>),
    Error(String),
}

fn read_reply(r: &mut impl BufRead) -> Reply {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).expect("reply");
    let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    match line[0] {
        b'+' => Reply::Bytes(text.into_bytes()),
        b'-' => Reply::Error(text),
        b':' => Reply::Int(text.parse().expect("integer")),
        b'$' => {
            let n: i64 = text.parse().expect("length");
            if n < 0 {
                return Reply::Nil;
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf).expect("bulk");
            buf.truncate(n as usize);
            Reply::Bytes(buf)
        }
        b'*' => {
            let n: i64 = text.parse().expect("count");
            if n < 0 {
                return Reply::Nil;
            }
            Reply::Array((0..n).map(|_| read_reply(r)).collect())
        }
        other => panic!("unexpected reply type {other}"),
    }
}

/// One command with binary-safe arguments over a fresh connection, the way
/// arq's client (redis-py) sends it.
fn redis(app: &TestApp, args: &[&[u8]]) -> Reply {
    read_reply(&mut send_to_redis(app, args))
}

fn s(text: &str) -> Value {
    Value::Str(text.to_owned())
}

/// A pickled arq job body: `{t, f, a, k, et}` as `serialize_job` writes it.
fn pickled_job(function: &str, args: Vec<Value>, kwargs: Vec<(&str, Value)>) -> Vec<u8> {
    pickle::encode(&Value::Dict(vec![
        (s("t"), Value::None),
        (s("f"), s(function)),
        (s("a"), Value::Tuple(args)),
        (
            s("k"),
            Value::Dict(kwargs.into_iter().map(|(k, v)| (s(k), v)).collect()),
        ),
        (
            s("et"),
            Value::Int(chrono::Utc::now().timestamp_millis() as i128),
        ),
    ]))
}

/// What arq's `enqueue_job` does: the body with an expiry, then the queue entry.
fn arq_enqueue(app: &TestApp, queue: &str, id: &str, body: &[u8], due_ms: i64) {
    let key = format!("arq:job:{id}");
    assert_eq!(
        redis(app, &[b"PSETEX", key.as_bytes(), b"86400000", body]),
        Reply::Bytes(b"OK".to_vec())
    );
    let score = due_ms.to_string();
    assert_eq!(
        redis(
            app,
            &[b"ZADD", queue.as_bytes(), score.as_bytes(), id.as_bytes()]
        ),
        Reply::Int(1)
    );
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn with_arq(app: &TestApp, arq: ArqConfig) -> Config {
    let mut config = app.config.clone();
    config.set_section(&ArqConfig {
        queues: vec!["arq:queue".into()],
        poll_interval: Duration::from_millis(50),
        ..arq
    });
    config
}

/// Waits for arq's result record of `id` and reads it (pickle).
async fn result_record(app: &TestApp, id: &str) -> Vec<u8> {
    let key = format!("arq:result:{id}");
    for _ in 0..200 {
        if let Reply::Bytes(b) = redis(app, &[b"GET", key.as_bytes()]) {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no result record for arq job {id} within 10s");
}

fn field<'a>(record: &'a Value, name: &str) -> &'a Value {
    let Value::Dict(pairs) = record else {
        panic!("record is not a dict: {record:?}")
    };
    &pairs
        .iter()
        .find(|(k, _)| k == &s(name))
        .unwrap_or_else(|| panic!("no {name} in {record:?}"))
        .1
}

#[tokio::test]
async fn an_arq_job_runs_as_a_job_and_leaves_the_result_arqs_client_reads() {
    let app = spawn_app().await;
    let mut functions = std::collections::BTreeMap::new();
    functions.insert(
        "echo".to_owned(),
        ArqFunction {
            kind: Some("noop".into()),
            args: vec!["campaign_id".into()],
            queue: None,
        },
    );
    let daemon = app
        .start_daemon_with(
            with_arq(
                &app,
                ArqConfig {
                    functions,
                    ..ArqConfig::default()
                },
            ),
            jobrunner::jobs::Registry::builtin(&app.config),
        )
        .await;
    let id = "8a7c0e3f5b9d4c2a9e1f0a2b3c4d5e6f";
    let body = pickled_job("echo", vec![Value::Int(42)], vec![("note", s("é"))]);
    arq_enqueue(&app, "arq:queue", id, &body, now_ms());

    let job = app.wait_final(jobrunner::arq::wire::job_id(id), 10).await;
    assert_eq!(job.status, Status::Succeeded);
    assert_eq!(job.kind, "noop");
    assert_eq!(job.payload, json!({"campaign_id": 42, "note": "é"}));
    let record = pickle::decode(&result_record(&app, id).await).expect("a readable record");
    // The arq id is recorded with the job (before its result is written).
    assert_eq!(
        app.ledger.jobs_by_external_id("arq", id).await.unwrap(),
        vec![job.id]
    );
    assert_eq!(field(&record, "s"), &Value::Bool(true));
    assert_eq!(
        field(&record, "r").to_json().unwrap(),
        json!({"campaign_id": 42, "note": "é"})
    );
    assert_eq!(field(&record, "f"), &s("echo"));
    assert_eq!(field(&record, "a"), &Value::Tuple(vec![Value::Int(42)]));
    assert_eq!(field(&record, "id"), &s(id));
    // As arq's worker leaves it: out of the queue, body and in-progress gone.
    assert_eq!(
        redis(&app, &[b"ZSCORE", b"arq:queue", id.as_bytes()]),
        Reply::Nil
    );
    assert_eq!(
        redis(&app, &[b"EXISTS", format!("arq:job:{id}").as_bytes()]),
        Reply::Int(0)
    );
    let ttl = redis(&app, &[b"PTTL", format!("arq:result:{id}").as_bytes()]);
    assert!(matches!(ttl, Reply::Int(ms) if ms > 3_000_000), "{ttl:?}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_deferred_arq_job_waits_in_the_arq_queue_until_due() {
    let app = spawn_app().await;
    let daemon = app
        .start_daemon_with(
            with_arq(&app, ArqConfig::default()),
            jobrunner::jobs::Registry::builtin(&app.config),
        )
        .await;
    let id = "deferred-1";
    let due = now_ms() + 1500;
    arq_enqueue(
        &app,
        "arq:queue",
        id,
        &pickled_job("noop", vec![], vec![]),
        due,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Not taken yet: the score is still the due time, and no job exists.
    assert_eq!(
        redis(&app, &[b"ZSCORE", b"arq:queue", id.as_bytes()]),
        Reply::Bytes(due.to_string().into_bytes())
    );
    let job = app.wait_final(jobrunner::arq::wire::job_id(id), 10).await;
    assert_eq!(job.status, Status::Succeeded);
    // Not a UUID: the job id is derived from it, and it is recorded (before
    // the result is written).
    result_record(&app, id).await;
    assert_eq!(
        app.ledger.jobs_by_external_id("arq", id).await.unwrap(),
        vec![job.id]
    );
    assert!(
        job.started_at.expect("started").timestamp_millis() >= due,
        "ran before it was due"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_pickle_naming_a_forbidden_global_ends_dead_naming_it() {
    let app = spawn_app().await;
    let daemon = app
        .start_daemon_with(
            with_arq(&app, ArqConfig::default()),
            jobrunner::jobs::Registry::builtin(&app.config),
        )
        .await;
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/pickle/refused_eval_reduce.p4.pickle"
    );
    let body = std::fs::read(fixture).expect("fixture");
    let id = "0f0e0d0c-0b0a-4908-8706-050403020100";
    arq_enqueue(&app, "arq:queue", id, &body, now_ms());

    let job = app.wait_final(jobrunner::arq::wire::job_id(id), 10).await;
    assert_eq!(job.status, Status::Dead);
    let error = job.last_error.unwrap_or_default();
    assert!(error.contains("builtins.eval is not allowed"), "{error}");
    // arq's Job.result() raises arq.worker.JobExecutionFailed with the reason.
    let record = result_record(&app, id).await;
    let text = String::from_utf8_lossy(&record);
    assert!(text.contains("JobExecutionFailed"), "{text}");
    assert!(text.contains("builtins.eval is not allowed"), "{text}");
    daemon.stop().await;
}

#[tokio::test]
async fn an_aborted_arq_job_is_cancelled_and_its_result_is_a_cancelled_error() {
    let app = spawn_app().await;
    let daemon = app
        .start_daemon_with(
            with_arq(&app, ArqConfig::default()),
            jobrunner::jobs::Registry::builtin(&app.config),
        )
        .await;
    let id = "sleeper";
    let body = pickled_job("sleep", vec![], vec![("ms", Value::Int(30_000))]);
    arq_enqueue(&app, "arq:queue", id, &body, now_ms());
    let uuid = jobrunner::arq::wire::job_id(id);
    // The row exists once the ingester recorded the taken job.
    for _ in 0..200 {
        if app.ledger.job(uuid).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.wait_until(uuid, 10, "running", |j| j.status == Status::Running)
        .await;
    // arq's Job.status() reads the in-progress key while it runs.
    for _ in 0..100 {
        if redis(
            &app,
            &[b"EXISTS", format!("arq:in-progress:{id}").as_bytes()],
        ) == Reply::Int(1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        redis(
            &app,
            &[b"EXISTS", format!("arq:in-progress:{id}").as_bytes()]
        ),
        Reply::Int(1)
    );
    // What Job.abort() writes.
    let now = now_ms().to_string();
    redis(
        &app,
        &[b"ZADD", b"arq:abort", now.as_bytes(), id.as_bytes()],
    );

    let job = app.wait_final(uuid, 10).await;
    assert_eq!(job.status, Status::Cancelled);
    let record = result_record(&app, id).await;
    let text = String::from_utf8_lossy(&record);
    assert!(
        text.contains("asyncio.exceptions\nCancelledError"),
        "{text}"
    );
    assert_eq!(
        redis(&app, &[b"ZSCORE", b"arq:abort", id.as_bytes()]),
        Reply::Nil
    );
    assert_eq!(
        redis(
            &app,
            &[b"EXISTS", format!("arq:in-progress:{id}").as_bytes()]
        ),
        Reply::Int(0)
    );
    daemon.stop().await;
}

#[tokio::test]
async fn jobrunners_own_ready_queue_is_never_read_as_an_arq_queue() {
    let app = spawn_app().await;
    let mut config = app.config.clone();
    let own = format!("{}:{{default}}:ready", app.config.redis.key_prefix);
    config.set_section(&ArqConfig {
        queues: vec![own.clone()],
        ..ArqConfig::default()
    });
    // The braces alone are refused when the file is read...
    let toml = format!("[arq]\nqueues = [{own:?}]\n");
    let mut claims = jobrunner_kinds::sections();
    claims.extend(jobrunner::arq::sections());
    let error =
        Config::from_toml_with(&toml, "arq.toml", &claims).expect_err("a tagged key is refused");
    assert!(
        error.to_string().contains("arq.queues") || error.to_string().contains("queues"),
        "{error}"
    );
    // ...and a name under jobrunner's prefix by the start-up check.
    config.set_section(&ArqConfig {
        queues: vec![format!("{}:arq", app.config.redis.key_prefix)],
        ..ArqConfig::default()
    });
    let problems = jobrunner::arq::check(&config).expect_err("refused");
    assert!(
        problems.contains("jobrunner's own key prefix"),
        "{problems}"
    );
    let mut cluster = config.clone();
    cluster.set_section(&ArqConfig {
        queues: vec!["arq:queue".into()],
        ..ArqConfig::default()
    });
    cluster.redis.url = "redis-cluster://127.0.0.1:7000".to_string().into();
    let problems = jobrunner::arq::check(&cluster).expect_err("refused");
    assert!(problems.contains("not Redis Cluster"), "{problems}");
}
