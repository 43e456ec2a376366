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
