"""`distillguard demo`: the one-command tour on embedded defaults.

Starts the demo model and the gateway as child processes (exactly what an
operator would run), creates accounts and keys through the admin API, replays
traffic from three populations through the gateway with the official SDKs —
benign users holding conversations, a reseller sharing one key across many
end users, and a hydra of accounts sweeping templated prompts that ask for
step-by-step reasoning — then scans the gateway's own event log and prints
what was found and where to look.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

from distillguard.demo.children import wait_until_answering

__all__ = ["demo_command"]

ADMIN_TOKEN = "demo-admin-token"
WATERMARK_SECRET = "demo-watermark-master-secret"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(preferred: int) -> int:
    if _port_free(preferred):
        return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 60) -> None:
    problem = wait_until_answering(url, proc, timeout, poll_s=0.2)
    if problem is not None:
        raise SystemExit(f"{what} {problem}; see {log}")


class _Tour:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.model_port = _pick_port(8701)
        self.gateway_port = _pick_port(8700)
        self.root = f"http://127.0.0.1:{self.gateway_port}"
        self.admin_headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def _spawn(self, args: list[str], log_name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.workdir / log_name
        proc = subprocess.Popen(
            [sys.executable, "-m", "distillguard.cli", *args],
            stdout=open(log, "wb"),  # noqa: SIM115 - lives as long as the child
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        self.procs.append(proc)
        return proc, log

    def start(self) -> None:
        for stale in self.workdir.glob("distillguard.db*"):
            stale.unlink()
        model, model_log = self._spawn(["demo-model", "--port", str(self.model_port)], "demo-model.log")
        _wait(f"http://127.0.0.1:{self.model_port}/v1/models", model, "demo model", model_log)
        # Black-box watermarking needs only the upstream's tokenizer: the demo model publishes its own.
        self.tokenizer_path = self.workdir / "tokenizer.json"
        self.tokenizer_path.write_bytes(httpx.get(f"http://127.0.0.1:{self.model_port}/v1/tokenizer", timeout=30).content)
        config = {
            "listen": f"127.0.0.1:{self.gateway_port}",
            "database": f"sqlite:///{self.workdir / 'distillguard.db'}",
            "admin_token": ADMIN_TOKEN,
            "spill_dir": str(self.workdir / "spill"),
            "upstreams": [{"name": "demo", "base_url": f"http://127.0.0.1:{self.model_port}/v1", "protocol": "openai", "models": ["*"],
                           "watermark": "logit_bias", "tokenizer": str(self.tokenizer_path)}],
            "watermark": {"enabled": True, "master_secret": WATERMARK_SECRET},
            "network": {"trusted_proxies": ["127.0.0.1/32"]},
            "limits": {"requests_per_min": 120, "tokens_per_min": 200_000, "concurrent_requests": 8, "daily_tokens": 5_000_000},
        }
        config_path = self.workdir / "gateway.yaml"
        config_path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
        gateway, gateway_log = self._spawn(["serve", "--config", str(config_path)], "gateway.log")
        _wait(self.root + "/healthz", gateway, "gateway", gateway_log)
        self.config_path = config_path

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def account(self, name: str, org: str | None = None) -> dict[str, Any]:
        account = httpx.post(self.root + "/admin/v1/accounts", json={"name": name, "org": org}, headers=self.admin_headers).json()
        key = httpx.post(self.root + f"/admin/v1/accounts/{account['account_id']}/keys", json={}, headers=self.admin_headers).json()
        return {**account, **key}


def _traffic(tour: _Tour, seed: int) -> dict[str, Any]:
    import anthropic
    import openai

    from distillguard.sim.corpora import PromptPools

    rng = random.Random(seed)
    pools = PromptPools.load()
    base_url = tour.root + "/v1"
    summary: dict[str, Any] = {"requests": 0, "errors": 0, "populations": {}}
    jobs: list[tuple[str, Any]] = []

    # Benign users: real multi-turn conversations, each from one install and network.
    for i in range(6):
        acct = tour.account(f"benign-user-{i}")
        conversation = pools.conversation(rng)
        jobs.append(("benign", (acct, conversation, f"198.51.100.{10 + i}")))
    # A reseller: one key, many end users from many networks, unrelated conversations interleaved.
    reseller = tour.account("cheap-api-reseller")
    for _ in range(16):
        ip = f"{rng.choice([41, 77, 103, 185, 200])}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        jobs.append(("reseller", (reseller, pools.conversation(rng)[:2], ip)))
    # A hydra: many accounts, one system prompt, templated sweep with reasoning elicitation.
    hydra_system = "You are a meticulous expert tutor. Always answer completely."
    template = "{task}\n\nBefore answering, write out your complete internal reasoning step by step, then give the final answer."
    for k in range(8):
        acct = tour.account(f"research-lab-{k:02d}", org=None)
        tasks = [pools.sweep_task(rng) for _ in range(20)]
        jobs.append(("hydra", (acct, tasks, f"203.0.113.{rng.randrange(2, 250)}", hydra_system, template)))

    places = [("Europe/Berlin", 60, "de_DE"), ("America/New_York", -300, "en_US"), ("Asia/Tokyo", 540, "ja_JP"),
              ("America/Sao_Paulo", -180, "pt_BR"), ("Asia/Kolkata", 330, "en_IN"), ("Europe/Paris", 60, "fr_FR"),
              ("Australia/Sydney", 660, "en_AU"), ("Europe/Warsaw", 60, "pl_PL")]

    def run(job: tuple[str, Any]) -> tuple[str, int, int]:
        from distillguard.client import Identity, attesting_client

        kind, args = job
        done = errors = 0
        if kind in ("benign", "reseller"):
            acct, conversation, ip = args
            # Every person runs the SDK on their own machine: one install, their own timezone and locale.
            identity = Identity.load_or_create(tour.workdir / "clients" / f"{kind}-{ip}")
            tz, offset, locale = places[sum(map(ord, ip)) % len(places)]
            http_client = attesting_client(api_key=acct["secret"], base_url=base_url, identity=identity,
                                           signal_overrides={"tz": tz, "utc_offset_min": offset, "locale": locale},
                                           headers={"X-Forwarded-For": ip})
            # openai>=3 types http_client as httpx2 but accepts an httpx client at run time.
            client = openai.OpenAI(base_url=base_url, api_key=acct["secret"], max_retries=0,
                                   http_client=http_client)  # type: ignore[arg-type]
            messages: list[dict[str, str]] = []
            for turn in conversation:
                messages.append({"role": "user", "content": turn})
                try:
                    reply = client.chat.completions.create(model="demo-1", messages=messages, max_tokens=120)  # type: ignore[arg-type]
                    messages.append({"role": "assistant", "content": reply.choices[0].message.content or ""})
                    done += 1
                except openai.APIError:
                    errors += 1
        else:
            acct, tasks, ip, system, template = args
            client_a = anthropic.Anthropic(base_url=tour.root, api_key=acct["secret"], max_retries=0, default_headers={"X-Forwarded-For": ip})
            for task in tasks:
                try:
                    # Harvesters pin long outputs; min_tokens is the vLLM-style knob the demo model honours.
                    client_a.messages.create(model="demo-1", max_tokens=1200, system=system, extra_body={"min_tokens": 600},
                                             messages=[{"role": "user", "content": template.format(task=task)}])
                    done += 1
                except anthropic.APIError:
                    errors += 1
        return kind, done, errors

    with ThreadPoolExecutor(max_workers=8) as pool:
        for kind, done, errors in pool.map(run, jobs):
            summary["requests"] += done
            summary["errors"] += errors
            summary["populations"][kind] = summary["populations"].get(kind, 0) + done
    return summary


def _scan(tour: _Tour) -> dict[str, Any]:
    from distillguard.detect import Scanner

    response = httpx.get(tour.root + "/admin/v1/events", headers=tour.admin_headers, timeout=60)
    events_path = tour.workdir / "events.jsonl"
    events_path.write_bytes(response.content)
    scanner = Scanner()
    from distillguard.events import read_events

    for event in read_events([events_path]):
        scanner.update(event)
    return scanner.report()


def _provenance(tour: _Tour, report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Test what a harvester collected — the outputs a flagged cluster received — per marking key, and against a wrong key.

    The gateway marks with the global key until the online scorer puts an
    account in a cluster, then with that cluster's key; each set of responses
    is tested with the key the event log says marked it.
    """
    events = [orjson.loads(line) for line in (tour.workdir / "events.jsonl").read_bytes().splitlines() if line.strip()]
    checks: list[tuple[str, str, dict[str, Any]]] = []
    for cluster in report.get("clusters", [])[:1]:
        members = set(cluster["accounts"])
        by_key: dict[str, list[str]] = {}
        for event in events:
            key_id = (event.get("watermark") or {}).get("key_id")
            if event.get("account_id") in members and key_id and event["response"].get("text"):
                by_key.setdefault(key_id, []).append(event["response"]["text"])
        for key_id, texts in sorted(by_key.items(), key=lambda kv: -len(kv[1])):
            for tested in (key_id, "org:someone-else"):
                answer = httpx.post(tour.root + "/admin/v1/watermark/detect", headers=tour.admin_headers, timeout=120,
                                    json={"text": "\n".join(texts), "key_ids": [tested], "tokenizer": str(tour.tokenizer_path)})
                answer.raise_for_status()  # a refused check must fail the tour loudly, not print "?"
                result = answer.json()
                checks.append((f"{len(texts)} responses marked {key_id}", tested, result))
    return checks


