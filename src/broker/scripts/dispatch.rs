//! The scripts that bring jobs into Redis: the producer's ENQUEUE, the ingest
//! claim and promotion, the outbox's DISPATCH, and the check for lost copies.

/// The producer-facing enqueue, documented in docs/PROTOCOL.md and shipped in the
/// Python client's `enqueue.lua` (both hold a copy of its full text: tests keep
/// the three equal). `check_job` is every rule a job
/// must meet; a batch form of this script must call it for each job.
/// KEYS: job hash, ingest list. ARGV: id, kind, payload, priority, max_attempts, delay_ms.
pub const ENQUEUE: &str = r#"
-- Every rule a job must meet before Redis stores it, in one function: the daemon
-- can carry any job this accepts. Returns the error text, or nil and the numbers
-- to store (priority, max_attempts, run_ms).
local MAX_RUN_MS = 253402300799999 -- 9999-12-31T23:59:59.999Z
local function whole(x, default)
  if x == nil then return default end
  if #x > 16 or not string.match(x, '^%-?%d+$') then return nil end
  return tonumber(x)
end
local function utf8_ok(t)
  local i = string.find(t, '[\128-\255]')
  while i do
    local c, n, lo, hi = string.byte(t, i), 0, 128, 191
    if c >= 194 and c <= 223 then n = 1
    elseif c >= 224 and c <= 239 then
      n = 2
      if c == 224 then lo = 160 elseif c == 237 then hi = 159 end
    elseif c >= 240 and c <= 244 then
      n = 3
      if c == 240 then lo = 144 elseif c == 244 then hi = 143 end
    else return false end
    for k = 1, n do
      local b = string.byte(t, i + k)
      if not b or b < lo or b > hi then return false end
      lo, hi = 128, 191
    end
    i = string.find(t, '[\128-\255]', i + n + 1)
  end
  return true
end
local function too_deep(v, depth)
  if depth > 100 then return true end
  for _, x in pairs(v) do
    if type(x) == 'table' and too_deep(x, depth + 1) then return true end
  end
  return false
end
local function has_nul(v)
  if type(v) == 'string' then return string.find(v, '\0', 1, true) ~= nil end
  if type(v) == 'table' then
    for k, x in pairs(v) do
      if has_nul(k) or has_nul(x) then return true end
    end
  end
  return false
end
local function check_job(job_key, ingest_key, id, kind, payload, priority, max_attempts, delay, now)
  local h = '[0-9a-f]'
  if not string.match(id, '^' .. string.rep(h, 8) .. '%-' .. string.rep(h, 4) .. '%-' .. string.rep(h, 4)
      .. '%-' .. string.rep(h, 4) .. '%-' .. string.rep(h, 12) .. '$') then
    return 'id must be a UUID in its 36-character lowercase form'
  end
  local base, queue = string.match(ingest_key, '^(.*:{([%w%._%-]+)}):ingest$')
  if not base or #queue > 64 or #ingest_key > 256 then
    return 'KEYS[2] must be <prefix>:{<queue>}:ingest, the queue 1-64 letters, digits, dots, dashes or underscores, at most 256 bytes in all'
  end
  if job_key ~= base .. ':job:' .. id then
    return 'KEYS[1] must be <prefix>:{<queue>}:job:<id>, with the prefix and queue of KEYS[2]'
  end
  if #kind == 0 or #kind > 64 or not string.match(kind, '^[%w%._%-]+$') then
    return 'kind must be 1-64 letters, digits, dots, dashes or underscores'
  end
  if not utf8_ok(payload) then return 'payload is not valid UTF-8' end
  local ok, decoded = pcall(cjson.decode, payload)
  if not ok then return 'payload is not valid JSON' end
  -- The walks below are skipped when the text shows they cannot find anything:
  -- U+0000 can only come from a `\u0000` escape, and depth needs brackets.
  if (string.find(payload, '\\u0000', 1, true) or string.find(payload, '\0', 1, true))
      and has_nul(decoded) then
    return 'payload holds the character U+0000, which Postgres cannot store'
  end
  local _, opening = string.gsub(payload, '[%[{]', '')
  if opening > 100 and type(decoded) == 'table' and too_deep(decoded, 1) then
    return 'payload nests deeper than 100 levels'
  end
  local p = whole(priority, 0)
  if not p or p < -1000 or p > 1000 then
    return 'priority must be a whole number from -1000 to 1000'
  end
  local m = whole(max_attempts, 0)
  if not m or m < 0 or m > 2147483647 then
    return 'max_attempts must be a whole number from 0 (the kind default) to 2147483647'
  end
  local d = whole(delay, 0)
  if not d or d < 0 or now + d > MAX_RUN_MS then
    return 'delay_ms must be a whole number of milliseconds, 0 or more, that ends before the year 10000'
  end
  return nil, p, m, now + d
