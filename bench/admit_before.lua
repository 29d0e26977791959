-- The admission script as it was before stop 12 cut its calls (src/distillguard/state/redis_state.py at 80de77a):
-- the baseline of bench/state_cost.py. KEYS: 4 per subject (w, t, c, d); see that revision for the arguments.
local W, DAY = 60000, 86400000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = math.floor(now / DAY)
local n, charge, rid, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local nonce_ttl = tonumber(ARGV[5])
local k_settle = 4 * n + (nonce_ttl > 0 and 1 or 0)
local a = 6 + 4 * n
local m = tonumber(ARGV[a]); a = a + 1
for _ = 1, m do
  local srid, tokens, charged, sday, k = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3], tonumber(ARGV[a + 4])
  a = a + 5
  for _ = 1, k do
    local tk, ck, dk = KEYS[k_settle + 2], KEYS[k_settle + 3], KEYS[k_settle + 4]
    k_settle = k_settle + 4
    local old = redis.call('HGET', tk, srid)
    if old then
      redis.call('HSET', tk, srid, tokens)
      redis.call('HINCRBY', tk, '=', tokens - tonumber(old))
    end
    redis.call('ZREM', ck, srid)
    if tokens ~= charged and redis.call('HGET', dk, 'day') == sday then
      if redis.call('HINCRBY', dk, 'used', tokens - charged) < 0 then redis.call('HSET', dk, 'used', 0) end
    end
  end
end
if n == 0 then return {0, now, day} end
if nonce_ttl > 0 then
  if not redis.call('SET', KEYS[4 * n + 1], '1', 'NX', 'PX', nonce_ttl) then return {2} end
end
local worst_code, worst_limit, worst_at, worst_subject = nil, 0, -1, 0
local function refuse(code, limit, at, i)
  if code == 5 then worst_code, worst_limit, worst_at, worst_subject = 5, limit, -1, i; return end
  if worst_code == 5 then return end
  if worst_code == nil or (worst_at ~= -1 and (at == -1 or at > worst_at)) then
    worst_code, worst_limit, worst_at, worst_subject = code, limit, at, i
  end
end
for i = 1, n do
  local w, tk, ck, dk = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i]
  local b = 5 + 4 * i - 3
  local rpm, tpm, conc, daily = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  if rpm >= 0 or tpm >= 0 then
    while true do  -- drop entries that left the window, in slices that keep unpack() small
      local old = redis.call('ZRANGEBYSCORE', w, '-inf', now - W, 'LIMIT', 0, 500)
      if #old == 0 then break end
      local sum = 0
      for _, v in ipairs(redis.call('HMGET', tk, unpack(old))) do if v then sum = sum + tonumber(v) end end
      redis.call('HDEL', tk, unpack(old))
      if sum ~= 0 then redis.call('HINCRBY', tk, '=', -sum) end  -- Lua writes -0 as "-0", which HINCRBY refuses
      redis.call('ZREM', w, unpack(old))
    end
  end
  if rpm >= 0 then
    local count = redis.call('ZCARD', w)
    if count + 1 > rpm then
      local at = -1
      if rpm > 0 then at = tonumber(redis.call('ZRANGE', w, count - rpm, count - rpm, 'WITHSCORES')[2]) + W end
      refuse(1, rpm, at, i)
    end
  end
  if tpm >= 0 then
    local sum = tonumber(redis.call('HGET', tk, '=') or '0')
    if charge > tpm then refuse(5, tpm, -1, i)
    elseif sum + charge > tpm then
      local excess, at = sum + charge - tpm, -1
      local entries = redis.call('ZRANGE', w, 0, -1, 'WITHSCORES')
      for j = 1, #entries, 2 do
        excess = excess - tonumber(redis.call('HGET', tk, entries[j]) or '0')
        if excess <= 0 then at = tonumber(entries[j + 1]) + W; break end
      end
      refuse(2, tpm, at, i)
    end
  end
  if daily >= 0 then
    local used = 0
    if redis.call('HGET', dk, 'day') == tostring(day) then used = tonumber(redis.call('HGET', dk, 'used') or '0') end
    if charge > daily then refuse(5, daily, -1, i)
    elseif used + charge > daily then refuse(3, daily, (day + 1) * DAY, i) end
  end
  if conc >= 0 then
    redis.call('ZREMRANGEBYSCORE', ck, '-inf', now)
    if redis.call('ZCARD', ck) >= conc then refuse(4, conc, -1, i) end
  end
end
if worst_code ~= nil then return {1, worst_code, worst_limit, now, worst_at, worst_subject} end
for i = 1, n do
  local w, tk, ck, dk = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i]
  local b = 5 + 4 * i - 3
  if tonumber(ARGV[b]) >= 0 or tonumber(ARGV[b + 1]) >= 0 then
    redis.call('ZADD', w, now, rid)
    redis.call('HSET', tk, rid, charge)
    redis.call('HINCRBY', tk, '=', charge)
    redis.call('PEXPIRE', w, W + 1000)
    redis.call('PEXPIRE', tk, W + 1000)
  end
  if tonumber(ARGV[b + 2]) >= 0 then
    redis.call('ZADD', ck, now + lease, rid)
    redis.call('PEXPIRE', ck, 2 * lease)
  end
  if tonumber(ARGV[b + 3]) >= 0 then
    if redis.call('HGET', dk, 'day') ~= tostring(day) then redis.call('HSET', dk, 'day', day, 'used', 0) end
    redis.call('HINCRBY', dk, 'used', charge)
    redis.call('PEXPIRE', dk, 2 * DAY)
  end
end
return {0, now, day}
