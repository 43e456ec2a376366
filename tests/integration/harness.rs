//! Throwaway PostgreSQL and Redis servers for the integration tests.
//!
//! Everything here starts *real* servers from the binaries installed on the
//! machine (no Docker, no mocks, nothing downloaded), each on a free TCP port
//! on 127.0.0.1 and in its own temporary directory. The standard ports
//! (5432, 6379) and any system instances are never touched.
//!
//! # No orphaned servers
//!
//! Statics are never dropped and a test process may be killed with SIGKILL, so
//! `Drop` alone cannot guarantee cleanup. Every server (and `initdb`) is
//! therefore launched through a tiny `sh` supervisor (see [`SUPERVISOR`]):
//!
//! ```text
//! sh -c '"$@" >>LOG 2>&1 </dev/null & pid=$!; echo $pid; read sig || sig=DEFAULT; kill -s $sig $pid; wait $pid'
//! ```
//!
//! The supervisor's stdin is a pipe whose write end only this process holds
//! (std creates it close-on-exec, so no other child inherits it):
//!
//! * to stop/kill/restart a server on purpose we write a signal name (`INT`,
//!   `QUIT`, `KILL`) into that pipe; the supervisor signals the server and
//!   waits for it to exit, and we wait for the supervisor;
//! * when the test process exits for any reason (normal exit, panic, SIGKILL),
//!   the kernel closes the pipe, `read` hits EOF, and the supervisor stops the
//!   server (`QUIT` = immediate shutdown for Postgres, `KILL` for Redis,
//!   and for a running `initdb`, whose bootstrap backend then exits on EOF)
//!   and waits for it.
//!
//! Each temporary directory likewise has a [`Janitor`] (`sh` blocked in `read`
//! on another such pipe). Every supervisor's pid is written to it; when its
//! pipe closes it waits for those supervisors (hence their servers) to exit
//! and then `rm -rf`s the directory. So the directories go away too, even when
//! the process dies while no server is running (during `initdb`, between
//! `Redis::kill` and `Redis::start_again`, after `Postgres::stop`). After a
//! SIGKILL all this happens asynchronously: typically well under a second,
//! a few seconds on a heavily loaded machine.
//!
//! Supervisor and janitor ignore SIGINT/SIGTERM/SIGHUP so that they survive a
//! Ctrl-C (or a SIGTERM to the process group) long enough to clean up after
//! the pipe closes.
//!
//! When running as root, PostgreSQL (which refuses to run as root) is run as
//! the `postgres` OS user through `runuser -u postgres --`, supervisor
//! included, and its temporary directory is chowned to that user.

#![allow(dead_code)]

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long a server may take to become ready before the start is declared failed.
const PG_READY_TIMEOUT: Duration = Duration::from_secs(60);
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How many fresh ports `start()` tries if the chosen one turns out to be taken.
const PORT_ATTEMPTS: u32 = 5;
/// How long a restart on the *same* port keeps retrying while the port is busy.
const SAME_PORT_RETRY: Duration = Duration::from_secs(10);
/// Number of lines of a server log quoted in panic messages.
const LOG_TAIL_LINES: usize = 40;

/// The supervisor script, run as `sh -c SUPERVISOR name LOG DEFAULT_SIG PROGRAM ARGS...`.
///
/// It starts `PROGRAM ARGS...` in the background (output appended to LOG, stdin
/// from /dev/null), prints its pid on stdout, then blocks reading one line
/// from its stdin (a pipe held by the test process):
/// * a line `SIG`: send SIG to the program and wait for it;
/// * EOF (the test process closed the pipe or died): send DEFAULT_SIG and wait.
///
/// The supervisor exits with the program's exit status.
const SUPERVISOR: &str = r#"
log=$1; dflt=$2; shift 2
"$@" >>"$log" 2>&1 </dev/null &
pid=$!
trap '' INT TERM HUP
echo "$pid"
exec >&2
read -r sig || sig=$dflt
kill -s "${sig:-$dflt}" "$pid" 2>/dev/null
wait "$pid"
"#;

