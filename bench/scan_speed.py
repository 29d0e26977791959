"""Offline scan speed: events/s and peak RSS of `distillguard scan` vs only reading and parsing the same file.

    .venv/bin/python bench/scan_speed.py [--repeat 3] [--scenarios large default]

What is measured: ``distillguard scan FILE --out REPORT.json`` as a subprocess,
``--repeat`` times per file; wall time, CPU time (user+sys, robust when other
jobs share the machine), events/s and peak RSS of that one child (CPU from ``os.wait4``, peak from its own ``VmHWM``).
The files are the simulator's ``large`` and ``default`` scenarios (seed 7), kept
in ``bench/out/<scenario>.jsonl.gz``; ``bench/simulate_speed.py`` leaves the large
one there, and this script generates whichever is missing.

Baselines, measured in the same run on the same file, each in a fresh interpreter:

* ``gunzip+orjson``: decompress the lines and ``orjson.loads`` each — the floor
  for any scanner written in Python over this format;
* ``read_events``: distillguard's own reader (the same plus ``validate_event``
  and its ``parse_ts``), i.e. what ``scan`` pays before any detector runs.

``scan − read_events`` is the detectors' share. Each file is hard-linked first,
so every run reads the same bytes even if ``simulate_speed.py`` replaces it
meanwhile. Writes the markdown to ``bench/out/scan_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from measure import run_measured, scenario_events, src_digest, write_report

DISTILLGUARD = str(Path(sys.executable).with_name("distillguard"))

BASELINE = r"""
import gzip, sys
import orjson
mode, src = sys.argv[1], sys.argv[2]
n = 0
if mode == "gunzip+orjson":
    with gzip.open(src, "rb") as lines:
        for line in lines:
            if line.strip():
                orjson.loads(line)
                n += 1
else:
    from distillguard.events import read_events
    for _ in read_events([src]):
        n += 1
print(n)
"""
BASELINES = ("gunzip+orjson", "read_events")







def summarise(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {k: statistics.median([r[k] for r in runs]) for k in ("wall_s", "cpu_s", "rss_mb")} | {
        "wall_min": min(r["wall_s"] for r in runs), "wall_max": max(r["wall_s"] for r in runs)}


def pin_file(path: Path, directory: Path) -> Path:
    """A hard link to ``path``, so every run reads the same bytes even if the simulator replaces the file meanwhile."""
    pinned = directory / path.name
    try:
        os.link(path, pinned)
    except OSError:  # another file system: read the original
        return path
    return pinned


def bench_file(path: Path, repeat: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dg-bench-scan-") as tmp:
        report_path = Path(tmp) / "report.json"
        runs = []
        for i in range(repeat):
            run = run_measured([DISTILLGUARD, "scan", str(path), "--out", str(report_path)])
            runs.append(run)
            print(f"  scan {path.name} #{i + 1}: {run['wall_s']:.1f}s wall, {run['cpu_s']:.1f}s CPU, {run['rss_mb']:.0f} MB",
                  file=sys.stderr)
        report = json.loads(report_path.read_text())
    result["scan"] = summarise(runs)
    result["events"] = int(report["events"])
    result["accounts"] = int(report["accounts_seen"])
    result["high"] = sum(1 for a in report["accounts"] if a["risk"] == "high")
    result["clusters"] = len(report["clusters"])
    for mode in BASELINES:
        runs = []
        for _ in range(repeat):
            run = run_measured([sys.executable, "-c", BASELINE, mode, str(path)])
            if int(run["stdout"].strip()) != result["events"]:
                raise SystemExit(f"{mode} read {run['stdout'].strip()} events, scan reported {result['events']}")
            runs.append(run)
        result[mode] = summarise(runs)
        print(f"  baseline {mode} {path.name}: {result[mode]['wall_s']:.1f}s wall, {result[mode]['cpu_s']:.1f}s CPU", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenarios", nargs="+", default=["large", "default"])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    began = time.perf_counter()
    digest = src_digest()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dg-bench-scan-files-") as pinned:
        results = {name: bench_file(pin_file(scenario_events(name, args.seed), Path(pinned)), args.repeat) for name in args.scenarios}

    lines = [
        "# `distillguard scan`: throughput and memory",
        "",
        f"Medians over {args.repeat} runs per row, each a fresh process (peak RSS: the child's own VmHWM, polled). Load average at start: "
        f"{load:.2f} on {os.cpu_count()} cores — events/CPU-s is the contention-free number.",
        "",
        "| file | run | events | wall s (min–max) | CPU s | events/s (wall) | events/CPU-s | peak RSS MB | scan vs this: wall | CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        n = r["events"]
        for mode in ("scan", *BASELINES):
            m = r[mode]
            label = "**`distillguard scan`**" if mode == "scan" else f"baseline: {mode}"
            ratio = "1.00× | 1.00×" if mode == "scan" else f"{r['scan']['wall_s'] / m['wall_s']:.2f}× | {r['scan']['cpu_s'] / m['cpu_s']:.2f}×"
            rate = f"**{n / m['wall_s']:,.0f}**" if mode == "scan" else f"{n / m['wall_s']:,.0f}"
            lines.append(f"| `{name}.jsonl.gz` | {label} | {n:,} | {m['wall_s']:.1f} ({m['wall_min']:.1f}–{m['wall_max']:.1f}) | "
                         f"{m['cpu_s']:.1f} | {rate} | {n / m['cpu_s']:,.0f} | {m['rss_mb']:.0f} | {ratio} |")
    lines.append("")
    for name, r in results.items():
        detect = r["scan"]["cpu_s"] - r["read_events"]["cpu_s"]
        reader = r["read_events"]["cpu_s"] - r["gunzip+orjson"]["cpu_s"]
        lines.append(f"- `{name}`: {r['accounts']:,} accounts, {r['high']:,} high risk, {r['clusters']} clusters. CPU split: "
                     f"gunzip+parse {r['gunzip+orjson']['cpu_s']:.1f} s ({r['gunzip+orjson']['cpu_s'] / r['scan']['cpu_s']:.0%}), "
                     f"validation in `read_events` {reader:.1f} s ({reader / r['scan']['cpu_s']:.0%}), "
                     f"detectors + report {detect:.1f} s ({detect / r['scan']['cpu_s']:.0%}).")
    if len(results) >= 2:
        ordered = sorted(results.items(), key=lambda kv: kv[1]["events"])
        (a, ra), (b, rb) = ordered[0], ordered[-1]
        lines.append(f"- Memory: peak RSS {ra['scan']['rss_mb']:.0f} MB for `{a}` ({ra['events']:,} events, {ra['accounts']:,} accounts) vs "
                     f"{rb['scan']['rss_mb']:.0f} MB for `{b}` ({rb['events']:,} events, {rb['accounts']:,} accounts): "
                     f"{rb['events'] / ra['events']:.1f}× the events, {rb['scan']['rss_mb'] / ra['scan']['rss_mb']:.2f}× the memory.")
    write_report("scan_speed.md", lines, began, digest)


if __name__ == "__main__":
    main()
