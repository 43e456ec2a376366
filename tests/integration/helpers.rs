//! Test application: a fresh database (cloned from a migrated template) on the
//! shared throwaway Postgres, its own throwaway Redis, and a config tuned for fast
//! tests. Daemons run in-process (`start_daemon`) or as real processes
//! (`spawn_daemon`) for crash and signal tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use jobrunner::broker::Broker;
use jobrunner::config::{CommandKindConfig, Config, HandlerName, KindConfig, QueueConfig};
use jobrunner::jobs::Registry;
use jobrunner::ledger::{Job, Ledger, NewJob, Status, StatusUpdate};
use jobrunner::runtime::Daemon;
use serde_json::Value;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::harness::{self, Redis};

/// The migrated database every test database is cloned from.
static TEMPLATE: OnceCell<String> = OnceCell::const_new();

pub struct TestApp {
    pub config: Config,
    pub ledger: Ledger,
    pub broker: Broker,
    pub redis: Redis,
    pub dir: tempfile::TempDir,
}

pub fn init_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        jobrunner::telemetry::init(&jobrunner::config::LogConfig {
            level: "info,jobrunner=debug,sqlx=warn".into(),
            format: jobrunner::config::LogFormat::Pretty,
        });
    }
}

async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let pg = harness::shared_postgres();
            let name = harness::unique_name("template");
            let url = pg.create_database(&name, None).await;
            let pool = sqlx::PgPool::connect(&url)
                .await
                .expect("connect to template");
            Ledger::from_pool(pool.clone())
                .migrate(&jobrunner_kinds::migrations())
                .await
                .expect("migrate the template database");
            pool.close().await;
            name
        })
        .await
}

/// A fresh database and Redis with a config for fast tests: short lease, fast
/// reaper and polling, millisecond backoff for the `fail` kind.
pub async fn spawn_app() -> TestApp {
    spawn_app_on(None).await
}

/// [`spawn_app`] on the Redis at `redis_url` (a cluster or a Sentinel set the test
/// started) instead of a standalone server of its own. `TestApp::redis` is then
/// a standalone server the daemon does not use (starting one costs a few ms and
/// keeps the field there for every test).
pub async fn spawn_app_on(redis_url: Option<String>) -> TestApp {
    init_logging();
    let template = template().await;
    let pg = harness::shared_postgres();
    let db = harness::unique_name("t");
    let url = pg.create_database(&db, Some(template)).await;
    let redis = Redis::start();

    let mut config = Config {
        origin: "test".into(),
        ..Config::default()
    };
    config.database.url = url.into();
    config.database.max_connections = 8;
    config.redis.url = redis_url.unwrap_or_else(|| redis.url()).into();
    config.redis.key_prefix = harness::unique_name("jr");
    config.redis.reconnect_max_delay = Duration::from_millis(500);
    config.runtime.lease = Duration::from_secs(2);
    config.runtime.reap_interval = Duration::from_millis(200);
    config.runtime.sweep_interval = Duration::from_millis(500);
    config.runtime.poll_interval = Duration::from_millis(200);
    config.runtime.drain_timeout = Duration::from_secs(5);
    // A free port per daemon; tests read it back with `Daemon::admin_addr`.
    config.admin.listen = "127.0.0.1:0".into();
    config.queues.insert(
        "default".into(),
        QueueConfig {
            concurrency: 8,
            ..QueueConfig::default()
        },
    );
    let mut fail = KindConfig {
        max_attempts: 3,
        ..KindConfig::default()
    };
    fail.backoff.base = Duration::from_millis(20);
    fail.backoff.max = Duration::from_millis(100);
    config.kinds.insert("fail".into(), fail);
    config.validate().expect("test config is valid");

    let ledger = Ledger::connect(&config.database).await.expect("ledger");
    ledger.sync_kinds(&config).await.expect("sync kinds");
    let broker = Broker::connect(&config.redis).await.expect("broker");
    TestApp {
        config,
        ledger,
        broker,
        redis,
        dir: tempfile::tempdir().expect("tempdir"),
    }
}

impl TestApp {
    /// An in-process daemon with the built-in kinds.
    pub async fn start_daemon(&self) -> Daemon {
        self.start_daemon_with(self.config.clone(), jobrunner_kinds::registry(&self.config))
            .await
    }

    pub async fn start_daemon_with(&self, config: Config, registry: Registry) -> Daemon {
        Daemon::start(config, registry)
            .await
            .expect("daemon starts")
    }