end

local now = now_ms()
local err, priority, max_attempts, run_ms = check_job(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3],
  ARGV[4], ARGV[5], ARGV[6], now)
if err then return redis.error_reply('ERR jobrunner: ' .. err) end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'kind', ARGV[2], 'payload', ARGV[3], 'priority', s(priority),
  'max_attempts', s(max_attempts), 'attempts', '0', 'created_ms', s(now), 'run_ms', s(run_ms))
if redis.call('RPUSH', KEYS[2], ARGV[1]) == 1 then
  redis.call('PUBLISH', string.sub(KEYS[2], 1, -8) .. ':wake', 'ingest')
end
return 1
"#;

/// Takes up to n producer-enqueued entries for ledger insertion. Nothing read here
/// is trusted (producers may write these keys by hand, bypassing ENQUEUE), so the
/// script only reads, with commands that cannot fail on a key of the wrong type,
/// and the daemon checks what it gets. An entry whose job key exists (of any type)
/// stays in `ingesting` (scored by claim time) until promoted, so a crash returns
/// it. An entry with no key is skipped if it is a canonical id (a job cancelled
/// before ingest) and returned unclaimed otherwise, so garbage is reported, not
/// lost. An ingest list that is not a list is renamed to `<ingest>:bad`.
/// KEYS: ingest, ingesting, job key prefix (`prefix:{q}:job:`, which the claimed
/// ids are appended to). ARGV: n.
/// Returns flat, 8 per entry: entry, key type, kind, payload, priority,
/// max_attempts, created_ms, run_ms (nil where missing); or `{'!', type}` when the
/// ingest list was of the wrong type and has been moved aside.
pub const CLAIM_INGEST: &str = r#"
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'list' then
  if t == 'none' then return {} end
  redis.call('RENAME', KEYS[1], KEYS[1] .. ':bad')
  return {'!', t}
end
local ids = redis.call('LPOP', KEYS[1], tonumber(ARGV[1]))
if not ids then return {} end
local now = s(now_ms())
local h = '[0-9a-f]'
local canonical = '^' .. string.rep(h, 8) .. '%-' .. string.rep(h, 4) .. '%-' .. string.rep(h, 4)
  .. '%-' .. string.rep(h, 4) .. '%-' .. string.rep(h, 12) .. '$'
