"""The online scorer's worker process, and the pipe protocol both sides speak.

Run as ``python -m distillguard.scorer_worker INBOX_FD OUTBOX_FD PUBLISH_EVERY_S``
by :class:`distillguard.policy.online.OnlineScorer`, which passes it the two
pipe ends with ``subprocess.Popen(pass_fds=...)`` — not with
``multiprocessing``, whose spawn start method also starts a resource-tracker
process (~12 MB RSS) beside the gateway.

This module lives at the top of the package, not under ``policy/``: importing
anything under ``distillguard.policy`` imports that package (the policy engine
and the pydantic settings), which would add ~17 MB to the worker for nothing.
At import time it needs only the standard library, so the gateway can import
it for the protocol; the ``Scanner`` (numpy and all) is imported in ``main``.

Protocol: each message is an 8-byte big-endian length and a pickle. The
gateway sends lists of events and finally ``None``; the worker answers
``("ack", n)`` per batch, ``("report", report)`` at most every
``PUBLISH_EVERY_S`` seconds while events arrive, and a last report and
``("stopped", None)`` on ``None``. The worker stops on ``None`` or on end of
file on its inbox, so it exits when the gateway closes the pipe or dies.

Replay: when the environment variable ``DISTILLGUARD_SCORER_REPLAY`` holds a
JSON object ``{"database", "upto_seq", "max_events", "max_age_s"}``, the
worker first feeds the scanner the store's most recent events up to that
sequence number (:func:`distillguard.store.risk.recent_events`), then answers
``("replayed", n)`` and a report, and only then reads its inbox (live events
wait in the pipe meanwhile). An environment variable, not an argument: the
database URL may hold a password, and arguments are visible to every user.

Shared indicators: when ``DISTILLGUARD_SCORER_INDICATORS`` holds a database
URL (the gateway's store, docs/indicators.md), the worker watches its imported
indicators (:class:`distillguard.store.indicators.IndicatorWatch`): loaded at
start when there are any, and reloaded by the watch's own thread within
``CHECK_EVERY_S`` of an ``indicators import`` (the scoring loop never waits for
the store); the scanner matches them (``shared_indicators`` evidence) from the
next batch on.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pickle
import select
import signal
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["CLUSTER_SHARE", "INDICATORS_ENV", "REPLAY_ENV", "REPORT_SHARE", "HeapSettler", "ReportCadence", "frame", "indicator_watch", "main",
           "recv", "replay", "scoring_view", "send", "send_frame", "settle_heap", "take_indicators"]

_HEADER = struct.Struct("!Q")
REPLAY_ENV = "DISTILLGUARD_SCORER_REPLAY"
INDICATORS_ENV = "DISTILLGUARD_SCORER_INDICATORS"  # a database URL: its imported shared indicators are matched
REPORT_SHARE = 0.10  # reports beyond re-scoring the updated accounts may take at most this share of the scorer's time ...
# ... and clustering at most this (ReportCadence). 0.15 until clustering at 100,000 accounts cost half as much
# (detect/cohorts.py, stop 18: 4.9 -> 2.5 CPU-s in process): the interval between clusterings, cost × (1 / share − 1),
# is about what it was (28 -> 29 CPU-s there) and the CPU it saves goes to scoring events.
CLUSTER_SHARE = 0.08


class ReportCadence:
    """When the scorer reports, and when a report also re-clusters.

    A report's cost has three parts. Re-scoring the accounts updated since the
    last report (~45 µs each, more on a busy machine) is work that exists
    whenever the report comes: put a report off and it re-scores more accounts,
    so under steady load with mostly distinct accounts (100,000 accounts at
    5,000 events/s) it costs the same share of the scorer's time at any
    cadence. The rest — the pass over every account, the entries, the pooled
    scores, publication — grows with all the accounts held, and clustering
    (at 100,000 accounts with hydras of hundreds of heads one took ~12 CPU-s)
    grows much faster.

    So a report is due ``every_s`` after the last one *and* once the scorer has
    spent on updates enough CPU time that the last report's cost *beyond its
    re-scoring* is at most ``REPORT_SHARE`` of the whole; clustering likewise
    keeps to ``CLUSTER_SHARE`` (a report between two clusterings reuses the
    last clusters). Budgeting the re-scoring too — as this class did before —
    fed on itself under steady load: a late report re-scores more accounts,
    costs more, and puts the next one off further (measured in process,
    150,000 events over 63,584 accounts at 5,000/s: reports at 1, 5.6 and 23 s,
    the last one 8 CPU-s long, ~36,000 events waiting behind it and decisions
    ~20 s old). While the scorer is *behind* (the caller says so: events
    waiting well beyond a batch, e.g. a drain after an outage), the whole
    report is budgeted as before, so catching up is not slowed by reports that
    the next one would redo. CPU time, not wall time: on a busy machine the
    scorer gets a fraction of a core, and a wall-clock budget would let reports
    eat it all. When the scorer is idle (nothing waiting) a due report is never
    held back.
    """

    def __init__(self, every_s: float, cpu_clock: Callable[[], float] = time.thread_time) -> None:
        self.every_s = every_s
        self.cpu_clock = cpu_clock
        self.next_report = time.monotonic() + every_s
        self._report_mark = self._cluster_mark = cpu_clock()
        self._report_need = self._steady_need = self._cluster_need = 0.0

    def due(self, now: float, *, idle: bool = False, behind: bool = False) -> bool:
        if now < self.next_report:
            return False
        need = self._report_need if behind else self._steady_need
        return idle or self.cpu_clock() - self._report_mark >= need

    def recluster(self) -> bool:
        return self.cpu_clock() - self._cluster_mark >= self._cluster_need

    def reported(self, started: float, cost_s: float, cluster_cost_s: float, rescore_cost_s: float = 0.0) -> None:
        """A report begun at ``started`` (monotonic) cost ``cost_s`` CPU seconds, ``cluster_cost_s`` of them clustering
        and ``rescore_cost_s`` on what follows the accounts updated since the last one: their evidence and entries
        (``Scanner.rescore_cost_s``) and, where the caller counts it in ``cost_s``, their publication and the heap
        settle after it (the objects made since the last one)."""
        mark = self.cpu_clock()
        self.next_report = started + self.every_s
        self._report_mark = mark
        spread = 1.0 / REPORT_SHARE - 1.0
        self._report_need = (cost_s - cluster_cost_s) * spread
        self._steady_need = max(0.0, cost_s - cluster_cost_s - rescore_cost_s) * spread
        if cluster_cost_s > 0:
            self._cluster_mark = mark
            self._cluster_need = cluster_cost_s * (1.0 / CLUSTER_SHARE - 1.0)


def settle_heap() -> None:
    """Collect the cyclic garbage made since the last call, then put everything alive out of the collector's reach
    (``gc.freeze``); called after each report.

    A scorer's state is millions of small, long-lived objects (every account's counters, sets and report entry),
    and each of CPython's full collections walks all of them: the more accounts, the more of the scorer's time.
    At 70,000 accounts (the bench's spread, 200,000 events, in one process on the shared machine, 2026-12-07)
    decoding and updating ran at 5,068 events per CPU-s, and at 7,431 with a freeze every 5,000 events.

    What a freeze does not do: frozen objects are still freed by reference counting when dropped (a replaced
    report entry, a pruned set), so replacing account state does not grow the permanent generation (its count
    follows the live objects: tests/test_scorer_heap.py). But the collector never looks at a frozen object again,
    so a reference cycle that is already garbage when it is frozen — one made since the last report and not yet
    collected, e.g. an exception kept with its traceback, a closure that refers to itself — would be held for the
    rest of the process. Hence the ``gc.collect()`` first: it walks only what is not frozen, i.e. what the last
    report and the updates since made — a few per cent of a report's CPU (bench/heap_freeze.py). A cycle that becomes
    garbage *after* its freeze is still never collected; the detectors' state and the reports hold no cycles.
    """
    gc.collect()
    gc.freeze()


class HeapSettler:
    """:func:`settle_heap` after each report *and* every ``every`` events scored since the last settle.

    Between two settles, CPython's collections walk every object made since the last one; at 100,000 accounts the
    updates alone make ~8 long-lived objects an event, and under steady load a report may be several seconds of
    events away. Measured in process (``Scanner.update`` over 60,000 events of the central-scorer bench's spread,
    loaded shared machine, 2026-12-07): the collector took 1.7–2.4 of 7.7–10.9 CPU-s with the default collector
    and 0.8 of 7.4–7.6 settling every 5,000 events. The settle collects before it freezes, as after a report.
    """

    def __init__(self, every: int = 5_000) -> None:
        self.every = every
        self._since = 0

    def counted(self, events: int) -> None:
        """``events`` more were scored: settle once ``every`` have been since the last settle."""
        self._since += events
        if self._since >= self.every:
            self.settle()

    def settle(self) -> None:
        settle_heap()
        self._since = 0


def scoring_view(event: dict[str, Any]) -> dict[str, Any]:
    """The event without what no detector reads: the answer's text and the contents of earlier non-user turns.

    The answer is a third of a typical event's JSON and conversation history grows with every turn, while the
    detectors read the answer's token counts, the user turns, and only the first and last message whole
    (tests/test_scorer_stream_view.py checks that a scan of these views equals a scan of the full events). Both
    scorers receive these: the fleet's central one through the Redis stream (decoding time and Redis memory
    saved) and a gateway's child through its pipe, where the views wait, pickled, while the child is behind —
    ~380 bytes an event instead of a ~4 KB event dict in the gateway (bench/RESULTS.md, "All-on RSS"). The
    event log keeps the whole event. A detector that starts reading another field must keep it here.
    """
    view = dict(event)
    response = event.get("response")
    if isinstance(response, dict) and "text" in response:
        view["response"] = {k: v for k, v in response.items() if k != "text"}
    request = event.get("request")
    messages = request.get("messages") if isinstance(request, dict) else None
    if isinstance(request, dict) and isinstance(messages, list) and len(messages) > 2:
        last = len(messages) - 1
        trimmed = [m if i in (0, last) or not isinstance(m, dict) or m.get("role") == "user" or "content" not in m
                   else {**m, "content": ""} for i, m in enumerate(messages)]
        view["request"] = {**request, "messages": trimmed}
    return view


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            raise EOFError("pipe closed")
        got += n
    return buffer


def frame(message: Any) -> bytes:
    """One message as it goes on the pipe (header and pickle), to be written later with :func:`send_frame`."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def send_frame(fd: int, data: bytes) -> None:
    """Write one framed message (blocking). Only one thread may send on a given fd."""
    _write_all(fd, data)


