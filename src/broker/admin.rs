//! What the admin commands read from Redis (a queue's pause flag, one job's place
//! in the dispatch structures) and the registry of live daemons.
//!
//! The registry is one hash, `prefix:workers`: field = daemon id, value = a JSON
//! [`WorkerEntry`] that the daemon rewrites every [`WORKER_HEARTBEAT`]. An entry
//! whose heartbeat is older than [`WORKER_STALE_AFTER`] belongs to a daemon that
//! died without removing it.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
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

/// Where one job is in Redis.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RedisJobState {
    /// The job's hash exists: Redis holds the job.
    pub present: bool,
    /// `ready`, `delayed`, `leased`, or `ingest` (claimed for the ledger); `None`
    /// when it is in none of them.
    pub place: Option<&'static str>,
    /// When a delayed job falls due.
    pub due_at: Option<DateTime<Utc>>,
    /// When a leased job's lease runs out unless a heartbeat extends it.
    pub lease_deadline: Option<DateTime<Utc>>,
    /// Attempts started, as Redis counts them.
    pub attempts: Option<i64>,
    /// The fencing token of the current (or last) lease.
    pub token: Option<i64>,
}

/// What [`Broker::clear_leftover`] found of a job in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftover {
    /// Redis holds nothing of the job.
    None,
    /// Its hash was there but in no queue structure (a finished or cancelled job's
    /// remains); it has been deleted so a new dispatch is not skipped.
    Cleared,
    /// The job is still ready, delayed, leased or being ingested: an attempt may
    /// still run or settle, so it must not be dispatched again yet.
    InUse,
}

/// KEYS: job hash, ready, delayed, leases, ingesting. ARGV: id.
/// Returns 0 (nothing), 1 (an unplaced hash, deleted) or 2 (in use).
const CLEAR_LEFTOVER: &str = r#"
for i = 2, 5 do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) then return 2 end
end
return redis.call('DEL', KEYS[1])
"#;

fn from_ms(ms: f64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms as i64).single()
}

impl Broker {
    fn workers_key(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// Where job `id` of `queue` sits in Redis. Several reads, not one script: the
    /// answer is for people, and a job moving between them shows as it is a moment
    /// later.
    pub async fn job_state(&self, queue: &str, id: Uuid) -> Result<RedisJobState> {
        let member = id.to_string();
        let (attempts, token): (Option<i64>, Option<i64>) = self
            .pool
            .hmget(self.job_key(queue, id), vec!["attempts", "token"])
            .await?;
        let present: i64 = self.pool.exists(self.job_key(queue, id)).await?;
        let mut state = RedisJobState {
            present: present > 0,
            attempts,
            token,
            ..RedisJobState::default()
        };
        let ready: Option<f64> = self
            .pool
            .zscore(self.key(queue, "ready"), member.as_str())
            .await?;
        let delayed: Option<f64> = self
            .pool
            .zscore(self.key(queue, "delayed"), member.as_str())
            .await?;
        let leased: Option<f64> = self
            .pool
            .zscore(self.key(queue, "leases"), member.as_str())
            .await?;
        let ingesting: Option<f64> = self
            .pool
            .zscore(self.key(queue, "ingesting"), member.as_str())
            .await?;
        if let Some(deadline) = leased {
            state.place = Some("leased");
            state.lease_deadline = from_ms(deadline);
        } else if ready.is_some() {
            state.place = Some("ready");
        } else if let Some(due) = delayed {
            state.place = Some("delayed");
            state.due_at = from_ms(due);
        } else if ingesting.is_some() {
            state.place = Some("ingest");
        }
        Ok(state)
    }

    /// Makes way for a job to be dispatched again (`jobrunner retry`): deletes a
    /// hash the job left behind, unless the job is still in a queue structure. The
    /// dispatch script skips a job whose hash exists, so a leftover would leave the
    /// retried job waiting for ever. Call it while the ledger row is final: no
    /// dispatch can create the hash meanwhile.
    pub async fn clear_leftover(&self, queue: &str, id: Uuid) -> Result<Leftover> {
        let script = fred::types::scripts::Script::from_lua(CLEAR_LEFTOVER);
        let reply = self
            .eval(
                &script,
                vec![
                    self.job_key(queue, id),
                    self.key(queue, "ready"),
                    self.key(queue, "delayed"),
                    self.key(queue, "leases"),
                    self.key(queue, "ingesting"),
                ],
                vec![id.to_string()],
            )
            .await?;
        Ok(match reply.as_i64() {
            Some(0) => Leftover::None,
            Some(1) => Leftover::Cleared,
            _ => Leftover::InUse,
        })
    }

    /// Writes (or rewrites) this daemon's registry entry.
    pub async fn put_worker(&self, entry: &WorkerEntry) -> Result {
        let value = serde_json::to_string(entry).unwrap_or_default();
        let _: i64 = self
            .pool
            .hset(self.workers_key(), (entry.id.to_string(), value))
            .await?;
        Ok(())
    }

    /// Removes registry entries (a clean shutdown, or stale ones).
    pub async fn remove_workers(&self, ids: &[Uuid]) -> Result {
        if ids.is_empty() {
            return Ok(());
        }
        let fields: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let _: i64 = self.pool.hdel(self.workers_key(), fields).await?;
        Ok(())
    }

    /// Every registry entry, oldest daemon first. Entries that do not parse (written
    /// by another version) are skipped.
    pub async fn workers(&self) -> Result<Vec<WorkerEntry>> {
        let all: std::collections::HashMap<String, String> =
            self.pool.hgetall(self.workers_key()).await?;
        let mut entries: Vec<WorkerEntry> = all
            .values()
            .filter_map(|v| serde_json::from_str(v).ok())
            .collect();
        entries.sort_by_key(|e| (e.started_at, e.id));
        Ok(entries)
    }

    /// The Redis server's process id (`INFO server`), for the benchmark's CPU
    /// accounting. `None` if the server does not say.
    pub async fn server_pid(&self) -> Result<Option<u32>> {
        let info: String = self
            .pool
            .next()
            .info(Some(fred::types::InfoKind::Server))
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse().ok()))
    }
}
