//! The CLI as an admin or a script uses it: ids on stdout, tables and JSON,
//! meaningful exit codes, errors on stderr.

use serde_json::Value;

use crate::helpers::spawn_app;
use jobrunner::ledger::Status;

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
            vec!["status", "01a2032f-77c1-7992-99ca-a1aa94ed1ed1"],
            "not found",
        ),
        (
            vec![
                "enqueue",
                "noop",
                "--payload-file",
                "/nonexistent/payload.json",
            ],
            "reading --payload-file /nonexistent/payload.json",
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
    assert_eq!(app.count_jobs().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_priorities_and_statuses_are_usage_errors_that_exit_2() {
    let app = spawn_app().await;
    for (args, expected) in [
        (vec!["enqueue", "noop", "--delay", "soon"], "--delay"),
        (
            vec!["enqueue", "noop", "--priority", "5000"],
            "5000 is not in -1000..=1000",
        ),
        (
            vec!["enqueue", "noop", "--max-attempts", "0"],
            "--max-attempts",
        ),
        (vec!["status", "not-a-uuid"], "`not-a-uuid` is not a job id"),
        (vec!["inspect", "42"], "`42` is not a job id"),
        (vec!["cancel", "abc"], "`abc` is not a job id"),
        (vec!["retry", "abc"], "`abc` is not a job id"),
        (
            vec!["jobs", "--status", "done"],
            "[possible values: scheduled, queued, running, retrying, succeeded, dead, cancelled]",
        ),
        (
            vec!["purge", "--status", "running", "--older-than", "1d"],
            "[possible values: succeeded, dead, cancelled]",
        ),
    ] {
        let (code, out, err) = app.cli(&args);
        assert_eq!(code, 2, "{args:?}: {out} {err}");
        assert!(out.is_empty(), "{args:?} printed to stdout: {out}");
        assert!(
            err.contains(expected),
            "{args:?}: stderr {err:?} lacks {expected:?}"
        );
    }
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
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/jobrunner.example.toml"
    );
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
    let log = app.dir.path().join("demo.log");
    let (code, out, err) = app.cli(&["demo", "--log-file", log.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    // The daemon's log (retries and the expected failures) goes to the file the
    // demo names, not between the lines of its table.
    assert!(
        out.contains(&format!("The demo daemon's log goes to {}", log.display())),
        "{out}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("Job failed, retrying"), "{logged}");
    assert!(!out.contains("Job failed, retrying") && !err.contains("Job failed, retrying"));
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

/// Runs the CLI with `input` on its standard input.
fn cli_with_stdin(
    app: &crate::helpers::TestApp,
    args: &[&str],
    input: &[u8],
) -> (i32, String, String) {
    use std::io::Write as _;
    let path = app.write_config(&app.config);
    let mut child = crate::helpers::jobrunner(&path)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    crate::helpers::outcome(&out)
}

fn one_json_document(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not one JSON document ({e}): {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_printing_command_has_json_that_parses_as_one_document() {
    let mut app = spawn_app().await;
    app.config.cron.insert(
        "report".into(),
        toml::from_str(
            r#"schedule = "0 0 1 1 *"
kind = "noop""#,
        )
        .unwrap(),
    );
    let (code, out, err) = app.cli(&["enqueue", "noop", "--queue", "mail", "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc = one_json_document(&out);
    assert_eq!(doc["kind"], "noop");
    assert_eq!(doc["queue"], "mail");
    assert_eq!(doc["via"], "sql");
    let id: uuid::Uuid = doc["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(app.ledger.job(id).await.unwrap().queue, "mail");

    let (code, out, err) = app.cli(&["enqueue", "noop", "--via", "redis", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(one_json_document(&out)["via"], "redis");

    let (code, out, err) = app.cli(&["cron", "run", "report", "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc = one_json_document(&out);
    assert_eq!(doc["name"], "report");
    let id: uuid::Uuid = doc["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(app.ledger.job(id).await.unwrap().kind, "noop");

    for args in [
        &["migrate", "--json"][..],
        &["migrate", "--check", "--json"],
    ] {
        let (code, out, err) = app.cli(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        let doc = one_json_document(&out);
        assert_eq!(doc["current"], true, "{args:?}: {doc}");
        assert_eq!(
            doc["schema_version"],
            jobrunner::ledger::schema_version(&jobrunner_kinds::migrations())
        );
    }

    let (code, out, err) = app.cli(&["config", "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc = one_json_document(&out);
    assert!(
        doc["database"]["url"]
            .as_str()
            .unwrap()
            .starts_with("postgres://"),
        "{doc}"
    );
    assert!(doc["cron"]["report"].is_object(), "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_check_exits_0_when_current_and_1_with_one_line_otherwise() {
    let app = spawn_app().await;
    let (code, out, err) = app.cli(&["migrate", "--check"]);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert_eq!(
        out,
        format!(
            "Database schema is current (version {})\n",
            jobrunner::ledger::schema_version(&jobrunner_kinds::migrations())
        )
    );

    let pg = crate::harness::shared_postgres();
    let name = crate::harness::unique_name("unmigrated");
    let mut config = app.config.clone();
    config.database.url = pg.create_database(&name, None).await.into();
    let path = app.write_config(&config);
    let run = |args: &[&str]| {
        crate::helpers::jobrunner(&path)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["migrate", "--check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("the database schema is not current") && err.contains("jobrunner migrate"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    let out = run(&["migrate", "--check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc = one_json_document(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(doc["current"], false);
    assert!(doc["reason"].as_str().unwrap().contains("not current"));
    // --check changed nothing; migrate then makes the check pass.
    assert_eq!(run(&["migrate", "--check"]).status.code(), Some(1));
    assert!(run(&["migrate"]).status.success());
    assert!(run(&["migrate", "--check"]).status.success());
}

#[test]
fn version_completions_and_man_pages_come_from_the_binary() {
    let bin = env!("CARGO_BIN_EXE_jobrunner");
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(&format!("jobrunner {} (commit ", env!("CARGO_PKG_VERSION")))
            && version.trim_end().ends_with(&format!(
                ", schema {})",
                jobrunner::ledger::schema_version(&jobrunner_kinds::migrations())
            )),
        "{version}"
    );

    for (shell, marker) in [
        ("bash", "complete -F _jobrunner"),
        ("zsh", "#compdef jobrunner"),
        ("fish", "complete -c jobrunner"),
    ] {
        let out = std::process::Command::new(bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        for word in ["enqueue", "payload-file", "migrate", "check", "succeeded"] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .arg("manpages")
        .arg(dir.path().join("man1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(dir.path().join("man1/jobrunner.1")).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH jobrunner"),
        "{page}"
    );
    assert!(
        page.contains("JOBRUNNER_DATABASE_URL"),
        "the environment is in the page"
    );
    let enqueue = std::fs::read_to_string(dir.path().join("man1/jobrunner-enqueue.1")).unwrap();
    assert!(enqueue.contains("payload\\-file"), "{enqueue}");
    // The hidden generators document nothing of themselves.
    assert!(!dir.path().join("man1/jobrunner-completions.1").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_payload_goes_in_from_a_file_or_stdin_through_sql_and_redis() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    // Far past the ~128 KiB one command-line argument may hold.
    let payload = serde_json::json!({ "blob": "x".repeat(1 << 20) });
    let text = payload.to_string();
    let file = app.dir.path().join("payload.json");
    std::fs::write(&file, &text).unwrap();
    let mut ids = Vec::new();
    for via in ["sql", "redis"] {
        let (code, out, err) = app.cli(&[
            "enqueue",
            "noop",
            "--via",
            via,
            "--payload-file",
            file.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{via}: {err}");
        ids.push(out.trim().parse::<uuid::Uuid>().unwrap());
        let (code, out, err) = cli_with_stdin(
            &app,
            &["enqueue", "noop", "--via", via, "--payload", "-"],
            text.as_bytes(),
        );
        assert_eq!(code, 0, "{via}: {err}");
        ids.push(out.trim().parse::<uuid::Uuid>().unwrap());
    }
    for id in ids {
        let job = app.wait_final(id, 30).await;
        assert_eq!(job.status, Status::Succeeded, "{:?}", job.last_error);
        assert_eq!(job.payload, payload);
        assert_eq!(
            job.result.as_ref(),
            Some(&payload),
            "noop returns its payload"
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_deep_payload_is_refused_at_the_cli_and_ends_dead_naming_the_limit() {
    let app = spawn_app().await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let limit = "payload nests 10000 levels deep; jobrunner accepts at most 100 levels of arrays and objects";
    let (code, out, err) = cli_with_stdin(
        &app,
        &["enqueue", "noop", "--payload", "-"],
        deep.as_bytes(),
    );
    assert_eq!(code, 1, "{out}");
    assert!(err.contains(limit), "{err}");
    let (code, _, err) = app.cli(&["enqueue", "noop", "--payload", &deep[9_800..10_200]]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--payload nests 200 levels deep; jobrunner accepts at most 100"),
        "{err}"
    );
    let (code, _, err) = app.cli(&["enqueue", "noop", "--payload", "[[[1"]);
    assert_eq!(code, 1);
    assert!(err.contains("--payload is not valid JSON"), "{err}");
    assert_eq!(app.count_jobs().await, 0);

    // SQL enqueue refuses it too, naming the same limit.
    let refused =
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT jobrunner.enqueue('noop', $1::text::jsonb)")
            .bind(&deep)
            .fetch_one(app.ledger.pool())
            .await
            .unwrap_err()
            .to_string();
    assert!(
        refused.contains("nests deeper than 100 levels"),
        "{refused}"
    );

    // A row written past the doors (a hand-written INSERT, or one from before
    // they checked): the daemon ends the job dead and says why.
    let daemon = app.start_daemon().await;
    let id = uuid::Uuid::now_v7();
    let mut tx = app.ledger.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO jobrunner.jobs (id, queue, kind, payload) VALUES ($1, 'default', 'noop', $2::text::jsonb)")
        .bind(id)
        .bind(&deep)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO jobrunner.outbox (id) VALUES ($1)")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ordinary = app
        .enqueue("noop", serde_json::json!({"after": "deep"}))
        .await;
    // Read without the payload: decoding it is what cannot be done.
    let mut row: (String, i32, Option<String>) = Default::default();
    for _ in 0..300 {
        row =
            sqlx::query_as("SELECT status, attempts, last_error FROM jobrunner.jobs WHERE id = $1")
                .bind(id)
                .fetch_one(app.ledger.pool())
                .await
                .unwrap();
        if row.0 == "dead" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!((row.0.as_str(), row.1), ("dead", 1), "{row:?}");
    assert_eq!(
        row.2.as_deref(),
        Some(
            "payload nests 10000 levels deep; jobrunner reads at most 127 levels of arrays and objects"
        )
    );
    assert_eq!(app.wait_final(ordinary, 30).await.status, Status::Succeeded);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_wait_that_times_out_says_when_no_daemon_serves_the_queue() {
    let app = spawn_app().await;
    let (_, out, _) = app.cli(&["enqueue", "noop", "--queue", "nobody"]);
    let id = out.trim().to_owned();
    let (code, out, err) = app.cli(&["status", &id, "--wait", "--timeout", "500ms"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains(&format!(
            "job {id} is still queued after the timeout, and no live daemon serves queue `nobody`"
        )),
        "{err}"
    );

    // With a daemon serving the queue, the timeout says only that.
    let daemon = app.start_daemon().await;
    let (_, out, _) = app.cli(&["enqueue", "sleep", "--payload", r#"{"ms": 5000}"#]);
    let id = out.trim().to_owned();
    let (code, _, err) = app.cli(&["status", &id, "--wait", "--timeout", "500ms"]);
    assert_eq!(code, 1);
    assert!(err.contains("after the timeout"), "{err}");
    assert!(!err.contains("no live daemon"), "{err}");
    daemon.stop().await;
}

/// `jobrunner jobs | head -1`: the reader leaves before the listing is written.
/// The command ends on SIGPIPE, as Unix tools do, instead of panicking with
/// "failed printing to stdout".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_whose_reader_left_ends_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let app = spawn_app().await;
    for i in 0..50 {
        app.enqueue("noop", serde_json::json!({ "i": i })).await;
    }
    let path = app.write_config(&app.config);
    for args in [&["jobs", "--limit", "50"][..], &["config"][..]] {
        let mut child = crate::helpers::jobrunner(&path)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run jobrunner");
        // The reader leaves at once, before the command has printed anything.
        drop(child.stdout.take());
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert_eq!(
            status.signal(),
            Some(libc::SIGPIPE),
            "{args:?} ended by SIGPIPE: {status:?}, stderr: {err}"
        );
    }
}

/// `jobrunner bench` on a small load, as a user would first try it: every
/// figure of both paths is there and consistent, the drains ran `ANALYZE`
/// halfway as asked, the report names the
/// Postgres settings that move the figures, and the scratch database is gone
/// afterwards. The figures themselves are the machine's; nothing here times
/// anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_bench_reports_every_figure_of_both_paths_and_cleans_up() {
    let app = spawn_app().await;
    let scratch_dbs = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'jobrunner_bench_%'",
        )
        .fetch_all(app.ledger.pool())
        .await
        .unwrap()
    };
    let before = scratch_dbs().await;
    let (code, out, err) = app.cli(&[
        "bench",
        "--jobs",
        "300",
        "--backlog",
        "3000",
        "--analyze-midway",
        "--rate",
        "200",
        "--latency-secs",
        "1",
        "--bulk-batch",
        "100",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).expect("bench --json prints JSON");
    let number = |v: &Value, what: &str| {
        v.as_f64()
            .unwrap_or_else(|| panic!("{what} is a number: {report}"))
    };

    for name in [
        "server_version",
        "shared_buffers",
        "fsync",
        "synchronous_commit",
    ] {
        let value = report["postgres"][name].as_str().unwrap_or_default();
        assert!(!value.is_empty(), "postgres.{name}: {report}");
    }
    // CPU is read in clock ticks, so one short window may show none; over the
    // whole bench each of the three processes must have some.
    let mut spent = [0.0; 3];
    let mut cpu_is_whole = |cpu: &Value, what: &str, jobs: f64| {
        let parts = ["daemon_us", "redis_us", "postgres_us"]
            .map(|p| number(&cpu[p], &format!("{what}.cpu.{p}")));
        let total = number(&cpu["total_us"], &format!("{what}.cpu.total_us"));
        let sum: f64 = parts.iter().sum();
        assert!((total - sum).abs() <= 1e-6 * total, "{what}: {cpu}");
        for (s, part) in spent.iter_mut().zip(parts) {
            assert!(part >= 0.0, "{what}: {cpu}");
            *s += part * jobs;
        }
        let background = number(&cpu["postgres_background_us"], what);
        assert!(
            0.0 <= background && background <= parts[2],
            "{what}: Postgres's background share is part of its figure: {cpu}"
        );
        assert_eq!(number(&cpu["jobs"], what), jobs, "{what}: {cpu}");
        let busy = number(&cpu["machine_busy_pct"], what);
        assert!((0.0..=100.0).contains(&busy), "{what}: {cpu}");
    };
    let ordered = |spread: &Value, what: &str| {
        let [p50, p99, max] = ["p50", "p99", "max"].map(|q| number(&spread[q], what));
        assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{what}: {spread}");
    };
    for path in ["sql", "redis"] {
        let runs = &report[path];
        let drain = &runs["drain"];
        assert!(number(&drain["rate"], path) > 0.0);
        cpu_is_whole(&drain["cpu"], &format!("{path}.drain"), 3000.0);
        // The statistics were taken while the drain ran, once some of it was
        // done. "About half" is loose on a backlog this small: each producer's
        // jobs share their enqueue statement's creation time.
        let midway = &drain["analyze_midway"];
        let done = number(
            &midway["done"],
            &format!("{path}.drain.analyze_midway.done"),
        );
        assert!(0.0 < done && done <= 1.0, "{path}: {midway}");
        assert!(number(&midway["ms"], path) > 0.0, "{path}: {midway}");
        let throughput = &runs["throughput"];
        assert!(number(&throughput["rate"], path) > 0.0);
        assert!(number(&throughput["enqueue_rate"], path) > 0.0);
        cpu_is_whole(&throughput["cpu"], &format!("{path}.throughput"), 300.0);
        ordered(
            &throughput["ledger_lag_ms"],
            &format!("{path}.ledger_lag_ms"),
        );
        let latency = &runs["latency"];
        let sent = number(&latency["cpu"]["jobs"], path);
        cpu_is_whole(&latency["cpu"], &format!("{path}.latency"), sent);
        ordered(&latency["pickup_ms"], &format!("{path}.pickup_ms"));
    }
    assert!(number(&report["sql"]["bulk"]["rate"], "bulk") > 0.0);
    cpu_is_whole(&report["sql"]["bulk"]["cpu"], "sql.bulk", 300.0);
    assert!(
        spent.iter().all(|&s| s > 0.0),
        "daemon, redis, postgres: {spent:?}"
    );
    let daemon = &report["daemon"];
    let [idle, peak] = ["idle_rss_mb", "peak_rss_mb"].map(|k| number(&daemon[k], k));
    assert!(0.0 < idle && idle <= peak, "{daemon}");

    assert_eq!(
        scratch_dbs().await,
        before,
        "the scratch database is dropped"
    );
}