def send(fd: int, message: Any) -> None:
    """Write one message (blocking). Only one thread may send on a given fd."""
    send_frame(fd, frame(message))


def recv(fd: int) -> Any:
    """Read one message (blocking); ``EOFError`` when the other end closed the pipe."""
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    return pickle.loads(_read_exact(fd, size))


def serve(inbox: int, outbox: int, publish_every_s: float) -> None:
    from distillguard.detect.scanner import Scanner

    database = os.environ.pop(INDICATORS_ENV, None)
    watch = indicator_watch(database) if database else None
    scanner = Scanner()
    take_indicators(scanner, watch)
    spec = os.environ.pop(REPLAY_ENV, None)
    if spec:
        send(outbox, ("replayed", replay(scanner, json.loads(spec))))
        send(outbox, ("report", scanner.report()))
    poller = select.poll()  # not select.select: the fd numbers are the gateway's and may exceed FD_SETSIZE
    poller.register(inbox, select.POLLIN)
    cadence = ReportCadence(publish_every_s, time.process_time)
    heap = HeapSettler()
    dirty = False
    while True:
        # Block until a batch arrives; once there is something to publish, only until it is due.
        timeout_ms = None if not dirty else max(0.0, (cadence.next_report - time.monotonic()) * 1000.0)
        ready = poller.poll(timeout_ms)
        if ready:
            take_indicators(scanner, watch)  # new indicators (loaded by the watch's thread) apply from this batch on
            try:
                batch = recv(inbox)
            except EOFError:  # the gateway closed the pipe without saying goodbye, or died
                break
            if batch is None:
                break
            for event in batch:
                scanner.update(event)
            heap.counted(len(batch))
            dirty = True
            send(outbox, ("ack", len(batch)))
        now = time.monotonic()
        if dirty and cadence.due(now, idle=not ready):
            started = time.process_time()
            send(outbox, ("report", scanner.report(recluster=cadence.recluster())))
            cadence.reported(now, time.process_time() - started, scanner.cluster_cost_s, scanner.rescore_cost_s)
            heap.settle()
            dirty = False
    send(outbox, ("report", scanner.report()))
    send(outbox, ("stopped", None))


