//! Job events: one small JSON object per status change or progress report, as
//! published on the Redis channel `prefix:events`, the Postgres channel
//! [`EVENTS_CHANNEL`] and the `/events` endpoint (docs/PROTOCOL.md).
//!
//! Events are notifications, not records: they never carry payloads or results,
//! and the ledger row stays the truth. Long texts are cut so an event always fits
//! Postgres's 8000-byte NOTIFY limit.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Ledger, Status};

/// The channel status changes are NOTIFYed on.
pub const EVENTS_CHANNEL: &str = "jobrunner_events";

/// Longest `error` or progress `message` an event carries, in characters.
const TEXT_MAX: usize = 500;

/// What an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Status,
    Progress,
}

/// A progress report of a running job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressInfo {
    /// 0 to 100.
    pub percent: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One event, as serialised on every channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    /// The job's status after the change (for progress events: its status then).
    pub status: Status,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressInfo>,
}

impl Event {
    /// A status change.
    pub fn status(
        id: Uuid,
        queue: &str,
        kind: &str,
        status: Status,
        attempt: i32,
        at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Event {
        Event {
            event_type: EventType::Status,
            id,
            queue: queue.to_owned(),
            kind: kind.to_owned(),
            status,
            attempt,
            at,
            error: error.map(cut),
            progress: None,
        }
    }

    /// The JSON text published on the channels.
    pub fn to_json(&self) -> String {
        // Serialising plain strings, numbers and a timestamp cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Cuts a text to [`TEXT_MAX`] characters, marking the cut.
pub(super) fn cut(text: &str) -> String {
    match text.char_indices().nth(TEXT_MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

impl Ledger {
    /// NOTIFYs each event on [`EVENTS_CHANNEL`], in order, in one statement.
    ///
    /// A transaction that notifies gets a transaction id and so a commit record;
    /// with `synchronous_commit` on, that is one WAL flush per call, which put
    /// ~10 ms in front of every outbox dispatch. Notifications are not durable
    /// anyway (a crash drops the queue), so this statement's commit does not wait
    /// for the disk: `set_config(…, true)` holds for its own implicit transaction.
    pub async fn notify_events(&self, events: &[String]) -> super::Result {
        if events.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "SELECT pg_notify('jobrunner_events', e)
             FROM (SELECT set_config('synchronous_commit', 'off', true)) AS no_flush,
                  unnest($1::text[]) AS e",
        )
        .bind(events)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Answers when Postgres does (`SELECT 1` on a pooled connection).
    pub async fn ping(&self) -> super::Result {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_small_json_without_empty_fields() {
        let at = "2026-11-22T10:00:00Z".parse().unwrap();
        let id = Uuid::nil();
        let e = Event::status(id, "default", "noop", Status::Running, 1, at, None);
        assert_eq!(
            e.to_json(),
            r#"{"type":"status","id":"00000000-0000-0000-0000-000000000000","queue":"default","kind":"noop","status":"running","attempt":1,"at":"2026-11-22T10:00:00Z"}"#
        );
        let back: Event = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn a_long_error_is_cut_so_the_event_fits_a_notify() {
        let long = "é".repeat(10_000);
        let e = Event::status(
            Uuid::nil(),
            "q",
            "k",
            Status::Dead,
            3,
            Utc::now(),
            Some(&long),
        );
        assert!(e.to_json().len() < 8000 / 2, "{}", e.to_json().len());
        assert!(e.error.unwrap().ends_with('…'));
    }
}
