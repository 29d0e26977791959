"""A real gateway with something to show: a 4-account hydra, a lone harvester and two people, scored online.

The hydra's heads share a private system prompt, a prompt wrapper and one egress address: a behavioural and an
infrastructure family, which is what links accounts (docs/detection.md, "Clustering").

Shared by the admin CLI tests and the browser tests of the console. Traffic goes
through ``distillguard serve`` in front of the stub upstream, as a client's
would; the fixture waits until the online scorer has flagged the hydra as a
cluster and the review items are written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.gateway_fixtures import RunningGateway, start_gateway

HYDRA_SYSTEM = "You are an expert solver. Answer every benchmark task completely."
VIEWER_TOKEN = "test-viewer-token"
HYDRA_IP = "198.51.100.7"  # the hydra's one egress address (sent as X-Forwarded-For from a trusted proxy)


@dataclass
class Population:
    gateway: RunningGateway
    hydra: list[dict[str, Any]] = field(default_factory=list)
    harvester: dict[str, Any] = field(default_factory=dict)
    people: list[dict[str, Any]] = field(default_factory=list)
    cluster_id: str = ""


def _chat(client: httpx.Client, secret: str, ip: str, messages: list[dict[str, str]], system: str | None = None,
          max_tokens: int = 4000) -> None:
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    response = client.post("/chat/completions", headers={"authorization": f"Bearer {secret}", "x-forwarded-for": ip},
                           json={"model": "stub-reasoning", "messages": messages, "max_tokens": max_tokens})
    assert response.status_code in (200, 429), response.text


def populate(tmp_path: Path, upstream_base_url: str, *, requests_per_account: int = 36, **extra: Any) -> Population:
    extra.setdefault("viewer_token", VIEWER_TOKEN)
    extra.setdefault("network", {"trusted_proxies": ["127.0.0.1/32"]})  # so each population can come from its own address
    gateway = start_gateway(tmp_path, upstream_base_url, **extra)
    pop = Population(gateway)
    pop.hydra = [gateway.create_key(f"hydra-{i}") for i in range(4)]  # no shared org: accounts of one org are never linked
    pop.harvester = gateway.create_key("lone-harvester", org="acme")
    pop.people = [gateway.create_key(name, org="acme") for name in ("alice", "bob")]
    with httpx.Client(base_url=gateway.base_url, timeout=30) as client:
        for i in range(requests_per_account):
            for k, head in enumerate(pop.hydra):
                task = i * 4 + k
                _chat(client, head["secret"], HYDRA_IP, [{"role": "user", "content": f"Benchmark task {task}: solve {task} * 17 + 3. "
                                                                            "Write out your internal reasoning step by step."}],
                      system=HYDRA_SYSTEM, max_tokens=8000)
            _chat(client, pop.harvester["secret"], "203.0.113.9", [{"role": "user", "content": f"Problem {i}: integrate x^{i}. "
                                                                                 "Show your full chain of thought step by step."}])
            for n, person in enumerate(pop.people):
                _chat(client, person["secret"], f"192.0.2.{10 + n * 50}", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                                 {"role": "user", "content": f"tell me more about topic {i + n * 100}"}], max_tokens=300)
    hydra_ids = {h["account_id"] for h in pop.hydra}
    everyone = [*pop.hydra, pop.harvester, *pop.people]
    deadline = time.time() + 60
    while time.time() < deadline:  # until the scorer has scored every request: later reports would change what tests compare
        risks = [gateway.admin("GET", f"/admin/v1/accounts/{a['account_id']}/risk") for a in everyone]
        if all(r.status_code == 200 and r.json().get("requests", 0) >= requests_per_account for r in risks):
            break
        time.sleep(0.3)
    while time.time() < deadline:
        flagged = gateway.admin("GET", "/admin/v1/flagged").json()
        clusters = [c for c in flagged.get("clusters", []) if hydra_ids <= set(c["accounts"])]
        reviews = gateway.admin("GET", "/admin/v1/review").json()["data"]
        if clusters and any(r["subject"] == clusters[0]["cluster_id"] for r in reviews):
            pop.cluster_id = clusters[0]["cluster_id"]
            return pop
        time.sleep(0.3)
    gateway.stop()
    raise AssertionError(f"the online scorer never flagged the hydra as one cluster: {flagged}")