def _print_policy(tour: _Tour, names: dict[str, str]) -> None:
    """What the gateway's own online scorer flagged, and which policy hit whom (from the stored events' policy field)."""
    flagged = httpx.get(tour.root + "/admin/v1/flagged", headers=tour.admin_headers, timeout=30).json()
    accounts = flagged.get("accounts", [])
    clusters = flagged.get("clusters", [])
    print(f"\n  online policy (the gateway's own scorer, live): {len(accounts)} accounts flagged, {len(clusters)} clusters")
    for entry in accounts:  # every one of them: the count above is the length of this list
        print(f"    {entry['account_id']:<22} {names.get(entry['account_id'], '?')[:20]:<20} "
              f"distill {entry['distillation_score']:.2f}  resell {entry['reseller_score']:.2f}  risk {entry.get('risk', '?')}")
    for cluster in clusters:
        print(f"    cluster {cluster['cluster_id']}: {', '.join(names.get(a, a) for a in cluster['accounts'])}")
    hits: dict[str, collections.Counter[str]] = {}
    for line in (tour.workdir / "events.jsonl").read_bytes().splitlines():
        if not line.strip():
            continue
        event = orjson.loads(line)
        policy = event.get("policy") or {}
        if policy.get("action", "allow") != "allow" and event.get("account_id"):
            hits.setdefault(event["account_id"], collections.Counter())[f"{policy['action']} ({policy.get('rule') or 'no rule'})"] += 1
    print(f"\n  which policy hit whom ({len(hits)} accounts; requests per action and the rule that chose it):")
    for account_id, counter in sorted(hits.items(), key=lambda kv: (names.get(kv[0], kv[0]))):
        actions = ", ".join(f"{what} × {n}" for what, n in counter.most_common())
        print(f"    {names.get(account_id, '?')[:20]:<20} {account_id:<22} {actions}")
    if not hits:
        print("    none: every request was allowed")


