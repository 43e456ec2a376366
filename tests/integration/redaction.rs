//! `[redaction]` as an operator sees it: a phone number and a message body in a
//! job's payload show as `[redacted]` in the job's events, `GET /jobs/{id}`,
//! the daemon's log and the CLI, while the ledger row keeps them.

use std::time::Duration;

use jobrunner::broker::Received;
use jobrunner::config::{JsonPointer, KindRedaction, LogFormat};
use jobrunner::ledger::Status;
use serde_json::{Value, json};

use crate::harness;
use crate::helpers::{sh_kind, spawn_app};
use crate::systemd::spawn_with_env;

const PHONE: &str = "+15551234567";
/// Quotes, so the failing program's output (JSON) holds it escaped.
const BODY: &str = "meet me at \"the usual\" place";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_fields_never_leave_the_ledger_in_events_the_job_endpoint_logs_or_the_cli() {
    let mut app = spawn_app().await;
    let mut config = app.config.clone();
    config.log.format = LogFormat::Json;
    config.events.postgres = true;
    config.admin.listen = format!("127.0.0.1:{}", harness::free_port());
    // A program that fails, quoting its whole input in the error, as programs do.
    config
        .kinds
        .insert("sms".into(), sh_kind("cat >&2; exit 3"));
    config.redaction.kinds.insert(
        "sms".into(),
        KindRedaction {
            payload: ["/to", "/message/body"]
                .map(|p| JsonPointer::parse(p).unwrap())
                .to_vec(),
            result: Vec::new(),
        },
    );
    app.config = config.clone();
    let path = app.write_config(&config);

    let redis_events = app.broker.subscription().await.unwrap();
    redis_events
        .subscribe(vec![app.broker.events_channel()])
        .await
        .unwrap();
    let mut notify = sqlx::postgres::PgListener::connect_with(app.ledger.pool())
        .await
        .unwrap();
    notify.listen("jobrunner_events").await.unwrap();
    let mut daemon = spawn_with_env(&app, &path, &[]);

    let payload = json!({"to": PHONE, "message": {"body": BODY, "lang": "en"}});
    let id = app.enqueue("sms", payload.clone()).await;
    let job = app.wait_final(id, 15).await;
    assert_eq!(job.status, Status::Dead, "{job:?}");
    assert_eq!(job.payload, payload, "the ledger keeps the payload whole");
    let error = job.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("[redacted]") && !error.contains(PHONE) && !error.contains("the usual"),
        "the recorded error is scrubbed: {error}"
    );

    // The events: the Redis channel and NOTIFY carry the scrubbed error.
    let mut redis_events = redis_events;
    let dead = loop {
        let text = match tokio::time::timeout(Duration::from_secs(5), redis_events.recv()).await {
            Ok(Received::Message { text, .. }) => text,
            other => panic!("no dead event on Redis: {other:?}"),
        };
        let event: Value = serde_json::from_str(&text).unwrap();
        if event["id"] == id.to_string() && event["status"] == "dead" {
            break event;
        }
    };
    assert_scrubbed(&dead["error"]);
    let notified = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), notify.recv())
            .await
            .expect("a NOTIFY event")
            .unwrap();
        let event: Value = serde_json::from_str(n.payload()).unwrap();
        if event["id"] == id.to_string() && event["status"] == "dead" {
            break event;
        }
    };
    assert_scrubbed(&notified["error"]);

    // GET /jobs/{id}: the named fields are replaced, the rest is shown.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let shown: Value = reqwest::get(format!("http://{}/jobs/{id}", config.admin.listen))
        .await
        .expect("GET /jobs/{id}")
        .json()
        .await
        .unwrap();
    assert_eq!(
        shown["payload"],
        json!({"to": "[redacted]", "message": {"body": "[redacted]", "lang": "en"}})
    );
    assert_scrubbed(&shown["last_error"]);

    // The CLI's views of the job.
    for args in [
        ["status", &id.to_string(), "--json"],
        ["inspect", &id.to_string(), "--json"],
    ] {
        let (code, out, err) = app.cli(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        let doc: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["payload"]["to"], "[redacted]", "{args:?}: {out}");
        assert!(
            !out.contains(PHONE) && !out.contains("the usual"),
            "{args:?}: {out}"
        );
    }

    daemon.signal("TERM");
    assert!(daemon.wait_exit(15).expect("exits").success());
    let log = daemon.log_text();
    let line: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "Job is dead" && l["span"]["job.id"] == id.to_string())
        .unwrap_or_else(|| panic!("no `Job is dead` line: {log}"));
    assert_scrubbed(&line["error"]);
    assert!(
        !log.contains(PHONE),
        "the phone number is nowhere in the log"
    );
}

/// The program's stderr (the payload as JSON) is in the error, minus the
/// redacted values.
fn assert_scrubbed(error: &Value) {
    let text = error
        .as_str()
        .unwrap_or_else(|| panic!("no error: {error}"));
    assert!(text.contains("\"to\":\"[redacted]\""), "{text}");
    assert!(text.contains("\"lang\":\"en\""), "{text}");
    assert!(
        !text.contains(PHONE) && !text.contains("the usual"),
        "{text}"
    );
}
