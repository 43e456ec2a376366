//! `/events`: job events as Server-Sent Events, filtered by `?job=`, `?queue=`
//! and `?kind=` (all given filters must match).
//!
//! Each client reads its own receiver of the daemon's bounded broadcast. A client
//! that falls behind does not slow anything down: it misses the oldest events and
//! gets an `event: lagged` note saying how many.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use futures::{Stream, StreamExt};
use serde_json::json;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{HttpState, Published};
use crate::ledger::{Event, EventType};

/// Which events a client asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Filter {
    job: Option<Uuid>,
    queue: Option<String>,
    kind: Option<String>,
}

impl Filter {
    /// Reads `job`, `queue` and `kind` from a query string; an unknown parameter
    /// or a bad job id is an error naming it.
    pub(super) fn parse(query: Option<&str>) -> Result<Filter, String> {
        let mut filter = Filter::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "job" => {
                    filter.job = Some(
                        value
                            .parse()
                            .map_err(|_| format!("job `{value}` is not a job id (a UUID)"))?,
                    )
                }
                "queue" => filter.queue = Some(value.into_owned()),
                "kind" => filter.kind = Some(value.into_owned()),
                other => {
                    return Err(format!(
                        "unknown parameter `{other}` (use job, queue and kind)"
                    ));
                }
            }
        }
        Ok(filter)
    }

    pub(super) fn matches(&self, e: &Event) -> bool {
        self.job.is_none_or(|id| id == e.id)
            && self.queue.as_ref().is_none_or(|q| *q == e.queue)
            && self.kind.as_ref().is_none_or(|k| *k == e.kind)
    }
}

pub(super) async fn events(
    State(state): State<HttpState>,
    RawQuery(query): RawQuery,
    stop: CancellationToken,
    keep_alive: Duration,
) -> Response {
    let filter = match Filter::parse(query.as_deref()) {
        Ok(f) => f,
        Err(error) => {
            return (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response();
        }
    };
    let stream = updates(state.events.subscribe().await, filter, stop)
        .map(|update| Ok::<_, Infallible>(to_sse(update)));
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response()
}

/// What a client is sent.
#[derive(Debug)]
enum Update {
    Event(Arc<Published>),
    /// The client fell this many events behind and missed them.
    Lagged(u64),
}

/// The events matching `filter`, and a note for each gap, until `stop`.
fn updates(
    rx: broadcast::Receiver<Arc<Published>>,
    filter: Filter,
    stop: CancellationToken,
) -> impl Stream<Item = Update> {
    futures::stream::unfold((rx, filter, stop), |(mut rx, filter, stop)| async move {
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = stop.cancelled() => return None,
            };
            let update = match next {
                Ok(p) if filter.matches(&p.event) => Update::Event(p),
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => Update::Lagged(missed),
                Err(RecvError::Closed) => return None,
            };
            return Some((update, (rx, filter, stop)));
        }
    })
}

fn to_sse(update: Update) -> SseEvent {
    match update {
        Update::Event(p) => {
            let name = match p.event.event_type {
                EventType::Status => "status",
                EventType::Progress => "progress",
            };
            SseEvent::default().event(name).data(p.json.as_str())
        }
        Update::Lagged(missed) => SseEvent::default()
            .event("lagged")
            .data(json!({ "missed": missed }).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_combine_and_a_bad_job_id_is_refused() {
        let id = Uuid::now_v7();
        let f = Filter::parse(Some(&format!("job={id}&queue=mail"))).unwrap();
        let mut e = Event::status(
            id,
            "mail",
            "send",
            crate::ledger::Status::Queued,
            0,
            chrono::Utc::now(),
            None,
        );
        assert!(f.matches(&e));
        e.queue = "other".into();
        assert!(!f.matches(&e));
        assert!(Filter::parse(None).unwrap().matches(&e));
        assert!(Filter::parse(Some("job=42")).unwrap_err().contains("42"));
        assert!(Filter::parse(Some("jobs=1")).unwrap_err().contains("jobs"));
    }

    fn published(queue: &str) -> Arc<Published> {
        let event = Event::status(
            Uuid::now_v7(),
            queue,
            "noop",
            crate::ledger::Status::Running,
            1,
            chrono::Utc::now(),
            None,
        );
        let json = event.to_json();
        Arc::new(Published { event, json })
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_is_told_what_it_missed_and_goes_on() {
        let (tx, rx) = broadcast::channel(2);
        let stop = CancellationToken::new();
        let filter = Filter::parse(Some("queue=mail")).unwrap();
        let mut updates = Box::pin(updates(rx, filter, stop.clone()));
        // Five events while the client reads nothing: the sender never waits.
        for queue in ["mail", "mail", "mail", "other", "mail"] {
            tx.send(published(queue)).unwrap();
        }
        assert!(matches!(updates.next().await, Some(Update::Lagged(3))));
        // The two newest survive; the filter drops the one of another queue.
        match updates.next().await {
            Some(Update::Event(p)) => assert_eq!(p.event.queue, "mail"),
            other => panic!("{other:?}"),
        }
        stop.cancel();
        assert!(
            updates.next().await.is_none(),
            "the stream ends at shutdown"
        );
    }
}