/// The janitor script, run as `sh -c JANITOR name DIR`: reads pids (one per
/// line) from its stdin (a pipe held by the test process) until the pipe is
/// closed (on purpose or because the test process died); then waits for those
/// processes (our supervisors) to exit (at most ~30 s in total) and removes
/// DIR (retrying while a straggler still writes into it).
const JANITOR: &str = r#"
trap '' INT TERM HUP
pids=
while read -r line; do
    case $line in
        '' | *[!0-9]*) ;;
        *) pids="$pids $line" ;;
    esac
done
alive() {
    # Exists and is not a zombie (orphans may stay unreaped for a while).
    read -r _ _ state _ <"/proc/$1/stat" 2>/dev/null && [ "$state" != Z ]
}
i=0
for pid in $pids; do
    while alive "$pid" && [ "$i" -lt 300 ]; do
        sleep 0.1
        i=$((i + 1))
    done
done
i=0
while [ -e "$1" ] && [ "$i" -lt 100 ]; do
    rm -rf "$1" 2>/dev/null || sleep 0.1
    i=$((i + 1))
done
"#;

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

/// One throwaway PostgreSQL cluster.
///
/// Created with [`Postgres::start`]; the cluster lives in its own temporary
/// directory (data directory, Unix socket and `postgres.log`) and listens on a
/// free TCP port on 127.0.0.1. Authentication is `trust`; the superuser is
/// `postgres`. Dropping the value stops the server and removes the directory.
pub struct Postgres {
    port: u16,
    data: PathBuf,
    log: PathBuf,
    /// Run initdb/postgres through `runuser -u postgres --` (we are root).
    as_postgres_user: bool,
    /// Extra `-c name=value` settings, from [`PgSetup::settings`].
    settings: Vec<String>,
    server: Option<Supervised>,
    janitor: Janitor,
    dir: tempfile::TempDir,
}

/// What a cluster needs beyond the defaults (a TLS cluster: its certificate
/// files, `ssl=on` and a `pg_hba.conf` that takes only TLS).
#[derive(Default)]
pub struct PgSetup {
    /// Files written into the cluster's directory (mode 0600, owned by the
    /// server's user): name and contents.
    pub files: Vec<(String, String)>,
    /// `name=value` settings; `{dir}` stands for the cluster's directory.
    pub settings: Vec<String>,
    /// The whole of `pg_hba.conf`, replacing initdb's.
    pub hba: Option<String>,
}

impl Postgres {
    /// `initdb` into a temp dir and start
    /// `postgres -D DIR/data -k DIR -p PORT -c listen_addresses=127.0.0.1` on a
    /// free TCP port, with settings for a fast test cluster (`fsync=off`,
    /// `synchronous_commit=off`, `full_page_writes=off`, `max_connections=300`).
    ///
    /// Blocks until the server accepts connections. When running as root,
    /// `initdb` and `postgres` run as the `postgres` OS user (via
    /// `runuser -u postgres --`) and the temp dir is chowned to that user.
    /// Trust auth, superuser `postgres`, encoding UTF8, locale C.
    ///
    /// Panics (with the tail of the server log) if the cluster cannot be
    /// created or started.
    pub fn start() -> Postgres {
        Postgres::start_with(PgSetup::default())
    }

