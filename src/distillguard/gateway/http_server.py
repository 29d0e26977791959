"""A small HTTP/1.1 server for one ASGI application, on uvloop and httptools.

Why not uvicorn: under load, uvicorn's per-request work (scope building,
header validation, ASGI message plumbing, proxy-header middleware) and its
two socket writes per response (status and headers at ``http.response.start``,
then the body) were the largest block of CPU left on the gateway's hot path
once the upstream client was lean. This server holds the status line and
headers back until the first body message, so a JSON response is one
``write`` with a ``Content-Length``, and a stream's headers travel with its
first chunk (chunked transfer encoding after that).

It implements the part of ASGI 3.0 the gateway uses, faithfully: ``http``
scopes with a streamed request body, ``http.disconnect`` when the client goes
away or once the response is complete, ``lifespan`` startup and shutdown.
One extension: ``scope["extensions"]["distillguard.on_disconnect"]`` registers
a callback for a client that drops the connection mid-request, which saves
the application a watcher task per request.

Connection handling: keep-alive with an idle timeout, pipelined requests
answered in order, back-pressure both ways (reading pauses while a request
body waits to be consumed; ``send`` waits while the socket's write buffer is
full), ``Expect: 100-continue``, HTTP/1.0 clients (close-delimited bodies).
SIGTERM or SIGINT: stop accepting, close idle connections, let in-flight
requests finish (up to ``graceful_timeout_s``), then run the lifespan
shutdown, where the gateway drains its event log.

The edge, for a server facing the internet (``gateway/edge.py``): a request
head has a *total* deadline from its first byte (one byte a second does not
keep a connection) and a body a deadline from the end of its head (both
answered ``408``); a client that takes none of its answer for
``send_timeout_s`` is disconnected; a head is at most 64 KiB (``431``), and so is what httptools
may buffer of an unfinished header line, counted on the raw bytes of every
read that falls wholly inside a head (a body in the same read as the end of
a head is not counted against it). Chunk framing and trailer fields beyond
16 KiB are refused (``431``); trailer fields are read and dropped, never
merged into the request's headers (RFC 9110 §6.5.1). An HTTP/1.1 request
without exactly one valid ``Host`` gets ``400`` (RFC 9112 §3.2); a
``Transfer-Encoding`` other than plain ``chunked`` gets ``501``, and so does a
WebSocket upgrade; a malformed chunk gets ``400`` (an application already
waiting for that body sees a disconnect). Connections are capped in total and
per client IP: at a cap, the connection that has been waiting longest without
a request in progress (idle, or still sending its head) is closed to make
room, and if there is none the new one gets ``503``. Every time a limit bites
it is counted in ``EdgeStats`` (exported on ``/metrics``) and summarised in
one log line at most every 10 s.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import re
import signal
import time
from collections.abc import Callable, MutableMapping
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

import httptools

from distillguard.gateway.edge import ConnectionCaps, EdgeLimits, EdgeStats, fitted, raise_fd_limit
from distillguard.gateway.types import ASGIApp, Message

__all__ = ["HttpServer", "run"]

log = logging.getLogger("distillguard.gateway.http")

MAX_HEAD_BYTES = 64 * 1024  # request line + headers
MAX_TRAILER_BYTES = 16 * 1024  # trailer fields, plus chunk framing beyond CHUNK_LINE_ALLOWANCE per chunk
CHUNK_LINE_ALLOWANCE = 64  # a chunk's size line (extensions included) and CRLFs
_HOST_VALUE = re.compile(rb"[A-Za-z0-9._~!$&'()*+,;=:\[\]%-]*")
BODY_HIGH_WATER = 1 << 20  # unread request body bytes before reading pauses
FEED_PIECE = 16 * 1024  # bytes handed to the parser at a time: bounds the requests one read can queue
MAX_PIPELINED = 32  # parsed requests waiting their turn; past it, parsing stops until they are answered
STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode()) for code, phrase in (
    (100, "Continue"), (200, "OK"), (201, "Created"), (202, "Accepted"), (204, "No Content"), (206, "Partial Content"),
    (301, "Moved Permanently"), (302, "Found"), (304, "Not Modified"), (307, "Temporary Redirect"),
    (400, "Bad Request"), (401, "Unauthorized"), (402, "Payment Required"), (403, "Forbidden"), (404, "Not Found"),
    (405, "Method Not Allowed"), (408, "Request Timeout"), (409, "Conflict"), (410, "Gone"), (411, "Length Required"),
    (413, "Content Too Large"), (415, "Unsupported Media Type"), (422, "Unprocessable Content"), (429, "Too Many Requests"),
    (431, "Request Header Fields Too Large"), (499, "Client Closed Request"),
    (500, "Internal Server Error"), (501, "Not Implemented"), (502, "Bad Gateway"), (503, "Service Unavailable"),
    (504, "Gateway Timeout"), (529, "Site Overloaded"),
)}
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class _Clock:
    """The ``Date`` header line, formatted once per second."""

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def date_line(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.line = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.line


def _error_response(status: int, message: bytes) -> bytes:
    return (_status_line(status) + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (len(message), message))


class _Reject(Exception):
    """Raised from a parser callback: the request is refused with ``status`` (``reason`` counts it)."""

    def __init__(self, status: int, message: bytes, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.message = message
        self.reason = reason


def _rejection(exc: BaseException) -> _Reject | None:
    """The :class:`_Reject` a parser callback raised, wrapped by httptools in its own error."""
    for inner in (exc.__cause__, exc.__context__):
        if isinstance(inner, _Reject):
            return inner
    return None


HEAD_TOO_LARGE = _Reject(431, b"Request line and headers are too large.", "head_too_large")
TRAILER_TOO_LARGE = _Reject(431, b"Request trailer fields or chunk framing are too large.", "trailer_too_large")
HEAD_TIMEOUT = _Reject(408, b"The request head did not arrive in time.", "head_timeout")
BODY_TIMEOUT = _Reject(408, b"The request body did not arrive in time.", "body_timeout")
MALFORMED = _Reject(400, b"Malformed HTTP request.", "malformed")
BAD_HOST = _Reject(400, b"An HTTP/1.1 request needs exactly one valid Host header.", "bad_host")
BAD_CODING = _Reject(501, b"Transfer-Encoding other than chunked is not supported.", "transfer_encoding")
NO_UPGRADE = _Reject(501, b"Protocol upgrades (WebSocket) are not supported.", "upgrade")


def _nothing() -> None:
    pass


def _release(cycle: _Cycle) -> None:
    """Drop the scope's ``distillguard.on_disconnect`` extension once the application is done with the request.

    The extension is a bound method of the cycle, and the cycle holds the scope: a reference cycle, so without this
    every request's cycle, scope, headers and their tuples (~12 objects) outlived it until the garbage collector found
    them, and that garbage alone triggered a young collection about every thousand requests, each walking every object in flight
    (bench/RESULTS.md, "SSE at c=64").
    """
    extensions = cycle.scope.get("extensions")  # (a request refused while parsing has a scope without any)
    if extensions:
        extensions.pop("distillguard.on_disconnect", None)


def _status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Status\r\n" % status


class _Cycle:
    """One request and its response: the ASGI ``receive``/``send`` pair."""

    __slots__ = ("conn", "scope", "body", "body_size", "complete", "disconnected", "waiter", "status", "headers",
                 "head_sent", "chunked", "response_complete", "keep_alive", "expect_continue", "on_disconnect", "http10", "body_done",
                 "received", "failed")

    def __init__(self, conn: _HttpConnection, scope: MutableMapping[str, Any], keep_alive: bool, expect_continue: bool, http10: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.body: list[bytes] = []
        self.body_size = 0
        self.complete = False  # the whole request body has arrived
        self.body_done = False  # ... and has been handed to the application
        self.disconnected = False
        self.waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_sent = False
        self.chunked = False
        self.response_complete = False
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.on_disconnect: Callable[[], None] | None = None
        self.http10 = http10
        self.received = 0  # body bytes parsed so far, in total
        self.failed: _Reject | None = None  # refused by the server: answered with this instead of running the app

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def lost(self) -> None:
        self.disconnected = True
        self.wake()
        callback = self.on_disconnect
        if callback is not None and not self.response_complete:
            self.on_disconnect = None
            try:
                callback()
            except Exception:  # the app's bug must not leave the connection's other waiters hanging
                log.exception("a disconnect callback failed")

    def register_disconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        """The ``distillguard.on_disconnect`` extension: one callback per request; returns its unregister function."""
        if self.disconnected and not self.response_complete:  # already gone: tell it straight away
            self.conn.loop.call_soon(callback)
            return _nothing
        self.on_disconnect = callback
        return self.unregister_disconnect

    def unregister_disconnect(self) -> None:
        self.on_disconnect = None

    async def receive(self) -> Message:
        if self.expect_continue and not self.disconnected:
            self.expect_continue = False
            self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            if self.disconnected or self.response_complete:
                return {"type": "http.disconnect"}
            if not self.body_done and (self.body or self.complete):
                body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
                self.body = []
                self.body_size = 0
                self.conn.resume_reading()
                self.body_done = self.complete
                return {"type": "http.request", "body": body, "more_body": not self.complete}
            # Wait for more body, or (body delivered) for a disconnect or the end of the response.
            waiter = self.waiter = self.conn.loop.create_future()
            try:
                await waiter
            finally:
                self.waiter = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        conn = self.conn
        if kind == "http.response.start":
            if self.status:
                raise RuntimeError("http.response.start sent twice")
            self.status = int(message["status"])
            self.headers = list(message.get("headers") or ())
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.status:
            raise RuntimeError("http.response.body before http.response.start")
        if self.response_complete:
            return
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self.disconnected:
            if not more:
                self.response_complete = True
            return
        if self.head_sent and self.scope["method"] == "HEAD":
            pass  # a HEAD response has no body, whatever the application sends
        elif not self.head_sent:
            self.head_sent = True
            head = [_status_line(self.status), conn.server.clock.date_line()]
            length_given = False
            for name, value in self.headers:
                lower = name.lower()
                if lower in _FRAMING_HEADERS:
                    if lower == b"content-length" and not more:
                        length_given = True
                    else:
                        continue
                head.append(b"%s: %s\r\n" % (name, value))
            bodiless = self.status in (204, 304) or 100 <= self.status < 200
            if bodiless:
                body = b""
            elif not more:
                if not length_given:
                    head.append(b"content-length: %d\r\n" % len(body))
            elif self.http10:
                self.keep_alive = False
            else:
                self.chunked = True
                head.append(b"transfer-encoding: chunked\r\n")
            if conn.server.stopping or not self.complete:  # (not complete: answered before the whole body arrived)
                self.keep_alive = False
            if not self.keep_alive:
                head.append(b"connection: close\r\n")
            elif self.http10:
                head.append(b"connection: keep-alive\r\n")
            head.append(b"\r\n")
            if self.scope["method"] == "HEAD" or bodiless:
                body = b""
                self.chunked = False
            if self.chunked and body:
                head.append(b"%x\r\n%s\r\n" % (len(body), body))
            else:
                head.append(body)
            if self.chunked and not more:
                head.append(b"0\r\n\r\n")
            conn.write(b"".join(head))
        elif self.status in (204, 304):
            pass
        elif self.chunked:
            if body:
                conn.write(b"%x\r\n%s\r\n%s" % (len(body), body, b"" if more else b"0\r\n\r\n"))
            elif not more:
                conn.write(b"0\r\n\r\n")
        elif body:
            conn.write(body)
        if not more:
            self.response_complete = True
            self.wake()
            conn.response_done(self)
        elif conn.write_paused:
            await conn.drain()


class _HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, runs the app per request, writes responses in order."""

    __deletable__ = ["parser"]  # connection_lost drops it (compiled with mypyc, an attribute must say so)

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.app = server.app
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.ip: str | None = None
        self.cycle: _Cycle | None = None  # the request being answered
        self.pending: collections.deque[_Cycle] = collections.deque()  # pipelined, waiting their turn
        self.parsing: _Cycle | None = None  # the request whose body is arriving
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0  # request line and headers parsed so far
        self.head_received = 0  # raw bytes of reads that fell wholly inside the current head
        self.framing = 0  # raw bytes of reads wholly inside the current body that were not body: chunk lines, trailers
        self.chunks = 0  # chunks of the current body
        self.messages = 0  # request heads begun on this connection
        self.in_head = False
        self.closed = False
        self.halted = False  # the server refused a request: the parser is done with this connection
        self.unfed = b""  # received but not yet parsed (held back behind a deep pipeline)
        self.read_paused = False
        self.write_paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.last_active = 0.0  # loop time the connection became idle (opened, or its last response finished)
        self.head_started = 0.0  # loop time of the current head's first byte
        self.body_started = 0.0  # loop time the current body began (moved on by the time reading was paused by us)
        self.paused_at = 0.0
        self.write_paused_at = 0.0  # loop time the socket's buffer last filled up (the client stopped reading)

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.local = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        self.ip = self.client[0] if self.client else None
        self.last_active = self.loop.time()
        if not self.server.caps.admit(self):
            self.closed = True
            transport.write(_error_response(503, b"Too many connections; try again shortly."))  # type: ignore[attr-defined]
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self.halted:  # refused: nothing after it is read
            return
        if self.unfed:  # parsing is held back behind a deep pipeline: keep the order
            self.unfed += data
            self.pause_reading()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse ``data`` a piece at a time, holding the rest back while MAX_PIPELINED requests wait their turn:
        one 256 KiB read of tiny pipelined requests would otherwise become ~10,000 queued requests at once."""
        while data:
            if len(self.pending) >= MAX_PIPELINED:
                self.unfed = data
                self.pause_reading()
                return
            piece, data = (data[:FEED_PIECE], data[FEED_PIECE:]) if len(data) > FEED_PIECE else (data, b"")
            self._parse(piece)
            if self.halted or self.closed:
                return

    def _refeed(self) -> None:
        if self.unfed and len(self.pending) < MAX_PIPELINED and not self.halted and not self.closed:
            data, self.unfed = self.unfed, b""
            self._feed(data)

    def _parse(self, data: bytes) -> None:
        in_head, parsing, messages = self.in_head, self.parsing, self.messages
        received = parsing.received if parsing is not None else 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse_upgrade()
            return
        except httptools.HttpParserError as exc:
            rejection = _rejection(exc)
            if rejection is None:
                log.info("bad HTTP request from %s: %s", self.client, exc)
                rejection = MALFORMED
            self.reject(rejection)
            return
        # httptools keeps an unfinished header line to itself, and trailer fields too: count the raw bytes
        # of every read that fell wholly inside one head or one body, so an endless line is caught.
        if in_head:
            if self.in_head and self.messages == messages:
                self.head_received += len(data)
                if self.head_received > MAX_HEAD_BYTES:
                    self.reject(HEAD_TOO_LARGE)
        elif parsing is not None and self.parsing is parsing:
            self.framing += len(data) - (parsing.received - received)
            if self.framing > MAX_TRAILER_BYTES + CHUNK_LINE_ALLOWANCE * self.chunks:
                self.reject(TRAILER_TOO_LARGE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.caps.forget(self)
        # The parser and this protocol refer to each other: left to the cyclic collector, the parser's
        # buffered header or trailer line (up to a read's worth) outlived the connection, and a flood of
        # short connections (an endless trailer, reconnecting) held hundreds of MB until a collection ran.
        del self.parser
        for cycle in (self.cycle, *self.pending):
            if cycle is not None:
                cycle.lost()
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.drain_waiters.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_at = self.loop.time()

    def resume_writing(self) -> None:
        self.write_paused = False
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.drain_waiters.clear()
        if self.cycle is None and self.pending and not self.closed:  # held back until the client read its answers
            self._start(self.pending.popleft())

    # -- httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.head_received = 0
        self.messages += 1
        self.in_head = True
        self.head_started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise HEAD_TOO_LARGE

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:  # a trailer field: read (and counted as framing), never merged into the headers
            return
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise HEAD_TOO_LARGE
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        version = parser.get_http_version()
        hosts = 0
        host = b""
        coding: bytes | None = None
        expect = False
        for name, value in self.headers:
            if name == b"host":
                hosts += 1
                host = value
            elif name == b"transfer-encoding":
                coding = value if coding is None else coding + b"," + value
            elif name == b"expect":
                expect = value.lower() == b"100-continue"
            elif name == b"upgrade" and b"websocket" in value.lower():
                raise NO_UPGRADE
        if version != "1.0" and (hosts != 1 or _HOST_VALUE.fullmatch(host) is None):
            raise BAD_HOST
        if coding is not None and coding.replace(b" ", b"").replace(b"\t", b"").lower() != b"chunked":
            raise BAD_CODING
        parsed = httptools.parse_url(self.url)
        raw_path = parsed.path
        path = raw_path.decode("ascii", "replace")
        if "%" in path:
            path = unquote(path)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version,
            "server": self.local,
            "client": self.client,
            "scheme": "http",
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": parsed.query or b"",
            "headers": self.headers,
            "extensions": {},
        }
        cycle = _Cycle(self, scope, parser.should_keep_alive(), expect, version == "1.0")
        scope["extensions"]["distillguard.on_disconnect"] = cycle.register_disconnect
        self.parsing = cycle
        self.framing = 0
        self.chunks = 0
        self.body_started = self.loop.time()
        self.server.caps.busy(self)
        if self.cycle is None and not self.pending:
            self._start(cycle)
        else:  # pipelined: read no further until the requests before it are answered
            self.pending.append(cycle)
            self.pause_reading()

    def on_chunk_header(self) -> None:
        self.chunks += 1

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is None:
            return
        cycle.received += len(body)
        if cycle.response_complete:  # answered already (a 413, say): the rest is dropped
            return
        cycle.body.append(body)
        cycle.body_size += len(body)
        if cycle.body_size > BODY_HIGH_WATER:
            self.pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        self.parsing = None
        if cycle is not None:
            cycle.complete = True
            cycle.wake()
            if cycle.response_complete:  # the rest of an early-answered body has been read and dropped
                self.close()

    # -- requests -----------------------------------------------------------------------------
    def _start(self, cycle: _Cycle) -> None:
        self.cycle = cycle
        if cycle.failed is not None:  # refused by the server: its answer, in its turn, then close
            cycle.response_complete = True
            _release(cycle)
            self.write(_error_response(cycle.failed.status, cycle.failed.message))
            self.close()
            return
        self.server.in_flight += 1
        self.loop.create_task(self._run(cycle))

    async def _run(self, cycle: _Cycle) -> None:
        try:
            await self.app(cycle.scope, cycle.receive, cycle.send)
        except BaseException as exc:
            if not cycle.head_sent and not cycle.disconnected:
                log.exception("the application failed before answering %s %s", cycle.scope["method"], cycle.scope["path"])
                cycle.status, cycle.headers = 500, [(b"content-type", b"text/plain; charset=utf-8")]
                cycle.keep_alive = False
                await cycle.send({"type": "http.response.body", "body": b"Internal Server Error"})
            elif not cycle.response_complete:
                log.exception("the application failed mid-response to %s %s", cycle.scope["method"], cycle.scope["path"])
                self.close()
            if not isinstance(exc, Exception):
                raise
        finally:
            if not cycle.response_complete:
                if not cycle.disconnected:
                    log.error("the application returned without completing its response to %s %s", cycle.scope["method"], cycle.scope["path"])
                self.close()
                self.response_done(cycle)
            _release(cycle)
            self.server.in_flight -= 1
            self.server.request_finished()

    def response_done(self, cycle: _Cycle) -> None:
        if self.cycle is not cycle:
            return
        self.cycle = None
        if self.closed:
            return
        if not cycle.complete and not cycle.expect_continue and not cycle.disconnected:
            # Answered before the whole body arrived (a 413, say). Closing now would reset the
            # connection under a client still uploading, and it would never see the answer: read
            # and drop the rest (on_body, on_message_complete), for a few seconds at most.
            self.resume_reading()
            self.loop.call_later(5.0, self.close)
            return
        if not cycle.keep_alive or self.server.stopping or not cycle.complete:
            self.close()
            return
        if self.pending:
            if not self.write_paused:  # else resume_writing starts it: a pipelining client that doesn't read can't pile up answers
                self._start(self.pending.popleft())
            self._refeed()
        else:
            self.last_active = self.loop.time()
            self.server.caps.idle_again(self)
            self._refeed()
            if not self.pending:
                self.resume_reading()

    def reject(self, rejection: _Reject) -> None:
        """The server refuses the request being received: answer it in its turn with the rejection's status, then close."""
        self.server.caps.count_rejection(rejection.reason, self.ip)
        self.halted = True
        self.unfed = b""
        self.pause_reading()
        cycle = self.parsing
        if cycle is not None:  # in the middle of a request's body: that request can't be completed
            self.parsing = None
            cycle.complete = True
            if cycle in self.pending:  # still waiting its turn: answered as refused when it comes
                cycle.failed = rejection
                return
            if cycle is self.cycle and not cycle.head_sent and not cycle.response_complete:
                cycle.response_complete = True
                self.write(_error_response(rejection.status, rejection.message))
                cycle.lost()  # the application, waiting for the body, sees the client gone
            self.close()
            return
        last = self.pending[-1] if self.pending else self.cycle
        if last is None:
            self.write(_error_response(rejection.status, rejection.message))
            self.close()
            return
        # Requests before it are being answered: answer this one after them.
        refused = _Cycle(self, {"type": "http", "method": "", "path": ""}, False, False, False)
        refused.failed = rejection
        refused.complete = True
        self.pending.append(refused)

    def _refuse_upgrade(self) -> None:
        """``Upgrade: h2c`` is ignored and the request answered over HTTP/1.1 (RFC 9110 allows it), then the connection closed."""
        cycle = self.parsing or (self.pending[-1] if self.pending else self.cycle)
        self.halted = True  # the parser stops at an upgrade; nothing after it is read
        self.pause_reading()
        if cycle is None:
            self.reject(NO_UPGRADE)
            return
        cycle.keep_alive = False
        if self.parsing is cycle:  # the parser stops at the upgrade: whatever follows is not this request's body
            self.parsing = None
            cycle.complete = True
            cycle.wake()

    # -- deadlines (checked by the server's sweeper, about once a second) -------------------------
    def check_deadlines(self, now: float, limits: EdgeLimits) -> None:
        if self.write_paused and now - self.write_paused_at > limits.send_timeout_s and self.transport is not None:
            # The client has taken nothing of its answers for that long: it holds a request (and perhaps an
            # upstream stream) it does not read, and a busy connection is never evicted at a cap. (Also when
            # already closed: close() waits for the unread buffer to drain, i.e. forever.)
            if not self.closed:
                self.server.caps.count_rejection("send_timeout", self.ip)
                self.closed = True
            self.transport.abort()
            return
        if self.closed or self.read_paused:  # paused by us (back-pressure, pipelining): not the client's delay
            return
        if self.in_head:
            if now - self.head_started > limits.head_timeout_s:
                self.reject(HEAD_TIMEOUT)
        elif self.parsing is not None:
            if now - self.body_started > limits.body_timeout_s:
                self.reject(BODY_TIMEOUT)
        elif self.cycle is None and not self.pending and now - self.last_active > limits.keepalive_timeout_s:
            self.close()

    # -- transport helpers ------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.closed or not self.write_paused:
            return
        waiter = self.loop.create_future()
        self.drain_waiters.append(waiter)
        await waiter

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = True
            self.paused_at = self.loop.time()
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closed and not self.unfed:
            self.read_paused = False
            now = self.loop.time()
            self.head_started = now  # a head cut short by our pause starts its deadline again
            self.body_started += now - self.paused_at
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    @property
    def idle(self) -> bool:
        return self.cycle is None and not self.pending and self.parsing is None


