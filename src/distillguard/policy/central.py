"""``distillguard scorer``: the fleet's one online scorer (``state: redis://…`` with ``detection.scorer: central``).

With a scorer per replica, each sees only its replica's share of the traffic,
so a hydra whose heads are spread over the replicas is never seen whole. Here
every replica appends its events to the Redis stream ``dg:events``
(:mod:`distillguard.state.scorer_stream`) and this process consumes it with a
consumer group (``XREADGROUP``/``XACK``: a restarted scorer resumes where the
last one stopped, pending entries first), feeds the same ``Scanner`` as
``scan``, and hands its reports to an ordinary :class:`~distillguard.policy.PolicyEngine`,
whose writer thread merges them into the store's risk snapshot under the
fixed writer id :data:`WRITER_ID` and announces each merge on ``dg:policy`` —
the same path one replica's decisions took to the others before, so replicas
need nothing new to read them. Review items and alerts are opened here, once
for the fleet. The snapshot holds only the flagged accounts (what replicas
enforce); every account's entry also goes to the Redis hash ``dg:risk:accounts``
(:mod:`distillguard.state.risk_table`: only changed entries, bounded per
report), which the replicas' risk endpoint reads for the others.

It trims what it has scored from the stream (``XTRIM MINID``), so the
stream's length is the backlog, which the replicas bound (load shedding).

On start, the engine loads the snapshot and this scorer replays the store's
most recent events (:func:`distillguard.scorer_worker.replay`), noting their
request ids so the same events still in the stream are not scored twice.

Every ``HEARTBEAT_EVERY_S`` it rewrites the heartbeat key (short expiry): the
replicas report the scorer ``down`` when it is missing. The heartbeat key is
also the guard against a second scorer: one starts only when none beats.

Redis losing its data (restarted without persistence, flushed, failed over to
an empty replica) takes the stream with it: the events appended but not yet
scored, and those the replicas shed while Redis was down, would go unscored.
The scorer notices when its consumer group is gone (``NOGROUP``), creates it
again, and :data:`REBUILD_DELAY_S` later — time for the replicas' event
writers to store what they served — scores the store's events since its
checkpoint (the newest event it had scored, less :data:`REBUILD_MARGIN_S` for
replicas whose events reach the stream late), skipping every event it has
already scored (the request ids of its last :data:`REBUILD_MARGIN_S` × 2
seconds of events) and noting the rest so the new stream's copies are not
scored twice. At most ``detection.replay_max_events`` events are taken (1,000 if it is lower).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

import orjson
import redis

from distillguard import scorer_worker
from distillguard.config import Settings, load_settings
from distillguard.events import format_ts
from distillguard.exceptions import UsageError
from distillguard.logs import configure as configure_logging
from distillguard.policy.link import ReportCallback
from distillguard.state.risk_table import RiskTablePublisher
from distillguard.state.scorer_stream import GROUP, HEARTBEAT, HEARTBEAT_EVERY_S, HEARTBEAT_TTL_MS, STREAM

__all__ = ["WRITER_ID", "CentralScorer", "scorer_command"]

log = logging.getLogger("distillguard.scorer")

WRITER_ID = "central-scorer"  # its entries in the risk snapshot: a restarted scorer replaces them (one scorer per fleet)
CONSUMER = "central"
REBUILD_DELAY_S = 2.0  # after the stream vanished: how long the replicas' event writers get to store what they served
# Events waiting in the stream from which the scorer counts as behind (a drain, not steady load): reports are then
# budgeted whole, re-scoring included (scorer_worker.ReportCadence). Two seconds of events at 5,000/s.
BEHIND = 10_000
REBUILD_MARGIN_S = 10.0  # events of one replica may reach the stream this much later than another's of the same time


def _after(entry_id: bytes) -> str:
    """The smallest stream id greater than ``entry_id`` (``XTRIM MINID`` keeps ids at or above it)."""
    ms, _, seq = entry_id.decode().partition("-")
    return f"{ms}-{int(seq) + 1}"


class CentralScorer:
    """The :class:`~distillguard.policy.link.ScorerLink` inside ``distillguard scorer``: stream in, reports out."""

    def __init__(self, on_report: ReportCallback, url: str, *, publish_every_s: float = 1.0, batch_size: int = 1000,
                 block_ms: int = 200) -> None:
        self.on_report = on_report
        self.url = url
        self.publish_every_s = publish_every_s
        self.batch_size = batch_size
        self.block_ms = block_ms
        self._client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
        self.risk_table = RiskTablePublisher(self._client)  # every scored account, for the replicas' risk endpoint
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beater: threading.Thread | None = None
        self._failed = False
        self._heap = scorer_worker.HeapSettler()
        self._backlog = 0  # the stream's length, read by the heartbeat thread
        self._waiting = 0  # ... and by the scoring thread after its last batch
        self._reports = 0
        self._scored_in_report = 0
        self._scored_accounts = 0
        self._last_report_at: float | None = None
        self._last_report_ts: float | None = None
        self.consumed = 0  # stream entries scored
        self.duplicates = 0  # stream entries skipped: already replayed from the store
        self.malformed = 0
        self.replayed: int | None = None
        self.stream_losses = 0  # times the stream and its consumer group were found gone (Redis lost its data)
        self.rebuilt = 0  # events scored from the store after such a loss
        # the store to rebuild from after a loss, and at most how many events (set by run_scorer); None: no rebuild
        self.database: str | None = None
        self.rebuild_max_events = 100_000
        self._checkpoint = format_ts()  # the newest event scored (ISO 8601 UTC: ordered as strings)
        self._recent: collections.deque[tuple[str, str]] = collections.deque()  # (ts, request id) of the last events scored
        self._recent_ids: set[str] = set()
        self._rebuild: tuple[float, str] | None = None  # (when, from which ts) a rebuild from the store is due
        self.host = socket.gethostname()

    # -- ScorerLink ----------------------------------------------------------------------------------
    @property
    def failed(self) -> bool:
        return self._failed

    @property
    def backlog(self) -> int:
        return self._backlog

    @property
    def shed(self) -> int:
        return 0  # the replicas shed (they count it); the scorer takes whatever is in the stream

    @property
    def shed_by_reason(self) -> dict[str, int]:
        return {}

    @property
    def last_report_at(self) -> float | None:
        return self._last_report_at

    @property
    def reports(self) -> int:
        return self._reports

    @property
    def scored_in_report(self) -> int:
        return self._scored_in_report

    @property
    def scored_accounts(self) -> int | None:
        return self._scored_accounts

    def submit(self, event: dict[str, Any]) -> None:
        """Not used: this process serves no requests (its events come from the stream)."""

    def claim(self, wait_s: float = HEARTBEAT_TTL_MS / 1000 + 1.0) -> None:
        """Become the fleet's scorer, or raise :class:`UsageError` naming the one that already is.

        A scorer that was killed leaves its heartbeat for up to its expiry: wait that long for it to go.
        """
        deadline = time.monotonic() + wait_s
        while True:
            if self._client.set(HEARTBEAT, self._beat(), nx=True, px=HEARTBEAT_TTL_MS):
                return
            if time.monotonic() >= deadline:
                raw = self._client.get(HEARTBEAT)
                other = orjson.loads(raw) if raw else {}
                raise UsageError(f"another distillguard scorer is running (pid {other.get('pid')} on {other.get('host')}); "
                                 "a fleet has exactly one scorer: stop it first (docs/deploy.md)")
            time.sleep(0.2)

    def start(self, replay: dict[str, Any] | None = None, indicators_database: str | None = None) -> None:
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: it exists, with its position
            self._client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        self._thread = threading.Thread(target=self._run, args=(replay, indicators_database), name="distillguard-central-scorer",
                                        daemon=True)
        self._beater = threading.Thread(target=self._beat_loop, name="distillguard-scorer-heartbeat", daemon=True)
        self._thread.start()
        self._beater.start()

    def close(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._beater):
            if thread is not None:
                thread.join(30)
        with contextlib.suppress(redis.RedisError):  # let the next scorer start at once
            self._client.delete(HEARTBEAT)
        self._client.close()

    # -- heartbeat -----------------------------------------------------------------------------------
    def _beat(self) -> bytes:
        return orjson.dumps({"pid": os.getpid(), "host": self.host, "ts": time.time(), "last_report_ts": self._last_report_ts,
                             "reports": self._reports, "events": self._scored_in_report, "backlog": self._backlog,
                             "accounts": self._scored_accounts, "generation": self.risk_table.generation})

    def _beat_loop(self) -> None:
        failing = False
        while not self._stop.wait(HEARTBEAT_EVERY_S):
            if self._failed:
                return  # no heartbeat: the replicas report the scorer down
            try:
                self._backlog = int(self._client.xlen(STREAM))
                self._client.set(HEARTBEAT, self._beat(), px=HEARTBEAT_TTL_MS)
            except redis.RedisError as exc:
                if not failing:
                    log.warning("scorer heartbeat: Redis unavailable (%s); retrying", exc)
                failing = True
                continue
            failing = False

    # -- scoring ------------------------------------------------------------------------------------
    def _run(self, replay: dict[str, Any] | None, indicators_database: str | None) -> None:
        try:
            self._score(replay, indicators_database)
        except Exception:
            log.exception("central scorer: scoring stopped")
            self._failed = True

    def _score(self, replay: dict[str, Any] | None, indicators_database: str | None) -> None:
        from distillguard.detect.scanner import Scanner  # numpy and the detectors: this process only

        watch = scorer_worker.indicator_watch(indicators_database) if indicators_database else None
        scanner = Scanner()
        scorer_worker.take_indicators(scanner, watch)  # loaded now, and reloaded within seconds of an import
        seen: set[str] = set()
        if replay is not None:
            self.replayed = scorer_worker.replay(scanner, replay, seen)
            log.info("central scorer rebuilt from the %d most recent events of the store", self.replayed)
        self._report(scanner)
        cadence = scorer_worker.ReportCadence(self.publish_every_s)
        dirty = False
        position = "0"  # first this consumer's pending entries (read before a crash, never acknowledged), then new ones
        failing = False
        while not self._stop.is_set():
            scorer_worker.take_indicators(scanner, watch)
            try:
                # RESP2: [[stream, [(id, fields), …]]]
                reply: Any = self._client.xreadgroup(GROUP, CONSUMER, {STREAM: position}, count=self.batch_size,
                                                     block=None if position == "0" else self.block_ms)
                entries = reply[0][1] if reply else []
                if entries:
                    self._consume(scanner, entries, seen)
                    dirty = True
                elif position == "0":
                    position = ">"
                else:
                    seen.clear()  # caught up: every entry older than the replay has come by
            except redis.RedisError as exc:
                if "NOGROUP" in str(exc):  # Redis lost its data: the stream and its group are gone
                    with contextlib.suppress(redis.RedisError):
                        self._client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
                        position = "0"
                        self._lost()
                        continue
                if not failing:
                    log.warning("central scorer: Redis unavailable (%s); retrying every second, the last decisions stay", exc)
                failing = True
                self._stop.wait(1.0)
                continue
            if failing:
                log.info("central scorer: Redis answers again; scoring resumes")
                failing = False
            if self._rebuild is not None and time.monotonic() >= self._rebuild[0]:
                self._rebuild_from_store(scanner, seen)
                dirty = True
            now = time.monotonic()
            if dirty and cadence.due(now, idle=not entries, behind=self._waiting >= BEHIND):
                cost, follows = self._report(scanner, recluster=cadence.recluster())
                cadence.reported(now, cost, scanner.cluster_cost_s, scanner.rescore_cost_s + follows)
                dirty = False
        if dirty:
            self._report(scanner)
        if watch is not None:
            watch.close()

    def _consume(self, scanner: Any, entries: list[tuple[bytes, dict[bytes, bytes]]], seen: set[str]) -> None:
        recent, recent_ids = self._recent, self._recent_ids
        for _, fields in entries:
            try:
                event = orjson.loads(fields[b"e"])
            except (KeyError, orjson.JSONDecodeError):
                self.malformed += 1
                continue
            if seen and event.get("request_id") in seen:
                seen.discard(event["request_id"])
                self.duplicates += 1
                continue
            scanner.update(event)
            self.consumed += 1
            ts, request_id = event.get("ts"), event.get("request_id")
            if isinstance(ts, str) and isinstance(request_id, str):
                recent.append((ts, request_id))
                recent_ids.add(request_id)
                if ts > self._checkpoint:
                    self._checkpoint = ts
        self._heap.counted(len(entries))
        self._forget_before(_shift(self._checkpoint, -2 * REBUILD_MARGIN_S))
        last = entries[-1][0]
        pipe = self._client.pipeline(transaction=False)
        pipe.xack(STREAM, GROUP, *[entry_id for entry_id, _ in entries])
        pipe.xtrim(STREAM, minid=_after(last), approximate=False)  # scored: what is left is the backlog
        pipe.xlen(STREAM)  # ... which the report cadence asks about (same round trip)
        self._waiting = int(pipe.execute()[-1])

    def _forget_before(self, ts: str) -> None:
        recent, recent_ids = self._recent, self._recent_ids
        while recent and recent[0][0] < ts:
            recent_ids.discard(recent.popleft()[1])

    def _lost(self) -> None:
        """The stream and its group were gone: schedule the rebuild from the store (see the module docstring)."""
        self.stream_losses += 1
        since = _shift(self._checkpoint, -REBUILD_MARGIN_S)
        if self.database is None:
            log.error("central scorer: the stream and its consumer group were gone (Redis lost its data); events that "
                      "were in it are not scored (no store to rebuild from)")
            return
        log.warning("central scorer: the stream and its consumer group were gone (Redis restarted without persistence, "
                    "flushed or failed over); recreated them, and in %g s the store's events since %s are scored",
                    REBUILD_DELAY_S, since)
        self._rebuild = (time.monotonic() + REBUILD_DELAY_S, since)

    def _rebuild_from_store(self, scanner: Any, seen: set[str]) -> None:
        """Score the store's events since the checkpoint that this scorer has not scored (logged; store errors too)."""
        from distillguard.store.engine import make_engine
        from distillguard.store.risk import RiskStore, recent_events

        assert self._rebuild is not None and self.database is not None
        since = self._rebuild[1]
        self._rebuild = None
        engine = make_engine(self.database)
        taken = skipped = 0
        try:
            upto = RiskStore(engine).last_event_seq()
            max_age_s = time.time() - dt.datetime.fromisoformat(since).timestamp()
            for line in recent_events(engine, upto_seq=upto, max_events=self.rebuild_max_events, max_age_s=max_age_s):
                event = orjson.loads(line)
                request_id = event.get("request_id")
                if request_id in self._recent_ids or request_id in seen:
                    skipped += 1
                    continue
                scanner.update(event)
                if isinstance(request_id, str):
                    seen.add(request_id)  # its copy may still come through the new stream
                taken += 1
        except Exception as exc:  # what was rebuilt stays scored; the rest is lost to scoring (it is in the log)
            log.error("central scorer: rebuilding from the store stopped after %d events (%s: %s)", taken,
                      type(exc).__name__, exc)
        finally:
            engine.dispose()
        self.rebuilt += taken
        log.warning("central scorer: scored %d events from the store that the lost stream held or never got "
                    "(%d already scored, skipped)", taken, skipped)

    def _report(self, scanner: Any, *, recluster: bool = True) -> tuple[float, float]:
        """Report, hand it to the engine; the CPU seconds it took (this thread's), and those of them publishing the
        risk table and settling the heap (whose cost, like re-scoring's, follows the accounts updated since the last
        report: the changed entries, the objects made since the last settle)."""
        started = time.thread_time()
        report = scanner.report(recluster=recluster)
        self._scored_in_report = scanner.events
        self._scored_accounts = len(report["accounts"])
        try:
            self.on_report(report)
        except Exception:
            log.exception("central scorer: applying a report failed")
        publishing = time.thread_time()
        try:
            # bounded per report; Redis errors are logged there and retried next time
            self.risk_table.publish(report["accounts"], scanner.rebuilt)
        except Exception:
            log.exception("central scorer: publishing the risk table failed")
        publishing = time.thread_time() - publishing
        self._reports += 1
        self._last_report_at = time.monotonic()
        self._last_report_ts = time.time()
        settling = time.thread_time()
        self._heap.settle()  # after the report: its entries and the state it read are long-lived
        done = time.thread_time()
        return done - started, publishing + done - settling


