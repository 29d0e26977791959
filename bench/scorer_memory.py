"""Where the central scorer's peak RSS comes from: its memory phase by phase, trees and variants paired in one run.

    .venv/bin/python bench/scorer_memory.py [--events 300000] [--accounts 100000] [--rounds 2]
        [--trees tree=src,main=/path/to/other/src] [--variants publish,nopublish] [--trace]

The same drain as ``bench/central_scorer.py`` (the ``default`` scenario's events spread over ``--accounts``
accounts, put in a real ``redis-server``'s stream with the replicas' append script, then consumed), but the
scorer runs *in a child interpreter of this script* (``policy.central.run_scorer``, SQLite store, no replay) so
that each phase of each report can be measured from inside: the child wraps ``Scanner.report``, the policy
engine's ``_on_report``, ``RiskTablePublisher.publish`` and ``settle_heap`` and records RSS (``statm``) and the
peak (``VmHWM``) before and after each. A phase whose run raised the peak is where the peak was reached.

Trees and variants alternate within each round (``--trees``: name=directory put first on ``PYTHONPATH``; every
tree runs each ``--variants``): ``publish`` is the scorer as it is, ``nopublish`` the same with the risk
table's publication replaced by a no-op, to tell what publishing costs in memory. ``--trace`` also runs
``tracemalloc`` in one extra child per tree (slow) and prints the allocation sites holding the most at the
largest traced point. Writes the markdown to ``bench/out/scorer_memory.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from central_scorer import append, load_events, spread, start_redis
from distillguard.state.scorer_stream import APPEND_LUA
from measure import scratch_dir, src_digest, write_report

CHILD = r"""
import functools, gc, json, os, sys, threading, time, tracemalloc
from pathlib import Path
import redis, yaml
url, variant, work, trace = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "1"

from distillguard.config import load_settings
from distillguard.detect.scanner import Scanner
from distillguard.policy import central
from distillguard.policy.engine import PolicyEngine
from distillguard.state import risk_table
from distillguard.state.scorer_stream import STREAM
from distillguard import scorer_worker

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024 * 1.048576

phases = []
snapshots = []
def wrap(owner, name, label):
    original = getattr(owner, name, None)
    if original is None:
        return
    @functools.wraps(original)
    def measured(*args, **kwargs):
        before, peak_before, cpu = rss(), hwm(), time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            row = {"phase": label, "rss_before": round(before, 1), "rss_after": round(rss(), 1), "hwm_before": round(peak_before, 1),
                   "hwm_after": round(hwm(), 1), "cpu_s": round(time.thread_time() - cpu, 3)}
            if trace:
                current, peak = tracemalloc.get_traced_memory()
                row["traced_mb"] = round(current / 1e6, 1)
                row["traced_peak_mb"] = round(peak / 1e6, 1)
                if not snapshots or current > snapshots[0][0]:
                    snapshots[:] = [(current, label, len(phases), tracemalloc.take_snapshot())]
            phases.append(row)
    setattr(owner, name, measured)

wrap(Scanner, "_refresh", "  Scanner._refresh (evidence of the updated accounts)")
wrap(Scanner, "_clusters", "  Scanner._clusters (clustering)")
wrap(Scanner, "report", "Scanner.report")
wrap(PolicyEngine, "_on_report", "engine._on_report")
wrap(risk_table.RiskTablePublisher, "publish", "risk_table.publish")
wrap(scorer_worker, "settle_heap", "settle_heap")
if variant == "nopublish":
    risk_table.RiskTablePublisher.publish = lambda self, entries: risk_table.PublishStats()

client = redis.Redis.from_url(url)
config = {"database": f"sqlite:///{work / 'store.db'}", "state": url, "log_level": "warning",
          "detection": {"scorer": "central", "scorer_backlog_max": 10_000_000, "replay_max_events": 0}}
(work / "scorer.yaml").write_text(yaml.safe_dump(config))
settings = load_settings(str(work / "scorer.yaml"))
base_rss, base_hwm = rss(), hwm()
if trace:
    tracemalloc.start(1)
stop = threading.Event()
runner = threading.Thread(target=central.run_scorer, args=(settings, stop))
cpu0, wall0 = time.process_time(), time.monotonic()
runner.start()
first = last = None
total = int(client.xlen(STREAM))
while True:
    n = int(client.xlen(STREAM))
    now = time.monotonic()
    if first is None and n < total:
        first = now
    if n == 0:
        last = now
        break
    time.sleep(0.1)
cpu_drain = time.process_time() - cpu0
reports = sum(1 for p in phases if p["phase"] == "Scanner.report")
while sum(1 for p in phases if p["phase"] == "settle_heap") <= reports:  # the report after the last batch
    time.sleep(0.1)
stop.set()
runner.join(120)
out = {"variant": variant, "base_rss": round(base_rss, 1), "base_hwm": round(base_hwm, 1), "hwm": round(hwm(), 1),
       "rss_end": round(rss(), 1), "events": total, "drain_s": last - first, "drain_cpu_s": cpu_drain, "phases": phases,
       "sqlalchemy_loaded": "sqlalchemy" in sys.modules}
