//! The Redis-direct protocol as docs/PROTOCOL.md tells producers to use it: the
//! script text copied from the doc, sent with EVAL over a plain RESP connection.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use serde_json::json;

use crate::helpers::{TestApp, spawn_app};
use jobrunner::ledger::Status;

/// The ```lua block of docs/PROTOCOL.md.
fn documented_script() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md"))
        .expect("docs/PROTOCOL.md");
    let start = doc.find("```lua\n").expect("a ```lua block") + "```lua\n".len();
    let end = start + doc[start..].find("\n```").expect("end of the lua block");
    doc[start..end].to_owned()
}

/// A reply from Redis, as a producer's client would see it.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Int(i64),
    Error(String),
    Other(String),
}

/// One command over a fresh connection: as little client as a producer could have.
pub fn redis_command(app: &TestApp, args: &[&str]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", app.redis.port())).expect("connect");
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(request.as_bytes()).expect("send");
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("reply");
    let line = line.trim_end();
    match line.split_at(1) {
        (":", n) => Reply::Int(n.parse().expect("integer reply")),
        ("-", e) => Reply::Error(e.to_owned()),
        _ => Reply::Other(line.to_owned()),
    }
}

fn enqueue(app: &TestApp, id: &str, kind: &str, payload: &str) -> Reply {
    enqueue_on(app, "default", id, kind, payload, 0)
}

/// The documented script on `queue`, with a delay before the job may run.
pub fn enqueue_on(
    app: &TestApp,
    queue: &str,
    id: &str,
    kind: &str,
    payload: &str,
    delay_ms: u64,
) -> Reply {
    let prefix = &app.config.redis.key_prefix;
    let job_key = format!("{prefix}:{{{queue}}}:job:{id}");
    let ingest_key = format!("{prefix}:{{{queue}}}:ingest");
    let script = documented_script();
    let delay = delay_ms.to_string();
    redis_command(
        app,
        &[
            "EVAL",
            &script,
            "2",
            &job_key,
            &ingest_key,
            id,
            kind,
            payload,
            "0",
            "0",
            &delay,
        ],
    )
}

#[test]
fn the_documented_script_is_the_one_the_daemon_ships() {
    // The fenced block plus the newline that ends its last line.
    assert_eq!(
        format!("{}\n", documented_script()),
        jobrunner::broker::enqueue_script_source()
    );
}

#[test]
fn the_python_clients_script_is_the_one_the_daemon_ships() {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../clients/python/src/jobrunner_client/enqueue.lua"
    ))
    .expect("the Python client's enqueue.lua");
    assert_eq!(shipped, jobrunner::broker::enqueue_script_source());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_with_a_bare_resp_client_enqueues_once_per_id() {
    let app = spawn_app().await;
    let id = uuid::Uuid::now_v7().to_string();
    assert_eq!(enqueue(&app, &id, "noop", r#"{"n": 1}"#), Reply::Int(1));
    assert_eq!(
        enqueue(&app, &id, "noop", r#"{"n": 2}"#),
        Reply::Int(0),
        "the same id again while unfinished changes nothing"
    );
    let daemon = app.start_daemon().await;
    let job = app.wait_final(id.parse().unwrap(), 10).await;
    assert_eq!(job.status, Status::Succeeded);
    assert_eq!(job.result, Some(json!({"n": 1})));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uppercase_or_malformed_id_is_an_error_reply() {
    let app = spawn_app().await;
    let upper = uuid::Uuid::now_v7().to_string().to_uppercase();
    for id in [upper.as_str(), "42", "not-a-uuid"] {
        match enqueue(&app, id, "noop", "{}") {
            Reply::Error(e) => assert!(e.contains("36-character lowercase form"), "{e}"),
            other => panic!("id {id}: expected an error reply, got {other:?}"),
        }
    }
    assert_eq!(app.broker.depth("default").await.unwrap(), (0, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_postgres_cannot_store_is_an_error_reply() {
    let app = spawn_app().await;
    let id = uuid::Uuid::now_v7().to_string();
    match enqueue(&app, &id, "noop", r#"{"name": "a\u0000b"}"#) {
        Reply::Error(e) => assert!(e.contains("U+0000"), "{e}"),
        other => panic!("expected an error reply, got {other:?}"),
    }
    let deep = format!("{}{}", "[".repeat(101), "]".repeat(101));
    match enqueue(&app, &id, "noop", &deep) {
        Reply::Error(e) => assert!(e.contains("deeper than 100 levels"), "{e}"),
        other => panic!("expected an error reply, got {other:?}"),
    }
    assert_eq!(app.broker.depth("default").await.unwrap(), (0, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_sending_a_finished_jobs_id_does_not_run_it_again() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let id = uuid::Uuid::now_v7().to_string();
    assert_eq!(enqueue(&app, &id, "noop", r#"{"run": 1}"#), Reply::Int(1));
    let first = app.wait_final(id.parse().unwrap(), 10).await;
    assert_eq!(first.status, Status::Succeeded);

    assert_eq!(enqueue(&app, &id, "noop", r#"{"run": 2}"#), Reply::Int(1));
    // Once the ingest list is empty again, the re-sent copy has been dealt with.
    for _ in 0..100 {
        if app.broker.depth("default").await.unwrap() == (0, 0, 0, 0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.broker.depth("default").await.unwrap(), (0, 0, 0, 0));
    let job = app.ledger.job(first.id).await.unwrap();
    assert_eq!(job.result, Some(json!({"run": 1})));
    assert_eq!(job.attempts, 1);
    assert_eq!(
        job.updated_at, first.updated_at,
        "the finished row was not touched"
    );
    // Its payload differs from the finished job's: admins see the copy.
    let mut entries = Vec::new();
    for _ in 0..100 {
        entries = app.ledger.quarantined(Some(first.id), 5).await.unwrap();
        if !entries.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(entries.len(), 1, "{entries:?}");
    daemon.stop().await;
}