def _shift(ts: str, seconds: float) -> str:
    """An event time ``seconds`` later (or earlier), in the same ISO 8601 form (so it compares as a string)."""
    return format_ts(dt.datetime.fromisoformat(ts).timestamp() + seconds)


def run_scorer(settings: Settings, stop: threading.Event) -> None:
    """Run the fleet's scorer until ``stop`` is set (the command sets it on SIGTERM or SIGINT)."""
    from distillguard.policy.engine import PolicyEngine
    from distillguard.state.notify import RedisNotifier
    from distillguard.store.registry import Registry

    if settings.state == "memory":
        raise UsageError("distillguard scorer is the central scorer of a fleet: it needs state: redis://host:port/db in the "
                         "configuration (with state: memory each gateway runs its own scorer; docs/deploy.md)")
    if not settings.detection.online:
        raise UsageError("detection.online is false: there is nothing to score (set it to true, or do not run the scorer)")
    if settings.detection.scorer != "central":
        log.warning("detection.scorer is %r in this configuration: replicas with this setting score their own traffic and "
                    "send nothing to this scorer (set detection.scorer: central for the fleet)", settings.detection.scorer)
    registry = Registry(settings.database, timeout_s=settings.database_timeout_s)
    links: list[CentralScorer] = []

    def link(on_report: ReportCallback) -> CentralScorer:
        links.append(CentralScorer(on_report, settings.state))
        return links[-1]

    notifier = RedisNotifier(settings.state, WRITER_ID, timeout_s=max(1.0, settings.state_timeout_s))
    # It serves no requests: of each report it needs only what goes to the risk snapshot (every account's entry goes to
    # the risk table in Redis), so the previous report's other entries are not kept while the scanner builds the next.
    engine = PolicyEngine(settings, registry=registry, notifier=notifier, scorer=link, hold_unflagged=False)
    scorer = links[0]
    scorer.database = settings.database  # to rebuild from if Redis loses the stream
    scorer.rebuild_max_events = max(settings.detection.replay_max_events, 1000)
    try:
        scorer.claim()
        engine.start()  # loads overrides and the snapshot, then starts the scorer with the store's replay and indicators
        log.info("distillguard scorer: consuming %s (group %s) on %s; decisions go to the risk snapshot", STREAM, GROUP,
                 settings.state.split("@")[-1])
        while not stop.wait(1.0):
            if scorer.failed:
                raise RuntimeError("the central scorer stopped scoring (see the log above)")
    finally:
        engine.close()
        registry.close()
        log.info("distillguard scorer stopped: %d stream events scored, %d skipped as already replayed, %d malformed",
                 scorer.consumed, scorer.duplicates, scorer.malformed)


def scorer_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging(settings.log_level, settings.log_format)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run_scorer(settings, stop)
    return 0
