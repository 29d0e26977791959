"""Shared state through a real Redis: exact limits across processes and gateways, shared nonces, Redis outages.

Issue #13 deliverables 1, 3 and 4: three gateways on one 60/min key admit 60
between them, not 180; a replayed attestation is caught by another replica; a
killed replica's concurrency slots come back; with Redis down the gateway
either serves with its own limits (fail_open) or answers 503 (fail_closed),
and recovers by itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis as redis_client

from distillguard.client import Identity, attesting_client, sign_request
from distillguard.state import Quota, Refusal
from distillguard.state.redis_state import RedisAdmission, RedisState
from tests.gateway_fixtures import RunningGateway, keys_loaded, on_every_worker, start_gateway, write_config
from tests.redis_fixtures import RedisServer
from tests.upstream_stub import UpstreamStub


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


COUNTS = ("n", "t", "o", "om", "cs", "cn", "ct", "cm", "day", "used")  # dg:s:<subject>: ten packed doubles (redis_state.py)


async def _counts(state: RedisState, subject: str) -> dict[str, float]:
    raw = await state.client.get(f"dg:s:{subject}")
    return dict(zip(COUNTS, struct.unpack("<10d", raw), strict=True)) if raw else {}


async def _set_counts(state: RedisState, subject: str, **values: float) -> None:
    packed = struct.pack("<10d", *(values.get(name, -1 if name in ("o", "om", "cs", "cm", "day") else 0) for name in COUNTS))
    await state.client.set(f"dg:s:{subject}", packed)


# -- the backend itself ----------------------------------------------------------------------------------


def test_redis_windows_are_exact_settled_and_nonces_shared(redis: RedisServer) -> None:
    async def scenario() -> None:
        state = RedisState(redis.url)
        await state.start()
        quotas = (Quota("key:exact", 5, 1_000, None, None), Quota("acct:exact", None, None, None, None))
        results = [await state.admit(quotas, 100, f"r{i}") for i in range(6)]
        assert all(not isinstance(r, Refusal) for r in results[:5])
        refusal = results[5]
        assert isinstance(refusal, Refusal) and refusal.code == "rate_limit_exceeded"
        assert refusal.retry_at_ms is not None and 59_000 < refusal.retry_at_ms - refusal.now_ms <= 60_000
        for admission in results[:5]:
            state.settle(admission, 150)  # type: ignore[arg-type]
        await state.flush()
        assert (await _counts(state, "key:exact"))["t"] == 750  # the real usage replaced the estimates
        tokens = (Quota("key:tok", None, 1_000, None, None),)
        assert isinstance(await state.admit(tokens, 1_001, "big"), Refusal)
        nonce_quota = (Quota("key:nonce", None, None, None, None),)
        other = RedisState(redis.url)  # another replica
        await other.start()
        assert await state.admit(nonce_quota, 1, "n1", ("nonce-abc", 10_000)) is not None
        assert await other.admit(nonce_quota, 1, "n2", ("nonce-abc", 10_000)) is None  # seen by the first replica
        await state.close()
        await other.close()

    _run(scenario())


def test_slots_leave_the_window_with_their_tokens_and_free_requests_do_not_break_it(redis: RedisServer) -> None:
    """A slot leaves the window when its latest admission is 60 s old, taking its requests and tokens with it.

    Also the old "-0" bug: requests charged 0 tokens (model lists,
    count_tokens) leaving the window once made the script send ``HINCRBY … -0``,
    which Redis refuses, so every admission of that key failed 60 s after the
    first free request (found by bench/fleet.py running longer than a minute).
    """
    async def scenario() -> None:
        state = RedisState(redis.url, headroom_ms=0)  # every request decided in Redis: the window's own mechanics
        await state.start()
        quota = (Quota("key:slots", 3, 1_000, None, None),)
        seconds, micros = await state.client.time()
        now = seconds * 1000 + micros // 1000
        old, recent = (now - 61_000) // 100, (now - 30_000) // 100  # on Redis' clock, as the script measures windows
        # three requests in the window: a free one and a paid one long ago, one 30 s ago
        await _set_counts(state, "key:slots", n=3, t=900, o=old, om=now - 61_000, cs=recent, cn=1, ct=300, cm=now - 30_000)
        await state.client.hset("dg:a:key:slots", mapping={f"n{old}": 2, f"t{old}": 600, f"m{old}": now - 61_000})  # an older one
        admitted = await state.admit(quota, 5, "now")
        assert isinstance(admitted, RedisAdmission)  # the old slot left: 1 + 1 requests, 305 tokens
        assert await state.client.hmget("dg:a:key:slots", [f"n{old}", f"t{old}", f"m{old}"]) == [None, None, None]
        assert await state.client.hget("dg:a:key:slots", f"n{recent}") == b"1"  # the latest slot went to the archive
        counts = await _counts(state, "key:slots")
        assert (counts["n"], counts["t"]) == (2, 305) and old < counts["o"] <= recent  # o: a lower bound of the oldest slot left
        assert not isinstance(await state.admit(quota, 0, "free"), Refusal)
        refused = await state.admit(quota, 0, "one-too-many")  # 3 in the window: refused until the 30 s old slot leaves
        assert isinstance(refused, Refusal) and refused.code == "rate_limit_exceeded"
        assert refused.retry_at_ms is not None and 29_000 < refused.retry_at_ms - refused.now_ms <= 30_000
        state.settle(admitted, 50)  # the real usage replaces the estimate in its slot and in the window
        await state.flush()
        assert (await _counts(state, "key:slots"))["t"] == 350
        # a request settled after its slot went to the archive: the archived slot and the window both change
        wide = (Quota("key:archived", 100, 10_000, None, None),)
        first = await state.admit(wide, 100, "first")
        assert isinstance(first, RedisAdmission)
        await asyncio.sleep(0.25)
        assert isinstance(await state.admit(wide, 1, "next-slot"), RedisAdmission)  # a later slot: "first"'s is archived
        state.settle(first, 40)
        await state.flush()
        archived = [value for field, value in (await state.client.hgetall("dg:a:key:archived")).items() if field.startswith(b"t")]
        assert archived == [b"40"] and (await _counts(state, "key:archived"))["t"] == 41
        await state.close()

    _run(scenario())


def test_redis_decides_like_memory_on_a_random_sequence_of_admissions_and_settlements(redis: RedisServer) -> None:
    """The Redis script and the in-process backend must give the same answer to every admission.

    Requests/min, tokens/min and daily tokens on a key and its account, with
    settlements that raise and lower the charge (the script moves each entry's
    tokens with it) and free requests: 400 steps well inside one minute, so
    the two clocks (Redis' ``TIME``, the process's) cannot disagree on a window.
    Half the settlements go alone, half ride along with the next admission
    (where the script reads and writes each subject once for both).
    """
    import random

    from distillguard.state.memory import MemoryState

    async def scenario() -> None:
        rng = random.Random(13)
        shared = RedisState(redis.url)
        await shared.start()
        local = MemoryState()
        # Within one minute tokens/min and daily tokens both bind on the total: one seed where each binds first.
        for seed, quotas in enumerate([(Quota("key:diff0", 40, 3_000, None, 9_000), Quota("acct:diff0", 60, 4_000, None, 8_000)),
                                       (Quota("key:diff1", 60, None, None, 2_500), Quota("acct:diff1", 40, 9_000, None, 3_500))]):
            open_redis: list[Any] = []
            open_memory: list[Any] = []
            for step in range(200):
                if open_redis and rng.random() < 0.5:  # settle one of the running requests, in random order
                    i = rng.randrange(len(open_redis))
                    tokens = rng.choice([0, 1, 50, 400]) + open_redis[i].charged * rng.choice([0, 1, 2])
                    shared.settle(open_redis.pop(i), tokens)
                    local.settle(open_memory.pop(i), tokens)
                    if rng.random() < 0.5:
                        await shared.flush()
                    continue
                tokens = rng.choice([0, 10, 100, 700, 2_500])
                got = await shared.admit(quotas, tokens, f"d{seed}-{step}")
                want = local.admit_now(quotas, tokens, f"d{seed}-{step}")
                what = f"seed {seed} step {step}: {tokens} tokens"
                if isinstance(want, Refusal):
                    assert isinstance(got, Refusal) and (got.code, got.subject, got.limit) == (want.code, want.subject, want.limit), what
                    if want.retry_at_ms is None:
                        assert got.retry_at_ms is None, what
                    else:  # Redis' slot frees with its latest request: the same moment, or up to 0.1 s later (two clocks)
                        assert got.retry_at_ms is not None, what
                        late = (got.retry_at_ms - got.now_ms) - (want.retry_at_ms - want.now_ms)
                        assert -30 <= late <= 150, (what, late)
                else:
                    assert isinstance(got, RedisAdmission), (what, got)
                    open_redis.append(got)
                    open_memory.append(want)
        await shared.close()

    _run(scenario())


def test_a_settlement_and_the_next_admission_read_and_write_each_subject_once(redis: RedisServer) -> None:
    """What the script costs Redis per request (bench/RESULTS.md): each subject's counts are read and written once per call.

    A steady stream of one key: every admission carries the previous request's
    settlement (a changed token count, a lease to release) for the same two
    subjects; before, each settled subject cost a GET and a SET of its own.
    A subject with only a concurrency limit has no counts to read at all.
    """
    async def scenario() -> None:
        state = RedisState(redis.url, headroom_ms=0)  # the per-request path (with headroom most requests make no call)
        await state.start()
        both = (Quota("key:once", 10_000, 1_000_000, 100, None), Quota("acct:once", 10_000, 1_000_000, 100, None))
        only_leases = (Quota("key:once2", 10_000, None, None, None), Quota("acct:once2", None, None, 100, None))
        for quotas, reads in ((both, 2), (only_leases, 1)):
            previous = await state.admit(quotas, 10, "warm")
            await state.client.config_resetstat()
            for i in range(20):
                assert isinstance(previous, RedisAdmission)
                state.settle(previous, 25)  # queued: it rides along with the next admission
                previous = await state.admit(quotas, 10, f"r{i}")
            stats = await state.client.info("commandstats")
            assert stats["cmdstat_evalsha"]["calls"] == 20  # one call per request, settlement included
            assert stats["cmdstat_get"]["calls"] == 20 * reads, stats["cmdstat_get"]
            assert stats["cmdstat_set"]["calls"] == 20 * reads, stats["cmdstat_set"]
            if quotas is both:
                assert (await _counts(state, "key:once"))["t"] == 10 + 20 * 25  # every settlement applied: 20 × 25, the last 10
        await state.close()

    _run(scenario())


def test_todays_tokens_carry_over_from_the_layout_before(redis: RedisServer) -> None:
    """A gateway of this version takes a subject's daily count from the old ``dg:d:`` key (an upgrade keeps the day)."""
    async def scenario() -> None:
        state = RedisState(redis.url)
        await state.start()
        seconds, _ = await state.client.time()
        await state.client.hset("dg:d:acct:upgraded", mapping={"day": seconds // 86_400, "used": 950})
        quota = (Quota("acct:upgraded", None, None, None, 1_000),)
        refused = await state.admit(quota, 100, "after-upgrade")
        assert isinstance(refused, Refusal) and refused.code == "daily_quota_exceeded"
        assert isinstance(await state.admit(quota, 50, "fits"), RedisAdmission)
        await state.close()

    _run(scenario())


def test_a_killed_replicas_concurrency_slots_come_back_when_their_leases_expire(redis: RedisServer) -> None:
    async def scenario() -> None:
        quotas = (Quota("key:lease", None, None, 1, None),)
        doomed = RedisState(redis.url, lease_ms=600)
        await doomed.start()
        assert not isinstance(await doomed.admit(quotas, 0, "held"), Refusal)
        survivor = RedisState(redis.url, lease_ms=600)
        await survivor.start()
        refused = await survivor.admit(quotas, 0, "second")
        assert isinstance(refused, Refusal) and refused.code == "concurrency_limit_exceeded"
        if doomed._renewer is not None:  # the replica "dies": it never settles nor renews its lease
            doomed._renewer.cancel()
        await asyncio.sleep(0.8)
        assert not isinstance(await survivor.admit(quotas, 0, "third"), Refusal)
        await survivor.close()
        await doomed.client.aclose()

    _run(scenario())


ATTEMPT_SCRIPT = """
import asyncio, sys
from distillguard.state import Quota, Refusal
from distillguard.state.redis_state import RedisState

async def main():
    state = RedisState(sys.argv[1], timeout_s=5.0)  # atomicity, not latency: a loaded CI box may connect slowly
    await state.start()
    quotas = (Quota("key:atomic", 50, None, None, None), Quota("acct:atomic", None, 10_000, None, None))
    admitted = 0
    for i in range(40):
        if not isinstance(await state.admit(quotas, 10, f"{sys.argv[2]}-{i}"), Refusal):
            admitted += 1
    print(admitted)
    await state.close()

asyncio.run(main())
"""


def test_admission_is_atomic_across_processes(redis: RedisServer) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", ATTEMPT_SCRIPT, redis.url, f"p{i}"], stdout=subprocess.PIPE, text=True)
             for i in range(4)]
    counts = [int(p.communicate(timeout=60)[0].strip()) for p in procs]
    assert sum(counts) == 50, counts  # 160 attempts from 4 processes at once, 50/min: exactly 50


# -- gateways sharing one Redis ----------------------------------------------------------------------------


def _fleet(tmp_path: Path, stub: UpstreamStub, redis: RedisServer, n: int, **extra: Any) -> list[RunningGateway]:
    database = f"sqlite:///{tmp_path / 'shared.db'}"

    def one(i: int) -> RunningGateway:
        (tmp_path / f"gw{i}").mkdir()
        return start_gateway(tmp_path / f"gw{i}", stub.base_url, database=database, state=redis.url, **extra)

    with ThreadPoolExecutor(n) as pool:  # at once, as a deploy would: each start is mostly waiting for imports
        return list(pool.map(one, range(n)))


def _wait_for_key(gateways: list[RunningGateway], secret: str) -> None:
    deadline = time.time() + 10
    for gateway in gateways:  # the others load the new key from the shared database within a second
        while httpx.get(gateway.base_url + "/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 401:
            assert time.time() < deadline, "a replica never loaded the key"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub, redis: RedisServer) -> Iterator[list[RunningGateway]]:
    """Three gateways on one SQLite store and the module's Redis, shared by the two tests below. Each test creates
    its own account and key, so neither sees the other's limits or nonces; starting the gateways was most of each
    test's time (five starts, now three)."""
    gateways = _fleet(tmp_path_factory.mktemp("fleet"), stub, redis, 3)
    yield gateways
    for gateway in gateways:
        gateway.stop()


def test_three_gateways_share_one_60_per_minute_key(fleet: list[RunningGateway]) -> None:
    gateways = fleet
    key = gateways[0].create_key("fleet", limits={"requests_per_min": 60, "tokens_per_min": None})
    _wait_for_key(gateways, key["secret"])
    statuses: list[int] = []
    lock = threading.Lock()

    def hammer(gateway: RunningGateway) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {key['secret']}"}, timeout=30) as client:
            for _ in range(50):
                response = client.post(gateway.base_url + "/chat/completions",
                                       json={"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]})
                with lock:
                    statuses.append(response.status_code)

    threads = [threading.Thread(target=hammer, args=(gw,)) for gw in gateways for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 300 requests through 3 replicas within seconds; the model-list probes above also counted (3 requests).
    assert statuses.count(200) <= 60 and statuses.count(200) >= 57, statuses.count(200)
    assert set(statuses) == {200, 429}


def test_an_attestation_replayed_to_another_replica_is_caught(tmp_path: Path, fleet: list[RunningGateway]) -> None:
    first, second = fleet[0], fleet[1]
    key = first.create_key("attested")
    _wait_for_key([first, second], key["secret"])
    identity = Identity.load_or_create(tmp_path / "sdk")
    client = openai.OpenAI(base_url=first.base_url, api_key=key["secret"],
                           http_client=attesting_client(api_key=key["secret"], base_url=first.base_url, identity=identity))
    client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "enroll"}])  # enrolls, through the first
    headers = {"Authorization": f"Bearer {key['secret']}", "Content-Type": "application/json"}

    def signed(text: str) -> tuple[dict[str, str], bytes]:
        body = b'{"model": "stub-1", "messages": [{"role": "user", "content": "' + text.encode() + b'"}]}'
        request = httpx.Request("POST", first.base_url + "/chat/completions", content=body, headers=headers)
        sign_request(request, identity)
        return {k: v for k, v in request.headers.items() if k.lower() != "content-length"}, body  # keeps Host: the first's

    deadline = time.time() + 10
    while True:  # the second replica learns the enrollment from the shared database
        sent, body = signed("warm-up")
        warm = httpx.post(second.base_url + "/chat/completions", headers=sent, content=body)  # Host: the first's, as via a balancer
        if second.event(warm.headers["x-request-id"])["attestation"]["status"] == "valid":
            break
        assert time.time() < deadline, "the second replica never accepted the enrolled install"
        time.sleep(0.2)
    sent, body = signed("replayed-across")
    original = httpx.post(first.base_url + "/chat/completions", headers=sent, content=body)
    replay = httpx.post(second.base_url + "/chat/completions", headers=sent, content=body)
    assert original.status_code == 200 and replay.status_code == 200  # this account need not attest: served, but marked
    assert first.event(original.headers["x-request-id"])["attestation"]["status"] == "valid"
    assert second.event(replay.headers["x-request-id"])["attestation"]["status"] == "replayed"


# -- Redis failing under load ---------------------------------------------------------------------------------


def _metric(gateway: RunningGateway, name: str) -> float:
    for line in httpx.get(gateway.root_url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
def test_redis_stopped_and_restarted_under_load(tmp_path: Path, stub: UpstreamStub, mode: str) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    (tmp_path / "gw").mkdir()
    # far below every limit: the replica admits from headroom (tests/test_headroom.py) until Redis stops
    unlimited = {"requests_per_min": 100_000, "tokens_per_min": None, "concurrent_requests": 32, "daily_tokens": None}
    gateway = start_gateway(tmp_path / "gw", stub.base_url, state=redis.url, state_failure=mode, limits=unlimited)
    try:
        key = gateway.create_key("outage")
        results: list[tuple[float, int, str]] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(headers={"Authorization": f"Bearer {key['secret']}"}, timeout=10) as client:
                while not stop.is_set():
                    sent_at = time.time()  # when the request left: what the gateway's state was then decides its answer
                    response = client.post(gateway.base_url + "/chat/completions",
                                           json={"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]})
                    code = response.json().get("error", {}).get("code") if response.status_code != 200 else ""
                    results.append((sent_at, response.status_code, code or ""))

        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(0.5)
        assert _metric(gateway, "dg_state_degraded") == 0
        pool = redis_client.Redis.from_url(redis.url).zrange(f"dg:c:key:{key['key_id']}", 0, -1)
        assert any(member.startswith(b"h:") for member in pool), pool  # the replica holds headroom (a pool slot) as Redis stops
        redis.stop()
        down_at = time.time()
        time.sleep(1.5)
        assert _metric(gateway, "dg_state_degraded") == 1
        if mode == "fail_closed":  # the caller's protocol shape, Anthropic's too
            with pytest.raises(anthropic.InternalServerError) as info:
                anthropic.Anthropic(base_url=gateway.root_url, api_key=key["secret"], max_retries=0).messages.create(
                    model="stub-1", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
            assert info.value.status_code == 503
        up_at = time.time()  # before Redis starts: the gateway's probe may find it before start() has seen it answer
        redis.start()
        deadline = time.time() + 10
        while _metric(gateway, "dg_state_degraded") != 0:
            assert time.time() < deadline, "the gateway never went back to shared state"
            time.sleep(0.2)
        recovered_at = time.time()
        time.sleep(1.0)
        stop.set()
        worker.join()
        during = [status for at, status, _ in results if down_at + 0.5 < at < up_at]
        after = [status for at, status, _ in results if at > recovered_at]
        assert during, "no request was made while Redis was down"
        if mode == "fail_open":
            assert set(during) == {200}  # served with the replica's own limits
        else:
            assert set(during) == {503} and {code for at, s, code in results if s == 503} == {"state_unavailable"}
        assert after and set(after) == {200}
        assert len(gateway.events(expect=len(results) + 1)) >= len(results)  # the event log never depended on Redis
        state_lines = [line for line in gateway.log().splitlines() if "distillguard.state:" in line]
        # one line when it failed, one when it came back (not one per request)
        assert sum("until it answers again" in line for line in state_lines) == 1, state_lines
        assert sum("answers again;" in line for line in state_lines) == 1, state_lines
    finally:
        gateway.stop()
        redis.stop()


# -- serve --workers ---------------------------------------------------------------------------------------------


def test_workers_refuse_memory_state(tmp_path: Path, stub: UpstreamStub) -> None:
    config_path, _ = write_config(tmp_path, [{"name": "stub", "base_url": stub.base_url, "models": ["*"]}])
    result = subprocess.run([sys.executable, "-m", "distillguard.cli", "serve", "--workers", "2", "--config", str(config_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "needs shared state" in result.stderr and "state: redis://" in result.stderr


def test_workers_share_one_port_and_one_limit_also_after_redis_lost_its_data(tmp_path: Path, stub: UpstreamStub, redis: RedisServer) -> None:
    config_path, config = write_config(tmp_path, [{"name": "stub", "base_url": stub.base_url, "models": ["*"]}], state=redis.url)
    log = open(tmp_path / "workers.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "distillguard.cli", "serve", "--workers", "2", "--config", str(config_path)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    root = f"http://{config['listen']}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(root + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "workers.log").read_text()
            time.sleep(0.2)
        headers = {"Authorization": "Bearer test-admin-token"}
        account = httpx.post(root + "/admin/v1/accounts", headers=headers, json={"name": "w", "limits": {"requests_per_min": 10}}).json()
        secret = httpx.post(root + f"/admin/v1/accounts/{account['account_id']}/keys", headers=headers, json={}).json()["secret"]
        on_every_worker(root, lambda text: keys_loaded(text) >= 1, "a worker never loaded the key")
        statuses = []
        for _ in range(30):  # a new connection each time: the kernel spreads them over both workers
            statuses.append(httpx.post(root + "/v1/chat/completions", headers={"Authorization": f"Bearer {secret}", "Connection": "close"},
                                       json={"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]}).status_code)
        assert statuses.count(200) == 10 and statuses.count(429) == 20
        workers_seen = (tmp_path / "workers.log").read_text().count("listening on")
        assert workers_seen == 2

        def new_key(rpm: int | None) -> str:
            account = httpx.post(root + "/admin/v1/accounts", headers=headers, json={"name": "w", "limits": {"requests_per_min": rpm}})
            return str(httpx.post(root + f"/admin/v1/accounts/{account.json()['account_id']}/keys", headers=headers,
                                  json={}).json()["secret"])

        def burst(key: str, n: int) -> list[int]:
            return [httpx.post(root + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}", "Connection": "close"},
                               json={"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]}).status_code
                    for _ in range(n)]

        # Redis restarted without persistence: both workers notice (fail_open, then back within about a second),
        # send the script again, and share limits again; the windows start empty (docs/deploy.md).
        warm, fresh = new_key(None), new_key(10)
        on_every_worker(root, lambda text: keys_loaded(text) >= 3, "a worker never loaded the new keys")
        redis.stop()
        redis.start()
        # The first calls of each worker find dead connections (served by local limits meanwhile); each worker's probe
        # then finds Redis again. Served throughout, until both have been back (one line each in the shared log).
        deadline = time.time() + 60
        while (tmp_path / "workers.log").read_text().count("answers again; limits are shared") < 2:
            assert time.time() < deadline, (tmp_path / "workers.log").read_text()
            assert set(burst(warm, 2)) == {200}
            time.sleep(0.1)
        after = burst(fresh, 30)
        assert after.count(200) == 10 and after.count(429) == 20, after
        again = burst(secret, 30)  # the first key's window was lost with Redis' data: its limit starts over
        assert again.count(200) == 10 and again.count(429) == 20, again
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        log.close()
