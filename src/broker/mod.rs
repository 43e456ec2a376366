//! The Redis dispatch layer: the process's one fred pool and every script that
//! moves jobs between ready, delayed, leased and ingest structures.
//!
//! Key layout for queue `q` (prefix `jobrunner` by default):
//! `prefix:{q}:ready` (zset by priority, then time), `:delayed` (zset by due ms),
//! `:leases` (zset by lease deadline), `:fence` (fencing-token counter), `:ingest`
//! (list of producer-enqueued ids), `:ingesting` (zset of claimed ingest ids),
//! `:job:<id>` (hash: kind, payload, attempts, max_attempts, token, run_ms, …) and
//! the channel `prefix:{q}:wake`. `prefix:epoch` marks a Redis that has been seeded.
//! Flow control (`flow.rs`) adds `:paused`, `:inflight:<kind>` (set of leases
//! counted against the kind's concurrency), `:parked:<kind>` (zset of jobs waiting
//! for a slot), `:parked_kinds`, `:rate` and `:rate:<kind>[:<value>]` (sliding
//! windows of lease times) and the channel `prefix:{q}:cancel`.
//!
//! **Invariant:** only `broker` talks to Redis, and it never touches Postgres. No
//! command here blocks on the server, so every call may share the pool.

mod admin;
mod flow;
mod scripts;

use std::time::Duration;

use fred::prelude::*;
use fred::types::config::{ReconnectPolicy, UnresponsiveConfig};
use fred::types::scripts::Script;
use uuid::Uuid;

use crate::config::RedisConfig;

pub use admin::{Leftover, RedisJobState, WORKER_HEARTBEAT, WORKER_STALE_AFTER, WorkerEntry};
pub use flow::{CancelOutcome, Heartbeat, KindLimits, Limits, Window};
pub use scripts::ENQUEUE as ENQUEUE_SCRIPT_BODY;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to Redis at {url}")]
    Connect {
        url: String,
        #[source]
        source: fred::error::Error,
    },
    #[error("Redis command failed")]
    Redis(#[from] fred::error::Error),
    #[error("unexpected reply from Redis script {script}: {detail}")]
    Reply {
        script: &'static str,
        detail: String,
    },
}

pub type Result<T = (), E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the failure may pass by itself: the connection, a timeout, the
    /// client's back-pressure, a cluster or sentinel change, or a server state
    /// (LOADING, BUSY, TRYAGAIN, MASTERDOWN, READONLY, CLUSTERDOWN, OOM). Told
    /// by fred's error kind and, for error replies, by the server's error code
    /// (the reply's first word, the Redis protocol's error class).
    pub fn is_transient(&self) -> bool {
        use fred::error::ErrorKind as K;
        let e = match self {
            Error::Connect { .. } => return true,
            Error::Reply { .. } => return false,
            Error::Redis(e) => e,
        };
        match e.kind() {
            K::IO | K::Timeout | K::Canceled | K::Backpressure | K::Cluster | K::Routing => true,
            K::Sentinel | K::Protocol => true,
            K::Unknown => matches!(
                e.details().split_whitespace().next(),
                Some(
                    "LOADING"
                        | "BUSY"
                        | "TRYAGAIN"
                        | "MASTERDOWN"
                        | "READONLY"
                        | "CLUSTERDOWN"
                        | "OOM"
                        | "NOREPLICAS"
                        | "MISCONF"
                )
            ),
            _ => false,
        }
    }
}

/// A job leased to this daemon by [`Broker::fetch`].
#[derive(Debug, Clone)]
pub struct Leased {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    /// The payload as the producer wrote it; parsing it is the worker's job, so a
    /// malformed one ends that job, not the fetch.
    pub payload: String,
    pub attempt: i32,
    pub max_attempts: i32,
    /// The fencing token of this attempt.
    pub token: i64,
    /// When the job became ready to run (Unix ms): its enqueue or `run_at` time,
    /// or the time its last retry was due. Queue wait is lease time minus this.
    pub ready_ms: i64,
}

/// The result of one fetch round trip.
#[derive(Debug, Default)]
pub struct Fetched {
    pub jobs: Vec<Leased>,
    /// When the earliest delayed job falls due (Unix ms), if any.
    pub next_due_ms: Option<i64>,
}

