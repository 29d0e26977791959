"""Headroom grants with a real Redis: replicas admit from slices reserved far below a limit, never past it.

Issue #13 ("Redis state within 25 % CPU per request"): a replica that is far
below every limit of a key and its account gets a slice of each reserved in
the admission script and admits the next requests from it without a round
trip. These tests hold it to what docs/deploy.md promises: three replicas
sharing a limit never exceed it while slices are in use, and once every
slice is handed back Redis counts exactly the requests admitted; near a
limit there is no slice, so every request is decided in Redis; concurrency
pools never take a key past its concurrent limit; a killed replica's slice
is bounded (60 s past its grant's end for the window, one lease for pool
slots); a block, a throttle and new limits reach a replica that holds a
slice within a second (new limits by a change notice, not the registry's
poll, and they end the slice at once); a key seen now and then reserves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis as redis_client

from distillguard.config import Settings
from distillguard.gateway.app import Gateway
from distillguard.state import Quota, Refusal
from distillguard.state.notify import CHANNEL, RedisNotifier
from distillguard.state.redis_state import RedisAdmission, RedisState
from distillguard.store.registry import Registry
from tests.gateway_fixtures import RunningGateway, start_gateway, write_config
from tests.redis_fixtures import RedisServer
from tests.upstream_stub import UpstreamStub

COUNTS = ("n", "t", "o", "om", "cs", "cn", "ct", "cm", "day", "used")  # dg:s:<subject>: ten packed doubles (redis_state.py)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


async def _counts(state: RedisState, subject: str) -> dict[str, float]:
    raw = await state.client.get(f"dg:s:{subject}")
    return dict(zip(COUNTS, struct.unpack("<10d", raw), strict=True)) if raw else {}


def test_three_replicas_admitting_from_headroom_never_pass_a_shared_limit(redis: RedisServer) -> None:
    """3,000/min on a key, 1M tokens/min on its account: 4,500 attempts over three replicas admit at most 3,000.

    With most requests admitted from headroom (far fewer calls than
    requests), and once the replicas hand back what they did not use,
    Redis' count is exactly the number admitted and the key's last requests
    were decided one by one in Redis: 3,000 admitted, not fewer.
    """
    async def scenario() -> None:
        replicas = [RedisState(redis.url) for _ in range(3)]
        for replica in replicas:
            await replica.start()
        quotas = (Quota("key:shared", 3_000, None, None, None), Quota("acct:shared", None, 1_000_000, None, 20_000_000))
        admitted = [0, 0, 0]

        async def run(i: int) -> None:
            for step in range(1_500):
                got = await replicas[i].admit(quotas, 20, f"r{i}-{step}")
                if isinstance(got, RedisAdmission):
                    admitted[i] += 1
                    replicas[i].settle(got, 35)  # prompt and completion: the completion's tokens from headroom too
                if step % 50 == 0:
                    await asyncio.sleep(0)  # the replicas interleave

        await asyncio.gather(*(run(i) for i in range(3)))
        calls = sum(replica.calls for replica in replicas)
        local = sum(replica.local for replica in replicas)
        for replica in replicas:
            await replica.close()  # hands back unused headroom
        assert sum(admitted) <= 3_000, admitted
        refusals = 4_500 - sum(admitted)  # each decided in Redis, one call each
        assert local > 2_000 and calls - refusals < sum(admitted) / 10, (local, calls)  # headroom was in use
        key = await _counts(replicas[0], "key:shared")
        account = await _counts(replicas[0], "acct:shared")
        assert key["n"] == sum(admitted), (key, admitted)  # every unused slice came back: Redis counts what was admitted
        assert account["t"] == account["used"] == 35 * sum(admitted)  # and every token settled
        late = RedisState(redis.url, headroom_ms=0)
        await late.start()
        more = sum([not isinstance(await late.admit(quotas, 20, f"late{i}"), Refusal) for i in range(3_000 - sum(admitted) + 5)])
        assert sum(admitted) + more == 3_000, (admitted, more)  # the limit, exactly
        await late.close()

    asyncio.run(scenario())


def test_near_a_limit_every_request_is_decided_in_redis(redis: RedisServer) -> None:
    """200/min: headroom (2 a slice) only while 16 or more are left, so the last requests go to Redis one by one."""
    async def scenario() -> None:
        first, second = RedisState(redis.url), RedisState(redis.url)
        await first.start()
        await second.start()
        quotas = (Quota("key:near", 200, None, None, None),)
        results = []
        for step in range(240):
            replica = (first, second)[step % 2]
            results.append(await replica.admit(quotas, 1, f"n{step}"))
        admitted = [not isinstance(r, Refusal) for r in results]
        assert sum(admitted) <= 200
        calls_before = first.calls + second.calls
        for step in range(10):
            assert isinstance(await first.admit(quotas, 1, f"again{step}"), Refusal)  # refused by Redis: one call each
        assert first.calls + second.calls == calls_before + 10
        await first.close()
        await second.close()
        counts = await _counts(first, "key:near")
        assert counts["n"] == sum(admitted)  # what the two did not use came back
        assert sum(admitted) >= 200 - 2 * 2  # at most one slice per replica was still out when the burst ended

    asyncio.run(scenario())


def test_a_key_seen_now_and_then_reserves_nothing(redis: RedisServer) -> None:
    """Headroom only for a key and account called for within two headroom periods: a one-off would reserve and hand back."""
    async def scenario() -> None:
        state = RedisState(redis.url, headroom_ms=100)
        await state.start()
        quotas = (Quota("key:rare", 100_000, None, None, None),)
        for step in range(3):  # one request every 0.3 s: more than two periods apart
            got = await state.admit(quotas, 1, f"rare{step}")
            assert isinstance(got, RedisAdmission) and got.headroom is None
            await asyncio.sleep(0.3)
        assert (await _counts(state, "key:rare"))["n"] == 3  # nothing reserved
        got = await state.admit(quotas, 1, "busy1")  # 0.3 s after the last call: still no slice
        assert isinstance(got, RedisAdmission) and got.headroom is None
        got = await state.admit(quotas, 1, "busy2")  # right after: busy now, a slice with it
        assert isinstance(got, RedisAdmission) and got.headroom is not None
        await state.close()

    asyncio.run(scenario())


def test_new_limits_hand_back_a_grant_taken_under_the_old_ones_at_once(redis: RedisServer) -> None:
    """A grant of 1,000 requests under 100,000/min; the key's limit becomes 5/min: the next call hands the grant back.

    Not at the grant's expiry (the sweep every ``headroom_ms``): the call that
    carries the new limits takes the grant's unused part with it, so Redis
    counts exactly the requests admitted and refuses the sixth at once.
    """
    async def scenario() -> None:
        state = RedisState(redis.url, headroom_ms=5000)  # a sweep would come long after this test
        await state.start()
        old = (Quota("key:relimited", 100_000, None, None, None),)
        first = await state.admit(old, 0, "r0")
        second = await state.admit(old, 0, "r1")  # busy now: a grant of 1/100 of the limit comes with it
        assert isinstance(first, RedisAdmission) and isinstance(second, RedisAdmission) and second.headroom is not None
        assert (await _counts(state, "key:relimited"))["n"] == 2 + 1_000
        for step in range(3):
            got = await state.admit(old, 0, f"local{step}")
            assert isinstance(got, RedisAdmission) and got.headroom is not None  # from the grant, no call
        calls = state.calls
        refused = await state.admit((Quota("key:relimited", 5, None, None, None),), 0, "new")
        assert isinstance(refused, Refusal) and refused.code == "rate_limit_exceeded" and refused.limit == 5
        assert state.calls == calls + 1  # decided in Redis, with the hand-back riding along
        assert (await _counts(state, "key:relimited"))["n"] == 5  # the 997 unused came back with that very call
        await state.close()

    asyncio.run(scenario())


def test_concurrency_pools_never_pass_the_limit_and_come_back(redis: RedisServer) -> None:
    """32 concurrent on a key (pools of 2): three replicas holding requests open get 32 in all, then release every slot."""
    async def scenario() -> None:
        replicas = [RedisState(redis.url) for _ in range(3)]
        for replica in replicas:
            await replica.start()
        quotas = (Quota("key:pool", 100_000, None, 32, None),)
        held: list[tuple[RedisState, RedisAdmission]] = []
        refused = 0
        for step in range(60):
            replica = replicas[step % 3]
            got = await replica.admit(quotas, 0, f"p{step}")
            if isinstance(got, RedisAdmission):
                held.append((replica, got))
            else:
                assert isinstance(got, Refusal) and got.code == "concurrency_limit_exceeded"
                refused += 1
        assert len(held) == 32 and refused == 28, (len(held), refused)
        assert sum(replica.local for replica in replicas) > 0  # some came from a pool
        for replica, admission in held:
            replica.settle(admission, 0)
        for replica in replicas:
            await replica.close()
        assert await replicas[0].client.zcard("dg:c:key:pool") == 0  # every slot and pool member released

    asyncio.run(scenario())


def test_a_killed_replicas_headroom_is_bounded(redis: RedisServer) -> None:
    """A replica that dies holding headroom: its pool slots come back with their lease, its slice 60 s after the grant's end."""
    async def scenario() -> None:
        quotas = (Quota("key:doomed", 1_000, None, 32, None),)
        doomed = RedisState(redis.url, lease_ms=600, headroom_ms=500)
        await doomed.start()
        warm = await doomed.admit(quotas, 0, "warm")  # a key's first call asks for no headroom: it may be a one-off
        assert isinstance(warm, RedisAdmission) and warm.headroom is None
        doomed.settle(warm, 0)
        await doomed.flush()
        seconds, micros = await doomed.client.time()
        granted_at = seconds * 1000 + micros // 1000
        first = await doomed.admit(quotas, 0, "first")
        assert isinstance(first, RedisAdmission) and first.headroom is not None  # 10 requests and 2 slots reserved
        if doomed._renewer is not None:  # the replica "dies": it never settles, renews nor hands anything back
            doomed._renewer.cancel()
        if doomed._sweep_handle is not None:
            doomed._sweep_handle.cancel()
        counts = await _counts(doomed, "key:doomed")
        assert counts["n"] == 1 + 1 + 10
        assert counts["cm"] <= granted_at + 500 + 100  # the slot leaves the window 60 s after the grant's end, not later
        assert await doomed.client.zcard("dg:c:key:doomed") == 2
        survivor = RedisState(redis.url, lease_ms=600, headroom_ms=0)
        await survivor.start()
        await asyncio.sleep(0.8)  # the pool's leases expire
        held = [await survivor.admit(quotas, 0, f"s{i}") for i in range(33)]
        assert sum(isinstance(h, RedisAdmission) for h in held) == 32  # every slot back, none lost
        # Move the window's slots 61 s into the past (Redis' clock cannot be): the reserved requests leave with them.
        raw = await survivor.client.get("dg:s:key:doomed")
        values = list(struct.unpack("<10d", raw))
        for index in (3, 7):  # om, cm: the latest admission of the oldest and of the latest slot
            values[index] -= 61_000 + 500
        values[2] -= 615  # o: the oldest slot, as many slots back
        values[4] -= 615  # cs
        await survivor.client.set("dg:s:key:doomed", struct.pack("<10d", *values))
        archive = {field.decode(): value for field, value in (await survivor.client.hgetall("dg:a:key:doomed")).items()}
        await survivor.client.delete("dg:a:key:doomed")
        for field, value in archive.items():
            slot_value = float(value) - (61_500 if field.startswith("m") else 0)
            await survivor.client.hset("dg:a:key:doomed", f"{field[0]}{int(field[1:]) - 615}", slot_value)
        for _, admission in [(0, h) for h in held if isinstance(h, RedisAdmission)]:
            survivor.settle(admission, 0)
        await survivor.flush()
        assert isinstance(await survivor.admit(quotas, 0, "after"), RedisAdmission)
        assert (await _counts(survivor, "key:doomed"))["n"] == 1  # the doomed replica's slice left with its slot
        await survivor.close()
        await doomed.client.aclose()

    asyncio.run(scenario())


