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

With a write-ahead log (``wal.py``, on by default in ``serve``) ``submit`` also
appends the event's JSON line to a local file before returning, so that a
process killed outright loses nothing acknowledged: each queued event carries
its segment, the writer and the guard report every stored or spilled batch to
the log, and a segment is deleted once all of its events are. At start the
segments of dead processes are turned into spill files and replayed like any
other.

Gateways may share one spill directory. Each writes only files of its own
(``spill-<ns>-<pid>-<n>.jsonl``, written under ``.part`` and renamed when
complete), and a file is replayed by the one process that claims it with an
exclusive ``flock`` (released by the kernel if that process dies, so the file is
then claimed again); the others skip it.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
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

from distillguard.events import format_ts
from distillguard.store import schema
from distillguard.store.engine import DEFAULT_TIMEOUT_S, make_engine
from distillguard.store.wal import Segment, WriteAheadLog

__all__ = ["EventSink", "event_row"]

log = logging.getLogger("distillguard.store.sink")


def _encode(event: dict[str, Any]) -> bytes:
    """One event as JSON. orjson writes at most 254 levels of nesting; a deeper event (a client's odd field copied in)
    falls back to the standard library, whose limit is the interpreter's recursion limit, so it is still kept."""
    try:
        return orjson.dumps(event)
    except orjson.JSONEncodeError:
        return json.dumps(event, default=str, ensure_ascii=False).encode()


def _row(event: dict[str, Any], body: str | None = None) -> dict[str, Any]:
    return {
        "request_id": event["request_id"],
        "ts": event["ts"],
        "account_id": event.get("account_id"),
        "endpoint": event.get("endpoint", ""),
        "body": _encode(event).decode() if body is None else body,
    }


event_row = _row  # the events table's row for one event (the importer writes exactly what the sink writes)


def _insert_sql(backend: str) -> str | None:
    """The events insert in the driver's own SQL, skipping a ``request_id`` already stored; ``None``: another database
    (SQLAlchemy's generic insert, without the skip)."""
    marks = "?, ?, ?, ?, ?" if backend == "sqlite" else "%s, %s, %s, %s, %s" if backend.startswith("postgres") else None
    if marks is None:
        return None
    return (f"INSERT INTO {schema.events.name} (request_id, ts, account_id, endpoint, body) VALUES ({marks}) "
            "ON CONFLICT (request_id) DO NOTHING")


# One queued event: the event (with a write-ahead log only the four fields of its row beside the body: the line holds
# the rest, and ~1.5 KB per queued event instead of ~3.5 KB), its JSON line when the log has it (encoded once, on
# submit), and the write-ahead segment it is in (None without a log, or when the log could not take it).
_Item = tuple[dict[str, Any], bytes | None, Segment | None]


# The events insert's parameters, in its column order: request_id, ts, account_id, endpoint, body.
_Params = tuple[Any, Any, Any, Any, str]
_COLUMNS = ("request_id", "ts", "account_id", "endpoint", "body")


def _item_params(item: _Item) -> _Params:
    """One queued event's insert parameters, taken straight from it: no row dict per event on the writer thread, whose
    CPU is the gateway process's CPU."""
    fields, line = item[0], item[1]
    body = _encode(fields).decode() if line is None else line[:-1].decode()
    return (fields["request_id"], fields["ts"], fields.get("account_id"), fields.get("endpoint", ""), body)


def _row_params(row: dict[str, Any]) -> _Params:
    return (row["request_id"], row["ts"], row["account_id"], row["endpoint"], row["body"])


