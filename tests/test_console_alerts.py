"""Alerts (signed, retried, de-duplicated webhooks), detection metrics on /metrics, and the Grafana dashboard's queries."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from distillguard.config import AlertSettings
from distillguard.policy.alerts import Alert, Alerter, sign
from tests.console_fixtures import HYDRA_IP, Population, populate
from tests.upstream_stub import UpstreamStub

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "distillguard.json"
SECRET = "webhook-secret"


class Receiver:
    """A webhook endpoint on loopback that records every delivery and can fail the first ``fail`` of them."""

    def __init__(self, fail: int = 0, status: int = 500) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail, self.status = fail, status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                failing = len(receiver.received) <= receiver.fail
                self.send_response(receiver.status if failing else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    def close(self) -> None:
        self.server.shutdown()


def _wait(condition: Any, timeout: float = 20.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_failed_delivery_is_retried_with_backoff_signed_and_sent_once() -> None:
    receiver = Receiver(fail=2)
    alerter = Alerter(AlertSettings(webhooks=[{"url": receiver.url, "secret": SECRET}], backoff_s=0.05))
    alerter.start()
    try:
        alert = Alert("account", "acct_1", "high", "account acct_1 is high risk", {"distillation_score": 0.97})
        alerter.notify(alert)
        alerter.notify(Alert("account", "acct_1", "high", "again"))  # same kind, subject and level: deduplicated
        assert _wait(lambda: alerter.stats["sent"] == 1)
        time.sleep(0.3)
        assert len(receiver.received) == 3 and alerter.stats["retries"] == 2 and alerter.stats["deduplicated"] == 1
        headers, body = receiver.received[-1]
        assert headers["x-distillguard-signature"] == sign(SECRET, headers["x-distillguard-timestamp"], body)
        assert json.loads(body)["subject"] == "acct_1" and json.loads(body)["level"] == "high"
        alerter.notify(Alert("account", "acct_1", "medium", "a new level is a new alert"))
        assert _wait(lambda: alerter.stats["sent"] == 2)
    finally:
        alerter.close()
        receiver.close()


def test_slack_format_and_a_refusing_receiver_is_not_retried() -> None:
    slack, refusing = Receiver(), Receiver(fail=99, status=400)
    alerter = Alerter(AlertSettings(webhooks=[{"url": slack.url, "format": "slack"}, {"url": refusing.url}], backoff_s=0.05))
    alerter.start()
    try:
        alerter.policy_acted("acct_2", "block", "manual", None)
        alerter.policy_acted("acct_2", "allow", None, None)  # not an alerting action
        assert _wait(lambda: alerter.stats["failed"] == 1 and alerter.stats["sent"] == 1)
        assert slack.bodies() == [{"text": "distillguard: policy block on acct_2 (rule manual)"}]
        assert "x-distillguard-signature" not in slack.received[0][0]  # no secret configured
        assert len(refusing.received) == 1
    finally:
        alerter.close()
        slack.close()
        refusing.close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def pop(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub, receiver: Receiver) -> Iterator[Population]:
    alerts = {"webhooks": [{"url": receiver.url, "secret": SECRET}], "min_risk": "medium", "backoff_s": 0.1}
    population = populate(tmp_path_factory.mktemp("alerts"), stub.base_url, alerts=alerts)
    yield population
    population.gateway.stop()


def test_the_gateway_alerts_on_flagged_accounts_clusters_and_policy_actions(pop: Population, receiver: Receiver) -> None:
    hydra = {h["account_id"] for h in pop.hydra}
    assert _wait(lambda: any(b["kind"] == "cluster" for b in receiver.bodies()))
    bodies = receiver.bodies()
    clusters = [b for b in bodies if b["kind"] == "cluster"]
    assert len(clusters) == 1 and set(clusters[0]["detail"]["accounts"]) == hydra and clusters[0]["subject"] == pop.cluster_id
    accounts = {b["subject"] for b in bodies if b["kind"] == "account"}
    assert hydra | {pop.harvester["account_id"]} <= accounts and not {p["account_id"] for p in pop.people} & accounts
    for headers, body in receiver.received:
        assert headers["x-distillguard-signature"] == sign(SECRET, headers["x-distillguard-timestamp"], body)
    pop.gateway.admin("POST", f"/admin/v1/accounts/{pop.people[0]['account_id']}/action", json={"action": "block", "reason": "test"})
    httpx.post(pop.gateway.base_url + "/chat/completions", headers={"authorization": f"Bearer {pop.people[0]['secret']}",
                                                                    "x-forwarded-for": HYDRA_IP},
               json={"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert _wait(lambda: any(b["kind"] == "policy" and b["level"] == "block" and b["subject"] == pop.people[0]["account_id"]
                             for b in receiver.bodies()))


def _metric_names(exposition: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", exposition, flags=re.M))


def test_metrics_count_flagged_accounts_and_clusters(pop: Population) -> None:
    text = httpx.get(pop.gateway.root_url + "/metrics").text
    values = dict(re.findall(r"^(distillguard_(?:flagged_clusters|scored_accounts)) (\S+)$", text, flags=re.M))
    by_source = dict(re.findall(r'^distillguard_flagged_accounts\{source="(\w+)"\} (\S+)$', text, flags=re.M))
    flagged = pop.gateway.admin("GET", "/admin/v1/flagged").json()
    assert set(by_source) == {"score", "shared_indicators"}
    assert float(by_source["score"]) + float(by_source["shared_indicators"]) == len(flagged["accounts"]) >= 5
    assert float(values["distillguard_flagged_clusters"]) == len(flagged["clusters"]) == 1
    assert float(values["distillguard_scored_accounts"]) == 7
    assert re.search(r'^distillguard_alerts_total\{outcome="sent"\} [1-9]', text, flags=re.M)


def test_grafana_dashboard_queries_only_metrics_the_gateway_exports(pop: Population) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for expr in exprs for name in re.findall(r"\bdistillguard_[a-z_]+", expr)}
    exported = _metric_names(httpx.get(pop.gateway.root_url + "/metrics").text)
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"
    assert {"distillguard_flagged_accounts", "distillguard_flagged_clusters"} <= used
