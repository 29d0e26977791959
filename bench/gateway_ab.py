"""Two source trees of the gateway under the same load at the same time: CPU per request, paired.

    python bench/gateway_ab.py --before REV [--pairs 5] [--duration 6] [--loads sse:64,json:64,sse:1,json:1]
    python bench/gateway_ab.py --before-src DIR ...   (DIR: an already-built ``src/``, e.g. a compiled checkout)

Why paired and concurrent: on a machine shared with other work, CPU per
request of a whole gateway moves by ±30 % from one run to the next (it is paid
in cache misses and preemptions as much as in instructions), more than most
changes to it. Here the current tree and the tree of git revision ``REV``
(``git archive``) each run ``distillguard serve`` with the benchmark's core
configuration (``bench/gateway_overhead.py``: key auth, limits, the SQLite
event log with its write-ahead log; online detection off), each in front of
its own canned upstream (``bench/fast_upstream.py``), and one ``wrk`` drives
each of them *at the same time*: whatever else the machine does falls on both
alike. Each pair gives a ratio (now / before) of CPU per request of the two
processes (all threads); the table shows the median ratio over the pairs, and
the medians of each side. Absolute figures are inflated by the two set-ups
sharing the machine; the ratio is the figure to read.

``git archive`` gives source only, so ``--before REV`` runs that tree as pure
Python, even when the current tree is a compiled build (``setup.py``). To
compare two compiled builds, build the other tree in place (``setup.py
build_ext --inplace`` in a copy of it) and pass its ``src/`` as
``--before-src``. The report says, for each side, whether its compiled modules
were current (a stale build runs from source: ``distillguard/_compiled.py``).
"""

from __future__ import annotations

import argparse
import os
import runpy
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from gateway_overhead import PYTHON, ROOT, checkout_src, cpu_s, free_port, run_wrk, start_gateway, wait
from measure import scratch_dir, source_line, src_digest, stop_sessions, write_report


def build_state(src: Path) -> str:
    """Whether the tree under ``src`` runs compiled: its extension modules present and built from its current source."""
    compiled = runpy.run_path(str(src / "distillguard" / "_compiled.py"))
    root = src.resolve()
    if not compiled["_built_here"](root):
        return "pure Python (no compiled build)"
    stale = compiled["stale_modules"](root)
    return f"**stale compiled build, runs from source** ({len(stale)} modules changed)" if stale else "compiled (current build)"


def main() -> int:
    parser = argparse.ArgumentParser()
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--before", metavar="REV", help="git revision to compare the current tree with (its source, pure Python)")
    which.add_argument("--before-src", metavar="DIR", type=Path, help="an already-built src/ directory to compare with "
                       "(e.g. a compiled copy of another revision)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--loads", default="sse:64,json:64,sse:1,json:1", help="kind:connections, comma-separated")
    parser.add_argument("--online", action="store_true", help="both sides all on (online detection: the scorer child, "
                        "whose CPU counts with its gateway's)")
    args = parser.parse_args()
    began = time.perf_counter()
    digest = src_digest()
    work = scratch_dir("dg-ab-")
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(cmd: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(work / log, "wb") as handle:
            proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=work, env={**os.environ, **(env or {})},
                                    start_new_session=True)
        procs.append(proc)
        return proc

    lines = []
    try:
        before_src = checkout_src(args.before, work / "before") if args.before else args.before_src.resolve()
        now_src = ROOT / "src"
        sides = {}
        for tag, src in (("before", before_src), ("now", None)):
            port = free_port()
            spawn([PYTHON, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(port)], f"upstream-{tag}.log")
            upstream = f"http://127.0.0.1:{port}/v1"
            wait(upstream + "/models")
            sides[tag] = start_gateway(work, tag, upstream, spawn, src=src, online=args.online)
        named = f"`{args.before}` (git archive: source only)" if args.before else f"`{before_src}`"
        lines += [f"Load average before: {load_before}. `before` is {named}, {build_state(before_src)}; `now` is the "
                  f"current tree, {build_state(now_src)}. Configuration: {'all on (online detection)' if args.online else 'core'}. {args.pairs} pairs of {args.duration} s per load, both set-ups "
                  "driven at the same time.", "",
                  "| load | CPU ms/request, before (median) | now (median) | now / before, median of pairs | pairs | "
                  "req/s now / before (median) |", "|---|---:|---:|---:|---|---:|"]
        for load in args.loads.split(","):
            kind, conns = load.split(":")
            stream, connections = kind == "sse", int(conns)
            cpu: dict[str, list[float]] = {"before": [], "now": []}
            rates: list[float] = []
            ratios: list[float] = []
            for _ in range(args.pairs):
                got: dict[str, tuple[float, float]] = {}

                def drive(tag: str, stream: bool = stream, connections: int = connections, got: dict[str, tuple[float, float]] = got) -> None:
                    root, key, proc = sides[tag]
                    url = root + "/v1/chat/completions"
                    start = cpu_s(proc.pid)
                    result = run_wrk(url, connections, args.duration, stream, key)
                    got[tag] = (result["rps"], (cpu_s(proc.pid) - start) * 1000 / max(1.0, result["rps"] * args.duration))

                for tag in sides:  # warm-up, one at a time
                    root, key, _ = sides[tag]
                    run_wrk(root + "/v1/chat/completions", connections, 1, stream, key)
                threads = [threading.Thread(target=drive, args=(tag,)) for tag in sides]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                for tag in sides:
                    cpu[tag].append(got[tag][1])
                ratios.append(got["now"][1] / got["before"][1])
                rates.append(got["now"][0] / max(1e-9, got["before"][0]))
                print(f"  {load}: before {got['before'][0]:.0f} req/s {got['before'][1]:.3f} ms | now {got['now'][0]:.0f} req/s "
                      f"{got['now'][1]:.3f} ms | now/before {ratios[-1]:.2f}", file=sys.stderr, flush=True)
            lines.append(f"| {kind} c={connections} | {statistics.median(cpu['before']):.3f} | {statistics.median(cpu['now']):.3f} | "
                         f"**{statistics.median(ratios):.2f}** | {', '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(rates):.2f} |")
    finally:
        stop_sessions(procs)
    lines += ["", f"Load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}."]
    write_report("gateway_ab.md", lines, began, digest)
    print(source_line(digest), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
