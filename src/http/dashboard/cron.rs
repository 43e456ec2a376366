//! `/cron`: every schedule with its next fire, its last fire and that job's
//! status, and a button to run it now (admins).

use std::fmt::Write as _;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Json, Response};
use chrono::Utc;
use serde_json::json;

use super::html::{self, esc, url_value};
use super::{Nav, Page, render, unavailable, wants_html};
use crate::http::HttpState;
use crate::http::auth::Access;
use crate::scheduler;

pub(in crate::http) async fn cron(
    State(state): State<HttpState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
) -> Response {
    let config = state.live.borrow().clone();
    let now = Utc::now();
    let names: Vec<String> = config.cron.keys().cloned().collect();
    let last = state.ledger.cron_last_fires(&names).await;
    if !wants_html(&headers) {
        let last = last.unwrap_or_default();
        let list: Vec<_> = config
            .cron
            .iter()
            .map(|(name, c)| {
                let fire = last.get(name);
                json!({
                    "name": name,
                    "schedule": c.schedule,
                    "timezone": c.timezone,
                    "kind": c.kind,
                    "queue": scheduler::queue_of(&config, c),
                    "enabled": c.enabled,
                    "next_fire": scheduler::next_fire(c, now),
                    "last_fire": fire.map(|f| json!({
                        "fire_at": f.fire_at, "manual": f.manual,
                        "job_id": f.job_id, "status": f.status,
                    })),
                })
            })
            .collect();
        return Json(json!({ "schedules": list })).into_response();
    }
    let mut live = String::new();
    if config.cron.is_empty() {
        live.push_str("<p>No cron schedules configured ([cron.NAME] in the config file).</p>");
    } else {
        if let Err(error) = &last {
            live.push_str(&unavailable("Last fire times", error));
        }
        let last = last.unwrap_or_default();
        live.push_str(r#"<div class="scroll"><table><thead><tr><th scope="col">Schedule</th><th scope="col">When</th><th scope="col">Kind</th><th scope="col">Queue</th><th scope="col">Next fire</th><th scope="col">Last fire</th><th scope="col">Last job</th>"#);
        if access.can_act() {
            live.push_str(r#"<th scope="col">Actions</th>"#);
        }
        live.push_str("</tr></thead><tbody>");
        for (name, c) in &config.cron {
            let next =
                scheduler::next_fire(c, now).map_or("disabled".to_owned(), |t| html::time(t, now));
            let (fired, job) = match last.get(name) {
                Some(f) => (
                    format!(
                        "{}{}",
                        html::time(f.fire_at, now),
                        if f.manual { " (run by hand)" } else { "" }
                    ),
                    match (f.job_id, &f.status) {
                        (Some(id), Some(status)) => format!(
                            r#"<a href="/jobs/{id}" class="mono">{}</a> <span class="badge s-{s}">{s}</span>"#,
                            &id.to_string()[24..],
                            s = esc(status)
                        ),
                        (Some(id), None) => format!("{id} (deleted)"),
                        _ => "-".to_owned(),
                    },
                ),
                None => ("never".to_owned(), "-".to_owned()),
            };
            let _ = write!(
                live,
                r#"<tr><th scope="row">{}</th><td><code>{}</code> {}</td><td>{}</td><td>{}</td><td>{next}</td><td>{fired}</td><td>{job}</td>"#,
                esc(name),
                esc(&c.schedule),
                esc(&c.timezone),
                esc(&c.kind),
                esc(&scheduler::queue_of(&config, c)),
            );
            if access.can_act() {
                let _ = write!(
                    live,
                    "<td>{}</td>",
                    html::action_button(
                        &format!("/cron/{}/run", url_value(name)),
                        "Run now",
                        access.csrf.as_deref(),
                        &[],
                        None,
                        ""
                    )
                );
            }
            live.push_str("</tr>");
        }
        live.push_str("</tbody></table></div>");
    }
    let page = Page {
        title: "Cron".into(),
        nav: Nav::Cron,
        head: "<h1>Cron schedules</h1>".into(),
        live,
        events: Some(String::new()),
    };
    render(page, &access, &headers)
}
