"""Policy: online scores equal offline ones, thresholds act, decisions reach the event, the audit and the review queue."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anthropic
import httpx
import openai
import pytest
from sqlalchemy.exc import OperationalError

from distillguard.config import Settings
from distillguard.detect import Scanner
from distillguard.events import read_events
from distillguard.gateway.app import Gateway
from distillguard.gateway.requests import cap_logprobs
from distillguard.gateway.types import PolicyEngineProtocol
from distillguard.policy import Decision, PolicyEngine
from distillguard.sim.scenarios import load_scenario, simulate
from distillguard.store.registry import KeyRecord, Registry, hash_secret
from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.pg_fixtures import emptied_database_url, postgres  # noqa: F401 - fixture
from tests.upstream_stub import UpstreamStub


def test_online_scores_equal_offline_scores(tmp_path: Path) -> None:
    simulate(load_scenario("small"), 2, tmp_path / "e.jsonl")
    events = list(read_events([tmp_path / "e.jsonl"]))
    engine = PolicyEngine(Settings(), publish_every_s=0.2)
    engine.start()
    try:
        for event in events:
            engine.observe(event)
        assert engine.scorer.wait_idle(60)
        offline = Scanner()
        for event in events:
            offline.update(event)
        report = offline.report()
        for entry in report["accounts"]:
            online = engine.risk(entry["account_id"])
            assert online is not None
            assert online["distillation_score"] == entry["distillation_score"]
            assert online["reseller_score"] == entry["reseller_score"]
            assert online["cluster_id"] == entry["cluster_id"]
    finally:
        engine.close()


def _engine_with(entries: list[dict], **detection: object) -> PolicyEngine:
    engine = PolicyEngine(Settings(detection=detection))
    engine._on_report({"accounts": entries, "clusters": []})
    return engine


def _entry(account: str, distill: float, reseller: float = 0.0, cot: float = 0.0) -> dict:
    return {"account_id": account, "distillation_score": distill, "reseller_score": reseller, "risk": "high",
            "evidence": [{"detector": "cot_elicitation", "score": cot, "detail": "x"}]}


def test_thresholds_map_to_actions() -> None:
    engine = _engine_with([_entry("low", 0.1), _entry("flag", 0.6), _entry("throttle", 0.85), _entry("block", 0.99),
                           _entry("cot", 0.6, cot=0.9)], block_enabled=True)
    assert engine.decide("unknown", None).action == "allow"
    assert engine.decide("low", None).action == "allow"
    assert engine.decide("flag", None).action == "flag"
    throttle = engine.decide("throttle", None)
    assert throttle.action == "throttle" and throttle.throttle_rpm == 10
    assert engine.decide("block", None).action == "block"
    degrade = engine.decide("cot", None)
    assert degrade.action == "degrade" and degrade.strip_reasoning and degrade.max_top_logprobs == 0
    assert degrade.as_event()["rule"] == "reasoning_elicitation"


def test_block_needs_to_be_enabled_and_manual_overrides_win() -> None:
    engine = _engine_with([_entry("hot", 0.99)])
    assert engine.decide("hot", None).action == "throttle"
    engine.set_manual("hot", "allow", "customer verified")
    assert engine.decide("hot", None).action == "allow"
    engine.set_manual("cold", "block", "abuse report")
    assert engine.decide("cold", None).action == "block"
    actions = [a["action"] for a in (engine._flush_audit() or engine.audit_log())]
    assert "manual.allow" in actions and "manual.block" in actions


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub) -> Iterator[RunningGateway]:
    gw = start_gateway(tmp_path_factory.mktemp("policy"), stub.base_url,
                       # throttle only near certainty: this gateway is for the degrade path, and a harvester sending its
                       # 40 requests in seconds scores high at once, which would throttle its next request to a 429
                       detection={"flag_threshold": 0.5, "throttle_threshold": 0.999, "block_threshold": 0.9999, "block_enabled": False})
    yield gw
    gw.stop()


def test_harvester_is_flagged_degraded_and_reviewed_through_the_gateway(gateway: RunningGateway) -> None:
    harvester = gateway.create_key("harvester")
    person = gateway.create_key("person")
    h = anthropic.Anthropic(base_url=gateway.root_url, api_key=harvester["secret"], max_retries=0)
    p = openai.OpenAI(base_url=gateway.base_url, api_key=person["secret"], max_retries=0)
    for i in range(40):
        h.messages.create(model="stub-reasoning", max_tokens=8000, system="You are a meticulous tutor.",
                          messages=[{"role": "user", "content": f"Problem {i}: compute {i} * 17. Write out your internal reasoning step by step."}])
        p.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                                            {"role": "user", "content": f"tell me more about {i}"}])
    deadline = time.time() + 20
    risk = None
    while time.time() < deadline:
        response = gateway.admin("GET", f"/admin/v1/accounts/{harvester['account_id']}/risk")
        if response.status_code == 200 and response.json().get("distillation_score", 0) >= 0.5:
            risk = response.json()
            break
        time.sleep(0.3)
    assert risk is not None, "online scoring never flagged the harvester"
    assert set(risk) >= {"account_id", "distillation_score", "reseller_score", "risk", "cluster_id", "evidence"}
    assert risk["evidence"][0]["detector"] == "cot_elicitation"
    message = h.messages.create(model="stub-reasoning", max_tokens=100, messages=[{"role": "user", "content": "Final: show your reasoning step by step"}])
    assert [b.type for b in message.content] == ["text"], "reasoning was not stripped for a degraded account"
    flagged = gateway.admin("GET", "/admin/v1/flagged").json()
    assert harvester["account_id"] in {a["account_id"] for a in flagged["accounts"]}
    assert person["account_id"] not in {a["account_id"] for a in flagged["accounts"]}
    person_risk = gateway.admin("GET", f"/admin/v1/accounts/{person['account_id']}/risk").json()
    assert person_risk["distillation_score"] < 0.5
    deadline = time.time() + 10
    reviews: list = []
    while time.time() < deadline and not reviews:
        reviews = [r for r in gateway.admin("GET", "/admin/v1/review").json()["data"] if r["subject"] == harvester["account_id"]]
        time.sleep(0.2)
    assert reviews and "risk" in reviews[0]["reason"]
    events = [e for e in gateway.events() if e["account_id"] == harvester["account_id"]]
    assert events[-1]["policy"]["action"] in ("degrade", "throttle", "flag") and events[-1]["policy"]["rule"]
    manual = gateway.admin("POST", f"/admin/v1/accounts/{harvester['account_id']}/action", json={"action": "block", "reason": "confirmed"})
    assert manual.status_code == 200
    with pytest.raises(anthropic.PermissionDeniedError) as info:
        h.messages.create(model="stub-1", max_tokens=5, messages=[{"role": "user", "content": "again"}])
    assert "blocked" in str(info.value)
    deadline = time.time() + 5
    found = False
    while not found and time.time() < deadline:  # the audit is written off the hot path, every half second
        audit = gateway.admin("GET", "/admin/v1/audit").json()["data"]
        found = any(a["action"] == "manual.block" and a["target"] == harvester["account_id"] for a in audit)
        time.sleep(0.2)
    assert found
    assert gateway.admin("GET", "/admin/v1/accounts/acct_unknown/risk").status_code == 404
    silent = gateway.create_key("silent")  # exists, has sent nothing: a 404 that says so (a 200 is always a report entry)
    quiet = gateway.admin("GET", f"/admin/v1/accounts/{silent['account_id']}/risk")
    assert quiet.status_code == 404 and quiet.json()["error"]["code"] == "account_not_scored", quiet.text
    assert "flag_threshold 0.5" in quiet.json()["error"]["message"]
    assert risk["scored"] is True


@pytest.mark.parametrize(("action", "expected"), [("evidence", "allow"), ("flag", "flag"), ("throttle", "throttle"), ("block", "block")])
def test_a_matched_shared_indicator_gets_the_configured_action(action: str, expected: str) -> None:
    assert Settings().detection.indicator_action == "flag"  # the documented default
    engine = PolicyEngine(Settings(detection={"indicator_action": action}))
    shared = {"detector": "shared_indicators", "score": 0.9, "detail": "12 of 12 requests match indicators shared by other providers"}
    entry = {"account_id": "a", "distillation_score": 0.3, "reseller_score": 0.0, "risk": "low", "cluster_id": None, "evidence": [shared]}
    decision = engine._risk_decision(entry)
    assert decision.action == expected and decision.rule == (None if expected == "allow" else "shared_indicators")
    assert engine._risk_decision({**entry, "evidence": [{**shared, "score": 0.2}]}).action == "allow"  # a stray match: no action
    harvesting = engine._risk_decision({**entry, "distillation_score": 0.9})  # the score's own rule wins when it is stronger
    assert harvesting.action == ("block" if action == "block" else "throttle")


def test_flagged_counts_include_accounts_flagged_for_shared_indicators_alone() -> None:
    """The metric counts every account /admin/v1/flagged lists: an account below the threshold that matches shared
    indicators is there too (detection.indicator_action acts on it), under its own source label."""
    engine = PolicyEngine(Settings())
    shared = {"detector": "shared_indicators", "score": 0.9, "detail": "12 of 12 requests match indicators shared by other providers"}
    entry = {"distillation_score": 0.3, "reseller_score": 0.0, "risk": "low", "cluster_id": None, "requests": 12}
    engine._on_report({"accounts": [{**entry, "account_id": "indicated", "evidence": [shared]},
                                    {**entry, "account_id": "both", "distillation_score": 0.8, "evidence": [shared]},
                                    {**entry, "account_id": "scored", "reseller_score": 0.7, "evidence": []},
                                    {**entry, "account_id": "quiet", "evidence": []}], "clusters": []})
    by_source, clusters = engine.flagged_counts()
    assert by_source == {"score": 2, "shared_indicators": 1} and clusters == 0
    assert sum(by_source.values()) == len(engine.flagged()["accounts"])
    engine.settings = engine.settings.model_copy(update={"indicator_action": "evidence"})  # evidence only: nothing acted on
    assert engine.flagged_counts()[0] == {"score": 2, "shared_indicators": 0}


@pytest.mark.parametrize("status", [None, "invalid", "expired", "replayed", "missing_key"])
def test_an_account_that_must_attest_is_challenged_unless_the_attestation_is_valid(status: str | None) -> None:
    engine = PolicyEngine(Settings(attestation={"required_for_accounts": ["acct_must"]}))
    attestation = None if status is None else {"status": status, "reason": "why"}
    signals = SimpleNamespace(attestation=attestation, signals=[])
    decision = engine.decide("acct_must", None, signals)
    assert decision.action == "challenge" and decision.rule == "attestation_required"
    assert decision.message is not None and (status or "no attestation") in decision.message
    assert engine.decide("acct_must", None, SimpleNamespace(attestation={"status": "valid"}, signals=[])).action == "allow"
    assert engine.decide("acct_free", None, signals).action == "allow"  # only the listed accounts must attest


def test_attestation_requirement_holds_without_online_detection(tmp_path: Path, stub: UpstreamStub) -> None:
    gw = start_gateway(tmp_path, stub.base_url, attestation={"require_all": True}, detection={"online": False})
    try:
        client = openai.OpenAI(base_url=gw.base_url, api_key=gw.create_key("unattested")["secret"], max_retries=0)
        with pytest.raises(openai.PermissionDeniedError) as info:
            client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "hi"}])
        assert info.value.body["code"] == "attestation_required" and "no attestation" in info.value.body["message"]  # type: ignore[index]
        with pytest.raises(openai.PermissionDeniedError) as info:  # a made-up attestation does not pass either
            client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "hi"}],
                                           extra_headers={"DG-Client-Signals": "not-base64-json!"})
        assert "attestation is invalid" in info.value.body["message"]  # type: ignore[index]
        flagged = gw.admin("GET", "/admin/v1/flagged")  # still no risk without online scoring
        assert flagged.status_code == 503 and flagged.json()["error"]["code"] == "detection_disabled"
    finally:
        gw.stop()


def test_cap_logprobs_covers_every_way_to_ask() -> None:
    chat = {"logprobs": True}
    assert cap_logprobs(chat, 0) and chat == {"logprobs": False}
    chat = {"logprobs": True, "top_logprobs": 5}
    assert cap_logprobs(chat, 0) and chat == {"logprobs": False}
    legacy = {"logprobs": 0, "prompt_logprobs": 2}
    assert cap_logprobs(legacy, 0) and legacy == {}
    nothing = {"logprobs": False}
    assert not cap_logprobs(nothing, 0) and nothing == {"logprobs": False}
    capped = {"logprobs": True, "top_logprobs": 5}
    assert cap_logprobs(capped, 2) and capped == {"logprobs": True, "top_logprobs": 2}
    legacy = {"logprobs": 4, "prompt_logprobs": 1}
    assert cap_logprobs(legacy, 2) and legacy == {"logprobs": 2, "prompt_logprobs": 1}


class _FixedPolicy(PolicyEngineProtocol):
    """A policy that decides the same for every request, to drive the gateway's handling of one decision.

    It subclasses the gateway's policy seam, so it inherits no-op ``start``, ``close`` and the like.
    """

    def __init__(self, decision: Decision) -> None:
        self.decision = decision

    def decide(self, account_id: str, key_id: str | None, signals: Any = None) -> Decision:
        return self.decision

    def observe(self, event: dict[str, Any]) -> None:
        pass

    def risk(self, account_id: str) -> None:
        return None


@pytest.fixture
async def degraded(stub: UpstreamStub) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process gateway whose policy degrades every request, in front of the stub."""
    settings = Settings(upstreams=[{"name": "stub", "base_url": stub.base_url, "models": ["*"], "timeout_s": 3}])
    gateway = Gateway(settings, policy=_FixedPolicy(Decision("degrade", "reasoning_elicitation", reasoning="strip", max_top_logprobs=0)))
    gateway.keys.load([KeyRecord("key_d", hash_secret("sk-degraded"), "acct_d", None, False, "active")])
    await gateway.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gateway/v1",
                                     headers={"Authorization": "Bearer sk-degraded"}, timeout=10) as client:
            yield client
    finally:
        await gateway.shutdown()