    /// [`Postgres::start`] with `setup`'s files, settings and `pg_hba.conf`.
    pub fn start_with(setup: PgSetup) -> Postgres {
        let bins = pg_bins();
        let as_postgres_user = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("jobrunner-test-pg-")
            .tempdir()
            .expect("harness: cannot create a temporary directory for Postgres");
        let janitor = Janitor::spawn(dir.path());
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        File::create(&log).expect("harness: cannot create postgres.log");
        if as_postgres_user {
            let out = Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(dir.path())
                .output()
                .expect("harness: cannot run chown");
            assert!(
                out.status.success(),
                "harness: `chown -R postgres: {}` failed (is there a `postgres` OS user?): {}",
                dir.path().display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // initdb runs supervised too, so that it is stopped if we die meanwhile.
        let mut initdb_args: Vec<OsString> = vec!["-D".into(), data.clone().into()];
        initdb_args.extend(
            [
                "--no-sync",
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
            ]
            .map(OsString::from),
        );
        let mut initdb = Supervised::spawn(
            &janitor,
            as_postgres_user,
            dir.path(),
            &log,
            "KILL",
            &bins.initdb,
            &initdb_args,
        )
        .unwrap_or_else(|e| panic!("harness: initdb: {e}"));
        let deadline = Instant::now() + PG_READY_TIMEOUT;
        while pid_alive(initdb.pid) && Instant::now() < deadline {
            sleep(Duration::from_millis(10));
        }
        // CONT is a no-op for the (exited) initdb; it only makes the supervisor
        // reap it and exit with its status. If initdb hung, it gets KILL.
        let signal = if pid_alive(initdb.pid) {
            "KILL"
        } else {
            "CONT"
        };
        let status = initdb.stop(signal);
        if signal != "CONT" || !status.is_some_and(|s| s.success()) {
            panic!(
                "harness: initdb failed ({status:?}); last lines of {}:\n{}",
                log.display(),
                log_tail(&log, 0)
            );
        }

        for (name, contents) in &setup.files {
            let to = dir.path().join(name);
            fs::write(&to, contents).expect("harness: write a file into the cluster's directory");
            fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).expect("harness: chmod");
        }
        if let Some(hba) = &setup.hba {
            fs::write(data.join("pg_hba.conf"), hba).expect("harness: write pg_hba.conf");
        }
        if as_postgres_user && (!setup.files.is_empty() || setup.hba.is_some()) {
            let out = Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(dir.path())
                .output()
                .expect("harness: cannot run chown");
            assert!(out.status.success(), "harness: chown failed");
        }
        let dir_text = dir.path().display().to_string();
        let settings = setup
            .settings
            .iter()
            .map(|s| s.replace("{dir}", &dir_text))
            .collect();
        let mut pg = Postgres {
            port: 0,
            data,
            log,
            as_postgres_user,
            settings,
            server: None,
            janitor,
            dir,
        };
        launch_on_a_free_port("Postgres", |port| {
            pg.port = port;
            pg.launch()
        });
        pg
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/NAME`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db)
    }

    /// The same database through the cluster's Unix socket, which a
    /// `pg_hba.conf` taking only TLS over TCP still lets in (`local` lines).
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@localhost/{db}?host={}&port={}",
            self.dir.path().display(),
            self.port
        )
    }

    /// The temporary directory holding the data directory, socket and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `CREATE DATABASE name` (optionally `TEMPLATE template`) and return the
    /// new database's url.
    ///
    /// Safe to call concurrently from many tests (each call uses its own
    /// short-lived connection to the `postgres` database). `CREATE DATABASE ...
    /// TEMPLATE t` fails with `55006 object_in_use` while another session is
    /// connected to `t` (Postgres itself already waits ~5 s for them to go
    /// away); that error is retried a few times with a short sleep. Close every
    /// connection to a template before creating databases from it.
    pub async fn create_database(&self, name: &str, template: Option<&str>) -> String {
        use sqlx::Connection;

        const ATTEMPTS: u32 = 5;
        let mut sql = format!("CREATE DATABASE {}", quote_ident(name));
        if let Some(t) = template {
            sql.push_str(" TEMPLATE ");
            sql.push_str(&quote_ident(t));
        }
        for attempt in 1..=ATTEMPTS {
            let mut conn = sqlx::PgConnection::connect(&self.url("postgres"))
                .await
                .unwrap_or_else(|e| {
                    panic!("harness: cannot connect to {}: {e}", self.url("postgres"))
                });
            let res = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
            match res {
                Ok(_) => return self.url(name),
                Err(e) if attempt < ATTEMPTS && sqlstate(&e).as_deref() == Some("55006") => {
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(e) => panic!(
                    "harness: `{sql}` failed (attempt {attempt}/{ATTEMPTS}): {e}{}",
                    if template.is_some() {
                        " (is a session still connected to the template?)"
                    } else {
                        ""
                    }
                ),
            }
        }
        unreachable!()
    }

    /// Stop the server immediately (`SIGQUIT` = `pg_ctl stop -m immediate`,
    /// i.e. a simulated crash) and start it again on the same port and data
    /// directory; blocks until it accepts connections again (after crash
    /// recovery). Also starts the server if it was [`stop`](Self::stop)ped.
    ///
    /// Note: the cluster runs with `synchronous_commit=off`, so transactions
    /// committed shortly (up to ~0.6 s) before `restart()` are lost, exactly as
    /// after a real crash; one committed right before `restart()` is in
    /// practice always lost. A test that asserts durability across
    /// `restart()` must commit with `synchronous_commit = on` (`SET ...` on
    /// the connection, or `ALTER DATABASE name SET synchronous_commit = on`).
    pub fn restart(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop("QUIT");
        }
        let port = self.port;
        launch_again_on_the_same_port("Postgres", port, || self.launch());
    }

    /// Stop the server (fast shutdown: sessions are terminated, a clean
    /// shutdown checkpoint is written). The data directory is kept; `restart()`
    /// starts it again. Does nothing if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop("INT");
        }
    }

