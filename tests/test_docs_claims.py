"""Sentences in docs/ that the code once contradicted, each checked against the code (issue #12, deliverable 8).

The page and the sentence are named in each test's docstring; when one of
these fails, either the code or that sentence is wrong.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from distillguard.cli import main
from distillguard.config import load_settings
from distillguard.detect.clustering import stable_cluster_id
from distillguard.gateway.server import build_gateway
from distillguard.store import Registry
from tests.gateway_fixtures import start_gateway
from tests.upstream_stub import UpstreamStub

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_attestation_requirement_holds_without_online_detection(tmp_path: Path, stub: UpstreamStub) -> None:
    """attestation.md: the requirement "holds either way" — with detection.online false too (it once said it needed it)."""
    gw = start_gateway(tmp_path, stub.base_url, detection={"online": False}, attestation={"require_all": True})
    try:
        key = gw.create_key("must-attest")
        answer = httpx.post(gw.base_url + "/chat/completions", headers={"Authorization": f"Bearer {key['secret']}"}, timeout=30,
                            json={"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "attestation_required"
    finally:
        gw.stop()
    assert "so it needs `detection.online: true`" not in (DOCS / "attestation.md").read_text()


def test_retention_is_wired_from_the_configuration(tmp_path: Path) -> None:
    """store.md and signals.md: privacy.retention_days is enforced by the gateway's event writer (it once said "not yet implemented")."""
    settings = load_settings(None, database=f"sqlite:///{tmp_path / 'db.sqlite'}", spill_dir=str(tmp_path / "spill"),
                             privacy={"retention_days": 7}, detection={"online": False})
    gateway = build_gateway(settings)
    assert gateway.sink is not None and gateway.sink.retention_days == 7  # type: ignore[attr-defined]
    for page in ("store.md", "signals.md", "gateway.md"):
        assert "not yet implemented" not in (DOCS / page).read_text(), page


def test_admin_plugins_are_policy_and_watermark_only(tmp_path: Path) -> None:
    """architecture.md: admin plugins are the policy engine and the watermarker (it once listed a signals plugin that does not exist)."""
    settings = load_settings(None, database=f"sqlite:///{tmp_path / 'db.sqlite'}", spill_dir=str(tmp_path / "spill"),
                             detection={"online": False})
    plugins = build_gateway(settings).admin_plugins
    assert sorted(type(p).__name__ for p in plugins) == ["GatewayWatermarker", "PolicyEngine"]
    assert "signals: enrollment listing" not in (DOCS / "architecture.md").read_text()


def test_cluster_ids_are_stable_hashes_not_ranks() -> None:
    """watermark.md: a cluster id is `cl_` + 10 hex from the smallest member, the same whatever other accounts join."""
    first = stable_cluster_id(["acct_b", "acct_a", "acct_c"])
    assert re.fullmatch(r"cl_[0-9a-f]{10}", first)
    assert stable_cluster_id(["acct_a", "acct_z"]) == first  # other members changed, the smallest stayed
    assert stable_cluster_id(["acct_b", "acct_c"]) != first  # the smallest left: a new id
    assert "positions in the latest report" not in (DOCS / "watermark.md").read_text()


def test_cli_revocations_are_audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """store.md: every change from the CLI is in the audit trail (it once said CLI revocations were not)."""
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    monkeypatch.setenv("DG_DATABASE", database)
    monkeypatch.delenv("DG_CONFIG", raising=False)
    registry = Registry(database)
    account = registry.create_account("a")
    key = registry.create_key(account["account_id"])
    assert main(["keys", "revoke", key["key_id"]]) == 0
    revocations = [row for row in registry.list_audit() if row["action"] == "key.revoke"]
    assert [(row["actor"], row["target"]) for row in revocations] == [("cli", key["key_id"])]
    assert "Revocations made from the CLI are\nnot written" not in (DOCS / "store.md").read_text()


@pytest.mark.parametrize(("mode", "stored"), [("hash", "hmac:")])
def test_refused_requests_store_the_address_as_privacy_ip_mode_says(tmp_path: Path, stub: UpstreamStub, mode: str,
                                                                     stored: str) -> None:
    """signals.md: `client.ip` is stored "after privacy.ip_mode" — for refusals before any signal too, and their summaries."""
    gw = start_gateway(tmp_path, stub.base_url, privacy={"ip_mode": mode, "hash_key": "k" * 32})
    with httpx.Client(timeout=10) as client:
        for i in range(5):
            answer = client.post(gw.base_url + "/chat/completions", headers={"Authorization": f"Bearer sk-dg-wrong{i}"},
                                 json={"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]})
            assert answer.status_code == 401
    assert gw.stop() == 0  # open refusal windows are summarised before the sink drains
    from distillguard.store import iter_events

    refused = [e for e in iter_events(gw.database) if e["response"]["error"] == "invalid_api_key"]
    assert any("aggregate" in e for e in refused) and any("aggregate" not in e for e in refused)
    for event in refused:
        assert event["client"]["ip"].startswith(stored), event["client"]
        assert event.get("aggregate", {}).get("source", stored).startswith(stored)
    assert "127.0.0.1" not in {e["client"]["ip"] for e in refused}
