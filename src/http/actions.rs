//! What changes state over HTTP: log-in and log-out, and the admin actions
//! (cancel, retry, retry the dead, pause, resume, run a schedule now). Every
//! action goes through `crate::control`, the code the CLI runs.
//!
//! An action answers JSON, or, to a browser posting a form, a page saying what
//! happened. The middleware already required an `admin` scope; here a request
//! that came with a session cookie must also carry the session's CSRF token
//! (form field `csrf`, or the `X-CSRF-Token` header), and a bulk action must
//! carry `confirmed=yes` or gets a page asking for it.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Redirect, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use super::HttpState;
use super::auth::{self, Access, SESSION_COOKIE, SESSION_TTL};
use super::dashboard;
use crate::control::{self, Cancel};
use crate::ledger::DeadFilter;

/// What one action did, for either kind of answer.
struct Outcome {
    code: StatusCode,
    /// One sentence for people.
    message: String,
    /// The JSON answer (`message` is added to it).
    json: Value,
}

impl Outcome {
    fn ok(message: String, json: Value) -> Outcome {
        Outcome {
            code: StatusCode::OK,
            message,
            json,
        }
    }

    fn failed(code: StatusCode, message: String) -> Outcome {
        Outcome {
            code,
            json: json!({ "error": message }),
            message,
        }
    }