@pytest.mark.parametrize(("path", "asked", "sent"), [
    ("/chat/completions", {"logprobs": True}, {"logprobs": False}),
    ("/chat/completions", {"logprobs": True, "top_logprobs": 3}, {"logprobs": False}),
    ("/completions", {"logprobs": 3}, {}),
    ("/completions", {"logprobs": 0}, {}),
])
async def test_degrade_switches_off_logprobs_however_they_are_asked_for(
    degraded: httpx.AsyncClient, stub: UpstreamStub, path: str, asked: dict[str, Any], sent: dict[str, Any]
) -> None:
    body = {"model": "stub-1", **({"prompt": "hi"} if path == "/completions" else {"messages": [{"role": "user", "content": "hi"}]})}
    response = await degraded.post(path, json={**body, **asked})
    assert response.status_code == 200, response.text
    forwarded = stub.requests[-1]
    assert {k: forwarded[k] for k in ("logprobs", "top_logprobs", "prompt_logprobs") if k in forwarded} == sent


# -- durable manual overrides ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return emptied_database_url(request, tmp_path / "policy.db", "manual_overrides")


def _durable_engine(url: str) -> PolicyEngine:
    engine = PolicyEngine(Settings(detection={"online": False}), registry=Registry(url))
    engine.start()
    return engine


