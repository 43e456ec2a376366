//! The arq side of Redis: the queue zsets, job bodies, result and in-progress
//! keys that arq's client writes and reads (`keys::arq` names them). The arq
//! bridge (`crate::arq`) calls these; nothing here knows the wire format.
//!
//! A job jobrunner has taken stays in its arq queue so that `Job.status()` keeps
//! saying `queued`, but its score becomes negative (`-score - 1`): due-job reads
//! look at scores from 0 up, so a taken job is never read as due again, and
//! `Job.status()` reads any score at or below now as `queued`. The scripts touch
//! keys they build from ids, which Redis Cluster forbids; the bridge refuses a
//! cluster config.

use fred::prelude::*;
use fred::types::scripts::Script;

use super::keys::arq as k;
use super::{Broker, Error, Result, value_bytes};

/// A due job read from an arq queue.
#[derive(Debug, Clone)]
pub struct ArqDue {
    /// The arq job id (the zset member).
    pub id: String,
    /// Its score (Unix ms it was due at).
    pub score: f64,
    /// The serialized body from `arq:job:<id>`, `None` when it is gone (expired).
    pub body: Option<Vec<u8>>,
}

/// KEYS: the arq queue. ARGV: now (ms), limit, job key prefix.
/// Returns flat: id, score, body (false when missing).
const DUE: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], 0, ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i = 1, #ids, 2 do
  out[#out + 1] = ids[i]
  out[#out + 1] = ids[i + 1]
  out[#out + 1] = redis.call('GET', ARGV[3] .. ids[i])
end
return out
"#;

/// KEYS: the arq queue. ARGV: id, score, id, score, … Each job still at the
/// score it was read with is marked taken (`-score - 1`). Returns how many.
const TAKE: &str = r#"
local n = 0
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    redis.call('ZADD', KEYS[1], 'XX', -tonumber(score) - 1, ARGV[i])
    n = n + 1
  end
end
return n
"#;

/// KEYS: the arq queue, result, in-progress, job, retry keys, the abort zset.
/// ARGV: id, result record (empty: keep none), result TTL in ms (0: forever).
/// Ends a taken job as arq's worker does; returns 0 if it had ended already.
const FINISH: &str = r#"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if ARGV[2] ~= '' then
  if tonumber(ARGV[3]) > 0 then
    redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  else
    redis.call('SET', KEYS[2], ARGV[2])
  end
end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"#;

/// KEYS: in-progress keys. ARGV: TTL in ms.
const IN_PROGRESS: &str = r#"
for i = 1, #KEYS do redis.call('SET', KEYS[i], '1', 'PX', ARGV[1]) end
return #KEYS
"#;

pub(super) struct ArqScripts {
    due: Script,
    take: Script,
    finish: Script,
    in_progress: Script,
}

impl ArqScripts {
    pub(super) fn new() -> ArqScripts {
        ArqScripts {
            due: Script::from_lua(DUE),
            take: Script::from_lua(TAKE),
            finish: Script::from_lua(FINISH),
            in_progress: Script::from_lua(IN_PROGRESS),
        }
    }
}

impl Broker {
    async fn eval_values(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value> {
        let keys = keys.into_iter().map(Key::from).collect();
        self.route.eval(script, keys, args).await
    }

    /// Up to `limit` jobs of arq queue `queue` due at `now_ms`, with their bodies.
    pub async fn arq_due(&self, queue: &str, now_ms: i64, limit: usize) -> Result<Vec<ArqDue>> {
        let reply = self
            .eval_values(
                &self.arq.due,
                vec![queue.to_owned()],
                vec![now_ms.into(), (limit as i64).into(), k::JOB_PREFIX.into()],
            )
            .await?;
        let Value::Array(items) = reply else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(items.len() / 3);
        let mut items = items.into_iter();
        while let (Some(id), Some(score), Some(body)) = (items.next(), items.next(), items.next()) {
            let id = value_bytes(id)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let score = value_bytes(score)
                .and_then(|b| String::from_utf8_lossy(&b).parse::<f64>().ok())
                .ok_or_else(|| Error::Reply {
                    script: "ARQ_DUE",
                    detail: format!("a score that is no number for arq job {id}"),
                })?;
            let body = match body {
                Value::Boolean(false) | Value::Null => None,
                other => value_bytes(other),
            };
            out.push(ArqDue { id, score, body });
        }
        Ok(out)
    }

    /// Marks jobs read by [`Broker::arq_due`] as taken by jobrunner, each only if
    /// its score is unchanged. Returns how many were marked.
    pub async fn arq_take(&self, queue: &str, jobs: &[(String, f64)]) -> Result<u64> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let mut args: Vec<Value> = Vec::with_capacity(jobs.len() * 2);
        for (id, score) in jobs {
            args.push(id.as_str().into());
            args.push(score.to_string().into());
        }
        let reply = self
            .eval_values(&self.arq.take, vec![queue.to_owned()], args)
            .await?;
        Ok(reply.as_u64().unwrap_or(0))
    }

    /// Up to `limit` of the jobs jobrunner has taken from arq queue `queue`,
    /// oldest first.
    pub async fn arq_taken(&self, queue: &str, limit: usize) -> Result<Vec<String>> {
        let ids: Vec<String> = self
            .at(queue)?
            .zrevrangebyscore(queue, "(0", "-inf", false, Some((0, limit as i64)))
            .await?;
        Ok(ids)
    }

    /// The serialized body of arq job `id`, if it is still there.
    pub async fn arq_body(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let body: Option<Vec<u8>> = self.at(&k::job(id))?.get(k::job(id)).await?;
        Ok(body)
    }

    /// Whether arq job `id` is one jobrunner took from `queue`.
    pub async fn arq_is_taken(&self, queue: &str, id: &str) -> Result<bool> {
        let score: Option<f64> = self.at(queue)?.zscore(queue, id).await?;
        Ok(score.is_some_and(|s| s < 0.0))
    }

    /// The ids in arq's abort zset.
    pub async fn arq_aborts(&self) -> Result<Vec<String>> {
        let ids: Vec<String> = self
            .at(k::ABORT)?
            .zrange(k::ABORT, 0, -1, None, false, None, false)
            .await?;
        Ok(ids)
    }

    /// Marks running arq jobs `in_progress` for `ttl_ms` (renewed while they run).
    pub async fn arq_in_progress(&self, ids: &[String], ttl_ms: u64) -> Result {
        if ids.is_empty() {
            return Ok(());
        }
        let keys = ids.iter().map(|id| k::in_progress(id)).collect();
        self.eval_values(&self.arq.in_progress, keys, vec![(ttl_ms as i64).into()])
            .await?;
        Ok(())
    }

    /// Ends taken arq job `id` of `queue`: writes its result record (when
    /// `record` is given) with `ttl_ms` (0 keeps it), drops the in-progress,
    /// body, try and abort entries and removes it from the queue. Returns false
    /// if it had ended already.
    pub async fn arq_finish(
        &self,
        queue: &str,
        id: &str,
        record: Option<Vec<u8>>,
        ttl_ms: u64,
    ) -> Result<bool> {
        let reply = self
            .eval_values(
                &self.arq.finish,
                vec![
                    queue.to_owned(),
                    k::result(id),
                    k::in_progress(id),
                    k::job(id),
                    k::retry(id),
                    k::ABORT.to_owned(),
                ],
                vec![
                    id.into(),
                    Value::Bytes(record.unwrap_or_default().into()),
                    (ttl_ms as i64).into(),
                ],
            )
            .await?;
        Ok(reply.as_u64() == Some(1))
    }
}
