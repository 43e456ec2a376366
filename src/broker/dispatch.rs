//! The ways into Redis: a producer's enqueue and the ingest claims that carry it
//! to the ledger, the dispatch of ledger jobs (the outbox), and the checks that
//! let a job be dispatched again (missing copies, leftovers of a retried job).

use fred::prelude::*;
use uuid::Uuid;

use super::{Broker, Error, Result, strings, value_bytes};

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

impl Broker {
    /// Enqueues the way a Redis-only producer does (the documented script).
    /// Returns the new job's id.
    pub async fn enqueue(&self, job: &RedisEnqueue) -> Result<Uuid> {
        let id = Uuid::now_v7();
        self.enqueue_with_id(job, id).await?;
        Ok(id)
    }

    /// Enqueues with an id the caller chose, the way a producer may. Returns
    /// false when a job with that id is already waiting in Redis (nothing is
    /// changed then), so a repeated call is harmless.
    pub async fn enqueue_with_id(&self, job: &RedisEnqueue, id: Uuid) -> Result<bool> {
        let k = self.queue_keys(&job.queue);
        self.eval(
            &self.scripts.enqueue,
            vec![k.job(id), k.ingest()],
            vec![
                id.to_string(),
                job.kind.clone(),
                job.payload.clone(),
                job.priority.to_string(),
                job.max_attempts.to_string(),
                job.delay_ms.to_string(),
            ],
        )
        .await
        .map(|reply| reply.as_u64() == Some(1))
    }

    pub async fn claim_ingest(&self, queue: &str, n: usize) -> Result<Claimed> {
        let k = self.queue_keys(queue);
        let reply = self
            .eval(
                &self.scripts.claim_ingest,
                vec![k.ingest(), k.ingesting(), k.job_prefix()],
                vec![n.to_string()],
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
        let k = self.queue_keys(queue);
        if jobs.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<Key> = vec![k.ingesting().into(), k.ready().into(), k.delayed().into()];
        let mut args: Vec<Value> = vec![k.wake().into()];
        for (entry, max_attempts, refused) in jobs {
            // An entry may be any bytes a producer wrote, so its key is built as bytes.
            let mut key = k.job_prefix().into_bytes();
            key.extend_from_slice(entry);
            keys.push(Key::from(key.as_slice()));
            args.push(Value::Bytes(entry.to_vec().into()));
            args.push(max_attempts.to_string().into());
            args.push(if *refused { "1" } else { "0" }.into());
        }
        self.route
            .eval(&self.scripts.promote_ingested, keys, args)
            .await?;
        Ok(())
    }

    /// Puts ledger jobs of one queue into Redis. Returns how many were new there.
    pub async fn dispatch(&self, queue: &str, jobs: &[Dispatch<'_>]) -> Result<i64> {
        let k = self.queue_keys(queue);
        let mut keys = Vec::with_capacity(2 + jobs.len() * 2);
        keys.push(k.ready());
        keys.push(k.delayed());
        let mut args = Vec::with_capacity(1 + jobs.len() * 8);
        args.push(k.wake());
        for j in jobs {
            keys.push(k.job(j.id));
            keys.push(k.ended(j.id));
            args.push(j.id.to_string());
            args.push(j.kind.to_owned());
            args.push(j.payload.to_owned());
            args.push(j.priority.to_string());
            args.push(j.attempts.to_string());
            args.push(j.max_attempts.to_string());
            args.push(j.run_ms.to_string());
            args.push(if j.revive { "1" } else { "0" }.to_owned());
        }
        let reply = self.eval(&self.scripts.dispatch, keys, args).await?;
        reply.as_i64().ok_or_else(|| Error::Reply {
            script: "dispatch",
            detail: format!("{reply:?}"),
        })
    }

    /// Which of `ids` (all of `queue`) Redis holds no copy of.
    pub async fn missing(&self, queue: &str, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let k = self.queue_keys(queue);
        let keys = ids.iter().map(|id| k.job(*id)).collect();
        let args = ids.iter().map(Uuid::to_string).collect();
        let reply = self.eval(&self.scripts.missing, keys, args).await?;
        Ok(strings(reply, "missing")?
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect())
    }

    /// Makes way for a job to be dispatched again (`jobrunner retry`): deletes a
    /// hash the job left behind, unless the job is still in a queue structure. The
    /// dispatch script skips a job whose hash exists, so a leftover would leave the
    /// retried job waiting for ever. Call it while the ledger row is final: no
    /// dispatch can create the hash meanwhile.
    pub async fn clear_leftover(&self, queue: &str, id: Uuid) -> Result<Leftover> {
        let k = self.queue_keys(queue);
        let script = fred::types::scripts::Script::from_lua(CLEAR_LEFTOVER);
        let reply = self
            .eval(
                &script,
                vec![k.job(id), k.ready(), k.delayed(), k.leases(), k.ingesting()],
                vec![id.to_string()],
            )
            .await?;
        Ok(match reply.as_i64() {
            Some(0) => Leftover::None,
            Some(1) => Leftover::Cleared,
            _ => Leftover::InUse,
        })
    }
}