def _item_line(item: _Item) -> bytes:
    line = item[1]
    return _encode(item[0]) + b"\n" if line is None else line


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
        wal: WriteAheadLog | None = None,
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
        self._queue: collections.deque[_Item] = collections.deque()
        self._held: list[list[_Item]] = []  # batches neither stored nor spilled (disk full)
        self.wal = wal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._spill_seq = itertools.count()
        self._next_retry = 0.0
        self._next_spill_complaint = 0.0
        self._spilled_since_look = True  # (first write: look for what a previous process left)
        self._next_spill_look = 0.0
        self.retention_days = retention_days
        self.purge_interval_s = purge_interval_s
        self._next_purge = time.monotonic() + min(60.0, purge_interval_s)  # first purge soon after start
        self.purged = 0
        self.store_ok = True
        self.written = 0
        self.spilled = 0
        self.replayed = 0
        self.quarantined = 0  # spill-file lines that were not events, kept in <file>.bad
        self.errors = 0
        self.submitted = 0
        self._insert_sql = _insert_sql(self.engine.url.get_backend_name())

    # -- hot path -------------------------------------------------------------
    def submit(self, event: dict[str, Any]) -> None:
        """Queue one event; never blocks, never drops. With a write-ahead log, append it there first (one write)."""
        wal = self.wal
        if wal is None:
            self._queue.append((event, None, None))
        else:
            line = _encode(event) + b"\n"
            fields = {"request_id": event["request_id"], "ts": event["ts"], "account_id": event.get("account_id"),
                      "endpoint": event.get("endpoint", "")}
            self._queue.append((fields, line, wal.append(line)))
        self.submitted += 1
        if len(self._queue) > self.low_water and not self._pressure.is_set():
            self._pressure.set()  # wake the overflow guard; a flag read otherwise

    @property
    def durable_on_submit(self) -> bool:
        """With a write-ahead log, ``submit`` returns once the event's line is in the kernel (the gateway calls it
        before a response's last bytes go out, so a kill cannot lose an acknowledged request's event)."""
        return self.wal is not None

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        if self.wal is not None and self._thread is None:
            self._adopt_orphans(self.wal)
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
        if self.wal is not None:
            left = self.wal.close()
            if left:
                log.error("%d events are neither stored nor spilled; their write-ahead segments in %s are kept and "
                          "replayed by the next start", left, self.wal.directory)
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
            "quarantined": self.quarantined,
            "purged": self.purged,
            "errors": self.errors,
            "store_ok": problem is None,
            "store_problem": problem,
            "spill_files": len(self._spill_files()),
            **self._wal_stats(),
        }

    def _wal_stats(self) -> dict[str, Any]:
        wal = self.wal
        if wal is None:
            return {"wal": False}
        return {"wal": True, "wal_appended": wal.appended, "wal_failed": wal.failed, "wal_degraded": wal.degraded,
                "wal_segments": wal.segments}

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
            began = time.monotonic()
            self._drain_all(final=False, at_most=len(self._queue))
            # One round per flush interval while events keep coming, unless a whole batch is already waiting: a
            # transaction per few events (what draining back to back gave at thousands of requests/s) rewrote the same
            # table and index pages into SQLite's log again and again and made it checkpoint far more often, all of it
            # CPU of the gateway's process (bench/RESULTS.md, "SSE at c=64").
            pause = self.flush_interval_s - (time.monotonic() - began)
            if pause > 0 and len(self._queue) < self.batch_size:
                self._stop.wait(pause)

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

    def _take_batch(self, size: int | None = None) -> list[_Item]:
        batch: list[_Item] = []
        queue = self._queue
        limit = self.batch_size if size is None else size
        while len(batch) < limit:
            try:
                batch.append(queue.popleft())  # the guard takes from the same queue: emptiness is found here
            except IndexError:
                break
        return batch

    def _drain_all(self, *, final: bool, at_most: int | None = None) -> None:
        """Deliver the held batches, then the queue: all of it (``final``, and by default), or ``at_most`` events of it
        (the writer's round: what was queued when it began, not what keeps arriving meanwhile)."""
        with self._lock:
            held, self._held = self._held, []
        for i, batch in enumerate(held):
            self._deliver(batch)
            if self._held and not final:  # still nowhere to put it: keep the rest, in order, for the next try
                with self._lock:
                    self._held.extend(held[i + 1 :])
                return
        left = len(self._queue) if final or at_most is None else at_most
        while self._queue and (final or left > 0):
            batch = self._take_batch(None if final else min(self.batch_size, left))
            left -= len(batch)
            self._deliver(batch)
            if not final and (self._stop.is_set() or self._held):
                break
        if final and self._held:
            log.error("%d events could be neither stored nor spilled at shutdown; writing them to stderr-adjacent dump",
                      sum(len(b) for b in self._held))
            self._last_resort_dump()

    def _deliver(self, batch: list[_Item]) -> None:
        """Store a batch, or spill it, or hold it in memory; exactly one of the three."""
        overloaded = len(self._queue) > self.high_water
        store_ready = self.store_ok or time.monotonic() >= self._next_retry
        if store_ready and not overloaded:
            try:
                self._write_rows([_item_params(item) for item in batch])
            except Exception as exc:
                with self._lock:
                    self.errors += 1
                if self.store_ok:
                    log.error("event store write failed (%s); spilling to %s until it recovers", exc, self.spill_dir)
                self.store_ok = False
                self._next_retry = time.monotonic() + self.retry_interval_s
            else:
                self.written += len(batch)
                self._commit(batch)
                if not self.store_ok:
                    log.warning("event store recovered; replaying spill files")
                self.store_ok = True
                if self._spill_look_due() and self._spill_files():
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

    def _write_rows(self, rows: list[_Params]) -> None:
        """One transaction with every row; a ``request_id`` stored already is skipped (replays are idempotent).

        The rows go to the driver as plain tuples in one ``executemany``:
        SQLAlchemy's Core insert spent more of the writer thread's time building
        each row's parameters than the driver spent handing the row over, and the
        writer's CPU is the gateway process's CPU (bench/RESULTS.md, "Gateway CPU
        per request"). Multi-row ``VALUES`` statements of 128 rows cost more CPU
        per event than this in the gateway, measured (bench/RESULTS.md, "Less CPU
        per event, and an overhead measurement one round cannot decide").
        """
        if not rows:
            return
        self._write_started = time.monotonic()
        try:
            with self.engine.begin() as conn:
                if self._insert_sql is None:
                    conn.execute(insert(schema.events), [dict(zip(_COLUMNS, row, strict=True)) for row in rows])
                else:
                    conn.exec_driver_sql(self._insert_sql, rows)
        finally:
            self._write_started = None

    # -- spill and replay ------------------------------------------------------------
    def _spill_look_due(self) -> bool:
        """Whether a store write should be followed by a look for spill files to replay: at once when this process has
        spilled since the last look (the store has just come back), else once per retry interval (files of another
        gateway sharing the directory, or of a previous process). A directory listing after every write was ~5 % of
        the writer thread's CPU under load (bench/RESULTS.md, "SSE at c=64")."""
        now = time.monotonic()
        if not self._spilled_since_look and now < self._next_spill_look:
            return False
        self._spilled_since_look = False
        self._next_spill_look = now + self.retry_interval_s
        return True

    def _spill_files(self) -> list[Path]:
        try:
            return sorted(self.spill_dir.glob("spill-*.jsonl"))
        except OSError:
            return []

    def _commit(self, batch: list[_Item]) -> None:
        """Tell the write-ahead log that these events are stored or spilled (its segments can then go)."""
        if self.wal is None:
            return
        counts: dict[Segment, int] = {}
        for item in batch:
            segment = item[2]
            if segment is not None:
                counts[segment] = counts.get(segment, 0) + 1
        if counts:
            self.wal.committed(counts)

    def _adopt_orphans(self, wal: WriteAheadLog) -> None:
        """Turn the write-ahead segments of dead processes into spill files; the writer replays them into the store.

        A spill file (fsync'd, then renamed) is written before the segments
        are deleted, so a crash here only makes the next start do it again.
        Replaying events that were stored already is harmless (``ON CONFLICT
        DO NOTHING`` on ``request_id``).
        """
        for orphan in wal.orphans():
            if orphan.lines:
                try:
                    self._write_spill_file(b"\n".join(orphan.lines) + b"\n")
                except OSError as exc:  # the segments stay (the generator stops before deleting them): next start
                    log.error("write-ahead log: cannot move %d recovered events of stopped process %s to %s (%s); their "
                              "segments are kept for the next start", len(orphan.lines), orphan.owner, self.spill_dir, exc)
                    return
            log.warning("write-ahead log: recovered %d events of stopped process %s from %d segment(s)%s; they are "
                        "replayed into the store (already stored ones are skipped)", len(orphan.lines), orphan.owner,
                        len(orphan.segments), f", {orphan.torn} torn line(s) skipped" if orphan.torn else "")

    def _write_spill_file(self, data: bytes) -> None:
        name = f"spill-{time.time_ns()}-{os.getpid()}-{next(self._spill_seq)}.jsonl"
        tmp = self.spill_dir / (name + ".part")
        try:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            tmp.rename(self.spill_dir / name)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()  # a half-written part file would eat the space we are waiting for
            raise

    def _spill(self, batch: list[_Item]) -> None:
        try:
            self._write_spill_file(b"".join(_item_line(item) for item in batch))
        except OSError as exc:
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
        self._spilled_since_look = True
        self._commit(batch)

    def _replay_spill(self) -> None:
        """Replay spill files into the store, oldest first, one file at a time while the queue is at or below the
        low-water mark: live events come first, and replaying never lets the queue grow past its marks.

        Several gateways may share one spill directory (docs/store.md), so each
        file is replayed by whoever claims it (:func:`_claim_spill_file`); the
        others skip it rather than read it twice or find it gone halfway.
        """
        for path in self._spill_files():
            if len(self._queue) > self.low_water:
                return
            claim = _claim_spill_file(path)
            if claim is None:  # another process is replaying it, or has just finished
                continue
            try:
                try:
                    rows = self._readable_rows(path, _read_all(claim))
                    for start in range(0, len(rows), self.batch_size):
                        self._write_rows([_row_params(row) for row in rows[start : start + self.batch_size]])
                except Exception as exc:
                    self.store_ok = False
                    self._next_retry = time.monotonic() + self.retry_interval_s
                    log.warning("replay of %s deferred: %s", path.name, exc)
                    return
                path.unlink()  # still under the claim: no other process can have removed it
            finally:
                os.close(claim)  # releases the claim
            self.replayed += len(rows)
            self.store_ok = True
            log.info("replayed %d spilled events from %s", len(rows), path.name)

    def _readable_rows(self, path: Path, data: bytes) -> list[dict[str, Any]]:
        """The store rows of the spill file's events; lines that are not an event are moved to ``<name>.bad`` beside it.

        One unreadable line (a torn write, a hand-edited file) must neither stop every later replay, which would keep
        the store marked down for good, nor be dropped silently: it is kept byte for byte, logged with its line
        number and counted (``quarantined``).
        """
        rows: list[dict[str, Any]] = []
        bad: list[bytes] = []
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                event = orjson.loads(line)
                if not isinstance(event, dict):
                    raise TypeError("not a JSON object")
                row = _row(event)  # KeyError without the fields a row needs
            except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
                log.error("spill file %s line %d is not an event (%s); kept in %s.bad", path.name, number,
                          type(exc).__name__, path.name)
                bad.append(line)
                continue
            rows.append(row)
        if bad:
            with open(path.with_name(path.name + ".bad"), "ab") as handle:
                handle.write(b"".join(line + b"\n" for line in bad))
                handle.flush()
                os.fsync(handle.fileno())
            with self._lock:
                self.quarantined += len(bad)
        return rows

    def _last_resort_dump(self) -> None:
        fallback = Path(os.environ.get("TMPDIR", "/tmp")) / f"distillguard-unsaved-{os.getpid()}.jsonl"
        for batch in self._held:
            try:
                with open(fallback, "ab") as handle:
                    handle.write(b"".join(_item_line(item) for item in batch))
                log.error("wrote %d unsaved events to %s", len(batch), fallback)
                self.spilled += len(batch)
            except OSError as exc:
                log.critical("LOST %d events: store, spill dir and %s all failed (%s)", len(batch), fallback, exc)
        self._held = []


def _claim_spill_file(path: Path) -> int | None:
    """An open descriptor holding an exclusive ``flock`` on the spill file, or None when it is not ours to replay.

    Why a lock and not a rename: the kernel drops the lock when its holder dies,
    so a file whose replayer was killed halfway is simply claimed again by the
    next one (replaying stored events again is harmless: ``ON CONFLICT DO
    NOTHING`` on ``request_id``), with no stale claim to clean up. Not ours:
    gone already, locked by another process, or removed between our open and
    our lock (no links left: that process replayed it).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_nlink == 0:
            raise FileNotFoundError(path)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_all(fd: int) -> bytes:
    with open(fd, "rb", closefd=False) as handle:
        return handle.read()
