"""The limiter's memory per request (``state: memory``): the window logs hold every request of the last 60 s.

    .venv/bin/python bench/limiter_memory.py [--rate 6800] [--requests 408000]

Admits ``--requests`` requests at ``--rate`` per second (an injected clock, so
nothing waits) on one key and its account, each settled with its real usage
as the gateway does, and prints the resident memory this added (``VmRSS``) and
what Python allocated for it (``tracemalloc``), per request in the window, and
the CPU time of one admission and its settlement once the window is full (one
entry leaves per request, as in a steady stream). At
6,800 requests/s, the gateway's rate on one key at c=64 on a quiet machine, a
minute's log is 408,000 requests. Run it with ``PYTHONPATH=<other tree>/src``
to measure another revision the same way.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from pathlib import Path

from distillguard.state import MemoryState, Quota, Refusal


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("no VmRSS in /proc/self/status (Linux only)")


def fill(state: MemoryState, clock: list[float], requests: int, rate: float) -> None:
    quotas = (Quota("key:k", 10**9, 10**12, None, None), Quota("acct:a", 10**9, 10**12, None, None))
    for _ in range(requests):
        clock[0] += 1 / rate
        admission = state.admit_now(quotas, 300, "r")
        assert admission is not None and not isinstance(admission, Refusal)
        state.settle(admission, 265)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=6800.0)
    parser.add_argument("--requests", type=int, default=408_000)
    args = parser.parse_args()
    clock = [1_800_000_000.0]
    state = MemoryState(clock=lambda: clock[0])
    gc.collect()
    before = rss_kb()
    fill(state, clock, args.requests, args.rate)
    gc.collect()
    in_window = min(args.requests, int(args.rate * 60))
    grown = rss_kb() - before
    steady = max(1, args.requests // 4)
    started = time.process_time()
    fill(state, clock, steady, args.rate)
    cpu_us = (time.process_time() - started) * 1e6 / steady
    traced_state = MemoryState(clock=lambda: clock[0])
    tracemalloc.start()
    fill(traced_state, clock, min(args.requests, 100_000), args.rate)
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"{args.requests:,} requests at {args.rate:,.0f}/s on one key and its account: ~{in_window:,} in the window; "
          f"RSS +{grown / 1024:.1f} MB ({grown * 1024 / in_window:.0f} B per request); "
          f"tracemalloc {traced / min(args.requests, 100_000, in_window):.0f} B per request; "
          f"{cpu_us:.2f} µs CPU per admission and settlement with the window full")


if __name__ == "__main__":
    main()
