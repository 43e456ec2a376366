//! JSON logs: one object per line, and every line logged inside a job names the
//! job.

use jobrunner::config::LogFormat;
use serde_json::{Value, json};

use crate::helpers::spawn_app;
use crate::systemd::spawn_with_env;
use jobrunner::ledger::Status;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_inside_a_job_carry_its_id_kind_queue_and_attempt() {
    let app = spawn_app().await;
    let mut config = app.config.clone();
    config.log.format = LogFormat::Json;
    let path = app.write_config(&config);
    let mut daemon = spawn_with_env(&app, &path, &[]);
    let id = app.enqueue("fail", json!({"permanent": true})).await;
    assert_eq!(app.wait_final(id, 15).await.status, Status::Dead);
    daemon.signal("TERM");
    assert!(daemon.wait_exit(15).expect("exits").success());

    let log = daemon.log_text();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let dead = lines
        .iter()
        .find(|l| l["message"] == "Job is dead")
        .unwrap_or_else(|| panic!("no `Job is dead` line: {log}"));
    assert_eq!(dead["level"], "WARN");
    assert_eq!(dead["error"], "failed permanently as asked");
    let span = &dead["span"];
    assert_eq!(span["job.id"], id.to_string(), "{dead}");
    assert_eq!(span["job.kind"], "fail", "{dead}");
    assert_eq!(span["job.queue"], "default", "{dead}");
    assert_eq!(span["job.attempt"], 1, "{dead}");
    // The enclosing spans are listed too, for lines under a handler's own span.
    assert!(
        dead["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["job.id"] == id.to_string())),
        "{dead}"
    );
}
