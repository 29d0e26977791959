"""A pooled keep-alive HTTP/1.1 client for the upstream hop, on asyncio protocols and httptools.

Why not aiohttp's client: profiling the gateway under load showed aiohttp's
per-request machinery (request/response objects, header multidicts, tracing
hooks, payload writers, timer contexts) as the largest single block of CPU on
the hot path, larger than everything the gateway itself does. Talking to a
model server needs far less: one request line and a few fixed headers written
in one ``transport.write``, and a response parsed by httptools (the llhttp
parser uvicorn also uses), whose body is handed over as it arrives.

What it does: keep-alive connections per origin (LIFO, so warm connections are
reused; idle ones are dropped after ``idle_timeout_s``, 4 s by default: below
the 5 s keep-alive common in model servers and proxies, so we drop a
connection before the server does), at most ``max_connections`` per origin
(further requests wait for one), plain TCP or TLS,
``Content-Length``, chunked and read-until-close bodies, a read timeout that
restarts with every piece of data (a long stream is fine while the upstream
keeps talking), back-pressure (reading pauses while a slow client has more
than ``HIGH_WATER`` bytes waiting), and closing the connection when the caller
stops early, so the model server sees the disconnect and stops generating.
A kept-alive connection the server closed while it was idle is replaced
before anything is written to it. Once a request is written, it is sent again
(once, on a new connection) only for idempotent methods and only when the
connection closed before a byte of the answer arrived; a ``POST`` is never
resent, since the server may have read it and started generating.

What it does not do (not needed for a model server): redirects, cookies,
proxies, compression (no ``Accept-Encoding`` is sent), HTTP/2.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import httptools

from distillguard.exceptions import DistillguardError

__all__ = [
    "Origin",
    "UpstreamBadResponse",
    "UpstreamBusy",
    "UpstreamClient",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamUnreachable",
]

HIGH_WATER = 1 << 20  # bytes buffered for a slow client before reading from the upstream pauses


class UpstreamError(DistillguardError):
    """Base of the client's failures (timeouts raise the built-in ``TimeoutError``)."""


class UpstreamUnreachable(UpstreamError):
    """No connection could be made (refused, DNS, TLS handshake, connect timeout)."""


class UpstreamDisconnected(UpstreamError):
    """The server closed the connection before the response was complete."""


class UpstreamBusy(UpstreamUnreachable):
    """Every connection the origin may have (its ``max_connections``) stayed busy for the whole wait."""


class UpstreamBadResponse(UpstreamError):
    """The server's bytes are not valid HTTP/1.1."""


class UpstreamProtocolError(UpstreamBadResponse):
    """Valid HTTP, but not the API's shape: a body that is not JSON, or a field of the wrong type.

    ``where`` names the field (``choices.0.delta.content``) so the event and
    the log say exactly what broke; the gateway answers 502 (or ends a stream
    that had started with an in-band error event).
    """

    def __init__(self, where: str, expected: str, value: object = None, *, got: str | None = None) -> None:
        self.where = where
        shown = got if got is not None else _kind(value)
        super().__init__(f"{where}: expected {expected}, got {shown}")


