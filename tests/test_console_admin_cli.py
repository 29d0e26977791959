"""`distillguard admin`: every command against a real gateway with a flagged hydra, tables and --json, errors and exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from distillguard.cli import main
from tests.console_fixtures import Population, populate
from tests.upstream_stub import UpstreamStub, free_port


@pytest.fixture(scope="module")
def pop(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub) -> Iterator[Population]:
    population = populate(tmp_path_factory.mktemp("admin_cli"), stub.base_url)
    yield population
    population.gateway.stop()


def admin(pop: Population, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["admin", *args, "--config", str(pop.gateway.config_path)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_risk_prints_evidence_and_json_is_the_api_object(pop: Population, capsys: pytest.CaptureFixture[str]) -> None:
    account = pop.harvester["account_id"]
    code, out, _ = admin(pop, capsys, "risk", account)
    assert code == 0 and out.startswith(f"{account}: ") and "cot_elicitation" in out and "step-by-step" in out
    code, out, _ = admin(pop, capsys, "risk", account, "--json")
    assert code == 0 and json.loads(out) == pop.gateway.admin("GET", f"/admin/v1/accounts/{account}/risk").json()


def test_flagged_lists_the_hydra_cluster(pop: Population, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = admin(pop, capsys, "flagged")
    assert code == 0 and pop.cluster_id in out and "cluster(s)" in out
    assert all(h["account_id"] in out for h in pop.hydra)


def test_review_list_has_one_item_for_the_whole_cluster(pop: Population, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = admin(pop, capsys, "review", "list", "--json")
    items = json.loads(out)["data"]
    subjects = [item["subject"] for item in items]
    assert subjects.count(pop.cluster_id) == 1
    assert not {h["account_id"] for h in pop.hydra} & set(subjects)
    code, table, _ = admin(pop, capsys, "review", "list")
    assert code == 0 and pop.cluster_id in table and " UTC" in table


def _status(pop: Population, secret: str) -> int:
    response = httpx.post(pop.gateway.base_url + "/chat/completions", headers={"authorization": f"Bearer {secret}"},
                          json={"model": "stub-1", "messages": [{"role": "user", "content": "hello"}]}, timeout=10)
    return response.status_code


def test_confirm_blocks_every_member_and_unblock_lifts_the_cluster(pop: Population, capsys: pytest.CaptureFixture[str]) -> None:
    items = pop.gateway.admin("GET", "/admin/v1/review").json()["data"]
    review = next(item for item in items if item["subject"] == pop.cluster_id)
    code, out, _ = admin(pop, capsys, "review", "confirm", review["review_id"], "--action", "block", "--note", "hydra confirmed")
    assert code == 0 and "block applied to" in out
    assert all(_status(pop, head["secret"]) == 403 for head in pop.hydra)
    assert _status(pop, pop.people[0]["secret"]) == 200
    code, out, _ = admin(pop, capsys, "unblock", pop.cluster_id, "--reason", "appeal granted")
    assert code == 0 and all(h["account_id"] in out for h in pop.hydra)
    assert all(_status(pop, head["secret"]) != 403 for head in pop.hydra)
    audit = pop.gateway.admin("GET", "/admin/v1/audit?limit=50").json()["data"]
    assert any(a["action"] == "review.confirmed" and a["target"] == review["review_id"] for a in audit)


def test_dismiss_lifts_what_the_detection_caused(pop: Population, capsys: pytest.CaptureFixture[str]) -> None:
    account = pop.harvester["account_id"]
    items = pop.gateway.admin("GET", "/admin/v1/review").json()["data"]
    review = next(item for item in items if item["subject"] == account)
    code, _, _ = admin(pop, capsys, "throttle", account, "--reason", "slow down")
    assert code == 0
    code, out, _ = admin(pop, capsys, "review", "dismiss", review["review_id"], "--note", "a teacher preparing worked examples")
    assert code == 0 and "allow applied to" in out
    for _ in range(3):
        assert _status(pop, pop.harvester["secret"]) == 200
    events = [e for e in pop.gateway.events() if e["account_id"] == account]
    event_policy = events[-1]["policy"]
    assert event_policy["action"] == "allow"
    assert pop.gateway.admin("GET", "/admin/v1/review?status=dismissed").json()["data"][0]["note"].startswith("a teacher")


def test_degrade_and_block_a_single_account(pop: Population, capsys: pytest.CaptureFixture[str]) -> None:
    person = pop.people[1]
    assert admin(pop, capsys, "degrade", person["account_id"])[0] == 0
    assert admin(pop, capsys, "block", person["account_id"], "--reason", "test")[0] == 0
    assert _status(pop, person["secret"]) == 403
    code, out, _ = admin(pop, capsys, "accounts", "show", person["account_id"])
    assert "status active" in out and "policy block (rule manual)" in out  # the stored status alone would hide the block
    assert admin(pop, capsys, "unblock", person["account_id"])[0] == 0
    assert _status(pop, person["secret"]) == 200


def test_keys_accounts_and_limits(pop: Population, capsys: pytest.CaptureFixture[str]) -> None:
    account = pop.people[0]["account_id"]
    code, out, _ = admin(pop, capsys, "keys", "list", "--account", account)
    assert code == 0 and pop.people[0]["key_id"] in out and "active" in out and pop.hydra[0]["key_id"] not in out
    code, out, _ = admin(pop, capsys, "limits", "set", account, "--requests-per-min", "5", "--daily-tokens", "1000")
    assert code == 0 and "requests_per_min=5" in out
    code, out, _ = admin(pop, capsys, "accounts", "show", account, "--json")
    shown = json.loads(out)
    assert shown["limits"] == {"requests_per_min": 5, "daily_tokens": 1000} and shown["keys"][0]["key_id"] == pop.people[0]["key_id"]
    code, out, _ = admin(pop, capsys, "accounts", "show", account)
    assert "alice" in out and "requests_per_min=5" in out


def test_errors_are_one_line_with_exit_2_for_bad_input_and_1_when_unreachable(pop: Population,
                                                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = admin(pop, capsys, "accounts", "show", "acct_nope")
    assert code == 2 and out == "" and err.count("\n") == 1 and "acct_nope" in err and "HTTP 404" in err
    code, _, err = admin(pop, capsys, "limits", "set", pop.people[0]["account_id"], "--requests-per-min", "-3")
    assert code == 2 and "requests_per_min" in err
    code, _, err = admin(pop, capsys, "risk", "acct_x", "--token", "wrong")
    assert code == 2 and "HTTP 401" in err
    code, _, err = admin(pop, capsys, "flagged", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and "cannot reach the gateway" in err and err.count("\n") == 1
