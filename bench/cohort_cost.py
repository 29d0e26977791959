"""What cohorts (detect/cohorts.py) add to one clustering at 10,000 and 100,000 accounts.

    PYTHONPATH=src .venv/bin/python bench/cohort_cost.py [--accounts 10000 100000] [--repeat 3]

The state: ``N`` quiet accounts (2–4 requests each: the many light accounts of a fleet-sized log, created over
two years, their own clients, parameters and questions) and one 500-account campaign created in one afternoon,
two requests each. One ``find_clusters`` call on that state, timed in CPU seconds (``time.process_time``) three
ways in the same process: without account metadata (no bursts: the baseline, what the online scorer does), with it,
and with it but cohorts switched off (``clustering._cohort_links`` replaced by a no-op: what the tree before
cohorts did with metadata). Medians of ``--repeat``. Also printed: the cohorts found and the clusters' sizes, so a
run that found nothing cannot pass for a cheap one.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from distillguard.detect import clustering
from distillguard.detect.accounts import AccountMeta
from distillguard.detect.attribution import AttributionCollector
from distillguard.detect.clustering import ClusterCache, find_clusters
from distillguard.detect.templates import TemplatedPrompts

T0 = 1_790_000_000.0
CLIENTS = [f"fp-{i}" for i in range(12)]
WORDS = ["integrals", "verbs", "taxes", "bread", "lifetimes", "tectonics", "Rome", "bonds", "leaves", "hashes", "chess", "tides"]


def event(account: str, t: float, prompt: str, header: str, params: dict[str, Any], ip: str) -> dict[str, Any]:
    return {"account_id": account, "_t": t, "client": {"ip": ip, "header_fp": header, "geo": {"asn": 3320, "hosting": False}},
            "request": {"messages": [{"role": "user", "content": prompt}], "params": params}}


def build(n: int) -> tuple[AttributionCollector, TemplatedPrompts, dict[str, AccountMeta], dict[str, float]]:
    rng = random.Random(n)
    collector, templates = AttributionCollector(), TemplatedPrompts()
    meta: dict[str, AccountMeta] = {}

    def feed(e: dict[str, Any]) -> None:
        collector.update(e)
        templates.update(e)

    for u in range(n):
        name = f"acct{u:06d}"
        meta[name] = AccountMeta(name, created_at=T0 - rng.uniform(1, 730) * 86_400)
        header, params = rng.choice(CLIENTS), {"max_tokens": rng.choice([None, 1024, 4096]), "temperature": rng.choice([None, 0.7, 1.0])}
        for _ in range(rng.randint(2, 4)):
            feed(event(name, T0 + rng.uniform(0, 86_400), f"tell me about {rng.choice(WORDS)} {rng.randrange(10_000)} please now",
                       header, params, f"10.{rng.randrange(256)}.{rng.randrange(256)}.1"))
    for k in range(500):
        name = f"hydra{k:03d}"
        meta[name] = AccountMeta(name, created_at=T0 - 86_400 + rng.uniform(0, 5 * 3600))
        for _ in range(2):
            feed(event(name, T0 + rng.uniform(0, 86_400), f"How many {rng.choice(WORDS)} remain after {rng.randrange(1000)} weeks in total",
                       "fp-0", {"max_tokens": rng.choice([None, 1024]), "temperature": 0.7}, f"172.16.{rng.randrange(256)}.{rng.randrange(256)}"))
    return collector, templates, meta, {a: 0.0 for a in collector.accounts}


def timed(collector: AttributionCollector, templates: TemplatedPrompts, meta: dict[str, AccountMeta] | None, scores: dict[str, float],
          repeat: int) -> tuple[float, list[int]]:
    costs, sizes = [], []
    for _ in range(repeat):
        started = time.process_time()
        found = find_clusters(collector, templates, {}, scores, meta, ClusterCache())
        costs.append(time.process_time() - started)
        sizes = sorted((len(c.accounts) for c in found), reverse=True)
    return statistics.median(costs), sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("| accounts | without metadata (CPU s) | metadata, cohorts off | metadata, cohorts on | cohorts' cost | largest clusters with cohorts |")
    print("|---:|---:|---:|---:|---:|---|")
    for n in args.accounts:
        collector, templates, meta, scores = build(n)
        bare, _ = timed(collector, templates, None, scores, args.repeat)
        real = clustering._cohort_links
        clustering._cohort_links = lambda *a, **k: {}  # type: ignore[assignment]  # the tree before cohorts
        try:
            off, _ = timed(collector, templates, meta, scores, args.repeat)
        finally:
            clustering._cohort_links = real
        on, sizes = timed(collector, templates, meta, scores, args.repeat)
        print(f"| {n + 500:,} | {bare:.3f} | {off:.3f} | {on:.3f} | {on - off:+.3f} | {sizes[:3]} |", flush=True)


if __name__ == "__main__":
    main()