    /// Start `postgres` on `self.port` and wait until it is ready.
    fn launch(&mut self) -> Result<(), LaunchError> {
        let bins = pg_bins();
        let log_offset = file_len(&self.log);
        let mut args: Vec<OsString> = vec![
            "-D".into(),
            self.data.clone().into(),
            "-k".into(),
            self.dir.path().into(),
            "-p".into(),
            self.port.to_string().into(),
        ];
        for setting in [
            "listen_addresses=127.0.0.1",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=300",
        ] {
            args.extend(["-c".into(), setting.into()]);
        }
        for setting in &self.settings {
            args.extend(["-c".into(), setting.into()]);
        }

        let server = Supervised::spawn(
            &self.janitor,
            self.as_postgres_user,
            self.dir.path(),
            &self.log,
            "QUIT",
            &bins.postgres,
            &args,
        )
        .map_err(|message| LaunchError {
            port_busy: false,
            message,
        })?;
        let server_pid = server.pid;

        let data = self.data.clone();
        let port = self.port;
        let ready = move |_: &str| {
            postmaster_ready(&data, server_pid)
                && TcpStream::connect_timeout(&local(port), Duration::from_secs(1)).is_ok()
        };
        await_ready(
            server,
            "postgres",
            "QUIT",
            &self.log,
            log_offset,
            PG_READY_TIMEOUT,
            ready,
        )
        .map(|server| self.server = Some(server))
    }
}

impl Drop for Postgres {
    /// Stop the server (immediate shutdown: the data is thrown away anyway)
    /// and remove the temporary directory.
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop("QUIT");
        }
        self.janitor.finish();
    }
}

/// The cluster shared by all tests in this process, started lazily on first
/// use (via `std::sync::OnceLock`).
///
/// Its `Drop` never runs (it is a static); the supervisor stops it and removes
/// its directory when the test process exits, however it exits. Give each test
/// its own database ([`Postgres::create_database`] + [`unique_name`]).
pub fn shared_postgres() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    SHARED.get_or_init(Postgres::start)
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

/// One throwaway `redis-server` on a free TCP port on 127.0.0.1
/// (`--save "" --appendonly no`, its own temp dir, log in `DIR/redis.log`).
///
/// Dropping the value kills the server and removes the directory.
pub struct Redis {
    port: u16,
    log: PathBuf,
    setup: RedisSetup,
    server: Option<Supervised>,
    janitor: Janitor,
    dir: tempfile::TempDir,
}

/// What a server needs beyond the defaults.
#[derive(Default, Clone)]
pub struct RedisSetup {
    /// Serve TLS only (`--port 0 --tls-port PORT`), with this certificate, key
    /// and CA (PEM files); client certificates are checked when sent.
    pub tls: Option<RedisServerTls>,
    /// Further `--name value` arguments (an ACL `--user` line, say).
    pub args: Vec<String>,
}

#[derive(Clone)]
pub struct RedisServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Redis {
    /// Start a new, empty server on a free port; blocks until `PING` answers
    /// `+PONG`. Panics (with the tail of the log) on failure.
    pub fn start() -> Redis {
        Redis::start_with(RedisSetup::default())
    }