local out, claimed = {}, {}
for _, id in ipairs(ids) do
  local key = KEYS[3] .. id
  local kt = redis.call('TYPE', key)['ok']
  if kt ~= 'none' or not string.match(id, canonical) then
    if kt ~= 'none' then
      claimed[#claimed + 1] = now
      claimed[#claimed + 1] = id
    end
    out[#out + 1] = id
    out[#out + 1] = kt
    local f = {false, false, false, false, false, false}
    if kt == 'hash' then
      f = redis.call('HMGET', key, 'kind', 'payload', 'priority', 'max_attempts', 'created_ms', 'run_ms')
    end
    for i = 1, 6 do out[#out + 1] = f[i] end
  end
end
if #claimed > 0 then redis.call('ZADD', KEYS[2], unpack(claimed)) end
return out
"#;

/// Moves ingested jobs (now in the ledger) to ready or delayed.
/// KEYS: ingesting, ready, delayed, then the job key of each entry.
/// ARGV: wake channel, then per job: ingest entry (the id as read), max_attempts,
/// refused ("1": the ledger recorded it dead or it was quarantined; drop its key,
/// whatever its type).
pub const PROMOTE_INGESTED: &str = r#"
local now = now_ms()
local ids = {}
for i = 2, #ARGV, 3 do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then return 1 end
-- Only ids still claimed: the reaper may have handed some back meanwhile.
local claimed = redis.call('ZMSCORE', KEYS[1], unpack(ids))
redis.call('ZREM', KEYS[1], unpack(ids))
local ready, delayed = {}, {}
for n, id in ipairs(ids) do
  if claimed[n] then
    local i = 3 * n - 1
    local key = KEYS[3 + n]
    if ARGV[i + 2] == '1' then
      redis.call('DEL', key)
    elseif redis.call('EXISTS', key) == 0 then
      -- Cancelled between its claim and now: nothing to promote.
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
wake(KEYS[2], ARGV[1])
return 1
"#;

/// Puts ledger jobs into Redis; a job already there, or ended within the last
/// minute (its tombstone), is left alone, so a dispatch repeated after a crash or
/// resent after a reconnect does nothing twice. A key of the job that is not a
/// job hash fails the call with WRONGTYPE naming it (the caller isolates that job);
/// every check comes before the first write, so a failed call changes nothing.
/// Called with no jobs, it only checks the queue's own keys.
/// A retried job (`revive` "1") passes its tombstone, and clears it.
/// KEYS: ready, delayed, then per job: job key, tombstone key. ARGV: wake channel,
/// then per job: id, kind, payload, priority, attempts, max_attempts, run_ms, revive.
pub const DISPATCH: &str = r#"
local now = now_ms()
-- Every check before any write: a script that failed halfway would leave job
-- hashes that no ready or delayed set names, and later dispatches skip them.
redis.call('ZCARD', KEYS[1])
redis.call('ZCARD', KEYS[2])
local todo = {}
for i = 2, #ARGV, 8 do
  local id = ARGV[i]
  local k = 3 + (i - 2) / 4
  local key = KEYS[k]
  local t = redis.call('TYPE', key)['ok']
  if t == 'none' then
    if ARGV[i + 7] == '1' or redis.call('EXISTS', KEYS[k + 1]) == 0 then
      todo[#todo + 1] = i
    end
  elseif t ~= 'hash' then
    return redis.error_reply('WRONGTYPE jobrunner: ' .. key .. ' holds a ' .. t .. ', not a job hash')
  end
end
local ready, delayed = {}, {}
for _, i in ipairs(todo) do
  local id = ARGV[i]
  local k = 3 + (i - 2) / 4
  if ARGV[i + 7] == '1' then redis.call('DEL', KEYS[k + 1]) end
  redis.call('HSET', KEYS[k], 'kind', ARGV[i + 1], 'payload', ARGV[i + 2],
    'priority', ARGV[i + 3], 'attempts', ARGV[i + 4], 'max_attempts', ARGV[i + 5],
    'run_ms', ARGV[i + 6])
  if tonumber(ARGV[i + 6]) > now then
    delayed[#delayed + 1] = ARGV[i + 6]
    delayed[#delayed + 1] = id
  else
    ready[#ready + 1] = s(ready_score(ARGV[i + 3], now))
    ready[#ready + 1] = id
  end
end
if #ready > 0 then redis.call('ZADD', KEYS[1], unpack(ready)) end
if #delayed > 0 then redis.call('ZADD', KEYS[2], unpack(delayed)) end
wake(KEYS[1], ARGV[1])
return #todo
"#;

/// Which of the given jobs have no hash in Redis. KEYS: the jobs' hash keys.
/// ARGV: their ids, in the same order.
pub const MISSING: &str = r#"
local out = {}
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then table.insert(out, ARGV[i]) end
end
return out
"#;
