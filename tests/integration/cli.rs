//! The CLI as an admin or a script uses it: ids on stdout, tables and JSON,
//! meaningful exit codes, errors on stderr.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_enqueue_prints_only_the_id_and_status_wait_reports_success() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;

    let (code, out, err) = app.cli(&["enqueue", "noop", "--payload", r#"{"x": 1}"#]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim();
    assert!(
        uuid::Uuid::parse_str(id).is_ok(),
        "stdout is the id alone: {out:?}"
    );
    assert_eq!(out, format!("{id}\n"));

    let (code, out, err) = app.cli(&["status", id, "--wait", "--json"]);
    assert_eq!(code, 0, "{err}");
    let job: Value = serde_json::from_str(&out).expect("status --json prints JSON");
    assert_eq!(job["id"], id);
    assert_eq!(job["kind"], "noop");
    assert_eq!(job["queue"], "default");
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["result"], serde_json::json!({"x": 1}));
    assert_eq!(job["last_error"], Value::Null);
    for field in ["created_at", "updated_at"] {
        assert!(job[field].is_string(), "{field} in {job}");
    }

    let (code, out, _) = app.cli(&["status", id]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("status") && l.ends_with("succeeded")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("attempts") && l.ends_with("1 of 25")),
        "{out}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_wait_exits_3_for_a_dead_job_and_redis_enqueue_works_from_the_cli() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let (code, out, err) = app.cli(&[
        "enqueue",
        "fail",
        "--payload",
        r#"{"permanent": true}"#,
        "--via",
        "redis",
        "--priority",
        "-3",
    ]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_owned();
    let (code, out, _) = app.cli(&["status", &id, "--wait", "--json"]);
    assert_eq!(code, 3, "dead is not success: {out}");
    let job: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["status"], "dead");
    assert_eq!(job["priority"], -3);
    assert_eq!(job["last_error"], "failed permanently as asked");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_rejects_bad_input_with_a_message_and_exit_1() {
    let app = spawn_app().await;
    for (args, expected) in [
        (
            vec!["enqueue", "noop", "--payload", "{oops"],
            "--payload is not valid JSON",
        ),
        (
            vec!["enqueue", "no spaces", "--payload", "{}"],
            "kind `no spaces`",
        ),
        (
            vec!["enqueue", "noop", "--priority", "5000"],
            "--priority 5000 is out of range",
        ),
        (vec!["status", "not-a-uuid"], "`not-a-uuid` is not a job id"),
        (
            vec!["status", "01a2032f-77c1-7992-99ca-a1aa94ed1ed1"],
            "not found",
        ),
    ] {
        let (code, out, err) = app.cli(&args);
        assert_eq!(code, 1, "{args:?}: {out} {err}");
        assert!(out.is_empty(), "{args:?} printed to stdout: {out}");
        assert!(
            err.contains(expected),
            "{args:?}: stderr {err:?} lacks {expected:?}"
        );
    }
    let (code, _, err) = app.cli(&["enqueue", "noop", "--delay", "soon"]);
    assert_eq!(code, 2, "clap usage errors exit 2: {err}");
    assert_eq!(app.count_jobs().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_cli_job_is_scheduled() {
    let app = spawn_app().await;
    let (code, out, err) = app.cli(&["enqueue", "noop", "--delay", "1h", "--max-attempts", "2"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = app.cli(&["status", out.trim(), "--json"]);
    let job: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["status"], "scheduled");
    assert_eq!(job["max_attempts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_against_an_unmigrated_database_exits_nonzero_and_says_to_migrate() {
    let app = spawn_app().await;
    let pg = crate::harness::shared_postgres();
    let name = crate::harness::unique_name("empty");
    let mut config = app.config.clone();
    config.database.url = pg.create_database(&name, None).await.into();
    let mut daemon = app.spawn_daemon(&config);
    let status = daemon.wait_exit(15).expect("run exits");
    assert!(!status.success());
    assert!(
        daemon.log_text().contains("jobrunner migrate"),
        "{}",
        daemon.log_text()
    );

    let path = app.write_config(&config);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobrunner"))
        .args(["--config", path.to_str().unwrap(), "migrate"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut daemon = app.spawn_daemon(&config);
    assert!(
        daemon.wait_exit(2).is_none(),
        "after migrate the daemon runs: {}",
        daemon.log_text()
    );
    daemon.signal("TERM");
    assert!(daemon.wait_exit(10).expect("drains").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_typo_stops_start_up_naming_the_file_and_key() {
    let app = spawn_app().await;
    let path = app.dir.path().join("typo.toml");
    std::fs::write(&path, "[runtime]\nlease = \"30s\"\nfetch_bacth = 10\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobrunner"))
        .args(["--config", path.to_str().unwrap(), "run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("typo.toml") && err.contains("fetch_bacth"),
        "{err}"
    );
}

/// Uncomments `# key = value` and `# [section]` lines, leaving prose comments.
fn uncomment_keys(text: &str) -> String {
    let is_key = |rest: &str| {
        (rest.starts_with('[') && rest.ends_with(']'))
            || rest.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            })
    };
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_key(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_example_config_is_valid_as_shipped_and_with_every_key_uncommented() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/jobrunner.example.toml");
    let text = std::fs::read_to_string(example).expect("config/jobrunner.example.toml");
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.toml");
    // Start-up checks the machine against the config (secrets set, programs and
    // directories present): give it what the example names.
    let uncommented = uncomment_keys(&text)
        .replace("/usr/local/bin/nightly-report", "/bin/true")
        .replace("/var/lib/reports", dir.path().to_str().unwrap());
    std::fs::write(&full, uncommented).unwrap();
    for path in [std::path::Path::new(example), full.as_path()] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobrunner"))
            .args(["--config", path.to_str().unwrap(), "config"])
            .env_remove("JOBRUNNER_DATABASE_URL")
            .env_remove("DATABASE_URL")
            .env("MAILER_HOOK_SECRET", "example-secret")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", path.display());
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobrunner"))
        .args(["--config", full.to_str().unwrap(), "config"])
        .env("MAILER_HOOK_SECRET", "example-secret")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    for section in [
        "[kinds.mailer.http]",
        "[kinds.nightly-report.command]",
        "[data_extraction]",
    ] {
        assert!(shown.contains(section), "{section} is read: {shown}");
    }
    assert!(
        shown.contains("[queues.mail]"),
        "the example queue is read: {shown}"
    );
    assert!(
        shown.contains("jobrunner:***@"),
        "the password is hidden: {shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_every_built_in_kind_and_shows_what_they_produced() {
    let app = spawn_app().await;
    let (code, out, err) = app.cli(&["demo"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for expected in [
        "content-generation  SQL            succeeded",
        "data-extraction     SQL            succeeded",
        "message-processing  SQL            succeeded",
        "noop                Redis          succeeded",
        "failed permanently as asked",
        // The post count depends on next month's length; the planning is tested
        // in kind_content_generation.
        "is ready with",
        "posts planned for",
        "is done with 4 results",
        "hello@beanthere.example",
        "conversation with Ada (351910000000): 2 unread",
    ] {
        assert!(
            out.contains(expected),
            "the demo prints {expected:?}:\n{out}"
        );
    }
}
