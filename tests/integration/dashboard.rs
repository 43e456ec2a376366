//! The dashboard in a real headless Chromium (Debian's `chromium` through
//! `chromium-driver`), as an admin and as support staff use it: the overview's
//! counts, a job appearing and changing status live, cancel and retry with an
//! admin session and refused with a read one, a forged CSRF token refused, and
//! the pages fitting a phone's width.
//!
//! Each test opens its own browser session (a second or two to start on CI);
//! every wait polls the page with a deadline instead of sleeping.

use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use jobrunner::jobs::Registry;
use jobrunner::ledger::{NewJob, Status};
use jobrunner::runtime::Daemon;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::admin_auth::{ADMIN_TOKEN, READ_TOKEN, base, waiting_job, with_tokens};
use crate::harness;
use crate::helpers::{TestApp, spawn_app};

/// A browser session that ends (and its Chromium with it) when dropped, also
/// when the test panics: chromedriver leaves the browsers of sessions nobody
/// deleted running.
pub struct Browser {
    client: Client,
    session: String,
}

impl std::ops::Deref for Browser {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A plain blocking DELETE: Drop cannot await, and this must run on panic.
        use std::io::{Read, Write};
        let url = harness::shared_chromedriver().url();
        let addr = url.trim_start_matches("http://");
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                stream,
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
                self.session
            );
            let _ = stream.read_to_end(&mut Vec::new());
        }
    }
}

/// A headless Chromium session of `width` × `height`.
async fn browser(width: u32, height: u32) -> Browser {
    let driver = harness::shared_chromedriver();
    let mut options = json!({
        "args": [
            "--headless=new",
            // The tests may run as root, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            format!("--window-size={width},{height}"),
        ]
    });
    if let Some(bin) = harness::chromium_bin() {
        options["binary"] = json!(bin);
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    // Dialogs (a bulk action's confirmation) are accepted.
    caps.insert("unhandledPromptBehavior".into(), json!("accept"));
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url())
        .await
        .expect("a Chromium session through chromedriver");
    let session = client
        .session_id()
        .await
        .expect("session id")
        .expect("a session was created");
    Browser { client, session }
}

