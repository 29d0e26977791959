"""Side endpoints cannot be used to make the gateway work for nobody (issue #12, finding 8).

Before: each unauthenticated ``GET /readyz`` sent one ``GET /models`` per
upstream with the operator's key, and ``GET /v1/models`` was neither limited
nor written to the event log.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from distillguard.gateway.health import UpstreamHealth
from tests.gateway_fixtures import RunningGateway
from tests.upstream_stub import UpstreamStub


def test_readyz_probes_each_upstream_at_most_once_per_interval(gateway: RunningGateway, stub: UpstreamStub) -> None:
    before = stub.model_lists
    started = time.monotonic()
    with httpx.Client(timeout=10) as client, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: client.get(gateway.root_url + "/readyz").status_code, range(100)))
    elapsed = time.monotonic() - started
    assert set(statuses) == {200}
    assert stub.model_lists - before <= 1 + int(elapsed // 5)  # one round per 5 s at most (was: one per call)


def test_models_listing_is_limited_and_evented(gateway: RunningGateway) -> None:
    key = gateway.create_key("lister", limits={"requests_per_min": 2})
    headers = {"Authorization": f"Bearer {key['secret']}"}
    answers = [httpx.get(gateway.base_url + "/models", headers=headers, timeout=10) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].json()["object"] == "list" and answers[0].json()["data"]
    assert answers[2].json()["error"]["type"] == "rate_limit_error" and answers[2].headers.get("retry-after")
    events = [gateway.event(a.headers["x-request-id"]) for a in answers]
    assert [e["endpoint"] for e in events] == ["openai.models"] * 3
    assert [e["response"]["status"] for e in events] == [200, 200, 429]
    assert {e["account_id"] for e in events} == {key["account_id"]}
    unauthenticated = httpx.get(gateway.base_url + "/models", timeout=10)
    assert unauthenticated.status_code == 401


def test_health_rounds_are_shared_and_cached() -> None:
    calls: list[int] = []
    now = [100.0]

    async def probe(index: int) -> None:
        calls.append(index)
        await asyncio.sleep(0.01)
        if index == 1:
            raise ConnectionError("down")

    async def main() -> None:
        health = UpstreamHealth(["a", "b"], probe, ttl_s=5, clock=lambda: now[0])
        results = await asyncio.gather(*(health.problems() for _ in range(50)))
        assert all(r == ["upstream b unreachable (ConnectionError)"] for r in results)
        assert sorted(calls) == [0, 1] and health.rounds == 1  # 50 callers, one round
        now[0] += 4.9
        await health.problems()
        assert health.rounds == 1
        now[0] += 0.2
        await health.problems()
        assert health.rounds == 2

    asyncio.run(main())


def test_a_caller_leaving_does_not_cancel_the_round() -> None:
    async def probe(index: int) -> None:
        await asyncio.sleep(0.05)

    async def main() -> None:
        health = UpstreamHealth(["a"], probe, ttl_s=5)
        impatient = asyncio.create_task(health.problems())
        await asyncio.sleep(0.01)
        impatient.cancel()
        assert await health.problems() == []
        assert health.rounds == 1

    asyncio.run(main())
