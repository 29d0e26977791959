"""Risk decisions survive a restart and reach other gateway processes: the store's risk snapshot and the scorer's replay."""

from __future__ import annotations

import os
import re
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from distillguard.config import Settings
from distillguard.events import format_ts
from distillguard.policy import PolicyEngine
from distillguard.store.registry import Registry
from distillguard.store.risk import RiskStore
from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.pg_fixtures import emptied_database_url, postgres  # noqa: F401 - fixture
from tests.redis_fixtures import RedisServer
from tests.upstream_stub import UpstreamStub


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return emptied_database_url(request, tmp_path / "risk.db", "risk_snapshot")


def _entry(account: str, score: float) -> dict[str, Any]:
    return {"account_id": account, "distillation_score": score, "reseller_score": 0.0, "risk": "high" if score >= 0.8 else "medium",
            "cluster_id": None, "evidence": [{"detector": "coverage_sweep", "score": score, "detail": "sweeps a syllabus"}]}


def _cluster(members: list[str], score: float) -> dict[str, Any]:
    return {"cluster_id": "cl_" + "_".join(members), "accounts": members, "score": score, "shared": ["install"]}


def _engine(url: str) -> PolicyEngine:
    """An engine whose scorer is never started: reports are handed to it directly, the snapshot synced by hand."""
    return PolicyEngine(Settings(detection={"online": True, "block_enabled": True}), registry=Registry(url))


def test_decisions_and_clusters_survive_a_new_engine_and_the_strongest_view_wins(database_url: str) -> None:
    first = _engine(database_url)
    first._on_report({"accounts": [_entry("acct_throttled", 0.85), _entry("acct_blocked", 0.97), _entry("acct_calm", 0.1)],
                      "clusters": [_cluster(["acct_a", "acct_b"], 0.9), _cluster(["acct_c", "acct_d"], 0.2)]})
    first._sync_snapshot(force=True)

    second = _engine(database_url)  # a restarted process: nothing scored yet
    second._load_snapshot()
    assert second.decide("acct_throttled", None).action == "throttle"
    assert second.decide("acct_blocked", None).action == "block"
    assert second.decide("acct_calm", None).action == "allow"
    assert [c["cluster_id"] for c in second.flagged()["clusters"]] == ["cl_acct_a_acct_b"]  # only flagged clusters are kept
    assert second.risk("acct_blocked") == _entry("acct_blocked", 0.97)  # the report's shape, nothing added
    # Its own scorer sees less of one account: the other process's higher score still holds ...
    second._on_report({"accounts": [_entry("acct_throttled", 0.3)], "clusters": []})
    assert second.decide("acct_throttled", None).action == "throttle"
    second._sync_snapshot(force=True)
    # ... and the first process lowering its own score is what lifts it, for everyone.
    first._on_report({"accounts": [_entry("acct_throttled", 0.2), _entry("acct_blocked", 0.97)], "clusters": []})
    first._sync_snapshot(force=True)
    second._sync_snapshot(force=True)
    assert second.decide("acct_throttled", None).action == "allow"
    assert second.decide("acct_blocked", None).action == "block"
    assert second.flagged()["clusters"] == []
    stored = RiskStore(first.registry.engine).load()
    assert set(stored["accounts"]) == {"acct_blocked"} and stored["clusters"] == {}
    for engine in (first, second):
        engine.registry.close()


