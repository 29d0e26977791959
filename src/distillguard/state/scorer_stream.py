"""A replica's side of the fleet's central scorer (``detection.scorer: central``): its events go to a Redis stream.

Every replica appends the events it served to one stream, :data:`STREAM`, that
the single ``distillguard scorer`` consumes (:mod:`distillguard.policy.central`);
the scorer's decisions come back through the store's risk snapshot and the
``dg:policy`` notices, exactly as one replica's decisions reach the others.

Off the hot path: ``submit`` appends to a bounded in-process buffer (O(1),
never a Redis call); a background thread ships the buffer in batches of up
to ``batch_size`` with one script call per batch (:data:`APPEND_LUA`), which
appends only while the stream holds fewer than ``max_backlog`` entries. The
scorer trims what it has scored, so the stream's length *is* the scorer's
backlog and the bound is exact across all replicas. What does not fit — the
stream at its bound, the local buffer full, Redis unreachable — is shed from
scoring, counted and logged (:class:`~distillguard.policy.shedding.ShedCounter`);
those events are in the event log all the same (the sink never uses Redis).

The same thread reads the scorer's heartbeat (key :data:`HEARTBEAT`, a JSON
object the scorer rewrites every ``HEARTBEAT_EVERY_S`` with a short expiry):
while it is missing the scorer is ``down`` in ``/readyz`` and ``/metrics``,
and the replica keeps enforcing the last decisions.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import orjson
import redis

from distillguard.policy.link import ReportCallback
from distillguard.policy.shedding import ShedCounter, Sheds
from distillguard.scorer_worker import scoring_view  # also what the gateway's own child scorer receives

__all__ = ["APPEND_LUA", "GROUP", "HEARTBEAT", "HEARTBEAT_EVERY_S", "HEARTBEAT_TTL_MS", "STREAM", "StreamFeed", "encode_event",
           "scoring_view"]

log = logging.getLogger("distillguard.state.scorer_stream")

STREAM = "dg:events"  # entries: {"e": one event as JSON (its scoring_view)}
GROUP = "scorer"  # the consumer group of the central scorer (its position survives a restart)
HEARTBEAT = "dg:scorer:heartbeat"  # JSON {"pid", "host", "ts", "last_report_ts", "reports", "events", "backlog", "accounts", "generation"}
HEARTBEAT_EVERY_S = 0.5
HEARTBEAT_TTL_MS = 3000  # missing this long: the scorer is down

# KEYS[1] the stream; ARGV[1] the bound, ARGV[2..] the events. Returns {appended, length after}.
APPEND_LUA = r"""
local length = redis.call('XLEN', KEYS[1])
local room = tonumber(ARGV[1]) - length
local n = 0
for i = 2, #ARGV do
  if n >= room then break end
  redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
  n = n + 1
end
return {n, length + n}
"""


def encode_event(event: dict[str, Any]) -> bytes:
    """One event as the stream carries it: JSON of its :func:`scoring_view`."""
    return orjson.dumps(scoring_view(event), default=str)


class StreamFeed(Sheds):
    """The :class:`~distillguard.policy.link.ScorerLink` of a replica whose scorer is the fleet's central one."""

    def __init__(self, on_report: ReportCallback, url: str, *, max_backlog: int = 50_000, batch_size: int = 500,
                 buffer_max: int = 10_000, timeout_s: float = 1.0) -> None:
        # on_report is never called here: the central scorer's decisions arrive through the risk snapshot.
        self.url = url
        self.max_backlog = max_backlog
        self.batch_size = batch_size
        self.buffer_max = min(buffer_max, max_backlog)
        self.shedding = ShedCounter(log, "the scorer stream")
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._append = self._client.register_script(APPEND_LUA)
        self._buffer: collections.deque[dict[str, Any]] = collections.deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream_length = 0
        self._heartbeat: dict[str, Any] | None = None
        self._heartbeat_read_at = 0.0
        self._scored_accounts = 0
        self._checked = False
        self._redis_failing = False
        self.appended = 0

    # -- ScorerLink ----------------------------------------------------------------------------------
    @property
    def failed(self) -> bool:
        return self._checked and self._heartbeat is None

    @property
    def backlog(self) -> int:
        return self._stream_length + len(self._buffer)

    @property
    def last_report_at(self) -> float | None:
        beat = self._heartbeat
        if beat is None or beat.get("last_report_ts") is None:
            return None
        return time.monotonic() - max(0.0, time.time() - float(beat["last_report_ts"]))

    @property
    def reports(self) -> int:
        return int(self._heartbeat["reports"]) if self._heartbeat else 0

    @property
    def scored_in_report(self) -> int:
        return int(self._heartbeat["events"]) if self._heartbeat else 0

    @property
    def scored_accounts(self) -> int | None:
        """The central scorer's accounts in its latest report, as its last heartbeat heard said (0 before any)."""
        return self._scored_accounts

    def submit(self, event: dict[str, Any]) -> None:
        if len(self._buffer) >= self.buffer_max:
            self.shedding.add(1, "buffer_full")
            return
        self._buffer.append(event)

    def start(self, replay: dict[str, Any] | None = None, indicators_database: str | None = None) -> None:
        """Start the shipping thread (``replay`` and ``indicators_database`` do not apply: the central scorer has its own)."""
        self._read_heartbeat()  # /readyz is right from the first request
        self._thread = threading.Thread(target=self._loop, name="distillguard-scorer-stream", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.shedding.maybe_log(force=True)
        self._client.close()

    # -- the background thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        next_beat = 0.0
        buffer = self._buffer
        while not self._stop.is_set() or buffer:
            now = time.monotonic()
            if now >= next_beat:
                self._read_heartbeat()
                next_beat = now + HEARTBEAT_EVERY_S
            self.shedding.maybe_log()
            if not buffer:
                self._stop.wait(0.02)
                continue
            n = min(len(buffer), self.batch_size)
            batch = [buffer.popleft() for _ in range(n)]
            self._ship(batch)

    def _ship(self, batch: list[dict[str, Any]]) -> None:
        try:
            appended, length = self._append(keys=[STREAM], args=[self.max_backlog, *map(encode_event, batch)])
        except redis.RedisError as exc:
            self.shedding.add(len(batch), "redis_unavailable")
            if not self._redis_failing:
                self._redis_failing = True
                log.warning("scorer stream: cannot append to Redis (%s); events are not scored until it answers "
                            "(they are in the event log)", exc)
            return
        if self._redis_failing:
            self._redis_failing = False
            log.info("scorer stream: Redis answers again; events go to the central scorer")
        self._stream_length = int(length)
        self.appended += int(appended)
        if appended < len(batch):
            self.shedding.add(len(batch) - int(appended), "stream_full")

    def _read_heartbeat(self) -> None:
        try:
            raw = self._client.get(HEARTBEAT)
        except redis.RedisError:
            raw = None
        beat = None
        if raw is not None:
            try:
                beat = orjson.loads(raw)
            except orjson.JSONDecodeError:
                beat = None
        was_down = self._checked and self._heartbeat is None
        if beat is None and not was_down:
            log.warning("central scorer: no heartbeat (is `distillguard scorer` running?); enforcing the last decisions, "
                        "new events are not scored until it is back")
        elif beat is not None and was_down:
            log.info("central scorer: heartbeat back (pid %s on %s)", beat.get("pid"), beat.get("host"))
        if beat is not None:
            self._stream_length = int(beat.get("backlog", self._stream_length))
            self._scored_accounts = int(beat.get("accounts") or self._scored_accounts)
        self._heartbeat = beat
        self._checked = True
