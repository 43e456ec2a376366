//! The scripts of a lease: FETCH (promotion, flow limits, fencing token) and
//! the fenced COMPLETE, RETRY, RELEASE and HEARTBEAT, and REAP for expired leases.

/// Promotes due delayed jobs, then leases up to n ready jobs, highest priority first,
/// within the flow limits. Each lease gets a fencing token from a per-queue counter
/// seeded with the clock in microseconds, so tokens keep growing even if Redis
/// restarts empty.
///
/// Limits (ARGV[3], JSON, "" for none) come from the daemon's live config on every
/// call: `{"q": {"l": limit, "p": period_ms}, "k": {kind: {"c": concurrency, "l":
/// limit, "p": period_ms, "f": payload field}}}`. A job over a limit is not leased
/// and its attempt is not counted: over its kind's concurrency it is parked in
/// `parked:<kind>` until a slot frees; over its kind's rate it goes to delayed until
/// its window has room; over the queue's rate the scan stops and the reply says
/// when to come back. Rate windows are exact sliding windows (a zset of lease times
/// per limit). A paused queue leases nothing.
/// KEYS: ready, delayed, leases, fence, paused, queue key prefix (`prefix:{q}:`,
/// for the job hashes and the flow keys of the ids it pops). ARGV: n, lease_ms,
/// limits. Returns flat: when to fetch again (next due ms, or -1), the number of
/// ready entries dropped for having no job hash (evicted, deleted by hand) and
/// those entries in hex, then per job: id, kind, payload, attempts, max_attempts, token,
/// ready_ms.
pub const FETCH: &str = r#"
local now = now_ms()
local n = tonumber(ARGV[1])
local qp = KEYS[6]
local jp = qp .. 'job:'
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', s(now), 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  local priority = redis.call('HGET', jp .. id, 'priority')
  redis.call('ZADD', KEYS[1], s(ready_score(priority, now)), id)
end
if redis.call('EXISTS', KEYS[5]) == 1 then return {-1} end
local limits = {}
if ARGV[3] and ARGV[3] ~= '' then limits = cjson.decode(ARGV[3]) end
local kinds = limits.k or {}
local ql = limits.q
-- Parked jobs go back to ready as far as their kind has room (a freed slot does
-- this at once; here it catches a limit raised or removed by a reload).
if redis.call('EXISTS', qp .. 'parked_kinds') == 1 then
  for _, kind in ipairs(redis.call('SMEMBERS', qp .. 'parked_kinds')) do
    local pk = qp .. 'parked:' .. kind
    local kl = kinds[kind]
    local room
    if kl and kl.c then
      room = kl.c - redis.call('SCARD', qp .. 'inflight:' .. kind)
    else
      room = redis.call('ZCARD', pk)
    end
    if room > 0 then
      local back = redis.call('ZPOPMIN', pk, room)
      for i = 1, #back, 2 do redis.call('ZADD', KEYS[1], back[i + 1], back[i]) end
    end
    if redis.call('EXISTS', pk) == 0 then redis.call('SREM', qp .. 'parked_kinds', kind) end
  end
end
if redis.call('EXISTS', KEYS[4]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[4], s(tonumber(t[1]) * 1000000 + tonumber(t[2])))
end
local function window_room(key, limit, period)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', s(now - period))
  if redis.call('ZCARD', key) < limit then return true, 0 end
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return false, tonumber(first[2]) + period
end
local function field_value(payload, field)
  local ok, v = pcall(cjson.decode, payload)
  if not ok then return '' end
  if string.sub(field, 1, 1) ~= '/' then field = '/' .. field end
  for part in string.gmatch(string.sub(field, 2) .. '/', '([^/]*)/') do
    if type(v) ~= 'table' then return '' end
    part = string.gsub(string.gsub(part, '~1', '/'), '~0', '~')
    local idx = tonumber(part)
    if idx and v[idx + 1] ~= nil then v = v[idx + 1] else v = v[part] end
    if v == nil then return '' end
  end
  if v == cjson.null then return '' end
  if type(v) == 'table' then return cjson.encode(v) end
  if type(v) == 'number' then
    if v == math.floor(v) then return s(v) end
    return string.format('%.17g', v)
  end
  return tostring(v)