def test_a_store_failure_keeps_the_current_decisions(tmp_path: Path) -> None:
    engine = _engine(f"sqlite:///{tmp_path / 'risk.db'}")
    engine._on_report({"accounts": [_entry("acct_x", 0.9)], "clusters": []})

    class Down(RiskStore):
        def merge(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError("connection refused")

    engine.risk_store = Down(engine.registry.engine)
    engine._sync_snapshot(force=True)  # logged, not raised
    assert engine.decide("acct_x", None).action == "throttle"
    engine.registry.close()


def test_a_poll_decodes_the_snapshot_only_when_another_process_changed_it(database_url: str) -> None:
    """Without a report of its own, each tick reads the snapshot's time; the document only after another writer's merge."""
    loads: list[float] = []

    class Counting(RiskStore):
        def load(self) -> Any:
            document = super().load()
            loads.append(document["ts"])
            return document

    first, second = _engine(database_url), _engine(database_url)
    second.risk_store = Counting(second.registry.engine)
    first._on_report({"accounts": [_entry("acct_p", 0.9)], "clusters": []})
    first._sync_snapshot(force=True)
    second._sync_snapshot(force=True)
    assert len(loads) == 1 and second.decide("acct_p", None).action == "throttle"
    for _ in range(3):
        second._sync_snapshot(force=True)
    assert len(loads) == 1  # unchanged: its time alone was read
    first._on_report({"accounts": [_entry("acct_p", 0.97)], "clusters": []})
    first._sync_snapshot(force=True)
    second._sync_snapshot(force=True)
    assert len(loads) == 2 and second.decide("acct_p", None).action == "block"
    RiskStore(first.registry.engine).clear()  # an operator starting over: the row is gone, and so are its decisions
    second._sync_snapshot(force=True)
    assert len(loads) == 3 and second.decide("acct_p", None).action == "allow"
    second._sync_snapshot(force=True)
    assert len(loads) == 3
    for engine in (first, second):
        engine.registry.close()


def _harvest(client: anthropic.Anthropic, i: int) -> str:
    """One reasoning-harvesting request; the HTTP status it got (or 200)."""
    try:
        client.messages.create(model="stub-reasoning", max_tokens=8000, system="You are a meticulous tutor.",
                               messages=[{"role": "user", "content": f"Problem {i}: compute {i} * 17. Write out your internal reasoning step by step."}])
    except anthropic.APIStatusError as exc:
        return str(exc.status_code)
    return "200"


def _harvest_until_throttled(client: anthropic.Anthropic, score: Callable[[], float], requests: int = 200,
                             wait_s: float = 90.0) -> bool:
    """Harvest until the account's distillation score reaches the throttle threshold (0.8); whether it did.

    One family of evidence alone (here the wording: every prompt asks for the reasoning) stays below `high` by design
    (scanner.FAMILY_CAP, SECOND_FAMILY), so this harvester crosses 0.8 only once coverage and answer lengths add a
    second family — after ~60-70 requests on a quiet machine. The online scorer's reports lag the traffic on a busy
    one, so after the requests the score is polled for ``wait_s`` more before giving up.
    """
    for i in range(requests):
        _harvest(client, i)
        if score() >= 0.8:
            return True
        time.sleep(0.02)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if score() >= 0.8:
            return True
        time.sleep(0.2)
    return False


def test_a_throttled_harvester_stays_throttled_and_flagged_across_a_gateway_restart(tmp_path: Path, stub: UpstreamStub) -> None:
    detection = {"flag_threshold": 0.5, "throttle_threshold": 0.8, "block_threshold": 0.99, "block_enabled": False}
    gw = start_gateway(tmp_path, stub.base_url, detection=detection)
    try:
        key = gw.create_key("harvester")
        account = key["account_id"]
        client = anthropic.Anthropic(base_url=gw.root_url, api_key=key["secret"], max_retries=0)

        def score() -> float:
            risk = gw.admin("GET", f"/admin/v1/accounts/{account}/risk")
            return float(risk.json().get("distillation_score", 0)) if risk.status_code == 200 else 0.0

        assert _harvest_until_throttled(client, score), "the harvester never reached the throttle threshold"
        registry = Registry(gw.database)
        deadline = time.time() + 5  # the snapshot is merged into the store every second
        while time.time() < deadline and account not in RiskStore(registry.engine).load()["accounts"]:
            time.sleep(0.2)
        registry.close()
        stored_events = len(gw.events())
        assert gw.stop() == 0

        gw = start_gateway(tmp_path, stub.base_url, detection=detection)  # same config and database
        flagged = gw.admin("GET", "/admin/v1/flagged").json()
        assert account in {a["account_id"] for a in flagged["accounts"]}
        assert gw.admin("GET", f"/admin/v1/accounts/{account}/risk").json()["distillation_score"] >= 0.8
        _harvest(client.with_options(base_url=gw.root_url), 1000)
        events = [e for e in gw.events(expect=stored_events + 1) if e["account_id"] == account]
        assert events[-1]["policy"]["action"] == "throttle"  # enforced from the first request after the restart
        # The scorer rebuilt itself from the event log: its own report (not only the snapshot) has the harvester.
        deadline = time.time() + 90  # the scorer is a new process: its start-up (imports, replay) is slow on a busy machine
        while time.time() < deadline and not (replayed := re.search(r"online scorer rebuilt from the (\d+) most recent", gw.log())):
            time.sleep(0.2)
        assert replayed and int(replayed.group(1)) >= stored_events
    finally:
        gw.stop()


# -- several replicas sharing Redis: notices make a decision reach the others at once ----------------------------------


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def _chat(gw: RunningGateway, secret: str) -> str:
    try:
        openai.OpenAI(base_url=gw.base_url, api_key=secret, max_retries=0).chat.completions.create(
            model="stub-1", messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError as exc:
        return str(exc.body["code"])  # type: ignore[index]
    return "ok"


def _seconds_until(check: Any, timeout: float = 10.0) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "never happened"
        time.sleep(0.01)
    return time.monotonic() - start


def test_a_block_and_a_scorer_decision_reach_the_other_replica_within_a_second(tmp_path: Path, stub: UpstreamStub,
                                                                               redis: RedisServer) -> None:
    detection = {"flag_threshold": 0.5, "throttle_threshold": 0.8, "block_threshold": 0.99, "block_enabled": False}
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = start_gateway(tmp_path / "a", stub.base_url, database=database, state=redis.url, detection=detection)
    b = start_gateway(tmp_path / "b", stub.base_url, database=database, state=redis.url, detection=detection)
    try:
        person = a.create_key("person")
        _seconds_until(lambda: _chat(b, person["secret"]) == "ok")  # b loaded the key from the database
        # A manual block through one replica: the others apply it on the notice, not at their next one-second poll.
        # Probed with one kept-alive connection: an SDK client built per probe cost more than the notice on a busy
        # machine (the median read 0.46 s at load 22 that way), and the probe's cost is part of every delay measured.
        delays = []
        with httpx.Client(base_url=b.base_url, headers={"Authorization": f"Bearer {person['secret']}"}, timeout=30) as http:

            def answer() -> str:
                response = http.post("/chat/completions", json={"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]})
                return "ok" if response.status_code == 200 else str(response.json()["error"]["code"])

            for _ in range(3):
                assert a.admin("POST", f"/admin/v1/accounts/{person['account_id']}/action", json={"action": "block"}).status_code == 200
                delays.append(_seconds_until(lambda: answer() == "account_blocked"))
                assert a.admin("POST", f"/admin/v1/accounts/{person['account_id']}/action", json={"action": "clear"}).status_code == 200
                delays.append(_seconds_until(lambda: answer() == "ok"))
        # Polling alone takes up to a second (median ~0.9 s in bench/fleet.py); a notice, a few hundredths plus this probe.
        assert statistics.median(delays) < 0.4 and max(delays) < 1.0, delays

        # A scorer decision on one replica: the harvester's traffic goes to a only.
        key = a.create_key("harvester")
        account = key["account_id"]
        client = anthropic.Anthropic(base_url=a.root_url, api_key=key["secret"], max_retries=0)
        if not _harvest_until_throttled(client, lambda: float(a.admin("GET", f"/admin/v1/accounts/{account}/risk").json().get("distillation_score", 0))):
            pytest.fail("the harvester never reached the throttle threshold on replica a")

        def b_throttles() -> bool:
            risk = b.admin("GET", f"/admin/v1/accounts/{account}/risk")
            return risk.status_code == 200 and risk.json().get("distillation_score", 0) >= 0.8

        assert _seconds_until(b_throttles) < 1.0
        # The store is shared: only an event stamped after this moment is b's request (a's harvest came before).
        since = format_ts()
        _chat(b, key["secret"])  # served or refused by the throttle's own limit: either way the event says throttle
        deadline = time.time() + 5
        events: list[dict[str, Any]] = []
        while not events and time.time() < deadline:
            events = [e for e in b.events() if e["account_id"] == account and e["ts"] >= since]
            time.sleep(0.0 if events else 0.1)
        assert events and events[-1]["policy"]["action"] == "throttle"
    finally:
        a.stop()
        b.stop()


def test_a_dead_scorer_is_reported_by_readyz_and_metrics_while_the_last_decisions_hold(tmp_path: Path, stub: UpstreamStub) -> None:
    gw = start_gateway(tmp_path, stub.base_url)
    try:
        key = gw.create_key("someone")
        assert _chat(gw, key["secret"]) == "ok"
        deadline = time.time() + 10
        while time.time() < deadline and httpx.get(gw.root_url + "/readyz").json()["scorer"]["last_report_age_s"] is None:
            time.sleep(0.1)
        ready = httpx.get(gw.root_url + "/readyz").json()
        assert ready["scorer"]["status"] == "ok" and ready["scorer"]["last_report_age_s"] is not None
        children = Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()
        assert len(children) == 1, children  # the scorer worker
        os.kill(int(children[0]), signal.SIGKILL)
        deadline = time.time() + 10
        while time.time() < deadline and httpx.get(gw.root_url + "/readyz").json()["scorer"]["status"] != "down":
            time.sleep(0.1)
        ready_response = httpx.get(gw.root_url + "/readyz")
        assert ready_response.status_code == 200 and ready_response.json()["scorer"]["status"] == "down"  # still serving
        metrics = httpx.get(gw.root_url + "/metrics").text
        assert "distillguard_scorer_up 0" in metrics and "distillguard_scorer_stale 1" in metrics
        assert _chat(gw, key["secret"]) == "ok"
    finally:
        gw.stop()