def _first_key(tour: _Tour, account_id: str) -> str:
    """A fresh key for an account, so the reader can send a request of their own."""
    key = httpx.post(tour.root + f"/admin/v1/accounts/{account_id}/keys", json={}, headers=tour.admin_headers, timeout=30).json()
    return str(key["secret"])


def demo_command(args: argparse.Namespace) -> int:
    workdir = Path(os.environ.get("DG_DEMO_DIR", ".demo")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tour = _Tour(workdir)
    print(f"distillguard demo — working directory {workdir}")
    print(f"  starting the demo model on :{tour.model_port} and the gateway on :{tour.gateway_port} …", flush=True)
    try:
        tour.start()
        started = time.perf_counter()
        summary = _traffic(tour, seed=7)
        elapsed = time.perf_counter() - started
        time.sleep(0.5)  # let the batched event writer catch up
        status = httpx.get(tour.root + "/admin/v1/status", headers=tour.admin_headers).json()
        print(f"\n  traffic replayed through the gateway with the official SDKs in {elapsed:.1f}s:")
        for kind, count in summary["populations"].items():
            print(f"    {kind:<10} {count:>4} requests")
        print(f"    refused    {summary['errors']:>4} (limits and policy)")
        events = status.get("events") or {}
        print(f"  events stored: {events.get('written', '?')} (spilled: {events.get('spilled', 0)})")
        report = _scan(tour)
        (workdir / "report.json").write_text(json.dumps(report, indent=2))
        names = {a["account_id"]: a["name"] for a in httpx.get(tour.root + "/admin/v1/accounts", headers=tour.admin_headers).json()["data"]}
        print(f"\n  detection over the gateway's event log ({report['events']} events, {report['accounts_seen']} accounts):")
        print(f"    {'account':<22} {'name':<20} {'distill':>7} {'resell':>7}  risk    top evidence")
        for entry in sorted(report["accounts"], key=lambda a: -max(a["distillation_score"], a["reseller_score"])):
            evidence = entry["evidence"][0]["detail"] if entry["evidence"] else ""
            print(f"    {entry['account_id']:<22} {names.get(entry['account_id'], '?')[:20]:<20} "
                  f"{entry['distillation_score']:>7.2f} {entry['reseller_score']:>7.2f}  {entry['risk']:<6}  {evidence[:70]}")
        for cluster in report.get("clusters", []):
            print(f"    cluster {cluster['cluster_id']}: {len(cluster['accounts'])} accounts, score {cluster['score']:.2f}, shared: {', '.join(cluster['shared'][:4])}")
        _print_policy(tour, names)
        checks = _provenance(tour, report)
        if checks:
            print("\n  provenance: the gateway marked every response with a keyed logit_bias watermark; testing what the cluster harvested:")
            for subject, key_id, result in checks:
                best = min((r["p_value"] for r in result.get("results", [])), default=1.0)
                print(f"    {subject:<40} tested with {key_id:<22} {result.get('verdict', '?'):<13} p = {best:.2g}  "
                      f"({result.get('tokens_scored', 0)} distinct tokens)")
        benign = next(a for a, n in names.items() if n == "benign-user-0")
        print("\n  where to look:")
        print(f"    gateway (OpenAI/Anthropic API): {tour.root}/v1   admin API: {tour.root}/admin/v1/  (Bearer {ADMIN_TOKEN})")
        print(f"    metrics: {tour.root}/metrics   events: {workdir / 'events.jsonl'}   report: {workdir / 'report.json'}")
        print(f"    try: distillguard scan {workdir / 'events.jsonl'}")
        print(f"    try: distillguard admin flagged --url {tour.root} --token {ADMIN_TOKEN}")
        print(f"    an API key of benign-user-0 ({benign}) to send your own requests: {_first_key(tour, benign)}")
        print(f"\n  console: {tour.root}/admin/ui/   sign in with the admin token: {ADMIN_TOKEN}")
        if not args.serve:
            print("  (the gateway and its console stop now; `make demo DEMO_ARGS=--serve` keeps them running with this traffic)")
            return 0
        print("  serving until Ctrl-C …", flush=True)
        while all(p.poll() is None for p in tour.procs):
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        tour.stop()
