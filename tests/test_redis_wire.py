"""The admission path's own Redis connection (``state/redis_wire.py``) against a real ``redis-server`` and broken peers.

What a hand-written client must get right: an argument (a client's
attestation nonce, a request id) can never end early or smuggle a command in;
a Redis that forgot the script still gets it; credentials and the database
come from the URL as redis-py reads them; and a peer that breaks RESP, goes
silent or hangs up fails the call at once with a clear error — never a hang,
never a reply handed to the wrong request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from distillguard.state import Quota, Refusal, StateUnavailable
from distillguard.state.redis_state import MAX_PARALLEL, RedisAdmission, RedisState
from distillguard.state.redis_wire import RedisWire, WireClosed, WireTimeout, command
from tests.redis_fixtures import RedisServer
from tests.upstream_stub import free_port


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), extra_args=("--enable-debug-command", "yes")).start()  # DEBUG SLEEP
    yield server
    server.stop()


QUOTA = (Quota("key:wire", 1_000, None, None, None),)


@given(st.lists(st.binary(max_size=64), min_size=1, max_size=8))
def test_any_bytes_round_trip_through_a_request(args: list[bytes]) -> None:
    """Whatever bytes an argument holds (CR, LF, NUL, ``*``, ``$``), RESP's reader gets back exactly the same arguments."""
    reader = hiredis.Reader()
    reader.feed(command(*args))
    assert reader.gets() == args
    assert reader.gets() is False  # one request, nothing after it


def test_a_nonce_cannot_smuggle_a_command(redis: RedisServer) -> None:
    async def scenario() -> None:
        state = RedisState(redis.url)
        await state.start()
        await state.client.set("dg:canary", "alive")
        nasty = "n\r\n*1\r\n$8\r\nFLUSHALL\r\n\x00é"
        assert isinstance(await state.admit(QUOTA, 1, "rid\r\n*1\r\n$8\r\nFLUSHALL\r\n", (nasty, 60_000)), RedisAdmission)
        assert await state.admit(QUOTA, 1, "again", (nasty, 60_000)) is None  # the same nonce, stored byte for byte
        assert await state.client.get("dg:canary") == b"alive"
        assert await state.client.exists(("dg:n:" + nasty).encode()) == 1
        await state.client.delete("dg:canary")
        await state.close()

    asyncio.run(scenario())


def test_a_redis_that_forgot_the_script_gets_it_in_full(redis: RedisServer) -> None:
    async def scenario() -> None:
        state = RedisState(redis.url)
        await state.start()
        await state.client.script_flush()
        assert isinstance(await state.admit(QUOTA, 1, "alone"), RedisAdmission)
        await state.client.script_flush()
        # more at once than MAX_PARALLEL: the rest go as one pipelined batch, which must recover too
        results = await asyncio.gather(*(state.admit(QUOTA, 1, f"many-{i}") for i in range(4 * MAX_PARALLEL)))
        assert all(isinstance(r, RedisAdmission) for r in results)
        await state.close()

    asyncio.run(scenario())


def test_password_user_and_database_come_from_the_url(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, extra_args=("--requirepass", "s3cret", "--user", "gate", "on", ">pw", "~*", "&*", "+@all")).start()
    try:
        async def scenario() -> None:
            for url in (f"redis://:s3cret@127.0.0.1:{server.port}/3", f"redis://gate:pw@127.0.0.1:{server.port}/3"):
                state = RedisState(url)
                await state.start()
                assert isinstance(await state.admit(QUOTA, 1, "r1"), RedisAdmission)
                assert await state.client.exists("dg:s:key:wire") == 1  # the client of the same URL: database 3
                other = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/0")
                assert await other.exists("dg:s:key:wire") == 0
                await other.aclose()
                await state.client.flushdb()
                await state.close()
            wrong = RedisState(f"redis://:nope@127.0.0.1:{server.port}/0")
            with pytest.raises(StateUnavailable, match="AUTH"):
                await wrong.start()
            await wrong.close()

        asyncio.run(scenario())
    finally:
        server.stop()


