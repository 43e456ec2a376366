//! `/jobs/{id}` for a browser: the job's fields, payload and result as pretty
//! JSON, every failed attempt's error, a timeline, its progress, and where it
//! sits in Redis now; cancel or retry for an admin. Other clients get the JSON
//! that front ends read (`probes::job`).

use std::fmt::Write as _;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::html::{self, badge, esc, json_block};
use super::{Nav, Page, render, unavailable, wants_html};
use crate::http::HttpState;
use crate::http::auth::Access;
use crate::ledger::{self, Status};

pub(in crate::http) async fn job(
    state: State<HttpState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !wants_html(&headers) {
        return crate::http::probes::job(state, Path(id)).await;
    }
    let Ok(id) = id.parse::<Uuid>() else {
        return super::result_page(
            StatusCode::BAD_REQUEST,
            &format!("`{id}` is not a job id (a UUID)"),
            &headers,
        );
    };
    let now = Utc::now();
    let mut detail = match state.ledger.job_detail(id).await {
        Ok(d) => d,
        Err(ledger::Error::NotFound(_)) => {
            return super::result_page(
                StatusCode::NOT_FOUND,
                &format!("job {id} not found"),
                &headers,
            );
        }
        Err(error) => {
            let page = Page {
                title: format!("Job {id}"),
                nav: Nav::Jobs,
                head: format!("<h1>Job <span class=\"mono\">{id}</span></h1>"),
                live: unavailable("The job", &error),
                events: None,
            };
            return render(page, &access, &headers);
        }
    };
    // Configured payload and result fields are shown redacted, and their values
    // are replaced in the error texts, as in every other view of a job.
    let secrets = crate::redact::job(&state.redaction, &mut detail.job);
    crate::redact::history(&secrets, &mut detail.errors);
    let job = &detail.job;
    let redis = state.broker.job_state(&job.queue, id).await;
    let mut live = String::new();

    let _ = write!(
        live,
        r#"<p class="status-line">{} on <a href="/jobs?queue={q}">{queue}</a>, kind <a href="/jobs?kind={k}">{kind}</a>, attempt {}/{}</p>"#,
        badge(job.status),
        job.attempts,
        job.max_attempts,
        q = html::url_value(&job.queue),
        queue = esc(&job.queue),
        k = html::url_value(&job.kind),
        kind = esc(&job.kind),
    );
    if access.can_act() {
        let csrf = access.csrf.as_deref();
        live.push_str(r#"<div class="actions">"#);
        if !job.status.is_final() {
            live.push_str(&html::action_button(
                &format!("/jobs/{id}/cancel"),
                "Cancel job",
                csrf,
                &[],
                None,
                "danger",
            ));
        }
        if matches!(job.status, Status::Dead | Status::Cancelled) {
            live.push_str(&html::action_button(
                &format!("/jobs/{id}/retry"),
                "Retry job",
                csrf,
                &[],
                None,
                "",
            ));
        }
        live.push_str("</div>");
    }
    if let Some(progress) = job.progress {
        let _ = write!(
            live,
            r#"<p class="progress"><label for="progress">Progress</label> <progress id="progress" max="100" value="{progress}">{progress}%</progress> {progress}% {}</p>"#,
            esc(job.progress_message.as_deref().unwrap_or(""))
        );
    }

    live.push_str(r#"<div class="cols"><section aria-labelledby="h-fields"><h2 id="h-fields">Fields</h2><dl class="fields">"#);
    let opt_time = |t: Option<DateTime<Utc>>| t.map_or("-".to_owned(), |t| html::time(t, now));
    for (name, value) in [
        ("Priority", job.priority.to_string()),
        ("Run at", html::time(job.run_at, now)),
        ("Unique key", esc(job.unique_key.as_deref().unwrap_or("-"))),
        ("Created", html::time(job.created_at, now)),
        ("Started", opt_time(job.started_at)),
        ("Finished", opt_time(job.finished_at)),
        ("Updated", html::time(job.updated_at, now)),
        (
            "Lease token",
            detail.lease_token.map_or("-".into(), |t| t.to_string()),
        ),
    ] {
        let _ = write!(live, "<dt>{name}</dt><dd>{value}</dd>");
    }
    live.push_str("</dl></section>");

    live.push_str(r#"<section aria-labelledby="h-redis"><h2 id="h-redis">In Redis now</h2>"#);
    match &redis {
        Err(error) => live.push_str(&unavailable("Redis", error)),
        Ok(r) => {
            let place = match (r.place, r.present) {
                (Some(place), _) => place.to_owned(),
                (None, true) => "held, in no queue structure".to_owned(),
                (None, false) => "not held (finished, or not dispatched yet)".to_owned(),
            };
            let _ = write!(
                live,
                r#"<dl class="fields"><dt>Place</dt><dd>{}</dd>"#,
                esc(&place)
            );
            if let Some(t) = r.lease_deadline {
                let _ = write!(live, "<dt>Lease until</dt><dd>{}</dd>", html::time(t, now));
            }
            if let Some(t) = r.due_at {
                let _ = write!(live, "<dt>Due at</dt><dd>{}</dd>", html::time(t, now));
            }
            if let Some(t) = r.token {
                let _ = write!(live, "<dt>Token</dt><dd>{t}</dd>");
            }
            live.push_str("</dl>");
        }
    }
    live.push_str("</section></div>");

    live.push_str(r#"<section aria-labelledby="h-timeline"><h2 id="h-timeline">Timeline</h2><ol class="timeline">"#);
    for (at, what) in timeline(job, &detail.errors) {
        let _ = write!(live, "<li>{} {}</li>", html::time(at, now), what);
    }
    live.push_str("</ol></section>");

    let errors = detail.errors.as_array().cloned().unwrap_or_default();
    if !errors.is_empty() {
        live.push_str(r#"<section aria-labelledby="h-errors"><h2 id="h-errors">Errors, every attempt</h2><div class="scroll"><table><thead><tr><th scope="col" class="n">Attempt</th><th scope="col">At</th><th scope="col">Error</th></tr></thead><tbody>"#);
        for e in &errors {
            let at = e["at"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map_or("-".to_owned(), |t| html::time(t.with_timezone(&Utc), now));
            let _ = write!(
                live,
                r#"<tr><td class="n">{}</td><td>{at}</td><td class="err-full">{}</td></tr>"#,
                e["attempt"],
                esc(e["error"].as_str().unwrap_or(""))
            );
        }
        live.push_str("</tbody></table></div></section>");
    } else if let Some(error) = &job.last_error {
        let _ = write!(
            live,
            r#"<section><h2>Last error</h2><p class="err-full">{}</p></section>"#,
            esc(error)
        );
    }

    let _ = write!(
        live,
        r#"<section aria-labelledby="h-payload"><h2 id="h-payload">Payload</h2>{}</section>"#,
        json_block(&job.payload)
    );
    if let Some(result) = &job.result {
        let _ = write!(
            live,
            r#"<section aria-labelledby="h-result"><h2 id="h-result">Result</h2>{}</section>"#,
            json_block(result)
        );
    }

    let page = Page {
        title: format!("Job {id}"),
        nav: Nav::Jobs,
        head: format!(r#"<h1>Job <span class="mono">{id}</span></h1>"#),
        live,
        events: Some(format!("job={id}")),
    };
    render(page, &access, &headers)
}

/// What the ledger knows of the job's transitions, in time order: created, each
/// failed attempt, the last start, the end.
fn timeline(job: &ledger::Job, errors: &Value) -> Vec<(DateTime<Utc>, String)> {
    let mut events = vec![(job.created_at, "created".to_owned())];
    for e in errors.as_array().into_iter().flatten() {
        if let Some(at) = e["at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        {
            events.push((
                at.with_timezone(&Utc),
                format!("attempt {} failed", e["attempt"]),
            ));
        }
    }
    if let Some(at) = job.started_at {
        events.push((at, format!("attempt {} started", job.attempts)));
    }
    match job.finished_at {
        Some(at) => events.push((at, format!("ended {}", badge(job.status)))),
        None => events.push((job.updated_at, format!("now {}", badge(job.status)))),
    }
    events.sort_by_key(|(at, _)| *at);
    events
}
