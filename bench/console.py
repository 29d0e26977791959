"""The operators' console at scale: every page's server time and browser load time over a big PostgreSQL store.

Set-up, all real: a PostgreSQL server from Debian's package (as the tests start
it), ``--accounts`` accounts written to the store, ``--events`` events spread
over two weeks (a few heavy accounts, a long tail) written as a gzip JSONL log
and loaded with ``events import`` (timed), an online report with a risk entry
for every account and hydra clusters handed to the policy engine the way the
scorer's reader thread hands it one, the review items and audit rows that
report opens, and manual overrides on some accounts. The gateway app is the
real one (``build_gateway``) served by the gateway's own HTTP server.

Measured per page: server time = a signed-in GET on loopback, first byte to
last (``--repeats`` times, p50 and p95), and browser time = Playwright driving
Debian's chromium, navigation start to the load event (5 times, p95), with a
screenshot of each page in bench/out/. Baseline in the same run: what a naive
log page does on the same table (``count(*)`` of all events plus an
``OFFSET`` page in the middle), the query the console never runs.

    .venv/bin/python bench/console.py                       # 1,000,000 events, 100,000 accounts
    .venv/bin/python bench/console.py --events 200000 --accounts 20000
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import gzip
import random
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure import OUT, percentile, scratch_dir, src_digest, write_report  # noqa: E402

ADMIN = "bench-admin-token"
SERVER_TARGET_MS, BROWSER_TARGET_MS = 300.0, 1000.0
ENDPOINTS = ("openai.chat", "anthropic.messages", "openai.completions", "openai.responses")


def _accounts(n: int, rng: random.Random, t0: float) -> list[dict[str, Any]]:
    orgs = [f"org-{i:04d}" for i in range(max(1, n // 40))]
    return [{"account_id": f"acct_{i:016x}", "name": f"customer-{i:06d}", "org_id": rng.choice(orgs) if rng.random() < 0.7 else None,
             "status": "suspended" if rng.random() < 0.002 else "active", "limits": {}, "created_at": t0 - rng.random() * 86400 * 90}
            for i in range(n)]


def _write_events(path: Path, accounts: list[dict[str, Any]], n: int, rng: random.Random, t0: float) -> None:
    """``n`` events over 14 days: account activity Zipf-like (a few heavy accounts, a long tail), time in order."""
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(accounts))]
    chosen = rng.choices(range(len(accounts)), weights=weights, k=n)
    span = 14 * 86400
    with gzip.open(path, "wb", compresslevel=1) as out:
        for i, index in enumerate(chosen):
            ts = t0 - span + span * i / n
            account = accounts[index]["account_id"]
            action = "allow" if rng.random() < 0.97 else rng.choice(("flag", "throttle", "degrade"))
            event = {"v": 1, "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z",
                     "request_id": f"req_{i:024x}", "account_id": account, "key_id": f"key_{index:016x}", "org_id": None,
                     "endpoint": ENDPOINTS[i % 7 % len(ENDPOINTS)], "model": "demo-1",
                     "client": {"ip": f"198.{index % 256}.{index // 256 % 256}.{i % 250 + 1}", "user_agent": "OpenAI/Python 2.8",
                                "header_fp": f"{index % 997:016x}", "geo": {"country": ("DE", "US", "JP", "BR")[index % 4], "asn": 3320,
                                                                              "hosting": False}},
                     "attestation": None,
                     "request": {"system": None, "messages": [{"role": "user", "content": f"question {i} about topic {index % 50}"}],
                                 "params": {"max_tokens": 512, "stream": False}},
                     "response": {"status": 200 if action != "throttle" else 429, "text": "an answer of a few words", "reasoning_chars": 0,
                                  "prompt_tokens": 12, "completion_tokens": 40, "finish_reason": "stop", "latency_ms": 80.0},
                     "policy": {"action": action, "rule": None if action == "allow" else "risk>=flag_threshold"},
                     "watermark": {"key_id": None}}
            out.write(orjson.dumps(event) + b"\n")


def _report(accounts: list[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    """An online report over every account: most low, 2 % flagged, hydra clusters of 6-12 among the flagged."""
    entries = []
    for account in accounts:
        flagged = rng.random() < 0.02
        score = rng.uniform(0.5, 0.99) if flagged else rng.uniform(0.0, 0.3)
        entries.append({"account_id": account["account_id"], "distillation_score": round(score, 4), "reseller_score": round(score / 3, 4),
                        "risk": "high" if score >= 0.8 else "medium" if score >= 0.5 else "low", "cluster_id": None, "requests": 10,
                        "evidence": [{"detector": "cot_elicitation", "score": round(score, 4),
                                      "detail": f"{int(score * 100)} of 100 prompts ask for step-by-step or internal reasoning"}]})
    flagged_entries = [e for e in entries if e["risk"] != "low"]
    clusters = []
    for c in range(min(60, len(flagged_entries) // 12)):
        members = flagged_entries[c * 12: c * 12 + rng.randint(6, 12)]
        cluster_id = f"cl_{c:010x}"
        for member in members:
            member["cluster_id"] = cluster_id
        clusters.append({"cluster_id": cluster_id, "accounts": [m["account_id"] for m in members], "score": round(rng.uniform(0.6, 0.95), 4),
                         "shared": ["system prompt", "prompt wrapper", f"/24 203.0.{c}.0"]})
    return {"v": 1, "events": 0, "accounts_seen": len(entries), "accounts": entries, "clusters": clusters}


def _pages(accounts: list[dict[str, Any]], report: dict[str, Any]) -> list[tuple[str, str]]:
    heavy = accounts[0]["account_id"]  # the Zipf head: the most events
    flagged = next(e["account_id"] for e in report["accounts"] if e["risk"] == "high")
    return [
        ("overview", ""),
        ("accounts, by risk", "accounts"),
        ("accounts, page 200 by risk", "accounts?page=200"),
        ("accounts, newest, page 500", "accounts?sort=newest&page=500"),
        ("accounts, search by name", "accounts?q=customer-0421"),
        ("accounts, search by org", "accounts?q=org-0042"),
        ("accounts, status throttled", "accounts?status=throttled"),
        ("accounts, risk high", "accounts?risk=high"),
        ("account, heaviest", f"accounts/{heavy}"),
        ("account, flagged", f"accounts/{flagged}"),
        ("clusters", "clusters"),
        ("review queue", "review"),
        ("audit log", "audit"),
        ("events, newest", "events"),
        ("events, one account", f"events?account={heavy}"),
        ("events, one endpoint", "events?endpoint=openai.responses"),
        ("events, a day", "events?since=2026-11-01T00:00:00Z&until=2026-11-02T00:00:00Z"),
        ("watermark", "watermark"),
    ]


class _Served:
    """The real gateway app on the gateway's own HTTP server, in a thread with its own event loop."""

    def __init__(self, app: Any, port: int) -> None:
        from distillguard.gateway.http_server import HttpServer

        self.server = HttpServer(app, "127.0.0.1", port)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve(install_signal_handlers=False))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.thread.join(60)