async def _fake_redis(answer: bytes | None) -> tuple[asyncio.Server, str]:
    """A peer that reads one request and then answers ``answer`` (None: hangs up)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        if answer is None:
            writer.close()
            return
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(5)
        writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    return server, f"redis://127.0.0.1:{port}/0"


@pytest.mark.parametrize("answer, error", [
    (b"?not resp\r\n", "broken"),  # a type byte RESP does not have
    (b"+PONG\r\n+EXTRA\r\n", "nobody asked"),  # more replies than requests: the next call's reply would be wrong
    (None, "closed"),  # hangs up mid-call
])
def test_a_broken_peer_fails_the_call_at_once(answer: bytes | None, error: str) -> None:
    async def scenario() -> None:
        server, url = await _fake_redis(answer)
        settings: Any = aioredis.Redis.from_url(url).connection_pool.make_connection()
        wire = await RedisWire.open(settings, 2.0)
        async with asyncio.timeout(2):  # never a hang
            if answer is not None and answer.startswith(b"+PONG"):
                reply = await wire.call(command("PING"))
                assert reply == b"PONG"
                await asyncio.sleep(0.1)  # the extra reply arrives
                assert wire.closed
                with pytest.raises(WireClosed):
                    await wire.call(command("PING"))
            else:
                with pytest.raises(WireClosed, match=error):
                    await wire.call(command("PING"))
                assert wire.closed
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


def test_a_silent_peer_fails_the_call_at_its_deadline() -> None:
    async def scenario() -> None:
        server, url = await _fake_redis(b"")  # reads, never answers
        settings: Any = aioredis.Redis.from_url(url).connection_pool.make_connection()
        wire = await RedisWire.open(settings, 0.2)
        started = asyncio.get_running_loop().time()
        with pytest.raises(WireTimeout, match="0.2 s"):
            async with asyncio.timeout(3):  # a backstop for this test only: the wire's own deadline must fire first
                await wire.call(command("PING"))
        assert 0.19 <= asyncio.get_running_loop().time() - started < 1.5
        assert wire.closed
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


def test_a_stalled_redis_fails_every_waiting_admission_within_its_timeout(redis: RedisServer) -> None:
    """Redis busy (``DEBUG SLEEP``): the admissions in flight and those queued behind them fail after ``timeout_s``, not later."""
    async def scenario() -> None:
        state = RedisState(redis.url, timeout_s=0.3)
        await state.start()
        blocker = await RedisWire.open(aioredis.Redis.from_url(redis.url).connection_pool.make_connection(), 5.0)
        stall = blocker.send(command("DEBUG", "SLEEP", "1.5"), 1)[0]  # connected already: Redis reads it first
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(*(state.admit(QUOTA, 1, f"stalled-{i}") for i in range(4 * MAX_PARALLEL)),
                                       return_exceptions=True)
        elapsed = loop.time() - started
        assert all(isinstance(r, StateUnavailable) for r in results), results
        assert elapsed < 1.2, elapsed  # about one timeout, not one per queued batch, and not the stall's 1.5 s
        assert await stall == b"OK"
        blocker.close()
        assert isinstance(await state.admit(QUOTA, 1, "after"), RedisAdmission)  # a fresh connection, once Redis answers
        await state.close()

    asyncio.run(scenario())


def test_a_silent_redis_cannot_start_and_a_live_one_can(redis: RedisServer) -> None:
    async def scenario() -> None:
        server, url = await _fake_redis(b"")  # reads, never answers
        state = RedisState(url, timeout_s=0.2)
        with pytest.raises(StateUnavailable):
            await state.start()
        assert not state._idle  # the connection that might still get a late reply is gone
        await state.close()
        server.close()
        await server.wait_closed()
        live = RedisState(redis.url)
        await live.start()
        assert not isinstance(await live.admit(QUOTA, 1, "after"), Refusal)
        await live.close()

    asyncio.run(scenario())
