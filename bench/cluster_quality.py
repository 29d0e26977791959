"""Hydra attribution on the `robust` family: does each campaign land in pure clusters, and nothing else?

    .venv/bin/python bench/cluster_quality.py [--seeds 1 2 3] [--without-accounts] [--split dev|test|holdout]

For each seed: ``distillguard simulate --scenario robust --split dev --seed N`` (kept in
``bench/out/robust-dev-N.*``), then one ``Scanner`` over the events with the simulated
account metadata (as ``scan --accounts``; ``--without-accounts`` leaves it out). Per
campaign: its size, how many of its accounts are in any cluster, and the share in
clusters of purity ≥ 0.95 (the issue's target is ≥ 80 % for every campaign) and which other groups
(campaigns, legitimate populations) its clusters also hold, i.e. why it misses purity; then how
many legitimate accounts sit in a cluster holding any campaign account (target 0),
how many legitimate accounts sit in clusters of legitimate accounts only (learners,
offices, evaluation jobs merged with each other: target 0),
whether any two one-off evaluation jobs share a cluster (target: never), and what
clustering cost (``find_clusters`` CPU seconds and candidate pairs, beside the number
of accounts: all pairs would be n(n−1)/2).

Attribution is tuned on the dev split only; ``--split test`` is for the one final
measurement on held-out seeds (RESULTS.md says when it was run), never for tuning, and
``--split holdout`` (seeds 7001 and up) for the blind check nobody tunes on, ever.
Writes ``bench/out/cluster_quality.md`` (``cluster_quality-test.md``, ``-holdout.md`` for the others).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from measure import OUT, ROOT, src_digest, write_report

PURE = 0.95


def simulate(seed: int, split: str = "dev") -> tuple[Path, Path, Path]:
    events, labels = OUT / f"robust-{split}-{seed}.jsonl.gz", OUT / f"robust-{split}-{seed}.labels.json"
    accounts = OUT / f"robust-{split}-{seed}.accounts.jsonl"
    if not (events.exists() and labels.exists() and accounts.exists()):
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "distillguard.cli", "simulate", "--scenario", "robust", "--split", split, "--seed", str(seed),
                        "--out", str(events), "--labels", str(labels), "--accounts-out", str(accounts)], check=True, capture_output=True)
    return events, labels, accounts


_TIMER = """
import pickle, statistics, sys, time
from distillguard.detect.clustering import ClusterCache, find_clusters
state = pickle.load(open(sys.argv[1], "rb"))
runs = []
for _ in range(3):
    cache = ClusterCache()
    started = time.process_time()
    clusters = find_clusters(*state, cache)
    runs.append(time.process_time() - started)
