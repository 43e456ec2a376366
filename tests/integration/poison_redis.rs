//! Poison on the Redis path: values the ENQUEUE script refuses at the door, and
//! entries written into the ingest structures by hand (bypassing the script) that
//! end `dead` or quarantined while every ordinary job next to them runs.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use jobrunner::broker::RedisEnqueue;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, send_to_redis, spawn_app};
use jobrunner::ledger::Status;

/// One command with binary-safe arguments over a fresh connection. Returns the
/// first reply line (`+OK`, `:1`, `-ERR …`, `$n` for a bulk string).
pub fn raw(app: &TestApp, args: &[&[u8]]) -> String {
    let mut line = String::new();
    send_to_redis(app, args)
        .read_line(&mut line)
        .expect("reply");
    line.trim_end().to_owned()
}

pub fn key(app: &TestApp, what: &str) -> String {
    format!("{}:{{default}}:{what}", app.config.redis.key_prefix)
}

/// Writes a job hash and its ingest entry by hand, as a producer bypassing the
/// script might.
pub fn hand_written(app: &TestApp, entry: &[u8], fields: &[(&str, &[u8])]) {
    let mut job_key = key(app, "job:").into_bytes();
    job_key.extend_from_slice(entry);
    if !fields.is_empty() {
        let mut args: Vec<&[u8]> = vec![b"HSET", &job_key];
        for (f, v) in fields {
            args.push(f.as_bytes());
            args.push(v);
        }
        assert_eq!(raw(app, &args).chars().next(), Some(':'));
    }
    let ingest = key(app, "ingest");
    assert!(raw(app, &[b"RPUSH", ingest.as_bytes(), entry]).starts_with(':'));
}

/// The fields the ENQUEUE script writes, for a job that runs now.
pub fn ordinary_fields(payload: &str) -> Vec<(&'static str, Vec<u8>)> {
    let now = chrono::Utc::now().timestamp_millis().to_string();
    vec![
        ("kind", b"noop".to_vec()),
        ("payload", payload.as_bytes().to_vec()),
        ("priority", b"0".to_vec()),
        ("max_attempts", b"0".to_vec()),
        ("attempts", b"0".to_vec()),
        ("created_ms", now.clone().into_bytes()),
        ("run_ms", now.into_bytes()),
    ]
}

