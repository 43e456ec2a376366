//! Every Redis key and channel name the daemon uses, built in one place.
//!
//! Keys of queue `q` share the hash tag `{q}` (`prefix:{q}:…`), so every key one
//! script touches lies in one Redis Cluster slot, and a queue lives on one
//! cluster master. Callers pass every key they can name in KEYS; the scripts that
//! pop job ids build those jobs' keys from [`QueueKeys::base`] or
//! [`QueueKeys::job_prefix`], passed in KEYS too (see `scripts`). A job hash
//! holds kind, payload, attempts, max_attempts, token, run_ms, …; the FETCH
//! script also keeps `parked_kinds` and `rate:<kind>[:<value>]`. Outside the
//! queues there are only `prefix:workers` (one hash, routed by its own slot) and
//! the `prefix:events` channel (pub/sub reaches every node of a cluster).
//!
//! **Invariant:** no other file formats a key or channel name by hand. Checked by
//! `tests/integration/invariants.rs::only_broker_keys_builds_a_redis_key`.

use uuid::Uuid;

/// The prefix-wide keys and a factory for [`QueueKeys`].
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// Every key of one queue. Cheap to build: one string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    /// `prefix:{queue}:`, the start of every key of the queue.
    base: String,
}

/// The keys arq's client writes and reads, which the arq bridge serves. They
/// have no hash tag and no prefix of ours: arq names them, so arq queues need a
/// standalone Redis (or a single-slot setup), never Redis Cluster.
pub mod arq {
    /// The zset of pending jobs' ids scored by due time (Unix ms): `arq:queue`
    /// by default, or any name the producer gave as `_queue_name`.
    pub fn job(id: &str) -> String {
        format!("arq:job:{id}")
    }

    /// The serialized result record of a finished job.
    pub fn result(id: &str) -> String {
        format!("arq:result:{id}")
    }

    /// Set while the job runs (arq's `Job.status()` then says `in_progress`).
    pub fn in_progress(id: &str) -> String {
        format!("arq:in-progress:{id}")
    }

    /// arq's try counter, deleted with the job.
    pub fn retry(id: &str) -> String {
        format!("arq:retry:{id}")
    }

    /// The zset of job ids whose abort was asked for (`Job.abort()`).
    pub const ABORT: &str = "arq:abort";

    /// The key prefixes above, for the scripts that build keys from an id.
    pub const JOB_PREFIX: &str = "arq:job:";
}

/// Which per-queue channel a pub/sub message came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueChannel {
    /// [`QueueKeys::wake`]: jobs became ready.
    Wake,
    /// [`QueueKeys::cancel`]: a running job was cancelled (the message is its id).
    Cancel,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The keys of `queue`.
    pub fn queue(&self, queue: &str) -> QueueKeys {
        QueueKeys {
            base: format!("{}:{{{queue}}}:", self.prefix),
        }
    }

    /// `prefix:workers`: the registry hash of live daemons.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// `prefix:events`: the channel every daemon publishes job events on.
    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// `prefix:*`: a SCAN pattern matching every key under the prefix.
    pub fn everything(&self) -> String {
        format!("{}:*", self.prefix)
    }

    /// The queue and kind of a per-queue channel, if `channel` is one of ours.
    pub fn queue_of_channel<'a>(&self, channel: &'a str) -> Option<(&'a str, QueueChannel)> {
        let rest = channel.strip_prefix(&self.prefix)?.strip_prefix(":{")?;
        if let Some(queue) = rest.strip_suffix("}:wake") {
            Some((queue, QueueChannel::Wake))
        } else {
            Some((rest.strip_suffix("}:cancel")?, QueueChannel::Cancel))
        }
    }
}

impl QueueKeys {
    /// `prefix:{queue}:`: the scripts build kind- and id-specific keys from it.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn key(&self, what: &str) -> String {
        format!("{}{what}", self.base)
    }

    /// Zset of ready job ids, by priority then ready time.
    pub fn ready(&self) -> String {
        self.key("ready")
    }

    /// Zset of delayed job ids, by due time (Unix ms).
    pub fn delayed(&self) -> String {
        self.key("delayed")
    }

    /// Zset of leased job ids, by lease deadline (Unix ms).
    pub fn leases(&self) -> String {
        self.key("leases")
    }

    /// Set once the queue's Redis node has been seeded from the ledger: one per
    /// queue, so a cluster master that lost its data (or a replica promoted
    /// before it had the marker) is noticed for the queues it holds.
    pub fn epoch(&self) -> String {
        self.key("epoch")
    }

    /// The fencing-token counter.
    pub fn fence(&self) -> String {
        self.key("fence")
    }

    /// Set while the queue is paused.
    pub fn paused(&self) -> String {
        self.key("paused")
    }

    /// List of producer-enqueued ids waiting for the ledger.
    pub fn ingest(&self) -> String {
        self.key("ingest")
    }

    /// Zset of ingest entries claimed for the ledger, by claim time.
    pub fn ingesting(&self) -> String {
        self.key("ingesting")
    }

    /// `job:`, the start of every job hash key of the queue.
    pub fn job_prefix(&self) -> String {
        self.key("job:")
    }

    /// The hash of job `id`.
    pub fn job(&self, id: Uuid) -> String {
        format!("{}job:{id}", self.base)
    }

    /// Set of leases counted against `kind`'s concurrency.
    pub fn inflight(&self, kind: &str) -> String {
        format!("{}inflight:{kind}", self.base)
    }

    /// Zset of `kind`'s jobs waiting for a concurrency slot.
    pub fn parked(&self, kind: &str) -> String {
        format!("{}parked:{kind}", self.base)
    }

    /// The queue-wide rate window.
    pub fn rate(&self) -> String {
        self.key("rate")
    }

    /// The tombstone a job leaves for a minute after it ended.
    pub fn ended(&self, id: Uuid) -> String {
        format!("{}ended:{id}", self.base)
    }

    /// The channel the scripts publish on when jobs become ready.
    pub fn wake(&self) -> String {
        self.key("wake")
    }

    /// The channel a running job's cancellation is published on.
    pub fn cancel(&self) -> String {
        self.key("cancel")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_s_keys_share_its_hash_tag() {
        let k = Keys::new("jr").queue("mail");
        let id = Uuid::nil();
        assert_eq!(k.ready(), "jr:{mail}:ready");
        assert_eq!(k.job(id), format!("jr:{{mail}}:job:{id}"));
        assert_eq!(k.job(id), format!("{}{id}", k.job_prefix()));
        assert_eq!(k.parked("sms"), "jr:{mail}:parked:sms");
        assert_eq!(k.ended(id), format!("jr:{{mail}}:ended:{id}"));
        assert_eq!(k.base(), "jr:{mail}:");
    }

    #[test]
    fn channels_name_their_queue_and_others_are_not_ours() {
        let keys = Keys::new("jr");
        let q = keys.queue("a:b");
        assert_eq!(
            keys.queue_of_channel(&q.wake()),
            Some(("a:b", QueueChannel::Wake))
        );
        assert_eq!(
            keys.queue_of_channel(&q.cancel()),
            Some(("a:b", QueueChannel::Cancel))
        );
        assert_eq!(keys.queue_of_channel(&keys.events()), None);
        assert_eq!(keys.queue_of_channel("other:{a}:wake"), None);
    }
}