class HttpServer:
    """Serve ``app`` on ``host:port`` until SIGTERM/SIGINT (or :meth:`stop`)."""

    def __init__(self, app: ASGIApp, host: str, port: int, *, backlog: int = 4096, keepalive_timeout_s: float | None = None,
                 graceful_timeout_s: float = 30.0, also_listen: tuple[tuple[str, int], ...] = (), limits: EdgeLimits | None = None,
                 stats: EdgeStats | None = None, reuse_port: bool = False) -> None:
        self.app = app
        self.reuse_port = reuse_port  # several worker processes accept on the same port (serve --workers)
        self.host = host
        self.port = port
        self.also_listen = also_listen  # more (host, port) pairs for the same app, e.g. the admin_listen address
        self.backlog = backlog
        limits = limits or EdgeLimits()
        if keepalive_timeout_s is not None:
            limits = dataclasses.replace(limits, keepalive_timeout_s=keepalive_timeout_s)
        self.limits = limits = fitted(limits)
        self.stats = stats or EdgeStats()
        self.caps: ConnectionCaps[_HttpConnection] = ConnectionCaps(limits, self.stats)
        self.graceful_timeout_s = graceful_timeout_s
        self.clock = _Clock()
        self.in_flight = 0
        self.stopping = False
        self._stop: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    async def _enforce_deadlines(self) -> None:
        """Keep-alive, head and body deadlines: one sweep a fraction of a second, rather than a timer per request."""
        limits = self.limits
        interval = min(1.0, limits.keepalive_timeout_s / 4, limits.head_timeout_s / 4, limits.body_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for conn in list(self.caps.connections):
                conn.check_deadlines(now, limits)
            self.caps.flush_log()

    @property
    def connections(self) -> dict[_HttpConnection, None]:
        """Every open connection, oldest first."""
        return self.caps.connections

    def request_finished(self) -> None:
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def serve(self, *, install_signal_handlers: bool = True) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._idle = asyncio.Event()
        lifespan = _Lifespan(self.app)
        await lifespan.startup()
        servers = []
        for host, port in ((self.host, self.port), *self.also_listen):  # a loop, not a comprehension: mypyc cannot await in one
            servers.append(await self.loop.create_server(lambda: _HttpConnection(self), host, port, backlog=self.backlog,
                                                         reuse_address=True, reuse_port=self.reuse_port or None))
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(sig, self.stop)
        for host, port in ((self.host, self.port), *self.also_listen):
            log.info("listening on http://%s:%d (at most %d connections, %d per client IP)", host, port,
                     self.limits.max_connections, self.limits.max_connections_per_ip)
        sweeper = self.loop.create_task(self._enforce_deadlines())
        try:
            await self._stop.wait()
        finally:
            sweeper.cancel()
            self.stopping = True
            log.info("stopping: no new connections; waiting for %d request(s) in flight", self.in_flight)
            for server in servers:
                server.close()
            for conn in list(self.connections):
                if conn.idle:
                    conn.close()
            if self.in_flight:
                self._idle.clear()
                try:
                    async with asyncio.timeout(self.graceful_timeout_s):
                        while self.in_flight:
                            await self._idle.wait()
                            self._idle.clear()
                except TimeoutError:
                    log.warning("%d request(s) still running after %gs; closing their connections", self.in_flight, self.graceful_timeout_s)
            for conn in list(self.connections):
                conn.close()
            await lifespan.shutdown()
            log.info("stopped")


class _Lifespan:
    """Runs the application's ``lifespan`` protocol: startup before listening, shutdown after the last request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.phase = "startup"
        self.supported = True

    async def startup(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        reply = await self.outbox.get()
        if reply["type"] == "lifespan.startup.failed":
            raise SystemExit(f"application startup failed: {reply.get('message', '')}")

    async def shutdown(self) -> None:
        if not self.supported or self.task is None or self.task.done():
            return
        self.phase = "shutdown"
        await self.inbox.put({"type": "lifespan.shutdown"})
        reply = await self.outbox.get()
        if reply["type"] != "lifespan.shutdown.complete":
            log.error("application shutdown failed: %s", reply.get("message", ""))

    async def _run(self) -> None:
        try:
            await self.app({"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}},
                           self.inbox.get, self.outbox.put)
        except Exception as exc:
            if self.phase == "startup":  # ASGI: an app that raises on lifespan doesn't support it; serve without
                log.info("the application does not support lifespan (%s); serving without it", exc)
                self.supported = False
                await self.outbox.put({"type": "lifespan.startup.complete"})
            else:
                log.exception("lifespan shutdown failed")
                await self.outbox.put({"type": "lifespan.shutdown.failed", "message": str(exc)})
        else:  # returned: any reply it did not send is taken as given
            await self.outbox.put({"type": f"lifespan.{self.phase}.complete"})


def run(app: ASGIApp, host: str, port: int, **options: Any) -> None:
    """Run the server on uvloop until a stop signal, with the open-file limit raised as far as it goes."""
    import uvloop

    raise_fd_limit()
    server = HttpServer(app, host, port, **options)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(server.serve())
