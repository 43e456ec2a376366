//! The script that cancels a job: removes a waiting one, marks and signals a
//! leased one.

/// Cancels a job in Redis. A waiting job (ready, delayed or parked) is removed so it
/// never runs; a leased one is marked (`cancel` in its hash, which HEARTBEAT,
/// RETRY, RELEASE and REAP honour) and its id is published on the queue's cancel
/// channel for the daemon running it. KEYS: ready, delayed, leases, job key,
/// tombstone key, queue key prefix (`prefix:{q}:`, for the parked set of the kind
/// the hash names). ARGV: id, cancel channel.
/// Returns "removed", "signalled" or "absent".
pub const CANCEL: &str = r#"
local key, id = KEYS[4], ARGV[1]
if redis.call('EXISTS', key) == 0 then
  -- Perhaps on its way from the outbox: a dispatch arriving now must not revive it.
  tombstone(KEYS[5])
  return 'absent'
end
if redis.call('ZSCORE', KEYS[3], id) then
  redis.call('HSET', key, 'cancel', '1')
  redis.call('PUBLISH', ARGV[2], id)
  return 'signalled'
end
local kind = redis.call('HGET', key, 'kind')
redis.call('ZREM', KEYS[1], id)
redis.call('ZREM', KEYS[2], id)
if kind then redis.call('ZREM', KEYS[6] .. 'parked:' .. kind, id) end
redis.call('DEL', key)
tombstone(KEYS[5])
return 'removed'
"#;