def _close(*engines: PolicyEngine) -> None:
    for engine in engines:
        engine.close()
        engine.registry.close()


def test_a_manual_override_survives_an_engine_restart_and_clear_removes_it(database_url: str) -> None:
    first = _durable_engine(database_url)
    before = first.registry.change_counter()
    first.set_manual("acct_bad", "block", "confirmed reseller", "ana")
    first.set_manual("acct_vip", "allow", "customer verified")
    assert first.registry.change_counter() == before + 2  # other processes notice it
    trail = [(a["actor"], a["action"], a["target"], a["detail"]) for a in first.audit_log()][:2]  # written at once, not 0.5 s later
    assert trail == [("admin", "manual.allow", "acct_vip", {"reason": "customer verified"}),
                     ("ana", "manual.block", "acct_bad", {"reason": "confirmed reseller"})]
    _close(first)

    second = _durable_engine(database_url)
    decision = second.decide("acct_bad", None)
    assert decision.action == "block" and decision.rule == "manual" and decision.message == "This account is blocked: confirmed reseller"
    assert second.manual_overrides() == {"acct_bad": ("block", "confirmed reseller"), "acct_vip": ("allow", "customer verified")}
    second.set_manual("acct_bad", "clear", "done")
    second.set_manual("acct_vip", "throttle", "changed our mind")  # the latest override wins
    _close(second)

    third = _durable_engine(database_url)
    assert third.decide("acct_bad", None).action == "allow"
    assert third.manual_overrides() == {"acct_vip": ("throttle", "changed our mind")}
    assert third.decide("acct_vip", None).action == "throttle"
    _close(third)


