//! `/`: per queue its counts, pause state, oldest wait and the last fifteen
//! minutes' ends as a chart; the live daemons and the jobs running now; the
//! health of Redis and Postgres.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Duration, DurationRound, Utc};

use super::html::{self, age, esc, url_value};
use super::{Nav, Page, render, unavailable};
use crate::http::HttpState;
use crate::http::auth::Access;
use crate::ledger::{JobFilter, Status};

/// Minutes of history the throughput chart shows.
const CHART_MINUTES: i64 = 15;
/// Most running jobs listed.
const RUNNING_SHOWN: i64 = 20;

pub(in crate::http) async fn overview(
    State(state): State<HttpState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
) -> Response {
    let now = Utc::now();
    let csrf = access.csrf.as_deref();
    let act = access.can_act();
    let configured: Vec<String> = state.live.borrow().queues.keys().cloned().collect();
    let mut live = String::new();

    let health = crate::http::probes::readiness(&state).await;
    let _ = write!(
        live,
        r#"<section aria-labelledby="h-health"><h2 id="h-health">Services</h2><ul class="health">{}{}</ul></section>"#,
        service("Redis", &health.redis),
        service("Postgres", &health.postgres)
    );

    let (counts, chart) = tokio::join!(
        state.ledger.queue_counts(&configured),
        state.ledger.ends_per_minute(CHART_MINUTES)
    );
    let mut per_minute: BTreeMap<String, BTreeMap<DateTime<Utc>, (i64, i64)>> = BTreeMap::new();
    if let Ok(rows) = &chart {
        for r in rows {
            per_minute
                .entry(r.queue.clone())
                .or_default()
                .insert(r.minute, (r.succeeded, r.dead));
        }
    }
    let this_minute = now.duration_trunc(Duration::minutes(1)).unwrap_or(now);
    live.push_str(r#"<section aria-labelledby="h-queues"><h2 id="h-queues">Queues</h2>"#);
    match counts {
        Err(error) => live.push_str(&unavailable("Queue counts", &error)),
        Ok(counts) if counts.is_empty() => {
            live.push_str("<p>No queues configured and no jobs waiting.</p>")
        }
        Ok(counts) => {
            live.push_str(
                r#"<div class="scroll"><table class="queues"><caption class="sr">Jobs per queue and status</caption><thead><tr><th scope="col">Queue</th><th scope="col" class="n">Ready</th><th scope="col" class="n">Scheduled</th><th scope="col" class="n">Running</th><th scope="col" class="n">Retrying</th><th scope="col" class="n">Dead</th><th scope="col">Paused</th><th scope="col">Oldest wait</th><th scope="col">Ended, last 15 min</th>"#,
            );
            if act {
                live.push_str(r#"<th scope="col">Actions</th>"#);
            }
            live.push_str("</tr></thead><tbody>");
            for c in counts {
                let paused = state.broker.paused(&c.queue).await.ok();
                let q = url_value(&c.queue);
                let cell = |n: i64, status: Status| {
                    format!(
                        r#"<td class="n" data-label="{s}"><a href="/jobs?queue={q}&amp;status={s}">{n}</a></td>"#,
                        s = status.as_str()
                    )
                };
                let minutes = per_minute.get(&c.queue);
                let series: Vec<(i64, i64)> = (0..CHART_MINUTES)
                    .rev()
                    .map(|back| {
                        let at = this_minute - Duration::minutes(back);
                        minutes.and_then(|m| m.get(&at)).copied().unwrap_or((0, 0))
                    })
                    .collect();
                let _ = write!(
                    live,
                    r#"<tr data-queue="{qe}"><th scope="row"><a href="/jobs?queue={q}">{qe}</a></th>{}{}{}{}{}<td data-label="paused">{}</td><td data-label="oldest wait">{}</td><td data-label="ended">{}</td>"#,
                    cell(c.ready, Status::Queued),
                    cell(c.scheduled, Status::Scheduled),
                    cell(c.running, Status::Running),
                    cell(c.retrying, Status::Retrying),
                    cell(c.dead, Status::Dead),
                    match paused {
                        Some(true) => r#"<span class="badge s-paused">paused</span>"#,
                        Some(false) => "no",
                        None => "?",
                    },
                    c.oldest_waiting_since.map_or("-".to_owned(), |t| age(now
                        .signed_duration_since(t)
                        .num_seconds())),
                    html::sparkline(&series, &c.queue),
                    qe = esc(&c.queue),
                );
                if act {
                    live.push_str(r#"<td class="actions">"#);
                    live.push_str(&if paused == Some(true) {
                        html::action_button(
                            &format!("/queues/{q}/resume"),
                            "Resume",
                            csrf,
                            &[],
                            None,
                            "",
                        )
                    } else {
                        html::action_button(
                            &format!("/queues/{q}/pause"),
                            "Pause",
                            csrf,
                            &[],
                            None,
                            "",
                        )
                    });
                    if c.dead > 0 {
                        live.push_str(&html::action_button(
                            "/jobs/retry-dead",
                            &format!("Retry {} dead", c.dead),
                            csrf,
                            &[("queue", &c.queue)],
                            Some(&format!("Retry every dead job of queue {}?", c.queue)),
                            "",
                        ));
                    }
                    live.push_str("</td>");
                }
                live.push_str("</tr>");
            }
            live.push_str("</tbody></table></div>");
        }
    }
    live.push_str("</section>");

    live.push_str(r#"<section aria-labelledby="h-daemons"><h2 id="h-daemons">Daemons</h2>"#);
    match state.broker.workers().await {
        Err(error) => live.push_str(&unavailable("The worker registry", &error)),
        Ok(workers) if workers.is_empty() => live.push_str("<p>No daemon is registered.</p>"),
        Ok(workers) => {
            live.push_str(r#"<div class="scroll"><table><thead><tr><th scope="col">Host</th><th scope="col">PID</th><th scope="col">Version</th><th scope="col">Queues</th><th scope="col" class="n">Running</th><th scope="col">Up</th><th scope="col">Heartbeat</th><th scope="col">State</th></tr></thead><tbody>"#);
            for w in workers {
                let state = if w.is_stale(now) {
                    "gone"
                } else if w.draining {
                    "draining"
                } else {
                    "live"
                };
                let _ = write!(
                    live,
                    r#"<tr><th scope="row" title="{id}">{host}</th><td>{pid}</td><td>{version}</td><td>{queues}</td><td class="n">{running}</td><td>{up}</td><td>{beat} ago</td><td><span class="badge w-{state}">{state}</span></td></tr>"#,
                    id = w.id,
                    host = esc(&w.host),
                    pid = w.pid,
                    version = esc(&w.version),
                    queues = esc(&w.queues.join(", ")),
                    running = w.running,
                    up = age(now.signed_duration_since(w.started_at).num_seconds()),
                    beat = age(now.signed_duration_since(w.heartbeat_at).num_seconds()),
                );
            }
            live.push_str("</tbody></table></div>");
        }
    }
    live.push_str("</section>");

    live.push_str(r#"<section aria-labelledby="h-running"><h2 id="h-running">Running now</h2>"#);
    let running = state
        .ledger
        .list_jobs(&JobFilter {
            status: Some(Status::Running),
            limit: RUNNING_SHOWN,
            ..JobFilter::default()
        })
        .await;
    match running {
        Err(error) => live.push_str(&unavailable("Running jobs", &error)),
        Ok(jobs) if jobs.is_empty() => live.push_str("<p>No job is running.</p>"),
        Ok(jobs) => {
            live.push_str(&super::list::table(&jobs, now));
            if jobs.len() as i64 == RUNNING_SHOWN {
                live.push_str(r#"<p><a href="/jobs?status=running">All running jobs</a></p>"#);
            }
        }
    }
    live.push_str("</section>");

    let page = Page {
        title: "Overview".into(),
        nav: Nav::Overview,
        head: "<h1>Overview</h1>".into(),
        live,
        events: Some(String::new()),
    };
    render(page, &access, &headers)
}

fn service(name: &str, state: &Result<(), String>) -> String {
    match state {
        Ok(()) => format!(r#"<li><span class="badge s-succeeded">ok</span> {name}</li>"#),
        Err(error) => format!(
            r#"<li><span class="badge s-dead">down</span> {name}: {}</li>"#,
            esc(error)
        ),
    }
}