def _kind(value: object) -> str:
    """A short description of a wrong value for an error message (never the value itself: it may be large)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    names = {int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object", bytes: "bytes"}
    return names.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Origin:
    """Where an upstream lives, parsed once from its ``base_url``."""

    scheme: str
    host: str
    port: int
    base_path: bytes  # e.g. b"/v1", prefixed to every request path
    host_header: bytes
    idle_timeout_s: float | None = None  # None: the client's default
    max_connections: int | None = None  # None: the client's default (the first request to an origin fixes its pool's)

    @classmethod
    def from_url(cls, base_url: str, *, idle_timeout_s: float | None = None, max_connections: int | None = None) -> Origin:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream base_url must be an http(s) URL with a host, got {base_url!r}")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == default else f"{shown}:{port}"
        return cls(parts.scheme, host, port, parts.path.rstrip("/").encode(), host_header.encode(), idle_timeout_s, max_connections)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


class UpstreamResponse:
    """One response: status and headers first, then the body as it arrives.

    Use as an async context manager; leaving it returns the connection to the
    pool only if the response was read to its end and the server allows
    keep-alive, and closes it otherwise.
    """

    __slots__ = ("status", "headers", "_conn", "_chunks", "_buffered", "_waiter", "_headers_ready", "_done", "_error",
                 "_read_timeout", "_loop", "bytes_seen", "wait_deadline")

    def __init__(self, conn: _Connection, read_timeout: float | None) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._headers_ready = False
        self._done = False
        self._error: BaseException | None = None
        self._read_timeout = read_timeout
        self._loop = conn.loop
        self.bytes_seen = False
        self.wait_deadline = 0.0  # loop time by which the current wait fails with TimeoutError (with a read timeout)

    # -- fed by the connection ---------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def _headers_complete(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        self._headers_ready = True
        self._wake()

    def _complete(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._done and self._error is None:
            self._error = exc
        self._wake()

    # -- used by the caller ------------------------------------------------------------
    async def _wait(self) -> None:
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        if self._read_timeout:  # the connection's one timer checks it (no timer armed and cancelled per wait)
            self.wait_deadline = deadline = loop.time() + self._read_timeout
            self._conn.check_by(deadline)
        try:
            await waiter
        finally:
            self._waiter = None

    def expire_wait(self, now: float) -> float | None:
        """Fail the current wait if its deadline has passed; else return that deadline (None: nothing waits)."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return None
        if now < self.wait_deadline:
            return self.wait_deadline
        waiter.set_exception(TimeoutError("the upstream sent nothing within the read timeout"))
        return None

    async def _wait_for_headers(self) -> None:
        while not self._headers_ready:
            if self._error is not None:
                raise self._error
            await self._wait()

    @property
    def at_eof(self) -> bool:
        """The body is complete and every piece of it has been handed out."""
        return self._done and not self._chunks

    async def read(self) -> bytes:
        """The whole body."""
        while not self._done:
            if self._error is not None:
                raise self._error
            if self._buffered > HIGH_WATER:  # read() wants it all: don't hold the upstream back
                self._buffered = 0
                self._conn.resume_reading()
            await self._wait()
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return body

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body (everything buffered since the last one, joined); ``None`` at its end.

        A plain coroutine rather than an async generator: a relay that stops
        early would leave the generator to be finalised by a task the event
        loop schedules for it, one more task per streamed response.
        """
        chunks = self._chunks
        while True:
            if chunks:
                piece = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                if self._buffered > HIGH_WATER:
                    self._conn.resume_reading()
                self._buffered = 0
                return piece
            if self._done:
                return None
            if self._error is not None:
                raise self._error
            await self._wait()

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces as they arrive (see :meth:`next_chunk`)."""
        return _Chunks(self)

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def release(self) -> None:
        """Give the connection back (complete, keep-alive) or close it (anything else)."""
        conn = self._conn
        if conn.response is not self:
            return
        conn.response = None
        if self._done and self._error is None and conn.reusable():
            conn.pool_release()
        else:
            conn.close()


