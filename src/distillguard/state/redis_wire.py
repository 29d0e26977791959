"""The admission hot path's Redis connection: RESP requests written by us, replies parsed by hiredis.

Why not redis-py's own connection: measured in ``bench/state_cost.py``, its
asyncio streams (``StreamWriter.writelines`` + ``drain``, ``StreamReader``
with a timeout context per read) and its generic ``pack_command`` cost the
gateway more CPU per admission than the rest of the request's limiter work
together, and more than the round trip itself. This module keeps only what
one script call needs: an :class:`asyncio.Protocol` that writes bytes and
hands each reply, in order, to the future waiting for it. The replies are
parsed by ``hiredis`` (Redis' own C parser, maintained with Redis), never by
hand. redis-py still does everything else: it reads the URL (address, TLS
options, credentials, database), and the rest of distillguard (pub/sub
notices, administration, tests) talks to Redis through it.

What a request can hold: :func:`bulk` prefixes every argument with its
length (RESP's bulk string), so no value — a client's attestation nonce with
CR, LF or NUL in it included — can end an argument early or start a command
of its own.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from typing import Any, cast

import hiredis

from distillguard.exceptions import DistillguardError

__all__ = ["RedisWire", "ReplyError", "WireClosed", "WireTimeout", "bulk", "command"]

ReplyError = hiredis.ReplyError  # an error reply (``-ERR …``, ``-NOSCRIPT …``): returned as a value, not raised


class WireClosed(DistillguardError, ConnectionError):
    """The connection to Redis closed, failed or sent something that is not RESP; waiting calls get this."""


class WireTimeout(WireClosed, TimeoutError):
    """A reply took longer than the connection's ``timeout_s``: the connection is closed and every call on it fails."""


def bulk(value: bytes | str | int) -> bytes:
    """One argument in RESP: ``$<length>\\r\\n<bytes>\\r\\n``."""
    data = value if isinstance(value, bytes) else value.encode() if isinstance(value, str) else b"%d" % value
    return b"$%d\r\n%b\r\n" % (len(data), data)


def command(*args: bytes | str | int) -> bytes:
    """A whole RESP request of ``args`` (the command name first)."""
    return b"*%d\r\n" % len(args) + b"".join(bulk(arg) for arg in args)


class RedisWire(asyncio.Protocol):
    """One connection; calls may overlap (Redis answers in order, so replies go to the waiting futures in order).

    Open with :meth:`open`; a connection that failed once is closed for good
    (its late replies could otherwise be taken for the next call's).

    Every call has a deadline, ``timeout_s`` after it was written: one timer
    per connection, set for the oldest call still waiting (not a timer per
    call, which cost more than the rest of a call's bookkeeping), fails the
    connection with :class:`WireTimeout` when a reply is late.
    """

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._sent: collections.deque[float] = collections.deque()  # when each waiting call was written (loop time)
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # kept: get_running_loop() costs a getpid() system call
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    @classmethod
    async def open(cls, settings: Any, timeout_s: float) -> RedisWire:
        """Connect as redis-py would for ``settings`` (a redis-py connection object, never connected): address, TLS, AUTH, SELECT."""
        from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
        from redis.credentials import UsernamePasswordCredentialProvider

        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            wire: RedisWire
            if isinstance(settings, UnixDomainSocketConnection):
                _, wire = await loop.create_unix_connection(lambda: cls(timeout_s), settings.path)
            else:
                context: ssl.SSLContext | None = settings.ssl_context.get() if isinstance(settings, SSLConnection) else None
                _, wire = await loop.create_connection(lambda: cls(timeout_s), settings.host, settings.port, ssl=context)
            try:
                provider = settings.credential_provider
                if provider is None and (settings.username or settings.password):
                    provider = UsernamePasswordCredentialProvider(settings.username, settings.password)
                if provider is not None:
                    wire._check(await wire.call(command("AUTH", *await provider.get_credentials_async())), "AUTH")
                if settings.db:
                    wire._check(await wire.call(command("SELECT", settings.db)), "SELECT")
            except BaseException:
                wire.close()
                raise
        return wire

    @staticmethod
    def _check(reply: Any, what: str) -> None:
        if isinstance(reply, ReplyError):
            raise WireClosed(f"Redis refused {what}: {reply}")

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self._loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):  # a request goes out whole, at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        try:
            while (reply := reader.gets()) is not False:
                if not waiting:
                    raise WireClosed("Redis sent a reply nobody asked for")
                future = waiting.popleft()
                self._sent.popleft()
                if not future.done():  # a cancelled call: its reply is dropped (the connection closes anyway)
                    future.set_result(reply)
        except (hiredis.ProtocolError, WireClosed) as exc:
            self._fail(WireClosed(f"Redis connection broken: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(WireClosed(f"Redis closed the connection ({exc or 'EOF'})"))

    # -- calls ------------------------------------------------------------------------------
    def send(self, requests: bytes, replies: int) -> list[asyncio.Future[Any]]:
        """Write ``requests`` (one or more whole RESP requests) in one write; one future per reply expected."""
        if self.closed or self._transport is None:
            raise WireClosed("the Redis connection is closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self._waiting.extend(futures)
        self._sent.extend([loop.time()] * replies)
        if self._timer is None and self.timeout_s is not None:
            self._timer = loop.call_at(self._sent[0] + self.timeout_s, self._check_deadline)
        self._transport.write(requests)
        return futures

    def send_one(self, request: bytes) -> asyncio.Future[Any]:
        """Write one whole RESP request; the future gets its reply. :meth:`send` for one, with nothing it does not need."""
        loop = self._loop
        if self.closed or self._transport is None or loop is None:
            raise WireClosed("the Redis connection is closed")
        future = loop.create_future()
        self._waiting.append(future)
        sent = loop.time()
        self._sent.append(sent)
        if self._timer is None and self.timeout_s is not None:
            self._timer = loop.call_at(sent + self.timeout_s, self._check_deadline)
        self._transport.write(request)
        return future

    def set_timeout(self, timeout_s: float) -> None:
        """Change the deadline of calls (e.g. after a slow start): the timer is set again for the new one."""
        self.timeout_s = timeout_s
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sent and not self.closed:
            self._timer = asyncio.get_running_loop().call_at(self._sent[0] + timeout_s, self._check_deadline)

    def _check_deadline(self) -> None:
        """The timer: fail the connection if its oldest waiting call is late, else wait for that call's deadline."""
        self._timer = None
        if not self._sent or self.closed or self.timeout_s is None:
            return  # nothing waits: the next call sets the timer again
        deadline = self._sent[0] + self.timeout_s
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            self._fail(WireTimeout(f"Redis did not answer within {self.timeout_s:g} s"))
            if self._transport is not None:
                self._transport.close()
        else:
            self._timer = loop.call_at(deadline, self._check_deadline)

    async def call(self, request: bytes) -> Any:
        """One request, its reply (an error reply is returned as a :data:`ReplyError`, not raised).

        Cancelled (a timeout): the connection is closed, since its reply may still come.
        """
        future = self.send_one(request)
        try:
            return await future
        except asyncio.CancelledError:
            self.close()
            raise

    def close(self) -> None:
        self._fail(WireClosed("the Redis connection was closed"))
        if self._transport is not None:
            self._transport.close()

    def _fail(self, exc: WireClosed) -> None:
        self.closed = True
        self._sent.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc)
