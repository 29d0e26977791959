"""The lossless event sink: batched writes off the hot path, spill to disk, replay.

``submit`` is a ``deque.append`` (atomic under the GIL, no lock, no I/O), so the
gateway pays well under a microsecond per event. A writer thread drains the
queue in batches into the database. When the database fails, a batch goes to a
JSONL spill file (fsync'd) instead; spill files are replayed into the database
once it answers again, including files left by a previous process.

The queue is bounded in every state: a second thread (the overflow guard) spills
whatever lies above the low-water mark (half the high-water mark) straight to
disk, whatever the writer is doing (a slow insert, a replay), and the writer
replays spill files only while the queue is at or below the low-water mark, one
file at a time. While the store is down or stalled the guard spills the whole
queue every ``flush_interval_s``, so a SIGKILL during an outage loses only what
arrived since. So the queue stays under the high-water mark unless arrivals
during one spill write exceed the gap between the two marks (10,000 events by
default), or the disk refuses spills too. When even the spill file cannot be written
(disk full), the batch stays in memory and is retried: an event is never
dropped silently, and ``stats`` says where every event is.

A store that hangs instead of failing is treated like a failed one: every
store call has a deadline (``timeout_s``, see ``engine.py``), ``stats`` reports
the store as not OK as soon as a write has been waiting longer than
``stall_after_s`` (so ``/readyz`` says so while the write is still blocked), and
``close`` spills whatever is left without asking a store that is known to be
down, so that shutdown finishes within its grace period.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from distillguard.events import format_ts
from distillguard.store import schema
from distillguard.store.engine import DEFAULT_TIMEOUT_S, make_engine

__all__ = ["EventSink", "event_row"]

log = logging.getLogger("distillguard.store.sink")


def _encode(event: dict[str, Any]) -> bytes:
    """One event as JSON. orjson writes at most 254 levels of nesting; a deeper event (a client's odd field copied in)
    falls back to the standard library, whose limit is the interpreter's recursion limit, so it is still kept."""
    try:
        return orjson.dumps(event)
    except orjson.JSONEncodeError:
        return json.dumps(event, default=str, ensure_ascii=False).encode()


def _row(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_id": event["request_id"],
        "ts": event["ts"],
        "account_id": event.get("account_id"),
        "endpoint": event.get("endpoint", ""),
        "body": _encode(event).decode(),
    }


event_row = _row  # the events table's row for one event (the importer writes exactly what the sink writes)


class EventSink:
    """Background, batched, lossless writer of events v1 into the store."""

    def __init__(
        self,
        database_url: str,
        spill_dir: str | os.PathLike[str],
        *,
        batch_size: int = 1000,
        flush_interval_s: float = 0.05,
        high_water: int = 20_000,  # ~30-60 MB of queued events; the queue is kept under it (docs/store.md)
        low_water: int | None = None,  # above it the guard spills and the writer does not replay; default high_water // 2
        retry_interval_s: float = 2.0,
        engine: Engine | None = None,
        retention_days: int | None = None,
        purge_interval_s: float = 3600.0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        stall_after_s: float = 2.0,
    ) -> None:
        self.database_url = database_url
        self.engine = engine or make_engine(database_url, timeout_s=timeout_s)
        self.stall_after_s = stall_after_s
        self._write_started: float | None = None  # monotonic start of the store call in progress, if any
        schema.create_tables(self.engine)
        self.spill_dir = Path(spill_dir)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.high_water = high_water
        self.low_water = high_water // 2 if low_water is None else low_water
        if not 0 <= self.low_water < high_water:
            raise ValueError(f"event sink: low_water ({self.low_water}) must be >= 0 and below high_water ({high_water})")
        self._lock = threading.Lock()  # the writer and the overflow guard both spill: counters and _held
        self._pressure = threading.Event()  # set by submit when the queue passes the low-water mark
        self._guard: threading.Thread | None = None
        self.retry_interval_s = retry_interval_s
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._held: list[list[dict[str, Any]]] = []  # batches neither stored nor spilled (disk full)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._spill_seq = itertools.count()
        self._next_retry = 0.0
        self._next_spill_complaint = 0.0
        self.retention_days = retention_days
        self.purge_interval_s = purge_interval_s
        self._next_purge = time.monotonic() + min(60.0, purge_interval_s)  # first purge soon after start
        self.purged = 0
        self.store_ok = True
        self.written = 0
        self.spilled = 0
        self.replayed = 0
        self.errors = 0
        self.submitted = 0
        backend = self.engine.url.get_backend_name()
        self._insert = sqlite_insert if backend == "sqlite" else pg_insert if backend.startswith("postgres") else insert

    # -- hot path -------------------------------------------------------------
    def submit(self, event: dict[str, Any]) -> None:
        """Queue one event; never blocks, never drops."""
        self._queue.append(event)
        self.submitted += 1
        if len(self._queue) > self.low_water and not self._pressure.is_set():
            self._pressure.set()  # wake the overflow guard; a flag read otherwise

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="distillguard-event-sink", daemon=True)
            self._thread.start()
        if self._guard is None:
            self._guard = threading.Thread(target=self._guard_queue, name="distillguard-event-overflow", daemon=True)
            self._guard.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Drain everything: queue → store, or → spill file when the store is down."""
        self._stop.set()
        self._pressure.set()
        if self._guard is not None:
            self._guard.join(timeout_s)
            self._guard = None
        if self._thread is not None:
            self._thread.join(timeout_s)  # a blocked write ends within the store deadline, then the thread stops
            self._thread = None
        if not self.store_ok:  # known down or hung: spill the rest now rather than wait for the store once more
            self._next_retry = float("inf")
        self._drain_all(final=True)
        self.engine.dispose()

    def store_problem(self) -> str | None:
        """Why the store is not taking events right now, in words (``/readyz``), or ``None`` when it is."""
        started = self._write_started
        if started is not None and time.monotonic() - started > self.stall_after_s:
            return (f"event store not answering (a write has been waiting {time.monotonic() - started:.0f}s; "
                    "events will spill to disk)")
        if not self.store_ok:
            return "event store unavailable (events are spilling to disk)"
        return None

    @property
    def stats(self) -> dict[str, Any]:
        problem = self.store_problem()
        return {
            "queued": len(self._queue),
            "held_in_memory": sum(len(b) for b in self._held),
            "submitted": self.submitted,
            "written": self.written,
            "spilled": self.spilled,
            "replayed": self.replayed,
            "purged": self.purged,
            "errors": self.errors,
            "store_ok": problem is None,
            "store_problem": problem,
            "spill_files": len(self._spill_files()),
        }

    # -- writer thread ----------------------------------------------------------
    def _run(self) -> None:
        self._replay_spill()
        while not self._stop.is_set():
            if self._held and time.monotonic() < self._next_retry:
                # Neither store nor spill took the last batch (disk full): back off instead of spinning.
                self._stop.wait(min(1.0, self._next_retry - time.monotonic()))
                continue
            if self.retention_days is not None and time.monotonic() >= self._next_purge:
                self.purge_expired()
            if not self._queue and not self._held:
                self._stop.wait(self.flush_interval_s)
                if self._spill_files() and (self.store_ok or time.monotonic() >= self._next_retry):
                    self._replay_spill()
                continue
            self._drain_all(final=False)

    def _guard_queue(self) -> None:
        """The overflow guard: spill everything above the low-water mark at once (everything, while the store is down or
        stalled), whatever the writer is doing.

        A separate thread because the writer can be stuck for seconds in an insert
        (a slow store: up to its deadline) or a replay; the queue must not grow
        meanwhile. When spilling fails too (disk full), batches are held and
        retried, and only then can memory grow (docs/store.md).
        """
        while not self._stop.is_set():
            self._pressure.wait(self.flush_interval_s)
            self._pressure.clear()
            # With the store down or stalled nothing in memory is on its way to it: spill it all, so that a SIGKILL
            # during an outage loses at most the last flush interval's events, not everything since the outage began.
            keep = self.low_water if self.store_problem() is None else 0
            while not self._stop.is_set() and len(self._queue) > keep:
                batch = self._take_batch(min(self.batch_size, len(self._queue) - keep))
                if batch:
                    self._spill(batch)
                if self._held:  # the disk refuses too: back off, the writer retries the held batches
                    self._stop.wait(self.retry_interval_s)
                    break

    def _take_batch(self, size: int | None = None) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        queue = self._queue
        limit = self.batch_size if size is None else size
        while len(batch) < limit:
            try:
                batch.append(queue.popleft())  # the guard takes from the same queue: emptiness is found here
            except IndexError:
                break
        return batch

    def _drain_all(self, *, final: bool) -> None:
        with self._lock:
            held, self._held = self._held, []
        for i, batch in enumerate(held):
            self._deliver(batch)
            if self._held and not final:  # still nowhere to put it: keep the rest, in order, for the next try
                with self._lock:
                    self._held.extend(held[i + 1 :])
                return
        while self._queue:
            self._deliver(self._take_batch())
            if not final and (self._stop.is_set() or self._held):
                break
        if final and self._held:
            log.error("%d events could be neither stored nor spilled at shutdown; writing them to stderr-adjacent dump",
                      sum(len(b) for b in self._held))
            self._last_resort_dump()

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        """Store a batch, or spill it, or hold it in memory; exactly one of the three."""
        overloaded = len(self._queue) > self.high_water
        store_ready = self.store_ok or time.monotonic() >= self._next_retry
        if store_ready and not overloaded:
            try:
                self._write_rows([_row(e) for e in batch])
            except Exception as exc:
                with self._lock:
                    self.errors += 1
                if self.store_ok:
                    log.error("event store write failed (%s); spilling to %s until it recovers", exc, self.spill_dir)
                self.store_ok = False
                self._next_retry = time.monotonic() + self.retry_interval_s
            else:
                self.written += len(batch)
                if not self.store_ok:
                    log.warning("event store recovered; replaying spill files")
                self.store_ok = True
                if self._spill_files():
                    self._replay_spill()
                return
        self._spill(batch)

    def purge_expired(self, now: float | None = None) -> int:
        """Delete stored events older than ``retention_days`` (privacy.retention_days); returns how many.

        Runs on the writer thread, so it never competes with the hot path, and
        in one statement per call: ``ts`` is stored in one fixed UTC format,
        so text order is time order.
        """
        self._next_purge = time.monotonic() + self.purge_interval_s
        if self.retention_days is None:
            return 0
        cutoff = format_ts((time.time() if now is None else now) - self.retention_days * 86400)
        try:
            with self.engine.begin() as conn:
                deleted = conn.execute(schema.events.delete().where(schema.events.c.ts < cutoff)).rowcount or 0
        except Exception as exc:
            log.warning("retention purge deferred (%s)", exc)
            return 0
        if deleted:
            self.purged += deleted
            log.info("retention: deleted %d events older than %d days (before %s)", deleted, self.retention_days, cutoff)
        return int(deleted)

    def _write_rows(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        statement = self._insert(schema.events)
        if hasattr(statement, "on_conflict_do_nothing"):
            statement = statement.on_conflict_do_nothing(index_elements=["request_id"])
        self._write_started = time.monotonic()
        try:
            with self.engine.begin() as conn:
                conn.execute(statement, rows)
        finally:
            self._write_started = None

    # -- spill and replay ------------------------------------------------------------
    def _spill_files(self) -> list[Path]:
        try:
            return sorted(self.spill_dir.glob("spill-*.jsonl"))
        except OSError:
            return []

    def _spill(self, batch: list[dict[str, Any]]) -> None:
        name = f"spill-{time.time_ns()}-{os.getpid()}-{next(self._spill_seq)}.jsonl"
        tmp = self.spill_dir / (name + ".part")
        try:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:
                handle.write(b"".join(_encode(e) + b"\n" for e in batch))
                handle.flush()
                os.fsync(handle.fileno())
            tmp.rename(self.spill_dir / name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()  # a half-written part file would eat the space we are waiting for
            with self._lock:
                self.errors += 1
                now = time.monotonic()
                if now >= self._next_spill_complaint:
                    log.error("cannot spill %d events to %s (%s); holding %d events in memory and retrying every %.1fs",
                              len(batch), self.spill_dir, exc, len(batch) + sum(len(b) for b in self._held),
                              self.retry_interval_s)
                    self._next_spill_complaint = now + 30.0
                self._held.append(batch)
                self._next_retry = time.monotonic() + self.retry_interval_s
            return
        with self._lock:
            self.spilled += len(batch)

    def _replay_spill(self) -> None:
        """Replay spill files into the store, oldest first, one file at a time while the queue is at or below the
        low-water mark: live events come first, and replaying never lets the queue grow past its marks."""
        for path in self._spill_files():
            if len(self._queue) > self.low_water:
                return
            try:
                events = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
                for start in range(0, len(events), self.batch_size):
                    self._write_rows([_row(e) for e in events[start : start + self.batch_size]])
            except Exception as exc:
                self.store_ok = False
                self._next_retry = time.monotonic() + self.retry_interval_s
                log.warning("replay of %s deferred: %s", path.name, exc)
                return
            path.unlink()
            self.replayed += len(events)
            self.store_ok = True
            log.info("replayed %d spilled events from %s", len(events), path.name)

    def _last_resort_dump(self) -> None:
        fallback = Path(os.environ.get("TMPDIR", "/tmp")) / f"distillguard-unsaved-{os.getpid()}.jsonl"
        for batch in self._held:
            try:
                with open(fallback, "ab") as handle:
                    handle.write(b"".join(_encode(e) + b"\n" for e in batch))
                log.error("wrote %d unsaved events to %s", len(batch), fallback)
                self.spilled += len(batch)
            except OSError as exc:
                log.critical("LOST %d events: store, spill dir and %s all failed (%s)", len(batch), fallback, exc)
        self._held = []