class _Chunks:
    """:meth:`UpstreamResponse.iter_chunks`: an async iterator as a class (mypyc compiles no async generators)."""

    def __init__(self, response: UpstreamResponse) -> None:
        self._response = response

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        piece = await self._response.next_chunk()
        if piece is None:
            raise StopAsyncIteration
        return piece


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and its response parser."""

    def __init__(self, client: UpstreamClient, origin_key: tuple[str, str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.origin_key = origin_key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.idle_since = 0.0
        self._paused = False
        self._raw_headers: dict[str, str] = {}
        self._keep_alive = True
        self._informational = False  # the message being parsed is a 1xx interim response, not the answer
        self._timer: asyncio.TimerHandle | None = None  # checks the read timeout of the response's current wait

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: this connection can't be trusted any more
            self.close()
            return
        response.bytes_seen = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # 101 Switching Protocols (or an upgrade) to a plain POST: not HTTP any more
            response._fail(UpstreamBadResponse("the upstream switched protocols (an upgrade) instead of answering"))
            self.close()
        except httptools.HttpParserError as exc:
            response._fail(UpstreamBadResponse(f"invalid HTTP from the upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client._forget(self)
        self._stop_timer()
        response = self.response
        if response is not None and not response._done:
            if response._headers_ready and not self._has_framing():
                response._complete()  # a body delimited by the connection closing
            else:
                response._fail(UpstreamDisconnected(f"the upstream closed the connection ({exc or 'EOF'})"))

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._raw_headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        # A 1xx other than 101 (100 Continue, 103 Early Hints) is an interim response: the answer follows on the same
        # connection (RFC 9110 §15.2). Taken for the answer, it once failed the request as an empty body and left the
        # real answer on the pooled connection, where the *next* request read it as its own.
        self._informational = 100 <= status < 200
        response = self.response
        if response is None or self._informational:
            return
        if not 200 <= status <= 599:
            response._fail(UpstreamBadResponse(f"status {status} is no HTTP status (200-599 expected)"))
            self.close()
            return
        response._headers_complete(status, self._raw_headers)

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None and not self._informational and not self.closed:
            response._feed(body)

    def on_message_complete(self) -> None:
        if self._informational or self.closed:  # an interim response ends; or the rest of a refused one
            self._informational = False
            return
        self._keep_alive = self.parser.should_keep_alive()
        response = self.response
        if response is not None:
            response._complete()

    # -- helpers -----------------------------------------------------------------------------
    def _has_framing(self) -> bool:
        headers = self._raw_headers
        return "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()

    def reusable(self) -> bool:
        return not self.closed and self._keep_alive

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def pool_release(self) -> None:
        self.idle_since = time.monotonic()
        self.client._release(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client._forget(self)
            self._stop_timer()
            if self.transport is not None:
                self.transport.close()

    # -- the read timeout: one timer per connection -----------------------------------------
    def check_by(self, deadline: float) -> None:
        """Make sure the current wait's deadline is checked by ``deadline``.

        Why not a timer per wait: arming and cancelling one cost ~2-3 µs on
        uvloop, once or twice per proxied request. The connection keeps one
        timer instead; a wait whose deadline is no earlier than the timer's
        leaves it as it is, and when it fires it fails the wait in progress if
        that wait's deadline has passed, or re-arms for it.
        """
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        response = self.response
        if response is None or self.closed:
            return
        deadline = response.expire_wait(self.loop.time())
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Pool:
    """One origin's connections: the idle ones (most recent last), how many are open, and who waits for one."""

    __slots__ = ("cap", "idle", "idle_timeout_s", "open", "waiters")

    def __init__(self, cap: int | None, idle_timeout_s: float) -> None:
        self.cap = cap
        self.idle_timeout_s = idle_timeout_s
        self.idle: list[_Connection] = []
        self.open = 0  # connected or connecting
        self.waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()


IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS"))


