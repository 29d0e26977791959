"""The event write-ahead log: every event is appended to a local file before its response completes.

Why: the event sink (``sink.py``) keeps events in memory until its writer
thread stores them, so a process killed outright (SIGKILL, the OOM killer)
used to lose the last ~50 ms of acknowledged requests. With this log the
gateway appends each event's JSON line to an ``O_APPEND`` file with one
``os.write`` before the response's last bytes go out. The kernel owns those
bytes from then on: killing the process loses none of them. No ``fsync`` per
request (it would cost milliseconds); a power loss or kernel crash can still
lose what the page cache had not written back, bounded by ``sync_interval_s``
when that is set (a background thread calls ``fdatasync``).

Files: ``<dir>/<owner>.lock`` and ``<dir>/<owner>.<n>.wal`` segments, where
``owner`` is ``<pid>-<start ns>``. The owner holds an exclusive ``flock`` on
its lock file for its whole life; the kernel releases it when the process dies,
however it dies. A segment is rotated at ``segment_bytes`` and deleted once
every event in it is *committed* (stored, or in an fsync'd spill file); the
sink reports commits with :meth:`WriteAheadLog.committed`. At start a process
hands the segments of dead owners (lock free, or lock file gone) to its sink
through :meth:`WriteAheadLog.orphans`, which turns them into spill files: the
same replay path as an outage, idempotent on ``request_id``.

Failure decisions (docs/store.md): a directory that cannot be created or
written at start is a :class:`~distillguard.exceptions.ConfigError` (the
gateway refuses to start and says which path and why). A write that fails
later (disk full) puts the log in *degraded* mode: the event still goes to the
sink's queue (so it is stored as before, only not protected against a kill),
the first failure is logged, every unprotected event is counted
(``failed``), and a fresh segment is tried again every ``retry_interval_s``.
A short write leaves a torn line; the next write goes to a new segment, and
recovery skips a line that does not parse, with a log line naming file and
line.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from distillguard.exceptions import ConfigError

__all__ = ["Orphan", "Segment", "WriteAheadLog", "read_segment"]

log = logging.getLogger("distillguard.store.wal")

DEFAULT_SEGMENT_BYTES = 8 * 1024 * 1024


class Segment:
    """One segment file: how many events went in, how many are committed, and whether it is still being written."""

    __slots__ = ("appended", "closed", "committed", "fd", "path", "size")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.size = 0
        self.appended = 0  # changed under the log's append lock only
        self.committed = 0  # changed under the log's lock only
        self.closed = False


@dataclass(frozen=True)
class Orphan:
    """A dead owner's segments, read: the events' JSON lines, and how many lines were torn (skipped)."""

    owner: str
    lines: list[bytes]
    torn: int
    segments: list[Path]


def read_segment(path: Path) -> tuple[list[bytes], int]:
    """The complete event lines of a segment, and the count of lines skipped as torn.

    A line is kept only when it ends with a newline and parses as a JSON
    object (a line that would not parse must not reach a spill file: the
    replay would stop at it every time). A process
    killed in the middle of a write, or a short write on a full disk, leaves a
    line without its end: it is logged with file and line number and skipped
    (its request was never acknowledged: the write precedes the response).
    """
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or a torn last write
    kept: list[bytes] = []
    torn = 0
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            whole = isinstance(orjson.loads(line), dict)
        except orjson.JSONDecodeError:
            whole = False
        if whole:
            kept.append(line)
        else:
            torn += 1
            log.warning("write-ahead segment %s line %d is torn (%d bytes, not a JSON object); skipped", path, number, len(line))
    if tail:
        torn += 1
        log.warning("write-ahead segment %s ends in a torn write (line %d, %d bytes without a newline); skipped",
                    path, len(lines) + 1, len(tail))
    return kept, torn


class WriteAheadLog:
    """An append-only, size-rotated event log of one process, with per-segment commit tracking."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        sync_interval_s: float | None = None,
        retry_interval_s: float = 1.0,
    ) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.retry_interval_s = retry_interval_s
        self._sync_interval_s = sync_interval_s
        self.owner = f"{os.getpid()}-{time.time_ns()}"
        self.appended = 0  # events written to a segment
        self.failed = 0  # events that could not be written (degraded mode): stored as usual, not protected against a kill
        self.degraded = False
        self._closed = False
        self._next_try = 0.0
        self._seq = 0
        self._lock = threading.Lock()  # commits (writer threads) against rotation and deletion (the appending thread)
        self._append_lock = threading.Lock()  # appends, rotation and the counters that go with them
        self._segments: list[Segment] = []
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = self._take_lock()
            self._current: Segment | None = self._open_segment()
        except OSError as exc:
            raise ConfigError(
                f"event_wal.dir: cannot write the event write-ahead log in {self.directory} ({exc.strerror or exc}); "
                "make the directory writable, point event_wal.dir elsewhere, or set event_wal.enabled: false "
                "(events of a killed process are then lost, docs/store.md)") from None
        if sync_interval_s is not None:
            self._syncer = threading.Thread(target=self._sync_loop, args=(sync_interval_s,), name="distillguard-wal-sync",
                                            daemon=True)
            self._syncer.start()

    # -- files ---------------------------------------------------------------------------
    def _take_lock(self) -> int:
        """Create ``<owner>.lock`` already locked: lock a temporary name, then rename, so no other process ever sees
        the lock file unlocked while this one lives (it would take this owner for dead)."""
        final = self.directory / f"{self.owner}.lock"
        part = self.directory / f".{self.owner}.lock.part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(part, final)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                part.unlink()
            raise
        return fd

    def _open_segment(self) -> Segment:
        self._seq += 1
        path = self.directory / f"{self.owner}.{self._seq:06d}.wal"
        segment = Segment(path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600))
        with self._lock:
            self._segments.append(segment)
        return segment

    # -- hot path ------------------------------------------------------------------------
    def append(self, line: bytes) -> Segment | None:
        """Write one newline-terminated event line; the segment it went into, or ``None`` when it could not be written.

        One ``os.write`` on an ``O_APPEND`` descriptor: the bytes are in the
        kernel when this returns. Thread-safe (an uncontended lock: the
        gateway calls it from its event loop only).
        """
        with self._append_lock:
            return self._append(line)

    def _append(self, line: bytes) -> Segment | None:
        segment = self._current
        if segment is None or segment.size >= self.segment_bytes:
            segment = self._rotate()
            if segment is None:
                self.failed += 1
                return None
        try:
            written = os.write(segment.fd, line)
        except OSError as exc:
            self._fail(segment, f"{exc.strerror or exc}")
            return None
        if written != len(line):  # a short write (disk full): a torn line; later lines go to a new segment
            self._fail(segment, f"short write ({written} of {len(line)} bytes)")
            return None
        segment.size += written
        segment.appended += 1
        self.appended += 1
        if self.degraded:  # recovered only once a write went through (a new file on a full disk opens, then fails)
            self.degraded = False
            log.warning("event write-ahead log writable again (%s); %d events were not protected meanwhile",
                        segment.path, self.failed)
        return segment

    def _fail(self, segment: Segment, why: str) -> None:
        self.failed += 1
        self._current = None
        self._close(segment)
        self._next_try = time.monotonic() + self.retry_interval_s
        if not self.degraded:
            self.degraded = True
            log.error("event write-ahead log %s cannot be written (%s): events are still stored, but those of the next "
                      "moments are lost if the process is killed; retrying every %.0fs (metric "
                      "distillguard_event_wal_degraded)", segment.path, why, self.retry_interval_s)

    def _rotate(self) -> Segment | None:
        old = self._current
        if old is not None:
            self._current = None
            self._close(old)
        if self._closed or (self.degraded and time.monotonic() < self._next_try):
            return None
        try:
            self._current = self._open_segment()
        except OSError as exc:
            self._next_try = time.monotonic() + self.retry_interval_s
            if not self.degraded:
                self.degraded = True
                log.error("event write-ahead log: cannot open a new segment in %s (%s); events are not protected against a "
                          "kill until it can (metric distillguard_event_wal_degraded)", self.directory, exc.strerror or exc)
            return None
        return self._current

    def _close(self, segment: Segment) -> None:
        """Mark a segment finished; delete it at once when everything in it is already committed."""
        with self._lock:
            segment.closed = True
            if self._sync_interval_s is not None and segment.committed < segment.appended:
                with contextlib.suppress(OSError):  # its tail is covered by the power-loss bound too (once per segment)
                    os.fdatasync(segment.fd)
            with contextlib.suppress(OSError):
                os.close(segment.fd)
            segment.fd = -1
            self._delete_if_done(segment)

    def _delete_if_done(self, segment: Segment) -> None:  # under self._lock
        if segment.closed and segment.committed >= segment.appended and segment in self._segments:
            self._segments.remove(segment)
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()

    # -- commit tracking (writer threads) ------------------------------------------------------
    def committed(self, counts: dict[Segment, int]) -> None:
        """Events of these segments are stored or spilled (fsync'd): a finished segment with nothing left goes away."""
        with self._lock:
            for segment, count in counts.items():
                segment.committed += count
                self._delete_if_done(segment)

    def sync(self) -> None:
        """``fdatasync`` the segment being written (the power-loss bound; a kill loses nothing either way)."""
        with self._lock:
            segment = self._current
            if segment is not None and segment.fd >= 0:
                with contextlib.suppress(OSError):
                    os.fdatasync(segment.fd)

    def _sync_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.sync()

    @property
    def segments(self) -> int:
        return len(self._segments)

    @property
    def uncommitted(self) -> int:
        """Events in this process's segments not yet stored or spilled."""
        return sum(s.appended - s.committed for s in self._segments)

    def close(self) -> int:
        """Stop writing; delete every fully committed segment, and the lock file when none is left.

        Returns how many events are still uncommitted: their segments stay, and
        the next process to start on this directory replays them.
        """
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join(5)
        with self._append_lock:
            segment, self._current = self._current, None
            self._closed = True  # a late append is counted as unprotected (the sink still stores it), never written
            if segment is not None:
                self._close(segment)
        left = self.uncommitted
        if not self._segments:
            with contextlib.suppress(OSError):
                (self.directory / f"{self.owner}.lock").unlink()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)  # releases the flock: a later process may now replay what is left
        return left

    # -- recovery ------------------------------------------------------------------------------
    def orphans(self) -> Iterator[Orphan]:
        """The segments of owners that are gone, read, one owner at a time.

        The owner's lock is held while the caller handles the yielded value;
        after it resumes the generator, the owner's segments and lock file are
        deleted. So the caller must make the lines durable (a spill file)
        before asking for the next one.
        """
        by_owner: dict[str, list[Path]] = {}
        for path in sorted(self.directory.glob("*.wal")):
            by_owner.setdefault(path.name.split(".", 1)[0], []).append(path)
        for lock_path in self.directory.glob("*.lock"):
            by_owner.setdefault(lock_path.name[: -len(".lock")], [])
        for owner, paths in sorted(by_owner.items()):
            if owner == self.owner:
                continue
            lock_path = self.directory / f"{owner}.lock"
            fd: int | None = None
            with contextlib.suppress(FileNotFoundError):  # no lock file: its owner is gone; nobody writes these segments
                fd = os.open(lock_path, os.O_RDWR)
            try:
                if fd is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # alive: another process (another worker) is writing these
                lines: list[bytes] = []
                torn = 0
                for path in paths:
                    kept, skipped = read_segment(path)
                    lines += kept
                    torn += skipped
                yield Orphan(owner, lines, torn, paths)
                for path in paths:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                with contextlib.suppress(FileNotFoundError):
                    lock_path.unlink()
            finally:
                if fd is not None:
                    os.close(fd)