print(statistics.median(runs), cache.candidate_pairs, len(clusters))
"""


def cost(state_path: Path, src: Path) -> tuple[float, int, int]:
    """Median CPU seconds of three ``find_clusters`` calls on one scanned state, with the package from ``src``, in a child."""
    out = subprocess.run([sys.executable, "-c", _TIMER, str(state_path)], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(src)}).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


def measure(events: Path, labels_path: Path, accounts: Path | None, baseline: Path | None = None) -> dict[str, Any]:
    from distillguard.detect import Scanner
    from distillguard.detect.accounts import read_accounts
    from distillguard.detect.clustering import ClusterCache, find_clusters
    from distillguard.events import read_events

    labels = json.loads(labels_path.read_text())
    info = labels["accounts"]
    scanner = Scanner(accounts=read_accounts(accounts) if accounts else None)
    for event in read_events([str(events)]):
        scanner.update(event)
    own = {a: d for a, (d, _) in scanner.scores().items()}
    cache = ClusterCache()
    started = time.process_time()
    clusters = find_clusters(scanner.fingerprints, scanner.templates, {a: scanner.timing.buckets(a) for a in scanner.accounts}, own,
                             scanner.metadata, cache)
    cpu = time.process_time() - started
    costs: dict[str, tuple[float, int, int]] = {}
    if baseline is not None:
        # The same scanned state timed with this tree's and the baseline tree's clustering, one after the other.
        metadata = {a: dataclasses.replace(m, attributes=dict(m.attributes)) for a, m in scanner.metadata.items()}
        state = (scanner.fingerprints, scanner.templates, {a: scanner.timing.buckets(a) for a in scanner.accounts}, own, metadata)
        with tempfile.NamedTemporaryFile(suffix=".pickle") as handle:
            pickle.dump(state, handle)
            handle.flush()
            for name, src in (("this tree", ROOT / "src"), ("baseline", baseline), ("this tree, again", ROOT / "src")):
                costs[name] = cost(Path(handle.name), src)

    def group(account: str) -> str:
        entry = info.get(account) or {}
        return entry.get("campaign") or f"legit:{entry.get('population') or entry.get('label')}"

    sizes = collections.Counter(info[a]["campaign"] for a in info if (info[a] or {}).get("campaign") and a in scanner.accounts)
    clustered: collections.Counter[str] = collections.Counter()
    pure: collections.Counter[str] = collections.Counter()
    legit_in_campaign_clusters: collections.Counter[str] = collections.Counter()
    legit_only_clusters: collections.Counter[str] = collections.Counter()
    eval_jobs_merged = 0
    mixed_with: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for cluster in clusters:
        groups = collections.Counter(group(a) for a in cluster.accounts)
        top, count = groups.most_common(1)[0]
        for account in cluster.accounts:
            if not group(account).startswith("legit:"):
                clustered[group(account)] += 1
        if top in sizes and count / len(cluster.accounts) >= PURE:
            pure[top] += count
        for name in groups:
            if name in sizes:
                mixed_with[name].update({other: n for other, n in groups.items() if other != name})
        if any(g in sizes for g in groups):
            legit_in_campaign_clusters.update(g[6:] for g in groups.elements() if g.startswith("legit:"))
        else:
            legit_only_clusters.update(g[6:] for g in groups.elements())
        eval_jobs_merged += max(0, groups.get("legit:eval_job", 0) - 1)
    campaigns = []
    for name in sorted(sizes, key=lambda c: int(c.split("_")[-1]) if c.split("_")[-1].isdigit() else c):
        spec = labels["campaigns"].get(name, {})
        campaigns.append({"campaign": name, "archetype": spec.get("archetype"), "size": sizes[name], "clustered": clustered[name],
                          "pure_share": pure[name] / sizes[name],
                          "mixed_with": ", ".join(f"{other} {n}" for other, n in mixed_with[name].most_common(3)),
                          "design": ", ".join(f"{k} {spec.get(k)}" for k in ("network", "system", "wrappers", "creation", "payments", "email"))})
    return {"accounts": len(scanner.accounts), "clusters": len(clusters), "campaigns": campaigns, "cpu_s": cpu,
            "pairs": cache.candidate_pairs, "legit_in_campaign_clusters": dict(legit_in_campaign_clusters),
            "legit_only_clusters": dict(legit_only_clusters), "costs": costs,
            "eval_jobs_merged": eval_jobs_merged}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--without-accounts", action="store_true", help="scan without the simulated account metadata")
    parser.add_argument("--split", choices=("dev", "test", "holdout"), default="dev",
                        help="test: the one final held-out measurement, never for tuning; holdout: the blind check, never tuned on")
    parser.add_argument("--baseline-src", type=Path, help="another tree's src/ (e.g. from git archive): time its find_clusters on the same state")
    args = parser.parse_args()
    began, digest = time.perf_counter(), src_digest()
    lines = [f"# Hydra attribution on the robust family's {args.split} split", "",
             f"Account metadata: {'no' if args.without_accounts else 'yes (as scan --accounts)'}. Purity threshold {PURE}.", ""]
    met = total = 0
    for seed in args.seeds:
        events, labels, accounts = simulate(seed, args.split)
        result = measure(events, labels, None if args.without_accounts else accounts, args.baseline_src)
        lines += [f"## seed {seed}: {result['accounts']:,} accounts, {result['clusters']} clusters; find_clusters "
                  f"{result['cpu_s']:.2f} CPU-s over {result['pairs']:,} candidate pairs "
                  f"(all pairs: {result['accounts'] * (result['accounts'] - 1) // 2:,})", "",
                  "| campaign | archetype | accounts | in a cluster | in clusters of purity ≥ 0.95 | ≥ 80 %? | its clusters also hold | design |",
                  "|---|---|---:|---:|---:|---|---|---|"]
        for row in result["campaigns"]:
            ok = row["pure_share"] >= 0.8
            met += ok
            total += 1
            lines.append(f"| {row['campaign']} | {row['archetype']} | {row['size']} | {row['clustered']} | {row['pure_share']:.0%} | "
                         f"{'yes' if ok else '**no**'} | {row['mixed_with'] or '—'} | {row['design']} |")
        legit, only = result["legit_in_campaign_clusters"], result["legit_only_clusters"]
        lines += ["", f"Legitimate accounts in clusters holding campaign accounts: {sum(legit.values())} {legit or ''}; "
                      f"in clusters of legitimate accounts only: {sum(only.values())} {only or ''}; "
                      f"evaluation jobs sharing a cluster with another: {result['eval_jobs_merged']}.", ""]
        for name, (cpu, pairs, count) in result["costs"].items():
            lines.append(f"- `find_clusters` with {name}: {cpu:.2f} CPU-s (median of 3), {pairs:,} candidate pairs, {count} clusters")
        lines += [""] if result["costs"] else []
    lines.append(f"Campaigns meeting ≥ 80 % in pure clusters: {met} of {total}.")
    name = "cluster_quality" + ("" if args.split == "dev" else f"-{args.split}") + ("-without-accounts" if args.without_accounts else "")
    write_report(f"{name}.md", lines, began, digest)


if __name__ == "__main__":
    main()