/// A lease the reaper found expired.
#[derive(Debug, Clone)]
pub struct Reaped {
    pub id: Uuid,
    /// True when the job had used all its attempts and was dropped as dead.
    pub dead: bool,
    /// True when the job had been cancelled while leased: it was dropped, and the
    /// ledger already says `cancelled`.
    pub cancelled: bool,
    pub attempts: i32,
    pub token: i64,
}

/// The hash fields of a producer-enqueued job, in the order [`Ingest::fields`]
/// holds them.
pub const INGEST_FIELDS: [&str; 6] = [
    "kind",
    "payload",
    "priority",
    "max_attempts",
    "created_ms",
    "run_ms",
];

/// A producer-enqueued entry claimed for ledger insertion, exactly as Redis held
/// it. Nothing here is checked: producers may write the ingest list and the job
/// hashes by hand, so the runtime validates every byte before it trusts any.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// The ingest list entry (meant to be the job id), as bytes.
    pub entry: Vec<u8>,
    /// The Redis type of the entry's job key: `hash` normally; `none` for an
    /// entry that is no canonical id and has no key (it was not claimed).
    pub key_type: String,
    /// The fields named in [`INGEST_FIELDS`]; `None` where a field is missing.
    pub fields: [Option<Vec<u8>>; 6],
}

/// What one claim took from a queue's ingest list.
#[derive(Debug, Default)]
pub struct Claimed {
    pub entries: Vec<Ingest>,
    /// Set when the ingest list key held another type (the value): it was
    /// renamed to `<key>:bad` so producers can enqueue again.
    pub bad_list: Option<String>,
}

/// A job on its way into Redis from the ledger's outbox.
#[derive(Debug, Clone)]
pub struct Dispatch<'a> {
    pub id: Uuid,
    pub kind: &'a str,
    pub payload: &'a str,
    pub priority: i32,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_ms: i64,
    /// The job ended before and was retried: dispatch it despite its tombstone.
    pub revive: bool,
}

/// What a Redis-direct producer sends (the same as the documented script takes).
#[derive(Debug, Clone, Default)]
pub struct RedisEnqueue {
    pub queue: String,
    pub kind: String,
    pub payload: String,
    pub priority: i32,
    pub max_attempts: i32,
    pub delay_ms: i64,
}

struct Scripts {
    enqueue: Script,
    claim_ingest: Script,
    promote_ingested: Script,
    dispatch: Script,
    fetch: Script,
    complete: Script,
    retry: Script,
    release: Script,
    heartbeat: Script,
    reap: Script,
    missing: Script,
    cancel: Script,
    publish_many: Script,
}

/// The shared Redis pool plus the loaded scripts. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pool: Pool,
    /// Kept to build the subscriber and per-loop clients with the same settings.
    builder: std::sync::Arc<Builder>,
    prefix: String,
    scripts: std::sync::Arc<Scripts>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn script(body: &str) -> Script {
    Script::from_lua(scripts::source(body))
}

/// The full text of the producer enqueue script, as documented in PROTOCOL.md.
pub fn enqueue_script_source() -> String {
    scripts::source(scripts::ENQUEUE)
}

