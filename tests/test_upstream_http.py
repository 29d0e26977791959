"""The pooled keep-alive HTTP/1.1 client of the upstream hop, against real loopback servers.

Most servers here are raw ``asyncio.start_server`` servers writing hand-made
HTTP bytes, so framing, timing and closing are exactly under the test's
control; one test talks to an ``aiohttp.web`` server as a real-world peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import random
import select
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from distillguard.gateway.upstream_http import (
    HIGH_WATER,
    Origin,
    UpstreamBadResponse,
    UpstreamBusy,
    UpstreamClient,
    UpstreamDisconnected,
    UpstreamResponse,
    UpstreamUnreachable,
)

pytestmark = pytest.mark.timeout(20)


# --------------------------------------------------------------------------------------------
# A raw loopback HTTP server whose every byte the test writes itself
# --------------------------------------------------------------------------------------------


@dataclass
class Request:
    connection: int  # index of the TCP connection it arrived on (0, 1, ...)
    request_line: bytes
    headers: dict[str, str]  # lowercased names
    body: bytes


@dataclass
class Conn:
    server: RawServer
    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def read_request(self) -> Request | None:
        """The next request on this connection, or None at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head[:-4].split(b"\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.decode().strip().lower()] = value.decode().strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        request = Request(self.index, lines[0], headers, body)
        self.server.requests.append(request)
        return request

    async def wait_eof(self) -> bool:
        """True once the client has closed its side (anything it still sends is discarded)."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        return True

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Handler = Callable[[Conn], Awaitable[None]]


@dataclass
class RawServer:
    handler: Handler
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    eofs: int = 0  # connections on which the handler saw the client close (via wait_eof)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def origin(self) -> Origin:
        return Origin.from_url(f"http://127.0.0.1:{self.port}/v1")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(Conn(self, index, reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # stop() at teardown; ending normally keeps 3.11's start_server callback quiet
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


def http_response(body: bytes, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status, len(body), extra, body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


# Timeouts for requests that are meant to succeed, and the ceiling on a timeout (0.2 s) that is meant to fire. The
# test's event loop also runs the raw server, and at load 20 it was once stalled for over a second: a 1 s connect
# timeout then failed a plain 204 (2026-12-07). A ceiling of 5 s still tells a deadline that fired from one that did
# not (the kernel's own connect timeout is minutes; a missing read deadline hangs the test).
CONNECT_S = 10.0
READ_S = 10.0
CEILING_S = 5.0

async def keep_alive_ok(conn: Conn) -> None:
    """Answers every request on the connection with a small JSON body naming the connection."""
    while (request := await conn.read_request()) is not None:
        await conn.send(http_response(b'{"conn": %d, "n": %d}' % (conn.index, len(conn.server.requests))))
        del request


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(handler: Handler) -> RawServer:
        server = await RawServer(handler).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    upstream = UpstreamClient()
    yield upstream
    await upstream.close()


async def get(client: UpstreamClient, origin: Origin, path: bytes = b"/models", *,
              read_timeout: float | None = READ_S) -> UpstreamResponse:
    return await client.request(origin, b"GET", path, b"", b"", connect_timeout=CONNECT_S, read_timeout=read_timeout)


async def fetch(client: UpstreamClient, origin: Origin, path: bytes = b"/models") -> tuple[int, bytes]:
    async with await get(client, origin, path) as resp:
        return resp.status, await resp.read()


# --------------------------------------------------------------------------------------------
# Origin
# --------------------------------------------------------------------------------------------


def test_origin_from_url() -> None:
    plain = Origin.from_url("http://models.internal/v1/")
    assert (plain.scheme, plain.host, plain.port, plain.base_path, plain.host_header) == (
        "http", "models.internal", 80, b"/v1", b"models.internal")
    tls = Origin.from_url("https://api.example.com")
    assert (tls.port, tls.base_path, tls.host_header) == (443, b"", b"api.example.com")
    custom = Origin.from_url("http://127.0.0.1:8000/v1")
    assert (custom.port, custom.host_header) == (8000, b"127.0.0.1:8000")
    assert Origin.from_url("https://example.com:8443/").host_header == b"example.com:8443"
    v6 = Origin.from_url("http://[::1]:9000/api/v1")
    assert (v6.host, v6.port, v6.base_path, v6.host_header) == ("::1", 9000, b"/api/v1", b"[::1]:9000")
    assert Origin.from_url("http://[::1]/").host_header == b"[::1]"
    assert plain.key == ("http", "models.internal", 80)
    for bad in ("ftp://example.com/", "example.com:80", "http:///v1"):
        with pytest.raises(ValueError):
            Origin.from_url(bad)


# --------------------------------------------------------------------------------------------
# 1. The request on the wire, and a Content-Length body
# --------------------------------------------------------------------------------------------


async def test_request_line_host_path_and_content_length(serve: Callable[[Handler], Awaitable[RawServer]],
                                                          client: UpstreamClient) -> None:
    answer = json.dumps({"id": "cmpl-1", "choices": [{"text": "hi"}]}).encode()

    async def handler(conn: Conn) -> None:
        while await conn.read_request() is not None:
            await conn.send(http_response(answer, extra=b"X-Upstream-Thing: Yes\r\n"))

    server = await serve(handler)
    payload = json.dumps({"model": "m", "prompt": "hello"}).encode()
    headers = b"Authorization: Bearer sk-test\r\nContent-Type: application/json\r\n"
    resp = await client.request(server.origin, b"POST", b"/completions", headers, payload,
                                connect_timeout=CONNECT_S, read_timeout=READ_S)
    async with resp:
        assert resp.status == 200
        assert resp.headers["content-type"] == "application/json"
        assert resp.headers["x-upstream-thing"] == "Yes"  # names lowercased, values untouched
        assert resp.headers["content-length"] == str(len(answer))
        assert json.loads(await resp.read()) == {"id": "cmpl-1", "choices": [{"text": "hi"}]}

    [request] = server.requests
    assert request.request_line == b"POST /v1/completions HTTP/1.1"
    assert request.headers["host"] == f"127.0.0.1:{server.port}"  # non-default port is shown
    assert request.headers["content-length"] == str(len(payload))
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["content-type"] == "application/json"
    assert request.body == payload

    # A GET carries an explicit zero length and the base path prefix too.
    assert (await fetch(client, server.origin, b"/models"))[0] == 200
    assert server.requests[1].request_line == b"GET /v1/models HTTP/1.1"
    assert server.requests[1].headers["content-length"] == "0"
    assert server.requests[1].body == b""


async def test_large_request_body_arrives_intact(serve: Callable[[Handler], Awaitable[RawServer]],
                                                 client: UpstreamClient) -> None:
    """Bodies of 64 KiB and more take the two-buffer write path."""

    async def handler(conn: Conn) -> None:
        while (request := await conn.read_request()) is not None:
            await conn.send(http_response(hashlib.sha256(request.body).hexdigest().encode()))

    server = await serve(handler)
    for size in (65535, 65536, 300_000):
        payload = random.Random(size).randbytes(size)
        resp = await client.request(server.origin, b"POST", b"/embeddings", b"", payload,
                                    connect_timeout=CONNECT_S, read_timeout=READ_S)
        async with resp:
            assert await resp.read() == hashlib.sha256(payload).hexdigest().encode()
        assert server.requests[-1].headers["content-length"] == str(size)
    assert server.connections == 1


async def test_json_round_trip_with_aiohttp_server(client: UpstreamClient) -> None:
    seen: list[dict[str, Any]] = []

    async def echo(request: web.Request) -> web.Response:
        body = await request.json()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.append({"method": request.method, "path": request.path, "host": request.headers["Host"],
                     "length": request.content_length, "peer": peer})
        return web.json_response({"echo": body, "path": request.path})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        origin = Origin.from_url(f"http://127.0.0.1:{port}/v1/")
        for n in range(3):
            payload = json.dumps({"messages": [{"role": "user", "content": f"hi {n}"}]}).encode()
            resp = await client.request(origin, b"POST", b"/chat/completions",
                                        b"Content-Type: application/json\r\n", payload,
                                        connect_timeout=CONNECT_S, read_timeout=READ_S)
            async with resp:
                assert resp.status == 200
                assert resp.headers["content-type"].startswith("application/json")
                assert json.loads(await resp.read()) == {"echo": json.loads(payload), "path": "/v1/chat/completions"}
            assert seen[-1]["length"] == len(payload)
        assert [s["host"] for s in seen] == [f"127.0.0.1:{port}"] * 3
        assert [s["method"] for s in seen] == ["POST"] * 3
        assert len({s["peer"] for s in seen}) == 1  # one keep-alive connection for all three
        assert client.open_connections == 1
    finally:
        await client.close()
        await runner.cleanup()


# --------------------------------------------------------------------------------------------
# 2-3. Chunked and read-until-close bodies
# --------------------------------------------------------------------------------------------


async def test_chunked_body_streams_before_the_response_is_complete(
        serve: Callable[[Handler], Awaitable[RawServer]], client: UpstreamClient) -> None:
    seen = asyncio.Event()  # the client has been handed a piece since the server last sent one
    finished = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(CHUNKED_HEAD + chunk(b"data: first\n\n"))
        for n in range(3):
            # Each chunk is held back until the client has been handed what came before it: a client that waited
            # for more (or for the end) before handing anything out would never get the rest (the deadline fails it).
            await asyncio.wait_for(seen.wait(), 10)
            seen.clear()
            await conn.send(chunk(b"data: %d\n\n" % n))
        await asyncio.wait_for(seen.wait(), 10)
        await conn.send(LAST_CHUNK)
        finished.set()
        await keep_alive_ok(conn)

    server = await serve(handler)
    pieces: list[bytes] = []
    async with await get(client, server.origin, b"/chat/completions") as resp:
        assert resp.status == 200
        assert resp.headers["transfer-encoding"] == "chunked"
        async for piece in resp.iter_chunks():
            if not pieces:
                assert piece == b"data: first\n\n"
            assert not finished.is_set()  # every chunk is handed out before the response is complete
            pieces.append(piece)
            seen.set()
    assert finished.is_set()
    assert b"".join(pieces) == b"data: first\n\ndata: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert len(pieces) >= 4  # one piece at least per chunk: each was handed out before the next one was sent
    # A chunked response read to its end leaves a reusable connection.
    assert await fetch(client, server.origin) == (200, b'{"conn": 0, "n": 2}')
    assert server.connections == 1


async def test_read_until_close_body(serve: Callable[[Handler], Awaitable[RawServer]], client: UpstreamClient) -> None:
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await asyncio.sleep(0.05)
        await conn.send(b"part two")
        # returning closes the connection: that ends the body

    server = await serve(handler)
    async with await get(client, server.origin) as resp:
        assert resp.status == 200
        assert await resp.read() == b"part one, part two"
    async with await get(client, server.origin) as resp:
        assert b"".join([piece async for piece in resp.iter_chunks()]) == b"part one, part two"
    assert server.connections == 2  # a close-delimited body can't leave a reusable connection
    await asyncio.sleep(0.01)
    assert client.open_connections == 0


async def test_status_without_body(serve: Callable[[Handler], Awaitable[RawServer]], client: UpstreamClient) -> None:
    async def handler(conn: Conn) -> None:
        while await conn.read_request() is not None:
            await conn.send(b"HTTP/1.1 204 No Content\r\n\r\n")

    server = await serve(handler)
    assert await fetch(client, server.origin) == (204, b"")
    assert await fetch(client, server.origin) == (204, b"")
    assert server.connections == 1


# --------------------------------------------------------------------------------------------
# 4. Keep-alive reuse
# --------------------------------------------------------------------------------------------


async def test_sequential_requests_share_one_connection(serve: Callable[[Handler], Awaitable[RawServer]],
                                                        client: UpstreamClient) -> None:
    server = await serve(keep_alive_ok)
    assert await fetch(client, server.origin) == (200, b'{"conn": 0, "n": 1}')
    assert client.open_connections == 1
    assert await fetch(client, server.origin) == (200, b'{"conn": 0, "n": 2}')
    # Reading through iter_chunks to the end also returns the connection.
    async with await get(client, server.origin) as resp:
        assert b"".join([p async for p in resp.iter_chunks()]) == b'{"conn": 0, "n": 3}'
    assert await fetch(client, server.origin) == (200, b'{"conn": 0, "n": 4}')
    assert server.connections == 1
    assert [r.connection for r in server.requests] == [0, 0, 0, 0]
    assert client.open_connections == 1


async def test_concurrent_requests_get_their_own_connections(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    server = await serve(keep_alive_ok)
    client = UpstreamClient(max_idle_per_origin=2)
    try:
        results = await asyncio.gather(*(fetch(client, server.origin) for _ in range(3)))
        assert [status for status, _ in results] == [200, 200, 200]
        assert server.connections == 3
        await asyncio.sleep(0.01)
        assert client.open_connections == 2  # the third one found the idle list full and was closed
        await asyncio.gather(*(fetch(client, server.origin) for _ in range(2)))
        assert server.connections == 3
    finally:
        await client.close()


async def test_connection_close_response_is_not_reused(serve: Callable[[Handler], Awaitable[RawServer]],
                                                       client: UpstreamClient) -> None:
    async def handler(conn: Conn) -> None:
        while await conn.read_request() is not None:
            await conn.send(http_response(b"{}", extra=b"Connection: close\r\n"))
            await conn.wait_eof()  # the client, not the server, must close this one
            conn.server.eofs += 1
            return

    server = await serve(handler)
    assert await fetch(client, server.origin) == (200, b"{}")
    assert client.open_connections == 0
    assert await fetch(client, server.origin) == (200, b"{}")
    assert server.connections == 2
    for _ in range(100):
        if server.eofs == 2:
            break
        await asyncio.sleep(0.01)
    assert server.eofs == 2


async def test_unfinished_response_is_not_reused(serve: Callable[[Handler], Awaitable[RawServer]],
                                                 client: UpstreamClient) -> None:
    async def handler(conn: Conn) -> None:
        if conn.index > 0:
            await keep_alive_ok(conn)
            return
        await conn.read_request()
        await conn.send(CHUNKED_HEAD + chunk(b"part"))  # the rest never comes
        await conn.wait_eof()
        conn.server.eofs += 1

    server = await serve(handler)
    async with await get(client, server.origin) as resp:
        assert resp.status == 200  # body never read, and not complete
    assert client.open_connections == 0
    assert await fetch(client, server.origin) == (200, b'{"conn": 1, "n": 2}')
    assert server.eofs == 1


async def test_complete_but_unconsumed_response_is_reused(serve: Callable[[Handler], Awaitable[RawServer]],
                                                          client: UpstreamClient) -> None:
    """A small body that arrived with the headers is complete: the connection is clean to reuse."""
    server = await serve(keep_alive_ok)
    async with await get(client, server.origin) as resp:
        assert resp.status == 200
        await asyncio.sleep(0.02)
    assert await fetch(client, server.origin) == (200, b'{"conn": 0, "n": 2}')


async def test_idle_connections_expire(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    server = await serve(keep_alive_ok)
    client = UpstreamClient(idle_timeout_s=0.05)
    try:
        await fetch(client, server.origin)
        await asyncio.sleep(0.1)
        assert await fetch(client, server.origin) == (200, b'{"conn": 1, "n": 2}')
        assert server.connections == 2
        await asyncio.sleep(0.01)
        assert client.open_connections == 1
    finally:
        await client.close()


async def test_unsolicited_bytes_on_an_idle_connection_drop_it(
        serve: Callable[[Handler], Awaitable[RawServer]], client: UpstreamClient) -> None:
    async def handler(conn: Conn) -> None:
        if conn.index > 0:
            await keep_alive_ok(conn)
            return
        await conn.read_request()
        await conn.send(http_response(b"{}"))
        await asyncio.sleep(0.02)
        await conn.send(b"HTTP/1.1 200 OK\r\n")  # nobody asked
        await conn.wait_eof()
        conn.server.eofs += 1

    server = await serve(handler)
    await fetch(client, server.origin)
    await asyncio.sleep(0.1)
    assert client.open_connections == 0
    assert server.eofs == 1
    assert await fetch(client, server.origin) == (200, b'{"conn": 1, "n": 2}')


# --------------------------------------------------------------------------------------------
# 5. Stale keep-alive connections and servers that hang up
# --------------------------------------------------------------------------------------------


async def test_connection_closed_while_idle_is_replaced(serve: Callable[[Handler], Awaitable[RawServer]],
                                                        client: UpstreamClient) -> None:
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(http_response(b'{"ok": 1}'))  # keep-alive advertised, then the server times out
        await asyncio.sleep(0.02)

    server = await serve(handler)
    assert await fetch(client, server.origin) == (200, b'{"ok": 1}')
    await asyncio.sleep(0.1)
    assert client.open_connections == 0  # the close was noticed while idle
    assert await fetch(client, server.origin) == (200, b'{"ok": 1}')
    assert server.connections == 2
    assert len(server.requests) == 2


async def test_close_racing_the_next_request_is_retried(serve: Callable[[Handler], Awaitable[RawServer]],
                                                        client: UpstreamClient) -> None:
    """The server hangs up right after answering; the next request usually goes out before the EOF is seen
    (checked by instrumenting connection_lost: 19 of 20 requests took the retry path), so it is retried."""

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        conn.writer.write(http_response(b'{"ok": 1}'))
        # returning closes the connection at once

    server = await serve(handler)
    for _ in range(5):
        assert await fetch(client, server.origin) == (200, b'{"ok": 1}')
    assert len(server.requests) == 5


async def test_stale_reused_connection_is_retried_once_on_a_new_one(
        serve: Callable[[Handler], Awaitable[RawServer]], client: UpstreamClient) -> None:
    """Deterministic form of the race: the pooled connection dies on the request without a byte back."""

    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            await conn.read_request()
            await conn.send(http_response(b'{"ok": 0}'))
            await conn.read_request()  # from the client's side as good as closed before it arrived
            return
        await keep_alive_ok(conn)

    server = await serve(handler)
    assert await fetch(client, server.origin) == (200, b'{"ok": 0}')
    assert await fetch(client, server.origin) == (200, b'{"conn": 1, "n": 3}')
    assert [r.connection for r in server.requests] == [0, 0, 1]


async def test_server_hanging_up_on_a_fresh_connection_is_not_retried(
        serve: Callable[[Handler], Awaitable[RawServer]], client: UpstreamClient) -> None:
    async def handler(conn: Conn) -> None:
        await conn.read_request()  # and hang up without answering

    server = await serve(handler)
    with pytest.raises(UpstreamDisconnected):
        await get(client, server.origin)
    assert len(server.requests) == 1
    assert server.connections == 1
    assert client.open_connections == 0


async def test_server_hanging_up_after_a_reused_request_is_retried_only_once(
        serve: Callable[[Handler], Awaitable[RawServer]], client: UpstreamClient) -> None:
    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            await conn.read_request()
            await conn.send(http_response(b'{"ok": 0}'))
        await conn.read_request()  # then hang up without answering, on every connection

    server = await serve(handler)
    assert await fetch(client, server.origin) == (200, b'{"ok": 0}')
    with pytest.raises(UpstreamDisconnected):
        await get(client, server.origin)
    # the answered one, the one on the reused connection, and exactly one retry on a fresh connection
    assert len(server.requests) == 3
    assert [r.connection for r in server.requests] == [0, 0, 1]
    assert client.open_connections == 0


async def test_retry_after_a_stale_connection_uses_a_fresh_one(
        serve: Callable[[Handler], Awaitable[RawServer]], client: UpstreamClient) -> None:
    """Two pooled connections that the server has (from the client's view) both closed, e.g. after a restart."""
    restarted = False

    async def handler(conn: Conn) -> None:
        while await conn.read_request() is not None:
            if restarted and conn.index < 2:
                return  # an old connection: dies without a byte back
            await conn.send(http_response(b'{"conn": %d}' % conn.index))

    server = await serve(handler)
    await asyncio.gather(fetch(client, server.origin), fetch(client, server.origin))
    assert server.connections == 2
    assert client.open_connections == 2  # both are idle in the pool now
    restarted = True
    assert await fetch(client, server.origin) == (200, b'{"conn": 2}')


async def post(client: UpstreamClient, origin: Origin, body: bytes = b'{"model": "m"}', *,
               read_timeout: float | None = READ_S) -> UpstreamResponse:
    return await client.request(origin, b"POST", b"/chat/completions", b"Content-Type: application/json\r\n", body,
                                connect_timeout=CONNECT_S, read_timeout=read_timeout)


async def test_a_post_the_server_may_have_read_is_never_resent(
        serve: Callable[[Handler], Awaitable[RawServer]], client: UpstreamClient) -> None:
    """Issue #12 finding 7: a POST on a kept-alive connection that closes before the answer starts.

    The server read it (and a model server would have started generating), so
    sending it again would generate it twice. Before: retried on a new
    connection, the server saw it twice.
    """
    async def handler(conn: Conn) -> None:
        if conn.index == 0:
            await conn.read_request()
            await conn.send(http_response(b'{"ok": 0}'))
            await conn.read_request()  # read, then hang up without a byte back
            return
        await keep_alive_ok(conn)

    server = await serve(handler)
    async with await post(client, server.origin) as first:
        assert await first.read() == b'{"ok": 0}'
    with pytest.raises(UpstreamDisconnected):
        await post(client, server.origin, b'{"model": "m", "n": 2}')
    assert [r.body for r in server.requests].count(b'{"model": "m", "n": 2}') == 1
    assert server.connections == 1
    async with await post(client, server.origin) as third:  # the next request gets a new connection
        assert third.status == 200
    assert server.connections == 2


async def test_a_post_on_a_connection_closed_while_idle_goes_on_a_new_one(
        serve: Callable[[Handler], Awaitable[RawServer]], client: UpstreamClient) -> None:
    """Closed before we wrote (the close was seen while idle): nothing was sent, so a new connection is used."""
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(http_response(b'{"conn": %d}' % conn.index))  # keep-alive advertised, then closed

    server = await serve(handler)
    async with await post(client, server.origin) as first:
        assert await first.read() == b'{"conn": 0}'
    await asyncio.sleep(0.1)
    async with await post(client, server.origin) as second:
        assert await second.read() == b'{"conn": 1}'
    assert len(server.requests) == 2


@pytest.mark.parametrize("interim", [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"])
async def test_an_interim_1xx_is_not_the_answer_and_never_answers_the_next_request(
        serve: Callable[[Handler], Awaitable[RawServer]], client: UpstreamClient, interim: bytes) -> None:
    """A 1xx before the answer, in its own packet: it was taken for the answer (an empty body, a 502), and the real
    answer, arriving later on the pooled connection, was read by the next request as its own."""
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(interim)
        await asyncio.sleep(0.2)
        await conn.send(http_response(b'{"for": "first"}'))
        while await conn.read_request() is not None:
            await conn.send(http_response(b'{"for": "second"}'))

    server = await serve(handler)
    async with await post(client, server.origin) as first:
        assert (first.status, await first.read()) == (200, b'{"for": "first"}')
    async with await post(client, server.origin) as second:
        assert (second.status, await second.read()) == (200, b'{"for": "second"}')
    assert server.connections == 1


@pytest.mark.parametrize(("answer", "why"), [
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", "switched protocols"),
    (http_response(b"{}", status=b"999 Odd"), "status 999 is no HTTP status"),
    (http_response(b"{}", status=b"099 Odd"), "status 99 is no HTTP status"),
])
async def test_an_upgrade_or_a_status_outside_200_599_is_a_bad_response(
        serve: Callable[[Handler], Awaitable[RawServer]], client: UpstreamClient, answer: bytes, why: str) -> None:
    """101 used to escape the parser as an exception the loop logged with a traceback; 999 was relayed as a status."""
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(answer)
        await conn.wait_eof()

    server = await serve(handler)
    with pytest.raises(UpstreamBadResponse, match=why):
        async with await post(client, server.origin) as response:
            await response.read()
    assert client.open_connections == 0


def test_idle_expiry_defaults_below_common_upstream_keep_alives() -> None:
    assert UpstreamClient().idle_timeout_s <= 4.0
    from distillguard.config import UpstreamSettings

    settings = UpstreamSettings(name="x", base_url="http://127.0.0.1:1/v1")
    assert settings.idle_timeout_s <= 4.0 and settings.max_connections == 256


async def test_connections_per_origin_are_capped_and_requests_queue(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    open_now = 0
    most = 0

    async def handler(conn: Conn) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            while await conn.read_request() is not None:
                await asyncio.sleep(0.05)
                await conn.send(http_response(b'{"conn": %d}' % conn.index))
        finally:
            open_now -= 1

    server = await serve(handler)
    client = UpstreamClient(max_connections_per_origin=2)
    try:
        results = await asyncio.gather(*(fetch(client, server.origin) for _ in range(8)))
        assert [status for status, _ in results] == [200] * 8
        assert server.connections == 2 and most == 2  # the other six waited for one of the two
        assert client.open_connections == 2
    finally:
        await client.close()


async def test_an_origin_may_have_its_own_cap_and_a_wait_can_time_out(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(CHUNKED_HEAD + chunk(b"data: a\n\n"))  # a stream that never ends
        await conn.wait_eof()

    server = await serve(handler)
    client = UpstreamClient()
    origin = Origin.from_url(f"http://127.0.0.1:{server.port}/v1", max_connections=1)
    try:
        busy = await get(client, origin, read_timeout=5)
        with pytest.raises(UpstreamBusy, match="all 1 connections"):
            await get(client, origin, read_timeout=0.2)
        busy.release()  # closes the unfinished stream: its place is free again
        again = await get(client, origin, read_timeout=5)
        assert again.status == 200 and server.connections == 2
        again.release()
    finally:
        await client.close()


async def test_a_waiter_that_gives_up_does_not_leak_the_place(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    server = await serve(keep_alive_ok)
    client = UpstreamClient(max_connections_per_origin=1)
    try:
        held = await get(client, server.origin)
        waiting = asyncio.create_task(get(client, server.origin))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await held.read()
        held.release()
        assert await fetch(client, server.origin) == (200, b'{"conn": 0, "n": 2}')  # the one connection, reused
        assert client._pools[server.origin.key].open == 1
    finally:
        await client.close()


# --------------------------------------------------------------------------------------------
# 6. Unreachable upstreams
# --------------------------------------------------------------------------------------------


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connection_refused(client: UpstreamClient) -> None:
    origin = Origin.from_url(f"http://127.0.0.1:{_unused_port()}/v1")
    started = time.monotonic()
    with pytest.raises(UpstreamUnreachable, match="cannot connect"):
        await get(client, origin)
    assert time.monotonic() - started < CEILING_S
    assert client.open_connections == 0


def _saturated_listener() -> tuple[socket.socket, list[socket.socket], int] | None:
    """A listener whose accept queue is full, so that further SYNs are dropped (Linux).

    Returns the listener, the sockets filling its queue and its port, or None if the
    platform completes connections anyway.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers: list[socket.socket] = []
    for _ in range(8):
        sock = socket.socket()
        sock.setblocking(False)
        fillers.append(sock)
        sock.connect_ex(("127.0.0.1", port))
        _, writable, _ = select.select([], [sock], [], 0.2)
        if not writable:
            return listener, fillers, port  # this SYN went unanswered: the queue is full
    for sock in [listener, *fillers]:
        sock.close()
    return None


async def test_connect_timeout(client: UpstreamClient) -> None:
    saturated = _saturated_listener()
    if saturated is None:
        pytest.skip("this platform completes TCP handshakes to a full accept queue; no way to stall connect()")
    listener, fillers, port = saturated
    try:
        origin = Origin.from_url(f"http://127.0.0.1:{port}/v1")
        started = time.monotonic()
        with pytest.raises(UpstreamUnreachable, match="took longer than 0.2s"):
            await client.request(origin, b"GET", b"/models", b"", b"", connect_timeout=0.2, read_timeout=2.0)
        assert 0.15 < time.monotonic() - started < CEILING_S
        assert client.open_connections == 0
    finally:
        for sock in [listener, *fillers]:
            sock.close()


async def test_os_connect_timeout_without_a_connect_timeout(monkeypatch: pytest.MonkeyPatch,
                                                            client: UpstreamClient) -> None:
    """The kernel giving up on a SYN (ETIMEDOUT after ~2 min) is simulated; it is too slow to wait for."""
    loop = asyncio.get_running_loop()

    async def kernel_gives_up(*args: Any, **kwargs: Any) -> Any:
        raise TimeoutError(errno.ETIMEDOUT, "Connection timed out")

    monkeypatch.setattr(loop, "create_connection", kernel_gives_up)
    with pytest.raises(UpstreamUnreachable):
        await client.request(Origin.from_url("http://127.0.0.1:9/v1"), b"GET", b"/", b"", b"",
                             connect_timeout=None, read_timeout=1.0)


# --------------------------------------------------------------------------------------------
# 7. Read timeouts
# --------------------------------------------------------------------------------------------


async def test_read_timeout_before_headers(serve: Callable[[Handler], Awaitable[RawServer]],
                                           client: UpstreamClient) -> None:
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.wait_eof()
        conn.server.eofs += 1

    server = await serve(handler)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await get(client, server.origin, read_timeout=0.2)
    assert 0.15 < time.monotonic() - started < CEILING_S
    assert client.open_connections == 0
    await asyncio.sleep(0.05)
    assert server.eofs == 1  # the abandoned connection was closed


async def test_read_timeout_after_headers(serve: Callable[[Handler], Awaitable[RawServer]],
                                          client: UpstreamClient) -> None:
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(CHUNKED_HEAD + chunk(b"data: one\n\n"))
        await conn.wait_eof()  # then stall

    server = await serve(handler)
    pieces = []
    async with await get(client, server.origin, read_timeout=0.2) as resp:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async for piece in resp.iter_chunks():
                pieces.append(piece)
        assert 0.15 < time.monotonic() - started < CEILING_S
    assert pieces == [b"data: one\n\n"]
    assert client.open_connections == 0

    async with await get(client, server.origin, read_timeout=0.2) as resp:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await resp.read()
        assert 0.15 < time.monotonic() - started < CEILING_S
    assert client.open_connections == 0


async def test_slow_but_steady_stream_does_not_time_out(serve: Callable[[Handler], Awaitable[RawServer]],
                                                        client: UpstreamClient) -> None:
    # A piece every 0.05 s, 1.25 s in all, against a read timeout of 1 s: the timeout bounds each wait, not the
    # stream. The margin per wait is 20-fold, so a process stalled by a busy machine (the server shares this event
    # loop) must stall for most of a second to fail it.
    expected = b"".join(b"%d;" % n for n in range(25))

    async def handler(conn: Conn) -> None:
        while await conn.read_request() is not None:
            await conn.send(CHUNKED_HEAD)
            for n in range(25):
                await asyncio.sleep(0.05)
                await conn.send(chunk(b"%d;" % n))
            await conn.send(LAST_CHUNK)

    server = await serve(handler)
    started = time.monotonic()
    async with await get(client, server.origin, read_timeout=1.0) as resp:
        body = b"".join([piece async for piece in resp.iter_chunks()])
    assert body == expected
    assert time.monotonic() - started > 1.0  # over the read timeout in total
    async with await get(client, server.origin, read_timeout=1.0) as resp:
        assert await resp.read() == expected
    assert server.connections == 1


# --------------------------------------------------------------------------------------------
# 8. Broken responses
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [
    b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    b"HTTP/1.1 abc Nope\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header Line\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
])
async def test_garbage_before_the_body(garbage: bytes, serve: Callable[[Handler], Awaitable[RawServer]],
                                       client: UpstreamClient) -> None:
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(garbage)
        await conn.wait_eof()

    server = await serve(handler)
    with pytest.raises(UpstreamBadResponse, match="invalid HTTP"):
        await get(client, server.origin)
    assert client.open_connections == 0


async def test_garbage_in_a_chunked_body(serve: Callable[[Handler], Awaitable[RawServer]],
                                         client: UpstreamClient) -> None:
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(CHUNKED_HEAD + chunk(b"good") + b"zz\r\nbad\r\n")
        await conn.wait_eof()

    server = await serve(handler)
    pieces = []
    async with await get(client, server.origin) as resp:
        with pytest.raises(UpstreamBadResponse):
            async for piece in resp.iter_chunks():
                pieces.append(piece)
    assert b"".join(pieces) == b"good"
    assert client.open_connections == 0


@pytest.mark.parametrize(("sent", "at"), [
    (b"HTTP/1.1 200 OK\r\nContent-Le", "headers"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..", "body"),
    (CHUNKED_HEAD + chunk(b"one") + b"5\r\ntw", "body"),
])
async def test_truncated_response(sent: bytes, at: str, serve: Callable[[Handler], Awaitable[RawServer]],
                                  client: UpstreamClient) -> None:
    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(sent)  # and hang up

    server = await serve(handler)
    if at == "headers":
        with pytest.raises(UpstreamDisconnected):
            await get(client, server.origin)
    else:
        async with await get(client, server.origin) as resp:
            with pytest.raises(UpstreamDisconnected):
                await resp.read()
    assert len(server.requests) == 1  # a fresh connection is never retried
    assert client.open_connections == 0


# --------------------------------------------------------------------------------------------
# 9. Stopping early
# --------------------------------------------------------------------------------------------


async def test_leaving_early_closes_the_connection(serve: Callable[[Handler], Awaitable[RawServer]],
                                                   client: UpstreamClient) -> None:
    client_gone = asyncio.Event()

    async def handler(conn: Conn) -> None:
        if conn.index > 0:
            await keep_alive_ok(conn)
            return
        await conn.read_request()
        await conn.send(CHUNKED_HEAD + chunk(b"data: token\n\n"))
        await conn.wait_eof()  # a model server would stop generating here
        client_gone.set()

    server = await serve(handler)
    async with await get(client, server.origin) as resp:
        async for piece in resp.iter_chunks():
            assert piece == b"data: token\n\n"
            break
    await asyncio.wait_for(client_gone.wait(), CEILING_S)
    assert client.open_connections == 0
    assert await fetch(client, server.origin) == (200, b'{"conn": 1, "n": 2}')
    assert server.connections == 2


# --------------------------------------------------------------------------------------------
# 10. Back-pressure
# --------------------------------------------------------------------------------------------

BIG = random.Random(1234).randbytes(8 << 20)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_back_pressure_bounds_buffering_for_a_slow_reader(
        framing: str, serve: Callable[[Handler], Awaitable[RawServer]], client: UpstreamClient) -> None:
    async def handler(conn: Conn) -> None:
        while await conn.read_request() is not None:
            if framing == "chunked":
                await conn.send(CHUNKED_HEAD)
                for offset in range(0, len(BIG), 65536):
                    conn.writer.write(chunk(BIG[offset:offset + 65536]))
                    await conn.writer.drain()
                await conn.send(LAST_CHUNK)
            else:
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BIG))
                conn.writer.write(BIG)
                await conn.writer.drain()

    server = await serve(handler)
    digest = hashlib.sha256()
    received = 0
    most_buffered = 0
    paused_seen = False
    async with await get(client, server.origin) as resp:
        async for piece in resp.iter_chunks():
            digest.update(piece)
            received += len(piece)
            await asyncio.sleep(0.01)  # a slow client; meanwhile the upstream keeps sending
            most_buffered = max(most_buffered, resp._buffered)
            paused_seen = paused_seen or resp._conn._paused
    assert received == len(BIG)
    assert digest.hexdigest() == hashlib.sha256(BIG).hexdigest()
    assert paused_seen, "reading from the upstream was never paused"
    # at most one socket read (256 KiB for asyncio's selector transports) lands after the pause
    assert most_buffered <= HIGH_WATER + (512 << 10), most_buffered
    assert most_buffered > HIGH_WATER // 2  # the reader really was slow enough to fill the buffer
    # paused and resumed reading leaves the connection clean and back in the pool
    assert client.open_connections == 1
    assert resp._conn._paused is False


async def test_read_of_a_body_larger_than_high_water(serve: Callable[[Handler], Awaitable[RawServer]],
                                                     client: UpstreamClient) -> None:
    body = BIG[: HIGH_WATER * 2]

    async def handler(conn: Conn) -> None:
        while await conn.read_request() is not None:
            await conn.send(http_response(body))

    server = await serve(handler)
    async with await get(client, server.origin, read_timeout=0.5) as resp:
        assert await resp.read() == body


# --------------------------------------------------------------------------------------------
# 11. Closing the client
# --------------------------------------------------------------------------------------------


async def test_close_closes_every_connection(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    async def handler(conn: Conn) -> None:
        while (request := await conn.read_request()) is not None:
            if b"/stream" in request.request_line:
                await conn.send(CHUNKED_HEAD + chunk(b"data: token\n\n"))
                await conn.wait_eof()
                break
            await conn.send(http_response(b"{}"))
        conn.server.eofs += 1  # the client closed the connection

    server = await serve(handler)
    client = UpstreamClient()
    await asyncio.gather(*(fetch(client, server.origin) for _ in range(3)))
    assert client.open_connections == 3
    in_use = await get(client, server.origin, b"/stream")  # one of them busy while the client closes
    assert client.open_connections == 3
    await client.close()
    assert client.open_connections == 0
    assert not any(pool.idle for pool in client._pools.values())
    with pytest.raises(UpstreamDisconnected):
        await in_use.read()
    in_use.release()
    for _ in range(100):
        if server.eofs == 3:
            break
        await asyncio.sleep(0.01)
    assert server.eofs == 3
    assert client.open_connections == 0


def _test_ca(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throwaway CA and a 127.0.0.1 server certificate it signed: (server context, client context trusting the CA)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "distillguard test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(hours=1)).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    return server, client


async def test_https_upstream_with_keep_alive(tmp_path: Path) -> None:
    """An https upstream (a hosted API): verified TLS, SNI/Host for the address, and the connection kept alive."""
    server_ctx, client_ctx = _test_ca(tmp_path)
    accepted = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                writer.write(http_response(b'{"echo": ' + body + b"}"))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    origin = Origin.from_url(f"https://127.0.0.1:{port}/v1")
    client = UpstreamClient(ssl_context=client_ctx)
    try:
        for i in range(3):
            async with await client.request(origin, b"POST", b"/chat/completions", b"", b'{"n": %d}' % i,
                                             connect_timeout=5, read_timeout=5) as resp:
                assert resp.status == 200
                assert await resp.read() == b'{"echo": {"n": %d}}' % i
        assert accepted == 1
        untrusting = UpstreamClient(ssl_context=ssl.create_default_context())  # the system CAs don't know our test CA
        with pytest.raises(UpstreamUnreachable, match="cannot connect"):
            await untrusting.request(origin, b"POST", b"/chat/completions", b"", b"{}", connect_timeout=5, read_timeout=5)
        await untrusting.close()
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