    fn of_error(error: control::Error) -> Outcome {
        let code = match &error {
            control::Error::NotFound(_) | control::Error::NoSchedule { .. } => {
                StatusCode::NOT_FOUND
            }
            control::Error::BadQueue(_) => StatusCode::BAD_REQUEST,
            control::Error::StillInRedis { .. } | control::Error::FiredAlready(_) => {
                StatusCode::CONFLICT
            }
            control::Error::Ledger(crate::ledger::Error::NotRetryable { .. }) => {
                StatusCode::CONFLICT
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Outcome::failed(code, crate::error_chain(&error))
    }
}

/// The form fields of a request body.
fn form(body: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

/// Runs `action` once the CSRF token checks out, and answers in the form the
/// client asked for.
async fn act<F>(access: &Access, headers: &HeaderMap, body: &str, action: F) -> Response
where
    F: AsyncFnOnce(&HashMap<String, String>) -> Outcome,
{
    let fields = form(body);
    let given = fields
        .get("csrf")
        .map(String::as_str)
        .or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()));
    let outcome = if auth::csrf_ok(access, given) {
        action(&fields).await
    } else {
        stale_csrf()
    };
    answer(headers, outcome)
}

fn stale_csrf() -> Outcome {
    Outcome::failed(
        StatusCode::FORBIDDEN,
        "the form's CSRF token is missing or stale; reload the page and try again".into(),
    )
}

fn answer(headers: &HeaderMap, outcome: Outcome) -> Response {
    if dashboard::wants_html(headers) {
        return dashboard::result_page(outcome.code, &outcome.message, headers);
    }
    let mut json = outcome.json;
    if outcome.code.is_success() {
        json["message"] = Value::String(outcome.message);
    }
    (outcome.code, Json(json)).into_response()
}

fn job_id(text: &str) -> Result<Uuid, Outcome> {
    text.parse().map_err(|_| {
        Outcome::failed(
            StatusCode::BAD_REQUEST,
            format!("`{text}` is not a job id (a UUID)"),
        )
    })
}

pub(super) async fn cancel(
    State(state): State<HttpState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    act(&access, &headers, &body, async |_| {
        let id = match job_id(&id) {
            Ok(id) => id,
            Err(outcome) => return outcome,
        };
        let events = state.live.borrow().events.clone();
        match control::cancel(&state.ledger, &state.broker, &events, id).await {
            Ok(Cancel::Done {
                queue, previous, ..
            }) => Outcome::ok(
                format!("Cancelled job {id} (it was {previous})"),
                json!({ "id": id, "cancelled": true, "previous_status": previous, "queue": queue }),
            ),
            Ok(Cancel::AlreadyFinal(status)) => Outcome {
                code: StatusCode::CONFLICT,
                message: format!("job {id} already {status}; nothing to cancel"),
                json: json!({ "id": id, "cancelled": false, "status": status,
                              "error": format!("job {id} already {status}") }),
            },
            Err(error) => Outcome::of_error(error),
        }
    })
    .await
}

pub(super) async fn retry(
    State(state): State<HttpState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    act(&access, &headers, &body, async |_| {
        let id = match job_id(&id) {
            Ok(id) => id,
            Err(outcome) => return outcome,
        };
        match control::retry(&state.ledger, &state.broker, id).await {
            Ok(queue) => Outcome::ok(
                format!("Job {id} is queued again on `{queue}`"),
                json!({ "retried": 1, "id": id, "queue": queue }),
            ),
            Err(error) => Outcome::of_error(error),
        }
    })
    .await
}

pub(super) async fn retry_dead(
    State(state): State<HttpState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let fields = form(&body);
    let filter = DeadFilter {
        queue: fields.get("queue").filter(|q| !q.is_empty()).cloned(),
        kind: fields.get("kind").filter(|k| !k.is_empty()).cloned(),
    };
    // A bulk action is confirmed first: a browser without script gets a page
    // with the button that confirms; an API client says `confirmed=yes`.
    if fields.get("confirmed").map(String::as_str) != Some("yes") {
        if !dashboard::wants_html(&headers) {
            return answer(
                &headers,
                Outcome::failed(
                    StatusCode::BAD_REQUEST,
                    "retrying every dead job is a bulk action: send confirmed=yes".into(),
                ),
            );
        }
        if !auth::csrf_ok(&access, fields.get("csrf").map(String::as_str)) {
            return answer(&headers, stale_csrf());
        }
        return dashboard::confirm_retry_dead(&filter, access.csrf.as_deref());
    }
    act(
        &access,
        &headers,
        &body,
        async |_| match control::retry_dead(&state.ledger, &filter).await {
            Ok(n) => Outcome::ok(
                format!("Retried {n} dead job{}", if n == 1 { "" } else { "s" }),
                json!({ "retried": n }),
            ),
            Err(error) => Outcome::of_error(error),
        },
    )
    .await
}

pub(super) async fn pause(
    State(state): State<HttpState>,
    Extension(access): Extension<Access>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    act(&access, &headers, &body, async |_| {
        match control::pause(&state.ledger, &state.broker, &queue).await {
            Ok(()) => Outcome::ok(
                format!("Paused queue {queue}: no new job starts; running jobs finish"),
                json!({ "queue": queue, "paused": true }),
            ),
            Err(error) => Outcome::of_error(error),
        }
    })
    .await
}

pub(super) async fn resume(
    State(state): State<HttpState>,
    Extension(access): Extension<Access>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    act(&access, &headers, &body, async |_| {
        match control::resume(&state.ledger, &state.broker, &queue).await {
            Ok(was) => Outcome::ok(
                if was {
                    format!("Resumed queue {queue}")
                } else {
                    format!("Queue {queue} was not paused")
                },
                json!({ "queue": queue, "paused": false, "was_paused": was }),
            ),
            Err(error) => Outcome::of_error(error),
        }
    })
    .await
}

pub(super) async fn run_cron(
    State(state): State<HttpState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    act(&access, &headers, &body, async |_| {
        let config = state.live.borrow().clone();
        match control::run_cron(&state.ledger, &config, &name).await {
            Ok(id) => Outcome::ok(
                format!("Schedule {name} enqueued job {id}"),
                json!({ "name": name, "id": id }),
            ),
            Err(error) => Outcome::of_error(error),
        }
    })
    .await
}

/// `POST /login` with a `token` field: opens a session and sets its cookie.
pub(super) async fn login(State(state): State<HttpState>, body: String) -> Response {
    let fields = form(&body);
    let token = fields.get("token").map(String::as_str).unwrap_or("");
    let Some(scope) = state.auth.scope_of(token.trim()) else {
        return dashboard::login_page(
            StatusCode::UNAUTHORIZED,
            Some("That token is not valid on this listener."),
        );
    };
    let (id, _csrf) = state.auth.open_session(scope);
    let mut cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    if state.auth.secure_cookies {
        cookie.push_str("; Secure");
    }
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /logout`: ends the session (with its CSRF token) and clears the cookie.
pub(super) async fn logout(
    State(state): State<HttpState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let fields = form(&body);
    if !auth::csrf_ok(&access, fields.get("csrf").map(String::as_str)) {
        return answer(&headers, stale_csrf());
    }
    if let Some(id) = auth::cookie(&headers, SESSION_COOKIE) {
        state.auth.close_session(id);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "jobrunner_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}
