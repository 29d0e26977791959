"""The online scorer: the same ``Scanner`` as `scan`, in a worker process fed by the gateway.

A separate process (spawned, so the gateway never imports numpy, scikit-learn
or datasketch, and never competes with detection for the GIL). The gateway
side appends events to a deque (O(1)); a pump thread ships them in batches
over a pipe; the worker updates the scanner and publishes the full report
back at a fixed cadence; a reader thread swaps the new risk table in.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["OnlineScorer"]

log = logging.getLogger("distillguard.policy.online")


def _worker(inbox: Any, outbox: Any, publish_every_s: float) -> None:
    from distillguard.detect.scanner import Scanner

    scanner = Scanner()
    last = time.monotonic()
    dirty = False
    while True:
        if inbox.poll(0.05):
            batch = inbox.recv()
            if batch is None:
                break
            for event in batch:
                scanner.update(event)
            dirty = True
            outbox.send(("ack", len(batch)))
        now = time.monotonic()
        if dirty and now - last >= publish_every_s:
            report = scanner.report()
            outbox.send(("report", report))
            last, dirty = now, False
    outbox.send(("report", scanner.report()))
    outbox.send(("stopped", None))


class OnlineScorer:
    def __init__(self, on_report: Callable[[dict[str, Any]], None], *, publish_every_s: float = 1.0, batch_size: int = 500) -> None:
        self.on_report = on_report
        self.publish_every_s = publish_every_s
        self.batch_size = batch_size
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._stop = threading.Event()
        self.sent = 0
        self.acknowledged = 0
        self.reports = 0
        self.scored_in_report = 0
        self._process: Any = None

    @property
    def backlog(self) -> int:
        """Events observed but not yet scored by the worker."""
        return len(self._queue) + (self.sent - self.acknowledged)

    def submit(self, event: dict[str, Any]) -> None:
        self._queue.append(event)

    def start(self) -> None:
        context = mp.get_context("spawn")
        parent_in, child_out = context.Pipe(duplex=False)
        child_in, parent_out = context.Pipe(duplex=False)
        self._to_worker, self._from_worker = parent_out, parent_in
        self._process = context.Process(target=_worker, args=(child_in, child_out, self.publish_every_s), daemon=True,
                                        name="distillguard-online-scorer")
        self._process.start()
        self._pump = threading.Thread(target=self._pump_loop, name="distillguard-scorer-pump", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="distillguard-scorer-reader", daemon=True)
        self._pump.start()
        self._reader.start()

    def _pump_loop(self) -> None:
        queue = self._queue
        while not self._stop.is_set() or queue:
            if not queue:
                time.sleep(0.02)
                continue
            batch: list[Any] = []
            while queue and len(batch) < self.batch_size:
                batch.append(queue.popleft())
            try:
                self._to_worker.send(batch)
                self.sent += len(batch)
            except (OSError, ValueError) as exc:
                log.error("online scorer is gone (%s); %d events not scored online (they are in the event log)", exc, len(batch))
                return
        with contextlib.suppress(OSError, ValueError):  # the worker may already be gone at shutdown
            self._to_worker.send(None)

    def _read_loop(self) -> None:
        while True:
            try:
                kind, payload = self._from_worker.recv()
            except (EOFError, OSError):
                return
            if kind == "ack":
                self.acknowledged += payload
            elif kind == "report":
                self.reports += 1
                self.scored_in_report = self.acknowledged
                self.on_report(payload)
            elif kind == "stopped":
                return

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Block until every submitted event has been scored and a report published after it (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.backlog == 0 and self.scored_in_report == self.acknowledged:
                return True
            time.sleep(0.02)
        return False

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._process is None:
            return
        self._pump.join(timeout_s)
        self._reader.join(timeout_s)
        self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.terminate()
