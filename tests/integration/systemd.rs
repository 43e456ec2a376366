//! Running under systemd: the notification protocol as a real `jobrunner run`
//! process speaks it to a socket we bind, and the shipped unit file as
//! `systemd-analyze verify` sees it.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use crate::helpers::{DaemonProcess, TestApp, spawn_app};

/// `jobrunner --config PATH run` with extra environment variables; stdout goes to
/// its own file so tests can check the daemon prints nothing there.
pub fn spawn_with_env(app: &TestApp, config: &Path, env: &[(&str, &str)]) -> DaemonProcess {
    let log = app
        .dir
        .path()
        .join(format!("daemon-{}.log", Uuid::now_v7()));
    let mut command = crate::helpers::jobrunner(config);
    command
        .arg("run")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "info,jobrunner=debug,sqlx=warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log.with_extension("stdout")).expect("stdout file"))
        .stderr(std::fs::File::create(&log).expect("log file"));
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().expect("spawn jobrunner run");
    DaemonProcess { child, log }
}

/// A bound notification socket and every message it received, with arrival times.
pub struct NotifySocket {
    pub path: std::path::PathBuf,
    received: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join(format!("notify-{}.sock", Uuid::now_v7().simple()));
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::downgrade(&received);
        // Reads until the test drops its handle on the messages.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Some(sink) = sink.upgrade() {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        NotifySocket { path, received }
    }

    pub fn messages(&self) -> Vec<String> {
        let got = self.received.lock().unwrap();
        got.iter().map(|(_, m)| m.clone()).collect()
    }

    /// Waits until a message satisfies `pred`; returns its index.
    pub fn wait_for(&self, secs: u64, what: &str, pred: impl Fn(&str) -> bool) -> usize {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(i) = self.messages().iter().position(|m| pred(m)) {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {secs}s; received {:?}",
                self.messages()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn count(&self, message: &str) -> usize {
        self.messages().iter().filter(|m| *m == message).count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_tells_systemd_it_is_ready_healthy_and_stopping() {
    let app = spawn_app().await;
    let socket = NotifySocket::bind(app.dir.path());
    let config = app.write_config(&app.config);
    let mut daemon = spawn_with_env(
        &app,
        &config,
        &[
            ("NOTIFY_SOCKET", socket.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let ready = socket.wait_for(15, "READY=1", |m| m == "READY=1");

    // The status line counts what this daemon finished.
    let id = app.enqueue("noop", json!({})).await;
    app.wait_final(id, 10).await;
    socket.wait_for(10, "a STATUS= line", |m| m.starts_with("STATUS="));
    // WATCHDOG_USEC=1s asks for a ping every 500ms: they keep coming.
    let pings_before = socket.count("WATCHDOG=1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while socket.count("WATCHDOG=1") < pings_before + 3 {
        assert!(
            Instant::now() < deadline,
            "pings stopped: {:?}",
            socket.messages()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Sent every 2s; the first one after the job has the count.
    socket.wait_for(8, "a STATUS= line counting the job", |m| {
        m == "STATUS=running 0 jobs; queues default; 1 done"
    });

    assert!(
        !socket.messages()[..ready].contains(&"STOPPING=1".to_owned()),
        "{:?}",
        socket.messages()
    );
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(15)
        .expect("the daemon exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    let stopping = socket.wait_for(1, "STOPPING=1", |m| m == "STOPPING=1");
    assert!(stopping > ready);
    assert!(
        std::fs::read(daemon.log.with_extension("stdout"))
            .unwrap()
            .is_empty(),
        "the daemon prints nothing on stdout; logs go to stderr"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_stop_while_redis_is_down_and_resume_when_it_returns() {
    let mut app = spawn_app().await;
    let socket = NotifySocket::bind(app.dir.path());
    let config = app.write_config(&app.config);
    let _daemon = spawn_with_env(
        &app,
        &config,
        &[
            ("NOTIFY_SOCKET", socket.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    socket.wait_for(15, "READY=1", |m| m == "READY=1");
    socket.wait_for(5, "WATCHDOG=1", |m| m == "WATCHDOG=1");

    app.redis.kill();
    socket.wait_for(5, "an unhealthy STATUS=", |m| {
        m.starts_with("STATUS=unhealthy (Redis")
    });
    // A check already under way when Redis died may still have pinged; after
    // the unhealthy status none may follow.
    let silent_from = socket.count("WATCHDOG=1");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        socket.count("WATCHDOG=1"),
        silent_from,
        "no pings while Redis is down: {:?}",
        socket.messages()
    );

    app.redis.start_again();
    let deadline = Instant::now() + Duration::from_secs(10);
    while socket.count("WATCHDOG=1") == silent_from {
        assert!(
            Instant::now() < deadline,
            "pings resume once Redis is back: {:?}",
            socket.messages()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_cannot_reach_postgres_never_says_ready_and_exits_1() {
    let app = spawn_app().await;
    let socket = NotifySocket::bind(app.dir.path());
    // A port nothing listens on: bound, read, released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = app.config.clone();
    config.database.url = format!("postgres://postgres@127.0.0.1:{port}/nowhere").into();
    config.database.acquire_timeout = Duration::from_secs(1);
    let path = app.write_config(&config);
    let mut daemon = spawn_with_env(
        &app,
        &path,
        &[
            ("NOTIFY_SOCKET", socket.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let status = daemon
        .wait_exit(20)
        .expect("the daemon gives up when Postgres is unreachable");
    assert_eq!(status.code(), Some(1), "{}", daemon.log_text());
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        socket.messages().iter().all(|m| m != "READY=1"),
        "{:?}",
        socket.messages()
    );
    assert!(
        daemon.log_text().contains("127.0.0.1"),
        "the error names the server: {}",
        daemon.log_text()
    );
}

/// `systemd-analyze verify` on the shipped unit, with ExecStart pointed at the
/// binary just built (verify wants it to exist). Skipped, saying why, where the
/// tool is missing.
#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    assert!(version.status.success());
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/jobrunner.service");
    let text = std::fs::read_to_string(unit).expect("systemd/jobrunner.service");
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/jobrunner run --config /etc/jobrunner/jobrunner.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=30",
        "NotifyAccess=main",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "EnvironmentFile=-/etc/jobrunner/jobrunner.env",
    ] {
        assert!(text.lines().any(|l| l == line), "the unit lacks `{line}`");
    }
    // The stop timeout must cover the default drain.
    let stop: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    let drain = jobrunner::config::Config::default().runtime.drain_timeout;
    assert!(Duration::from_secs(stop) > drain, "{stop}s vs {drain:?}");

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("jobrunner.service");
    let binary = env!("CARGO_BIN_EXE_jobrunner");
    // The commented credentials example is checked as if a drop-in enabled it.
    assert!(
        text.contains("\n#LoadCredential=database-password:"),
        "{text}"
    );
    let text = text
        .replace("\n#LoadCredential=", "\nLoadCredential=")
        .replace("\n#Environment=JOBRUNNER_", "\nEnvironment=JOBRUNNER_");
    std::fs::write(&copy, text.replace("/usr/bin/jobrunner", binary)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", copy.to_str().unwrap()])
        .output()
        .expect("run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify exits 0 on unknown keys too, so any output counts as a failure.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
