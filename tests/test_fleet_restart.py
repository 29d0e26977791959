"""Three gateway processes on Redis state and one PostgreSQL store: restarts and a Redis outage (issue #13, item 7).

One test, because starting the fleet is the expensive part: a manual throttle
set through one replica and a scorer throttle earned on one replica must hold
on all three after all three restart; then Redis is stopped and started again
while all three serve traffic, and every answered request must have exactly
one stored event.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.pg_fixtures import PostgresServer, fresh_database, postgres  # noqa: F401 - fixture
from tests.redis_fixtures import RedisServer
from tests.test_fleet import _metric
from tests.test_risk_durability import _harvest_until_throttled
from tests.upstream_stub import UpstreamStub

DETECTION = {"flag_threshold": 0.5, "throttle_threshold": 0.8, "block_threshold": 0.99, "block_enabled": False,
             "throttle_requests_per_min": 1000}
LIMITS = {"requests_per_min": None, "tokens_per_min": None, "concurrent_requests": 16, "daily_tokens": None}


def _start(tmp_path: Path, stub: UpstreamStub, database: str, redis: RedisServer) -> list[RunningGateway]:
    def one(name: str) -> RunningGateway:
        (tmp_path / name).mkdir(exist_ok=True)
        return start_gateway(tmp_path / name, stub.base_url, database=database, state=redis.url, state_failure="fail_open",
                             detection=DETECTION, limits=LIMITS)

    with ThreadPoolExecutor(3) as pool:  # at once, as a deploy would (and three times faster)
        return list(pool.map(one, "abc"))


def _stop(fleet: list[RunningGateway]) -> list[int]:
    """SIGTERM all at once (each drains its events), as a deploy would; their exit codes."""
    with ThreadPoolExecutor(len(fleet)) as pool:
        return list(pool.map(lambda gw: gw.stop(), fleet))


def _policy_of_a_request(gw: RunningGateway, secret: str) -> str:
    """The policy action recorded in the stored event of one fresh request through ``gw``."""
    answer = httpx.post(gw.base_url + "/chat/completions", headers={"Authorization": f"Bearer {secret}"}, timeout=30,
                        json={"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code in (200, 429), answer.text
    return str(gw.event(answer.headers["x-request-id"], timeout=10)["policy"]["action"])


def _wait_until(check: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, what
        time.sleep(0.1)


@pytest.mark.postgres
def test_three_replicas_keep_throttles_across_a_full_restart_and_ride_out_a_redis_restart(
    tmp_path: Path, stub: UpstreamStub, postgres: PostgresServer  # noqa: F811 - the fixture
) -> None:
    database = fresh_database(postgres)
    redis = RedisServer(tmp_path / "redis").start()
    fleet = _start(tmp_path, stub, database, redis)
    try:
        a = fleet[0]
        manual = a.create_key("manually-throttled")
        harvester = a.create_key("harvester")
        person = a.create_key("person")
        for gw in fleet:  # the others load new keys from the shared store within a second
            for key in (manual, harvester, person):
                _wait_until(lambda gw=gw, key=key: httpx.get(gw.base_url + "/models", timeout=10, headers={
                    "Authorization": f"Bearer {key['secret']}"}).status_code == 200, f"{gw.root_url} never loaded the keys")

        assert a.admin("POST", f"/admin/v1/accounts/{manual['account_id']}/action",
                       json={"action": "throttle", "reason": "test"}).status_code == 200
        client = anthropic.Anthropic(base_url=a.root_url, api_key=harvester["secret"], max_retries=0)
        # the scorer's throttle, earned on replica a only
        if not _harvest_until_throttled(client, lambda: float(
                a.admin("GET", f"/admin/v1/accounts/{harvester['account_id']}/risk").json().get("distillation_score", 0))):
            pytest.fail("the harvester never reached the throttle threshold on replica a")
        engine = create_engine(database.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:  # merged into the store's risk snapshot within a second or two

            def snapshot_has_harvester() -> bool:
                row = conn.execute(text("SELECT document FROM risk_snapshot")).first()
                conn.commit()
                return row is not None and harvester["account_id"] in str(row[0])

            _wait_until(snapshot_has_harvester, "the harvester's throttle never reached the store's risk snapshot")

        assert _stop(fleet) == [0, 0, 0]
        fleet = _start(tmp_path, stub, database, redis)
        for gw in fleet:  # every replica, from its first request after the restart
            assert _policy_of_a_request(gw, manual["secret"]) == "throttle", gw.root_url
            assert _policy_of_a_request(gw, harvester["secret"]) == "throttle", gw.root_url
            assert harvester["account_id"] in {x["account_id"] for x in gw.admin("GET", "/admin/v1/flagged").json()["accounts"]}

        # Redis stopped and started again while all three serve (fail_open): served throughout, back to shared state.
        results: list[tuple[float, int, str]] = []
        stop = threading.Event()

        def load(gw: RunningGateway) -> None:
            with httpx.Client(headers={"Authorization": f"Bearer {person['secret']}"}, timeout=10) as http:
                while not stop.is_set():
                    sent_at = time.time()
                    answer = http.post(gw.base_url + "/chat/completions",
                                       json={"model": "stub-1", "messages": [{"role": "user", "content": "during"}]})
                    results.append((sent_at, answer.status_code, answer.headers.get("x-request-id", "")))

        threads = [threading.Thread(target=load, args=(gw,)) for gw in fleet]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        redis.stop()
        down_at = time.time()
        # Each replica trips at its first call that fails; then requests sent while Redis is down must be served.
        _wait_until(lambda: [_metric(gw, "dg_state_degraded") for gw in fleet] == [1, 1, 1], "a replica never noticed Redis was gone")
        _wait_until(lambda: sum(down_at + 0.5 < at for at, _, _ in results) >= 6, "no requests while Redis was down")
        redis.start()
        up_at = time.time()
        _wait_until(lambda: all(_metric(gw, "dg_state_degraded") == 0 for gw in fleet), "a replica never went back to Redis")
        recovered_at = time.time()
        _wait_until(lambda: sum(at > recovered_at for at, _, _ in results) >= 6, "no requests after Redis was back")
        stop.set()
        for thread in threads:
            thread.join()
        during = {status for at, status, _ in results if down_at + 0.5 < at < up_at}
        after = {status for at, status, _ in results if at > recovered_at}
        assert during == {200} and after == {200}, (during, after)
        for gw in fleet:  # the manual throttle did not depend on Redis either
            assert _policy_of_a_request(gw, manual["secret"]) == "throttle"
        assert _stop(fleet) == [0, 0, 0]
        answered = [request_id for _, status, request_id in results if status == 200]
        with engine.connect() as conn:
            stored = [row[0] for row in conn.execute(text("SELECT request_id FROM events"))]
        assert len(stored) == len(set(stored))
        assert not set(answered) - set(stored), "an answered request has no event (the event log must not depend on Redis)"
        engine.dispose()
    finally:
        for gw in fleet:
            gw.stop()
        redis.stop()
