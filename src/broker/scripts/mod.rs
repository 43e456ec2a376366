//! The Lua scripts: every multi-step Redis change is one of these, so it is atomic
//! and costs one round trip. One file per concept (`dispatch`, `lease`,
//! `control`); this one holds the helpers they share and puts a script together.
//!
//! Numbers handed to `redis.call` go through `s()`: Lua would print a large number
//! such as a fencing token with 14 significant digits and lose the rest.
//!
//! Keys of one queue share the hash tag `{queue}`, so every script runs in one
//! Redis Cluster slot. Every key a caller can name (a job's hash and tombstone,
//! its kind's `inflight:<kind>` and `parked:<kind>`) is passed in KEYS, which is
//! how Redis and fred route the call. A script that finds job ids only as it runs
//! (FETCH, REAP and CLAIM_INGEST pop them from a set or list) builds those keys
//! from a declared key of the queue, `prefix:{q}:` or `prefix:{q}:job:`, never
//! from ARGV: whatever it builds shares the tag, hence the slot, of its KEYS.
//! ARGV carries only values and channel names.

mod control;
mod dispatch;
mod lease;

pub use control::CANCEL;
pub use dispatch::{CLAIM_INGEST, DISPATCH, ENQUEUE, MISSING, PROMOTE_INGESTED};
pub use lease::{COMPLETE, FETCH, HEARTBEAT, REAP, RELEASE, RETRY};

/// Shared helpers prepended to every script.
const PRELUDE: &str = r#"
local function s(x) return string.format('%d', x) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Higher priority pops first; FIFO (by ready time) within one priority.
local function ready_score(priority, ms)
  return -(tonumber(priority) or 0) * 2199023255552 + (ms - 1735689600000)
end
local function wake(ready_key, channel)
  if redis.call('ZCARD', ready_key) > 0 then redis.call('PUBLISH', channel, 'ready') end
end
"#;

/// A job that ended leaves a tombstone for a minute (`ended` is its
/// `prefix:{q}:ended:<id>` key), so a late or repeated DISPATCH of it (a resent
/// command, an outbox row read before the ledger recorded the end) does not bring
/// it back. Not in the prelude: the documented ENQUEUE script must not change.
const TOMBSTONE: &str = r#"
local function tombstone(ended)
  redis.call('SET', ended, '1', 'PX', '60000')
end
"#;

/// Fencing check shared by ack, retry, release and heartbeat: the caller must hold
/// the current lease of the job with the same token.
const HOLDS_LEASE: &str = r#"
local function holds_lease(leases, key, id, token)
  return redis.call('HGET', key, 'token') == token and redis.call('ZSCORE', leases, id) ~= false
end
"#;

/// A lease counted against its kind's concurrency (`slot` set by FETCH) gives its
/// slot back: the oldest parked job of the kind returns to ready. `inflight` and
/// `parked` are the kind's keys, `wake_channel` the queue's wake channel.
/// `end_lease` is the shared first half of RETRY and RELEASE.
const FREE_SLOT: &str = r#"
local function free_slot(key, id, inflight, parked, ready, wake_channel)
  redis.call('HDEL', key, 'slot')
  if redis.call('SREM', inflight, id) == 1 then
    local p = redis.call('ZPOPMIN', parked, 1)
    if p[1] then
      redis.call('ZADD', ready, p[2], p[1])
      redis.call('PUBLISH', wake_channel, 'ready')
    end
  end
end
-- Ends a lease that is going back to wait (retry, release): drops the lease,
-- frees the kind's slot, and, for a job cancelled meanwhile, deletes it instead.
-- True when the job was cancelled and is gone.
local function end_lease(leases, key, id, inflight, parked, ready, wake_channel, ended)
  redis.call('ZREM', leases, id)
  local h = redis.call('HMGET', key, 'slot', 'cancel')
  if h[1] then free_slot(key, id, inflight, parked, ready, wake_channel) end
  if h[2] then
    redis.call('DEL', key)
    tombstone(ended)
    return true
  end
  return false
end
"#;

/// Publishes many messages on one channel, in order. ARGV: channel, messages...
pub const PUBLISH_MANY: &str = r#"
for i = 2, #ARGV do redis.call('PUBLISH', ARGV[1], ARGV[i]) end
return #ARGV - 1
"#;

/// The full text of a script: the prelude, the lease check where needed, the body.
pub fn source(body: &str) -> String {
    let mut text = String::from(PRELUDE);
    if body.contains("holds_lease(") {
        text.push_str(HOLDS_LEASE);
    }
    if body.contains("tombstone(") || body.contains("end_lease(") {
        text.push_str(TOMBSTONE);
    }
    if body.contains("free_slot(") || body.contains("end_lease(") {
        text.push_str(FREE_SLOT);
    }
    text.push_str(body);
    text
}
