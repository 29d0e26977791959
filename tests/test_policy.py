"""Policy: online scores equal offline ones, thresholds act, decisions reach the event, the audit and the review queue."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from distillguard.config import Settings
from distillguard.detect import Scanner
from distillguard.events import read_events
from distillguard.policy import PolicyEngine
from distillguard.sim.scenarios import load_scenario, simulate
from tests.gateway_fixtures import RunningGateway, start_gateway
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
def stub() -> Iterator[UpstreamStub]:
    upstream = UpstreamStub().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub) -> Iterator[RunningGateway]:
    gw = start_gateway(tmp_path_factory.mktemp("policy"), stub.base_url,
                       detection={"flag_threshold": 0.5, "throttle_threshold": 0.8, "block_threshold": 0.95, "block_enabled": False})
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
        if response.status_code == 200 and response.json()["distillation_score"] >= 0.5:
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
