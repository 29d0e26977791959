"""Create SQLAlchemy engines with the settings each backend needs, and a deadline on every use.

SQLite gets WAL journaling and ``synchronous=NORMAL`` so the event writer and
readers (export, admin API) do not block each other, and a busy timeout so a
lock held elsewhere is an error after ``timeout_s``, not a hang. PostgreSQL
URLs are rewritten to the psycopg 3 driver so users can write plain
``postgresql://``.

A PostgreSQL server that is *frozen* (stopped by SIGSTOP, a stuck disk, a VM
paused) is worse than one that is down: its kernel still accepts connections
and acknowledges every byte, so neither TCP keepalives nor ``statement_timeout``
(which the frozen server would have to enforce) ever fire, and a call blocks
forever. So every checkout of a PostgreSQL connection runs under a
:class:`Deadline`: when a use (the liveness ping, statements, commit) outlasts
``timeout_s``, a watchdog thread shuts the connection's socket down, the
blocked call fails with ``OperationalError`` at once, and SQLAlchemy discards
the connection. Callers then treat the store as unavailable (the event sink
spills) instead of waiting with it. ``connect_timeout`` bounds new
connections the same way, ``statement_timeout`` a live but slow server, and
TCP keepalives a server whose machine is gone.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import socket
import threading
import time
import weakref
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url

from distillguard.exceptions import ConfigError

__all__ = ["DEFAULT_TIMEOUT_S", "Deadline", "deadline_of", "make_engine"]

log = logging.getLogger("distillguard.store")

DEFAULT_TIMEOUT_S = 5.0
_DEADLINES: weakref.WeakKeyDictionary[Engine, Deadline] = weakref.WeakKeyDictionary()


def deadline_of(engine: Engine) -> Deadline | None:
    """The :class:`Deadline` watching ``engine``'s connections (PostgreSQL), or ``None`` (SQLite: busy timeout)."""
    return _DEADLINES.get(engine)


# The page size of a database SQLite creates (an existing database keeps its own: SQLite ignores the pragma there). An
# event is ~2 KB, so a default 4 KiB page holds one or two, and SQLite's write-ahead log takes one frame (two write
# calls) per changed page: with 16 KiB pages the event writer thread spent ~10 % less CPU per request in the gateway
# under SSE load (bench/RESULTS.md, "Less CPU per event, and an overhead measurement one round cannot decide").
SQLITE_PAGE_SIZE = 16384


def _sqlite_pragmas(busy_ms: int) -> Any:
    def apply(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")  # before journal_mode, which writes a new file's header
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return apply


class _Watchdog:
    """One thread for every engine's connections (engines come and go, e.g. one per export): a heap of deadlines."""

    def __init__(self) -> None:
        self._armed: dict[int, tuple[float, int, socket.socket | None, Deadline]] = {}  # id(conn) → entry
        self._heap: list[tuple[float, int, int]] = []  # (deadline, generation, id(conn))
        self._generation = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, dbapi_connection: Any, owner: Deadline) -> None:
        try:
            fd = dbapi_connection.pgconn.socket
            sock: socket.socket | None = socket.socket(fileno=fd)  # a view of the fd; detached again below, never closed
        except Exception:  # already broken: the next call on it fails by itself
            sock = None
        deadline, generation = time.monotonic() + owner.timeout_s, next(self._generation)
        with self._wake:
            self._release(self._armed.pop(id(dbapi_connection), None))
            self._armed[id(dbapi_connection)] = (deadline, generation, sock, owner)
            heapq.heappush(self._heap, (deadline, generation, id(dbapi_connection)))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="distillguard-store-deadline", daemon=True)
                self._thread.start()
            self._wake.notify()

    def disarm(self, dbapi_connection: Any) -> None:
        with self._wake:
            self._release(self._armed.pop(id(dbapi_connection), None))

    @staticmethod
    def _release(entry: tuple[float, int, socket.socket | None, Deadline] | None) -> None:
        if entry is not None and entry[2] is not None:
            entry[2].detach()  # give the descriptor back to psycopg without closing it

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, generation, key = heapq.heappop(self._heap)
                    entry = self._armed.get(key)
                    if entry is None or entry[1] != generation:
                        continue  # disarmed, or re-armed later
                    del self._armed[key]
                    sock, owner = entry[2], entry[3]
                    owner.fired += 1
                    if sock is not None:
                        with contextlib.suppress(OSError):  # already closed by its owner
                            sock.shutdown(socket.SHUT_RDWR)
                        sock.detach()
                    log.error("store call exceeded %.1fs: connection aborted (is the database server frozen or overloaded?)",
                              owner.timeout_s)
                self._wake.wait(self._heap[0][0] - now if self._heap else None)


