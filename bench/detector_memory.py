"""Detector memory per account (issue #13 deliverable 3): what each detector, the whole Scanner and its report hold.

    .venv/bin/python bench/detector_memory.py [--accounts 30000] [--events-per-account 3]

The events are ``bench/central_scorer.py``'s: the ``default`` scenario spread over exactly ``--accounts``
accounts (hydras and resellers whole, every other account's events dealt to clones), as the central scorer
receives them. Bytes are counted with ``tracemalloc`` (what Python allocated and still holds, not RSS), so
they do not depend on the machine's load. Per detector: the bytes its state holds after taking every event,
divided by the accounts. Then the whole ``Scanner`` (every detector, attribution and its own tables), and
the same after a report, which keeps every account's report entry for the next incremental report.
Writes the markdown to ``bench/out/detector_memory.md``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from typing import Any

import orjson

from central_scorer import load_events, spread
from measure import src_digest, write_report


def held(work: Any) -> int:
    """Bytes allocated by ``work()`` and still held after it."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    work()
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - before


def main() -> None:
    from distillguard.detect.context import EventContext
    from distillguard.detect.scanner import Scanner
    from distillguard.events import parse_ts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=30_000)
    parser.add_argument("--events-per-account", type=int, default=3)
    args = parser.parse_args()
    began = time.perf_counter()
    digest = src_digest()
    lines, labels = load_events(args.accounts * args.events_per_account)
    events = [orjson.loads(line) for line in spread(lines, args.accounts, labels)]
    for event in events:
        event["_t"] = parse_ts(event["ts"])
    contexts = [EventContext(event) for event in events]
    tracemalloc.start()
    probe = Scanner()
    rows: list[tuple[str, int]] = []
    for detector in [*probe.detectors, probe.fingerprints]:
        if detector in probe._context_readers:
            def feed(d: Any = detector) -> None:
                for context in contexts:
                    d.update_with(context)
                getattr(d, "flush", lambda: None)()
        else:
            def feed(d: Any = detector) -> None:
                for event in events:
                    d.update(event)
        rows.append((getattr(detector, "name", type(detector).__name__), held(feed)))
        print(f"  {rows[-1][0]}: {rows[-1][1] / args.accounts:,.0f} B/account", file=sys.stderr)
    del probe
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    scanner = Scanner()
    for event in events:
        scanner.update(event)
    gc.collect()
    state = tracemalloc.get_traced_memory()[0] - base
    report = scanner.report()
    del report  # the report's list goes; the entries the scanner keeps for its next report stay
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    k = args.accounts
    out = [
        "# Detector memory per account",
        "",
        f"{k:,} accounts, {len(events):,} events ({args.events_per_account} per account on average) of the `default` "
        "scenario spread as in `bench/central_scorer.py`; bytes from `tracemalloc`.",
        "",
        "| detector | bytes per account |",
        "|---|---:|",
        *[f"| `{name}` | {size / k:,.0f} |" for name, size in sorted(rows, key=lambda r: -r[1])],
        f"| sum of the detectors alone | {sum(size for _, size in rows) / k:,.0f} |",
        f"| the whole Scanner after its updates | **{state / k:,.0f}** |",
        f"| the same with its report entries kept (after a report) | **{kept / k:,.0f}** |",
        f"| → for 100,000 such accounts | {kept / k * 100_000 / 1e9:.2f} GB |",
        "",
        "Command: `.venv/bin/python bench/detector_memory.py " + " ".join(sys.argv[1:]) + "`",
    ]
    write_report("detector_memory.md", out, began, digest)


if __name__ == "__main__":
    main()
