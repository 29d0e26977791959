"""Limits and nonces shared by every replica through Redis (``state: redis://host:port/db``).

One Lua script does a request's whole admission atomically, in one round
trip: it first applies the settlements this replica has queued since its last
call (real usage replacing prompt estimates, concurrency slots released), then
records the attestation nonce (``SET NX PX``), then checks every subject's
requests/min, tokens/min, concurrency and daily tokens and, only if all admit,
charges them. Windows are measured on Redis' clock (``TIME``), so replicas
with skewed clocks still share one exact window.

Per subject (``key:<id>`` or ``acct:<id>``):

- ``dg:w:<subject>`` sorted set: request id → admission time (ms), the last 60 s;
- ``dg:t:<subject>`` hash: request id → tokens charged, and ``=`` → their sum;
- ``dg:c:<subject>`` sorted set: request id → lease expiry (ms): concurrency.
  A replica renews its leases every ``LEASE_MS / 3``; a killed replica's
  slots come back when its leases expire;
- ``dg:d:<subject>`` hash: ``day`` (UTC day number) and ``used`` tokens.

Settlements never wait for Redis: they are queued and ride along with the next
admission, or go in one batched call a few milliseconds later when no request
comes. Redis errors surface as :class:`StateUnavailable`; what to do then is
:mod:`distillguard.state.resilient`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from distillguard.state.types import Admission, Quota, Refusal, StateUnavailable

__all__ = ["LEASE_MS", "RedisAdmission", "RedisState"]

log = logging.getLogger("distillguard.state")

LEASE_MS = 30_000  # a concurrency slot's lease; renewed every third of it while the request runs
SETTLE_DELAY_S = 0.005
MAX_PARALLEL = 2  # admission calls in flight at once; more wait and go together in the next call  # how long a settlement may wait for an admission to ride along with
CODES = ("rate_limit_exceeded", "token_rate_limit_exceeded", "daily_quota_exceeded", "concurrency_limit_exceeded", "request_too_large")

# KEYS: 4 per admitted subject (w, t, c, d), then the nonce key if ARGV[5] > 0, then 4 per settled subject.
# ARGV: n_subjects, charge, request_id, lease_ms, nonce_ttl_ms, 4 limits per subject (-1: none),
#       n_settlements, then per settlement: request_id, tokens, charged, day, n_subjects.
ADMIT_LUA = r"""
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
      redis.call('HINCRBY', tk, '=', -sum)
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


def _keys(subject: str) -> tuple[bytes, bytes, bytes, bytes]:
    name = subject.encode()
    return b"dg:w:" + name, b"dg:t:" + name, b"dg:c:" + name, b"dg:d:" + name


def _limit(value: int | None) -> bytes:
    return b"-1" if value is None else str(value).encode()


class _Encoded:
    """A quota's key names and limit arguments, encoded once (the same few quotas come back on every request)."""

    __slots__ = ("keys", "limits", "leased")

    def __init__(self, quota: Quota) -> None:
        self.keys = _keys(quota.subject)
        self.limits = (_limit(quota.requests_per_min), _limit(quota.tokens_per_min), _limit(quota.concurrent_requests),
                       _limit(quota.daily_tokens))
        self.leased = quota.concurrent_requests is not None


class RedisAdmission:
    __slots__ = ("request_id", "charged", "day", "subjects", "leased")

    def __init__(self, request_id: str, charged: int, day: int, subjects: tuple[str, ...], leased: tuple[str, ...]) -> None:
        self.request_id = request_id
        self.charged = charged
        self.day = day
        self.subjects = subjects
        self.leased = leased  # subjects whose concurrency slot this request holds