    /// [`Redis::start`] with `setup`'s TLS and arguments. A TLS server is
    /// ready when its log says so (a plain `PING` cannot reach it).
    pub fn start_with(setup: RedisSetup) -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("jobrunner-test-redis-")
            .tempdir()
            .expect("harness: cannot create a temporary directory for Redis");
        let janitor = Janitor::spawn(dir.path());
        let log = dir.path().join("redis.log");
        File::create(&log).expect("harness: cannot create redis.log");
        let mut redis = Redis {
            port: 0,
            log,
            setup,
            server: None,
            janitor,
            dir,
        };
        launch_on_a_free_port("redis-server", |port| {
            redis.port = port;
            redis.launch()
        });
        redis
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0` (`rediss://` for a TLS server)
    pub fn url(&self) -> String {
        let scheme = if self.setup.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// The temporary directory (`--dir`) holding the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// SIGKILL the server and wait until it is gone (all data is lost; new
    /// connections are refused). Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop("KILL");
        }
    }

    /// Start a new, empty server on the *same* port (retrying briefly while
    /// the port is still busy); blocks until `PING` answers. Kills the current
    /// server first if it is still running.
    pub fn start_again(&mut self) {
        self.kill();
        let port = self.port;
        launch_again_on_the_same_port("redis-server", port, || self.launch());
    }

    /// Start `redis-server` on `self.port` and wait until it answers PING.
    fn launch(&mut self) -> Result<(), LaunchError> {
        let bin = redis_bin();
        let log_offset = file_len(&self.log);
        let mut args: Vec<OsString> = match &self.setup.tls {
            None => vec!["--port".into(), self.port.to_string().into()],
            Some(tls) => vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                self.port.to_string().into(),
                "--tls-cert-file".into(),
                tls.cert.clone().into(),
                "--tls-key-file".into(),
                tls.key.clone().into(),
                "--tls-ca-cert-file".into(),
                tls.ca.clone().into(),
                "--tls-auth-clients".into(),
                "optional".into(),
            ],
        };
        args.extend(self.setup.args.iter().map(OsString::from));
        args.extend::<[OsString; 10]>([
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--daemonize".into(),
            "no".into(),
            "--dir".into(),
            self.dir.path().into(),
        ]);
        let server = Supervised::spawn(
            &self.janitor,
            false,
            self.dir.path(),
            &self.log,
            "KILL",
            bin,
            &args,
        )
        .map_err(|message| LaunchError {
            port_busy: false,
            message,
        })?;

        let port = self.port;
        let tls = self.setup.tls.is_some();
        // The log check makes sure it is *our* server that answers.
        let ready =
            move |log: &str| log.contains("Ready to accept connections") && (tls || ping(port));
        await_ready(
            server,
            "redis-server",
            "KILL",
            &self.log,
            log_offset,
            REDIS_READY_TIMEOUT,
            ready,
        )
        .map(|server| self.server = Some(server))
    }
}

impl Drop for Redis {
    /// Kill the server and remove the temporary directory.
    fn drop(&mut self) {
        self.kill();
        self.janitor.finish();
    }
}

// ---------------------------------------------------------------------------
// Chromedriver
// ---------------------------------------------------------------------------

/// One throwaway `chromedriver` (Debian's `chromium-driver`) on a free port on
/// 127.0.0.1, for the dashboard's browser tests. Each test opens its own
/// headless Chromium session through it. Stopped (with its browsers) when the
/// test process exits, like the other servers.
pub struct Chromedriver {
    port: u16,
    server: Option<Supervised>,
    janitor: Janitor,
    dir: tempfile::TempDir,
}

