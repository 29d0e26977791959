"""Clustering's cost when many accounts fire together, this tree against a baseline tree, on one scanned state each.

    .venv/bin/python bench/cofiring_cost.py --baseline-src /tmp/main/src [--sizes 400 2000 10000] [--baseline-cpu 300]

Which accounts fire in the same minutes is the data's choice, and an attacker's: a crowd of ``N`` accounts made to fire
in the same 24 five-minute buckets (each also active in 3 buckets of its own, so no two have the same bucket set and
deduplication alone cannot help), beside 600 ordinary accounts with their own hours and, hidden in the crowd, a
20-account hydra that fires with it and shares a private wrapper and a hosting /24. For each ``N`` the population is
scanned once (``Scanner``), its clustering inputs are pickled, and ``find_clusters`` is run on them in a child process
with this tree's package and with the baseline's (``--baseline-src``, e.g. ``git archive main src | tar -x -C /tmp/main``),
one after the other: CPU seconds, exact bucket-set checks (this tree: ``ClusterCache.sync_checks``; the baseline has no
counter, so its ``len(ClusterCache.overlaps)``, which with a fresh cache is the same count), candidate pairs scored,
the child's peak RSS, and whether the hydra is one cluster holding nothing else. A baseline child is stopped after
``--baseline-cpu`` CPU seconds, and any child that maps more than ``--memory-mb`` (the table says which and why); the
work the baseline would have done is then ``N²/2`` checks and more.
Writes ``bench/out/cofiring_cost.md``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from measure import ROOT, src_digest, write_report

T0 = 1_790_000_000.0
DAY = 86_400.0
BUCKET = 300.0
ROUNDS = 24
HYDRA = 20
ORDINARY = 600
WORDS = ["water cycle", "binary trees", "French revolution", "photosynthesis", "compound interest", "TCP congestion", "Krebs cycle",
         "Bayes", "plate tectonics", "Roman republic", "hash tables", "supply and demand", "immune system", "tunnelling"]
VERBS = ["Describe", "Compare", "Prove", "Summarise", "List", "Derive", "Critique", "Outline", "Estimate", "Explain"]
WRAPPER = "Solve the following problem for the corpus.\n\n{task}\n\nReturn the final result in a fenced block."


def event(account: str, t: float, prompt: str, ip: str, hosting: bool = False) -> dict[str, Any]:
    from distillguard.events import format_ts

    return {"v": 1, "ts": format_ts(t), "request_id": f"req_{account}_{t}", "account_id": account, "org_id": None,
            "endpoint": "openai.chat", "model": "m1",
            "client": {"ip": ip, "user_agent": "ua", "header_fp": "fp-openai", "geo": {"country": "US", "asn": 3320, "hosting": hosting}},
            "attestation": None,
            "request": {"system": None, "messages": [{"role": "user", "content": prompt}],
                        "params": {"max_tokens": 1024, "temperature": 0.7, "stream": True}},
            "response": {"status": 200, "text": "x", "prompt_tokens": 30, "completion_tokens": 200}}


def population(n: int) -> list[dict[str, Any]]:
    """The events: ordinary accounts, the co-firing crowd of ``n`` and the hidden hydra, in time order."""
    rng = random.Random(n)
    rounds = [T0 + (i * DAY / 4 + rng.uniform(0, DAY / 5)) // BUCKET * BUCKET + 10 for i in range(ROUNDS)]
    events = []
    for u in range(ORDINARY):
        for _ in range(rng.randint(12, 20)):
            events.append(event(f"person{u:04d}", T0 + rng.uniform(0, 7 * DAY), f"{rng.choice(VERBS)} {rng.choice(WORDS)} please, {u}",
                                f"100.{u // 250}.{u % 250}.7"))
    for k in range(n):
        own = [T0 + rng.uniform(0, 7 * DAY) for _ in range(3)]
        for i, t in enumerate(rounds + own):
            events.append(event(f"crowd{k:05d}", t + rng.uniform(0, 200) if i < ROUNDS else t,
                                f"{rng.choice(VERBS)} {rng.choice(WORDS)}: item {k}-{i}", f"10.{k // 250 % 250}.{k % 250}.1"))
    for k in range(HYDRA):
        for i, t in enumerate(rounds):
            events.append(event(f"hydra{k:02d}", t + rng.uniform(0, 200), WRAPPER.format(task=f"{rng.choice(VERBS)} {rng.choice(WORDS)} #{k}-{i}"),
                                f"198.51.100.{10 + (i + k) % 40}", hosting=True))
    events.sort(key=lambda e: e["ts"])
    return events


def scanned_state(n: int, path: Path) -> int:
    """Scan the population and pickle ``find_clusters``'s inputs (every account in the background: own score 0)."""
    from distillguard.detect import Scanner

    scanner = Scanner()
    events = population(n)
    for e in events:
        scanner.update(e)
    state = (scanner.fingerprints, scanner.templates, {a: scanner.timing.buckets(a) for a in scanner.accounts},
             dict.fromkeys(scanner.accounts, 0.0), {})
    with path.open("wb") as handle:
        pickle.dump(state, handle)
    return len(events)


