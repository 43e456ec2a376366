//! The dashboard: server-rendered pages at `/` (overview), `/jobs` (the list),
//! `/jobs/{id}` (one job; JSON unless the client asks for HTML) and `/cron`, with
//! a stylesheet and a small script embedded in the binary. Every page reads
//! whole without script; with it, the page follows `/events` and re-renders its
//! live part (the same handler, asked with `X-Partial: 1`) at most once a second,
//! and action forms post in the background.
//!
//! **Invariant:** pages only read (through `ledger`, `broker`, `scheduler`);
//! anything that changes state is a `POST` to `actions`. Action buttons are shown
//! only to an admin scope, and the server refuses the action anyway. Checked by
//! `auth::tests::every_post_but_log_in_needs_admin_and_probes_are_open`,
//! `tests/integration/dashboard.rs::the_overview_shows_each_queue_with_its_counts`
//! (a read session has no buttons) and
//! `::cancel_and_retry_work_for_an_admin_and_are_refused_for_a_read_token`.
//!
//! Design note: every query a page runs is bounded by a limit or an index range
//! (docs/DASHBOARD.md has the timings on a ledger of a million rows).

mod cron;
mod html;
mod job;
mod list;
mod overview;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub(super) use cron::cron;
pub(super) use job::job;
pub(super) use list::jobs;
pub(super) use overview::overview;

use super::auth::Access;
use crate::ledger::DeadFilter;
use html::esc;

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");
const FAVICON: &[u8] = include_bytes!("assets/favicon.svg");

/// Which navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nav {
    Overview,
    Jobs,
    Cron,
}

/// One page before it is wrapped in the common layout.
struct Page {
    title: String,
    nav: Nav,
    /// The part that stays put (heading, filter form).
    head: String,
    /// The part re-rendered on live updates.
    live: String,
    /// The `/events` query the page follows; `None`: the page is not live.
    events: Option<String>,
}

/// True when the client asked for a page (a browser), not JSON.
pub(super) fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

fn partial(headers: &HeaderMap) -> bool {
    headers.contains_key("x-partial")
}

/// The page in the layout, or only its live part for a partial request.
fn render(page: Page, access: &Access, headers: &HeaderMap) -> Response {
    if partial(headers) {
        return html_response(StatusCode::OK, page.live);
    }
    let current = |nav: Nav| {
        if page.nav == nav {
            r#" aria-current="page""#
        } else {
            ""
        }
    };
    let who = match (access.tokens_configured, access.scope) {
        (false, _) => "open (no tokens), read only".to_owned(),
        (true, Some(scope)) => format!("{} token", scope.as_str()),
        (true, None) => "not logged in".to_owned(),
    };
    let logout = match &access.csrf {
        Some(csrf) => html::action_button("/logout", "Log out", Some(csrf), &[], None, "link"),
        None => String::new(),
    };
    let live_attrs = match &page.events {
        Some(query) => format!(r#" data-events="{}""#, esc(query)),
        None => String::new(),
    };
    let body = format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · jobrunner</title>
<link rel="icon" href="/assets/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/assets/app.css">
<script src="/assets/app.js" defer></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<a class="brand" href="/">jobrunner</a>
<nav aria-label="Main"><a href="/"{o}>Overview</a><a href="/jobs"{j}>Jobs</a><a href="/cron"{c}>Cron</a></nav>
<p class="who">{who} {logout}</p>
</header>
<main id="main" tabindex="-1">
{head}
<p id="notice" role="status" aria-live="polite"></p>
<div id="live"{live_attrs}>
{live}
</div>
</main>
</body>
</html>
"##,
        title = esc(&page.title),
        o = current(Nav::Overview),
        j = current(Nav::Jobs),
        c = current(Nav::Cron),
        who = esc(&who),
        head = page.head,
        live = page.live,
    );
    html_response(StatusCode::OK, body)
}