impl Chromedriver {
    /// Starts chromedriver; blocks until it accepts connections.
    pub fn start() -> Chromedriver {
        let dir = tempfile::Builder::new()
            .prefix("jobrunner-test-chromedriver-")
            .tempdir()
            .expect("harness: cannot create a temporary directory for chromedriver");
        let janitor = Janitor::spawn(dir.path());
        let log = dir.path().join("chromedriver.log");
        File::create(&log).expect("harness: cannot create chromedriver.log");
        let bin = find_bin("chromedriver", &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])
            .expect("harness: chromedriver is not installed (Debian: chromium-driver; scripts/test.sh installs it)");
        let mut driver = Chromedriver {
            port: 0,
            server: None,
            janitor,
            dir,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            driver.port = free_port();
            let args: Vec<OsString> = vec![
                format!("--port={}", driver.port).into(),
                "--allowed-ips=127.0.0.1".into(),
            ];
            let server = Supervised::spawn(
                &driver.janitor,
                false,
                driver.dir.path(),
                &log,
                // TERM lets chromedriver close the browsers it started.
                "TERM",
                &bin,
                &args,
            )
            .unwrap_or_else(|message| panic!("harness: chromedriver: {message}"));
            let port = driver.port;
            match await_ready(
                server,
                "chromedriver",
                "KILL",
                &log,
                0,
                REDIS_READY_TIMEOUT,
                |log| {
                    log.contains("started successfully")
                        && TcpStream::connect_timeout(&local(port), Duration::from_secs(1)).is_ok()
                },
            ) {
                Ok(server) => {
                    driver.server = Some(server);
                    return driver;
                }
                Err(e) if e.port_busy && attempt < PORT_ATTEMPTS => continue,
                Err(e) => panic!("harness: chromedriver failed to start: {}", e.message),
            }
        }
        unreachable!()
    }

    /// The WebDriver URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop("TERM");
        }
        self.janitor.finish();
    }
}

/// The chromedriver shared by all browser tests in this process.
pub fn shared_chromedriver() -> &'static Chromedriver {
    static SHARED: OnceLock<Chromedriver> = OnceLock::new();
    SHARED.get_or_init(Chromedriver::start)
}

/// The Chromium binary chromedriver should start.
pub fn chromium_bin() -> Option<PathBuf> {
    find_bin(
        "chromium",
        &["/usr/bin/chromium", "/usr/lib/chromium/chromium"],
    )
}

/// `name` on the PATH, else the first of `fallbacks` that exists.
fn find_bin(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/// A process-unique name for a test's database / key prefix:
/// `t_<prefix-sanitized>_<counter>`, e.g. `unique_name("enqueue::retries")`
/// → `t_enqueue__retries_7`. Only `[a-z0-9_]`, at most 63 bytes (a valid
/// unquoted Postgres identifier).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    let suffix = format!("_{n}");
    let mut body: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    body.truncate(63 - "t_".len() - suffix.len());
    format!("t_{body}{suffix}")
}

// ---------------------------------------------------------------------------
// Supervisor
// ---------------------------------------------------------------------------

/// A server process running under the [`SUPERVISOR`] shell.
pub(crate) struct Supervised {
    /// The supervisor (`sh`, or `runuser` running `sh`).
    child: Child,
    /// Write end of the supervisor's stdin; closing it stops the server.
    stdin: Option<ChildStdin>,
    /// Pid of the server process itself.
    pub(crate) pid: u32,
    /// Signal used when dropped without an explicit stop.
    default_signal: &'static str,
}

impl Supervised {
    /// Start `program args...` under a new supervisor (registered with
    /// `janitor`), with `dir` as working directory and output appended to `log`.
    pub(crate) fn spawn(
        janitor: &Janitor,
        as_postgres_user: bool,
        dir: &Path,
        log: &Path,
        default_signal: &'static str,
        program: &Path,
        args: &[OsString],
    ) -> Result<Supervised, String> {
        let mut cmd = if as_postgres_user {
            let mut c = Command::new(runuser_bin());
            c.args(["-u", "postgres", "--", "sh"]);
            c
        } else {
            Command::new("sh")
        };
        cmd.arg("-c")
            .arg(SUPERVISOR)
            .arg("jobrunner-test-supervisor")
            .arg(log)
            .arg(default_signal)
            .arg(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(append_to(log));
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot spawn the supervisor for {}: {e}", program.display()))?;
        janitor.watch(child.id());
        let stdin = child.stdin.take();
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line);
        match line.trim().parse::<u32>() {
            Ok(pid) if read.is_ok() => Ok(Supervised {
                child,
                stdin,
                pid,
                default_signal,
            }),
            _ => {
                drop(stdin);
                let _ = child.kill();
                let status = child.wait();
                Err(format!(
                    "the supervisor for {} did not report a pid (read {line:?}, exit {status:?}); last lines of {}:\n{}",
                    program.display(),
                    log.display(),
                    log_tail(log, 0)
                ))
            }
        }
    }

