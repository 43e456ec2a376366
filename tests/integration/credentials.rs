//! Passwords kept in files and systemd credentials, and never shown: not by
//! `jobrunner config`, not in the log of a running daemon or of a refused
//! connection, not on `/metrics`. Runs the real binary against the TLS Postgres
//! (role `pwuser`, scram-sha-256) and a TLS Redis with an ACL user.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use jobrunner::broker::Broker;
use jobrunner::ledger::Ledger;

use crate::helpers::spawn_app;
use crate::tls_postgres::{PG_PASSWORD, tls_database, tls_pg, tls_url};
use crate::tls_redis::{REDIS_PASSWORD, tls_config, tls_redis};

const WRONG_DB_PASSWORD: &str = "wrong-db-pass-51c0e2";
const WRONG_REDIS_PASSWORD: &str = "wrong-redis-pass-a93f77";

/// `jobrunner ARGS` with `config`, systemd's credentials directory set to
/// `credentials`: (exit code, stdout, stderr).
fn jobrunner(config: &Path, credentials: &Path, args: &[&str]) -> (i32, String, String) {
    let out = crate::helpers::jobrunner(config)
        .args(args)
        .env("RUST_LOG", "debug")
        .env("CREDENTIALS_DIRECTORY", credentials)
        .stdin(Stdio::null())
        .output()
        .expect("run jobrunner");
    crate::helpers::outcome(&out)
}

fn credentials(db: &str, redis: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("db-password"), format!("{db}\n")).unwrap();
    std::fs::write(dir.path().join("redis-password"), redis).unwrap();
    dir
}

fn assert_hidden(what: &str, text: &str) {
    for secret in [
        PG_PASSWORD,
        REDIS_PASSWORD,
        WRONG_DB_PASSWORD,
        WRONG_REDIS_PASSWORD,
    ] {
        assert!(!text.contains(secret), "{what} shows {secret}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_from_credentials_work_and_never_show_in_output_logs_or_metrics() {
    let app = spawn_app().await;
    let db = tls_database().await;
    let redis = tls_redis(&["127.0.0.1"]);
    let ca = tls_pg().ca.display().to_string();
    let mut config = app.config.clone();
    config.database.url = tls_url(
        "pwuser",
        "localhost",
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    )
    .into();
    // Bare names: systemd credentials, read from $CREDENTIALS_DIRECTORY.
    config.database.password_file = Some("db-password".into());
    config.redis = tls_config(&app.config.redis, &redis);
    config.redis.password_file = Some("redis-password".into());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = listener.local_addr().unwrap();
    drop(listener);
    config.admin.listen = admin.to_string();
    let path = app.write_config(&config);
    let right = credentials(PG_PASSWORD, REDIS_PASSWORD);

    // The daemon and the CLI log in with the credentials.
    let log = app.dir.path().join("daemon.log");
    let mut daemon = crate::helpers::jobrunner(&path)
        .arg("run")
        .env("RUST_LOG", "debug")
        .env("CREDENTIALS_DIRECTORY", right.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn jobrunner run");
    let (code, id, err) = jobrunner(&path, right.path(), &["enqueue", "noop"]);
    assert_eq!(code, 0, "enqueue: {err}");
    let (code, out, err) = jobrunner(
        &path,
        right.path(),
        &["status", id.trim(), "--wait", "--timeout", "30s"],
    );
    assert_eq!(code, 0, "the job runs: {out}{err}");
    assert_hidden("the CLI's debug log", &err);

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        if let Ok(response) = http.get(format!("http://{admin}/metrics")).send().await
            && response.status().is_success()
        {
            break response.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "no /metrics on {admin}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.contains("jobrunner_"), "{metrics}");
    assert_hidden("/metrics", &metrics);
    let _ = daemon.kill();
    let _ = daemon.wait();
    let daemon_log = std::fs::read_to_string(&log).unwrap();
    assert!(!daemon_log.is_empty());
    assert_hidden("the daemon's debug log", &daemon_log);

    // In process, the pools and the config print no password with `{:?}`.
    let mut in_process = config.clone();
    in_process.database.password_file = Some(right.path().join("db-password"));
    in_process.redis.password_file = Some(right.path().join("redis-password"));
    let ledger = Ledger::connect(&in_process.database)
        .await
        .expect("the password file logs in");
    let broker = Broker::connect(&in_process.redis)
        .await
        .expect("the password file logs in");
    assert_hidden(
        "{:?}",
        &format!("{ledger:?} {broker:?} {in_process:?} {in_process:#?}"),
    );
    broker.quit().await;

    // `jobrunner config` hides passwords given in the URL and in the file.
    let mut inline = config.clone();
    inline.database.password_file = None;
    inline.database.url = tls_url(&format!("pwuser:{PG_PASSWORD}"), "localhost", &db, "").into();
    inline.redis.password_file = None;
    inline.redis.password = Some(REDIS_PASSWORD.into());
    let (code, out, err) = jobrunner(&app.write_config(&inline), right.path(), &["config"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("pwuser:***@localhost") && out.contains("password = \"***\""),
        "{out}"
    );
    assert_hidden("jobrunner config", &format!("{out}{err}"));

    // A refused login names the user and the URL, never the password tried.
    let wrong_db = credentials(WRONG_DB_PASSWORD, REDIS_PASSWORD);
    let (code, _, err) = jobrunner(&path, wrong_db.path(), &["jobs"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("password authentication failed for user \"pwuser\""),
        "{err}"
    );
    assert_hidden("a refused Postgres login", &err);
    let wrong_redis = credentials(PG_PASSWORD, WRONG_REDIS_PASSWORD);
    let (code, _, err) = jobrunner(&path, wrong_redis.path(), &["queues"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("WRONGPASS"), "{err}");
    assert_hidden("a refused Redis login", &err);
}