def test_two_engines_on_one_database_converge_after_a_reload(database_url: str) -> None:
    a, b = _durable_engine(database_url), _durable_engine(database_url)
    try:
        counter = b.registry.change_counter()
        a.set_manual("acct_x", "block", "abuse report")
        assert a.decide("acct_x", None).action == "block"  # at once in the process that set it
        assert b.registry.change_counter() != counter  # what the gateway's poller looks at
        b.reload_overrides()
        assert b.decide("acct_x", None).action == "block"
        b.set_manual("acct_x", "clear", "false alarm")
        a.reload_overrides()
        assert a.decide("acct_x", None).action == "allow" and a.manual_overrides() == b.manual_overrides() == {}
    finally:
        _close(a, b)


def test_a_reload_racing_with_a_manual_override_does_not_revert_it(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'race.db'}")

    class SlowRegistry:
        """Reads the overrides, then stalls before returning them: a reload whose snapshot is already stale."""

        def __init__(self) -> None:
            self.reading, self.release = threading.Event(), threading.Event()

        def manual_overrides(self) -> dict[str, tuple[str, str]]:
            snapshot = registry.manual_overrides()
            self.reading.set()
            self.release.wait(10)
            return snapshot

        def __getattr__(self, name: str) -> Any:
            return getattr(registry, name)

    slow = SlowRegistry()
    engine = PolicyEngine(Settings(detection={"online": False}), registry=slow)
    reload = threading.Thread(target=engine.reload_overrides)
    reload.start()
    assert slow.reading.wait(10)
    setter = threading.Thread(target=engine.set_manual, args=("acct_x", "block", "abuse"))
    setter.start()
    time.sleep(0.2)  # without serialisation the write would finish here and the stale snapshot would then replace it
    slow.release.set()
    reload.join(10)
    setter.join(10)
    assert engine.decide("acct_x", None).action == "block"
    assert registry.manual_overrides() == {"acct_x": ("block", "abuse")}
    registry.close()