    /// Ask the supervisor to send `signal` to the server, then wait for both to
    /// exit (escalating to SIGKILL after 30 s). Returns the supervisor's exit
    /// status, which is the server's.
    pub(crate) fn stop(&mut self, signal: &str) -> Option<std::process::ExitStatus> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(format!("{signal}\n").as_bytes());
            // Dropping `stdin` closes the pipe.
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(5)),
                _ => {
                    signal_pid(self.pid, "KILL");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        if pid_alive(self.pid) {
            // Only possible if the supervisor died abnormally.
            signal_pid(self.pid, "KILL");
        }
        status
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            self.stop(self.default_signal);
        }
    }
}

/// Removes a directory when [`finish`](Janitor::finish)ed, dropped, or when
/// this process dies (see [`JANITOR`]).
pub(crate) struct Janitor {
    child: Option<Child>,
}

impl Janitor {
    pub(crate) fn spawn(dir: &Path) -> Janitor {
        let child = Command::new("sh")
            .arg("-c")
            .arg(JANITOR)
            .arg("jobrunner-test-janitor")
            .arg(dir)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("harness: cannot spawn the janitor shell");
        Janitor { child: Some(child) }
    }

    /// Make the janitor wait for process `pid` to exit before removing the
    /// directory.
    fn watch(&self, pid: u32) {
        if let Some(stdin) = self.child.as_ref().and_then(|c| c.stdin.as_ref()) {
            let mut stdin: &ChildStdin = stdin;
            let _ = writeln!(stdin, "{pid}");
        }
    }

    /// Close the pipe and wait until the directory has been removed.
    pub(crate) fn finish(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        self.finish();
    }
}

pub(crate) struct LaunchError {
    /// The server could not bind its port (another process holds it).
    pub(crate) port_busy: bool,
    pub(crate) message: String,
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

struct PgBins {
    postgres: PathBuf,
    initdb: PathBuf,
}

/// Locate `postgres` and `initdb`: from PATH first, else the highest version
/// under `/usr/lib/postgresql/*/bin`.
fn pg_bins() -> &'static PgBins {
    static BINS: OnceLock<PgBins> = OnceLock::new();
    BINS.get_or_init(|| {
        if let Some(postgres) = which("postgres") {
            let postgres = fs::canonicalize(&postgres).unwrap_or(postgres);
            // Prefer the initdb next to the real postgres binary (same version).
            let sibling = postgres.with_file_name("initdb");
            let initdb = if is_executable(&sibling) {
                Some(sibling)
            } else {
                which("initdb").map(|p| fs::canonicalize(&p).unwrap_or(p))
            };
            if let Some(initdb) = initdb {
                return PgBins { postgres, initdb };
            }
        }
        let mut candidates: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let version = name.split('.').map(|p| p.parse::<u32>().ok()).collect::<Option<Vec<_>>>()?;
                let bin = entry.path().join("bin");
                (is_executable(&bin.join("postgres")) && is_executable(&bin.join("initdb")))
                    .then_some((version, bin))
            })
            .collect();
        candidates.sort();
        let (_, bin) = candidates.pop().expect(
            "harness: PostgreSQL not found (no `postgres`/`initdb` on PATH, nothing under /usr/lib/postgresql/*/bin)",
        );
        PgBins { postgres: bin.join("postgres"), initdb: bin.join("initdb") }
    })
}

pub(crate) fn redis_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        which("redis-server")
            .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| is_executable(p)))
            .expect("harness: redis-server not found on PATH")
    })
}

fn runuser_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        which("runuser")
            .or_else(|| {
                ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
                    .into_iter()
                    .map(PathBuf::from)
                    .find(|p| is_executable(p))
            })
            .expect("harness: running as root but `runuser` not found (needed to run Postgres as `postgres`)")
    })
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Effective uid == 0, from /proc/self/status (falls back to `id -u`).
fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        if let Ok(status) = fs::read_to_string("/proc/self/status")
            && let Some(line) = status.lines().find(|l| l.starts_with("Uid:"))
        {
            // "Uid: real effective saved fs"
            return line.split_whitespace().nth(2) == Some("0");
        }
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

