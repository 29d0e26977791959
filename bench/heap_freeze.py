"""The scorers' heap freeze over a long run: RSS and the permanent generation report by report, three ways, one run.

    .venv/bin/python bench/heap_freeze.py [--passes 2] [--reports-per-pass 10] [--events 60000]

A scorer freezes its heap after each report (``scorer_worker.settle_heap``). This feeds the ``default``
scenario's first ``--events`` events (seed 7, ``bench/out/default.jsonl.gz``, generated when missing) to a ``Scanner``
``--passes`` times — the second pass sends the same accounts' events again, so every report rebuilds
entries and replaces state rather than adding accounts — with a report every 1/``--reports-per-pass`` of a
pass, each in a fresh interpreter, for three variants:

* ``none``: no freeze (CPython's collector as it is);
* ``freeze``: ``gc.freeze()`` after each report (the scorers before this change);
* ``collect+freeze``: ``gc.collect()`` then ``gc.freeze()`` (``settle_heap`` now).

Printed per variant: RSS after the first and the last report of each pass, the permanent generation's size
(``gc.get_freeze_count()``) at the same points, garbage found when the heap is unfrozen at the end (what a
freeze held for good), events per CPU-s, and the CPU the settle took as a share of the reports'. Writes the
markdown to ``bench/out/heap_freeze.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from measure import scenario_events, src_digest, write_report

CHILD = r"""
import gc, gzip, json, sys, time
import orjson
from distillguard.detect.scanner import Scanner
path, variant, passes, reports, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
with gzip.open(path, "rb") as f:
    lines = [line for line in f if line.strip()][:limit]
every = max(1, len(lines) // reports)
scanner = Scanner()

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6

rows, report_cpu, settle_cpu = [], 0.0, 0.0
began = time.process_time()
for p in range(passes):
    for i, line in enumerate(lines):
        scanner.update(orjson.loads(line))
        if (i + 1) % every == 0 or i + 1 == len(lines):
            t = time.process_time()
            scanner.report()
            report_cpu += time.process_time() - t
            t = time.process_time()
            if variant == "collect+freeze":
                gc.collect()
                gc.freeze()
            elif variant == "freeze":
                gc.freeze()
            settle_cpu += time.process_time() - t
            rows.append([p, round(rss_mb(), 1), gc.get_freeze_count()])
cpu = time.process_time() - began
gc.unfreeze()
print(json.dumps({"rows": rows, "cpu": cpu, "events": scanner.events, "report_cpu": report_cpu, "settle_cpu": settle_cpu,
                  "trapped": gc.collect(), "accounts": len(scanner.accounts)}))
"""

VARIANTS = ("none", "freeze", "collect+freeze")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--reports-per-pass", type=int, default=10)
    parser.add_argument("--events", type=int, default=60_000, help="the first N events of the scenario make a pass")
    args = parser.parse_args()
    started = time.perf_counter()
    digest = src_digest()
    path = scenario_events("default", 7)
    results = {}
    for variant in VARIANTS:
        done = subprocess.run([sys.executable, "-c", CHILD, str(path), variant, str(args.passes), str(args.reports_per_pass),
                               str(args.events)],
                              check=True, capture_output=True, text=True)
        results[variant] = json.loads(done.stdout)
    lines = [f"`python bench/heap_freeze.py --passes {args.passes} --reports-per-pass {args.reports_per_pass} --events {args.events}` "
             f"(`default`, seed 7: {results['none']['events'] // args.passes:,} events and {results['none']['accounts']} accounts per pass)", "",
             "| variant | " + " | ".join(f"pass {p + 1}: RSS MB first → last report" for p in range(args.passes))
             + " | frozen objects, last report of each pass | garbage held by the freeze at the end | events per CPU-s | settle CPU / report CPU |",
             "|---|" + "---:|" * args.passes + "---:|---:|---:|---:|"]
    for variant, r in results.items():
        cells = []
        frozen = []
        for p in range(args.passes):
            mine = [row for row in r["rows"] if row[0] == p]
            cells.append(f"{mine[0][1]:.1f} → {mine[-1][1]:.1f}")
            frozen.append(f"{mine[-1][2]:,}")
        share = r["settle_cpu"] / r["report_cpu"] if r["report_cpu"] else 0.0
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {' / '.join(frozen)} | {r['trapped']} | "
                     f"{r['events'] / r['cpu']:,.0f} | {share:.3f} |")
    write_report("heap_freeze.md", lines, started, digest)


if __name__ == "__main__":
    main()