_WATCHDOG = _Watchdog()


class Deadline:
    """``arm(conn)`` … ``disarm(conn)``: the connection's socket is shut down if ``timeout_s`` passes in between.

    Shutting the socket down (rather than closing the descriptor) is safe while
    another thread is blocked on it: that thread's ``poll`` returns, libpq
    reads end-of-file and psycopg raises ``OperationalError``; the descriptor
    itself is still closed only by its owner, and the pool's ``close`` event
    disarms it first. One watchdog thread serves every engine.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.fired = 0  # how many connections this deadline aborted

    def arm(self, dbapi_connection: Any) -> None:
        _WATCHDOG.arm(dbapi_connection, self)

    def disarm(self, dbapi_connection: Any) -> None:
        _WATCHDOG.disarm(dbapi_connection)


def _watch(engine: Engine, deadline: Deadline) -> None:
    """Arm the deadline for the whole time a connection is checked out, and ping it first (instead of pre_ping,
    which runs before any event could arm it)."""

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        deadline.arm(dbapi_connection)
        started = time.monotonic()
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
        except Exception as error:
            deadline.disarm(dbapi_connection)
            if time.monotonic() - started >= deadline.timeout_s:  # the server hangs: a new connection would hang too
                raise exc.OperationalError("SELECT 1", None, error) from error
            raise exc.DisconnectionError(f"liveness check failed: {error}") from error  # stale: the pool retries on a new one

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_connection: Any, _record: Any) -> None:
        if dbapi_connection is not None:
            deadline.disarm(dbapi_connection)

    @event.listens_for(engine, "close")
    def _close(dbapi_connection: Any, _record: Any) -> None:
        deadline.disarm(dbapi_connection)


def make_engine(database_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Engine:
    """An engine for ``sqlite:///path`` or ``postgresql://user:pass@host/db`` on which no call waits past ``timeout_s``.

    :func:`deadline_of` gives a PostgreSQL engine's :class:`Deadline`; long
    readers (export) call its ``arm(conn)`` again between chunks to extend it.
    """
    try:
        url = make_url(database_url)
    except Exception as error:  # SQLAlchemy raises ArgumentError with a terse message
        raise ConfigError(f"database: not a database URL: {database_url!r} ({error})") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": timeout_s})
        event.listen(engine, "connect", _sqlite_pragmas(int(timeout_s * 1000)))
        return engine
    if backend in ("postgresql", "postgres"):
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        given = set(url.query)
        defaults: dict[str, Any] = {
            "connect_timeout": max(1, round(timeout_s)),
            "options": f"-c statement_timeout={int(timeout_s * 1000)}",
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
        }
        connect_args = {name: value for name, value in defaults.items() if name not in given}
        engine = create_engine(url, pool_size=4, pool_timeout=timeout_s, connect_args=connect_args)
        deadline = Deadline(timeout_s + 1.0)  # a live server's own statement_timeout gets the first chance
        _DEADLINES[engine] = deadline
        _watch(engine, deadline)
        return engine
    raise ConfigError(f"database: unsupported backend {backend!r}; use sqlite:///FILE or postgresql://...")