/// A daemon with tokens, and a browser logged in with `token`.
async fn logged_in(daemon: &Daemon, token: &str) -> Browser {
    let client = browser(1280, 1000).await;
    let base = base(daemon);
    client
        .goto(&format!("{base}/login"))
        .await
        .expect("open /login");
    client
        .find(Locator::Css("#token"))
        .await
        .expect("the token field")
        .send_keys(token)
        .await
        .unwrap();
    client
        .find(Locator::Css("form.login button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(
        &client,
        "return location.pathname === '/' && !!document.getElementById('live')",
        15,
    )
    .await;
    client
}

/// Polls `script` (which returns a boolean) until it is true; fails the test
/// after `secs` with the page's live part.
async fn wait_js(client: &Client, script: &str, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if client.execute(script, vec![]).await.ok() == Some(Value::Bool(true)) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let page = client
                .execute(
                    "return document.body ? document.body.innerText : ''",
                    vec![],
                )
                .await
                .unwrap_or_default();
            panic!(
                "not true within {secs}s: {script}\npage:\n{}",
                page.as_str().unwrap_or("")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Waits until the page's event stream is connected, so nothing after is missed.
async fn wait_live(client: &Client) {
    wait_js(
        client,
        "return document.getElementById('live').dataset.stream === 'open'",
        15,
    )
    .await;
}

async fn start(app: &TestApp) -> Daemon {
    let config = with_tokens(app);
    app.start_daemon_with(config.clone(), Registry::builtin(&config))
        .await
}

#[tokio::test]
async fn the_overview_shows_each_queue_with_its_counts() {
    let app = spawn_app().await;
    let daemon = start(&app).await;
    waiting_job(&app).await;
    waiting_job(&app).await;
    let dead = app.enqueue("fail", json!({"times": 99})).await;
    assert_eq!(app.wait_final(dead, 15).await.status, Status::Dead);
    app.ledger
        .enqueue(&NewJob {
            kind: "noop".into(),
            payload: json!({}),
            queue: Some("reports".into()),
            ..NewJob::default()
        })
        .await
        .unwrap();

    let client = logged_in(&daemon, READ_TOKEN).await;
    let cell =
        |queue: &str, label: &str| format!(r#"tr[data-queue="{queue}"] td[data-label="{label}"]"#);
    assert_eq!(text(&client, &cell("default", "scheduled")).await, "2");
    assert_eq!(text(&client, &cell("default", "dead")).await, "1");
    assert_eq!(text(&client, &cell("default", "queued")).await, "0");
    // A queue no daemon serves still shows the job waiting on it.
    assert_eq!(text(&client, &cell("reports", "queued")).await, "1");
    assert_eq!(text(&client, &cell("reports", "paused")).await, "no");
    let services = text(&client, "ul.health").await;
    assert!(
        services.contains("ok Redis") && services.contains("ok Postgres"),
        "{services}"
    );
    // The daemon itself is listed, and a read session has no buttons.
    assert!(text(&client, "#live").await.contains("live"));
    let buttons = client.find_all(Locator::Css("#live button")).await.unwrap();
    assert!(buttons.is_empty(), "a read token sees no action buttons");
    daemon.stop().await;
}

#[tokio::test]
async fn a_job_enqueued_while_the_list_is_open_appears_and_its_status_changes_without_a_reload() {
    let app = spawn_app().await;
    let daemon = start(&app).await;
    // Paused, the job waits as `queued` until the test resumes the queue.
    jobrunner::control::pause(&app.ledger, &app.broker, "default")
        .await
        .unwrap();
    let client = logged_in(&daemon, READ_TOKEN).await;
    client
        .goto(&format!("{}/jobs", base(&daemon)))
        .await
        .unwrap();
    wait_live(&client).await;
    client
        .execute("window.stillTheSamePage = true; return true", vec![])
        .await
        .unwrap();

    let id = app.enqueue("noop", json!({"hello": "browser"})).await;
    let badge = format!(r#"tr[data-job="{id}"] .badge"#);
    wait_js(
        &client,
        &format!(r#"const b = document.querySelector('{badge}'); return !!b && b.textContent === 'queued'"#),
        15,
    )
    .await;
    jobrunner::control::resume(&app.ledger, &app.broker, "default")
        .await
        .unwrap();
    wait_js(
        &client,
        &format!(r#"const b = document.querySelector('{badge}'); return !!b && b.textContent === 'succeeded'"#),
        15,
    )
    .await;
    let same = client
        .execute("return window.stillTheSamePage === true", vec![])
        .await
        .unwrap();
    assert_eq!(same, Value::Bool(true), "the page was not reloaded");
    daemon.stop().await;
}

/// Clicks the button of the form posting to `action`, inside the page: the live
/// part may be re-rendered at any moment, which would leave an element found
/// by WebDriver stale before its click.
async fn click_action(client: &Client, action: &str) {
    wait_js(
        client,
        &format!(
            r#"const b = document.querySelector('form[action="{action}"] button');
            if (b) b.click();
            return !!b"#
        ),
        15,
    )
    .await;
}

async fn wait_status(app: &TestApp, id: Uuid, want: Status) {
    app.wait_until(id, 15, want.as_str(), |j| j.status == want)
        .await;
}

#[tokio::test]
async fn cancel_and_retry_work_for_an_admin_and_are_refused_for_a_read_token() {
    let app = spawn_app().await;
    let daemon = start(&app).await;
    let base = base(&daemon);

    let admin = logged_in(&daemon, ADMIN_TOKEN).await;
    let id = waiting_job(&app).await;
    admin.goto(&format!("{base}/jobs/{id}")).await.unwrap();
    wait_live(&admin).await;
    click_action(&admin, &format!("/jobs/{id}/cancel")).await;
    wait_status(&app, id, Status::Cancelled).await;
    wait_js(
        &admin,
        "return document.getElementById('notice').textContent.startsWith('Cancelled job')",
        15,
    )
    .await;
    // The page now offers the retry, without a reload.
    wait_js(
        &admin,
        &format!(r#"return !!document.querySelector('form[action="/jobs/{id}/retry"]')"#),
        15,
    )
    .await;
    click_action(&admin, &format!("/jobs/{id}/retry")).await;
    wait_js(&admin, &format!("return document.getElementById('notice').textContent.startsWith('Job {id} is queued again')"), 15).await;
    assert_eq!(
        app.wait_final(id, 15).await.status,
        Status::Succeeded,
        "the retried job ran"
    );
    wait_js(&admin, r#"const b = document.querySelector('.status-line .badge'); return !!b && b.textContent === 'succeeded'"#, 15).await;
    drop(admin);

    let read = logged_in(&daemon, READ_TOKEN).await;
    let other = waiting_job(&app).await;
    read.goto(&format!("{base}/jobs/{other}")).await.unwrap();
    let forms = read.find_all(Locator::Css(r#"#live form"#)).await.unwrap();
    assert!(forms.is_empty(), "a read session is offered no action");
    // Posted by hand from the page, with the session's own CSRF token, the
    // server still refuses.
    let code = read
        .execute_async(
            &format!(
                r#"const done = arguments[0];
                const csrf = document.querySelector('input[name=csrf]').value;
                fetch('/jobs/{other}/cancel', {{method: 'POST', body: new URLSearchParams({{csrf}})}})
                  .then(r => done(r.status));"#
            ),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(code, json!(403));
    assert_eq!(
        app.ledger.job(other).await.unwrap().status,
        Status::Scheduled
    );
    daemon.stop().await;
}

#[tokio::test]
async fn an_action_with_a_forged_csrf_token_is_refused() {
    let app = spawn_app().await;
    let daemon = start(&app).await;
    let client = logged_in(&daemon, ADMIN_TOKEN).await;
    let id = waiting_job(&app).await;
    client
        .goto(&format!("{}/jobs/{id}", base(&daemon)))
        .await
        .unwrap();
    client
        .execute(
            "document.querySelectorAll('input[name=csrf]').forEach(i => i.value = 'forged'); return true",
            vec![],
        )
        .await
        .unwrap();
    click_action(&client, &format!("/jobs/{id}/cancel")).await;
    wait_js(
        &client,
        "const n = document.getElementById('notice'); return n.className === 'error' && n.textContent.includes('CSRF')",
        15,
    )
    .await;
    assert_eq!(app.ledger.job(id).await.unwrap().status, Status::Scheduled);
    daemon.stop().await;
}

/// Saves a PNG of the page when `JOBRUNNER_SCREENSHOTS` names a directory
/// (scripts/dashboard-screenshots.sh sets it, for docs/DASHBOARD.md).
async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "Chromium returned a PNG");
    if let Some(dir) = std::env::var_os("JOBRUNNER_SCREENSHOTS") {
        let path = std::path::Path::new(&dir).join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[tokio::test]
async fn every_page_fits_a_phone_screen_without_sideways_scrolling() {
    let app = spawn_app().await;
    let daemon = start(&app).await;
    let base = base(&daemon);
    // A mix worth looking at: done, failed, waiting, running, and one on another queue.
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(
            app.enqueue("noop", json!({"order": 1000 + n, "customer": "c-42"}))
                .await,
        );
    }
    let dead = app
        .enqueue("fail", json!({"times": 99, "reason": "card declined"}))
        .await;
    app.wait_final(dead, 15).await;
    let sleeper = app.enqueue("sleep", json!({"ms": 60_000})).await;
    app.wait_until(sleeper, 15, "running", |j| j.status == Status::Running)
        .await;
    waiting_job(&app).await;
    for id in &ids {
        app.wait_final(*id, 15).await;
    }
    app.ledger
        .enqueue(&NewJob {
            kind: "noop".into(),
            payload: json!({"report": "monthly"}),
            queue: Some("reports".into()),
            ..NewJob::default()
        })
        .await
        .unwrap();

    let pages = [
        ("overview", "/".to_owned()),
        ("jobs", "/jobs".to_owned()),
        ("job", format!("/jobs/{dead}")),
    ];
    let desktop = logged_in(&daemon, ADMIN_TOKEN).await;
    for (name, path) in &pages {
        desktop.goto(&format!("{base}{path}")).await.unwrap();
        wait_live(&desktop).await;
        screenshot(&desktop, &format!("dashboard-{name}")).await;
    }
    drop(desktop);

    let phone = browser(390, 844).await;
    phone.goto(&format!("{base}/login")).await.unwrap();
    phone
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(ADMIN_TOKEN)
        .await
        .unwrap();
    phone
        .find(Locator::Css("form.login button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(&phone, "return location.pathname === '/'", 15).await;
    for (name, path) in &pages {
        phone.goto(&format!("{base}{path}")).await.unwrap();
        let fits = phone
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            fits,
            Value::Bool(true),
            "{path} scrolls sideways on a phone"
        );
        screenshot(&phone, &format!("dashboard-{name}-phone")).await;
    }
    jobrunner::control::cancel(&app.ledger, &app.broker, &app.config.events, sleeper)
        .await
        .unwrap();
    daemon.stop().await;
}
