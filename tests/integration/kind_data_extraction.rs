//! The `data-extraction` kind against real Postgres and a fixture web site on
//! 127.0.0.1 that each test serves itself (a few lines of HTTP/1.1 over a tokio
//! listener), which counts every request it gets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobrunner::config::KindConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};
use jobrunner::ledger::Status;

const KIND: &str = "data-extraction";

#[derive(Clone)]
enum Reply {
    Html(String),
    Redirect(String),
    Status(u16),
}

/// The fixture web site. It stops when dropped.
struct Site {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Site {
    async fn start(routes: Vec<(&str, Reply)>) -> Site {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes: Arc<HashMap<String, Reply>> =
            Arc::new(routes.into_iter().map(|(p, r)| (p.to_owned(), r)).collect());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let hits = hits.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, routes.clone(), hits.clone()));
                }
            }
        });
        Site { addr, hits, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addr.port())
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    routes: Arc<HashMap<String, Reply>>,
    hits: Arc<Mutex<Vec<String>>>,
) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    hits.lock().unwrap().push(path.clone());
    let (head, body) = match routes.get(&path) {
        Some(Reply::Html(body)) => (
            "200 OK\r\nContent-Type: text/html; charset=utf-8".to_owned(),
            body.clone(),
        ),
        Some(Reply::Redirect(to)) => (format!("302 Found\r\nLocation: {to}"), String::new()),
        Some(Reply::Status(500)) => ("500 Internal Server Error".to_owned(), String::new()),
        Some(Reply::Status(code)) => (format!("{code} Status"), String::new()),
        None => ("404 Not Found".to_owned(), String::new()),
    };
    let response = format!(
        "HTTP/1.1 {head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A client that stops reading (the body cap) closes early; that is expected.
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A loopback port with nothing listening: connecting is refused at once.
async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/gone")
}

/// An app whose daemon may reach `allow` and retries this kind `max_attempts` times
/// with millisecond backoff.
async fn app_with(allow: &[&str], max_attempts: i32) -> TestApp {
    let mut app = spawn_app().await;
    let mut extraction: jobrunner_kinds::DataExtractionConfig = app.config.section();
    extraction.allow_hosts = allow.iter().map(|s| s.to_string()).collect();
    extraction.fetch_timeout = Duration::from_secs(5);
    app.config.set_section(&extraction);
    let mut kind = KindConfig {
        max_attempts,
        ..KindConfig::default()
    };
    kind.backoff.base = Duration::from_millis(20);
    kind.backoff.max = Duration::from_millis(100);
    app.config.kinds.insert(KIND.into(), kind);
    app.config.validate().unwrap();
    app.ledger.sync_kinds(&app.config).await.unwrap();
    app
}

async fn insert_query(app: &TestApp, topic: &str, sources: Value) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO extraction_queries (tenant, search_topic, sources)
         VALUES ('acme', $1, $2) RETURNING id",
    )
    .bind(topic)
    .bind(sources)
    .fetch_one(app.ledger.pool())
    .await
    .unwrap()
}

#[derive(Debug, sqlx::FromRow)]
struct QueryRow {
    status: String,
    result_count: i32,
    source_errors: Option<Value>,
    job_id: Option<Uuid>,
}

async fn query_row(app: &TestApp, id: Uuid) -> QueryRow {
    sqlx::query_as(
        "SELECT status, result_count, source_errors, job_id FROM extraction_queries WHERE id = $1",
    )
    .bind(id)
    .fetch_one(app.ledger.pool())
    .await
    .unwrap()
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct ResultRow {
    id: i64,
    source_url: Option<String>,
    url: String,
    title: Option<String>,
    snippet: Option<String>,
    emails: Vec<String>,
    phones: Vec<String>,
    extracted_at: chrono::DateTime<chrono::Utc>,
}

async fn results(app: &TestApp, id: Uuid) -> Vec<ResultRow> {
    sqlx::query_as(
        "SELECT id, source_url, url, title, snippet, emails, phones, extracted_at
           FROM extraction_results WHERE query_id = $1 ORDER BY url",
    )
    .bind(id)
    .fetch_all(app.ledger.pool())
    .await
    .unwrap()
}

fn find<'a>(rows: &'a [ResultRow], url: &str) -> &'a ResultRow {
    rows.iter()
        .find(|r| r.url == url)
        .unwrap_or_else(|| panic!("no result {url} in {rows:#?}"))
}

