//! What the daemon and the admin commands read back from Redis: the sizes of a
//! queue's structures, one job's place in them, and the pool's state.

use chrono::{DateTime, TimeZone, Utc};
use fred::prelude::*;
use serde::Serialize;
use uuid::Uuid;

use super::{Broker, Result};

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

/// Jobs of one queue in Redis, for the queue gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    pub ready: i64,
    /// Delayed: scheduled for later or waiting to retry.
    pub scheduled: i64,
    /// Leased to a worker.
    pub running: i64,
    /// When the job at the head of the ready set became ready (Unix ms).
    pub head_ready_ms: Option<i64>,
}

/// The Redis pool's state, for the pool gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub clients: usize,
    pub connected: usize,
    /// Commands buffered, not yet written to a socket.
    pub queued: usize,
    /// Commands re-sent after a connection closed mid-request (since start).
    pub redeliveries: usize,
}

/// Offset of the time part of a ready-set score (see `ready_score` in the scripts).
const READY_EPOCH_MS: i64 = 1_735_689_600_000;
/// Weight of one priority step in a ready-set score.
const PRIORITY_WEIGHT: i64 = 2_199_023_255_552;

fn from_ms(ms: f64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms as i64).single()
}

impl Broker {
    /// Where job `id` of `queue` sits in Redis. Several reads, not one script: the
    /// answer is for people, and a job moving between them shows as it is a moment
    /// later.
    pub async fn job_state(&self, queue: &str, id: Uuid) -> Result<RedisJobState> {
        let k = self.queue_keys(queue);
        let member = id.to_string();
        // Every key of the queue lives on one node.
        let client = self.at(k.base())?;
        let (attempts, token): (Option<i64>, Option<i64>) =
            client.hmget(k.job(id), vec!["attempts", "token"]).await?;
        let present: i64 = client.exists(k.job(id)).await?;
        let mut state = RedisJobState {
            present: present > 0,
            attempts,
            token,
            ..RedisJobState::default()
        };
        let ready: Option<f64> = client.zscore(k.ready(), member.as_str()).await?;
        let delayed: Option<f64> = client.zscore(k.delayed(), member.as_str()).await?;
        let leased: Option<f64> = client.zscore(k.leases(), member.as_str()).await?;
        let ingesting: Option<f64> = client.zscore(k.ingesting(), member.as_str()).await?;
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

    /// Jobs waiting in each structure of a queue: (ready, delayed, leased, ingest).
    pub async fn depth(&self, queue: &str) -> Result<(i64, i64, i64, i64)> {
        let k = self.queue_keys(queue);
        let client = self.at(k.base())?;
        let ready: i64 = client.zcard(k.ready()).await?;
        let delayed: i64 = client.zcard(k.delayed()).await?;
        let leased: i64 = client.zcard(k.leases()).await?;
        let ingest: i64 = client.llen(k.ingest()).await?;
        Ok((ready, delayed, leased, ingest))
    }

    /// Sizes of a queue's structures and the age of its ready head, in one round
    /// trip.
    pub async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        let k = self.queue_keys(queue);
        let pipeline = self.at(k.base())?.pipeline();
        let _: () = pipeline.zcard(k.ready()).await?;
        let _: () = pipeline.zcard(k.delayed()).await?;
        let _: () = pipeline.zcard(k.leases()).await?;
        let _: () = pipeline
            .zrange(k.ready(), 0, 0, None, false, None, true)
            .await?;
        let (ready, scheduled, running, head): (i64, i64, i64, Vec<(String, f64)>) =
            pipeline.all().await?;
        Ok(QueueStats {
            ready,
            scheduled,
            running,
            head_ready_ms: head.first().map(|(_, score)| ready_ms_of_score(*score)),
        })
    }

    /// The Redis server's process id (`INFO server`), for the benchmark's CPU
    /// accounting. `None` if the server does not say.
    pub async fn server_pid(&self) -> Result<Option<u32>> {
        let Some(pool) = self.route.pools().into_iter().next() else {
            return Ok(None);
        };
        let info: String = pool
            .next()
            .info(Some(fred::types::InfoKind::Server))
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse().ok()))
    }

    /// The pool's clients and their buffered commands.
    pub fn pool_stats(&self) -> PoolStats {
        use fred::interfaces::MetricsInterface;
        let pools = self.route.pools();
        let clients: Vec<&Client> = pools.iter().flat_map(|p| p.clients()).collect();
        PoolStats {
            clients: clients.len(),
            connected: clients.iter().filter(|c| c.is_connected()).count(),
            queued: clients.iter().map(|c| c.command_queue_len()).sum(),
            redeliveries: clients.iter().map(|c| c.read_redelivery_count()).sum(),
        }
    }
}

/// When a job became ready, from its ready-set score `-priority · W + (ms − epoch)`.
fn ready_ms_of_score(score: f64) -> i64 {
    (score as i64).rem_euclid(PRIORITY_WEIGHT) + READY_EPOCH_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_time_is_recovered_from_a_score_of_any_priority() {
        let ms = 1_790_000_000_123;
        for priority in [-1000_i64, -1, 0, 5, 1000] {
            let score = (-priority * PRIORITY_WEIGHT + (ms - READY_EPOCH_MS)) as f64;
            assert_eq!(ready_ms_of_score(score), ms, "priority {priority}");
        }
    }
}
