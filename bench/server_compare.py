"""The gateway app under three HTTP servers, side by side: cost (wrk) and the edge probes.

    python bench/server_compare.py [--duration 6] [--servers own,uvicorn,granian] [--skip-probes] [--skip-load] [--flood 15]
    python bench/server_compare.py --app echo [--duration 6]    # the servers alone, around a trivial app

Every server runs the same ASGI application (``build_gateway`` on the same
configuration) in front of the same canned upstream (``bench/fast_upstream.py``):

- **own**: ``distillguard serve`` (``gateway/http_server.py``, uvloop + httptools);
- **uvicorn** with httptools and uvloop (``pip install uvicorn``);
- **granian** 2.8, ASGI interface, one worker, uvloop (``pip install granian``).

For each: CPU ms per request of the server's process tree, throughput and
added p50/p99 latency at 1 and 64 connections (JSON; ``wrk``), RSS, and every
wire-level probe of ``tests/wire_probes.py`` (the issue #12 findings), each
marked pass/fail with what was seen; then two bounded floods on loopback (an
endless chunked trailer on five connections, 1,000 trickling connections)
while a normal client measures its latency and the server's RSS is sampled. uvicorn and granian are only needed for
this comparison; it skips a server that is not installed.

``--app echo`` measures the servers themselves: each runs the same trivial ASGI
app (:func:`echo_app`: reads the body, answers the benchmark upstream's canned
JSON), so CPU per request is the server's own cost (parsing, the ASGI
plumbing, the socket writes) without the gateway's, which otherwise dominates
the comparison. No probes or floods then (they test the gateway's edge).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from gateway_overhead import cpu_s, free_port, rss_mb, run_wrk, wait
from measure import percentile, scratch_dir, source_line, src_digest, write_report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PYTHON = sys.executable
BIN = Path(PYTHON).parent


def app() -> Any:
    """ASGI factory for uvicorn and granian: the gateway built from ``$DG_BENCH_CONFIG``."""
    from distillguard.config import load_settings
    from distillguard.gateway.server import build_gateway

    gateway = build_gateway(load_settings(os.environ["DG_BENCH_CONFIG"]))
    gateway.freeze_gc_after_start = True  # as `distillguard serve` does (gc.freeze and the young-generation threshold)
    return gateway


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A trivial ASGI app for ``--app echo``: lifespan, then every request's body read and the canned JSON answered."""
    from fast_upstream import BODY

    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})


def server_command(name: str, config: Path, host: str, port: int, app_name: str = "gateway") -> list[str] | None:
    bench = str(ROOT / "bench")
    factory = "server_compare:app" if app_name == "gateway" else "server_compare:echo_factory"
    if name == "own":
        if app_name == "echo":
            return [PYTHON, "-c", f"import sys; sys.path.insert(0, {bench!r}); import server_compare; "
                    f"from distillguard.gateway.http_server import run; run(server_compare.echo_app, {host!r}, {port})"]
        return [PYTHON, "-m", "distillguard.cli", "serve", "--config", str(config)]
    if name == "uvicorn":
        if not (BIN / "uvicorn").exists():
            return None
        return [str(BIN / "uvicorn"), "--factory", factory, "--app-dir", bench, "--host", host, "--port", str(port),
                "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning", "--backlog", "4096"]
    if name == "granian":
        if not (BIN / "granian").exists():
            return None
        return [str(BIN / "granian"), "--interface", "asgi", "--factory", "--working-dir", bench, "--host", host, "--port", str(port),
                "--loop", "uvloop", "--no-access-log", "--log-level", "warning", "--backlog", "4096",
                "--http1-header-read-timeout", "10000", factory]
    raise SystemExit(f"unknown server {name!r}")


def echo_factory() -> Any:
    """ASGI factory for uvicorn and granian under ``--app echo``."""
    return echo_app


class Launched:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], root: str, key: str, log: Path) -> None:
        self.name, self.proc, self.root, self.key, self.log = name, proc, root, key, log


