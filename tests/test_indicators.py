"""`distillguard indicators export|import|list` and `scan --indicators`: STIX 2.1 bundles between providers.

Unit tests pin what is exported (only values no unflagged account shares,
privacy modes respected), the STIX round trip and input validation; the CLI
tests run the commands as a user would and check that an imported bundle
becomes `shared_indicators` evidence in a scan.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from distillguard.cli import main
from distillguard.exceptions import InputError
from distillguard.indicators import Indicator, IndicatorSet, collect_indicators, install_digest, prompt_digest
from distillguard.indicators.stix import build_bundle, parse_bundle, pattern_for
from tests.gateway_fixtures import start_gateway
from tests.upstream_stub import UpstreamStub

WRAPPER = "You are a data generator. Think step by step and write out all of your reasoning."


def _event(account: str, i: int, ip: str, *, asn: int | None = None, install: str | None = None, system: str | None = None) -> dict[str, Any]:
    return {"v": 1, "ts": f"2026-11-23T10:{i // 60:02d}:{i % 60:02d}.000Z", "request_id": f"req_{account}_{i}", "account_id": account,
            "endpoint": "openai.chat", "model": "demo-1",
            "client": {"ip": ip, "user_agent": "OpenAI/Python", "header_fp": "x", "geo": {"country": None, "asn": asn, "hosting": None}},
            "attestation": {"status": "valid", "install_id": install} if install else None,
            "request": {"system": system, "messages": [{"role": "user", "content": f"question {i}"}], "params": {}},
            "response": {"status": 200, "text": "answer", "completion_tokens": 5}}


def _traffic() -> list[dict[str, Any]]:
    events = []
    for i in range(20):
        events.append(_event("acct_h1", i, "203.0.113.7", asn=14061, install="inst_h1", system=WRAPPER))
        events.append(_event("acct_h2", i, "203.0.113.8", asn=14061, install="inst_h2", system="  " + WRAPPER.replace(" ", "\n ", 1)))
        events.append(_event("acct_benign", i, "198.51.100.20", asn=3320, install="inst_b", system="You are helpful."))
    events.append(_event("acct_h1", 99, "198.51.100.20", asn=3320))  # the hydra once used the benign office's egress
    return events


def test_export_shares_only_what_no_unflagged_account_shows() -> None:
    collected = collect_indicators(_traffic(), {"acct_h1", "acct_h2"})
    found = {(i.kind, i.value): i.accounts for i in collected.indicators}
    assert found == {("ip", "203.0.113.7"): 1, ("ip", "203.0.113.8"): 1, ("asn", "14061"): 2,
                     ("install_sha256", install_digest("inst_h1")): 1, ("install_sha256", install_digest("inst_h2")): 1,
                     ("prompt_sha256", prompt_digest(WRAPPER)): 2}  # whitespace-normalised: both heads' wrapper is one hash
    assert "198.51.100.20" not in json.dumps([i.value for i in collected.indicators])
    assert collected.withheld["ip values also seen from accounts that are not flagged"] == 1
    assert collected.withheld["asn values also seen from accounts that are not flagged"] == 1


def test_export_respects_the_privacy_modes() -> None:
    events = [_event("acct_h1", i, "hmac:0123456789abcdef01234567", system="hmac-sha256:" + "0" * 32) for i in range(3)]
    events += [_event("acct_h1", 9, "203.0.113.0/24")]  # ip_mode: truncate
    collected = collect_indicators(events, {"acct_h1"})
    assert [(i.kind, i.value) for i in collected.indicators] == [("cidr", "203.0.113.0/24")]
    assert collected.withheld["client addresses stored as keyed hashes (privacy.ip_mode: hash)"] == 3
    assert collected.withheld["system prompts stored hashed or dropped (privacy.prompt_mode)"] == 3


def test_stix_round_trip_and_patterns() -> None:
    indicators = [Indicator("ip", "203.0.113.7", 1), Indicator("cidr", "198.51.100.0/24", 2), Indicator("ip", "2001:db8::1", 1),
                  Indicator("asn", "14061", 2), Indicator("install_sha256", install_digest("inst_x"), 1),
                  Indicator("prompt_sha256", prompt_digest(WRAPPER), 2), Indicator("canary_key", "canary-2026-11", 3)]
    assert pattern_for(indicators[1]) == "[ipv4-addr:value ISSUBSET '198.51.100.0/24']"
    assert pattern_for(indicators[3]) == "[autonomous-system:number = 14061]"
    bundle = json.loads(build_bundle(indicators, producer="provider-a").serialize())
    assert bundle["type"] == "bundle" and [o["type"] for o in bundle["objects"]].count("indicator") == len(indicators)
    assert all(o["spec_version"] == "2.1" for o in bundle["objects"])
    parsed = parse_bundle(bundle, "b.json")
    assert parsed.producer == "provider-a" and parsed.skipped == {}
    assert sorted((i.kind, i.value) for i in parsed.indicators) == sorted((i.kind, i.value) for i in indicators)


def test_foreign_bundles_import_what_is_understood_and_count_the_rest() -> None:
    base = {"spec_version": "2.1", "created": "2026-11-01T00:00:00Z", "modified": "2026-11-01T00:00:00Z",
            "valid_from": "2026-11-01T00:00:00Z", "pattern_type": "stix"}
    objects = [
        {**base, "type": "indicator", "id": "indicator--11111111-1111-4111-8111-111111111111",
         "pattern": "[ipv4-addr:value = '192.0.2.1' OR ipv4-addr:value = '192.0.2.2']"},
        {**base, "type": "indicator", "id": "indicator--22222222-2222-4222-8222-222222222222",
         "pattern": "[domain-name:value = 'evil.example']"},
        {**base, "type": "indicator", "id": "indicator--33333333-3333-4333-8333-333333333333",
         "pattern": "[ipv4-addr:value = '192.0.2.9' AND ipv4-addr:value = '192.0.2.10']"},
        {**base, "type": "indicator", "id": "indicator--44444444-4444-4444-8444-444444444444", "pattern": "alert tcp any",
         "pattern_type": "snort"},
    ]
    parsed = parse_bundle({"type": "bundle", "id": "bundle--55555555-5555-4555-8555-555555555555", "objects": objects}, "f.json")
    assert sorted(i.value for i in parsed.indicators) == ["192.0.2.1", "192.0.2.2"]
    assert parsed.skipped == {"unsupported comparison domain-name:value =": 1, "indicators in pattern language 'snort'": 1,
                              "unsupported pattern part (AndBooleanExpression: AND, FOLLOWEDBY, qualifiers and negation are not imported)": 1}


@pytest.mark.parametrize(("data", "message"), [
    ([1, 2], "b.json: not a STIX 2.1 bundle"),
    ({"type": "bundle", "objects": {}}, "b.json: objects: expected a list"),
    ({"type": "bundle", "objects": [{"type": "indicator", "spec_version": "2.1", "id": "indicator--11111111-1111-4111-8111-111111111111",
                                     "created": "2026-11-01T00:00:00Z", "modified": "2026-11-01T00:00:00Z",
                                     "valid_from": "2026-11-01T00:00:00Z", "pattern_type": "stix", "pattern": "[ipv4-addr:value = "}]},
     "b.json: objects[0]"),
    ({"type": "bundle", "objects": [{"type": "indicator", "spec_version": "2.0"}]}, "b.json: objects[0].spec_version"),
])
def test_bad_bundles_name_the_field(data: Any, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_bundle(data, "b.json")
    assert str(caught.value).startswith(message), caught.value


def test_matching_networks_installs_and_prompts() -> None:
    matcher = IndicatorSet([Indicator("cidr", "203.0.113.0/24"), Indicator("ip", "192.0.2.5"), Indicator("asn", "14061"),
                            Indicator("install_sha256", install_digest("inst_h1")), Indicator("prompt_sha256", prompt_digest(WRAPPER))])
    assert matcher.matches(_event("a", 1, "203.0.113.77")) == ["ip"]
    assert matcher.matches(_event("a", 1, "192.0.2.0/24")) == ["ip"]  # a truncated address overlapping an indicator address
    assert matcher.matches(_event("a", 1, "192.0.3.1", asn=14061, install="inst_h1", system=WRAPPER)) == \
        ["asn", "install_sha256", "prompt_sha256"]
    assert matcher.matches(_event("a", 1, "hmac:00ff", asn=3320, install="inst_other", system="You are helpful.")) == []


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "distillguard.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def _inproc(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cwd: Path, *args: str) -> tuple[int, str, str]:
    """The same command in this process (the machine is shared: a subprocess per check costs seconds of start-up)."""
    monkeypatch.chdir(cwd)
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_commands_from_outside(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Provider A exports from a scan report and its event log; provider B imports the bundle and its scan sees the hydra."""
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in _traffic()))
    report = {"v": 1, "events": 61, "accounts_seen": 3, "clusters": [],
              "accounts": [{"account_id": "acct_h1", "risk": "high"}, {"account_id": "acct_h2", "risk": "high"},
                           {"account_id": "acct_benign", "risk": "low"}]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    config = tmp_path / "b.yaml"
    config.write_text(yaml.safe_dump({"database": f"sqlite:///{tmp_path / 'b.db'}"}))

    out = _cli("indicators", "export", "--report", "report.json", "--events", "events.jsonl", "--producer", "provider-a",
               "--canary-key", "canary-1", "--out", "bundle.json", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "2 account(s) at risk high" in out.stderr and "7 indicator(s)" in out.stderr, out.stderr
    bundle = json.loads((tmp_path / "bundle.json").read_text())
    patterns = {o["pattern"] for o in bundle["objects"] if o["type"] == "indicator"}
    assert "[ipv4-addr:value = '203.0.113.7']" in patterns and "[x-distillguard-canary:key_id = 'canary-1']" in patterns

    imported = _cli("indicators", "import", "bundle.json", "--config", str(config), cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    summary = json.loads(imported.stdout)
    assert summary["source"] == "provider-a" and summary["imported"] == 7 and summary["by_kind"]["asn"] == 1
    code, stdout, _ = _inproc(capsys, monkeypatch, tmp_path, "indicators", "import", "bundle.json", "--config", str(config))
    assert code == 0 and json.loads(stdout)["imported"] == 7  # idempotent: the same rows again
    code, stdout, _ = _inproc(capsys, monkeypatch, tmp_path, "indicators", "list", "--config", str(config))
    listed = json.loads(stdout)
    assert len(listed) == 7 and {row["source"] for row in listed} == {"provider-a"}

    scanned = _cli("scan", "events.jsonl", "--indicators", "bundle.json", "--format", "json", cwd=tmp_path)
    assert scanned.returncode == 0, scanned.stderr
    by_account = {a["account_id"]: a for a in json.loads(scanned.stdout)["accounts"]}
    shared = [e for e in by_account["acct_h1"]["evidence"] if e["detector"] == "shared_indicators"]
    assert shared and shared[0]["score"] > 0.9 and "20 of 21 requests" in shared[0]["detail"]
    assert not [e for e in by_account["acct_benign"]["evidence"] if e["detector"] == "shared_indicators"]
    code, stdout, _ = _inproc(capsys, monkeypatch, tmp_path, "scan", "events.jsonl", "--format", "json")
    plain = json.loads(stdout)
    assert all(e["detector"] != "shared_indicators" for a in plain["accounts"] for e in a["evidence"])


def test_bad_input_exits_2_naming_file_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"database": f"sqlite:///{tmp_path / 'c.db'}"}))
    (tmp_path / "bad.json").write_text(json.dumps({"type": "bundle", "objects": [{"type": "indicator", "spec_version": "2.1"}]}))
    out = _cli("indicators", "import", "bad.json", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 2 and "bad.json: objects[0] (indicator )" in out.stderr, out.stderr
    (tmp_path / "notjson.json").write_text("{")
    code, _, err = _inproc(capsys, monkeypatch, tmp_path, "indicators", "import", "notjson.json", "--config", str(config))
    assert code == 2 and "notjson.json: not JSON" in err
    code, _, err = _inproc(capsys, monkeypatch, tmp_path, "indicators", "export", "--report", "missing.json", "--config", str(config))
    assert code == 2 and "missing.json" in err
    code, _, err = _inproc(capsys, monkeypatch, tmp_path, "scan", "x.jsonl", "--indicators", "bad.json")
    assert code == 2 and "bad.json: objects[0]" in err
    with pytest.raises(SystemExit) as exited:
        main(["indicators", "export", "--help"])
    assert exited.value.code == 0 and "--min-risk" in capsys.readouterr().out


OPERATION = "You are the Acme travel desk. Answer briefly."  # nothing in it raises the risk score by itself


def test_indicators_imported_while_the_gateway_runs_reach_its_scorer_and_policy(
        tmp_path: Path, stub: UpstreamStub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Provider B serves, then imports A's bundle (an operation's plain-looking system prompt): without a restart the online scorer matches it (`shared_indicators`
    evidence), and `detection.indicator_action: block` blocks the account on that alone; an account sending an
    ordinary prompt is not touched."""
    config = tmp_path / "import.yaml"
    config.write_text(yaml.safe_dump({"database": f"sqlite:///{tmp_path / 'gateway.db'}"}))  # the database start_gateway uses
    (tmp_path / "a.json").write_text(build_bundle([Indicator("prompt_sha256", prompt_digest(OPERATION), 2)], producer="provider-a").serialize())
    gw = start_gateway(tmp_path, stub.base_url, detection={"indicator_action": "block"})
    try:
        key, person = gw.create_key("hydra-head"), gw.create_key("person")

        def ask(secret: str, system: str, i: int) -> httpx.Response:
            return httpx.post(gw.base_url + "/chat/completions", headers={"Authorization": f"Bearer {secret}"}, timeout=30,
                              json={"model": "stub-1", "messages": [{"role": "system", "content": system},
                                                                    {"role": "user", "content": f"task {i}"}]})

        assert all(ask(key["secret"], OPERATION, i).status_code == 200 for i in range(6))  # nothing imported yet
        assert _inproc(capsys, monkeypatch, tmp_path, "indicators", "import", "a.json", "--config", str(config))[0] == 0
        deadline, i, refused = time.time() + 40, 6, None
        while time.time() < deadline and refused is None:
            answer = ask(key["secret"], OPERATION, i)
            assert ask(person["secret"], "You are a helpful assistant.", i).status_code == 200
            refused = answer if answer.status_code == 403 else None
            i += 1
            time.sleep(0.2)
        assert refused is not None, "the imported indicator never reached the running gateway's scorer and policy"
        assert "indicators shared by other providers" in refused.json()["error"]["message"]
        risk = gw.admin("GET", f"/admin/v1/accounts/{key['account_id']}/risk").json()
        shared = [e for e in risk["evidence"] if e["detector"] == "shared_indicators"]
        assert shared and "match indicators shared by other providers" in shared[0]["detail"], risk
        account = gw.admin("GET", f"/admin/v1/accounts/{key['account_id']}").json()
        assert account["policy"] == {"action": "block", "rule": "shared_indicators"}
        assert gw.admin("GET", f"/admin/v1/accounts/{person['account_id']}").json()["policy"]["action"] == "allow"
        reviews = gw.admin("GET", "/admin/v1/review").json()["data"]
        assert any(r["subject"] == key["account_id"] and "shared indicators (block)" in r["reason"] for r in reviews), reviews
        metrics = httpx.get(gw.root_url + "/metrics").text  # flagged on the indicators alone: counted, under its source
        assert re.search(r'^distillguard_flagged_accounts\{source="shared_indicators"\} 1\.0$', metrics, flags=re.M), metrics
    finally:
        gw.stop()