if snapshots:
    current, label, index, snap = snapshots[0]
    stats = snap.statistics("lineno")
    out["trace_at"] = {"phase": label, "index": index, "traced_mb": round(current / 1e6, 1),
                       "top": [[str(s.traceback[0]), round(s.size / 1e6, 2), s.count] for s in stats[:25]]}
    by_file = snap.statistics("filename")
    out["trace_files"] = [[str(s.traceback[0]).split(":")[0], round(s.size / 1e6, 2), s.count] for s in by_file[:20]]
print(json.dumps(out))
"""


def run_child(src: str, events: list[bytes], url: str, variant: str, work: Path, trace: bool) -> dict[str, Any]:
    """Fill the stream with ``events`` (the replicas' append script), then run one scorer child over it."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    append(client, client.register_script(APPEND_LUA), events, len(events) + 1)
    client.close()
    bench = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, bench])}
    directory = Path(tempfile.mkdtemp(dir=work))
    done = subprocess.run([sys.executable, "-c", CHILD, url, variant, str(directory), "1" if trace else "0"],
                          capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"child {src} {variant} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def peak_phase(run: dict[str, Any]) -> str:
    """The phase during which the peak was last raised, and by how much."""
    best = None
    for i, p in enumerate(run["phases"]):
        if p["hwm_after"] > p["hwm_before"] + 1:
            best = (i, p)
    if best is None:
        return "between phases"
    i, p = best
    return f"{p['phase']} #{i} (+{p['hwm_after'] - p['hwm_before']:.0f} MB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trees", default="tree=" + str(Path(__file__).resolve().parent.parent / "src"))
    parser.add_argument("--variants", default="publish,nopublish")
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()
    began = time.perf_counter()
    digest = src_digest()
    load = os.getloadavg()[0]
    trees = dict(item.split("=", 1) for item in args.trees.split(","))
    variants = args.variants.split(",")
    lines, labels = load_events(args.events)
    events = spread(lines, args.accounts, labels)
    work = scratch_dir("dg-scorer-mem-")
    del lines
    redis_proc, url = start_redis(work)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    traces: dict[str, dict[str, Any]] = {}
    try:
        for r in range(args.rounds):
            for tree, src in trees.items():
                for variant in variants:
                    run = run_child(src, events, url, variant, work, False)
                    results.setdefault((tree, variant), []).append(run)
                    print(f"  round {r + 1} {tree} {variant}: peak {run['hwm']:,.0f} MB, {run['events'] / run['drain_s']:,.0f} ev/s, "
                          f"{run['events'] / run['drain_cpu_s']:,.0f} ev/CPU-s; peak in {peak_phase(run)}", file=sys.stderr)
        if args.trace:
            for tree, src in trees.items():
                traces[tree] = run_child(src, events, url, variants[0], work, True)
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
    out = [f"# Central scorer memory by phase ({args.events:,} events over {args.accounts:,} accounts)", "",
           f"{os.cpu_count()} cores, load average {load:.2f} at start, shared with other work. Each row: one child "
           f"interpreter running `run_scorer` in process over the drained stream; rounds alternate the rows.", "",
           "| tree | variant | peak RSS MB (each round) | median | RSS before the scorer started | peak reached in (last round) "
           "| events per CPU-s (median) | SQLAlchemy imported |",
           "|---|---|---|---:|---:|---|---:|---|"]
    for (tree, variant), runs in results.items():
        out.append(f"| {tree} | {variant} | {' / '.join(format(r['hwm'], ',.0f') for r in runs)} | "
                   f"{statistics.median(r['hwm'] for r in runs):,.0f} | {runs[-1]['base_rss']:,.0f} | {peak_phase(runs[-1])} | "
                   f"{statistics.median(r['events'] / r['drain_cpu_s'] for r in runs):,.0f} | {runs[-1]['sqlalchemy_loaded']} |")
    for (tree, variant), runs in results.items():
        out += ["", f"## {tree}, {variant}: phases of the last round (MB)", "",
                "| # | phase | RSS before → after | peak before → after | CPU s |", "|---:|---|---|---|---:|"]
        for i, p in enumerate(runs[-1]["phases"]):
            out.append(f"| {i} | {p['phase']} | {p['rss_before']:,.0f} → {p['rss_after']:,.0f} | {p['hwm_before']:,.0f} → "
                       f"{p['hwm_after']:,.0f} | {p['cpu_s']:.2f} |")
    for tree, run in traces.items():
        at = run["trace_at"]
        out += ["", f"## tracemalloc, {tree}: {at['traced_mb']:,.0f} MB traced after {at['phase']} #{at['index']}", "",
                "| allocation site | MB | blocks |", "|---|---:|---:|"]
        out += [f"| `{site}` | {mb:,.1f} | {count:,} |" for site, mb, count in at["top"]]
        out += ["", "| file | MB | blocks |", "|---|---:|---:|"]
        out += [f"| `{site}` | {mb:,.1f} | {count:,} |" for site, mb, count in run["trace_files"]]
    out += ["", "Command: `.venv/bin/python bench/scorer_memory.py " + " ".join(sys.argv[1:]) + "`"]
    write_report("scorer_memory.md", out, began, digest)


if __name__ == "__main__":
    main()