class UpstreamClient:
    """Keep-alive connections to every upstream origin; one instance per gateway process.

    ``idle_timeout_s`` (default 4 s, below the 5 s keep-alive common in model
    servers and their proxies) and ``max_connections_per_origin`` are the
    defaults; an :class:`Origin` may carry its own. At the cap, a request waits
    (first come, first served, up to its ``read_timeout``) for a connection to
    come back or close, then fails with :class:`UpstreamBusy`.
    """

    def __init__(self, *, idle_timeout_s: float = 4.0, max_idle_per_origin: int = 256, max_connections_per_origin: int | None = 256,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """``ssl_context`` verifies ``https`` upstreams; by default the system's CAs (``SSL_CERT_FILE``/``SSL_CERT_DIR`` apply)."""
        self.idle_timeout_s = idle_timeout_s
        self.max_idle_per_origin = max_idle_per_origin
        self.max_connections_per_origin = max_connections_per_origin
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._all: set[_Connection] = set()
        self._ssl = ssl_context

    async def request(
        self,
        origin: Origin,
        method: bytes,
        path: bytes,
        headers: bytes,
        body: bytes,
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> UpstreamResponse:
        """Send one request and wait for the response's status and headers.

        ``path`` is relative to the origin's base path; ``headers`` are
        complete ``Name: value\\r\\n`` lines (Host and Content-Length are added).

        Never sends a request twice when the upstream may have read it: a
        kept-alive connection found closed *before* writing is replaced; once
        the request is written, a connection that closes before the response
        starts is retried (once, on a new connection) only for idempotent
        methods (``GET``, ``HEAD``, ``OPTIONS``). A ``POST`` then fails with
        :class:`UpstreamDisconnected`: the model server may have started
        generating, and a second copy would be generated (and paid) twice.
        """
        head = b"%s %s%s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n" % (
            method, origin.base_path, path, origin.host_header, headers, len(body))
        message = head + body if len(body) < 65536 else None
        pool = self._pool(origin)
        for attempt in (0, 1):
            conn, reused = await self._acquire(pool, origin, connect_timeout, read_timeout, fresh=attempt > 0)
            response = UpstreamResponse(conn, read_timeout)
            conn.response = response
            transport = conn.transport
            assert transport is not None
            if message is not None:
                transport.write(message)
            else:
                transport.writelines((head, body))
            try:
                await response._wait_for_headers()
            except UpstreamDisconnected:
                conn.response = None
                if reused and attempt == 0 and not response.bytes_seen and method in IDEMPOTENT:
                    continue  # the server closed the kept-alive connection; safe to ask again
                raise
            except BaseException:
                response.release()
                raise
            return response
        raise AssertionError("unreachable")

    def _pool(self, origin: Origin) -> _Pool:
        pool = self._pools.get(origin.key)
        if pool is None:
            cap = origin.max_connections if origin.max_connections is not None else self.max_connections_per_origin
            idle = origin.idle_timeout_s if origin.idle_timeout_s is not None else self.idle_timeout_s
            pool = self._pools[origin.key] = _Pool(cap, idle)
        return pool

    async def _acquire(self, pool: _Pool, origin: Origin, connect_timeout: float | None, wait_timeout: float | None, *,
                       fresh: bool) -> tuple[_Connection, bool]:
        """A live kept-alive connection (True), or a new one (False) once the origin's cap allows."""
        if not fresh:
            conn = self._idle_connection(pool)
            if conn is not None:
                return conn, True
        if pool.cap is not None and pool.open >= pool.cap:
            handed = await self._wait_turn(pool, origin, wait_timeout)
            if handed is not None:
                return handed, True
        else:
            pool.open += 1  # reserved before the first await, so concurrent callers see it
        try:
            conn = await self._connect(origin, connect_timeout)
        except BaseException:
            pool.open -= 1
            self._wake(pool)
            raise
        return conn, False

    async def _wait_turn(self, pool: _Pool, origin: Origin, timeout: float | None) -> _Connection | None:
        """Wait for a connection handed back (returned) or a free place to connect (None; the place is reserved for us)."""
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        pool.waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():  # served just as we gave up: pass it on
                handed = waiter.result()
                if handed is not None:
                    self._release(handed)
                else:
                    pool.open -= 1
                    self._wake(pool)
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise UpstreamBusy(f"all {pool.cap} connections to {origin.host}:{origin.port} stayed busy for "
                                   f"{timeout:g}s (upstream max_connections)") from None
            raise

    def _wake(self, pool: _Pool, conn: _Connection | None = None) -> bool:
        """Serve the first waiter still waiting: with ``conn``, or with a reserved place to connect. False if none waits."""
        while pool.waiters:
            waiter = pool.waiters.popleft()
            if not waiter.done():
                if conn is None:
                    pool.open += 1
                waiter.set_result(conn)
                return True
        return False

    def _idle_connection(self, pool: _Pool) -> _Connection | None:
        idle = pool.idle
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if not conn.closed and transport is not None and not transport.is_closing() and now - conn.idle_since < pool.idle_timeout_s:
                return conn
            conn.close()  # expired, or closed by the server while idle: nothing was written to it
        return None

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin.key, loop), origin.host, origin.port,
                    ssl=context, server_hostname=origin.host if context else None)
        except TimeoutError as exc:
            if exc.errno is None and timeout is not None:  # ours, not the kernel's ETIMEDOUT
                raise UpstreamUnreachable(f"connecting to {origin.host}:{origin.port} took longer than {timeout:g}s") from None
            raise UpstreamUnreachable(f"cannot connect to {origin.host}:{origin.port}: {exc.strerror or exc}") from None
        except OSError as failed:
            raise UpstreamUnreachable(f"cannot connect to {origin.host}:{origin.port}: {failed.strerror or failed}") from None
        if conn.closed:  # lost already (it never was in _all: give its place back here)
            raise UpstreamUnreachable(f"the connection to {origin.host}:{origin.port} closed as it opened")
        self._all.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        pool = self._pools[conn.origin_key]
        if self._wake(pool, conn):  # someone waits at the cap: hand it over
            return
        if len(pool.idle) >= self.max_idle_per_origin:
            conn.close()
        else:
            pool.idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        if conn not in self._all:
            return
        self._all.discard(conn)
        pool = self._pools[conn.origin_key]
        if conn in pool.idle:
            pool.idle.remove(conn)
        pool.open -= 1
        self._wake(pool)

    @property
    def open_connections(self) -> int:
        return len(self._all)

    async def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        for pool in self._pools.values():
            pool.idle.clear()
        await asyncio.sleep(0)
