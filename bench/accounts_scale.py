"""Scale in accounts and keys (issue #13, deliverable 6), in one run against one gateway and one stub upstream.

    python bench/accounts_scale.py [--accounts 100000] [--duration 10] [--skip-postgres]

1. Creation: ``--accounts`` accounts, each with a key, through ``POST /admin/v1/accounts/bulk``
   (10,000 a request) into a running gateway on SQLite; then 200 single creations
   (``POST /admin/v1/accounts`` + ``…/keys``) at that size, each key used at once;
   then ``distillguard accounts import`` of the same number into a fresh SQLite file
   and, when Debian's PostgreSQL is installed, into a fresh PostgreSQL server.
   What one change cost before incremental updates is the whole-table load,
   timed here too (``Registry.key_snapshot`` at full size).
2. Memory per idle key: the gateway restarted on the full database against the
   same gateway on an empty one (RSS difference / keys), and the key table
   alone under tracemalloc.
3. Traffic: wrk at c=64 with every request on one key, then spread round-robin
   over all the keys, alternating (``--rounds`` each, medians reported), ``detection.online`` off
   (the online scorer's own throughput is another part of the issue); req/s,
   p50/p99, gateway CPU ms per request and RSS after.

Needs ``wrk``. The Markdown report is printed and written to bench/out/accounts_scale.md
(recorded in bench/RESULTS.md, "Accounts and keys at scale").
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import httpx

from gateway_overhead import cpu_s, free_port, wait
from measure import percentile, scratch_dir, spawn_logged, src_digest, stop_sessions, write_report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.wire_probes import rss_mb  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ADMIN = {"Authorization": "Bearer bench"}
BODY = {"model": "bench-model", "messages": [{"role": "user", "content": "Say something about benchmarks."}], "max_tokens": 16}
BATCH = 10_000
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}

WRK_SCRIPT = """
local keys = {}
for line in io.lines("%(keys)s") do keys[#keys + 1] = line end
local body = %(body)s
local n = 0
local thread_no = 0
function setup(thread) thread:set("offset", thread_no * 7919); thread_no = thread_no + 1 end
function request()
  n = n + 1
  local key = keys[((n + (offset or 0)) %% #keys) + 1]
  return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}, body)
end
"""


def run_wrk(url: str, keys_file: Path, duration: int, connections: int = 64) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % {"keys": keys_file, "body": json.dumps(json.dumps(BODY))})
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration}s", "--timeout", "10s", "--latency",
                          "-s", script.name, url], capture_output=True, text=True, timeout=duration + 60)
    os.unlink(script.name)
    text = out.stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if found is None:
        raise SystemExit(f"wrk failed: {out.stderr or text}")
    latencies = {pct: float(v) * _UNITS[u] for pct, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": float(found.group(1)), "p50_ms": latencies.get("50", float("nan")), "p99_ms": latencies.get("99", float("nan")),
            "non_2xx": int(errors.group(1)) if errors else 0}


def gateway_config(work: Path, tag: str, database: str, upstream: str) -> tuple[Path, str]:
    port = free_port()
    config = {"listen": f"127.0.0.1:{port}", "database": database, "admin_token": "bench", "spill_dir": str(work / f"spill-{tag}"),
              "log_level": "warning", "upstreams": [{"name": "fast", "base_url": upstream, "models": ["*"]}],
              "detection": {"online": False},
              "limits": {"requests_per_min": 10_000_000, "tokens_per_min": 10_000_000_000, "concurrent_requests": 1000, "daily_tokens": None}}
    path = work / f"dg-{tag}.yaml"
    path.write_text(json.dumps(config))
    return path, f"http://127.0.0.1:{port}"


def settled_rss(pid: int) -> float:
    time.sleep(2.0)
    return rss_mb(pid)


def bulk_create(root: str, n: int, prefix: str) -> tuple[float, list[str]]:
    secrets: list[str] = []
    started = time.perf_counter()
    with httpx.Client(base_url=root, headers=ADMIN, timeout=300) as client:
        for start in range(0, n, BATCH):
            batch = [{"name": f"{prefix}-{i}", "key": True} for i in range(start, min(n, start + BATCH))]
            response = client.post("/admin/v1/accounts/bulk", json={"accounts": batch})
            if response.status_code != 201:
                raise SystemExit(f"bulk create failed: {response.status_code} {response.text[:300]}")
            secrets.extend(item["secret"] for item in response.json()["data"])
    return time.perf_counter() - started, secrets


def single_creates(root: str, n: int) -> tuple[list[float], int]:
    """Account + key one by one through the admin API, each key used right away; ms per pair and how many worked at once."""
    times, usable = [], 0
    with httpx.Client(base_url=root, timeout=60) as client:
        for i in range(n):
            started = time.perf_counter()
            account = client.post("/admin/v1/accounts", json={"name": f"single-{i}"}, headers=ADMIN).json()
            key = client.post(f"/admin/v1/accounts/{account['account_id']}/keys", json={}, headers=ADMIN).json()
            times.append((time.perf_counter() - started) * 1000)
            answer = client.post("/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key['secret']}"})
            usable += answer.status_code == 200
    return times, usable


def cli_import(work: Path, database: str, n: int, tag: str) -> float:
    source = work / f"import-{tag}.jsonl"
    source.write_text("".join(json.dumps({"name": f"import-{i}", "key": True}) + "\n" for i in range(n)))
    config = work / f"cli-{tag}.yaml"
    config.write_text(json.dumps({"database": database}))
    started = time.perf_counter()
    with open(work / f"import-{tag}.out", "wb") as out:
        done = subprocess.run([PYTHON, "-m", "distillguard.cli", "accounts", "import", str(source), "--config", str(config)],
                              stdout=out, stderr=subprocess.PIPE, timeout=1800, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"accounts import ({tag}) failed: {done.stderr.decode()[-500:]}")
    return elapsed


def snapshot_and_table_cost(database: str) -> tuple[float, float, int]:
    """Seconds for one whole-table load (what every change cost before) and bytes per key of the loaded table (tracemalloc)."""
    from distillguard.gateway.auth import KeyTable
    from distillguard.store.registry import Registry

    registry = Registry(database)
    try:
        registry.key_snapshot()  # warm the page cache
        started = time.perf_counter()
        registry.key_snapshot()
        load_s = time.perf_counter() - started
        gc.collect()
        tracemalloc.start()
        table = KeyTable(registry.key_snapshot())
        gc.collect()
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return load_s, size / max(1, len(table)), len(table)
    finally:
        registry.close()


def limiter_state_per_key(n: int) -> tuple[float, float]:
    """Bytes of limiter state per key (tracemalloc): one request on each of ``n`` keys (own account each) within a
    minute, then after 61 idle seconds and a sweep (what a key used today keeps until midnight UTC)."""
    import asyncio

    from distillguard.config import LimitSettings
    from distillguard.gateway.limits import Limiter
    from distillguard.state import MemoryState
    from distillguard.store.registry import KeyRecord

    now = [1_000_000.0]
    records = [KeyRecord(f"key_{i:016x}", f"{i:064x}", f"acct_{i:016x}", None, False, "active") for i in range(n)]
    gc.collect()
    tracemalloc.start()
    state = MemoryState(lambda: now[0])
    limiter = Limiter(LimitSettings(requests_per_min=1000, tokens_per_min=None, concurrent_requests=None, daily_tokens=100_000), state)

    async def traffic() -> None:
        for i, record in enumerate(records):
            slot = limiter.enter(record)
            admission = await limiter.admit(record, 10, f"r{i}")
            assert admission is not None
            limiter.settle(admission, 20)
            slot.release()

    asyncio.run(traffic())
    gc.collect()
    active = tracemalloc.get_traced_memory()[0] / n
    now[0] += 61
    state.sweep(state.now_ms())
    gc.collect()
    idle = tracemalloc.get_traced_memory()[0] / n
    tracemalloc.stop()
    return active, idle


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="traffic rounds per case, alternating (medians reported)")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--limiter-only", action="store_true", help="only the in-process limiter state per key")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    n = args.accounts
    limiter_active, limiter_idle = limiter_state_per_key(n)
    print(f"limiter state per key: {limiter_active:.0f} B in its minute, {limiter_idle:.0f} B idle", file=sys.stderr, flush=True)
    if args.limiter_only:
        return 0
    work = scratch_dir("dg-accounts-")
    digest = src_digest()
    began = time.perf_counter()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        return spawn_logged(procs, work, cmd, log)

    def stop(proc: subprocess.Popen[bytes]) -> None:
        stop_sessions([proc])
        procs.remove(proc)

    lines: list[str] = []
    try:
        up_port = free_port()
        spawn([PYTHON, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(up_port)], "upstream.log")
        upstream = f"http://127.0.0.1:{up_port}/v1"
        wait(upstream + "/models")
        database = f"sqlite:///{work / 'scale.db'}"

        # -- 1. creation ---------------------------------------------------------------------------------
        config, root = gateway_config(work, "a", database, upstream)
        gateway = spawn([PYTHON, "-m", "distillguard.cli", "serve", "--config", str(config)], "gateway-a.log")
        wait(root + "/healthz")
        solo = httpx.post(root + "/admin/v1/accounts/bulk", json={"accounts": [{"name": "solo", "key": True}]}, headers=ADMIN)
        solo_secret = solo.json()["data"][0]["secret"]
        rss_empty = settled_rss(gateway.pid)
        print(f"gateway idle with 1 key: {rss_empty:.1f} MB", file=sys.stderr, flush=True)
        bulk_s, secrets = bulk_create(root, n, "bulk")
        print(f"bulk: {n} accounts+keys in {bulk_s:.1f} s", file=sys.stderr, flush=True)
        singles, usable = single_creates(root, args.singles)
        print(f"singles: median {statistics.median(singles):.1f} ms, {usable}/{args.singles} usable at once", file=sys.stderr, flush=True)
        rss_after_bulk = rss_mb(gateway.pid)
        stop(gateway)
        load_s, table_bytes, table_keys = snapshot_and_table_cost(database)
        print(f"whole-table load of {table_keys} keys: {load_s * 1000:.0f} ms; {table_bytes:.0f} B/key", file=sys.stderr, flush=True)

        imports: list[tuple[str, float]] = [("SQLite", cli_import(work, f"sqlite:///{work / 'import.db'}", n, "sqlite"))]
        print(f"accounts import, SQLite: {imports[-1][1]:.1f} s", file=sys.stderr, flush=True)
        if not args.skip_postgres:
            from tests.pg_fixtures import PostgresServer

            pg = PostgresServer()
            try:
                imports.append(("PostgreSQL", cli_import(work, pg.start(), n, "postgres")))
                print(f"accounts import, PostgreSQL: {imports[-1][1]:.1f} s", file=sys.stderr, flush=True)
            except RuntimeError as exc:
                print(f"PostgreSQL skipped: {exc}", file=sys.stderr)
            finally:
                pg.stop()
                pg.cleanup()

        # -- 2. memory per idle key: the same gateway restarted on the full database ------------------------
        config, root = gateway_config(work, "b", database, upstream)
        gateway = spawn([PYTHON, "-m", "distillguard.cli", "serve", "--config", str(config)], "gateway-b.log")
        wait(root + "/healthz", timeout=300)
        keys_loaded = httpx.get(root + "/admin/v1/status", headers=ADMIN).json()["keys_loaded"]
        rss_full = settled_rss(gateway.pid)
        per_key = (rss_full - rss_empty) * 1024 * 1024 / max(1, keys_loaded - 1)
        print(f"gateway idle with {keys_loaded} keys: {rss_full:.1f} MB ({per_key:.0f} B/key)", file=sys.stderr, flush=True)

        # -- 3. traffic: one key vs all of them, alternating ------------------------------------------------
        one_file, all_file = work / "one.keys", work / "all.keys"
        one_file.write_text(solo_secret + "\n")
        all_file.write_text("\n".join(secrets) + "\n")
        url = root + "/v1/chat/completions"
        run_wrk(url, one_file, 2)  # warm-up
        rounds: dict[str, list[dict[str, float]]] = {"one key": [], f"{n:,} keys": []}
        for _ in range(args.rounds):
            for label, keys_file in (("one key", one_file), (f"{n:,} keys", all_file)):
                before = cpu_s(gateway.pid)
                result = run_wrk(url, keys_file, args.duration)
                result["cpu_ms"] = (cpu_s(gateway.pid) - before) * 1000 / max(1.0, result["rps"] * args.duration)
                result["rss_mb"] = rss_mb(gateway.pid)
                rounds[label].append(result)
                print(f"  {label:<14} {result['rps']:>7.0f} req/s  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  "
                      f"cpu {result['cpu_ms']:.3f} ms/req  rss {result['rss_mb']:.0f} MB  non-2xx {result['non_2xx']}",
                      file=sys.stderr, flush=True)
        stop(gateway)

        # -- report ---------------------------------------------------------------------------------------------
        lines += [f"Load average before the run: {load_before}; after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
                  "(a 2-core machine shared with seven other engineers' work: absolute rates are noisy, ratios less so).", "",
                  "| creation | accounts + keys | time | per pair |", "|---|---:|---:|---:|",
                  f"| `POST /admin/v1/accounts/bulk` (10,000 a request) into a running gateway, SQLite | {n:,} | {bulk_s:.1f} s | "
                  f"{bulk_s * 1e6 / n:.0f} µs |"]
        for name, seconds in imports:
            lines.append(f"| `distillguard accounts import` (5,000 a transaction), {name} | {n:,} | {seconds:.1f} s | {seconds * 1e6 / n:.0f} µs |")
        lines += [f"| single `POST /admin/v1/accounts` + `…/keys` at {n:,} keys (each key used at once: {usable}/{args.singles} answered 200) | "
                  f"{args.singles} | median {statistics.median(singles):.1f} ms, p99 {percentile(singles, 99):.1f} ms | — |",
                  f"| before: one whole-table load at {table_keys:,} keys (what every single create cost on top) | — | "
                  f"{load_s * 1000:.0f} ms | — |", "",
                  "| memory | value |", "|---|---:|",
                  f"| gateway RSS idle, 1 key | {rss_empty:.1f} MB |",
                  f"| gateway RSS idle, {keys_loaded:,} keys (restarted on the full database) | {rss_full:.1f} MB |",
                  f"| RSS per idle key | {per_key:.0f} B |",
                  f"| key table alone per key (tracemalloc, {table_keys:,} records) | {table_bytes:.0f} B |",
                  f"| limiter state per key (tracemalloc, in process, {n:,} keys each with its own account): "
                  f"within a minute of its request | {limiter_active:.0f} B |",
                  f"| … the same keys idle after a sweep (today's tokens kept for daily quotas) | {limiter_idle:.0f} B |",
                  f"| gateway RSS after the bulk creation (the process that served it) | {rss_after_bulk:.1f} MB |", "",
                  f"| traffic, c=64, non-streaming | req/s ({args.rounds} rounds, alternating) | vs one key | p50 ms | p99 ms | gateway CPU ms/request | RSS after (MB) | non-2xx |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        base_cpu = statistics.median(r["cpu_ms"] for r in rounds["one key"])
        base = statistics.median(r["rps"] for r in rounds["one key"])
        for label, results in rounds.items():
            rps = statistics.median(r["rps"] for r in results)
            each = " / ".join(f"{r['rps']:.0f}" for r in results)
            lines.append(f"| {label} | {each} | {rps / base:.0%} | "
                         f"{statistics.median(r['p50_ms'] for r in results):.2f} | {statistics.median(r['p99_ms'] for r in results):.2f} | "
                         f"{statistics.median(r['cpu_ms'] for r in results):.3f} "
                         f"(×{statistics.median(r['cpu_ms'] for r in results) / base_cpu:.2f}) | {max(r['rss_mb'] for r in results):.0f} | "
                         f"{sum(int(r['non_2xx']) for r in results)} |")
        write_report("accounts_scale.md", lines, began, digest)
        return 0
    finally:
        stop_sessions(procs)


if __name__ == "__main__":
    sys.exit(main())
