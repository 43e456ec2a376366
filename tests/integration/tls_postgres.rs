//! TLS to a real Postgres: a cluster of its own with `ssl=on`, a CA and server
//! certificate made at test time, and a `pg_hba.conf` that takes only TLS over
//! TCP (the Unix socket stays open for setting up). The server's certificate
//! names `localhost` only, so `127.0.0.1` is a name mismatch.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use jobrunner::config::DatabaseConfig;
use jobrunner::jobs::Registry;
use jobrunner::ledger::{Ledger, NewJob, Status};
use serde_json::json;
use sqlx::Connection;
use tokio::sync::OnceCell;

use crate::harness::{self, PgSetup, Postgres};
use crate::helpers::spawn_app;
use crate::pki::{self, Pki};

/// The password of the `pwuser` role (scram-sha-256).
pub const PG_PASSWORD: &str = "pg-pass-4f1d9c";

/// First match wins: `certuser` must show a client certificate naming it,
/// `pwuser` a password; everyone else is trusted, but only over TLS.
const HBA: &str = "\
local all all trust
hostssl all certuser 127.0.0.1/32 cert
hostssl all pwuser 127.0.0.1/32 scram-sha-256
hostssl all all 127.0.0.1/32 trust
";

pub struct TlsPg {
    pub pg: Postgres,
    /// The CA that signed the server's certificate.
    pub ca: PathBuf,
    /// A CA that signed nothing the server shows.
    pub wrong_ca: PathBuf,
    /// A client certificate and key for the role `certuser`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// The TLS cluster every test here shares (its files live in its directory,
/// removed with it when the test binary exits).
pub fn tls_pg() -> &'static TlsPg {
    static CLUSTER: OnceLock<TlsPg> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let pki = Pki::new("jobrunner test CA");
        let server = pki.server(&["localhost"]);
        let pg = Postgres::start_with(PgSetup {
            files: vec![
                ("server.crt".into(), server.cert),
                ("server.key".into(), server.key),
                ("ca.crt".into(), pki.ca_pem()),
            ],
            settings: vec![
                "ssl=on".into(),
                "ssl_cert_file={dir}/server.crt".into(),
                "ssl_key_file={dir}/server.key".into(),
                "ssl_ca_file={dir}/ca.crt".into(),
            ],
            hba: Some(HBA.into()),
        });
        let dir = pg.dir().to_owned();
        let client = pki.client("certuser");
        TlsPg {
            ca: pki::write(&dir, "client-ca.pem", &pki.ca_pem()),
            wrong_ca: pki::write(&dir, "wrong-ca.pem", &Pki::new("another CA").ca_pem()),
            client_cert: pki::write(&dir, "client.crt", &client.cert),
            client_key: pki::write(&dir, "client.key", &client.key),
            pg,
        }
    })
}

/// A fresh migrated database on the TLS cluster, made through the socket.
pub async fn tls_database() -> String {
    static TEMPLATE: OnceCell<String> = OnceCell::const_new();
    let cluster = tls_pg();
    let template = TEMPLATE
        .get_or_init(|| async {
            let name = harness::unique_name("tls_template");
            admin(&format!(
                "CREATE ROLE certuser LOGIN SUPERUSER; \
                 CREATE ROLE pwuser LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}'"
            ))
            .await;
            admin(&format!("CREATE DATABASE {name}")).await;
            let config = DatabaseConfig {
                url: cluster.pg.socket_url(&name).into(),
                ..DatabaseConfig::default()
            };
            let ledger = Ledger::connect(&config)
                .await
                .expect("template over the socket");
            ledger
                .migrate(&jobrunner_kinds::migrations())
                .await
                .expect("migrate the template");
            ledger.pool().close().await;
            name
        })
        .await;
    let name = harness::unique_name("tls");
    admin(&format!("CREATE DATABASE {name} TEMPLATE {template}")).await;
    name
}

