//! Who may use the admin listener, as a client meets it: bearer tokens and their
//! scopes, the dashboard's log-in session and its CSRF token, the `Host` check
//! without tokens, and a start-up refused when the listener would be open to
//! the network.

use std::time::Duration;

use jobrunner::config::Config;
use jobrunner::jobs::Registry;
use jobrunner::ledger::{NewJob, Status};
use jobrunner::runtime::Daemon;
use reqwest::header;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};

pub const ADMIN_TOKEN: &str = "admin-0123456789abcdef";
pub const READ_TOKEN: &str = "read-fedcba9876543210";

/// A form body (reqwest is built without its `form` feature).
pub trait FormBody {
    fn form_body(self, fields: &[(&str, &str)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_body(self, fields: &[(&str, &str)]) -> Self {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
    }
}

/// A plain-HTTP client that shows redirects instead of following them.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// The app's config with a tokens file holding one admin and one read token.
pub fn with_tokens(app: &TestApp) -> Config {
    let path = app.dir.path().join("tokens");
    std::fs::write(
        &path,
        format!("# scope token\nadmin {ADMIN_TOKEN}\nread {READ_TOKEN}  # support\n"),
    )
    .expect("write tokens file");
    let mut config = app.config.clone();
    config.admin.tokens_file = Some(path);
    config
}

pub fn base(daemon: &Daemon) -> String {
    format!("http://{}", daemon.admin_addr().expect("listener on"))
}

/// A job due in an hour: it waits, so it can be cancelled and retried.
pub async fn waiting_job(app: &TestApp) -> Uuid {
    app.ledger
        .enqueue(&NewJob {
            kind: "noop".into(),
            payload: json!({"n": 1}),
            run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..NewJob::default()
        })
        .await
        .expect("enqueue")
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request");
    let code = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn tokens_decide_who_reads_and_who_acts() {
    let app = spawn_app().await;
    let mut config = with_tokens(&app);
    config.admin.metrics_need_token = true;
    let daemon = app
        .start_daemon_with(config.clone(), Registry::builtin(&config))
        .await;
    let base = base(&daemon);
    let http = client();
    let id = waiting_job(&app).await;
    let job = format!("{base}/jobs/{id}");

    let response = http.get(&job).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401, "no token");
    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    let (code, _) = send(http.get(&job).bearer_auth("not-a-token-of-ours")).await;
    assert_eq!(code, 401, "an unknown token");
    let (code, body) = send(http.get(&job).bearer_auth(READ_TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["id"], id.to_string());
    let (code, body) = send(
        http.get(format!("{base}/jobs?status=scheduled"))
            .bearer_auth(READ_TOKEN),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["jobs"][0]["id"], id.to_string());

    // Probes stay open; metrics were put behind a token.
    assert_eq!(send(http.get(format!("{base}/healthz"))).await.0, 200);
    assert_eq!(send(http.get(format!("{base}/readyz"))).await.0, 200);
    assert_eq!(send(http.get(format!("{base}/metrics"))).await.0, 401);
    assert_eq!(
        send(http.get(format!("{base}/metrics")).bearer_auth(READ_TOKEN))
            .await
            .0,
        200
    );

    // A read token cannot change anything; an admin token can.
    let (code, body) = send(http.post(format!("{job}/cancel")).bearer_auth(READ_TOKEN)).await;
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("admin"), "{body}");
    assert_eq!(app.ledger.job(id).await.unwrap().status, Status::Scheduled);
    let (code, body) = send(http.post(format!("{job}/cancel")).bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["cancelled"], true);
    assert_eq!(app.ledger.job(id).await.unwrap().status, Status::Cancelled);
    let (code, _) = send(http.post(format!("{job}/retry")).bearer_auth(READ_TOKEN)).await;
    assert_eq!(code, 403);
    let (code, body) = send(http.post(format!("{job}/retry")).bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        app.wait_final(id, 10).await.status,
        Status::Succeeded,
        "the retried job ran"
    );

    let (code, _) = send(
        http.post(format!("{base}/queues/default/pause"))
            .bearer_auth(READ_TOKEN),
    )
    .await;
    assert_eq!(code, 403);
    assert!(!app.broker.paused("default").await.unwrap());
    let (code, body) = send(
        http.post(format!("{base}/queues/default/pause"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(app.broker.paused("default").await.unwrap());
    let (code, body) = send(
        http.post(format!("{base}/queues/default/resume"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!((code, &body["was_paused"]), (200, &json!(true)), "{body}");

    // A bulk action wants its confirmation.
    let (code, body) = send(
        http.post(format!("{base}/jobs/retry-dead"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = send(
        http.post(format!("{base}/jobs/retry-dead"))
            .bearer_auth(ADMIN_TOKEN)
            .form_body(&[("confirmed", "yes"), ("queue", "default")]),
    )
    .await;
    assert_eq!((code, &body["retried"]), (200, &json!(0)), "{body}");
    daemon.stop().await;
}

/// The session cookie a log-in with `token` sets.
pub async fn log_in(http: &reqwest::Client, base: &str, token: &str) -> String {
    let response = http
        .post(format!("{base}/login"))
        .form_body(&[("token", token)])
        .send()
        .await
        .expect("log in");
    assert_eq!(response.status().as_u16(), 303);
    let cookie = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    cookie.split(';').next().unwrap().to_owned()
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> Option<String> {
    let start = page.find(r#"name="csrf" value=""#)? + r#"name="csrf" value=""#.len();
    Some(page[start..].split('"').next()?.to_owned())
}

#[tokio::test]
async fn a_dashboard_session_acts_only_with_its_csrf_token() {
    let app = spawn_app().await;
    let config = with_tokens(&app);
    let daemon = app
        .start_daemon_with(config.clone(), Registry::builtin(&config))
        .await;
    let base = base(&daemon);
    let http = client();
    let id = waiting_job(&app).await;

    let (code, page) = send(
        http.post(format!("{base}/login"))
            .header(header::ACCEPT, "text/html")
            .form_body(&[("token", "wrong-token-0123456789")]),
    )
    .await;
    assert_eq!(code, 401);
    assert!(page.as_str().unwrap().contains("not valid"), "{page}");
    // A browser without a session gets the log-in form.
    let (code, page) = send(
        http.get(format!("{base}/"))
            .header(header::ACCEPT, "text/html"),
    )
    .await;
    assert_eq!(code, 401);
    assert!(page.as_str().unwrap().contains(r#"action="/login""#));

    let read = log_in(&http, &base, READ_TOKEN).await;
    let (code, page) = send(
        http.get(format!("{base}/jobs/{id}"))
            .header(header::COOKIE, &read)
            .header(header::ACCEPT, "text/html"),
    )
    .await;
    assert_eq!(code, 200);
    let page = page.as_str().unwrap().to_owned();
    assert!(page.contains(&id.to_string()));
    assert!(
        !page.contains("Cancel job"),
        "a read session sees no action"
    );
    let read_csrf = csrf_of(&page).expect("the log-out form carries the token");
    let (code, _) = send(
        http.post(format!("{base}/jobs/{id}/cancel"))
            .header(header::COOKIE, &read)
            .form_body(&[("csrf", read_csrf.as_str())]),
    )
    .await;
    assert_eq!(code, 403, "the server refuses a read session anyway");

    let admin = log_in(&http, &base, ADMIN_TOKEN).await;
    let (_, page) = send(
        http.get(format!("{base}/jobs/{id}"))
            .header(header::COOKIE, &admin)
            .header(header::ACCEPT, "text/html"),
    )
    .await;
    let page = page.as_str().unwrap().to_owned();
    assert!(page.contains("Cancel job"), "{page}");
    let csrf = csrf_of(&page).unwrap();
    for bad in [None, Some(read_csrf.as_str()), Some("0000")] {
        let mut form: Vec<(&str, &str)> = vec![];
        if let Some(token) = bad {
            form.push(("csrf", token));
        }
        let (code, body) = send(
            http.post(format!("{base}/jobs/{id}/cancel"))
                .header(header::COOKIE, &admin)
                .form_body(&form),
        )
        .await;
        assert_eq!(code, 403, "CSRF token {bad:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains("CSRF"), "{body}");
    }
    assert_eq!(app.ledger.job(id).await.unwrap().status, Status::Scheduled);
    let (code, body) = send(
        http.post(format!("{base}/jobs/{id}/cancel"))
            .header(header::COOKIE, &admin)
            .form_body(&[("csrf", csrf.as_str())]),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(app.ledger.job(id).await.unwrap().status, Status::Cancelled);

    // Logging out ends the session on the server, not only in the browser.
    let (code, _) = send(
        http.post(format!("{base}/logout"))
            .header(header::COOKIE, &admin)
            .form_body(&[("csrf", csrf.as_str())]),
    )
    .await;
    assert_eq!(code, 303);
    let (code, _) = send(
        http.get(format!("{base}/jobs/{id}"))
            .header(header::COOKIE, &admin),
    )
    .await;
    assert_eq!(code, 401);
    daemon.stop().await;
}

#[tokio::test]
async fn without_tokens_the_listener_reads_for_loopback_names_only_and_changes_nothing() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let addr = daemon.admin_addr().unwrap();
    let base = base(&daemon);
    let http = client();
    let id = waiting_job(&app).await;
    let job = format!("{base}/jobs/{id}");

    assert_eq!(send(http.get(&job)).await.0, 200);
    assert_eq!(
        send(
            http.get(&job)
                .header(header::HOST, format!("localhost:{}", addr.port()))
        )
        .await
        .0,
        200
    );
    // A page on another site that rebinds its name to 127.0.0.1 sends its own name.
    let (code, body) = send(
        http.get(&job)
            .header(header::HOST, format!("evil.example:{}", addr.port())),
    )
    .await;
    assert_eq!(code, 421, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("evil.example"),
        "{body}"
    );
    let (code, _) = send(
        http.get(format!("{base}/events"))
            .header(header::HOST, "evil.example"),
    )
    .await;
    assert_eq!(code, 421);
    // Probes and the open metrics answer whatever the name.
    assert_eq!(
        send(
            http.get(format!("{base}/metrics"))
                .header(header::HOST, "10.1.2.3:9187")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        send(
            http.get(format!("{base}/healthz"))
                .header(header::HOST, "evil.example")
        )
        .await
        .0,
        200
    );

    let (code, body) = send(http.post(format!("{job}/cancel"))).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("tokens_file"),
        "{body}"
    );
    assert_eq!(app.ledger.job(id).await.unwrap().status, Status::Scheduled);
    daemon.stop().await;
}

#[tokio::test]
async fn a_listener_open_to_the_network_without_tokens_is_refused_at_start() {
    let app = spawn_app().await;
    let mut config = app.config.clone();
    config.admin.listen = "0.0.0.0:0".into();
    let mut daemon = app.spawn_daemon(&config);
    let status = daemon.wait_exit(20).expect("the daemon refuses to start");
    assert!(!status.success());
    let log = daemon.log_text();
    assert!(
        log.contains("admin.listen") && log.contains("admin.tokens_file"),
        "{log}"
    );

    // A tokens file the daemon cannot use stops it too, naming the file and line.
    let path = app.dir.path().join("bad-tokens");
    std::fs::write(
        &path,
        "admin 0123456789abcdef0123\nwrite 0123456789abcdef0123\n",
    )
    .unwrap();
    let mut config = app.config.clone();
    config.admin.tokens_file = Some(path.clone());
    let error = match Daemon::start(config.clone(), Registry::builtin(&config)).await {
        Ok(daemon) => {
            daemon.stop().await;
            panic!("a daemon started with a bad tokens file");
        }
        Err(error) => jobrunner::error_chain(&error),
    };
    assert!(
        error.contains(&path.display().to_string()) && error.contains("line 2"),
        "{error}"
    );
}

/// A self-signed certificate for localhost and 127.0.0.1, made with Debian's
/// `openssl`: (cert path, key path).
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("admin.crt"), dir.join("admin.key"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A leaf, not a CA: the client refuses a CA certificate as a server's.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl made no certificate");
    (cert, key)
}

/// Sends one raw HTTP/1.1 request over TLS, trusting only `ca`; returns the
/// response's text.
async fn https(addr: std::net::SocketAddr, ca: &std::path::Path, request: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn the_listener_speaks_tls_when_given_a_certificate_and_key() {
    let app = spawn_app().await;
    let (cert, key) = self_signed(app.dir.path());
    let mut config = with_tokens(&app);
    config.admin.tls_cert = Some(cert.clone());
    config.admin.tls_key = Some(key);
    let daemon = app
        .start_daemon_with(config.clone(), Registry::builtin(&config))
        .await;
    let addr = daemon.admin_addr().unwrap();
    let health = https(
        addr,
        &cert,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let body = format!("token={ADMIN_TOKEN}");
    let login = https(
        addr,
        &cert,
        &format!(
            "POST /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(login.starts_with("HTTP/1.1 303"), "{login}");
    let cookie = login
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {login}"));
    assert!(
        cookie.contains("; Secure"),
        "over TLS the cookie is Secure: {cookie}"
    );
    // Plain HTTP on the TLS port gets no answer a client could read as HTTP.
    let plain = client().get(format!("http://{addr}/healthz")).send().await;
    assert!(plain.is_err(), "{plain:?}");
    daemon.stop().await;

    // A key that does not belong to the certificate stops start-up, naming both.
    let other = tempfile::tempdir().unwrap();
    let (_, wrong_key) = self_signed(other.path());
    config.admin.tls_key = Some(wrong_key.clone());
    let error = match Daemon::start(config.clone(), Registry::builtin(&config)).await {
        Ok(daemon) => {
            daemon.stop().await;
            panic!("a daemon started with a mismatched key");
        }
        Err(error) => jobrunner::error_chain(&error),
    };
    assert!(
        error.contains("admin.tls_key") && error.contains(&wrong_key.display().to_string()),
        "{error}"
    );
}
