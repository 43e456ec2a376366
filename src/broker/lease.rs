//! The life of a lease: FETCH hands out jobs with a fencing token, and every later
//! call (complete, retry, release, heartbeat) is accepted only from the attempt
//! that holds the token. The reaper returns leases whose holder went silent.

use std::time::Duration;

use fred::types::scripts::Script;
use uuid::Uuid;

use super::{Broker, Error, QueueKeys, Result, strings};

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
    /// Ready entries that had no job hash, as read (any bytes): FETCH dropped
    /// them. A ledger job among them comes back through the orphan sweep; the
    /// caller reports them.
    pub dropped: Vec<Vec<u8>>,
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

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Lease extended.
    Held,
    /// Lease extended, but the job was cancelled: stop the handler.
    Cancelled,
    /// Another attempt owns the job now.
    Lost,
}

impl Broker {
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
        let k = self.queue_keys(queue);
        let reply = self
            .eval(
                &self.scripts.fetch,
                vec![
                    k.ready(),
                    k.delayed(),
                    k.leases(),
                    k.fence(),
                    k.paused(),
                    k.base().to_owned(),
                ],
                vec![
                    n.to_string(),
                    lease.as_millis().to_string(),
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
        let dropped_count = rest
            .first()
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n < rest.len())
            .ok_or_else(|| Error::Reply {
                script: "fetch",
                detail: format!("bad dropped count {:?}", rest.first()),
            })?;
        let (dropped, rest) = rest[1..].split_at(dropped_count);
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
        Ok(Fetched {
            jobs,
            next_due_ms,
            dropped: dropped.iter().map(|hex| from_hex(hex)).collect(),
        })
    }

    fn lease_args(&self, job: &Leased) -> Vec<String> {
        vec![job.id.to_string(), job.token.to_string()]
    }

    /// The keys a lease ends through: the job's hash and tombstone, and its
    /// kind's concurrency keys (a slot it holds is given back).
    fn ending_keys(k: &QueueKeys, job: &Leased) -> [String; 4] {
        [
            k.job(job.id),
            k.ended(job.id),
            k.inflight(&job.kind),
            k.parked(&job.kind),
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
        let k = self.queue_keys(queue);
        let mut keys = Vec::with_capacity(2 + jobs.len() * 4);
        keys.push(k.leases());
        keys.push(k.ready());
        let mut args = Vec::with_capacity(1 + jobs.len() * 2);
        args.push(k.wake());
        for job in jobs {
            keys.extend(Self::ending_keys(&k, job));
            args.push(job.id.to_string());
            args.push(job.token.to_string());
        }
        let reply = self.eval(&self.scripts.complete, keys, args).await?;
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
        let k = self.queue_keys(&job.queue);
        let mut args = self.lease_args(job);
        args.push(delay.as_millis().to_string());
        args.push(k.wake());
        let mut keys = vec![k.leases(), k.delayed()];
        keys.extend(Self::ending_keys(&k, job));
        keys.push(k.ready());
        self.fenced(&self.scripts.retry, keys, args).await
    }

    pub async fn release(&self, job: &Leased) -> Result<bool> {
        let k = self.queue_keys(&job.queue);
        let mut args = self.lease_args(job);
        args.push(k.wake());
        let mut keys = vec![k.leases(), k.ready()];
        keys.extend(Self::ending_keys(&k, job));
        self.fenced(&self.scripts.release, keys, args).await
    }

    /// Extends the lease; false when it is no longer this attempt's. See
    /// [`Broker::heartbeat_checked`] to also learn of a cancellation.
    pub async fn heartbeat(&self, job: &Leased, lease: Duration) -> Result<bool> {
        Ok(self.heartbeat_checked(job, lease).await? != Heartbeat::Lost)
    }

    /// Returns expired leases of `queue` and stale ingest claims.
    pub async fn reap(&self, queue: &str, ingest_timeout: Duration) -> Result<Vec<Reaped>> {
        let k = self.queue_keys(queue);
        let reply = self
            .eval(
                &self.scripts.reap,
                vec![
                    k.leases(),
                    k.ready(),
                    k.ingest(),
                    k.ingesting(),
                    k.base().to_owned(),
                ],
                vec![k.wake(), ingest_timeout.as_millis().to_string()],
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

    /// Extends a lease and reports a cancel mark on the job.
    pub async fn heartbeat_checked(&self, job: &Leased, lease: Duration) -> Result<Heartbeat> {
        let mut args = self.lease_args(job);
        args.push(lease.as_millis().to_string());
        let k = self.queue_keys(&job.queue);
        let reply = self
            .eval(
                &self.scripts.heartbeat,
                vec![k.leases(), k.job(job.id)],
                args,
            )
            .await?;
        Ok(match reply.as_i64() {
            Some(1) => Heartbeat::Held,
            Some(2) => Heartbeat::Cancelled,
            _ => Heartbeat::Lost,
        })
    }
}

/// The bytes of FETCH's hex text (a pair that is not hex is skipped).
fn from_hex(hex: &str) -> Vec<u8> {
    hex.as_bytes()
        .chunks_exact(2)
        .filter_map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::from_hex;

    #[test]
    fn fetch_hex_gives_back_any_bytes() {
        assert_eq!(from_hex("ff006964"), vec![0xff, 0x00, b'i', b'd']);
        assert_eq!(from_hex(""), Vec::<u8>::new());
    }
}
