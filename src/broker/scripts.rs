//! The Lua scripts: every multi-step Redis change is one of these, so it is atomic
//! and costs one round trip.
//!
//! Numbers handed to `redis.call` go through `s()`: Lua would print a large number
//! such as a fencing token with 14 significant digits and lose the rest.
//!
//! Keys of one queue share the hash tag `{queue}`. The per-job hash keys are built
//! from a prefix passed in ARGV; they sit in the same slot as the declared keys.

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

/// The producer-facing enqueue, documented in docs/PROTOCOL.md.
/// KEYS: job hash, ingest list. ARGV: id, kind, payload, priority, max_attempts, delay_ms.
pub const ENQUEUE: &str = r#"
local id, kind, payload = ARGV[1], ARGV[2], ARGV[3]
local h = '[0-9a-f]'
if not string.match(id, '^' .. string.rep(h, 8) .. '%-' .. string.rep(h, 4) .. '%-' .. string.rep(h, 4)
    .. '%-' .. string.rep(h, 4) .. '%-' .. string.rep(h, 12) .. '$') then
  return redis.error_reply('ERR jobrunner: id must be a UUID in its 36-character lowercase form')
end
if string.sub(KEYS[1], -#id) ~= id then
  return redis.error_reply('ERR jobrunner: KEYS[1] must end with the job id')
end
if #kind == 0 or #kind > 64 or not string.match(kind, '^[%w%._%-]+$') then
  return redis.error_reply('ERR jobrunner: kind must be 1-64 letters, digits, dots, dashes or underscores')
end
if not pcall(cjson.decode, payload) then
  return redis.error_reply('ERR jobrunner: payload is not valid JSON')
end
local priority = tonumber(ARGV[4] or '0')
if not priority or priority ~= math.floor(priority) or priority < -1000 or priority > 1000 then
  return redis.error_reply('ERR jobrunner: priority must be a whole number from -1000 to 1000')
end
local max_attempts = tonumber(ARGV[5] or '0')
if not max_attempts or max_attempts ~= math.floor(max_attempts) or max_attempts < 0 then
  return redis.error_reply('ERR jobrunner: max_attempts must be a whole number, 0 for the kind default')
end
local delay = tonumber(ARGV[6] or '0')
if not delay or delay < 0 then
  return redis.error_reply('ERR jobrunner: delay_ms must be a number of milliseconds, 0 or more')
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now = now_ms()
redis.call('HSET', KEYS[1], 'kind', kind, 'payload', payload, 'priority', s(priority),
  'max_attempts', s(max_attempts), 'attempts', '0', 'created_ms', s(now),
  'run_ms', s(now + math.floor(delay)))
if redis.call('RPUSH', KEYS[2], id) == 1 then
  redis.call('PUBLISH', string.sub(KEYS[2], 1, -8) .. ':wake', 'ingest')
end
return 1
"#;

/// Takes up to n producer-enqueued jobs for ledger insertion; they stay in the
/// `ingesting` set (scored by claim time) until promoted, so a crash returns them.
/// KEYS: ingest, ingesting. ARGV: n, job key prefix.
/// Returns flat: id, kind, payload, priority, max_attempts, created_ms, run_ms per job.
pub const CLAIM_INGEST: &str = r#"
local ids = redis.call('LPOP', KEYS[1], tonumber(ARGV[1]))
if not ids then return {} end
local now = s(now_ms())
local out, claimed = {}, {}
for _, id in ipairs(ids) do
  local h = redis.call('HMGET', ARGV[2] .. id, 'kind', 'payload', 'priority', 'max_attempts', 'created_ms', 'run_ms')
  if h[1] then
    claimed[#claimed + 1] = now
    claimed[#claimed + 1] = id
    out[#out + 1] = id
    for i = 1, 6 do out[#out + 1] = h[i] or '' end
  end
end
if #claimed > 0 then redis.call('ZADD', KEYS[2], unpack(claimed)) end
return out
"#;

/// Moves ingested jobs (now in the ledger) to ready or delayed.
/// KEYS: ingesting, ready, delayed. ARGV: job key prefix, wake channel, then per job:
/// id, max_attempts, refused ("1": the ledger recorded it dead; drop it).
pub const PROMOTE_INGESTED: &str = r#"
local now = now_ms()
local ids = {}
for i = 3, #ARGV, 3 do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then return 1 end
-- Only ids still claimed: the reaper may have handed some back meanwhile.
local claimed = redis.call('ZMSCORE', KEYS[1], unpack(ids))
redis.call('ZREM', KEYS[1], unpack(ids))
local ready, delayed = {}, {}
for n, id in ipairs(ids) do
  if claimed[n] then
    local i = 3 * n
    local key = ARGV[1] .. id
    if ARGV[i + 2] == '1' then
      redis.call('DEL', key)
    else
      redis.call('HSET', key, 'max_attempts', ARGV[i + 1])
      local h = redis.call('HMGET', key, 'priority', 'run_ms')
      local run_ms = tonumber(h[2]) or now
      if run_ms > now then
        delayed[#delayed + 1] = s(run_ms)
        delayed[#delayed + 1] = id
      else
        ready[#ready + 1] = s(ready_score(h[1], now))
        ready[#ready + 1] = id
      end
    end
  end
end
if #ready > 0 then redis.call('ZADD', KEYS[2], unpack(ready)) end
if #delayed > 0 then redis.call('ZADD', KEYS[3], unpack(delayed)) end
wake(KEYS[2], ARGV[2])
return 1
"#;

/// Puts ledger jobs into Redis; a job already there is left alone, so a dispatch
/// repeated after a crash does nothing twice.
/// KEYS: ready, delayed. ARGV: job key prefix, wake channel, then per job:
/// id, kind, payload, priority, attempts, max_attempts, run_ms.
pub const DISPATCH: &str = r#"
local now = now_ms()
local added = 0
local ready, delayed = {}, {}
for i = 3, #ARGV, 7 do
  local id = ARGV[i]
  local key = ARGV[1] .. id
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'kind', ARGV[i + 1], 'payload', ARGV[i + 2], 'priority', ARGV[i + 3],
      'attempts', ARGV[i + 4], 'max_attempts', ARGV[i + 5], 'run_ms', ARGV[i + 6])
    if tonumber(ARGV[i + 6]) > now then
      delayed[#delayed + 1] = ARGV[i + 6]
      delayed[#delayed + 1] = id
    else
      ready[#ready + 1] = s(ready_score(ARGV[i + 3], now))
      ready[#ready + 1] = id
    end
    added = added + 1
  end
end
if #ready > 0 then redis.call('ZADD', KEYS[1], unpack(ready)) end
if #delayed > 0 then redis.call('ZADD', KEYS[2], unpack(delayed)) end
wake(KEYS[1], ARGV[2])
return added
"#;

/// Promotes due delayed jobs, then leases up to n ready jobs, highest priority first.
/// Each lease gets a fencing token from a per-queue counter seeded with the clock in
/// microseconds, so tokens keep growing even if Redis restarts empty.
/// KEYS: ready, delayed, leases, fence. ARGV: n, lease_ms, job key prefix.
/// Returns flat: next delayed due ms (or -1), then per job:
/// id, kind, payload, attempts, max_attempts, token, ready_ms (the hash's run_ms).
pub const FETCH: &str = r#"
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', s(now), 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  local priority = redis.call('HGET', ARGV[3] .. id, 'priority')
  redis.call('ZADD', KEYS[1], s(ready_score(priority, now)), id)
end
if redis.call('EXISTS', KEYS[4]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[4], s(tonumber(t[1]) * 1000000 + tonumber(t[2])))
end
local out = {-1}
local popped = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[1]))
local deadline = s(now + tonumber(ARGV[2]))
-- One counter bump hands out the whole batch's tokens.
local last = redis.call('INCRBY', KEYS[4], s(#popped / 2))
local token = last - #popped / 2
local leases = {}
for i = 1, #popped, 2 do
  local id = popped[i]
  local key = ARGV[3] .. id
  local h = redis.call('HMGET', key, 'kind', 'payload', 'max_attempts', 'attempts', 'run_ms')
  if h[1] then
    token = token + 1
    local attempts = s((tonumber(h[4]) or 0) + 1)
    redis.call('HSET', key, 'attempts', attempts, 'token', s(token))
    leases[#leases + 1] = deadline
    leases[#leases + 1] = id
    out[#out + 1] = id
    out[#out + 1] = h[1]
    out[#out + 1] = h[2] or ''
    out[#out + 1] = attempts
    out[#out + 1] = h[3] or '0'
    out[#out + 1] = s(token)
    out[#out + 1] = h[5] or '0'
  end
end
if #leases > 0 then redis.call('ZADD', KEYS[3], unpack(leases)) end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if nxt[2] then out[1] = nxt[2] end
return out
"#;

/// Fencing check shared by ack, retry, release and heartbeat: the caller must hold
/// the current lease of the job with the same token.
const HOLDS_LEASE: &str = r#"
local function holds_lease(leases, key, id, token)
  return redis.call('HGET', key, 'token') == token and redis.call('ZSCORE', leases, id) ~= false
end
"#;

/// Ends jobs for good (succeeded or dead), many per call. KEYS: leases.
/// ARGV: job key prefix, then id, token per job. Returns 1 (accepted) or 0 (this
/// lease is no longer held: drop the outcome) per job, in order.
pub const COMPLETE: &str = r#"
local out = {}
for i = 2, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local key = ARGV[1] .. id
  -- Removing the lease is the check that it was still there.
  if redis.call('HGET', key, 'token') == token and redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('DEL', key)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"#;

/// Schedules another attempt after a delay. KEYS: leases, delayed.
/// ARGV: job key, id, token, delay_ms.
pub const RETRY: &str = r#"
if not holds_lease(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], s(now_ms() + tonumber(ARGV[4])), ARGV[2])
return 1
"#;

/// Hands a job back unfinished (drain): it is ready again at once and the attempt
/// does not count. KEYS: leases, ready. ARGV: job key, id, token, wake channel.
pub const RELEASE: &str = r#"
if not holds_lease(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HINCRBY', ARGV[1], 'attempts', -1)
local priority = redis.call('HGET', ARGV[1], 'priority')
redis.call('ZADD', KEYS[2], s(ready_score(priority, now_ms())), ARGV[2])
wake(KEYS[2], ARGV[4])
return 1
"#;

/// Extends a lease. KEYS: leases. ARGV: job key, id, token, lease_ms.
pub const HEARTBEAT: &str = r#"
if not holds_lease(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', s(now_ms() + tonumber(ARGV[4])), ARGV[2])
return 1
"#;

/// Returns expired leases to ready (or ends them dead when attempts are spent) and
/// puts back ingest claims older than the ingest timeout.
/// KEYS: leases, ready, ingest, ingesting. ARGV: job key prefix, wake channel,
/// ingest_timeout_ms. Returns flat: id, "queued"|"dead", attempts, token per job.
pub const REAP: &str = r#"
local now = now_ms()
local out = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', s(now), 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[1] .. id
  local h = redis.call('HMGET', key, 'attempts', 'max_attempts', 'token', 'priority')
  if h[1] then
    local attempts = tonumber(h[1]) or 0
    local max = tonumber(h[2]) or 1
    if max > 0 and attempts >= max then
      redis.call('DEL', key)
      table.insert(out, id); table.insert(out, 'dead')
    else
      redis.call('ZADD', KEYS[2], s(ready_score(h[4], now)), id)
      table.insert(out, id); table.insert(out, 'queued')
    end
    table.insert(out, s(attempts)); table.insert(out, h[3] or '0')
  end
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', s(now - tonumber(ARGV[3])), 'LIMIT', 0, 1000)
for _, id in ipairs(stale) do
  redis.call('ZREM', KEYS[4], id)
  redis.call('LPUSH', KEYS[3], id)
end
wake(KEYS[2], ARGV[2])
return out
"#;

/// Which of the given jobs have no hash in Redis. ARGV: job key prefix, ids...
pub const MISSING: &str = r#"
local out = {}
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then table.insert(out, ARGV[i]) end
end
return out
"#;

/// The full text of a script: the prelude, the lease check where needed, the body.
pub fn source(body: &str) -> String {
    let mut text = String::from(PRELUDE);
    if body.contains("holds_lease(") {
        text.push_str(HOLDS_LEASE);
    }
    text.push_str(body);
    text
}