end
local leased, stagger, dropped = {}, {}, {}
local come_back = nil
local examined, cap = 0, math.max(n * 8, 256)
while #leased < n and examined < cap do
  local batch = redis.call('ZPOPMIN', KEYS[1], n - #leased)
  if #batch == 0 then break end
  local stop = false
  for i = 1, #batch, 2 do
    local id, score = batch[i], batch[i + 1]
    if stop then
      redis.call('ZADD', KEYS[1], score, id)
    else
      examined = examined + 1
      local key = jp .. id
      local h = redis.call('HMGET', key, 'kind', 'payload', 'max_attempts', 'attempts', 'run_ms', 'created_ms')
      if h[1] then
        local kl = kinds[h[1]]
        local go, ckey, rkey = true, nil, nil
        if ql then
          local ok, open = window_room(qp .. 'rate', ql.l, ql.p)
          if not ok then
            redis.call('ZADD', KEYS[1], score, id)
            stop, go, come_back = true, false, open
          end
        end
        if go and kl and kl.c then
          ckey = qp .. 'inflight:' .. h[1]
          if redis.call('SCARD', ckey) >= kl.c then
            redis.call('ZADD', qp .. 'parked:' .. h[1], score, id)
            redis.call('SADD', qp .. 'parked_kinds', h[1])
            go = false
          end
        end
        if go and kl and kl.l then
          rkey = qp .. 'rate:' .. h[1]
          if kl.f then rkey = rkey .. ':' .. field_value(h[2] or '', kl.f) end
          local ok, open = window_room(rkey, kl.l, kl.p)
          if not ok then
            -- Jobs of one full window queue up a period apart per `limit` of them,
            -- so a backlog does not all come back at the same moment.
            local k = stagger[rkey] or 0
            stagger[rkey] = k + 1
            redis.call('ZADD', KEYS[2], s(open + math.floor(k / kl.l) * kl.p), id)
            go = false
          end
        end
        if go then
          local attempts = s((tonumber(h[4]) or 0) + 1)
          local member = id .. ':' .. attempts .. ':' .. s(now)
          if ql then
            redis.call('ZADD', qp .. 'rate', s(now), member)
            redis.call('PEXPIRE', qp .. 'rate', s(ql.p))
          end
          if rkey then
            redis.call('ZADD', rkey, s(now), member)
            redis.call('PEXPIRE', rkey, s(kl.p))
          end
          if ckey then redis.call('SADD', ckey, id) end
          leased[#leased + 1] = {id, key, h, attempts, ckey ~= nil}
        end
      else
        dropped[#dropped + 1] = id
      end
    end
  end
  if stop then break end
end
local out = {-1, s(#dropped)}
-- Hex: an entry written by hand may be any bytes, and the reply must stay text.
for _, id in ipairs(dropped) do
  out[#out + 1] = string.gsub(id, '.', function(c) return string.format('%02x', string.byte(c)) end)
end
if #leased > 0 then
  local deadline = s(now + tonumber(ARGV[2]))
  -- One counter bump hands out the whole batch's tokens.
  local token = redis.call('INCRBY', KEYS[4], s(#leased)) - #leased
  local leases = {}
  for _, e in ipairs(leased) do
    local id, key, h = e[1], e[2], e[3]
    token = token + 1
    if e[5] then
      redis.call('HSET', key, 'attempts', e[4], 'token', s(token), 'slot', '1')
    else
      redis.call('HSET', key, 'attempts', e[4], 'token', s(token))
    end
    leases[#leases + 1] = deadline
    leases[#leases + 1] = id
    out[#out + 1] = id
    out[#out + 1] = h[1]
    out[#out + 1] = h[2] or ''
    out[#out + 1] = e[4]
    out[#out + 1] = h[3] or '0'
    out[#out + 1] = s(token)
    out[#out + 1] = h[5] or h[6] or s(now)
  end
  redis.call('ZADD', KEYS[3], unpack(leases))
end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if nxt[2] then out[1] = tonumber(nxt[2]) end
if come_back and (out[1] == -1 or come_back < out[1]) then out[1] = come_back end
if out[1] ~= -1 then out[1] = s(out[1]) end
return out
"#;

/// Ends jobs for good (succeeded, dead or cancelled), many per call.
/// KEYS: leases, ready, then per job: job key, tombstone key, its kind's inflight
/// and parked keys. ARGV: wake channel, then id, token per job. Returns 1
/// (accepted) or 0 (this lease is no longer held: drop the outcome) per job, in
/// order.
pub const COMPLETE: &str = r#"
local out = {}
for i = 2, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local k = 3 + 2 * (i - 2)
  local key = KEYS[k]
  local h = redis.call('HMGET', key, 'token', 'slot')
  -- Removing the lease is the check that it was still there.
  if h[1] == token and redis.call('ZREM', KEYS[1], id) == 1 then
    if h[2] then free_slot(key, id, KEYS[k + 2], KEYS[k + 3], KEYS[2], ARGV[1]) end
    redis.call('DEL', key)
    tombstone(KEYS[k + 1])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"#;

/// Schedules another attempt after a delay; `run_ms` becomes the retry time. A job
/// cancelled meanwhile ends here instead. KEYS: leases, delayed, job key, tombstone
/// key, the kind's inflight and parked keys, ready. ARGV: id, token, delay_ms, wake
/// channel.
pub const RETRY: &str = r#"
if not holds_lease(KEYS[1], KEYS[3], ARGV[1], ARGV[2]) then return 0 end
if end_lease(KEYS[1], KEYS[3], ARGV[1], KEYS[5], KEYS[6], KEYS[7], ARGV[4], KEYS[4]) then
  return 1
end
local due = s(now_ms() + tonumber(ARGV[3]))
redis.call('HSET', KEYS[3], 'run_ms', due)
redis.call('ZADD', KEYS[2], due, ARGV[1])
return 1
"#;

/// Hands a job back unfinished (drain): it is ready again at once and the attempt
/// does not count; a job cancelled meanwhile ends here instead.
/// KEYS: leases, ready, job key, tombstone key, the kind's inflight and parked
/// keys. ARGV: id, token, wake channel.
pub const RELEASE: &str = r#"
if not holds_lease(KEYS[1], KEYS[3], ARGV[1], ARGV[2]) then return 0 end
if end_lease(KEYS[1], KEYS[3], ARGV[1], KEYS[5], KEYS[6], KEYS[2], ARGV[3], KEYS[4]) then
  return 1
end
redis.call('HINCRBY', KEYS[3], 'attempts', -1)
local priority = redis.call('HGET', KEYS[3], 'priority')
redis.call('ZADD', KEYS[2], s(ready_score(priority, now_ms())), ARGV[1])
wake(KEYS[2], ARGV[3])
return 1
"#;

/// Extends a lease. KEYS: leases, job key. ARGV: id, token, lease_ms.
/// Returns 0 (lease lost), 1 (extended) or 2 (extended, but the job was cancelled:
/// stop it).
pub const HEARTBEAT: &str = r#"
if not holds_lease(KEYS[1], KEYS[2], ARGV[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', s(now_ms() + tonumber(ARGV[3])), ARGV[1])
if redis.call('HEXISTS', KEYS[2], 'cancel') == 1 then return 2 end
return 1
"#;

/// Returns expired leases to ready (or ends them dead when attempts are spent, or
/// drops them when they were cancelled) and puts back ingest claims older than the
/// ingest timeout.
/// KEYS: leases, ready, ingest, ingesting, queue key prefix (`prefix:{q}:`, for the
/// keys of the ids it finds expired). ARGV: wake channel, ingest_timeout_ms.
/// Returns flat: id, "queued"|"dead"|"cancelled", attempts, token per job.
pub const REAP: &str = r#"
local now = now_ms()
local qp = KEYS[5]
local out = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', s(now), 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  local key = qp .. 'job:' .. id
  local h = redis.call('HMGET', key, 'attempts', 'max_attempts', 'token', 'priority', 'slot', 'kind', 'cancel')
  if h[1] then
    if h[5] then
      free_slot(key, id, qp .. 'inflight:' .. h[6], qp .. 'parked:' .. h[6], KEYS[2], ARGV[1])
    end
    local attempts = tonumber(h[1]) or 0
    local max = tonumber(h[2]) or 1
    if h[7] then
      redis.call('DEL', key)
      tombstone(qp .. 'ended:' .. id)
      table.insert(out, id); table.insert(out, 'cancelled')
    elseif max > 0 and attempts >= max then
      redis.call('DEL', key)
      tombstone(qp .. 'ended:' .. id)
      table.insert(out, id); table.insert(out, 'dead')
    else
      redis.call('ZADD', KEYS[2], s(ready_score(h[4], now)), id)
      table.insert(out, id); table.insert(out, 'queued')
    end
    table.insert(out, s(attempts)); table.insert(out, h[3] or '0')
  end
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', s(now - tonumber(ARGV[2])), 'LIMIT', 0, 1000)
for _, id in ipairs(stale) do
  redis.call('ZREM', KEYS[4], id)
  redis.call('LPUSH', KEYS[3], id)
end
wake(KEYS[2], ARGV[1])
return out
"#;
