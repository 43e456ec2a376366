//! `/jobs`: the job list, filtered by queue, status, kind and age, newest first,
//! a page at a time by keyset (`before=` the last row's time and id), through
//! the same ledger read as `jobrunner jobs`; and search by id or unique key.
//! JSON (`{"jobs", "next"}`) unless the client asks for HTML.

use std::fmt::Write as _;

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Redirect, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;
use uuid::Uuid;

use super::html::{self, badge, esc, url_value};
use super::{Nav, Page, render, unavailable, wants_html};
use crate::http::HttpState;
use crate::http::auth::Access;
use crate::ledger::{ALL_STATUSES, JobFilter, JobSummary, Status};

/// Rows per page unless `limit` says otherwise.
const PAGE: i64 = 50;
/// Most rows one page may ask for.
const MAX_PAGE: i64 = 200;
/// The age choices of the filter form.
const SINCE: [(&str, &str); 5] = [
    ("", "any time"),
    ("15m", "last 15 minutes"),
    ("1h", "last hour"),
    ("24h", "last day"),
    ("7d", "last week"),
];

/// The list's query string, read.
#[derive(Debug, Default)]
struct Query {
    queue: String,
    status: Option<Status>,
    kind: String,
    since: String,
    search: String,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
}

impl Query {
    fn parse(raw: Option<&str>) -> Result<Query, String> {
        let mut q = Query {
            limit: PAGE,
            ..Query::default()
        };
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let value = value.trim().to_owned();
            match key.as_ref() {
                "queue" => q.queue = value,
                "kind" => q.kind = value,
                "since" => q.since = value,
                "q" => q.search = value,
                "status" if value.is_empty() => {}
                "status" => {
                    q.status = Some(value.parse().map_err(|_| {
                        format!("status `{value}` is not one of {}", status_names())
                    })?)
                }
                "before" if value.is_empty() => {}
                "before" => q.before = Some(parse_cursor(&value)?),
                "limit" => {
                    q.limit = value
                        .parse::<i64>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or(format!(
                            "limit `{value}` is not a number from 1 to {MAX_PAGE}"
                        ))?
                }
                other => {
                    return Err(format!(
                        "unknown parameter `{other}` (use queue, status, kind, since, q, before, limit)"
                    ));
                }
            }
        }
        Ok(q)
    }

    fn since_time(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, String> {
        if self.since.is_empty() {
            return Ok(None);
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(&self.since) {
            return Ok(Some(t.with_timezone(&Utc)));
        }
        let d = humantime::parse_duration(&self.since)
            .ok()
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .ok_or(format!(
                "since `{}` is neither a duration (1h) nor an RFC 3339 time",
                self.since
            ))?;
        Ok(Some(now - d))
    }

    /// The query string of this filter, with `before` set to `cursor`.
    fn link(&self, cursor: Option<&str>) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("queue", self.queue.as_str()),
            ("status", self.status.map_or("", |s| s.as_str())),
            ("kind", &self.kind),
            ("since", &self.since),
        ] {
            if !v.is_empty() {
                parts.push(format!("{k}={}", url_value(v)));
            }
        }
        if let Some(c) = cursor {
            parts.push(format!("before={}", url_value(c)));
        }
        if self.limit != PAGE {
            parts.push(format!("limit={}", self.limit));
        }
        format!("/jobs?{}", parts.join("&"))
    }
}

fn status_names() -> String {
    ALL_STATUSES.map(|s| s.as_str()).join(", ")
}

/// `TIME~ID`, the last row of a page.
fn cursor_of(job: &JobSummary) -> String {
    format!(
        "{}~{}",
        job.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        job.id
    )
}

fn parse_cursor(text: &str) -> Result<(DateTime<Utc>, Uuid), String> {
    let bad = || format!("before `{text}` is not a cursor from a previous page");
    let (at, id) = text.split_once('~').ok_or_else(bad)?;
    let at = DateTime::parse_from_rfc3339(at).map_err(|_| bad())?;
    Ok((at.with_timezone(&Utc), id.parse().map_err(|_| bad())?))
}

