"""What a lagging online scorer costs the gateway's memory: RSS per event waiting for the scorer child.

    python bench/scorer_backlog_memory.py [--duration 20] [--before REV]

On a 2-core machine serving flat out, the online scorer child cannot score
as fast as the gateway serves (the gateway and the load take the cores), so
events wait in the gateway, up to ``detection.scorer_backlog_max`` (50,000).
This makes that happen on purpose: an all-on gateway (``bench/gateway_overhead.py``'s
set-up) in front of ``bench/fast_upstream.py``, its scorer child stopped with
SIGSTOP, ``wrk`` at 64 connections for ``--duration`` seconds; then the
backlog (``distillguard_scorer_backlog_events`` from ``/metrics``) and the
gateway's own RSS (without the child) against its RSS at the start, per
10,000 waiting events; then the child is let go (SIGCONT) and the RSS read
again once the backlog drained. ``--before REV`` runs the same for git
revision ``REV``'s source in the same run (its gateway first, then ours).
Needs ``wrk`` (Debian package). Writes ``bench/out/scorer_backlog_memory.md``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gateway_overhead import (
    PYTHON,
    ROOT,
    Spawn,
    checkout_src,
    free_port,
    own_rss_mb,
    run_wrk,
    start_gateway,
    wait,
)
from measure import scratch_dir, spawn_logged, src_digest, stop_sessions, write_report

sys.path.insert(0, str(ROOT))
from tests.wire_probes import process_tree  # noqa: E402


def backlog(root: str) -> float:
    found = re.search(r"^distillguard_scorer_backlog_events (\S+)$", httpx.get(root + "/metrics", timeout=10).text, re.M)
    return float(found.group(1)) if found else float("nan")


def measure(work: Path, tag: str, upstream: str, spawn: Spawn, duration: int, src: Path | None) -> dict[str, float]:
    root, key, gateway = start_gateway(work, tag, upstream, spawn, online=True, src=src)
    time.sleep(3)  # the child has loaded the detectors
    start = own_rss_mb(gateway.pid)
    children = process_tree(gateway.pid)[1:]
    for pid in children:
        os.kill(pid, signal.SIGSTOP)
    try:
        result = run_wrk(root + "/v1/chat/completions", 64, duration, False, key)
        waiting = backlog(root)
        loaded = own_rss_mb(gateway.pid)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGCONT)
    deadline = time.time() + 120
    while backlog(root) > 0 and time.time() < deadline:
        time.sleep(1)
    time.sleep(2)
    return {"rps": result["rps"], "waiting": waiting, "start": start, "loaded": loaded, "drained": own_rss_mb(gateway.pid),
            "per_10k": (loaded - start) / max(1.0, waiting) * 10_000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--before", metavar="REV")
    args = parser.parse_args()
    began = time.perf_counter()
    digest = src_digest()
    work = scratch_dir("dg-backlog-")
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(cmd: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return spawn_logged(procs, work, cmd, log, env)

    rows: list[tuple[str, dict[str, float]]] = []
    try:
        port = free_port()
        spawn([PYTHON, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(port)], "upstream.log")
        upstream = f"http://127.0.0.1:{port}/v1"
        wait(upstream + "/models")
        if args.before:
            src = checkout_src(args.before, work / "before")
            rows.append((f"before ({args.before})", measure(work, "before", upstream, spawn, args.duration, src)))
        rows.append(("this tree", measure(work, "now", upstream, spawn, args.duration, None)))
    finally:
        stop_sessions(procs)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [f"Scorer child stopped, wrk c=64 for {args.duration} s; load average after: {load}.", "",
             "| tree | req/s | events waiting | gateway RSS at start (MB) | with the backlog (MB) | MB per 10,000 waiting | "
             "after the drain (MB) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['rps']:.0f} | {r['waiting']:.0f} | {r['start']:.0f} | {r['loaded']:.0f} | {r['per_10k']:.1f} | "
                     f"{r['drained']:.0f} |")
    write_report("scorer_backlog_memory.md", lines, began, digest)


if __name__ == "__main__":
    main()