    /// Writes `config` as a TOML file for a daemon process or the CLI.
    pub fn write_config(&self, config: &Config) -> PathBuf {
        let path = self.dir.path().join(format!("{}.toml", Uuid::now_v7()));
        // The daemon needs the real values (a command kind's env, say), not the
        // printed form.
        let mut text = jobrunner::config::with_secrets_exposed(|| toml::to_string(config))
            .expect("config serialises");
        text.push('\n');
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// A `jobrunner run` process with `config`; its log goes to a file that
    /// [`DaemonProcess`] prints if the test fails.
    pub fn spawn_daemon(&self, config: &Config) -> DaemonProcess {
        let path = self.write_config(config);
        let log = self
            .dir
            .path()
            .join(format!("daemon-{}.log", Uuid::now_v7()));
        let child = jobrunner(&path)
            .arg("run")
            .env("RUST_LOG", "info,jobrunner=debug,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn jobrunner run");
        DaemonProcess { child, log }
    }

    /// Runs the CLI with this app's config; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let path = self.write_config(&self.config);
        let out = jobrunner(&path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run jobrunner");
        outcome(&out)
    }

    pub async fn enqueue(&self, kind: &str, payload: Value) -> Uuid {
        self.ledger
            .enqueue(&NewJob {
                kind: kind.into(),
                payload,
                ..NewJob::default()
            })
            .await
            .expect("enqueue")
    }

    /// Waits until the job is final (or fails the test after `secs`).
    pub async fn wait_final(&self, id: Uuid, secs: u64) -> Job {
        let job = self
            .ledger
            .wait_final(id, Some(Duration::from_secs(secs)))
            .await
            .expect("read job");
        assert!(
            job.status.is_final(),
            "job {id} still {} after {secs}s: {job:?}",
            job.status
        );
        job
    }

    /// Waits until `pred` holds for the job's row.
    pub async fn wait_until(
        &self,
        id: Uuid,
        secs: u64,
        what: &str,
        pred: impl Fn(&Job) -> bool,
    ) -> Job {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let job = self.ledger.job(id).await.expect("read job");
            if pred(&job) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} never became {what} within {secs}s: {job:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn count_jobs(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM jobrunner.jobs")
            .fetch_one(self.ledger.pool())
            .await
            .expect("count")
    }
}

/// A daemon process that is killed when dropped, and whose log is printed when the
/// test panics.
/// The `jobrunner` binary with `--config config`, without the environment that
/// would override the file (the service URLs) or the log level (`RUST_LOG`);
/// a test adds the arguments and variables it needs.
pub fn jobrunner(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jobrunner"));
    command
        .arg("--config")
        .arg(config)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("JOBRUNNER_DATABASE_URL")
        .env_remove("JOBRUNNER_REDIS_URL")
        .env_remove("RUST_LOG");
    command
}

/// A finished command's (exit code, stdout, stderr); a signal's exit is -1.
pub fn outcome(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub struct DaemonProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl DaemonProcess {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; None if it is still running after `secs`.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log {} ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// `/bin/sh -c script` as a command kind's program, with no dead exit codes.
pub fn sh_command(script: &str) -> CommandKindConfig {
    CommandKindConfig {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        dead_exit_codes: vec![],
        env: BTreeMap::new(),
        working_dir: None,
    }
}

/// One command with binary-safe arguments, sent over a fresh connection to the
/// app's Redis the way a bare client (redis-py, a producer without a library)
/// sends it; the reply is read from what this returns.
pub fn send_to_redis(app: &TestApp, args: &[&[u8]]) -> std::io::BufReader<std::net::TcpStream> {
    use std::io::Write as _;
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", app.redis.port())).expect("connect");
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        request.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        request.extend_from_slice(a);
        request.extend_from_slice(b"\r\n");
    }
    stream.write_all(&request).expect("send");
    std::io::BufReader::new(stream)
}

/// A `command` kind running `script` with `/bin/sh`, failing fast; exit code 3
/// ends the job dead.
pub fn sh_kind(script: &str) -> KindConfig {
    let mut kind = KindConfig {
        max_attempts: 3,
        handler: Some(HandlerName::Command),
        command: Some(CommandKindConfig {
            dead_exit_codes: vec![3],
            ..sh_command(script)
        }),
        ..KindConfig::default()
    };
    kind.backoff.base = Duration::from_millis(20);
    kind.backoff.max = Duration::from_millis(50);
    kind
}

/// A status change of attempt `token` as a worker sends it to the status
/// writer, without result or error, for tests that drive a writer by hand.
pub fn status_update(id: Uuid, token: i64, status: Status, attempts: i32) -> StatusUpdate {
    StatusUpdate {
        id,
        token,
        status,
        attempts,
        at: chrono::Utc::now(),
        result: None,
        last_error: None,
        run_at: None,
        progress: None,
        handed_back: false,
    }
}