pub(in crate::http) async fn jobs(
    State(state): State<HttpState>,
    Extension(access): Extension<Access>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let html = wants_html(&headers);
    let now = Utc::now();
    let query = match Query::parse(raw.as_deref()) {
        Ok(q) => q,
        Err(error) if html => return super::result_page(StatusCode::BAD_REQUEST, &error, &headers),
        Err(error) => {
            return (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response();
        }
    };
    // A job id goes straight to its page; anything else is a unique key.
    if let Ok(id) = query.search.parse::<Uuid>() {
        return Redirect::to(&format!("/jobs/{id}")).into_response();
    }
    let since = match query.since_time(now) {
        Ok(s) => s,
        Err(error) if html => return super::result_page(StatusCode::BAD_REQUEST, &error, &headers),
        Err(error) => {
            return (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response();
        }
    };
    let result = if query.search.is_empty() {
        state
            .ledger
            .list_jobs(&JobFilter {
                queue: Some(query.queue.clone()).filter(|q| !q.is_empty()),
                status: query.status,
                kind: Some(query.kind.clone()).filter(|k| !k.is_empty()),
                since,
                before: query.before,
                limit: query.limit,
            })
            .await
    } else {
        state
            .ledger
            .jobs_by_unique_key(&query.search, query.limit)
            .await
    };
    let next = result.as_ref().ok().and_then(|jobs| {
        (jobs.len() as i64 == query.limit && query.search.is_empty())
            .then(|| jobs.last().map(cursor_of))
            .flatten()
    });
    if !html {
        return match result {
            Ok(jobs) => Json(json!({ "jobs": jobs, "next": next })).into_response(),
            Err(error) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": crate::error_chain(&error) })),
            )
                .into_response(),
        };
    }
    let mut live = String::new();
    match &result {
        Err(error) => live.push_str(&unavailable("The job list", error)),
        Ok(jobs) if jobs.is_empty() => live.push_str(r#"<p class="empty">No jobs match.</p>"#),
        Ok(jobs) => live.push_str(&table(jobs, now)),
    }
    live.push_str(r#"<nav class="pages" aria-label="Pages">"#);
    if query.before.is_some() {
        let _ = write!(live, r#"<a href="{}">Newest</a>"#, esc(&query.link(None)));
    }
    if let Some(cursor) = &next {
        let _ = write!(
            live,
            r#"<a href="{}" rel="next">Older</a>"#,
            esc(&query.link(Some(cursor)))
        );
    }
    live.push_str("</nav>");
    let head = filter_form(&query, &state, &access);
    // Only the first page follows events: a later page would shift under the reader.
    let events = query.before.is_none().then(|| {
        let mut parts = Vec::new();
        if !query.queue.is_empty() {
            parts.push(format!("queue={}", url_value(&query.queue)));
        }
        if !query.kind.is_empty() {
            parts.push(format!("kind={}", url_value(&query.kind)));
        }
        parts.join("&")
    });
    let page = Page {
        title: "Jobs".into(),
        nav: Nav::Jobs,
        head,
        live,
        events,
    };
    render(page, &access, &headers)
}

fn filter_form(query: &Query, state: &HttpState, access: &Access) -> String {
    let queues: Vec<String> = state.live.borrow().queues.keys().cloned().collect();
    let mut out = String::from(
        r#"<h1>Jobs</h1><form method="get" action="/jobs" class="filters" role="search"><datalist id="queues">"#,
    );
    for q in &queues {
        let _ = write!(out, r#"<option value="{}">"#, esc(q));
    }
    out.push_str("</datalist>");
    let _ = write!(
        out,
        r#"<label>Queue <input name="queue" list="queues" value="{}"></label>"#,
        esc(&query.queue)
    );
    out.push_str(r#"<label>Status <select name="status"><option value="">any</option>"#);
    for s in ALL_STATUSES {
        let selected = if query.status == Some(s) {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, r#"<option{selected}>{}</option>"#, s.as_str());
    }
    out.push_str("</select></label>");
    let _ = write!(
        out,
        r#"<label>Kind <input name="kind" value="{}"></label><label>Created <select name="since">"#,
        esc(&query.kind)
    );
    for (value, label) in SINCE {
        let selected = if query.since == value {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, r#"<option value="{value}"{selected}>{label}</option>"#);
    }
    let _ = write!(
        out,
        r#"</select></label><label>Id or unique key <input name="q" type="search" value="{}"></label><button type="submit">Show</button></form>"#,
        esc(&query.search)
    );
    if query.status == Some(Status::Dead) && access.can_act() {
        let mut extra = Vec::new();
        if !query.queue.is_empty() {
            extra.push(("queue", query.queue.as_str()));
        }
        if !query.kind.is_empty() {
            extra.push(("kind", query.kind.as_str()));
        }
        out.push_str(&html::action_button(
            "/jobs/retry-dead",
            "Retry all dead jobs matching the queue and kind",
            access.csrf.as_deref(),
            &extra,
            Some("Retry every dead job matching this queue and kind?"),
            "",
        ));
    }
    out
}

/// The job table, shared with the overview's running jobs.
pub(super) fn table(jobs: &[JobSummary], now: DateTime<Utc>) -> String {
    let mut out = String::from(
        r#"<div class="scroll"><table class="jobs"><thead><tr><th scope="col">Job</th><th scope="col">Queue</th><th scope="col">Kind</th><th scope="col">Status</th><th scope="col" class="n">Attempts</th><th scope="col">Created</th><th scope="col">Error</th></tr></thead><tbody>"#,
    );
    for j in jobs {
        let error = j.last_error.as_deref().unwrap_or("");
        let short: String = error.chars().take(80).collect();
        let _ = write!(
            out,
            r#"<tr data-job="{id}"><th scope="row"><a href="/jobs/{id}" class="mono">{short_id}</a></th><td>{queue}</td><td>{kind}</td><td>{status}</td><td class="n">{attempts}/{max}</td><td>{created}</td><td class="err" title="{error}">{short}</td></tr>"#,
            id = j.id,
            short_id = &j.id.to_string()[24..],
            queue = esc(&j.queue),
            kind = esc(&j.kind),
            status = badge(j.status),
            attempts = j.attempts,
            max = j.max_attempts,
            created = html::time(j.created_at, now),
            error = esc(error),
            short = esc(&short),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_and_a_filter_keeps_its_fields_across_pages() {
        // The ledger keeps microseconds, and so does the cursor.
        let created = DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap();
        let job = JobSummary {
            id: Uuid::now_v7(),
            queue: "mail".into(),
            kind: "send".into(),
            status: Status::Dead,
            priority: 0,
            attempts: 1,
            max_attempts: 1,
            run_at: created,
            created_at: created,
            finished_at: None,
            last_error: None,
        };
        assert_eq!(
            parse_cursor(&cursor_of(&job)).unwrap(),
            (job.created_at, job.id)
        );
        assert!(parse_cursor("yesterday").is_err());
        let q = Query::parse(Some("queue=mail&status=dead&kind=a%20b")).unwrap();
        assert_eq!(
            q.link(Some("c")),
            "/jobs?queue=mail&status=dead&kind=a+b&before=c"
        );
        assert!(
            Query::parse(Some("status=lost"))
                .unwrap_err()
                .contains("lost")
        );
        assert!(Query::parse(Some("limit=100000")).is_err());
    }
}
