//! TLS and ACL credentials to a real Redis: `redis-server` serving TLS only
//! (`--port 0 --tls-port PORT`) with certificates made at test time, the
//! default user switched off and an ACL user `worker` whose password the
//! daemon reads from a file.

use std::path::PathBuf;
use std::time::Duration;

use jobrunner::broker::Broker;
use jobrunner::config::{RedisConfig, RedisTls};
use jobrunner::jobs::Registry;
use jobrunner::ledger::Status;
use serde_json::json;

use crate::harness::{Redis, RedisServerTls, RedisSetup};
use crate::helpers::spawn_app;
use crate::pki::{self, Pki};

/// The ACL user's password.
pub const REDIS_PASSWORD: &str = "redis-pass-8e27b0";

pub struct TlsRedis {
    pub redis: Redis,
    /// The CA that signed the server's certificate, and one that did not.
    pub ca: PathBuf,
    pub wrong_ca: PathBuf,
    /// A file holding [`REDIS_PASSWORD`].
    pub password_file: PathBuf,
    /// Holds the files for as long as the server runs.
    _dir: tempfile::TempDir,
}

/// A TLS-only server whose certificate names `names`, with the ACL user
/// `worker` and no anonymous access.
pub fn tls_redis(names: &[&str]) -> TlsRedis {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("jobrunner test CA");
    let server = pki.server(names);
    let tls = RedisServerTls {
        cert: pki::write(dir.path(), "redis.crt", &server.cert),
        key: pki::write(dir.path(), "redis.key", &server.key),
        ca: pki::write(dir.path(), "ca.pem", &pki.ca_pem()),
    };
    let redis = Redis::start_with(RedisSetup {
        tls: Some(tls.clone()),
        args: ["--user", "worker", "on"]
            .into_iter()
            .map(String::from)
            .chain([format!(">{REDIS_PASSWORD}")])
            .chain(
                ["~*", "&*", "+@all", "--user", "default", "off"]
                    .into_iter()
                    .map(String::from),
            )
            .collect(),
    });
    TlsRedis {
        ca: tls.ca,
        wrong_ca: pki::write(dir.path(), "wrong-ca.pem", &Pki::new("another CA").ca_pem()),
        password_file: pki::write(dir.path(), "redis-password", &format!("{REDIS_PASSWORD}\n")),
        redis,
        _dir: dir,
    }
}

/// `base` pointed at `server` over TLS, as `worker` with the password file.
pub fn tls_config(base: &RedisConfig, server: &TlsRedis) -> RedisConfig {
    RedisConfig {
        url: format!("rediss://127.0.0.1:{}/0", server.redis.port()).into(),
        username: Some("worker".into()),
        password_file: Some(server.password_file.clone()),
        tls: RedisTls {
            ca_file: Some(server.ca.clone()),
            ..RedisTls::default()
        },
        ..base.clone()
    }
}

async fn connect_error(config: &RedisConfig) -> String {
    let err = Broker::connect(config)
        .await
        .expect_err("the connection is refused");
    jobrunner::error_chain(&err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_an_acl_user_and_a_password_file_runs_a_job_end_to_end() {
    let app = spawn_app().await;
    let server = tls_redis(&["127.0.0.1"]);
    let mut config = app.config.clone();
    config.redis = tls_config(&app.config.redis, &server);
    config
        .validate()
        .expect("a TLS config with a password file is valid");

    let daemon = app
        .start_daemon_with(config.clone(), Registry::builtin(&config))
        .await;
    let id = app.enqueue("noop", json!({"via": "rediss"})).await;
    let job = app.wait_final(id, 20).await;
    assert_eq!(job.status, Status::Succeeded, "{job:?}");
    assert_eq!(job.result, Some(json!({"via": "rediss"})));
    daemon.stop().await;

    // The server lets nobody in without the ACL user's password.
    let mut wrong = config.redis.clone();
    wrong.password_file = None;
    wrong.password = Some("not-the-password".into());
    let text = connect_error(&wrong).await;
    assert!(
        text.contains(&format!("rediss://127.0.0.1:{}/0", server.redis.port()))
            && text.contains("WRONGPASS")
            && !text.contains("not-the-password"),
        "{text}"
    );

    // rediss:// to a server that speaks plain text is refused, never downgraded.
    let mut plain = config.redis.clone();
    plain.url = format!("rediss://127.0.0.1:{}/0", app.redis.port()).into();
    // A plain server waits for the end of a command line that never comes.
    plain.connect_timeout = Duration::from_millis(500);
    plain.command_timeout = Duration::from_millis(500);
    let text = connect_error(&plain).await;
    assert!(
        text.contains("the server did not answer the TLS handshake within 500ms"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_refuses_a_server_certificate_from_another_ca_or_for_another_name() {
    let server = tls_redis(&["localhost"]);
    let mut config = tls_config(&RedisConfig::default(), &server);
    config.connect_timeout = Duration::from_secs(5);

    config.tls.ca_file = Some(server.wrong_ca.clone());
    let text = connect_error(&config).await;
    let ca = format!("redis.tls.ca_file {}", server.wrong_ca.display());
    assert!(
        text.contains(&format!(
            "the server's certificate is not signed by a CA in {ca}"
        )),
        "another CA: {text}"
    );

    // The right CA, but the certificate names `localhost` and the URL 127.0.0.1.
    config.tls.ca_file = Some(server.ca.clone());
    let text = connect_error(&config).await;
    assert!(
        text.contains("the server's certificate does not name the host `127.0.0.1`"),
        "another name: {text}"
    );

    config.tls.verify_server_name = false;
    let broker = Broker::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("the CA alone: {}", jobrunner::error_chain(&e)));
    broker.ping().await.expect("PING over TLS");
    broker.quit().await;
}
