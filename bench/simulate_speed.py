"""Simulator speed: time, CPU and peak RSS of `distillguard simulate` vs just writing the same events.

    .venv/bin/python bench/simulate_speed.py [--repeat 3] [--scenario large] [--seed 7]

What is measured: ``distillguard simulate --scenario large --seed 7 --out X.jsonl.gz
--labels L.json`` as a subprocess, ``--repeat`` times; wall time, CPU time
(user+sys, robust when other jobs share the machine) and peak RSS of that one
child (CPU from ``os.wait4``, peak from its own ``VmHWM``), events/s and time per 1M events. The ``default`` scenario
(~10× fewer events) is run as well, so the peak RSS of two sizes shows whether
memory grows with the run. The target from the issue is 1M events in ≤ 3 min
with bounded memory.

Baselines, measured in the same run on the file the simulator just wrote, each
in a fresh interpreter so start-up is charged the same way:

* ``gunzip``: read and decompress the lines (the cost the baselines below include);
* ``gunzip+parse``: the same plus ``orjson.loads`` per line;
* ``regzip``: decompress and write the same bytes to a new gzip at the
  simulator's level (5) — the floor for writing this many events;
* ``EventWriter``: parse each line and write it back through
  ``distillguard.events.EventWriter`` — exactly the simulator's write path.

``EventWriter − gunzip+parse`` is the write share of a simulation; the rest is
the simulation itself. The last large output is kept as ``bench/out/large.jsonl.gz``
(+ ``large.labels.json``) for ``bench/scan_speed.py``. Writes the markdown to
``bench/out/simulate_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from measure import OUT, run_measured, src_digest, write_report

DISTILLGUARD = str(Path(sys.executable).with_name("distillguard"))
TARGET_S_PER_M = 180.0

BASELINE = r"""
import gzip, sys
import orjson
from distillguard.events import EventWriter
mode, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
n = 0
with gzip.open(src, "rb") as lines:
    if mode == "gunzip":
        for line in lines:
            n += 1
    elif mode == "gunzip+parse":
        for line in lines:
            orjson.loads(line)
            n += 1
    elif mode == "regzip":
        with gzip.open(dst, "wb", compresslevel=5) as out:
            for line in lines:
                out.write(line)
                n += 1
    elif mode == "EventWriter":
        with EventWriter(dst) as writer:
            for line in lines:
                writer.write(orjson.loads(line))
                n += 1