class RedisState:
    """The shared backend; see the module docstring. Construct, then ``await start()``."""

    name = "redis"
    degraded = False  # a failing call raises StateUnavailable; ResilientState, which wraps this, is what degrades

    def __init__(self, url: str, *, timeout_s: float = 0.25, lease_ms: int = LEASE_MS) -> None:
        import redis.asyncio as aioredis  # only a fleet pays for the client

        self.url = url
        self.timeout_s = timeout_s
        self.lease_ms = lease_ms
        # No per-read socket timeout (it costs a timer per read): the caller bounds each whole call
        # (distillguard.state.resilient), and connecting has its own timeout.
        self.client: Any = aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s, health_check_interval=0)
        self._admit_sha = self.client.register_script(ADMIT_LUA).sha
        self._renew_sha = self.client.register_script(RENEW_LUA).sha
        self._idle: list[Any] = []  # connections not in use: one per concurrent call, reused
        self._encoded: dict[Quota, _Encoded] = {}
        self._outstanding = 0  # admission calls in flight
        self._queued: list[tuple[list[Any], asyncio.Future[Any]]] = []  # admissions waiting to go in the next batch
        self._pending: list[tuple[RedisAdmission, int]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._in_flight: dict[str, RedisAdmission] = {}
        self._renewer: asyncio.Task[None] | None = None
        self.calls = 0  # round trips made, for the benchmark

    async def start(self) -> None:
        """Check that Redis answers and load the scripts; raises :class:`StateUnavailable` if it does not."""
        loop = asyncio.get_running_loop()
        for conn in self._idle:  # connections from before an outage are dead
            loop.create_task(conn.disconnect(nowait=True))
        self._idle.clear()
        try:
            async with asyncio.timeout(max(self.timeout_s, 2.0)):
                await self.client.ping()
                await self._call(self._admit_sha, ADMIT_LUA, [b"0", b"0", b"0", b"", b"0", b"0", b"0"])
        except Exception as exc:
            raise StateUnavailable(f"state {self.url}: {type(exc).__name__}: {exc}") from exc
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_leases())

    def _encode(self, quota: Quota) -> _Encoded:
        found = self._encoded.get(quota)
        if found is None:
            if len(self._encoded) > 100_000:  # throttles make new quotas; keep the cache bounded
                self._encoded.clear()
            found = self._encoded[quota] = _Encoded(quota)
        return found

    async def _call(self, sha: str, script: str, keys_and_args: list[Any]) -> Any:
        """One script call on a connection of our own: the client's per-command machinery costs more than the round trip.

        ``keys_and_args`` starts with the number of keys. A connection whose call
        failed or was cancelled (a timeout) is dropped, since its reply may still come.
        """
        from redis.exceptions import NoScriptError

        conn = self._idle.pop() if self._idle else self.client.connection_pool.make_connection()
        try:
            await conn.send_packed_command(conn.pack_command("EVALSHA", sha, *keys_and_args), check_health=False)
            try:
                reply = await conn.read_response()
            except NoScriptError:  # a restarted Redis forgot the script: send it once in full
                await conn.send_packed_command(conn.pack_command("EVAL", script, *keys_and_args), check_health=False)
                reply = await conn.read_response()
        except BaseException:
            asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))
            raise
        self._idle.append(conn)
        return reply

    async def _admit_call(self, keys_and_args: list[Any]) -> Any:
        """An admission call, sent at once while few are in flight, else coalesced with others into one pipelined write.

        Like a group commit: under load, the admissions that arrive while
        ``MAX_PARALLEL`` calls are out go together in the next one (one write,
        one read of all the replies), which costs the gateway far less CPU per
        request than a call each; a lone request never waits for company.
        """
        if self._outstanding < MAX_PARALLEL:
            self._outstanding += 1
            try:
                return await self._call(self._admit_sha, ADMIT_LUA, keys_and_args)
            finally:
                self._outstanding -= 1
                self._send_queued()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((keys_and_args, future))
        return await future

    def _send_queued(self) -> None:
        if self._queued and self._outstanding < MAX_PARALLEL:
            batch, self._queued = self._queued, []
            self._outstanding += 1
            asyncio.get_running_loop().create_task(self._run_batch(batch))

    async def _run_batch(self, batch: list[tuple[list[Any], asyncio.Future[Any]]]) -> None:
        from redis.exceptions import NoScriptError, ResponseError

        try:
            async with asyncio.timeout(self.timeout_s):
                replies = await self._pipeline(self._admit_sha, [cmd for cmd, _ in batch])
                missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
                if missing:  # a restarted Redis forgot the script: send it in full, once per command that needed it
                    again = await self._pipeline(None, [batch[i][0] for i in missing])
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
                    if isinstance(reply, ResponseError):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._outstanding -= 1
            self._send_queued()

    async def _pipeline(self, sha: str | None, commands: list[list[Any]]) -> list[Any]:
        """Several script calls in one write on one connection; error replies come back in the list, not raised."""
        from redis.exceptions import ResponseError

        conn = self._idle.pop() if self._idle else self.client.connection_pool.make_connection()
        try:
            packed = conn.pack_commands([("EVALSHA", sha, *cmd) if sha else ("EVAL", ADMIT_LUA, *cmd) for cmd in commands])
            await conn.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))
            raise
        self._idle.append(conn)
        return replies

    async def admit(self, quotas: tuple[Quota, ...], tokens: int, request_id: str,
                    nonce: tuple[str, int] | None = None) -> RedisAdmission | Refusal | None:
        encoded = [self._encode(quota) for quota in quotas]
        keys: list[Any] = []
        args: list[Any] = [len(quotas), tokens, request_id, self.lease_ms, nonce[1] if nonce else 0]
        for item in encoded:
            keys += item.keys
            args += item.limits
        if nonce is not None:
            keys.append("dg:n:" + nonce[0])
        if self._pending:
            self._add_settlements(self._take_pending(), keys, args)
        else:
            args.append(0)
        try:
            self.calls += 1
            reply = await self._admit_call([len(keys), *keys, *args])
        except Exception as exc:
            raise StateUnavailable(f"state {self.url}: {type(exc).__name__}: {exc}") from exc
        if reply[0] == 2:
            return None
        if reply[0] == 1:
            _, code, limit, now, at, index = (int(v) for v in reply)
            return Refusal(quotas[index - 1].subject, CODES[code - 1], limit, now, None if at < 0 else at)
        leased = tuple(q.subject for q, item in zip(quotas, encoded, strict=True) if item.leased)
        admission = RedisAdmission(request_id, tokens, int(reply[2]), tuple(q.subject for q in quotas), leased)
        if leased:
            self._in_flight[request_id] = admission
        return admission

    def settle(self, admission: Admission, tokens: int) -> None:
        assert isinstance(admission, RedisAdmission), "settled by the backend that admitted it"
        self._in_flight.pop(admission.request_id, None)
        if tokens == admission.charged and not admission.leased:
            return  # nothing to change in Redis
        self._pending.append((admission, tokens))
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(SETTLE_DELAY_S, self._flush_soon)

    # -- settlements ------------------------------------------------------------------------
    def _take_pending(self) -> list[tuple[RedisAdmission, int]]:
        pending, self._pending = self._pending, []
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        return pending

    @staticmethod
    def _add_settlements(pending: list[tuple[RedisAdmission, int]], keys: list[Any], args: list[Any]) -> None:
        args.append(len(pending))
        for admission, tokens in pending:
            args += (admission.request_id, tokens, admission.charged, admission.day, len(admission.subjects))
            for subject in admission.subjects:
                keys.extend(_keys(subject))

    def _flush_soon(self) -> None:
        self._flush_handle = None
        if self._pending and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.get_running_loop().create_task(self.flush())

    async def flush(self) -> None:
        """Send every queued settlement now, in one call."""
        pending = self._take_pending()
        if not pending:
            return
        keys: list[Any] = []
        args: list[Any] = [0, 0, "", self.lease_ms, 0]
        self._add_settlements(pending, keys, args)
        try:
            self.calls += 1
            async with asyncio.timeout(self.timeout_s):
                await self._call(self._admit_sha, ADMIT_LUA, [len(keys), *keys, *args])
        except Exception as exc:  # the usage is lost, the slots come back when their leases expire
            log.warning("could not settle %d request(s) in %s (%s); their leases expire within %d s",
                        len(pending), self.url, type(exc).__name__, self.lease_ms // 1000)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            running = list(self._in_flight.values())
            if not running:
                continue
            keys: list[Any] = [_keys(subject)[2] for a in running for subject in a.leased]
            args: list[Any] = [self.lease_ms, *(a.request_id for a in running for _ in a.leased)]
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._call(self._renew_sha, RENEW_LUA, [len(keys), *keys, *args])
            except Exception as exc:
                log.warning("could not renew %d concurrency lease(s) in %s: %s", len(keys), self.url, exc)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.flush()
        for conn in self._idle:
            with contextlib.suppress(Exception):
                await conn.disconnect()
        self._idle.clear()
        with contextlib.suppress(Exception):
            await self.client.aclose()

