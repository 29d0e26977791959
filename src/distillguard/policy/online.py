"""The online scorer: the same ``Scanner`` as `scan`, in a worker process fed by the gateway.

A separate process (a fresh interpreter, so the gateway never imports numpy
or the detectors, and never competes with detection for the GIL), started
with ``subprocess.Popen`` rather than ``multiprocessing``, whose spawn start
method also starts a resource-tracker process that would sit beside the
gateway for nothing. The worker is :mod:`distillguard.scorer_worker`; the two
talk over a pair of pipes. The gateway side appends events to a deque (O(1)),
bounded by ``max_backlog``: past it new events are shed from scoring (counted
and logged by :class:`~distillguard.policy.shedding.ShedCounter`; they are in
the event log all the same). A pump thread takes them off the deque within
``linger_s`` and turns each batch into one pickled frame of the events'
:func:`~distillguard.scorer_worker.scoring_view`; a writer thread writes the
frames to the pipe. So while the worker is behind, what waits in the gateway
is ~380 bytes an event, not a ~4 KB event dict: a backlog of 50,000 events
held ~200 MB of the gateway's memory before (bench/RESULTS.md, "All-on RSS").
The worker updates the scanner and publishes the full report back at a fixed
cadence; a reader thread swaps the new risk table in. The worker exits on end of file of its inbox, so it goes
when the gateway closes the pipe or dies, and ``close()`` always reaps it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import queue as queues
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from distillguard import scorer_worker
from distillguard.policy.shedding import ShedCounter, Sheds

__all__ = ["OnlineScorer"]

log = logging.getLogger("distillguard.policy.online")


class OnlineScorer(Sheds):
    def __init__(self, on_report: Callable[[dict[str, Any]], None], *, publish_every_s: float = 1.0, batch_size: int = 500,
                 max_backlog: int = 50_000, linger_s: float = 0.02) -> None:
        self.on_report = on_report
        self.publish_every_s = publish_every_s
        self.batch_size = batch_size
        self.linger_s = linger_s  # an event waits at most about this long as a dict before the pump frames it
        self.max_backlog = max_backlog  # events waiting for the worker at most; more are shed from scoring (counted, logged)
        self.shedding = ShedCounter(log, "the scorer queue")
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._stop = threading.Event()
        self.sent = 0  # events written to the worker's pipe (by the writer thread only)
        self.framed = 0  # events the pump has framed for the writer (by the pump only; framed - sent are waiting as frames)
        self._frames: queues.SimpleQueue[tuple[bytes, int] | None] = queues.SimpleQueue()  # pump → writer; None: the last
        self.acknowledged = 0  # events the worker has scored
        self.reports = 0
        self.scored_in_report = 0  # events covered by the latest report (set before on_report is called with it)
        self.scored_accounts: int | None = None  # the engine holds this scorer's reports: it counts their accounts itself
        self._taken = 0  # events the pump has taken off the queue (counted *before* they leave it)
        self._applied = 0  # events covered by the latest report whose on_report call has returned
        self._failed = False
        self.last_report_at: float | None = None  # time.monotonic() when the latest report was applied
        self.replayed: int | None = None  # events replayed from the store at start (None: no replay, or not done yet)
        self._process: subprocess.Popen[bytes] | None = None
        self._to_worker = self._from_worker = -1

    @property
    def failed(self) -> bool:
        """The worker is gone (died, or its pipe broke): nothing new is scored until the gateway restarts."""
        return self._failed

    @property
    def backlog(self) -> int:
        """Events observed but not yet scored by the worker.

        Never under-counts, even while a batch is between the queue and the
        pipe: the pump adds a batch to ``_taken`` before popping it, and this
        reads ``acknowledged`` first, the queue next and ``_taken`` last, so a
        concurrent step of the pump or the reader can only make it too high.
        """
        acknowledged = self.acknowledged
        queued = len(self._queue)
        return queued + self._taken - acknowledged

    def submit(self, event: dict[str, Any]) -> None:
        if self._failed:  # with the worker gone the queue would grow forever; events are in the event log
            return
        if len(self._queue) + self.framed - self.sent >= self.max_backlog:
            self.shedding.add(1, "queue_full")
            return
        self._queue.append(event)

    def start(self, replay: dict[str, Any] | None = None, indicators_database: str | None = None) -> None:
        """Spawn the worker; ``replay`` (``scorer_worker.REPLAY_ENV``'s object) makes it rebuild from the store first, and
        ``indicators_database`` makes it match (and watch) that store's imported shared indicators (docs/indicators.md)."""
        inbox_r, inbox_w = os.pipe()
        outbox_r, outbox_w = os.pipe()
        # The worker must import the same modules as the gateway (its distillguard may come from a source
        # tree on sys.path): hand it our sys.path, in order, as multiprocessing's spawn did.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        env.pop(scorer_worker.REPLAY_ENV, None)
        env.pop(scorer_worker.INDICATORS_ENV, None)
        if indicators_database is not None:
            env[scorer_worker.INDICATORS_ENV] = indicators_database
        if replay is not None:
            env[scorer_worker.REPLAY_ENV] = json.dumps(replay)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "distillguard.scorer_worker", str(inbox_r), str(outbox_w), repr(float(self.publish_every_s))],
                pass_fds=(inbox_r, outbox_w), stdin=subprocess.DEVNULL, env=env,
            )
        except BaseException:
            os.close(inbox_w)
            os.close(outbox_r)
            raise
        finally:
            # The worker's ends: only the worker may hold them, or it would never see end of file
            # (and we would never see it exit).
            os.close(inbox_r)
            os.close(outbox_w)
        self._to_worker, self._from_worker = inbox_w, outbox_r
        self._pump = threading.Thread(target=self._pump_loop, name="distillguard-scorer-pump", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="distillguard-scorer-writer", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="distillguard-scorer-reader", daemon=True)
        self._pump.start()
        self._writer.start()
        self._reader.start()

    def _pump_loop(self) -> None:
        """Every ``linger_s``, frame whatever is queued for the writer, ``batch_size`` events a frame; on close at once.

        The wait is the stop event's, so closing (SIGTERM's grace period) does not wait out a ``linger_s``. Why 20 ms
        and not longer: fewer wake-ups cost less CPU per event (at 100 ms and ~1,800 events/s, ~5 µs less an event in
        the gateway's threads and ~8 µs in the worker), but with two all-on gateways driven at once the 100 ms one
        served ~13 % fewer requests at the same CPU per request, and a 5 ms one ~5 % more at ~5 % more CPU per request
        (bench/RESULTS.md, "All on: the scorer's hand-off and its wake-ups"); requests served are the target, so the
        cadence stayed.
        """
        queue = self._queue
        stop = self._stop
        while (not stop.is_set() or queue) and not self._failed:
            self.shedding.maybe_log()
            stop.wait(self.linger_s)  # returns at once once closing: what is queued is framed now
            # Only this thread pops, so the queue holds at least n events until we take them.
            while queue and not self._failed:
                n = min(len(queue), self.batch_size)
                self._taken += n  # before popping: see `backlog`
                data = scorer_worker.frame([scorer_worker.scoring_view(queue.popleft()) for _ in range(n)])
                self.framed += n
                self._frames.put((data, n))
        if self._failed:
            # Let go of what is queued; it stays counted in `backlog` (observed, never scored).
            n = len(queue)
            self._taken += n
            for _ in range(n):
                queue.popleft()
        else:
            self.shedding.maybe_log(force=True)
        self._frames.put(None)

    def _write_loop(self) -> None:
        """Write the pump's frames to the worker (blocking while it is behind), then its goodbye."""
        while (item := self._frames.get()) is not None:
            data, n = item
            if self._failed:
                continue  # let go: still counted in `backlog` (observed, never scored); `submit` takes no more
            try:
                scorer_worker.send_frame(self._to_worker, data)
            except (OSError, ValueError) as exc:
                self._fail(f"online scorer is gone ({exc}); events are no longer scored online (they are in the event log)")
                continue
            self.sent += n
        if not self._failed:
            with contextlib.suppress(OSError, ValueError):  # the worker may already be gone at shutdown
                scorer_worker.send(self._to_worker, None)

    def _fail(self, message: str) -> None:
        """The worker is gone: stop queueing (``submit`` drops events) and say so once."""
        if not self._failed:
            self._failed = True
            log.error(message)

    def _read_loop(self) -> None:
        try:
            while True:
                try:
                    kind, payload = scorer_worker.recv(self._from_worker)
                except (EOFError, OSError):
                    if not self._stop.is_set():
                        self._fail("online scorer exited unexpectedly; new events are not scored online (they are in the event log)")
                    return
                if kind == "ack":
                    self.acknowledged += payload
                elif kind == "report":
                    covered = self.acknowledged
                    self.reports += 1
                    self.scored_in_report = covered
                    try:
                        self.on_report(payload)
                    except Exception:
                        log.exception("online scorer: applying a report failed")
                    self._applied = covered
                    self.last_report_at = time.monotonic()
                elif kind == "replayed":
                    self.replayed = payload
                    log.info("online scorer rebuilt from the %d most recent events of the store", payload)
                elif kind == "stopped":
                    return
        finally:
            self._reap(5.0)

    def _reap(self, timeout_s: float) -> None:
        """Wait for the worker to exit (killing it after ``timeout_s``), so it never lingers as a zombie."""
        process = self._process
        if process is None:
            return
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("online scorer did not exit within %.0f s; killing it", timeout_s)
            process.kill()
            process.wait()

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Block until every submitted event has been scored and a report after it applied (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._failed:
            if self.backlog == 0 and self._applied == self.acknowledged:
                return True
            time.sleep(0.02)
        return False

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._process is None:
            return
        self._pump.join(timeout_s)  # frames what is queued
        self._writer.join(timeout_s)  # writes it, then sends the worker its goodbye
        self._reader.join(timeout_s)  # until the worker's last report and "stopped"
        self._reap(timeout_s)
        # The worker is gone, so no thread can still be blocked on a pipe; close our ends once they are done.
        self._pump.join(1.0)
        self._writer.join(1.0)
        self._reader.join(1.0)
        for name in ("_to_worker", "_from_worker"):
            fd = getattr(self, name)
            thread = self._writer if name == "_to_worker" else self._reader
            if fd >= 0 and not thread.is_alive():
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)