impl Broker {
    /// Builds the process's one pool, with a reconnect policy that never gives up
    /// and a command timeout, and waits for the first connection.
    pub async fn connect(config: &RedisConfig) -> Result<Broker> {
        let url = config.url.to_string();
        let connect_err = |source| Error::Connect {
            url: url.clone(),
            source,
        };
        let redis_config = Config::from_url(config.url.expose()).map_err(connect_err)?;
        let mut builder = Builder::from_config(redis_config);
        let (min, max) = (
            config.reconnect_min_delay.as_millis().min(u32::MAX as u128) as u32,
            config.reconnect_max_delay.as_millis().min(u32::MAX as u128) as u32,
        );
        builder
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                min.max(1),
                max.max(1),
                2,
            ))
            .with_connection_config(|c| {
                c.connection_timeout = config.connect_timeout;
                c.internal_command_timeout = config.command_timeout;
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(config.command_timeout),
                    interval: Duration::from_millis(500),
                };
                c.tcp.nodelay = Some(true);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = config.command_timeout;
            });
        let pool = builder.build_pool(config.pool_size).map_err(connect_err)?;
        pool.init().await.map_err(connect_err)?;
        Ok(Broker {
            pool,
            builder: std::sync::Arc::new(builder),
            prefix: config.key_prefix.clone(),
            scripts: std::sync::Arc::new(Scripts {
                enqueue: script(scripts::ENQUEUE),
                claim_ingest: script(scripts::CLAIM_INGEST),
                promote_ingested: script(scripts::PROMOTE_INGESTED),
                dispatch: script(scripts::DISPATCH),
                fetch: script(scripts::FETCH),
                complete: script(scripts::COMPLETE),
                retry: script(scripts::RETRY),
                release: script(scripts::RELEASE),
                heartbeat: script(scripts::HEARTBEAT),
                reap: script(scripts::REAP),
                missing: script(scripts::MISSING),
                cancel: script(scripts::CANCEL),
                publish_many: script(scripts::PUBLISH_MANY),
            }),
        })
    }

    /// A pub/sub client with the pool's settings (one per process, for wake-ups).
    pub fn subscriber(&self) -> Result<fred::clients::SubscriberClient> {
        Ok(self.builder.build_subscriber_client()?)
    }

    pub async fn quit(&self) {
        let _ = self.pool.quit().await;
    }

    pub async fn ping(&self) -> Result {
        let _: String = self.pool.ping(None).await?;
        Ok(())
    }

    fn key(&self, queue: &str, what: &str) -> String {
        format!("{}:{{{queue}}}:{what}", self.prefix)
    }

    fn job_prefix(&self, queue: &str) -> String {
        self.key(queue, "job:")
    }

    pub fn job_key(&self, queue: &str, id: Uuid) -> String {
        format!("{}{id}", self.job_prefix(queue))
    }

    /// The wake-up channel of a queue: scripts publish when its ready set or ingest
    /// list goes from empty to non-empty.
    pub fn wake_channel(&self, queue: &str) -> String {
        self.key(queue, "wake")
    }

    /// The queue named in a wake-up channel, if it is one of ours.
    pub fn queue_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(&self.prefix)?
            .strip_prefix(":{")?
            .strip_suffix("}:wake")
    }

    async fn eval(&self, script: &Script, keys: Vec<String>, args: Vec<String>) -> Result<Value> {
        Ok(script
            .evalsha_with_reload(self.pool.next(), keys, args)
            .await?)
    }

    /// Enqueues the way a Redis-only producer does (the documented script).
    /// Returns the new job's id.
    pub async fn enqueue(&self, job: &RedisEnqueue) -> Result<Uuid> {
        let id = Uuid::now_v7();
        self.eval(
            &self.scripts.enqueue,
            vec![self.job_key(&job.queue, id), self.key(&job.queue, "ingest")],
            vec![
                id.to_string(),
                job.kind.clone(),
                job.payload.clone(),
                job.priority.to_string(),
                job.max_attempts.to_string(),
                job.delay_ms.to_string(),
            ],
        )
        .await?;
        Ok(id)
    }

    /// The name of a queue's ingest list (for messages about it).
    pub fn ingest_key(&self, queue: &str) -> String {
        self.key(queue, "ingest")
    }

    /// The name of a job key made from an ingest entry as read (for messages).
    pub fn ingest_entry_key(&self, queue: &str, entry: &[u8]) -> String {
        format!(
            "{}{}",
            self.job_prefix(queue),
            crate::pgtext::escape(entry, 100)
        )
    }

    pub async fn claim_ingest(&self, queue: &str, n: usize) -> Result<Claimed> {
        let reply = self
            .eval(
                &self.scripts.claim_ingest,
                vec![self.key(queue, "ingest"), self.key(queue, "ingesting")],
                vec![n.to_string(), self.job_prefix(queue)],
            )
            .await?;
        let bad = |detail: &str| Error::Reply {
            script: "claim_ingest",
            detail: detail.to_owned(),
        };
        let items = match reply {
            Value::Array(items) => items,
            Value::Null => return Ok(Claimed::default()),
            other => return Err(bad(&format!("expected an array, got {other:?}"))),
        };
        let mut items = items.into_iter().map(value_bytes);
        let mut out = Claimed::default();
        while let Some(entry) = items.next() {
            let entry = entry.ok_or_else(|| bad("an entry without an id"))?;
            let key_type = items.next().flatten().ok_or_else(|| bad("no key type"))?;
            let key_type = String::from_utf8_lossy(&key_type).into_owned();
            if entry == b"!" {
                out.bad_list = Some(key_type);
                break;
            }
            let mut fields: [Option<Vec<u8>>; 6] = Default::default();
            for f in &mut fields {
                *f = items.next().ok_or_else(|| bad("a short entry"))?;
            }
            out.entries.push(Ingest {
                entry,
                key_type,
                fields,
            });
        }
        Ok(out)
    }

    /// `jobs`: (ingest entry as claimed, resolved max_attempts, refused).
    pub async fn promote_ingested(&self, queue: &str, jobs: &[(&[u8], i32, bool)]) -> Result {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut args: Vec<Value> = vec![
            self.job_prefix(queue).into(),
            self.wake_channel(queue).into(),
        ];
        for (entry, max_attempts, refused) in jobs {
            args.push(Value::Bytes(entry.to_vec().into()));
            args.push(max_attempts.to_string().into());
            args.push(if *refused { "1" } else { "0" }.into());
        }
        self.scripts
            .promote_ingested
            .evalsha_with_reload::<Value, _, _>(
                self.pool.next(),
                vec![
                    self.key(queue, "ingesting"),
                    self.key(queue, "ready"),
                    self.key(queue, "delayed"),
                ],
                args,
            )
            .await?;
        Ok(())
    }

    /// Puts ledger jobs of one queue into Redis. Returns how many were new there.
    pub async fn dispatch(&self, queue: &str, jobs: &[Dispatch<'_>]) -> Result<i64> {
        let mut args = Vec::with_capacity(2 + jobs.len() * 8);
        args.push(self.job_prefix(queue));
        args.push(self.wake_channel(queue));
        for j in jobs {
            args.push(j.id.to_string());
            args.push(j.kind.to_owned());
            args.push(j.payload.to_owned());
            args.push(j.priority.to_string());
            args.push(j.attempts.to_string());
            args.push(j.max_attempts.to_string());
            args.push(j.run_ms.to_string());
            args.push(if j.revive { "1" } else { "0" }.to_owned());
        }
        let reply = self
            .eval(
                &self.scripts.dispatch,
                vec![self.key(queue, "ready"), self.key(queue, "delayed")],
                args,
            )
            .await?;
        reply.as_i64().ok_or_else(|| Error::Reply {
            script: "dispatch",
            detail: format!("{reply:?}"),
        })
    }

    /// Leases up to `n` jobs of `queue` for `lease`, with no flow limits.
    pub async fn fetch(&self, queue: &str, n: usize, lease: Duration) -> Result<Fetched> {
        self.fetch_limited(queue, n, lease, "").await
    }

    /// Leases up to `n` jobs of `queue` for `lease` within `limits` (the JSON of
    /// [`Limits::to_arg`], "" for none). A paused queue gives nothing.
    pub async fn fetch_limited(
        &self,
        queue: &str,
        n: usize,
        lease: Duration,
        limits: &str,
    ) -> Result<Fetched> {
        let reply = self
            .eval(
                &self.scripts.fetch,
                vec![
                    self.key(queue, "ready"),
                    self.key(queue, "delayed"),
                    self.key(queue, "leases"),
                    self.key(queue, "fence"),
                    self.key(queue, "paused"),
                ],
                vec![
                    n.to_string(),
                    lease.as_millis().to_string(),
                    self.job_prefix(queue),
                    limits.to_owned(),
                ],
            )
            .await?;
        let flat = strings(reply, "fetch")?;
        let Some((next, rest)) = flat.split_first() else {
            return Err(Error::Reply {
                script: "fetch",
                detail: "empty reply".into(),
            });
        };
        let next_due_ms = next
            .parse::<f64>()
            .ok()
            .filter(|v| *v >= 0.0)
            .map(|v| v as i64);
        let mut jobs = Vec::with_capacity(rest.len() / 7);
        for c in rest.chunks_exact(7) {
            let (Ok(id), Ok(token)) = (c[0].parse(), c[5].parse()) else {
                return Err(Error::Reply {
                    script: "fetch",
                    detail: format!("bad job entry {c:?}"),
                });
            };
            jobs.push(Leased {
                id,
                queue: queue.to_owned(),
                kind: c[1].clone(),
                payload: c[2].clone(),
                attempt: c[3].parse().unwrap_or(1),
                max_attempts: c[4].parse().unwrap_or(1),
                token,
                ready_ms: c[6]
                    .parse()
                    .unwrap_or_else(|_| chrono::Utc::now().timestamp_millis()),
            });
        }
        Ok(Fetched { jobs, next_due_ms })
    }

    fn lease_args(&self, job: &Leased) -> Vec<String> {
        vec![
            self.job_key(&job.queue, job.id),
            job.id.to_string(),
            job.token.to_string(),
        ]
    }

    async fn fenced(&self, script: &Script, keys: Vec<String>, args: Vec<String>) -> Result<bool> {
        Ok(self.eval(script, keys, args).await?.as_i64() == Some(1))
    }

    /// Ends the job in Redis. False when this worker no longer holds the lease: its
    /// outcome must then be discarded.
    pub async fn complete(&self, job: &Leased) -> Result<bool> {
        let accepted = self.complete_many(&job.queue, &[job]).await?;
        Ok(accepted.first().copied().unwrap_or(false))
    }

    /// [`Broker::complete`] for many jobs of one queue in one round trip.
    pub async fn complete_many(&self, queue: &str, jobs: &[&Leased]) -> Result<Vec<bool>> {
        let mut args = Vec::with_capacity(1 + jobs.len() * 2);
        args.push(self.job_prefix(queue));
        for job in jobs {
            args.push(job.id.to_string());
            args.push(job.token.to_string());
        }
        let reply = self
            .eval(
                &self.scripts.complete,
                vec![self.key(queue, "leases")],
                args,
            )
            .await?;
        let flags = strings(reply, "complete")?;
        if flags.len() != jobs.len() {
            return Err(Error::Reply {
                script: "complete",
                detail: format!("{} answers for {} jobs", flags.len(), jobs.len()),
            });
        }
        Ok(flags.iter().map(|f| f == "1").collect())
    }

    pub async fn retry(&self, job: &Leased, delay: Duration) -> Result<bool> {
        let mut args = self.lease_args(job);
        args.push(delay.as_millis().to_string());
        args.push(self.key(&job.queue, ""));
        self.fenced(
            &self.scripts.retry,
            vec![
                self.key(&job.queue, "leases"),
                self.key(&job.queue, "delayed"),
            ],
            args,
        )
        .await
    }

    pub async fn release(&self, job: &Leased) -> Result<bool> {
        let mut args = self.lease_args(job);
        args.push(self.wake_channel(&job.queue));
        args.push(self.key(&job.queue, ""));
        self.fenced(
            &self.scripts.release,
            vec![
                self.key(&job.queue, "leases"),
                self.key(&job.queue, "ready"),
            ],
            args,
        )
        .await
    }

    /// Extends the lease; false when it is no longer this attempt's. See
    /// [`Broker::heartbeat_checked`] to also learn of a cancellation.
    pub async fn heartbeat(&self, job: &Leased, lease: Duration) -> Result<bool> {
        Ok(self.heartbeat_checked(job, lease).await? != Heartbeat::Lost)
    }

    /// Returns expired leases of `queue` and stale ingest claims.
    pub async fn reap(&self, queue: &str, ingest_timeout: Duration) -> Result<Vec<Reaped>> {
        let reply = self
            .eval(
                &self.scripts.reap,
                vec![
                    self.key(queue, "leases"),
                    self.key(queue, "ready"),
                    self.key(queue, "ingest"),
                    self.key(queue, "ingesting"),
                ],
                vec![
                    self.job_prefix(queue),
                    self.wake_channel(queue),
                    ingest_timeout.as_millis().to_string(),
                ],
            )
            .await?;
        let flat = strings(reply, "reap")?;
        Ok(flat
            .chunks_exact(4)
            .filter_map(|c| {
                Some(Reaped {
                    id: c[0].parse().ok()?,
                    dead: c[1] == "dead",
                    cancelled: c[1] == "cancelled",
                    attempts: c[2].parse().unwrap_or(0),
                    token: c[3].parse().unwrap_or(0),
                })
            })
            .collect())
    }

    /// Which of `ids` (all of `queue`) Redis holds no copy of.
    pub async fn missing(&self, queue: &str, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        let mut args = vec![self.job_prefix(queue)];
        args.extend(ids.iter().map(Uuid::to_string));
        let reply = self.eval(&self.scripts.missing, vec![], args).await?;
        Ok(strings(reply, "missing")?
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect())
    }

    /// The epoch marker tells a seeded Redis from one that restarted empty. Returns
    /// the current epoch, creating one (and reporting `true`) when none was there.
    pub async fn epoch(&self) -> Result<(String, bool)> {
        let key = format!("{}:epoch", self.prefix);
        let fresh = Uuid::now_v7().to_string();
        let set: Option<String> = self
            .pool
            .set(&key, fresh.as_str(), None, Some(SetOptions::NX), false)
            .await?;
        if set.is_some() {
            return Ok((fresh, true));
        }
        let current: Option<String> = self.pool.get(&key).await?;
        Ok((current.unwrap_or(fresh), false))
    }

    /// Deletes every key under this broker's prefix (the benchmark's clean-up).
    /// Uses SCAN, so it never blocks the server.
    pub async fn delete_prefix(&self) -> Result<u64> {
        use fred::types::scan::Scanner;
        use futures::TryStreamExt;
        let pattern = format!("{}:*", self.prefix);
        let mut deleted = 0;
        let mut pages = self.pool.next().scan(pattern, Some(1000), None);
        while let Some(mut page) = pages.try_next().await? {
            if let Some(keys) = page.take_results()
                && !keys.is_empty()
            {
                deleted += self.pool.del::<u64, _>(keys).await?;
            }
        }
        Ok(deleted)
    }

    /// Jobs waiting in each structure of a queue: (ready, delayed, leased, ingest).
    pub async fn depth(&self, queue: &str) -> Result<(i64, i64, i64, i64)> {
        let ready: i64 = self.pool.zcard(self.key(queue, "ready")).await?;
        let delayed: i64 = self.pool.zcard(self.key(queue, "delayed")).await?;
        let leased: i64 = self.pool.zcard(self.key(queue, "leases")).await?;
        let ingest: i64 = self.pool.llen(self.key(queue, "ingest")).await?;
        Ok((ready, delayed, leased, ingest))
    }
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

impl Broker {
    /// The channel every daemon publishes job events on: `prefix:events`.
    pub fn events_channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// PUBLISHes each event on [`Broker::events_channel`], in order, pipelined in
    /// one round trip.
    pub async fn publish_events(&self, events: &[String]) -> Result {
        if events.is_empty() {
            return Ok(());
        }
        // One script call publishes the whole batch: one command for the client
        // and for Redis to parse, instead of one PUBLISH each.
        let mut args = Vec::with_capacity(events.len() + 1);
        args.push(self.events_channel());
        args.extend(events.iter().cloned());
        self.eval(&self.scripts.publish_many, vec![], args).await?;
        Ok(())
    }

    /// Sizes of a queue's structures and the age of its ready head, in one round
    /// trip.
    pub async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        let pipeline = self.pool.next().pipeline();
        let _: () = pipeline.zcard(self.key(queue, "ready")).await?;
        let _: () = pipeline.zcard(self.key(queue, "delayed")).await?;
        let _: () = pipeline.zcard(self.key(queue, "leases")).await?;
        let _: () = pipeline
            .zrange(self.key(queue, "ready"), 0, 0, None, false, None, true)
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

    /// The pool's clients and their buffered commands.
    pub fn pool_stats(&self) -> PoolStats {
        use fred::interfaces::MetricsInterface;
        let clients = self.pool.clients();
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

/// One item of a script's reply as bytes: `None` for nil (a missing field).
fn value_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::Null => None,
        Value::Bytes(b) => Some(b.to_vec()),
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Integer(i) => Some(i.to_string().into_bytes()),
        Value::Double(d) => Some(d.to_string().into_bytes()),
        other => Some(format!("{other:?}").into_bytes()),
    }
}

/// Reads a script's flat array reply as strings (numbers included).
fn strings(reply: Value, script: &'static str) -> Result<Vec<String>> {
    match reply {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::Integer(i) => Ok(i.to_string()),
                Value::Double(d) => Ok(d.to_string()),
                other => other.into_string().ok_or_else(|| Error::Reply {
                    script,
                    detail: "a non-string item".into(),
                }),
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        other => Err(Error::Reply {
            script,
            detail: format!("expected an array, got {other:?}"),
        }),
    }
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