fn with(
    fields: &[(&'static str, Vec<u8>)],
    name: &str,
    value: Option<&[u8]>,
) -> Vec<(&'static str, Vec<u8>)> {
    let mut out: Vec<(&'static str, Vec<u8>)> =
        fields.iter().filter(|(f, _)| *f != name).cloned().collect();
    if let Some(v) = value {
        let f = fields
            .iter()
            .find(|(f, _)| *f == name)
            .map_or("extra", |(f, _)| f);
        out.push((f, v.to_vec()));
    }
    out
}

fn borrowed<'a>(fields: &'a [(&'static str, Vec<u8>)]) -> Vec<(&'static str, &'a [u8])> {
    fields.iter().map(|(f, v)| (*f, v.as_slice())).collect()
}

/// Ordinary jobs through the documented script path.
pub async fn ordinary(app: &TestApp, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            app.broker
                .enqueue(&RedisEnqueue {
                    queue: "default".into(),
                    kind: "noop".into(),
                    payload: json!({ "n": i }).to_string(),
                    ..RedisEnqueue::default()
                })
                .await
                .expect("an ordinary enqueue"),
        );
    }
    ids
}

pub async fn all_succeed(app: &TestApp, ids: &[Uuid], secs: u64) {
    for id in ids {
        let job = app.wait_final(*id, secs).await;
        assert_eq!(job.status, Status::Succeeded, "{job:?}");
    }
}

pub async fn quarantined_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobrunner.quarantine")
        .fetch_one(app.ledger.pool())
        .await
        .expect("count quarantine")
}

/// Waits until Redis holds nothing of the queue: every entry was dealt with.
pub async fn wait_redis_empty(app: &TestApp, secs: u64) {
    for _ in 0..secs * 20 {
        if app.broker.depth("default").await.unwrap() == (0, 0, 0, 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "Redis still holds jobs: {:?}",
        app.broker.depth("default").await.unwrap()
    );
}

fn metrics_text(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_poison_ends_dead_or_quarantined_and_every_ordinary_job_runs() {
    let app = spawn_app().await;
    let fields = ordinary_fields("{}");
    let mut dead: Vec<(Uuid, &str)> = Vec::new();
    let mut good = ordinary(&app, 5).await;
    // An out-of-range timestamp, each way; a number that is not whole.
    for (name, value, expect) in [
        ("run_ms", &b"-99999999999999999"[..], "field run_ms"),
        ("created_ms", b"999999999999999999", "field created_ms"),
        ("run_ms", b"1e18", "field run_ms"),
        ("priority", b"1.5", "field priority"),
        ("max_attempts", b"-3", "field max_attempts"),
    ] {
        let id = Uuid::now_v7();
        hand_written(
            &app,
            id.to_string().as_bytes(),
            &borrowed(&with(&fields, name, Some(value))),
        );
        dead.push((id, expect));
    }
    good.extend(ordinary(&app, 5).await);
    // Missing fields, a garbled kind, a payload Postgres cannot store, bytes that
    // are not UTF-8.
    for (name, value, expect) in [
        ("kind", None, "field kind is missing"),
        ("payload", None, "field payload is missing"),
        ("kind", Some(&b"no kind!"[..]), "is not 1-64 letters"),
        ("payload", Some(br#"{"name": "a\u0000b"}"#), "U+0000"),
        ("payload", Some(b"{\"a\": \"\xff\xfe\"}"), "not valid UTF-8"),
        ("payload", Some(b"{not json"), "not valid JSON"),
    ] {
        let id = Uuid::now_v7();
        hand_written(
            &app,
            id.to_string().as_bytes(),
            &borrowed(&with(&fields, name, value)),
        );
        dead.push((id, expect));
    }
    // A job key of the wrong type.
    let wrong = Uuid::now_v7();
    let wrong_key = format!("{}{wrong}", key(&app, "job:"));
    assert_eq!(raw(&app, &[b"SET", wrong_key.as_bytes(), b"x"]), "+OK");
    hand_written(&app, wrong.to_string().as_bytes(), &[]);
    dead.push((wrong, "a Redis string, not a hash"));
    // An uppercase id with a good hash: tied to its job, which ends dead.
    let upper = Uuid::now_v7();
    hand_written(
        &app,
        upper.to_string().to_uppercase().as_bytes(),
        &borrowed(&fields),
    );
    dead.push((upper, "lowercase form"));
    // Entries that are no job id at all: quarantined.
    hand_written(&app, b"not-a-uuid", &borrowed(&fields));
    hand_written(&app, b"\xff\x00garbage", &[]);
    good.extend(ordinary(&app, 5).await);

    let daemon = app.start_daemon().await;
    all_succeed(&app, &good, 10).await;
    for (id, expect) in &dead {
        let job = app.wait_final(*id, 10).await;
        assert_eq!((job.status.as_str(), job.attempts), ("dead", 0), "{job:?}");
        let error = job.last_error.unwrap_or_default();
        assert!(error.contains(expect), "{id}: {error:?} lacks {expect:?}");
    }
    wait_redis_empty(&app, 5).await;
    let entries = app.ledger.quarantined(None, 10).await.unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(
        entries
            .iter()
            .all(|q| q.source == "ingest" && q.job_id.is_none())
    );
    assert!(
        entries.iter().any(|q| q.raw.contains("\\xff\\0garbage")),
        "{entries:?}"
    );
    let metrics = metrics_text(daemon.admin_addr().expect("admin listener"));
    assert!(
        metrics.contains("jobrunner_quarantined_total{source=\"ingest\"} 2"),
        "{metrics}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_past_the_year_9999_is_refused_at_the_door() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let script = jobrunner::broker::enqueue_script_source();
    let id = Uuid::now_v7().to_string();
    let job_key = format!("{}{id}", key(&app, "job:"));
    let ingest = key(&app, "ingest");
    for delay in [
        "1e18",
        "1000000000000000000",
        "9999999999999999999999",
        "-1",
        "5.5",
    ] {
        let reply = raw(
            &app,
            &[
                b"EVAL",
                script.as_bytes(),
                b"2",
                job_key.as_bytes(),
                ingest.as_bytes(),
                id.as_bytes(),
                b"noop",
                b"{}",
                b"0",
                b"0",
                delay.as_bytes(),
            ],
        );
        assert!(
            reply.starts_with("-ERR jobrunner: delay_ms must be a whole number"),
            "delay {delay}: {reply}"
        );
    }
    let refused = app
        .broker
        .enqueue(&RedisEnqueue {
            queue: "default".into(),
            kind: "noop".into(),
            payload: "{}".into(),
            delay_ms: 1_000_000_000_000_000_000,
            ..RedisEnqueue::default()
        })
        .await;
    let error = jobrunner::error_chain(&refused.expect_err("refused"));
    assert!(error.contains("before the year 10000"), "{error}");
    let good = ordinary(&app, 10).await;
    all_succeed(&app, &good, 5).await;
    assert_eq!(app.count_jobs().await, 10);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uppercase_id_written_into_redis_ends_dead_instead_of_queued_forever() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let id = Uuid::now_v7();
    let fields = ordinary_fields(r#"{"x": 1}"#);
    hand_written(
        &app,
        id.to_string().to_uppercase().as_bytes(),
        &borrowed(&fields),
    );
    let good = ordinary(&app, 10).await;
    let job = app.wait_final(id, 5).await;
    assert_eq!(job.status, Status::Dead);
    assert!(
        job.last_error
            .unwrap()
            .contains("36-character lowercase form")
    );
    all_succeed(&app, &good, 5).await;
    wait_redis_empty(&app, 5).await;
    // The admin's view of it.
    let (code, out, err) = app.cli(&["inspect", &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("dead") && out.contains("quarantine   -"),
        "{out}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_list_of_the_wrong_type_is_moved_aside_and_enqueueing_works_again() {
    let app = spawn_app().await;
    let ingest = key(&app, "ingest");
    assert_eq!(raw(&app, &[b"SET", ingest.as_bytes(), b"oops"]), "+OK");
    let daemon = app.start_daemon().await;
    for _ in 0..100 {
        if quarantined_count(&app).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let entries = app.ledger.quarantined(None, 10).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].error.contains("not a list"), "{entries:?}");
    let moved = format!("{ingest}:bad");
    assert_eq!(raw(&app, &[b"TYPE", moved.as_bytes()]), "+string");
    let good = ordinary(&app, 10).await;
    all_succeed(&app, &good, 5).await;
    let (code, out, err) = app.cli(&["quarantine", "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["quarantine"].as_array().map(Vec::len), Some(1), "{doc}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_a_quarantined_id_that_has_no_row() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    // Uppercase and no hash: nothing to record as a job, but tied to an id.
    let id = Uuid::now_v7();
    hand_written(&app, id.to_string().to_uppercase().as_bytes(), &[]);
    for _ in 0..100 {
        if quarantined_count(&app).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let entries = app.ledger.quarantined(Some(id), 10).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (code, out, err) = app.cli(&["inspect", &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("quarantined") && out.contains("no job hash"),
        "{out}"
    );
    let (code, out, _) = app.cli(&["quarantine"]);
    assert_eq!(code, 0);
    assert!(out.contains(&id.to_string()), "{out}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_postgres_refuses_are_bisected_out_dead_or_quarantined_and_the_batch_goes_in() {
    let app = spawn_app().await;
    // Stands in for anything Postgres refuses that no check foresaw: a data
    // exception for marked rows, as the job (live) or even as a dead job (always).
    for statement in [
        r#"CREATE FUNCTION public.refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF NEW.payload::text LIKE '%refuse-always%'
                OR (NEW.status <> 'dead' AND NEW.payload::text LIKE '%refuse-live%') THEN
               RAISE EXCEPTION 'this test refuses the row' USING ERRCODE = '22023';
             END IF;
             RETURN NEW;
           END $$"#,
        "CREATE TRIGGER refuse_marked BEFORE INSERT ON jobrunner.jobs
           FOR EACH ROW EXECUTE FUNCTION public.refuse_marked()",
    ] {
        sqlx::query(statement)
            .execute(app.ledger.pool())
            .await
            .expect("install the trigger");
    }
    let marked = |mark: &str| RedisEnqueue {
        queue: "default".into(),
        kind: "noop".into(),
        payload: json!({ "mark": mark }).to_string(),
        ..RedisEnqueue::default()
    };
    let mut good = ordinary(&app, 100).await;
    let live = app.broker.enqueue(&marked("refuse-live")).await.unwrap();
    good.extend(ordinary(&app, 100).await);
    let always = app.broker.enqueue(&marked("refuse-always")).await.unwrap();
    good.extend(ordinary(&app, 100).await);

    let started = std::time::Instant::now();
    let daemon = app.start_daemon().await;
    all_succeed(&app, &good, 10).await;
    eprintln!(
        "300 jobs around 2 refused rows: all succeeded {:?} after the daemon started",
        started.elapsed()
    );
    let job = app.wait_final(live, 5).await;
    assert_eq!(job.status, Status::Dead);
    let error = job.last_error.unwrap_or_default();
    assert!(
        error.contains("the ledger refused this job: this test refuses the row"),
        "{error}"
    );
    let entries = app.ledger.quarantined(Some(always), 10).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        entries[0].error.contains("recording it dead failed too"),
        "{entries:?}"
    );
    assert!(
        app.ledger.job(always).await.is_err(),
        "no row for the quarantined job"
    );
    wait_redis_empty(&app, 5).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_entry_whose_job_hash_is_gone_is_reported_and_the_rest_run() {
    // A Redis that evicted (or lost, or had deleted by hand) a waiting job's hash
    // leaves its ready entry behind: FETCH drops it, and ops see it at once.
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let lost = Uuid::now_v7();
    let ready = key(&app, "ready");
    for entry in [lost.to_string().as_bytes(), b"\xffno-id".as_slice()] {
        assert_eq!(raw(&app, &[b"ZADD", ready.as_bytes(), b"0", entry]), ":1");
    }
    let ids = ordinary(&app, 5).await;
    all_succeed(&app, &ids, 10).await;
    wait_redis_empty(&app, 5).await;
    let entries = app.ledger.quarantined(None, 10).await.unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries.iter().all(|q| q.source == "fetch"), "{entries:?}");
    assert!(
        entries.iter().any(|q| q.job_id == Some(lost)),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|q| q.raw.contains("\\xffno-id")),
        "{entries:?}"
    );
    let metrics = metrics_text(daemon.admin_addr().expect("admin listener"));
    assert!(
        metrics.contains("jobrunner_quarantined_total{source=\"fetch\"} 2"),
        "{metrics}"
    );
    daemon.stop().await;
}