_CHILD = """
import pickle, resource, sys, time
from distillguard.detect.clustering import ClusterCache, find_clusters
state = pickle.load(open(sys.argv[1], "rb"))
cache = ClusterCache()
started = time.process_time()
clusters = find_clusters(*state, cache)
cpu = time.process_time() - started
checks = getattr(cache, "sync_checks", None)
checks = len(cache.overlaps) if checks is None else checks
hydra = {a for a in state[2] if a.startswith("hydra")}
pure = any(set(c.accounts) == hydra for c in clusters)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(cpu, checks, cache.candidate_pairs, len(clusters), int(pure), rss)
"""


def run(state: Path, src: Path, cpu_limit: int, memory_mb: int) -> dict[str, Any]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit, cpu_limit + 5))
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))  # the all-pairs baseline's overlaps

    done = subprocess.run([sys.executable, "-c", _CHILD, str(state)], capture_output=True, text=True, preexec_fn=limit,
                          env={**os.environ, "PYTHONPATH": str(src)})
    if done.returncode != 0:
        return {"stopped": True, "why": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    cpu, checks, pairs, clusters, pure, rss = done.stdout.split()
    return {"stopped": False, "cpu": float(cpu), "checks": int(checks), "pairs": int(pairs), "clusters": int(clusters),
            "pure": bool(int(pure)), "rss": float(rss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 2000, 10000])
    parser.add_argument("--baseline-src", type=Path, required=True, help="the baseline tree's src/ (e.g. main's, from git archive)")
    parser.add_argument("--baseline-cpu", type=int, default=300, help="CPU seconds after which a baseline child is stopped")
    parser.add_argument("--memory-mb", type=int, default=4096, help="address space a child may map (the machine is shared)")
    args = parser.parse_args()
    began, digest = time.perf_counter(), src_digest()
    lines = ["# Clustering's cost under a co-firing crowd: this tree vs the baseline, same state", "",
             f"Per size: {ORDINARY} ordinary accounts, a crowd of N accounts in the same {ROUNDS} five-minute buckets (plus 3 of "
             f"their own each), a {HYDRA}-account hydra hidden in it (private wrapper, hosting /24). One `find_clusters` call "
             "per tree on the same pickled state, in a child process.", "",
             "| N | events | tree | CPU-s | exact checks | checks per account | candidate pairs | peak RSS MB | hydra one pure cluster |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp) / "state.pickle"
            count = scanned_state(n, state)
            accounts = ORDINARY + n + HYDRA
            for name, src, cpu_limit in (("this tree", ROOT / "src", 3600), ("baseline", args.baseline_src, args.baseline_cpu)):
                r = run(state, src, cpu_limit, args.memory_mb)
                if r["stopped"]:
                    lines.append(f"| {n:,} | {count:,} | {name} | > {cpu_limit} (stopped: {r['why'][:60]}) | — | — | — | — | — |")
                else:
                    lines.append(f"| {n:,} | {count:,} | {name} | {r['cpu']:.2f} | {r['checks']:,} | {r['checks'] / accounts:.1f} | "
                                 f"{r['pairs']:,} | {r['rss']:.0f} | {'yes' if r['pure'] else '**no**'} |")
                print(lines[-1], flush=True)
    write_report("cofiring_cost.md", lines, began, digest)


if __name__ == "__main__":
    main()
