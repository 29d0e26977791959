"""Limits and nonces shared by every replica through Redis (``state: redis://host:port/db``).

One Lua script does a request's whole admission atomically, in one round
trip (or none, from headroom: below): it first applies the settlements this replica has queued since its last
call (real usage replacing prompt estimates, concurrency slots released), then
records the attestation nonce (``SET NX PX``), then checks every subject's
requests/min, tokens/min, concurrency and daily tokens and, only if all admit,
charges them. Windows are measured on Redis' clock (``TIME``), so replicas
with skewed clocks still share one exact window.

The window is kept in 0.1 s *slots*, not one entry per request: a slot
holds the requests and tokens admitted in its 100 ms and the time of its
latest admission, and leaves the window when that latest admission does. So
no 60 s window ever holds more than a limit (a slot counts for as long as
its newest request would), a request may be refused up to 0.1 s before an
exact per-request log would admit it, and Redis' work and memory per
request stay the same however many requests a window holds — with one
entry per request, a key at 3,000 requests/s kept 180,000 entries per
subject and every insert got slower (bench/RESULTS.md, "Redis' own cost per
admission"). Per subject (``key:<id>`` or ``acct:<id>``), two keys:

- ``dg:s:<subject>`` string, what every request reads and writes, packed as
  ten little-endian doubles: the window's requests and tokens; its oldest
  slot that may still be in it and that slot's latest admission (-1: not
  known yet); the latest slot with its requests, tokens and latest
  admission (ms); a UTC day number and that day's tokens. One GET and one
  SET per call, shared by the admission and the settlements riding along
  with it (in a steady stream, the previous request's of the same key and
  account: two fewer reads and two fewer writes per request, 16 % less
  script time measured); none for a subject with only a concurrency limit.
  As a hash it cost Redis a write per field (an admission was 25 % cheaper
  packed, measured);
- ``dg:a:<subject>`` hash, the window's older slots: ``n<slot>``,
  ``t<slot>``, ``m<slot>``, written when the next slot starts, read when one
  may have left (and by a settlement of its request). Apart because Redis
  keeps a hash of up to 512 fields as one list that every write may move:
  with the slots beside what every request writes, a busy key's admission
  cost grew with its slots (+35 % at 250 fields, measured);
- ``dg:c:<subject>`` sorted set: request id → lease expiry (ms): concurrency.
  A replica renews its leases every ``LEASE_MS / 3``; a killed replica's
  slots come back when its leases expire.

Expiry is renewed by a slot's first admission, not by every request: 60.2 s
for a window, two days when the hash also counts daily tokens (a window's
slots older than 60 s are then removed by the next request, whatever their
number).

Headroom: one round trip per request is most of what Redis state costs a
fleet (the gateway's call and Redis' own work: about half again a request's
CPU at one connection, bench/RESULTS.md), and most requests are nowhere near
a limit. So when the script admits a request of a key and account far below
every limit, it also reserves a slice of each for the asking replica — up to
1/100 of requests/min and of tokens/min, 1/1000 of the daily quota, a pool of
1/16 of the concurrency limit and at most twice what the replica runs
(lease-set members ``<prefix><i>``; the request holds the first), each at most 1/8 of what is left, all or none — counted
at once, with the slot's latest admission set to the grant's end (now +
``headroom_ms``), so the slot stays in the window 60 s past any request
admitted from it. The replica admits the next requests from the slices in
process (:class:`_Headroom`) until ``headroom_ms`` after it asked, or until
the quota changes (a throttle, new limits), then hands back what is left with
its next call (a sweep every ``headroom_ms`` finds the grants of subjects
that went quiet). Only a key and account this replica called Redis for
within two headroom periods get a slice: one seen once a minute would only
reserve and hand back. Near a limit there is no slice, and every request is decided
here one by one. docs/deploy.md ("Headroom") states the bounds.

Settlements never wait for Redis: they are queued and ride along with the next
admission, or go in one batched call a few milliseconds later when no request
comes. Redis errors, and calls not answered within ``timeout_s``
(``state_timeout_s``), surface as :class:`StateUnavailable`; what to do then
is :mod:`distillguard.state.resilient`'s job. Admissions queued behind a call
that timed out fail with it, so no caller waits much longer than ``timeout_s``.

The script calls go over :mod:`distillguard.state.redis_wire` connections, with
each quota's keys and limits, and each key's and account's together, encoded
in RESP once and reused: per request only the request id, the charge and the
settlements are encoded. redis-py's client (``client``) is kept for everything
off the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from distillguard.state.redis_wire import RedisWire, ReplyError, WireTimeout, bulk, command
from distillguard.state.types import Admission, Quota, Refusal, StateUnavailable

__all__ = ["HEADROOM_MS", "LEASE_MS", "RedisAdmission", "RedisState"]

log = logging.getLogger("distillguard.state")

SLOT_MS = 100  # the window's slots (S in the script)
LEASE_MS = 30_000  # a concurrency slot's lease; renewed every third of it while the request runs
HEADROOM_MS = 500  # how long a replica may admit from a headroom grant (state_headroom_ms; at most 5 s: the script's TTL)
SETTLE_DELAY_S = 0.005  # how long a settlement may wait for an admission to ride along with
MAX_PARALLEL = 2  # admission calls in flight at once; more wait and go together in the next call
CODES = ("rate_limit_exceeded", "token_rate_limit_exceeded", "daily_quota_exceeded", "concurrency_limit_exceeded", "request_too_large")

# KEYS: 3 per admitted subject (s, a, c), then the nonce key if ARGV[5] > 0, then 3 per settled subject.
# ARGV: n_subjects, charge, request_id, lease_ms, nonce_ttl_ms, headroom_ms (0: ask for none), pool member prefix,
#       the most pool members wanted, 4 limits per subject (-1: none), n_settlements, then per settlement: request_id (or a pool member), tokens to add,
#       requests to add (negative: a headroom grant's unused part), its slot (admission ms // 100), day,
#       flags (one digit per subject: 1 window, 2 lease, 4 daily tokens, summed).
ADMIT_LUA = r"""
local W, DAY, S = 60000, 86400000, 100
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = math.floor(now / DAY)
local n, charge, rid, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local nonce_ttl, hold, prefix, want = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local k = 3 * n + (nonce_ttl > 0 and 1 or 0)
local a = 9 + 4 * n
local TTL = W + 2 * S + 5000  -- a window's keys outlive its latest slot, whose last admission may lie up to 5 s ahead (headroom)
local m = tonumber(ARGV[a]); a = a + 1
local function fix(v) return math.max(0, v) + 0 end  -- never below 0, and never Lua's "-0"
-- A subject's counts, one packed string (a GET and a SET per request; a hash cost a write per field):
-- the window's requests and tokens, its oldest slot and that slot's latest admission, the latest slot with its
-- requests, tokens and latest admission, the UTC day of `used` and its tokens. -1: none, or not known.
-- Read at most once per call and written at most once, at the end: a settlement and the admission after it (as a
-- rule the same key and account) share one GET and one SET. `loaded`: key -> table (false: no such key), in `order`.
local F = '<dddddddddd'
local loaded, order = {}, {}
local function load(h)  -- nil: no such key (expired, or never written)
  local y = loaded[h]
  if y == nil then
    local raw = redis.call('GET', h)
    y = false
    if raw then
      local n, t, o, om, cs, cn, ct, cm, dayv, used = struct.unpack(F, raw)
      y = {n = n, t = t, o = o >= 0 and o or nil, om = om, cs = cs >= 0 and cs or nil, cn = cn, ct = ct, cm = cm,
           dayv = dayv, used = used, dirty = false}
    end
    loaded[h] = y
    order[#order + 1] = h
  end
  return y or nil
end
local function store(h, y, ttl)  -- ttl nil: the key keeps its expiry
  local raw = struct.pack(F, y.n, y.t, y.o or -1, y.om, y.cs or -1, y.cn, y.ct, y.cm, y.dayv, y.used)
  if ttl then redis.call('SET', h, raw, 'PX', ttl) else redis.call('SET', h, raw, 'KEEPTTL') end
  y.dirty = false
end
local function store_dirty()  -- what settlements or a look at the old slots changed and nothing wrote yet
  for _, h in ipairs(order) do
    local y = loaded[h]
    if y and y.dirty then store(h, y, nil) end
  end
end
for _ = 1, m do
  local srid, delta, dn = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local sslot, sday, flags = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), ARGV[a + 5]
  a = a + 6
  for j = 1, #flags do
    local f = string.byte(flags, j) - 48
    local h, ar, c = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
    k = k + 3
    if f % 4 >= 2 then redis.call('ZREM', c, srid) end
    if (delta ~= 0 or dn ~= 0) and (f % 2 == 1 or f >= 4) then
      local y = load(h)  -- gone (expired, or Redis lost it): nothing to correct
      if y then
        local changed = false
        if f % 2 == 1 then  -- its tokens (and a grant's unused requests) move with it if its slot is still in the window
          if y.cs == sslot then
            y.t, y.ct, y.n, y.cn, changed = fix(y.t + delta), fix(y.ct + delta), fix(y.n + dn), fix(y.cn + dn), true
          elseif dn == 0 then
            local old = redis.call('HGET', ar, 't' .. sslot)
            if old then
              redis.call('HSET', ar, 't' .. sslot, fix(tonumber(old) + delta))
              y.t, changed = fix(y.t + delta), true
            end
          else
            local old = redis.call('HMGET', ar, 't' .. sslot, 'n' .. sslot)
            if old[1] then
              redis.call('HSET', ar, 't' .. sslot, fix(tonumber(old[1]) + delta), 'n' .. sslot, fix(tonumber(old[2]) + dn))
              y.t, y.n, changed = fix(y.t + delta), fix(y.n + dn), true
            end
          end
        end
        if f >= 4 and y.dayv == sday then y.used, changed = fix(y.used + delta), true end
        if changed then y.dirty = true end
      end
    end
  end
end
if n == 0 then store_dirty(); return {0, now, day} end
if nonce_ttl > 0 then
  if not redis.call('SET', KEYS[3 * n + 1], '1', 'NX', 'PX', nonce_ttl) then store_dirty(); return {2} end
end
local worst_code, worst_limit, worst_at, worst_subject = nil, 0, -1, 0
local function refuse(code, limit, at, i)
  if code == 5 then worst_code, worst_limit, worst_at, worst_subject = 5, limit, -1, i; return end
  if worst_code == 5 then return end
  if worst_code == nil or (worst_at ~= -1 and (at == -1 or at > worst_at)) then
    worst_code, worst_limit, worst_at, worst_subject = code, limit, at, i
  end
end
local cur = math.floor(now / S)
local cut = math.floor((now - W) / S)  -- slots up to this one may have left the window (those before it have)
local x = {}
for i = 1, n do
  local h, ar, c = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local b = 4 * i + 5
  local rpm, tpm, conc, daily = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  -- the window's requests and tokens; the oldest slot that may be in it, and that slot's latest admission (-1: unknown);
  -- the latest slot (cs) with its requests, tokens and latest admission (the older slots: fields n<s>, t<s>, m<s> of `ar`)
  local counted = rpm >= 0 or tpm >= 0 or daily >= 0  -- concurrency alone needs no counts
  local y = counted and load(h) or nil
  if not y then
    y = {n = 0, t = 0, om = -1, cn = 0, ct = 0, cm = -1, dayv = -1, used = 0, dirty = false}
    if counted then loaded[h] = y end
    if daily >= 0 then  -- today's tokens as a gateway before this layout counted them (dg:d:<subject>), if any
      local before = redis.call('HMGET', 'dg:d:' .. string.sub(h, 6), 'day', 'used')
      if tonumber(before[1]) == day then y.dayv, y.used = day, tonumber(before[2] or '0') end
    end
  end
  y.today = y.dayv == day and y.used or 0
  if y.o and y.o <= cut and y.om <= now - W then  -- the oldest slot may have left: look at the slots up to `cut`
    local names = {}
    for s = y.o, math.min(cut, y.cs - 1) do names[#names + 1] = 'n' .. s; names[#names + 1] = 't' .. s; names[#names + 1] = 'm' .. s end
    local got = #names > 0 and redis.call('HMGET', ar, unpack(names)) or {}
    local gone, o, om = {}, nil, -1
    for j = 1, #got, 3 do
      if got[j] then
        if tonumber(got[j + 2]) <= now - W then
          y.n, y.t = y.n - tonumber(got[j]), y.t - tonumber(got[j + 1])
          gone[#gone + 1] = names[j]; gone[#gone + 1] = names[j + 1]; gone[#gone + 1] = names[j + 2]
        else
          o, om = tonumber(string.sub(names[j], 2)), tonumber(got[j + 2])
          break
        end
      end
    end
    if not o then  -- every older slot left: the latest slot is the oldest
      if y.cs <= cut and y.cm <= now - W then  -- and it left too: the window is empty
        y.n, y.t, y.cs, y.cn, y.ct, y.cm, o, om = 0, 0, nil, 0, 0, -1, nil, -1
      else
        o, om = y.cs, y.cm
      end
    end
    if #gone > 0 then redis.call('HDEL', ar, unpack(gone)) end
    y.n, y.t, y.o, y.om, y.dirty = fix(y.n), fix(y.t), o, om, true
  end
  -- when enough of the oldest slots have left for `need` requests (field 'n') or tokens ('t') to fit; 16 slots a call.
  -- A slot leaves with its latest admission, which for a headroom grant lies ahead of the next slots' (`latest`).
  local function leaves(field, need)
    if not y.o then return -1 end
    local latest = -1
    for first = y.o, y.cs - 1, 16 do
      local names = {}
      for s = first, math.min(y.cs - 1, first + 15) do names[#names + 1] = field .. s; names[#names + 1] = 'm' .. s end
      local got = redis.call('HMGET', ar, unpack(names))
      for j = 1, #got, 2 do
        if got[j] then
          need = need - tonumber(got[j])
          latest = math.max(latest, tonumber(got[j + 1]))
          if need <= 0 then return latest + W end
        end
      end
    end
    need = need - (field == 'n' and y.cn or y.ct)
    if need <= 0 then return math.max(latest, y.cm) + W end
    return -1
  end
  if rpm >= 0 and y.n + 1 > rpm then refuse(1, rpm, rpm > 0 and leaves('n', y.n + 1 - rpm) or -1, i) end
  if tpm >= 0 then
    if charge > tpm then refuse(5, tpm, -1, i)
    elseif y.t + charge > tpm then refuse(2, tpm, leaves('t', y.t + charge - tpm), i) end
  end
  if daily >= 0 then
    if charge > daily then refuse(5, daily, -1, i)
    elseif y.today + charge > daily then refuse(3, daily, (day + 1) * DAY, i) end
  end
  if conc >= 0 then
    y.held = redis.call('ZCOUNT', c, '(' .. now, '+inf')
    if y.held >= conc then refuse(4, conc, -1, i) end
  end
  x[i] = y
end
if worst_code ~= nil then
  store_dirty()  -- the settlements, and what the look at the old slots found
  return {1, worst_code, worst_limit, now, worst_at, worst_subject}
end
-- Headroom (see the module docstring): far below every limit of every subject, reserve a slice of each for this
-- replica to admit from without asking; near any limit, none at all (then every request is decided here, exactly).
local grant = nil
if hold > 0 then
  grant = {}
  for i = 1, n do
    local b = 4 * i + 5
    local rpm, tpm, conc, daily = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
    local y = x[i]
    local gr, gt, gp = -1, -1, -1  -- -1: no such limit
    if rpm >= 0 then gr = math.min(math.floor(rpm / 100), math.floor((rpm - y.n - 1) / 8)) end
    if tpm >= 0 or daily >= 0 then
      gt = 9007199254740992
      if tpm >= 0 then gt = math.min(gt, math.floor(tpm / 100), math.floor((tpm - y.t - charge) / 8)) end
      if daily >= 0 then
        gt = math.min(gt, math.floor(daily / 1000), math.floor((daily - y.today - charge) / 8))
        hold = math.min(hold, (day + 1) * DAY - 1 - now)  -- used up before midnight UTC: on today's quota
      end
    end
    if conc >= 0 then gp = math.min(math.floor(conc / 16), math.floor((conc - y.held) / 8), want) end
    if (rpm >= 0 and gr < 1) or ((tpm >= 0 or daily >= 0) and gt < 1) or (conc >= 0 and gp < 1) then grant = nil; break end
    grant[i] = {gr, gt, gp}
  end
  if hold < 20 then grant = nil end
end
local reply = {0, now, day}
if grant then reply[4] = hold end
for i = 1, n do
  local h, ar, c = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local b = 4 * i + 5
  local y = x[i]
  local g = grant and grant[i]
  local gr, gt = g and math.max(g[1], 0) or 0, g and math.max(g[2], 0) or 0
  local windowed, daily = tonumber(ARGV[b]) >= 0 or tonumber(ARGV[b + 1]) >= 0, tonumber(ARGV[b + 3]) >= 0
  local fresh = not windowed or y.cs ~= cur  -- the first admission of a slot renews the keys' expiry (not every request)
  if windowed then
    if fresh and y.cs then  -- the latest slot becomes an older one: into the archive
      redis.call('HSET', ar, 'n' .. y.cs, y.cn, 't' .. y.cs, y.ct, 'm' .. y.cs, y.cm)
      y.cn, y.ct, y.cm = 0, 0, -1
    end
    if not y.o then y.o = cur end
    -- a grant's requests count as if admitted at the grant's end: its slot stays in the window 60 s past the last of them
    y.n, y.t, y.cs, y.cn, y.ct, y.cm = y.n + 1 + gr, y.t + charge + gt, cur, y.cn + 1 + gr, y.ct + charge + gt,
                                       math.max(y.cm, g and now + hold or now)
    if y.o == cur then y.om = y.cm end
  end
  if daily then y.dayv, y.used = day, y.today + charge + gt end
  if windowed or daily then
    local ttl = daily and 2 * DAY or TTL
    store(h, y, (fresh or g) and ttl or nil)
    if (fresh or g) and windowed then redis.call('PEXPIRE', ar, ttl) end  -- the archive lives no longer than the counts
  end
  if tonumber(ARGV[b + 2]) >= 0 then
    if now % 16 == 0 then redis.call('ZREMRANGEBYSCORE', c, '-inf', now) end  -- now and then: the leases of dead replicas
    if g then  -- a pool of concurrency slots (members prefix..1 to prefix..gp); this request holds the first
      local members = {}
      for j = 1, g[3] do members[#members + 1] = now + lease; members[#members + 1] = prefix .. j end
      redis.call('ZADD', c, unpack(members))
    else
      redis.call('ZADD', c, now + lease, rid)
    end
    if fresh or g then redis.call('PEXPIRE', c, 2 * lease) end  -- outlives every lease taken in this slot
  end
  if g then reply[#reply + 1] = g[1]; reply[#reply + 1] = g[2]; reply[#reply + 1] = g[3] end
end
store_dirty()  -- settled subjects this call did not admit
return reply
"""

# KEYS: the lease sets; ARGV: lease_ms, then one request id per key.
RENEW_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], 2 * lease)
end
return #KEYS
"""


def _keys(subject: str) -> tuple[bytes, bytes, bytes]:
    """A subject's counts, its window's older slots and its leases, in the order the script takes them."""
    name = subject.encode()
    return b"dg:s:" + name, b"dg:a:" + name, b"dg:c:" + name


def _limit(value: int | None) -> bytes:
    return bulk(-1 if value is None else value)


class _Script:
    """One Lua script's two request heads: ``EVALSHA <sha>`` and, for a Redis that forgot it, ``EVAL <source>``."""

    __slots__ = ("evalsha", "eval")

    def __init__(self, sha: str, source: str) -> None:
        self.evalsha = bulk(b"EVALSHA") + bulk(sha)
        self.eval = bulk(b"EVAL") + bulk(source)


def _request(head: bytes, body: tuple[int, bytes]) -> bytes:
    """A whole script request: ``head`` (a :class:`_Script`'s ``evalsha`` or ``eval``), then ``body``.

    ``body`` is (its number of RESP items, its RESP): the key count, the keys,
    the arguments. Kept apart from the head so that a Redis that forgot the
    script gets the same call again as ``EVAL``.
    """
    return b"*%d\r\n%b%b" % (2 + body[0], head, body[1])


class _Call:
    """A script call's keys and arguments, already in RESP, with their counts (a RESP request states its length first).

    Off the hot path (settlements alone, lease renewals, the start probe); an admission builds its body in one piece.
    """

    __slots__ = ("keys", "n_keys", "args", "n_args")

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.n_keys = 0
        self.args: list[bytes] = []
        self.n_args = 0

    def key(self, resp: bytes, items: int = 1) -> None:
        self.keys.append(resp)
        self.n_keys += items

    def arg(self, resp: bytes, items: int = 1) -> None:
        self.args.append(resp)
        self.n_args += items

    def body(self) -> tuple[int, bytes]:
        """What :func:`_request` puts after the head: the key count, the keys, the arguments."""
        return 1 + self.n_keys + self.n_args, bulk(self.n_keys) + b"".join(self.keys) + b"".join(self.args)


class _Encoded:
    """A quota's key names and limit arguments, in RESP once (the same few quotas come back on every request)."""

    __slots__ = ("quota", "subject", "keys", "limits", "leased", "flag", "counted")

    def __init__(self, quota: Quota) -> None:
        self.quota = quota
        self.subject = quota.subject
        self.keys = b"".join(bulk(key) for key in _keys(quota.subject))  # three RESP items
        self.limits = b"".join((_limit(quota.requests_per_min), _limit(quota.tokens_per_min),
                                _limit(quota.concurrent_requests), _limit(quota.daily_tokens)))  # four RESP items
        self.leased = quota.concurrent_requests is not None
        # what its settlement must undo: 1 the window's entry, 2 the lease, 4 the daily count (a digit, summed)
        windowed = quota.requests_per_min is not None or quota.tokens_per_min is not None
        self.counted = windowed + 4 * (quota.daily_tokens is not None)  # the flag without the lease
        self.flag = b"%d" % (self.counted + 2 * self.leased)


class _Subjects:
    """A request's quotas together, in RESP once: what every admission of the same key and account sends alike."""

    __slots__ = ("parts", "subjects", "keys", "n_keys", "count", "limits", "n_limits", "leased", "flags", "asked_at")

    def __init__(self, parts: tuple[_Encoded, ...]) -> None:
        self.parts = parts
        self.asked_at = -1e9  # when this replica last called Redis for this key and account (monotonic s)
        self.subjects = tuple(part.quota.subject for part in parts)
        self.keys = b"".join(part.keys for part in parts)
        self.n_keys = 3 * len(parts)
        self.count = bulk(len(parts))
        self.limits = b"".join(part.limits for part in parts)
        self.n_limits = 4 * len(parts)
        self.leased = tuple(part.quota.subject for part in parts if part.leased)
        self.flags = bulk(b"".join(part.flag for part in parts))


class _Headroom:
    """A slice of one subject's limits that Redis reserved for this replica: requests, tokens, concurrency slots.

    Reserved means already counted in Redis (the requests and tokens in the
    window's slot of the grant, whose latest admission is the grant's end;
    the slots as pool members ``<prefix><n>`` of the subject's lease set), so
    admitting from it cannot take the fleet past a limit. It is used until
    ``expires`` (this process's monotonic clock, counted from before the call
    that got it, so it ends no later than Redis counts it), until its quota
    changes (a throttle or new limits make a new :class:`_Encoded`), or until
    a newer grant of the same subject replaces it; then :meth:`RedisState._retire`
    hands back what is left.
    """

    __slots__ = ("encoded", "expires", "requests", "tokens", "pooled", "free", "tail", "retired")

    def __init__(self, encoded: _Encoded, expires: float, requests: int, tokens: int, free: list[bytes], tail: bytes) -> None:
        self.encoded = encoded
        self.expires = expires
        self.requests = requests  # left to admit; -1: the subject has no requests/min limit
        self.tokens = tokens  # left to charge; -1: no tokens/min nor daily limit
        self.pooled = encoded.leased  # concurrency-limited: a request needs one of the free pool members
        self.free = free  # pool members not held by a request
        self.tail = tail  # RESP: the grant's slot and day, what its settlements name
        self.retired = False


def _no_script(reply: Any) -> bool:
    return isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT")


class RedisAdmission:
    """One request admitted by Redis or from headroom, with what its settlement needs already in RESP.

    ``headroom`` is None for a request Redis decided on its own (settled in
    Redis: its tokens, its lease); else the grant each subject admitted it
    from, and ``members`` the pool member (concurrency slot) it holds there.
    """

    __slots__ = ("request_id", "charged", "subjects", "keys", "leased", "settle_head", "settle_tail", "headroom", "members")

    def __init__(self, request_id: str, charged: int, subjects: tuple[str, ...], keys: bytes,
                 leased: tuple[str, ...], settle_head: bytes, settle_tail: bytes,
                 headroom: tuple[_Headroom, ...] | None = None, members: tuple[bytes | None, ...] = ()) -> None:
        self.request_id = request_id
        self.charged = charged
        self.subjects = subjects
        self.keys = keys  # the subjects' three keys each, in RESP, for the settlement
        self.leased = leased  # subjects whose concurrency slot this request holds
        # The settlement's arguments around the real usage, in RESP: the request id (head) and the admission's
        # slot, day and the subjects' flags (tail); between them go the difference to the charge and 0 requests.
        self.settle_head = settle_head
        self.settle_tail = settle_tail
        self.headroom = headroom
        self.members = members


_SMALL = [bulk(i) for i in range(16)]
_EMPTY = bulk(b"")
_FLAGS = [bulk(i) for i in range(8)]  # one subject's settlement flags


def _bulk_int(value: int) -> bytes:
    """``bulk(value)`` for an int, without its type tests."""
    data = b"%d" % value
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _small(value: int) -> bytes:
    """``bulk(value)`` for the small counts of every call, made once."""
    return _SMALL[value] if 0 <= value < len(_SMALL) else _bulk_int(value)


Settlement = tuple[bytes, int, bytes]  # keys in RESP, how many, the six arguments in RESP (see ADMIT_LUA)


class RedisState:
    """The shared backend; see the module docstring. Construct, then ``await start()``."""

    name = "redis"
    degraded = False  # a failing call raises StateUnavailable; ResilientState, which wraps this, is what degrades

    def __init__(self, url: str, *, timeout_s: float = 0.25, lease_ms: int = LEASE_MS, headroom_ms: int = HEADROOM_MS) -> None:
        import redis.asyncio as aioredis  # only a fleet pays for the client

        if not 0 <= headroom_ms <= 5000:
            raise ValueError(f"headroom_ms={headroom_ms}: expected 0 (none) to 5000 (the script keeps windows 5 s longer)")
        self.url = url
        self.timeout_s = timeout_s
        self.lease_ms = lease_ms
        self.headroom_ms = headroom_ms
        # redis-py's client is off the hot path (pub/sub, administration); the admission calls go over
        # redis_wire connections, whose deadline (timeout_s) bounds each call without a timer per call.
        self.client: Any = aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s, health_check_interval=0)
        self._admit = _Script(self.client.register_script(ADMIT_LUA).sha, ADMIT_LUA)
        self._renew = _Script(self.client.register_script(RENEW_LUA).sha, RENEW_LUA)
        self._lease_arg = bulk(lease_ms)
        self._hold_arg = bulk(headroom_ms)
        self._busy_s = 2 * headroom_ms / 1000
        self._settings = self.client.connection_pool.make_connection()  # the URL's address, TLS and credentials; never connected
        self._idle: list[RedisWire] = []  # connections not in use: one per concurrent call, reused
        # RESP made once: per subject (checked against the request's quota, which a throttle may change), and per
        # combination of subjects (keyed by the _Encoded objects, whose hash is their identity: no quota hashed)
        self._encoded: dict[str, _Encoded] = {}
        self._combined: dict[tuple[_Encoded, ...], _Subjects] = {}
        self._outstanding = 0  # admission calls in flight
        self._queued: list[tuple[tuple[int, bytes], asyncio.Future[Any]]] = []  # admissions waiting for the next batch
        self._pending: list[Settlement] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._in_flight: dict[str, RedisAdmission] = {}
        self._day, self._day_arg = -1, b""  # the UTC day of the last admission, and its RESP argument
        self._renewer: asyncio.Task[None] | None = None
        # headroom: each subject's current grant; combinations with a call asking for one in flight; pool member names
        self._heads: dict[str, _Headroom] = {}
        self._asking: set[_Subjects] = set()
        self._prefix = b"h:" + os.urandom(6).hex().encode() + b":"  # this process's pool members, unique in the fleet
        self._grants = 0
        self._sweep_handle: asyncio.TimerHandle | None = None
        self.calls = 0  # round trips made, for the benchmark
        self.local = 0  # requests admitted from headroom, without a round trip

    async def start(self) -> None:
        """Check that Redis answers and load the scripts; raises :class:`StateUnavailable` if it does not."""
        for conn in self._idle:  # connections from before an outage are dead
            conn.close()
        self._idle.clear()
        for head in list(self._heads.values()):  # Redis may have lost them: their returns change nothing then
            self._retire(head)
        self._heads.clear()
        patience = max(self.timeout_s, 2.0)  # connecting and loading the script may take longer than a call
        try:
            async with asyncio.timeout(patience):
                conn = await RedisWire.open(self._settings, patience)
                if await conn.call(command("PING")) != b"PONG":
                    conn.close()
                    raise StateUnavailable("PING was not answered with PONG")
                self._idle.append(conn)
                # n = 0 subjects, 0 tokens, no request id, lease, no nonce, no headroom, 0 settlements: loads the script
                probe = _Call()
                probe.arg(bulk(0) + bulk(0) + _EMPTY + self._lease_arg + bulk(0) + bulk(0) + _EMPTY + bulk(0) + bulk(0), 9)
                await self._call(self._admit, probe.body())
                conn.set_timeout(self.timeout_s)
        except Exception as exc:
            raise StateUnavailable(f"state {self.url}: {type(exc).__name__}: {exc}") from exc
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_leases())

    def _subjects(self, quotas: tuple[Quota, ...]) -> _Subjects:
        encoded = self._encoded
        parts = []
        for quota in quotas:
            found = encoded.get(quota.subject)
            if found is None or found.quota != quota:
                if found is not None:  # new limits, or a throttle: a grant under the old ones ends now, not at its expiry
                    self._revoke(found)
                if len(encoded) > 100_000:  # throttles make new quotas; keep the caches bounded
                    encoded.clear()
                    self._combined.clear()
                found = encoded[quota.subject] = _Encoded(quota)
            parts.append(found)
        key = tuple(parts)
        combined = self._combined.get(key)
        if combined is None:
            if len(self._combined) > 100_000:
                self._combined.clear()
            combined = self._combined[key] = _Subjects(key)
        return combined

    async def _call(self, script: _Script, body: tuple[int, bytes]) -> Any:
        """One script call on a connection of our own (:mod:`distillguard.state.redis_wire`; see why there).

        An idle connection is reused, else one is opened; either fails a call
        whose reply takes longer than ``timeout_s``. A Redis that forgot the
        script (a restart, a failover) gets it once in full on the same
        connection. A connection whose call failed or was cancelled (a
        timeout) is closed, since its reply may still come; an error reply
        raises :data:`ReplyError`.
        """
        conn = self._idle.pop() if self._idle else await RedisWire.open(self._settings, self.timeout_s)
        try:
            reply = await conn.call(_request(script.evalsha, body))
            if _no_script(reply):
                reply = await conn.call(_request(script.eval, body))
        except BaseException:
            conn.close()
            raise
        self._idle.append(conn)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def _admit_call(self, body: tuple[int, bytes]) -> Any:
        """An admission call, sent at once while few are in flight, else coalesced with others into one pipelined write.

        Like a group commit: under load, the admissions that arrive while
        ``MAX_PARALLEL`` calls are out go together in the next one (one write,
        one read of all the replies), which costs the gateway far less CPU per
        request than a call each; a lone request never waits for company.
        """
        if self._outstanding < MAX_PARALLEL:
            self._outstanding += 1
            try:
                return await self._call(self._admit, body)
            except WireTimeout as exc:  # Redis is slow: those queued for the next batch need not wait to find out
                batch, self._queued = self._queued, []
                for _, waiting in batch:
                    if not waiting.done():
                        waiting.set_exception(exc)
                raise
            finally:
                self._outstanding -= 1
                if self._queued:
                    self._send_queued()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((body, future))
        return await future

    def _send_queued(self) -> None:
        if self._queued and self._outstanding < MAX_PARALLEL:
            batch, self._queued = self._queued, []
            self._outstanding += 1
            asyncio.get_running_loop().create_task(self._run_batch(batch))

    async def _run_batch(self, batch: list[tuple[tuple[int, bytes], asyncio.Future[Any]]]) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                replies = await self._pipeline(self._admit.evalsha, [body for body, _ in batch])
                missing = [i for i, reply in enumerate(replies) if _no_script(reply)]
                if missing:  # a restarted Redis forgot the script: send it in full, once per command that needed it
                    again = await self._pipeline(self._admit.eval, [batch[i][0] for i in missing])
                    for i, reply in zip(missing, again, strict=True):
                        replies[i] = reply
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else StateUnavailable("cancelled")
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), reply in zip(batch, replies, strict=True):
                if not future.done():
                    if isinstance(reply, ReplyError):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._outstanding -= 1
            self._send_queued()

    async def _pipeline(self, head: bytes, bodies: list[tuple[int, bytes]]) -> list[Any]:
        """Several script calls in one write on one connection; error replies come back in the list, not raised."""
        conn = self._idle.pop() if self._idle else await RedisWire.open(self._settings, self.timeout_s)
        futures = conn.send(b"".join([_request(head, body) for body in bodies]), len(bodies))
        try:
            replies = [await future for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            conn.close()
            raise
        self._idle.append(conn)
        return replies

    async def admit(self, quotas: tuple[Quota, ...], tokens: int, request_id: str,
                    nonce: tuple[str, int] | None = None) -> RedisAdmission | Refusal | None:
        subjects = self._subjects(quotas)
        if nonce is None and self.headroom_ms:  # a nonce must be checked in Redis: the fleet's one replay cache
            local = self._from_headroom(subjects, tokens, request_id)
            if local is not None:
                return local
        rid = request_id.encode()
        rid = b"$%d\r\n%b\r\n" % (len(rid), rid)
        # KEYS: the subjects', the nonce's, the settled subjects'; ARGV: see ADMIT_LUA
        n_keys = subjects.n_keys
        if nonce is None:
            nonce_key, nonce_ttl = b"", _SMALL[0]
        else:
            nonce_key, nonce_ttl = bulk("dg:n:" + nonce[0]), bulk(nonce[1])
            n_keys += 1
        # Headroom only for a key and account this replica called Redis for within two headroom periods (a busy one:
        # a key seen once a minute would never use its slice), and by one call at a time.
        sent = time.monotonic()
        asking = bool(self.headroom_ms) and sent - subjects.asked_at < self._busy_s and subjects not in self._asking
        subjects.asked_at = sent
        if asking:
            self._grants += 1
            prefix = self._prefix + b"%d:" % self._grants
            # a pool as large as this replica's demand: twice what it runs now (capped by the script: 1/16 of the limit)
            hold, prefix_arg, want = self._hold_arg, bulk(prefix), _small(2 * len(self._in_flight) + 2)
            self._asking.add(subjects)
        else:
            prefix, hold, prefix_arg, want = b"", _SMALL[0], _EMPTY, _SMALL[0]
        settled_keys = settled_args = b""
        settled = 0
        if self._pending:
            pending, self._pending = self._pending, []  # the flush timer is left to run (see _flush_soon)
            settled = len(pending)
            settled_keys = b"".join([keys for keys, _, _ in pending])
            n_keys += sum([n for _, n, _ in pending])
            settled_args = b"".join([args for _, _, args in pending])
        body = (10 + n_keys + subjects.n_limits + 6 * settled,
                b"%b%b%b%b%b%b%b%b%b%b%b%b%b%b%b" % (_small(n_keys), subjects.keys, nonce_key, settled_keys, subjects.count,
                                                      _small(tokens), rid, self._lease_arg, nonce_ttl, hold, prefix_arg, want,
                                                      subjects.limits, _small(settled), settled_args))
        try:
            self.calls += 1
            reply = await self._admit_call(body)
        except Exception as exc:
            raise StateUnavailable(f"state {self.url}: {type(exc).__name__}: {exc}") from exc
        finally:
            if asking:
                self._asking.discard(subjects)
        status = reply[0]
        if status == 0:
            day = reply[2]
            tail = _bulk_int(reply[1] // SLOT_MS) + (self._day_arg if day == self._day else self._new_day(day))
            if len(reply) > 3:  # a headroom grant came with it
                return self._granted(subjects, reply, sent, prefix, tail, request_id, tokens, rid)
            admission = RedisAdmission(request_id, tokens, subjects.subjects, subjects.keys, subjects.leased, rid,
                                       tail + subjects.flags)
            if subjects.leased:
                self._in_flight[request_id] = admission
            return admission
        if status == 2:
            return None
        _, code, limit, now, at, index = (int(v) for v in reply)
        return Refusal(quotas[index - 1].subject, CODES[code - 1], limit, now, None if at < 0 else at)

    def _new_day(self, day: int) -> bytes:
        self._day, self._day_arg = day, bulk(day)
        return self._day_arg

    # -- headroom ---------------------------------------------------------------------------
    def _from_headroom(self, subjects: _Subjects, tokens: int, request_id: str) -> RedisAdmission | None:
        """Admit from every subject's current grant without a round trip, or None when one of them cannot."""
        heads = self._heads
        now = time.monotonic()
        found = []
        for part in subjects.parts:
            head = heads.get(part.subject)
            if (head is None or head.encoded is not part or head.expires <= now or head.requests == 0
                    or 0 <= head.tokens < tokens or (head.pooled and not head.free)):
                return None
            found.append(head)
        members: list[bytes | None] = []
        for head in found:
            if head.requests > 0:
                head.requests -= 1
            if head.tokens > 0:
                head.tokens -= tokens
            members.append(head.free.pop() if head.pooled else None)
        self.local += 1
        admission = RedisAdmission(request_id, tokens, subjects.subjects, subjects.keys, subjects.leased, b"", b"",
                                   tuple(found), tuple(members))
        if subjects.leased:
            self._in_flight[request_id] = admission
        return admission

    def _granted(self, subjects: _Subjects, reply: list[int], sent: float, prefix: bytes, tail: bytes,
                 request_id: str, tokens: int, rid: bytes) -> RedisAdmission:
        """The request Redis admitted with a grant: keep the grant per subject; the request holds its first pool member."""
        expires = sent + reply[3] / 1000
        heads = self._heads
        found = []
        members: list[bytes | None] = []
        for j, part in enumerate(subjects.parts):
            requests, granted_tokens, pool = reply[4 + 3 * j:7 + 3 * j]
            head = _Headroom(part, expires, requests, granted_tokens,
                             [prefix + b"%d" % i for i in range(pool, 1, -1)], tail)  # members 2..pool; the request has 1
            old = heads.get(part.subject)
            if old is not None:
                self._retire(old)
            heads[part.subject] = head
            found.append(head)
            members.append(prefix + b"1" if pool > 0 else None)
        if self._sweep_handle is None:
            self._sweep_handle = asyncio.get_running_loop().call_later(self.headroom_ms / 1000, self._sweep)
        admission = RedisAdmission(request_id, tokens, subjects.subjects, subjects.keys, subjects.leased, rid,
                                   tail + subjects.flags, tuple(found), tuple(members))
        if subjects.leased:
            self._in_flight[request_id] = admission
        return admission

    def _revoke(self, encoded: _Encoded) -> None:
        """Hand back the grant held for ``encoded``'s subject if it was granted under ``encoded``'s (now old) limits.

        :meth:`_from_headroom` already admits nothing more from it (its quota is
        no longer the request's); this returns its unused part to Redis with the
        next call, not at the next sweep.
        """
        head = self._heads.get(encoded.subject)
        if head is not None and head.encoded is encoded:
            del self._heads[encoded.subject]
            self._retire(head)

    def _retire(self, head: _Headroom) -> None:
        """Hand back what is left of a grant (unused requests and tokens, free pool members), once."""
        if head.retired:
            return
        head.retired = True
        encoded = head.encoded
        free, head.free = head.free, []
        requests, tokens = max(head.requests, 0), max(head.tokens, 0)
        if not (requests or tokens or free):
            return
        first = free.pop() if free else None
        self._queue((encoded.keys, 3, b"%b%b%b%b%b" % (_EMPTY if first is None else bulk(first), _small(-tokens),
                                                      _small(-requests), head.tail,
                                                      _FLAGS[encoded.counted + (2 if first is not None else 0)])))
        for member in free:
            self._queue((encoded.keys, 3, b"%b%b%b%b%b" % (bulk(member), _SMALL[0], _SMALL[0], head.tail, _FLAGS[2])))

    def _sweep(self) -> None:
        """Retire expired grants, every ``headroom_ms`` while any is held: a subject that went quiet gives its headroom back.

        A busy subject's grant is replaced (and retired) by its next one as it
        ends; this is for the others, so one pass over the grants per period,
        not a timer per grant.
        """
        self._sweep_handle = None
        now = time.monotonic()
        heads = self._heads
        expired = [subject for subject, head in heads.items() if head.expires <= now]
        for subject in expired:
            self._retire(heads.pop(subject))
        if heads:
            self._sweep_handle = asyncio.get_running_loop().call_later(self.headroom_ms / 1000, self._sweep)

    # -- settlements ------------------------------------------------------------------------
    def settle(self, admission: Admission, tokens: int) -> None:
        assert isinstance(admission, RedisAdmission), "settled by the backend that admitted it"
        if admission.leased:
            self._in_flight.pop(admission.request_id, None)
        found = admission.headroom
        if found is None:  # decided by Redis alone: settled there
            if tokens == admission.charged and not admission.leased:
                return  # nothing to change in Redis
            self._queue((admission.keys, 3 * len(admission.subjects),
                         b"%b%b%b%b" % (admission.settle_head, _small(tokens - admission.charged), _SMALL[0], admission.settle_tail)))
            return
        delta = tokens - admission.charged
        now = time.monotonic()
        heads = self._heads
        for head, member in zip(found, admission.members, strict=True):
            live = not head.retired and head.expires > now
            if member is not None:
                if live:
                    head.free.append(member)  # back in the pool, for the next request
                else:
                    self._queue((head.encoded.keys, 3, b"%b%b%b%b%b" % (bulk(member), _SMALL[0], _SMALL[0], head.tail, _FLAGS[2])))
            if delta == 0 or head.tokens < 0:
                continue
            if delta < 0 and live:
                head.tokens -= delta  # the grant's again
                continue
            current = heads.get(head.encoded.subject) if delta > 0 else None
            if (current is not None and current.encoded is head.encoded and not current.retired and current.expires > now
                    and current.tokens >= delta):
                current.tokens -= delta  # the completion's tokens, from headroom already counted in Redis
                continue
            self._queue((head.encoded.keys, 3, b"%b%b%b%b%b" % (_EMPTY, _small(delta), _SMALL[0], head.tail,
                                                                _FLAGS[head.encoded.counted])))

    def _queue(self, settlement: Settlement) -> None:
        self._pending.append(settlement)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(SETTLE_DELAY_S, self._flush_soon)

    def _flush_soon(self) -> None:
        # The timer is left to run when an admission takes the pending settlements: when it fires with nothing
        # pending it does nothing (cancelling and setting it again for every request cost more than an idle wake-up).
        self._flush_handle = None
        if self._pending and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.get_running_loop().create_task(self.flush())

    async def flush(self) -> None:
        """Send every queued settlement now, in one call."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        call = _Call()
        call.arg(bulk(0) + bulk(0) + _EMPTY + self._lease_arg + bulk(0) + bulk(0) + _EMPTY + bulk(0), 8)  # nothing to admit
        call.arg(_small(len(pending)))
        for keys, n, args in pending:
            call.arg(args, 6)
            call.key(keys, n)
        try:
            self.calls += 1
            async with asyncio.timeout(self.timeout_s):
                await self._call(self._admit, call.body())
        except Exception as exc:  # the usage is lost, the slots come back when their leases expire
            log.warning("could not settle %d request(s) in %s (%s); their leases expire within %d s",
                        len(pending), self.url, type(exc).__name__, self.lease_ms // 1000)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            running = list(self._in_flight.values())
            if not running:
                continue
            call = _Call()
            call.arg(self._lease_arg)
            for admission in running:
                if admission.headroom is None:
                    for subject in admission.leased:
                        call.key(bulk(_keys(subject)[2]))
                        call.arg(bulk(admission.request_id))
                else:  # the pool members it holds
                    for head, member in zip(admission.headroom, admission.members, strict=True):
                        if member is not None:
                            call.key(bulk(_keys(head.encoded.subject)[2]))
                            call.arg(bulk(member))
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._call(self._renew, call.body())
            except Exception as exc:
                log.warning("could not renew %d concurrency lease(s) in %s: %s", call.n_keys, self.url, exc)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for head in self._heads.values():  # what this replica reserved goes back to the fleet
            self._retire(head)
        self._heads.clear()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.flush()
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        with contextlib.suppress(Exception):
            await self.client.aclose()
