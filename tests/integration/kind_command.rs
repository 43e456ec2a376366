//! Kinds configured with `handler = "command"`, running real programs (`/bin/sh`
//! scripts): what the program receives, how its exit ends the job, and that a
//! timeout leaves no process behind.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{sh_kind, spawn_app};
use jobrunner::ledger::Status;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_gets_the_payload_on_stdin_and_its_json_stdout_is_the_result() {
    let mut app = spawn_app().await;
    let mut kind = sh_kind(
        r#"printf '{"payload": '; cat; printf ', "job": "%s", "greeting": "%s", "db": "%s"}' "$JOBRUNNER_JOB_ID" "$GREETING" "$DATABASE_URL""#,
    );
    kind.command
        .as_mut()
        .unwrap()
        .env
        .insert("GREETING".into(), "hello".into());
    app.config.kinds.insert("report".into(), kind);
    app.config
        .kinds
        .insert("plain".into(), sh_kind("echo done"));
    let daemon = app.start_daemon().await;

    let id = app.enqueue("report", json!({"month": "2026-11"})).await;
    let plain = app.enqueue("plain", json!({})).await;
    let job = app.wait_final(id, 10).await;
    assert_eq!(job.status, Status::Succeeded, "{job:?}");
    assert_eq!(
        job.result,
        Some(json!({
            "payload": {"month": "2026-11"},
            "job": id.to_string(),
            "greeting": "hello",
            "db": "",
        })),
        "the program sees its configured env and the job id, never the daemon's database URL"
    );
    let job = app.wait_final(plain, 10).await;
    assert_eq!(job.result, Some(json!({"stdout": "done\n"})));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_exit_code_ends_the_job_and_another_exit_is_retried() {
    let mut app = spawn_app().await;
    let flag = app.dir.path().join("failed-once");
    app.config.kinds.insert(
        "strict".into(),
        sh_kind("echo 'no such customer' >&2; exit 3"),
    );
    // Fails the first attempt (exit 1), succeeds the second.
    let mut flaky = sh_kind(
        r#"test -f "$FLAG" || { touch "$FLAG"; echo 'db busy' >&2; exit 1; }; echo '{"ok": true}'"#,
    );
    flaky
        .command
        .as_mut()
        .unwrap()
        .env
        .insert("FLAG".into(), flag.display().to_string().into());
    app.config.kinds.insert("flaky".into(), flaky);
    let daemon = app.start_daemon().await;

    let strict = app.enqueue("strict", json!({})).await;
    let flaky = app.enqueue("flaky", json!({})).await;
    let job = app.wait_final(strict, 10).await;
    assert_eq!((job.status.as_str(), job.attempts), ("dead", 1));
    assert_eq!(
        job.last_error.as_deref(),
        Some("`/bin/sh` exited with code 3: no such customer")
    );
    let job = app.wait_final(flaky, 10).await;
    assert_eq!((job.status.as_str(), job.attempts), ("succeeded", 2));
    assert_eq!(job.result, Some(json!({"ok": true})));
    assert_eq!(
        job.last_error.as_deref(),
        Some("`/bin/sh` exited with code 1: db busy")
    );
    daemon.stop().await;
}

fn running(marker: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", marker])
        .output()
        .expect("run pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_program_and_everything_it_started() {
    let mut app = spawn_app().await;
    // A unique sleep length marks this test's processes for pgrep.
    let marker = format!(
        "sleep 30.{}",
        std::process::id() as u64 * 1000 + rand_suffix()
    );
    let mut kind = sh_kind(&format!("{marker} & {marker} & wait"));
    kind.max_attempts = 1;
    kind.timeout = Duration::from_secs(1);
    app.config.kinds.insert("stuck".into(), kind);
    let daemon = app.start_daemon().await;

    let id = app.enqueue("stuck", json!({})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while running(&marker).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the program never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let job = app.wait_final(id, 10).await;
    assert_eq!(job.status, Status::Dead);
    assert_eq!(
        job.last_error.as_deref(),
        Some("timed out after 1s (gave up after 1 attempts)")
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !running(&marker).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "still running after the timeout: {:?}",
            running(&marker)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.stop().await;
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos() % 1000))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_with_nul_bytes_is_stored_with_replacement_characters() {
    let mut app = spawn_app().await;
    app.config
        .kinds
        .insert("nul-json".into(), sh_kind(r#"printf '{"x": "a\\u0000b"}'"#));
    app.config
        .kinds
        .insert("nul-text".into(), sh_kind(r#"printf 'a\000b'"#));
    let daemon = app.start_daemon().await;
    let json_id = app.enqueue("nul-json", json!({})).await;
    let text_id = app.enqueue("nul-text", json!({})).await;
    let job = app.wait_final(json_id, 10).await;
    assert_eq!(job.status, Status::Succeeded, "{job:?}");
    assert_eq!(job.result, Some(json!({"x": "a\u{FFFD}b"})));
    let job = app.wait_final(text_id, 10).await;
    assert_eq!(job.status, Status::Succeeded, "{job:?}");
    assert_eq!(job.result, Some(json!({"stdout": "a\u{FFFD}b"})));
    daemon.stop().await;
}
