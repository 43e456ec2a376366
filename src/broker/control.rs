//! Flow control on the Redis side: the limits handed to FETCH, pause and resume,
//! and cancellation.
//!
//! The limits are enforced inside the FETCH script (see `scripts/lease.rs`), never in a
//! daemon's memory, so they hold across every daemon sharing the Redis.

use std::collections::BTreeMap;

use fred::interfaces::PubsubInterface;
use fred::prelude::*;
use serde::Serialize;
use uuid::Uuid;

use super::{Broker, Error, Result};

/// The flow limits of one queue as FETCH reads them (short names: the script
/// decodes this on every call).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// The queue-wide rate limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<Window>,
    /// Per kind of the queue.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub k: BTreeMap<String, KindLimits>,
}

/// A sliding window: at most `l` leases in any `p` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub l: u32,
    pub p: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KindLimits {
    /// Most leases of the kind at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c: Option<usize>,
    /// Rate limit: at most `l` leases per `p` ms …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p: Option<u64>,
    /// … per distinct value of this payload field (a name or a JSON pointer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f: Option<String>,
}

impl Limits {
    /// The FETCH argument: "" when there is no limit, so the script skips decoding.
    pub fn to_arg(&self) -> String {
        if self.q.is_none() && self.k.is_empty() {
            return String::new();
        }
        // Serialising plain structs of numbers and strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What [`Broker::cancel`] did in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CancelOutcome {
    /// The job was waiting (ready, delayed or parked); it is gone and never runs.
    Removed,
    /// The job is leased: it is marked, and its daemon was told to stop it.
    Signalled,
    /// Redis holds no copy (not dispatched yet, or already settled).
    Absent,
}

impl Broker {
    /// Takes a job out of Redis, or signals the daemon running it.
    pub async fn cancel(&self, queue: &str, id: Uuid) -> Result<CancelOutcome> {
        let k = self.queue_keys(queue);
        let reply = self
            .eval(
                &self.scripts.cancel,
                vec![
                    k.ready(),
                    k.delayed(),
                    k.leases(),
                    k.job(id),
                    k.ended(id),
                    k.base().to_owned(),
                ],
                vec![id.to_string(), k.cancel()],
            )
            .await?;
        match reply.as_str().as_deref() {
            Some("removed") => Ok(CancelOutcome::Removed),
            Some("signalled") => Ok(CancelOutcome::Signalled),
            Some("absent") => Ok(CancelOutcome::Absent),
            _ => Err(Error::Reply {
                script: "cancel",
                detail: format!("{reply:?}"),
            }),
        }
    }

    /// Pauses a queue: FETCH leases nothing from it until [`Broker::resume`].
    /// Running jobs are not touched.
    pub async fn pause(&self, queue: &str) -> Result {
        let now = chrono::Utc::now().timestamp_millis().to_string();
        let key = self.queue_keys(queue).paused();
        let _: () = self.at(&key)?.set(key, now, None, None, false).await?;
        Ok(())
    }

    /// Resumes a queue and wakes its fetch loops. False if it was not paused.
    pub async fn resume(&self, queue: &str) -> Result<bool> {
        let k = self.queue_keys(queue);
        let client = self.at(&k.paused())?;
        let removed: i64 = client.del(k.paused()).await?;
        let _: i64 = client.publish(k.wake(), "ready").await?;
        Ok(removed > 0)
    }

    /// Whether a queue is paused.
    pub async fn paused(&self, queue: &str) -> Result<bool> {
        let key = self.queue_keys(queue).paused();
        let n: i64 = self.at(&key)?.exists(key).await?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limits_give_an_empty_argument_and_limits_use_short_names() {
        assert_eq!(Limits::default().to_arg(), "");
        let mut limits = Limits {
            q: Some(Window { l: 10, p: 1000 }),
            ..Limits::default()
        };
        limits.k.insert(
            "sms".into(),
            KindLimits {
                c: Some(4),
                f: Some("/to".into()),
                ..KindLimits::default()
            },
        );
        assert_eq!(
            limits.to_arg(),
            r#"{"q":{"l":10,"p":1000},"k":{"sms":{"c":4,"f":"/to"}}}"#
        );
    }
}