def _wait_up(url: str) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("the gateway did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--database", help="an empty PostgreSQL database URL (default: start a throwaway server)")
    args = parser.parse_args()
    began, digest = time.perf_counter(), src_digest()
    rng = random.Random(14)
    work = scratch_dir("dg-console-bench-")
    pg = None
    database = args.database
    if database is None:
        from tests.pg_fixtures import PostgresServer

        pg = PostgresServer()
        database = pg.start()
    from sqlalchemy import text
    from tests.upstream_stub import free_port

    from distillguard.config import Settings
    from distillguard.gateway.server import build_gateway
    from distillguard.store import schema
    from distillguard.store.importer import import_events
    from distillguard.store.registry import Registry

    lines: list[str] = []
    try:
        t0 = float(calendar.timegm((2026, 11, 15, 0, 0, 0)))
        accounts = _accounts(args.accounts, rng, t0)
        registry = Registry(database)
        started = time.perf_counter()
        for i in range(0, len(accounts), 5_000):  # one transaction per batch: the store's deadline bounds each one
            with registry.engine.begin() as conn:
                conn.execute(schema.accounts.insert(), accounts[i:i + 5_000])
        accounts_s = time.perf_counter() - started
        log = work / "events.jsonl.gz"
        started = time.perf_counter()
        _write_events(log, accounts, args.events, rng, t0)
        generate_s = time.perf_counter() - started
        started = time.perf_counter()
        imported = import_events(database, [str(log)])
        import_s = time.perf_counter() - started
        with registry.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        report = _report(accounts, rng)
        manual = [a["account_id"] for a in accounts[1000:1500]]
        for account_id in manual[:200]:
            registry.set_manual_override(account_id, "throttle", "bench: slow down", actor="bench")

        port = free_port()
        settings = Settings(database=database, admin_token=ADMIN, listen=f"127.0.0.1:{port}", spill_dir=str(work / "spill"))
        gateway = build_gateway(settings)
        served = _Served(gateway, port)
        root = f"http://127.0.0.1:{port}"
        _wait_up(root)
        engine = gateway.policy
        assert engine is not None
        engine.scorer.close()  # no live traffic here: the idle scorer's empty reports would replace the one below
        engine._on_report(report)  # what the scorer's reader thread does with each report  # noqa: SLF001
        deadline = time.time() + 120
        while engine._audit and time.time() < deadline:  # the review items that report opened  # noqa: SLF001
            time.sleep(0.2)
        reviews = len(registry.list_reviews("open"))

        client = httpx.Client(base_url=root + "/admin/ui/", timeout=60)
        client.post("login", data={"token": ADMIN})
        pages = _pages(accounts, report)
        server: dict[str, list[float]] = {}
        sizes: dict[str, int] = {}
        for name, path in pages:
            client.get(path)  # warm: first use of a template, first plan of a query
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, (name, response.status_code, response.text[:300])
            server[name] = times
            sizes[name] = len(response.content)
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("accounts").text)
        assert csrf is not None
        action_times = []
        for account_id in manual[200:220]:
            started = time.perf_counter()
            response = client.post(f"accounts/{account_id}/action", data={"csrf": csrf.group(1), "action": "degrade", "note": "bench"})
            action_times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 303
        server["action: degrade an account (POST, redirect)"] = action_times

        baseline: dict[str, list[float]] = {"count(*) of all events": [], "OFFSET page in the middle (50 rows)": []}
        with registry.engine.connect() as conn:
            for _ in range(5):
                started = time.perf_counter()
                conn.execute(text("SELECT count(*) FROM events")).scalar()
                baseline["count(*) of all events"].append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                conn.execute(text("SELECT body FROM events ORDER BY ts DESC OFFSET :o LIMIT 50"), {"o": args.events // 2}).all()
                baseline["OFFSET page in the middle (50 rows)"].append((time.perf_counter() - started) * 1000)

        browser: dict[str, list[float]] = {}
        chromium = shutil.which("chromium")
        if chromium:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as playwright:
                instance = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
                page = instance.new_context(viewport={"width": 1280, "height": 900}).new_page()
                page.goto(root + "/admin/ui/login")
                page.fill("input[name=token]", ADMIN)
                with page.expect_navigation():
                    page.click("button[type=submit]")
                for index, (name, path) in enumerate(pages):
                    times = []
                    for _ in range(5):
                        page.goto(root + "/admin/ui/" + path, wait_until="load")
                        times.append(float(page.evaluate(
                            "() => { const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd - n.startTime; }")))
                    browser[name] = times
                    page.screenshot(path=str(OUT / f"console-{index:02d}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.png"),
                                    full_page=False)
                instance.close()
        served.stop()
        gateway_rows = len(engine.risk_table())

        lines += [
            "## Console at scale (`bench/console.py`)",
            "",
            f"PostgreSQL (Debian's server, `fsync=off`, on the shared 2-core machine), {imported.stored:,} events and "
            f"{len(accounts):,} accounts in the store, {gateway_rows:,} risk entries and {len(report['clusters'])} clusters in the "
            f"policy engine, {reviews:,} open review items, {len(manual[:200]) + 20} manual overrides.",
            f"Set-up: accounts written in {accounts_s:.1f} s; events generated in {generate_s:.1f} s; "
            f"`events import` loaded {imported.stored:,} events in {import_s:.1f} s ({imported.stored / import_s:,.0f} events/s).",
            "",
            f"| page | server p50 ms | server p95 ms | browser p95 ms (load event) | HTML KiB | within {SERVER_TARGET_MS:.0f} / {BROWSER_TARGET_MS:.0f} ms |",
            "|---|---|---|---|---|---|",
        ]
        for name, _path in [*pages, ("action: degrade an account (POST, redirect)", "")]:
            times = server[name]
            p95 = percentile(times, 95)
            b95 = percentile(browser[name], 95) if name in browser else float("nan")
            ok = p95 <= SERVER_TARGET_MS and (name not in browser or b95 <= BROWSER_TARGET_MS)
            size = f"{sizes[name] / 1024:.0f}" if name in sizes else "-"
            browser_cell = f"{b95:.0f}" if name in browser else "-"
            lines.append(f"| {name} | {percentile(times, 50):.1f} | {p95:.1f} | {browser_cell} | {size} | {'yes' if ok else '**no**'} |")
        lines += ["", "Baseline on the same table, the queries a naive log page runs (5 runs):", "", "| query | p50 ms | max ms |",
                  "|---|---|---|"]
        for name, times in baseline.items():
            lines.append(f"| {name} | {percentile(times, 50):.1f} | {max(times):.1f} |")
        if not chromium:
            lines += ["", "Browser times not measured: Debian's chromium is not installed."]
        lines += ["", f"Server time: signed-in GET over loopback HTTP, {args.repeats} runs after one warm-up, nearest-rank percentiles. "
                      "Browser: Playwright + Debian chromium, navigation start to the load event, 5 runs. "
                      "Screenshots: `bench/out/console-*.png`.",
                  f"Command: `.venv/bin/python bench/console.py --events {args.events} --accounts {args.accounts} --repeats {args.repeats}`"]
        write_report("console.md", lines, began, digest)
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