async fn admin(sql: &str) {
    let url = tls_pg().pg.socket_url("postgres");
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

/// `postgres://USER@HOST:PORT/DB?PARAMS` on the TLS cluster.
pub fn tls_url(user: &str, host: &str, db: &str, params: &str) -> String {
    format!(
        "postgres://{user}@{host}:{}/{db}?{params}",
        tls_pg().pg.port()
    )
}

fn database(url: String) -> DatabaseConfig {
    DatabaseConfig {
        url: url.into(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(10),
        ..DatabaseConfig::default()
    }
}

async fn connect_error(url: String) -> String {
    let err = Ledger::connect(&database(url))
        .await
        .expect_err("the connection is refused");
    jobrunner::error_chain(&err)
}

async fn uses_tls(ledger: &Ledger) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(ledger.pool())
        .await
        .expect("read pg_stat_ssl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_runs_a_job_end_to_end_over_tls() {
    let app = spawn_app().await;
    let db = tls_database().await;
    let ca = tls_pg().ca.display().to_string();
    let mut config = app.config.clone();
    config.database = database(tls_url(
        "postgres",
        "localhost",
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    let ledger = Ledger::connect(&config.database)
        .await
        .expect("verify-full with the right CA and name connects");
    assert!(uses_tls(&ledger).await, "the server sees a TLS connection");

    let daemon = app
        .start_daemon_with(config.clone(), Registry::builtin(&config))
        .await;
    let id = ledger
        .enqueue(&NewJob {
            kind: "noop".into(),
            payload: json!({"over": "tls"}),
            ..NewJob::default()
        })
        .await
        .expect("enqueue over TLS");
    let job = ledger
        .wait_final(id, Some(Duration::from_secs(20)))
        .await
        .expect("read the job");
    assert_eq!(job.status, Status::Succeeded, "{job:?}");
    assert_eq!(job.result, Some(json!({"over": "tls"})));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_or_for_another_name_is_refused_with_the_reason() {
    let db = tls_database().await;
    let cluster = tls_pg();
    let wrong = cluster.wrong_ca.display().to_string();
    let text = connect_error(tls_url(
        "postgres",
        "localhost",
        &db,
        &format!("sslmode=verify-full&sslrootcert={wrong}"),
    ))
    .await;
    assert!(
        text.contains("the server's certificate is not signed by a CA in sslrootcert")
            && text.contains(&wrong)
            && text.contains(&format!(
                "postgres://postgres@localhost:{}/{db}",
                cluster.pg.port()
            )),
        "{text}"
    );

    // Reached as 127.0.0.1, the certificate (for `localhost`) names another host:
    // verify-full refuses, verify-ca (the CA alone) accepts.
    let ca = cluster.ca.display().to_string();
    let text = connect_error(tls_url(
        "postgres",
        "127.0.0.1",
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert!(
        text.contains("does not name the host `127.0.0.1`"),
        "{text}"
    );
    let ledger = Ledger::connect(&database(tls_url(
        "postgres",
        "127.0.0.1",
        &db,
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    )))
    .await
    .expect("verify-ca does not check the name");
    assert!(uses_tls(&ledger).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_disable_is_refused_by_a_server_that_takes_only_tls() {
    let db = tls_database().await;
    let text = connect_error(tls_url("postgres", "localhost", &db, "sslmode=disable")).await;
    assert!(
        text.contains("the server refused a connection without TLS (sslmode=disable)"),
        "{text}"
    );
    // `require` encrypts without checking the certificate; `prefer` and `allow`
    // find their way to TLS on such a server too.
    for mode in ["require", "prefer", "allow"] {
        let ledger = Ledger::connect(&database(tls_url(
            "postgres",
            "127.0.0.1",
            &db,
            &format!("sslmode={mode}"),
        )))
        .await
        .unwrap_or_else(|e| panic!("sslmode={mode}: {}", jobrunner::error_chain(&e)));
        assert!(uses_tls(&ledger).await, "sslmode={mode}");
    }

    // The other way round: a server without TLS (the shared cluster) and a
    // mode that needs it.
    let plain = harness::shared_postgres().url("postgres");
    let text = connect_error(format!("{plain}?sslmode=require")).await;
    assert!(
        text.contains("sslmode=require needs TLS and the server did not agree to it"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_as_the_role_it_names() {
    let db = tls_database().await;
    let cluster = tls_pg();
    let ca = cluster.ca.display().to_string();
    let with_cert = format!(
        "sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
        cluster.client_cert.display(),
        cluster.client_key.display()
    );
    let ledger = Ledger::connect(&database(tls_url("certuser", "localhost", &db, &with_cert)))
        .await
        .unwrap_or_else(|e| panic!("{}", jobrunner::error_chain(&e)));
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(ledger.pool())
        .await
        .unwrap();
    assert_eq!(user, "certuser");

    let text = connect_error(tls_url(
        "certuser",
        "localhost",
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert!(text.contains("certificate"), "without one: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pgssl_variables_reach_every_subcommand() {
    let app = spawn_app().await;
    let db = tls_database().await;
    let cluster = tls_pg();
    let mut config = app.config.clone();
    // No TLS settings in the URL: they come from the environment, as with libpq.
    config.database.url = tls_url("postgres", "localhost", &db, "").into();
    let path = app.write_config(&config);
    let run = |args: &[&str], ca: &PathBuf| {
        let out = crate::helpers::jobrunner(&path)
            .args(args)
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", ca)
            .output()
            .expect("run jobrunner");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = run(&["migrate"], &cluster.ca);
    assert_eq!(code, Some(0), "migrate: {err}");
    let (code, out, err) = run(&["enqueue", "noop"], &cluster.ca);
    assert_eq!(code, Some(0), "enqueue: {err}");
    let id = out.trim().to_owned();
    let (code, out, err) = run(&["jobs", "--json"], &cluster.ca);
    assert_eq!(code, Some(0), "jobs: {err}");
    assert!(out.contains(&id), "{out}");
    let (code, out, err) = run(&["queues"], &cluster.ca);
    assert_eq!(code, Some(0), "queues: {err}");
    assert!(out.contains("default"), "{out}");

    let (code, _, err) = run(&["jobs"], &cluster.wrong_ca);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("not signed by a CA in sslrootcert")
            && err.contains(&cluster.wrong_ca.display().to_string()),
        "{err}"
    );
}