# -- gateways --------------------------------------------------------------------------------------------------


def _fleet(tmp_path: Path, stub: UpstreamStub, redis: RedisServer, n: int) -> list[RunningGateway]:
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    gateways = []
    for i in range(n):
        (tmp_path / f"gw{i}").mkdir()
        gateways.append(start_gateway(tmp_path / f"gw{i}", stub.base_url, database=database, state=redis.url))
    return gateways


def _ask(client: httpx.Client, gateway: RunningGateway) -> int:
    return client.post(gateway.base_url + "/chat/completions",
                       json={"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]}).status_code


def test_three_gateways_with_headroom_share_a_600_per_minute_key(tmp_path: Path, stub: UpstreamStub, redis: RedisServer) -> None:
    gateways = _fleet(tmp_path, stub, redis, 3)
    try:
        key = gateways[0].create_key("headroom", limits={"requests_per_min": 600})
        deadline = time.time() + 10
        for gateway in gateways:  # the others load the new key from the shared database within a second
            while httpx.get(gateway.base_url + "/models", headers={"Authorization": f"Bearer {key['secret']}"}).status_code == 401:
                assert time.time() < deadline, "a replica never loaded the key"
                time.sleep(0.1)
        statuses: list[int] = []
        lock = threading.Lock()

        def hammer(gateway: RunningGateway) -> None:
            with httpx.Client(headers={"Authorization": f"Bearer {key['secret']}"}, timeout=30) as client:
                for _ in range(150):
                    status = _ask(client, gateway)
                    with lock:
                        statuses.append(status)

        threads = [threading.Thread(target=hammer, args=(gw,)) for gw in gateways for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # 900 attempts within seconds; the model-list probes above also counted (3 or more requests)
        assert statuses.count(200) <= 600 - 3 and statuses.count(200) >= 600 - 3 - 3 * 6, statuses.count(200)
        assert set(statuses) == {200, 429}
    finally:
        for gateway in gateways:
            gateway.stop()


def test_a_block_a_throttle_and_new_limits_reach_a_replica_admitting_from_headroom(
        tmp_path: Path, stub: UpstreamStub, redis: RedisServer) -> None:
    """Replica 2 serves a key from headroom; a block set through replica 1 stops it within 1 s, so do a throttle and new limits."""
    first, second = _fleet(tmp_path, stub, redis, 2)
    try:
        key = first.create_key("blocked", limits={"requests_per_min": 100_000, "tokens_per_min": None})
        headers = {"Authorization": f"Bearer {key['secret']}"}
        deadline = time.time() + 10
        while httpx.get(second.base_url + "/models", headers=headers).status_code == 401:
            assert time.time() < deadline, "replica 2 never loaded the key"
            time.sleep(0.1)
        with httpx.Client(headers=headers, timeout=30) as client:
            assert [_ask(client, second) for _ in range(20)] == [200] * 20  # headroom granted and in use

            def until(want: int, before: int) -> float:
                """Seconds until replica 2 answers ``want``; until then it must answer as before the change."""
                started = time.perf_counter()
                while time.perf_counter() - started < 5:
                    status = _ask(client, second)
                    if status == want:
                        return time.perf_counter() - started
                    assert status == before, status
                return float("inf")

            for action, want, before in (("block", 403, 200), ("clear", 200, 403), ("throttle", 429, 200), ("clear", 200, 429)):
                first.admin("POST", f"/admin/v1/accounts/{key['account_id']}/action", json={"action": action}).raise_for_status()
                assert until(want, before) < 1.0, action
            first.admin("PUT", f"/admin/v1/accounts/{key['account_id']}/limits",
                        json={"requests_per_min": 1}).raise_for_status()
            assert until(429, 200) < 1.0, "new limits"
    finally:
        first.stop()
        second.stop()


@contextlib.asynccontextmanager
async def _replicas_polling_once_an_hour(database: str, stub: UpstreamStub, redis: RedisServer,
                                         n: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    """``n`` in-process gateways on one store and one Redis whose registry poll never comes in a test (once an hour):
    what reaches them from another process comes by a change notice or not at all. Each gateway's client, once all
    of them listen to the notices."""
    probe = redis_client.Redis.from_url(redis.url)
    subscribed_before = probe.pubsub_numsub(CHANNEL)[0][1]
    unlimited = {"requests_per_min": None, "tokens_per_min": None, "concurrent_requests": None, "daily_tokens": None}
    replicas: list[tuple[Gateway, RedisNotifier, httpx.AsyncClient]] = []
    try:
        for i in range(n):
            settings = Settings(database=database, admin_token="relimit", state=redis.url, state_timeout_s=5, limits=unlimited,
                                upstreams=[{"name": "stub", "base_url": stub.base_url, "models": ["*"], "timeout_s": 10}])
            notifier = RedisNotifier(redis.url, f"replica-{i}")
            gateway = Gateway(settings, registry=Registry(database), notifier=notifier, poll_interval_s=3600)
            await gateway.startup()
            replicas.append((gateway, notifier, httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway),
                                                                  base_url="http://gateway", timeout=30)))
        deadline = time.monotonic() + 30
        while probe.pubsub_numsub(CHANNEL)[0][1] < subscribed_before + n:  # all listen
            assert time.monotonic() < deadline, "the replicas never subscribed to the notices"
            await asyncio.sleep(0.05)
        yield [client for _, _, client in replicas]
    finally:
        for gateway, notifier, client in replicas:
            await client.aclose()
            await gateway.shutdown()
            notifier.close()
            gateway.registry.close()  # type: ignore[union-attr]
        probe.close()


CHAT = {"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]}


async def test_new_limits_reach_another_replica_by_notice_and_end_its_grant(
        tmp_path: Path, stub: UpstreamStub, redis: RedisServer) -> None:
    """Two gateways whose registry poll never comes: an account's limits set through one, 100,000/min to 1/min, stop
    the other admitting from its grant within a second, by the notice alone, and that grant's unused part is back in
    Redis with the first refused request."""
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    setup = Registry(database)
    account = setup.create_account("relimited", limits={"requests_per_min": 100_000})
    secret = setup.create_key(account["account_id"])["secret"]
    setup.close()
    probe = RedisState(redis.url)
    async with _replicas_polling_once_an_hour(database, stub, redis, 2) as (first, second):

        async def ask() -> int:
            response = await second.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"})
            return response.status_code

        assert [await ask() for _ in range(20)] == [200] * 20
        subject = f"acct:{account['account_id']}"
        assert (await _counts(probe, subject))["n"] > 20  # a grant is out: counted in Redis beyond what was admitted
        changed = await first.put(f"/admin/v1/accounts/{account['account_id']}/limits", json={"requests_per_min": 1},
                                  headers={"Authorization": "Bearer relimit"})
        assert changed.status_code == 200
        started, admitted = time.perf_counter(), 20
        while (status := await ask()) == 200:
            admitted += 1
            assert time.perf_counter() - started < 1.0, "new limits did not reach the other replica within 1 s"
        assert status == 429 and time.perf_counter() - started < 1.0, status
        assert (await _counts(probe, subject))["n"] == admitted  # the grant's unused part came back with that request
    await probe.client.aclose()


async def test_a_key_revoked_with_the_cli_stops_at_every_replica_by_notice(
        tmp_path: Path, stub: UpstreamStub, redis: RedisServer) -> None:
    """`distillguard keys revoke` (another process, no gateway of its own) announces the change: a replica whose
    registry poll never comes refuses the key within a second of the command's exit."""
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    setup = Registry(database)
    key = setup.create_key(setup.create_account("revoked-by-cli")["account_id"])
    setup.close()
    config_path, _ = write_config(tmp_path, [{"name": "stub", "base_url": stub.base_url, "models": ["*"]}],
                                  database=database, state=redis.url)
    async with _replicas_polling_once_an_hour(database, stub, redis, 1) as (replica,):

        async def ask() -> int:
            response = await replica.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key['secret']}"})
            return response.status_code

        assert await ask() == 200
        revoked = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "distillguard.cli", "keys", "revoke",
                                                           key["key_id"], "--config", str(config_path)],
                                          capture_output=True, text=True, timeout=120)
        assert revoked.returncode == 0, revoked.stderr
        started = time.perf_counter()
        while (status := await ask()) == 200:
            assert time.perf_counter() - started < 1.0, "the revocation did not reach the replica within 1 s"
        assert status == 401 and time.perf_counter() - started < 1.0, status