/// A free TCP port on 127.0.0.1 (never 5432/6379, never handed out twice by
/// this process).
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("harness: cannot bind 127.0.0.1:0 to find a free port")
            .port();
        if port != 5432 && port != 6379 && handed_out.lock().unwrap().insert(port) {
            return port;
        }
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// True if `PING` on 127.0.0.1:port answers `+PONG`.
pub(crate) fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&local(port), Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && buf.starts_with(b"+PONG")
}

/// Starts a server with `launch` on a free port, and on another while the one
/// picked turns out taken (another process bound it first), up to
/// [`PORT_ATTEMPTS`] ports. Panics with the server's log on any other failure.
fn launch_on_a_free_port(name: &str, mut launch: impl FnMut(u16) -> Result<(), LaunchError>) {
    for attempt in 1..=PORT_ATTEMPTS {
        let port = free_port();
        match launch(port) {
            Ok(()) => return,
            Err(e) if e.port_busy && attempt < PORT_ATTEMPTS => continue,
            Err(e) => panic!(
                "harness: {name} failed to start on port {port}: {}",
                e.message
            ),
        }
    }
    unreachable!()
}

/// Starts a server with `launch` again on its own `port`, retrying for
/// [`SAME_PORT_RETRY`] while the port is still held (the old process's socket
/// may linger a moment after it exited).
fn launch_again_on_the_same_port(
    name: &str,
    port: u16,
    mut launch: impl FnMut() -> Result<(), LaunchError>,
) {
    let deadline = Instant::now() + SAME_PORT_RETRY;
    loop {
        match launch() {
            Ok(()) => return,
            Err(e) if e.port_busy && Instant::now() < deadline => sleep(Duration::from_millis(100)),
            Err(e) => panic!(
                "harness: {name} failed to restart on port {port}: {}",
                e.message
            ),
        }
    }
}

/// The postmaster with `pid` wrote "ready" into DATA/postmaster.pid.
fn postmaster_ready(data: &Path, pid: u32) -> bool {
    let Ok(contents) = fs::read_to_string(data.join("postmaster.pid")) else {
        return false;
    };
    let lines: Vec<&str> = contents.lines().collect();
    lines.first().map(|l| l.trim()) == Some(pid.to_string().as_str())
        && lines.get(7).map(|l| l.trim()) == Some("ready")
}

/// Polls `ready` (given the server's log since `log_offset`) until it holds, the
/// server exits, or `timeout` passes; on failure the server is stopped with
/// `stop_signal` and the error carries the end of its log.
pub(crate) fn await_ready(
    mut server: Supervised,
    name: &str,
    stop_signal: &str,
    log: &Path,
    log_offset: u64,
    timeout: Duration,
    ready: impl Fn(&str) -> bool,
) -> Result<Supervised, LaunchError> {
    let deadline = Instant::now() + timeout;
    loop {
        let output = read_log(log, log_offset);
        if ready(&output) {
            return Ok(server);
        }
        if !pid_alive(server.pid) {
            server.stop(stop_signal);
            let output = read_log(log, log_offset);
            return Err(LaunchError {
                port_busy: output.contains("Address already in use"),
                message: format!(
                    "{name} exited during startup; last lines of {}:\n{}",
                    log.display(),
                    tail(&output)
                ),
            });
        }
        if Instant::now() > deadline {
            server.stop(stop_signal);
            return Err(LaunchError {
                port_busy: false,
                message: format!(
                    "{name} not ready after {timeout:?}; last lines of {}:\n{}",
                    log.display(),
                    log_tail(log, log_offset)
                ),
            });
        }
        sleep(Duration::from_millis(5));
    }
}

/// The process exists and is not a zombie.
pub(crate) fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(
                stat[i + 1..].trim_start().chars().next(),
                Some('Z' | 'X') | None
            ),
            None => true,
        },
        Err(_) => false,
    }
}

pub(crate) fn signal_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn append_to(path: &Path) -> File {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap_or_else(|e| panic!("harness: cannot open {}: {e}", path.display()))
}

pub(crate) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Contents of a log file from byte `offset` on.
pub(crate) fn read_log(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

pub(crate) fn log_tail(path: &Path, offset: u64) -> String {
    tail(&read_log(path, offset))
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    let out = lines[from..].join("\n");
    if out.is_empty() {
        "(log is empty)".to_owned()
    } else {
        out
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}