def replay(scanner: Any, spec: dict[str, Any], seen: set[str] | None = None) -> int:
    """Feed the scanner the store's recent events (see the module docstring); how many it took. Store errors end the replay, logged.

    ``seen`` collects the replayed events' request ids (the central scorer skips them when the stream brings them again)."""
    import orjson

    from distillguard.store.engine import make_engine
    from distillguard.store.risk import recent_events

    n = 0
    engine = make_engine(spec["database"])
    try:
        for line in recent_events(engine, upto_seq=int(spec["upto_seq"]), max_events=int(spec["max_events"]),
                                  max_age_s=float(spec["max_age_s"])):
            event = orjson.loads(line)
            scanner.update(event)
            if seen is not None and event.get("request_id"):
                seen.add(event["request_id"])
            n += 1
    except Exception as exc:  # a scorer that replayed part of the log is still better than none: go on live
        print(f"distillguard scorer: replay from the store stopped after {n} events ({exc}); scoring live events only",
              file=sys.stderr)
    finally:
        engine.dispose()
    return n


def indicator_watch(database: str) -> Any:
    """An :class:`~distillguard.store.indicators.IndicatorWatch` on ``database`` (None when the store cannot be reached: logged)."""
    from distillguard.store.indicators import IndicatorWatch

    try:
        return IndicatorWatch(database, complain=lambda message: print(f"distillguard scorer: {message}", file=sys.stderr))
    except Exception as exc:  # scoring without them beats not scoring
        print(f"distillguard scorer: shared indicators not watched ({exc}); scoring without them", file=sys.stderr)
        return None


def take_indicators(scanner: Any, watch: Any) -> None:
    """Hand the scanner the store's indicators when they changed (the first call loads them, if there are any)."""
    if watch is None:
        return
    changed = watch.poll()
    if changed is not None:
        scanner.set_indicators(changed)
        print(f"distillguard scorer: matching {len(changed)} shared indicators (change counter {watch.version})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m distillguard.scorer_worker INBOX_FD OUTBOX_FD PUBLISH_EVERY_S", file=sys.stderr)
        return 2
    # Ctrl-C reaches the whole process group; the gateway decides when the worker stops (it closes the inbox).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(BrokenPipeError):  # the gateway is gone: nobody left to report to
        serve(int(args[0]), int(args[1]), float(args[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