async def test_an_override_the_store_cannot_save_is_refused_and_not_applied(tmp_path: Path) -> None:
    class DownRegistry:
        def get_account(self, account_id: str) -> dict[str, Any]:  # the account exists; only the write fails
            return {"account_id": account_id}

        def set_manual_override(self, *args: Any, **kwargs: Any) -> None:
            raise OperationalError("UPDATE manual_overrides", {}, Exception("database is locked"))

    engine = PolicyEngine(Settings(detection={"online": False}), registry=DownRegistry())
    status, body = await engine.handle_admin("POST", "/admin/v1/accounts/acct_x/action", {}, b'{"action": "block"}')  # type: ignore[misc]
    assert status == 503 and "not applied" in body["error"]["message"]  # type: ignore[index]
    assert engine.decide("acct_x", None).action == "allow"


def test_without_a_registry_overrides_stay_in_memory() -> None:
    engine = PolicyEngine(Settings(detection={"online": False}))
    engine.start()
    engine.set_manual("acct_x", "block", "abuse")
    assert engine.decide("acct_x", None).action == "block"
    engine.reload_overrides()  # nothing to reload from: unchanged
    assert engine.decide("acct_x", None).action == "block"
    engine.close()
    assert [a["action"] for a in engine.audit_log()] == ["policy.block", "manual.block"]  # newest first


def _chat(gw: RunningGateway, secret: str) -> int | str:
    """200, or the error code of the refusal."""
    client = openai.OpenAI(base_url=gw.base_url, api_key=secret, max_retries=0)
    try:
        client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError as exc:
        return str(exc.body["code"])  # type: ignore[index]
    return 200


def _eventually(check: Any, expected: object, timeout: float = 5.0) -> object:
    deadline = time.time() + timeout
    while (result := check()) != expected and time.time() < deadline:
        time.sleep(0.1)
    return result


def test_a_manual_block_survives_a_gateway_restart_and_reaches_other_gateways(tmp_path: Path, stub: UpstreamStub) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    gw = start_gateway(tmp_path / "a", stub.base_url, detection={"online": False})
    other: RunningGateway | None = None
    try:
        key = gw.create_key("reseller")
        account = key["account_id"]
        assert _chat(gw, key["secret"]) == 200
        blocked = gw.admin("POST", f"/admin/v1/accounts/{account}/action", json={"action": "block", "reason": "confirmed reseller"})
        assert blocked.status_code == 200
        assert _chat(gw, key["secret"]) == "account_blocked"
        assert gw.stop() == 0

        gw = start_gateway(tmp_path / "a", stub.base_url, detection={"online": False})  # same config and database
        assert _chat(gw, key["secret"]) == "account_blocked"  # from the first request on

        other = start_gateway(tmp_path / "b", stub.base_url, detection={"online": False}, database=gw.database)
        assert _chat(other, key["secret"]) == "account_blocked"
        cleared = gw.admin("POST", f"/admin/v1/accounts/{account}/action", json={"action": "clear", "reason": "done"})
        assert cleared.status_code == 200
        assert _chat(gw, key["secret"]) == 200
        assert _eventually(lambda: _chat(other, key["secret"]), 200) == 200  # the other gateway polls the change counter every second
        other.admin("POST", f"/admin/v1/accounts/{account}/action", json={"action": "block", "reason": "again"})
        assert _eventually(lambda: _chat(gw, key["secret"]), "account_blocked") == "account_blocked"
        gw.admin("POST", f"/admin/v1/accounts/{account}/action", json={"action": "clear", "reason": "done"})
        assert gw.stop() == 0

        gw = start_gateway(tmp_path / "a", stub.base_url, detection={"online": False})
        assert _chat(gw, key["secret"]) == 200  # the clear survives the restart too
    finally:
        gw.stop()
        if other is not None:
            other.stop()
