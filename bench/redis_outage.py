"""Redis stopped and restarted under load: what clients get in each phase, how fast shared state comes back (issue #13).

One real gateway (``distillguard serve``, ``state: redis://…``, SQLite store) in front of the fast upstream
(bench/fast_upstream.py), ``--concurrency`` closed-loop aiohttp clients on one key. Per ``state_failure`` mode:
``--seconds`` of load with Redis up, Redis stopped for ``--seconds``, started again on the same port, ``--seconds``
more. Each answer is counted in the phase it was *sent* in (status and latency); the time from Redis' restart until
the gateway's ``dg_state_degraded`` metric is 0 again is polled every 50 ms. At the end the gateway is stopped with
SIGTERM and every answered request (200 or 503 alike) is looked up in the store: the event log must not depend on
Redis. The baseline is the first phase (Redis up) of the same run.

    .venv/bin/python bench/redis_outage.py [--seconds 5] [--concurrency 8]

Needs Debian's ``redis-server``.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.gateway_fixtures import start_gateway  # noqa: E402
from tests.redis_fixtures import RedisServer  # noqa: E402

from distillguard.store import iter_events  # noqa: E402
from gateway_overhead import free_port, wait  # noqa: E402
from measure import ROOT, ClosedLoop, scratch_dir, spawn_logged, src_digest, stop_sessions, write_report  # noqa: E402

CHAT = {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
UNLIMITED = {"requests_per_min": None, "tokens_per_min": None, "concurrent_requests": 64, "daily_tokens": None}
PHASES = ("up", "down", "back")


def _degraded(root: str) -> float:
    for line in httpx.get(root + "/metrics", timeout=5).text.splitlines():
        if line.startswith("dg_state_degraded "):
            return float(line.split()[1])
    raise RuntimeError("dg_state_degraded is not in /metrics")


def run_mode(mode: str, upstream: str, seconds: float, concurrency: int) -> list[str]:
    work = scratch_dir(f"dg-redis-outage-{mode}-")
    redis = RedisServer(work / "redis").start()
    (work / "gw").mkdir()
    gw = start_gateway(work / "gw", upstream, state=redis.url, state_failure=mode, limits=UNLIMITED, log_level="warning",
                       detection={"online": False})
    load = ClosedLoop(gw.base_url + "/chat/completions", gw.create_key("outage")["secret"], CHAT, concurrency)
    try:
        load.thread.start()
        time.sleep(seconds)
        down_at = time.time()
        redis.stop()
        time.sleep(seconds)
        up_at = time.time()
        redis.start()
        while _degraded(gw.root_url) != 0 and time.time() < up_at + 30:
            time.sleep(0.05)
        recovered_s = time.time() - up_at
        time.sleep(seconds)
        load.stop.set()
        load.thread.join(15)
    finally:
        gw.stop(signal.SIGTERM)
        redis.stop()
    stored = {e["request_id"] for e in iter_events(gw.database)}
    rows = []
    for phase in PHASES:
        answers = [a for a in load.answers if {"up": a[0] < down_at, "down": down_at <= a[0] < up_at, "back": a[0] >= up_at}[phase]]
        statuses: dict[int, int] = {}
        for _, status, _, _ in answers:
            statuses[status] = statuses.get(status, 0) + 1
        ms = sorted(1000 * a[2] for a in answers) or [float("nan")]
        missing = sum(1 for a in answers if a[3] not in stored)
        back = f"{recovered_s:.2f} s" if phase == "back" else ""
        rows.append(f"| {mode} | {phase} | {len(answers):,} | {', '.join(f'{s}: {n:,}' for s, n in sorted(statuses.items()))} | "
                    f"{statistics.median(ms):.1f} | {ms[min(len(ms) - 1, int(0.99 * len(ms)))]:.1f} | {ms[-1]:.0f} | {back} | "
                    f"{missing:,} |")
    if load.errors:
        rows[-1] += f" ({load.errors} connection errors)"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase (up, down, back)")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop clients")
    args = parser.parse_args()
    began, digest = time.perf_counter(), src_digest()
    procs: list = []
    work = scratch_dir("dg-redis-outage-up-")
    up_port = free_port()
    spawn_logged(procs, work, [sys.executable, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(up_port)], "upstream.log")
    upstream = f"http://127.0.0.1:{up_port}/v1"
    wait(upstream + "/models")
    rows: list[str] = []
    try:
        for mode in ("fail_open", "fail_closed"):
            rows += run_mode(mode, upstream, args.seconds, args.concurrency)
            print("\n".join(rows[-3:]), flush=True)
    finally:
        stop_sessions(procs)
    lines = [
        "## Redis stopped and restarted under load (`bench/redis_outage.py`)",
        "",
        f"One gateway on Redis state and SQLite, fast upstream, {args.concurrency} closed-loop aiohttp clients on one key; "
        f"phases of {args.seconds:g} s: Redis up, stopped, started again. Answers counted by the phase they were sent in. "
        "Machine shared with other engineers' work (2 cores): latencies are noisy; compare with the `up` row.",
        "",
        "| state_failure | phase | answered | statuses | p50 ms | p99 ms | max ms | shared state back after | answered without an event |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
        *rows,
    ]
    write_report("redis_outage.md", lines, began, digest)


if __name__ == "__main__":
    main()