print(n)
"""
BASELINES = ("gunzip", "gunzip+parse", "regzip", "EventWriter")







def median(values: list[float]) -> float:
    return statistics.median(values)


def summarise(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {k: median([r[k] for r in runs]) for k in ("wall_s", "cpu_s", "rss_mb")} | {
        "wall_min": min(r["wall_s"] for r in runs), "wall_max": max(r["wall_s"] for r in runs),
        "rss_max": max(r["rss_mb"] for r in runs)}


def simulate(scenario: str, seed: int, repeat: int, keep: Path | None, workdir: Path) -> tuple[dict[str, float], int, Path]:
    runs = []
    events = 0
    out = workdir / f"{scenario}.jsonl.gz"
    labels = workdir / f"{scenario}.labels.json"
    for i in range(repeat):
        run = run_measured([DISTILLGUARD, "simulate", "--scenario", scenario, "--seed", str(seed), "--out", str(out),
                            "--labels", str(labels)])
        count = int(json.loads(labels.read_text())["events"])
        if events and count != events:
            raise SystemExit(f"{scenario}: run {i} wrote {count} events, an earlier run {events} (not deterministic?)")
        events = count
        runs.append(run)
        print(f"  simulate {scenario} #{i + 1}: {run['wall_s']:.1f}s wall, {run['cpu_s']:.1f}s CPU, {run['rss_mb']:.0f} MB, "
              f"{count:,} events", file=sys.stderr)
    if keep is not None:  # atomically, so a scan reading the previous copy is not disturbed
        keep.mkdir(parents=True, exist_ok=True)
        for src, name in ((out, f"{scenario}.jsonl.gz"), (labels, f"{scenario}.labels.json")):
            partial = keep / f".{name}.partial"
            shutil.copyfile(src, partial)
            os.replace(partial, keep / name)
    return summarise(runs), events, out


def baselines(src: Path, events: int, repeat: int, workdir: Path) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for mode in BASELINES:
        runs = []
        for _ in range(repeat):
            run = run_measured([sys.executable, "-c", BASELINE, mode, str(src), str(workdir / "copy.jsonl.gz")])
            if int(run["stdout"].strip()) != events:
                raise SystemExit(f"baseline {mode} read {run['stdout'].strip()} lines, expected {events}")
            runs.append(run)
        results[mode] = summarise(runs)
        print(f"  baseline {mode}: {results[mode]['wall_s']:.1f}s wall, {results[mode]['cpu_s']:.1f}s CPU", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenario", default="large")
    parser.add_argument("--small-scenario", default="default", help="a smaller scenario, to see how memory scales")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    began = time.perf_counter()
    digest = src_digest()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dg-bench-sim-") as tmp:
        workdir = Path(tmp)
        big, n_big, big_path = simulate(args.scenario, args.seed, args.repeat, OUT, workdir)
        size_mb = big_path.stat().st_size / 1e6
        base = baselines(big_path, n_big, args.repeat, workdir)
        small, n_small, _ = simulate(args.small_scenario, args.seed, args.repeat, None, workdir)

    def row(name: str, r: dict[str, float], n: int, ref: dict[str, float] | None) -> str:
        ratio = f"{r['wall_s'] / ref['wall_s']:.2f}× | {r['cpu_s'] / ref['cpu_s']:.2f}×" if ref else "1.00× | 1.00×"
        return (f"| {name} | {n:,} | **{r['wall_s']:.1f}** ({r['wall_min']:.1f}–{r['wall_max']:.1f}) | {r['cpu_s']:.1f} | "
                f"{n / r['wall_s']:,.0f} | {n / r['cpu_s']:,.0f} | {r['wall_s'] / n * 1e6:.0f} | {r['rss_mb']:.0f} (max {r['rss_max']:.0f}) | {ratio} |")

    write_cpu = base["EventWriter"]["cpu_s"] - base["gunzip+parse"]["cpu_s"]
    gzip_cpu = base["regzip"]["cpu_s"] - base["gunzip"]["cpu_s"]
    per_m = big["wall_s"] / n_big * 1e6
    per_m_cpu = big["cpu_s"] / n_big * 1e6
    lines = [
        "# `distillguard simulate`: time and memory",
        "",
        f"`distillguard simulate --scenario {args.scenario} --seed {args.seed}` writes **{n_big:,} events** "
        f"({size_mb:,.0f} MB gzip JSONL); medians over {args.repeat} runs, each a fresh process (peak RSS: the child's own VmHWM, polled). "
        f"Load average at start: {load:.2f} on {os.cpu_count()} cores — CPU s (user+sys) is the contention-free number.",
        "",
        "| run | events | wall s (min–max) | CPU s | events/s (wall) | events/CPU-s | wall s per 1M events | peak RSS MB | vs simulate: wall | CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        row(f"**simulate `{args.scenario}`**", big, n_big, None),
        row(f"simulate `{args.small_scenario}`", small, n_small, big),
    ]
    for mode in BASELINES:
        lines.append(row(f"baseline: {mode}", base[mode], n_big, big))
    lines += [
        "",
        f"- Target 1M events ≤ 180 s: **{per_m:.0f} s wall / {per_m_cpu:.0f} s CPU per 1M events** "
        f"({'met' if per_m <= TARGET_S_PER_M else 'MISSED on wall clock'}{'' if per_m_cpu <= TARGET_S_PER_M else ', MISSED on CPU'}); "
        f"the whole {n_big:,}-event run takes {big['wall_s']:.0f} s wall.",
        f"- Bounded memory: peak RSS {small['rss_mb']:.0f} MB for {n_small:,} events vs {big['rss_mb']:.0f} MB for {n_big:,} "
        f"({n_big / n_small:.1f}× the events, {big['rss_mb'] / small['rss_mb']:.2f}× the memory).",
        f"- Write share: serialising + gzip through `EventWriter` costs ≈ {write_cpu:.1f} CPU s "
        f"({write_cpu / big['cpu_s']:.0%} of the simulation's CPU; gzip level 5 alone ≈ {gzip_cpu:.1f} s, "
        f"{gzip_cpu / big['cpu_s']:.0%}); the remaining ≈ {big['cpu_s'] - write_cpu:.0f} CPU s "
        f"({1 - write_cpu / big['cpu_s']:.0%}) is generating the events.",
    ]
    write_report("simulate_speed.md", lines, began, digest)


if __name__ == "__main__":
    main()