fn html_response(code: StatusCode, body: String) -> Response {
    let mut response = (code, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Scripts and styles only from this listener; no framing (clickjacking).
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// A small page standing alone (log-in, an action's result, a confirmation).
fn standalone(code: StatusCode, title: &str, body: &str) -> Response {
    html_response(
        code,
        format!(
            r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · jobrunner</title>
<link rel="stylesheet" href="/assets/app.css">
</head>
<body>
<main id="main" class="narrow">
{body}
</main>
</body>
</html>
"#,
            title = esc(title)
        ),
    )
}

/// `GET /login`.
pub(super) async fn login() -> Response {
    login_page(StatusCode::OK, None)
}

/// The log-in form, with `error` above it.
pub(crate) fn login_page(code: StatusCode, error: Option<&str>) -> Response {
    let error = error
        .map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, esc(e)))
        .unwrap_or_default();
    standalone(
        code,
        "Log in",
        &format!(
            r#"<h1>jobrunner</h1>
{error}
<form method="post" action="/login" class="login">
<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<p class="hint">A token from the daemon's tokens file (admin.tokens_file). A read token shows
everything; an admin token can also cancel, retry, pause and run schedules.</p>
<button type="submit">Log in</button>
</form>"#
        ),
    )
}

/// What an action did, for a browser that posted without script.
pub(super) fn result_page(code: StatusCode, message: &str, headers: &HeaderMap) -> Response {
    // Back to the page the form was on, when the browser says (same origin only:
    // the referrer policy sends a path to us alone).
    let back = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| url::Url::parse(r).ok())
        .map(|u| match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        })
        .unwrap_or_else(|| "/".to_owned());
    let class = if code.is_success() { "ok" } else { "error" };
    standalone(
        code,
        if code.is_success() { "Done" } else { "Refused" },
        &format!(
            r#"<p class="{class}" role="status">{}</p><p><a href="{}">Back</a></p>"#,
            esc(message),
            esc(&back)
        ),
    )
}

/// The page a browser without script gets before a bulk retry.
pub(super) fn confirm_retry_dead(filter: &DeadFilter, csrf: Option<&str>) -> Response {
    let scope = match (&filter.queue, &filter.kind) {
        (None, None) => "every dead job".to_owned(),
        (Some(q), None) => format!("every dead job of queue {q}"),
        (None, Some(k)) => format!("every dead job of kind {k}"),
        (Some(q), Some(k)) => format!("every dead job of kind {k} on queue {q}"),
    };
    let mut extra = vec![("confirmed", "yes")];
    if let Some(q) = &filter.queue {
        extra.push(("queue", q));
    }
    if let Some(k) = &filter.kind {
        extra.push(("kind", k));
    }
    let button = html::action_button(
        "/jobs/retry-dead",
        &format!("Yes, retry {scope}"),
        csrf,
        &extra,
        None,
        "danger",
    );
    standalone(
        StatusCode::OK,
        "Confirm",
        &format!(
            r#"<h1>Retry {}?</h1><p>Each goes back to <code>queued</code> with its attempts reset.</p>{button}<p><a href="/">Cancel</a></p>"#,
            esc(&scope)
        ),
    )
}

/// The embedded stylesheet, script and icon.
pub(super) async fn asset(Path(name): Path<String>) -> Response {
    let (kind, body): (&'static str, &'static [u8]) = match name.as_str() {
        "app.css" => ("text/css; charset=utf-8", APP_CSS.as_bytes()),
        "app.js" => ("text/javascript; charset=utf-8", APP_JS.as_bytes()),
        "favicon.svg" => ("image/svg+xml", FAVICON),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Where a page's bounded read failed: said on the page, not an error page.
fn unavailable(what: &str, error: &(dyn std::error::Error + 'static)) -> String {
    format!(
        r#"<p class="error" role="alert">{} unavailable: {}</p>"#,
        esc(what),
        esc(&crate::error_chain(error))
    )
}