def launch(name: str, work: Path, upstream: str, extra: dict[str, Any] | None = None, app_name: str = "gateway") -> Launched | None:
    port = free_port()
    config = {"listen": f"127.0.0.1:{port}", "database": f"sqlite:///{work / f'dg-{name}.db'}", "admin_token": "bench",
              "spill_dir": str(work / f"spill-{name}"), "log_level": "warning",
              "upstreams": [{"name": "fast", "base_url": upstream, "models": ["*"]}], "detection": {"online": False},
              "limits": {"requests_per_min": 10_000_000, "tokens_per_min": 10_000_000_000, "concurrent_requests": 1000, "daily_tokens": None},
              # the deadlines the probes expect (granian's header timeout is set to 10 s on its command line too)
              "server": {"head_timeout_s": 10, "body_timeout_s": 10},
              **(extra or {})}
    path = work / f"dg-{name}.yaml"
    path.write_text(json.dumps(config))
    cmd = server_command(name, path, "127.0.0.1", port, app_name)
    if cmd is None:
        print(f"note: {name} is not installed; skipped", file=sys.stderr)
        return None
    log = work / f"{name}.log"
    env = {**os.environ, "DG_BENCH_CONFIG": str(path), "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=work, env=env, start_new_session=True)
    root = f"http://127.0.0.1:{port}"
    wait(root + "/healthz", timeout=60)
    if app_name == "echo":
        return Launched(name, proc, root, "", log)
    admin = {"Authorization": "Bearer bench"}
    account = httpx.post(root + "/admin/v1/accounts", json={"name": "bench"}, headers=admin).json()
    key = httpx.post(root + f"/admin/v1/accounts/{account['account_id']}/keys", json={}, headers=admin).json()["secret"]
    return Launched(name, proc, root, key, log)


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def load_rows(target: Launched, duration: int) -> dict[str, dict[str, float]]:
    out = {}
    for conns in (1, 64):
        url = target.root + "/v1/chat/completions"
        run_wrk(url, conns, 2, False, target.key)  # warm-up
        before = cpu_s(target.proc.pid)
        result = run_wrk(url, conns, duration, False, target.key)
        result["cpu_ms_per_req"] = (cpu_s(target.proc.pid) - before) * 1000 / max(1.0, result["rps"] * duration)
        result["rss_mb"] = rss_mb(target.proc.pid)
        out[f"json c={conns}"] = result
        print(f"  {target.name:<8} json c={conns:<3} {result['rps']:>7.0f} req/s  p50 {result['p50_ms']:.2f}  p99 {result['p99_ms']:.2f}"
              f"  cpu {result['cpu_ms_per_req']:.3f} ms/req  rss {result['rss_mb']:.0f}", file=sys.stderr, flush=True)
    return out


def _normal_client(target: Any, stop: threading.Event, latencies: list[float]) -> None:
    from tests.wire_probes import chat_latency

    while not stop.is_set():
        latencies.append(chat_latency(target))
        stop.wait(0.05)


def flood(launched: Launched, seconds: float, kind: str) -> dict[str, float]:
    """``kind`` "trailer": 4 unauthenticated endless-trailer connections to POST /healthz and one with a key;
    "slow": 1,000 connections trickling a head one byte a second. Meanwhile a normal client sends a chat
    request every 50 ms (a new connection each); the server's RSS is sampled every 0.25 s."""
    from tests.wire_probes import Target, rss_mb, trailer_flooder, trickling_connections

    target = Target(launched.root, launched.key, "bench", launched.proc.pid)
    stop = threading.Event()
    threads = []
    sent = [0]
    rss_start = rss_mb(launched.proc.pid)
    if kind == "trailer":
        for key in (None, None, None, None, launched.key):
            threads.append(trailer_flooder(target, key, stop, sent))
    else:
        threads.append(trickling_connections(target, 1000, stop))
    latencies: list[float] = []
    time.sleep(1.0)  # let the attack build up
    client = threading.Thread(target=_normal_client, args=(target, stop, latencies), daemon=True)
    client.start()
    peak = rss_start
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, rss_mb(launched.proc.pid))
        time.sleep(0.25)
    stop.set()
    for thread in [*threads, client]:
        thread.join(15)
    ok = [x for x in latencies if x != float("inf")]
    return {"requests": len(latencies), "failed": len(latencies) - len(ok), "p50_ms": percentile(ok, 50) * 1000,
            "p99_ms": percentile(ok, 99) * 1000, "max_ms": max(ok, default=float("nan")) * 1000, "rss_start_mb": rss_start,
            "rss_peak_mb": peak, "flood_mib": sent[0] / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--servers", default="own,uvicorn,granian")
    parser.add_argument("--skip-probes", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--only", help="comma-separated parts of probe names to run")
    parser.add_argument("--flood", type=float, default=15.0, metavar="SECONDS",
                        help="length of the endless-trailer and slow-client floods (0: skip them)")
    parser.add_argument("--app", choices=["gateway", "echo"], default="gateway",
                        help="what the servers run: the gateway (default), or a trivial app to measure the servers alone")
    args = parser.parse_args()
    if args.app == "echo":
        args.skip_probes, args.flood = True, 0.0
    if not args.skip_load and not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    began = time.perf_counter()
    digest = src_digest()
    work = scratch_dir("dg-servers-")
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    up_port = free_port()
    with open(work / "upstream.log", "wb") as handle:
        up = subprocess.Popen([PYTHON, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(up_port)], stdout=handle,
                              stderr=subprocess.STDOUT, start_new_session=True)
    upstream = f"http://127.0.0.1:{up_port}/v1"
    loads: dict[str, dict[str, dict[str, float]]] = {}
    probes: dict[str, list[tuple[str, bool, str]]] = {}
    floods: dict[str, dict[str, dict[str, float]]] = {}
    try:
        wait(upstream + "/models")
        if not args.skip_load and args.app == "gateway":  # (an echo app proxies nothing: no baseline to add to)
            direct = Launched("direct", up, upstream.rsplit("/v1", 1)[0], "", work / "upstream.log")
            loads["upstream (direct)"] = load_rows(direct, args.duration)
        for name in args.servers.split(","):
            target = launch(name, work, upstream, app_name=args.app)
            if target is None:
                continue
            try:
                if not args.skip_load:
                    loads[name] = load_rows(target, args.duration)
                if not args.skip_probes:
                    from tests.wire_probes import Target, run_all

                    probes[name] = run_all(Target(target.root, target.key, "bench", target.proc.pid, head_deadline_s=10, body_deadline_s=10),
                                           args.only.split(",") if args.only else None)
                    for probe, ok, seen in probes[name]:
                        print(f"  {name:<8} {'pass' if ok else 'FAIL'}  {probe}: {seen}", file=sys.stderr, flush=True)
                if args.flood > 0:
                    for kind in ("trailer", "slow"):
                        floods.setdefault(name, {})[kind] = row = flood(target, args.flood, kind)
                        print(f"  {name:<8} {kind} flood: {row}", file=sys.stderr, flush=True)
            finally:
                stop(target.proc)
    finally:
        stop(up)
    lines = [f"Load average before: {load_before}; after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}."
             + (" The servers around a trivial app (`--app echo`): their own cost." if args.app == "echo" else ""), ""]
    if loads:
        lines += ["| load | server | req/s | vs upstream | added p50 (ms) | added p99 (ms) | CPU ms/request | RSS (MB) | errors |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        direct_rows = loads.get("upstream (direct)", {})
        for label in ("json c=1", "json c=64"):
            for name, rows in loads.items():
                r, d = rows[label], direct_rows.get(label)
                is_direct = name.startswith("upstream")
                ratio = f"{r['rps'] / d['rps']:.0%}" if d else "—"
                a50 = "—" if is_direct or not d else f"{r['p50_ms'] - d['p50_ms']:.2f}"
                a99 = "—" if is_direct or not d else f"{r['p99_ms'] - d['p99_ms']:.2f}"
                rss = "—" if is_direct else f"{r['rss_mb']:.0f}"
                lines.append(f"| {label} | {name} | {r['rps']:.0f} | {ratio} | {a50} | {a99} | {r['cpu_ms_per_req']:.3f} | {rss} | "
                             f"{int(r['non_2xx'] + r['socket_errors'])} |")
        lines.append("")
    if probes:
        names = list(probes)
        lines += ["| probe | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for i, (probe, _, _) in enumerate(probes[names[0]]):
            cells = [f"{'pass' if probes[n][i][1] else '**fail**'}: {probes[n][i][2]}" for n in names]
            lines.append(f"| {probe} | " + " | ".join(cells) + " |")
        lines.append("")
    if floods:
        lines += [f"Floods ({args.flood:.0f} s each, loopback): a normal client sends a chat request every 50 ms on a new connection.", "",
                  "| flood | server | normal requests | failed | p50 (ms) | p99 (ms) | max (ms) | RSS start → peak (MB) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        titles = {"trailer": "endless trailer, 4 × POST /healthz + 1 with a key", "slow": "1,000 connections trickling a head"}
        for kind, title in titles.items():
            for name, rows in floods.items():
                f = rows[kind]
                lines.append(f"| {title} | {name} | {f['requests']:.0f} | {f['failed']:.0f} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | "
                             f"{f['max_ms']:.1f} | {f['rss_start_mb']:.0f} → {f['rss_peak_mb']:.0f} |")
        lines.append("")
    write_report("server_compare.md" if args.app == "gateway" else "server_compare_echo.md", lines, began, digest)
    print(source_line(digest), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
