//! The registry of live daemons: one hash, `prefix:workers`, field = daemon id,
//! value = a JSON [`WorkerEntry`] that the daemon rewrites every
//! [`WORKER_HEARTBEAT`]. An entry whose heartbeat is older than
//! [`WORKER_STALE_AFTER`] belongs to a daemon that died without removing it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Broker, Result};

/// How often a daemon rewrites its registry entry.
pub const WORKER_HEARTBEAT: Duration = Duration::from_secs(5);
/// An entry not rewritten for this long is shown as gone and pruned.
pub const WORKER_STALE_AFTER: Duration = Duration::from_secs(15);

/// One daemon as it registers itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerEntry {
    pub id: Uuid,
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub queues: Vec<String>,
    /// Jobs running in this daemon when it last wrote the entry.
    pub running: usize,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// True once the daemon is stopping: it fetches nothing new.
    #[serde(default)]
    pub draining: bool,
}

impl WorkerEntry {
    /// True when the entry has not been rewritten within [`WORKER_STALE_AFTER`].
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        now.signed_duration_since(self.heartbeat_at)
            .to_std()
            .is_ok_and(|age| age > WORKER_STALE_AFTER)
    }
}

impl Broker {
    /// Writes (or rewrites) this daemon's registry entry.
    pub async fn put_worker(&self, entry: &WorkerEntry) -> Result {
        let value = serde_json::to_string(entry).unwrap_or_default();
        let _: i64 = self
            .at(&self.keys.workers())?
            .hset(self.keys.workers(), (entry.id.to_string(), value))
            .await?;
        Ok(())
    }

    /// Removes registry entries (a clean shutdown, or stale ones).
    pub async fn remove_workers(&self, ids: &[Uuid]) -> Result {
        if ids.is_empty() {
            return Ok(());
        }
        let fields: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let _: i64 = self
            .at(&self.keys.workers())?
            .hdel(self.keys.workers(), fields)
            .await?;
        Ok(())
    }

    /// Every registry entry, oldest daemon first. Entries that do not parse (written
    /// by another version) are skipped.
    pub async fn workers(&self) -> Result<Vec<WorkerEntry>> {
        let all: std::collections::HashMap<String, String> = self
            .at(&self.keys.workers())?
            .hgetall(self.keys.workers())
            .await?;
        let mut entries: Vec<WorkerEntry> = all
            .values()
            .filter_map(|v| serde_json::from_str(v).ok())
            .collect();
        entries.sort_by_key(|e| (e.started_at, e.id));
        Ok(entries)
    }
}