fn main_page() -> String {
    r#"<html><head><title>Solar installers directory</title>
    <script type="application/ld+json">
    {"@context": "https://schema.org", "@graph": [
      {"@type": "WebPage", "name": "Directory"},
      {"@type": "LocalBusiness", "name": "Sunny Roofs GmbH", "url": "/sunny",
       "email": "hello@sunny.example", "telephone": "+49 30 5555 1234"}
    ]}
    </script></head><body>
    <h1 id="top">Solar installers in Berlin</h1>
    <h2>Wind farms</h2>
    <p>Our pick: <a href="/installers/bright">Bright solar installers</a>.</p>
    <a href="https://elsewhere.example/about">About this site</a>
    <p>Write to <a href="mailto:Info@Directory.example">us</a> or desk@directory.example,
       call +44 20 7946 0958.</p>
    </body></html>"#
        .to_owned()
}

fn second_page() -> String {
    r#"<html><head><title>More</title></head><body>
    <h2>Solar installers we also like</h2><p>Two of them.</p>
    </body></html>"#
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_yields_links_headings_contacts_and_json_ld_also_through_a_redirect() {
    let app = app_with(&["127.0.0.1"], 3).await;
    let site = Site::start(vec![
        ("/page", Reply::Html(main_page())),
        ("/old", Reply::Redirect("/second".into())),
        ("/second", Reply::Html(second_page())),
    ])
    .await;
    let query = insert_query(
        &app,
        "Solar Installers",
        json!([site.url("/page"), site.url("/old")]),
    )
    .await;
    let daemon = app.start_daemon().await;
    let job = app.enqueue(KIND, json!({ "query_id": query })).await;
    let done = app.wait_final(job, 20).await;
    assert_eq!(done.status, Status::Succeeded, "{done:?}");

    let row = query_row(&app, query).await;
    let rows = results(&app, query).await;
    assert_eq!(row.status, "done");
    assert_eq!(row.job_id, Some(job));
    assert_eq!(row.source_errors, None);
    assert_eq!(row.result_count as usize, rows.len());
    assert_eq!(
        done.result.as_ref().unwrap()["result_count"],
        json!(rows.len())
    );

    let link = find(&rows, &site.url("/installers/bright"));
    assert_eq!(link.title.as_deref(), Some("Bright solar installers"));
    assert_eq!(link.source_url.as_deref(), Some(site.url("/page").as_str()));
    let heading = find(&rows, &site.url("/page#top"));
    assert_eq!(heading.title.as_deref(), Some("Solar installers in Berlin"));
    let page = find(&rows, &site.url("/page"));
    assert_eq!(page.title.as_deref(), Some("Solar installers directory"));
    assert_eq!(
        page.emails,
        ["desk@directory.example", "info@directory.example"]
    );
    assert_eq!(page.phones, ["+442079460958"]);
    let business = find(&rows, &site.url("/sunny"));
    assert_eq!(business.title.as_deref(), Some("Sunny Roofs GmbH"));
    assert_eq!(business.emails, ["hello@sunny.example"]);
    assert_eq!(business.phones, ["+493055551234"]);
    // Reached through the redirect: named by where it was found, credited to the source.
    let redirected = find(
        &rows,
        &format!(
            "{}#:~:text=Solar%20installers%20we%20also%20like",
            site.url("/second")
        ),
    );
    assert_eq!(
        redirected.source_url.as_deref(),
        Some(site.url("/old").as_str())
    );
    assert_eq!(redirected.snippet.as_deref(), Some("Two of them."));
    assert!(
        !rows.iter().any(|r| r.url.contains("elsewhere.example")),
        "a link that does not match the topic is not kept: {rows:#?}"
    );
    assert_eq!(rows.len(), 5, "{rows:#?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_the_same_query_twice_leaves_the_same_rows() {
    let app = app_with(&["127.0.0.1"], 3).await;
    let site = Site::start(vec![("/page", Reply::Html(main_page()))]).await;
    let query = insert_query(&app, "solar installers", json!([site.url("/page")])).await;
    let daemon = app.start_daemon().await;

    let first = app.enqueue(KIND, json!({ "query_id": query })).await;
    assert_eq!(app.wait_final(first, 20).await.status, Status::Succeeded);
    let rows_before = results(&app, query).await;
    let count_before = query_row(&app, query).await.result_count;

    let second = app.enqueue(KIND, json!({ "query_id": query })).await;
    assert_eq!(app.wait_final(second, 20).await.status, Status::Succeeded);
    let after = query_row(&app, query).await;
    assert_eq!(after.status, "done");
    assert_eq!(after.job_id, Some(second));
    assert_eq!(after.result_count, count_before);
    assert_eq!(
        results(&app, query).await,
        rows_before,
        "same ids, same content, and unchanged rows keep their extracted_at"
    );
    // At least once per run (the daemon may run a job twice), and nothing else.
    assert!(site.hits().len() >= 2 && site.hits().iter().all(|h| h == "/page"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_page_is_cut_off_and_what_came_before_the_cut_is_kept() {
    let mut app = app_with(&["127.0.0.1"], 3).await;
    let mut extraction: jobrunner_kinds::DataExtractionConfig = app.config.section();
    extraction.max_body_bytes = 64 * 1024;
    app.config.set_section(&extraction);
    let filler = "<p>nothing to see here, just padding text</p>\n".repeat(40_000); // ~1.8 MB
    let page = format!(
        "<html><body><a href=\"/early\">Solar early</a>{filler}<a href=\"/late\">Solar late</a></body></html>"
    );
    let site = Site::start(vec![("/big", Reply::Html(page))]).await;
    let query = insert_query(&app, "solar", json!([site.url("/big")])).await;
    let daemon = app.start_daemon().await;
    let job = app.enqueue(KIND, json!({ "query_id": query })).await;
    let done = app.wait_final(job, 20).await;
    assert_eq!(done.status, Status::Succeeded, "{done:?}");
    assert_eq!(
        done.result.as_ref().unwrap()["truncated"],
        json!([site.url("/big")])
    );
    let rows = results(&app, query).await;
    let urls: Vec<&str> = rows.iter().map(|r| r.url.as_str()).collect();
    assert_eq!(urls, [site.url("/early")]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_and_an_unreachable_source_do_not_fail_the_query() {
    let app = app_with(&["127.0.0.1"], 3).await;
    let site = Site::start(vec![("/page", Reply::Html(main_page()))]).await;
    let dead = dead_url().await;
    let query = insert_query(
        &app,
        "solar installers",
        json!([site.url("/page"), site.url("/missing"), dead]),
    )
    .await;
    let daemon = app.start_daemon().await;
    let job = app.enqueue(KIND, json!({ "query_id": query })).await;
    let done = app.wait_final(job, 20).await;
    assert_eq!(
        (done.status.as_str(), done.attempts),
        ("succeeded", 1),
        "{done:?}"
    );

    let row = query_row(&app, query).await;
    assert_eq!(row.status, "done");
    assert!(row.result_count > 0);
    let errors = row.source_errors.expect("source errors recorded");
    let errors = errors.as_array().unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0]["source"], json!(site.url("/missing")));
    let missing = errors[0]["error"].as_str().unwrap();
    assert!(missing.contains("answered HTTP 404 Not Found"), "{missing}");
    assert_eq!(errors[1]["source"], json!(dead));
    let unreachable = errors[1]["error"].as_str().unwrap();
    assert!(
        unreachable.starts_with(&format!("source {dead}: cannot fetch {dead}")),
        "{unreachable}"
    );
    assert_eq!(
        done.result.as_ref().unwrap()["source_errors"],
        Value::Array(errors.clone())
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_source_is_unreachable_the_job_is_retried_and_the_query_ends_failed() {
    let app = app_with(&["127.0.0.1"], 2).await;
    let site = Site::start(vec![("/boom", Reply::Status(500))]).await;
    let dead = dead_url().await;
    let query = insert_query(&app, "solar", json!([dead, site.url("/boom")])).await;
    let daemon = app.start_daemon().await;
    let job = app.enqueue(KIND, json!({ "query_id": query })).await;
    let done = app.wait_final(job, 20).await;
    assert_eq!(
        (done.status.as_str(), done.attempts),
        ("dead", 2),
        "{done:?}"
    );
    let error = done.last_error.unwrap();
    assert!(
        error.starts_with(&format!(
            "extraction query {query}: all 2 sources failed: source {dead}"
        )),
        "{error}"
    );
    assert!(error.contains("answered HTTP 500"), "{error}");
    assert!(error.ends_with("(gave up after 2 attempts)"), "{error}");
    // One request per attempt, at least (delivery is at-least-once).
    let hits = site.hits();
    assert!(
        hits.len() >= 2 && hits.iter().all(|h| h == "/boom"),
        "{hits:?}"
    );

    let row = query_row(&app, query).await;
    assert_eq!(row.status, "failed");
    assert_eq!(row.result_count, 0);
    assert_eq!(row.source_errors.unwrap().as_array().unwrap().len(), 2);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_empty_allow_list_loopback_sources_are_refused_and_never_fetched() {
    let app = app_with(&[], 3).await;
    let site = Site::start(vec![("/page", Reply::Html(main_page()))]).await;
    let by_ip = insert_query(&app, "solar", json!([site.url("/page")])).await;
    let by_name = insert_query(
        &app,
        "solar",
        json!([format!("http://localhost:{}/page", site.port())]),
    )
    .await;
    let daemon = app.start_daemon().await;
    let ip_job = app.enqueue(KIND, json!({ "query_id": by_ip })).await;
    let name_job = app.enqueue(KIND, json!({ "query_id": by_name })).await;

    let done = app.wait_final(ip_job, 20).await;
    assert_eq!(
        (done.status.as_str(), done.attempts),
        ("dead", 1),
        "{done:?}"
    );
    assert_eq!(
        done.last_error.as_deref(),
        Some(
            format!(
                "extraction query {by_ip}: all 1 sources failed: source {}: host 127.0.0.1 resolves to a loopback address; refused (add it to data_extraction.allow_hosts to permit)",
                site.url("/page")
            )
            .as_str()
        )
    );
    let done = app.wait_final(name_job, 20).await;
    assert_eq!(
        (done.status.as_str(), done.attempts),
        ("dead", 1),
        "{done:?}"
    );
    // Which loopback address `localhost` resolves to first depends on the
    // machine's /etc/hosts (stock Debian lists ::1 too); the refusal does not.
    let error = done.last_error.unwrap();
    assert!(
        error.contains("host localhost resolves to ")
            && error.contains(
                ", a loopback address; refused (add it to data_extraction.allow_hosts to permit)"
            ),
        "{error}"
    );
    assert_eq!(query_row(&app, by_ip).await.status, "failed");
    assert_eq!(query_row(&app, by_name).await.status, "failed");
    assert!(
        site.hits().is_empty(),
        "nothing was fetched: {:?}",
        site.hits()
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_an_allowed_host_to_a_refused_one_is_not_followed() {
    let app = app_with(&["localhost"], 3).await;
    let site = Site::start(vec![("/page", Reply::Html(main_page()))]).await;
    // The hop goes to the same server under its IP, which the allow-list does not name.
    let hop = Site::start(vec![("/hop", Reply::Redirect(site.url("/page")))]).await;
    let query = insert_query(
        &app,
        "solar",
        json!([format!("http://localhost:{}/hop", hop.port())]),
    )
    .await;
    let daemon = app.start_daemon().await;
    let job = app.enqueue(KIND, json!({ "query_id": query })).await;
    let done = app.wait_final(job, 20).await;
    assert_eq!(
        (done.status.as_str(), done.attempts),
        ("dead", 1),
        "{done:?}"
    );
    let error = done.last_error.unwrap();
    assert!(
        error.contains("host 127.0.0.1 resolves to a loopback address; refused"),
        "{error}"
    );
    // A job may run twice (at-least-once), so the hop may be asked more than once.
    let hops = hop.hits();
    assert!(
        !hops.is_empty() && hops.iter().all(|h| h == "/hop"),
        "{hops:?}"
    );
    assert!(site.hits().is_empty(), "{:?}", site.hits());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_and_bad_queries_end_dead_with_a_readable_error() {
    let app = app_with(&["127.0.0.1"], 3).await;
    let no_sources = insert_query(&app, "solar", json!([])).await;
    let ftp = insert_query(
        &app,
        "solar",
        json!(["https://ok.example/", "ftp://files.example/x"]),
    )
    .await;
    let garbage = insert_query(&app, "solar", json!(["not a url"])).await;
    let missing = Uuid::now_v7();
    let daemon = app.start_daemon().await;

    let cases = [
        (
            json!({}),
            "bad payload: missing field `query_id`".to_owned(),
        ),
        (json!({"query_id": "nope"}), "bad payload: ".to_owned()),
        (
            json!({"query_id": missing}),
            format!("extraction query {missing} not found"),
        ),
        (
            json!({"query_id": no_sources}),
            format!("extraction query {no_sources} has no sources"),
        ),
        (
            json!({"query_id": ftp}),
            format!(
                "extraction query {ftp}: source \"ftp://files.example/x\" is not an http(s) URL"
            ),
        ),
        (
            json!({"query_id": garbage}),
            format!("extraction query {garbage}: source \"not a url\" is not an http(s) URL"),
        ),
    ];
    let mut jobs = Vec::new();
    for (payload, _) in &cases {
        jobs.push(app.enqueue(KIND, payload.clone()).await);
    }
    for (job, (payload, expected)) in jobs.into_iter().zip(&cases) {
        let done = app.wait_final(job, 20).await;
        assert_eq!(
            (done.status.as_str(), done.attempts),
            ("dead", 1),
            "{payload}: {done:?}"
        );
        let error = done.last_error.unwrap();
        assert!(error.starts_with(expected.as_str()), "{payload}: {error}");
    }
    for query in [no_sources, ftp, garbage] {
        assert_eq!(query_row(&app, query).await.status, "failed");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_too_long_to_store_is_skipped_and_nul_in_text_is_not_a_failure() {
    let app = app_with(&["127.0.0.1"], 3).await;
    // Random, so it does not compress below the index entry limit.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: String = (0..8000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'a' + (seed % 26) as u8)
        })
        .collect();
    let long = format!("/installers/solar-{noise}");
    let page = format!(
        "<html><head><title>Solar\0 installers</title></head><body>\
         <p><a href=\"{long}\">Solar installers, the long way</a></p>\
         <p><a href=\"/installers/short\">Solar installers\0 nearby</a></p>\
         </body></html>"
    );
    let site = Site::start(vec![("/page", Reply::Html(page))]).await;
    let query = insert_query(&app, "solar installers", json!([site.url("/page")])).await;
    let daemon = app.start_daemon().await;
    let id = app.enqueue(KIND, json!({ "query_id": query })).await;
    let job = app.wait_final(id, 20).await;
    assert_eq!(
        (job.status.as_str(), job.attempts),
        ("succeeded", 1),
        "{job:?}"
    );
    let rows = results(&app, query).await;
    assert!(rows.iter().all(|r| r.url.len() <= 2048), "{rows:#?}");
    let short = find(&rows, &site.url("/installers/short"));
    assert!(
        short.title.as_deref().is_some_and(|t| !t.contains('\0')),
        "{short:?}"
    );
    daemon.stop().await;
}
