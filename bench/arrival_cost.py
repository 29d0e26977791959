"""What arrival surges (detect/arrivals.py) add to one clustering at 10,000 and 100,000 accounts.

    PYTHONPATH=src .venv/bin/python bench/arrival_cost.py [--accounts 10000 100000] [--repeat 3]

The state: ``N`` quiet accounts (2–4 requests each, first seen at any time of a week, their own clients, parameters
and home addresses) and one 500-account campaign of aged accounts started within two hours, two requests each on
a new residential address each. One ``find_clusters`` call on that state without account metadata (what the online
scorer and ``scan`` without ``--accounts`` do), timed in CPU seconds (``time.process_time``) in the same process
with arrival surges switched off (``clustering.arrival_blocks`` replaced by a no-op: the tree before them) and on;
medians of ``--repeat``. Then ``arrival_blocks`` alone: its CPU time and the peak of what it allocates
(``tracemalloc``). Also printed: the blocks found and the largest clusters, so a run that found nothing cannot pass
for a cheap one.
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc

from cohort_cost import (  # the same population's pieces and timing as cohorts' cost
    CLIENTS,
    T0,
    WORDS,
    event,
    timed,
)
from distillguard.detect import clustering
from distillguard.detect.arrivals import arrival_blocks
from distillguard.detect.attribution import AttributionCollector
from distillguard.detect.templates import TemplatedPrompts

DAY = 86_400.0


def build(n: int) -> tuple[AttributionCollector, TemplatedPrompts, dict[str, float]]:
    rng = random.Random(n)
    collector, templates = AttributionCollector(), TemplatedPrompts()
    events = []
    for u in range(n):
        name = f"acct{u:06d}"
        header, params = rng.choice(CLIENTS), {"max_tokens": rng.choice([None, 1024, 4096]), "temperature": rng.choice([None, 0.7, 1.0])}
        home = f"10.{rng.randrange(256)}.{rng.randrange(256)}.1"
        for _ in range(rng.randint(2, 4)):
            events.append(event(name, T0 + rng.uniform(0, 7 * DAY), f"tell me about {rng.choice(WORDS)} {rng.randrange(10_000)} please now",
                                header, params, home))
    start = T0 + 3.2 * DAY
    for k in range(500):
        name = f"aged{k:03d}"
        t = start + rng.uniform(0, 7200)
        for _ in range(2):
            events.append(event(name, t, f"How many {rng.choice(WORDS)} remain after {rng.randrange(1000)} weeks in total",
                                rng.choice(CLIENTS), {"max_tokens": rng.choice([None, 1024]), "temperature": 0.7},
                                f"172.{rng.randrange(16, 32)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"))
            t += rng.uniform(1, 10) * 3600
    for e in sorted(events, key=lambda e: e["_t"]):
        collector.update(e)
        templates.update(e)
    return collector, templates, {a: 0.0 for a in collector.accounts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("| accounts | find_clusters, arrivals off (CPU s) | arrivals on | arrivals' cost | arrival_blocks alone (CPU s) "
          "| its allocation peak (MB) | blocks (accounts) | largest clusters with arrivals |")
    print("|---:|---:|---:|---:|---:|---:|---|---|")
    for n in args.accounts:
        collector, templates, scores = build(n)
        real = clustering.arrival_blocks
        clustering.arrival_blocks = lambda *a, **k: []  # type: ignore[assignment]  # the tree before arrival surges
        try:
            off, _ = timed(collector, templates, None, scores, args.repeat)
        finally:
            clustering.arrival_blocks = real
        on, sizes = timed(collector, templates, None, scores, args.repeat)
        active = collector.accounts
        activity = {a: (s.first_seen, s.requests) for a, s in active.items()}
        end = max(s.last_seen for s in active.values())
        started = time.process_time()
        blocks = arrival_blocks(activity, end, frozenset())
        alone = time.process_time() - started
        tracemalloc.start()
        arrival_blocks(activity, end, frozenset())
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        print(f"| {n + 500:,} | {off:.3f} | {on:.3f} | {on - off:+.3f} | {alone:.3f} | {peak:.1f} | "
              f"{[len(b.members) for b in blocks]} | {sizes[:3]} |", flush=True)


if __name__ == "__main__":
    main()
