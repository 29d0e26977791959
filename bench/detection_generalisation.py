"""Does detection generalise? The `robust` family on its dev, test and hold-out splits, side by side, beside the baseline.

    python bench/detection_generalisation.py [--dev-seeds 1 2 3] [--test-seeds 1001 1002 1003] [--holdout-seeds 7001 7002]
        [--fixed default stealthy pivot bench/scenarios/hard.yaml] [--fixed-seed 4242] [--without-accounts] [--reuse] [--jobs 2]
        [--family robust|robust_stress]

For every seed it runs ``distillguard simulate --scenario robust --split S
--seed N`` and ``distillguard eval --json --accounts`` (the simulated account metadata,
as an operator's ``scan --accounts``; ``--without-accounts`` leaves it out), then prints, for dev and test
(and holdout, a third column, when ``--holdout-seeds`` are given):

* distiller recall at 0.5 % benign FPR and reseller recall at 1 % (mean over
  seeds and the worst seed), ROC AUC, legitimate accounts in the `high` band;
* campaign-level numbers over every campaign of every seed: the **worst**
  campaign's recall, share of accounts in pure clusters and share of requests
  before detection — the numbers issue #11's targets are about — per design too;
* which legitimate sub-populations reach `high` / `medium`;
* the rate-limit baseline beside each.

The seeds of the splits are disjoint and the split is mixed into the seed, so
the columns are different worlds with different wording and prompts
(docs/evaluation.md). The hold-out split is never tuned on: run it only for a
final measurement and record it (bench/RESULTS.md), never to pick a change. The fixed scenarios (``--fixed``) run at
``--fixed-seed`` for comparison with earlier results. Outputs go to
``bench/out/generalisation/``; the report to ``bench/out/detection_generalisation.md``.
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
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from measure import OUT, src_digest, write_report

ROOT = Path(__file__).resolve().parent.parent
RUNS = OUT / "generalisation"
DG = [sys.executable, "-m", "distillguard.cli"]
TARGETS = {"recall": 0.95, "reseller": 0.90, "pure": 0.80, "before": 0.10}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cpu_run(cmd: list[str]) -> tuple[str, float]:
    """Run ``cmd``; its stdout and the CPU seconds (user + system) of that child alone.

    Wall time on a shared machine says little; the child's own rusage (``os.wait4``) is comparable across runs
    even when two seeds run at once (``--jobs``), which ``RUSAGE_CHILDREN`` is not.
    """
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise subprocess.CalledProcessError(proc.returncode, cmd, out, err.read().decode(errors="replace"))
    return out, usage.ru_utime + usage.ru_stime


def run(scenario: str, split: str, seed: int, *, with_accounts: bool, reuse: bool) -> dict[str, Any]:
    name = f"{Path(scenario).stem}.{split}.{seed}"
    events, labels, accounts, result = (RUNS / f"{name}.jsonl.gz", RUNS / f"{name}.labels.json", RUNS / f"{name}.accounts.jsonl",
                                        RUNS / f"{name}{'.acc' if with_accounts else ''}.eval.json")
    if reuse and result.exists():
        return dict(json.loads(result.read_text()))
    RUNS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subprocess.run([*DG, "simulate", "--scenario", scenario, "--split", split, "--seed", str(seed), "--out", str(events),
                    "--labels", str(labels), "--accounts-out", str(accounts)], check=True, capture_output=True)
    simulated = time.perf_counter()
    extra = ["--accounts", str(accounts)] if with_accounts else []
    out, cpu = _cpu_run([*DG, "eval", "--events", str(events), "--labels", str(labels), "--json", *extra])
    data: dict[str, Any] = json.loads(out)
    data["bench_seconds"] = {"simulate": round(simulated - started, 1), "eval": round(time.perf_counter() - simulated, 1),
                             "eval_cpu": round(cpu, 1)}
    result.write_text(json.dumps(data, indent=1))
    print(f"  {name}: {data['events']:,} events, {data['accounts']:,} accounts, simulate {data['bench_seconds']['simulate']} s, "
          f"eval {data['bench_seconds']['eval']} s wall, {data['bench_seconds']['eval_cpu']} CPU-s", file=sys.stderr)
    return data


def _mean_min(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "—"
    return f"{statistics.fmean(known):.3f} (worst {min(known):.3f})"


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Rows of the side-by-side table for one split: {metric: {"ours": …, "baseline": …}}."""
    rows: dict[str, dict[str, str]] = {}
    for who in ("ours", "baseline"):
        d = [r["classes"]["distiller"][who] for r in runs]
        s = [r["classes"]["reseller"][who] for r in runs]
        campaigns = [(r["seed"], c, row) for r in runs for c, row in r["campaigns"].items()]
        recall = [(row[f"{who}_recall_at_fpr_0.005"], f"{c}/seed {seed} ({row['design']})") for seed, c, row in campaigns]
        before = [row[f"{who}_share_of_requests_before_first_detection"] for _, _, row in campaigns]
        negatives_high = sum(d_["false_positives_at_high"] for d_ in d)
        worst = min(recall, key=lambda x: -1 if x[0] is None else x[0]) if recall else (None, "")
        rows.setdefault("distiller recall @ 0.5 % FPR, mean (worst seed)", {})[who] = _mean_min([x["recall_at_fpr_0.005"] for x in d])
        rows.setdefault("distiller ROC AUC, mean (worst seed)", {})[who] = _mean_min([x["roc_auc"] for x in d])
        rows.setdefault("reseller recall @ 1 % FPR, mean (worst seed)", {})[who] = _mean_min([x["recall_at_fpr_0.01"] for x in s])
        rows.setdefault("legitimate accounts in `high` (distillation score), all seeds", {})[who] = str(negatives_high)
        rows.setdefault("campaigns", {})[who] = str(len(campaigns))
        rows.setdefault("worst campaign recall @ 0.5 % FPR", {})[who] = f"{_fmt(worst[0])} {worst[1]}"
        rows.setdefault("campaigns with recall ≥ 0.95", {})[who] = f"{sum(1 for v, _ in recall if v is not None and v >= TARGETS['recall'])} of {len(recall)}"
        rows.setdefault("campaigns caught (`high`) within 10 % of their requests", {})[who] = (
            f"{sum(1 for b in before if b is not None and b <= TARGETS['before'])} of {len(before)} (never: {sum(1 for b in before if b is None)})")
        if who == "ours":
            pure = [(row["share_in_pure_clusters"], f"{c}/seed {seed} ({row['design']})") for seed, c, row in campaigns]
            worst_pure = min(pure, key=lambda x: -1 if x[0] is None else x[0]) if pure else (None, "")
            rows.setdefault("worst campaign share of accounts in clusters of purity ≥ 0.95", {})[who] = f"{_fmt(worst_pure[0])} {worst_pure[1]}"
            rows.setdefault("campaigns with ≥ 80 % of accounts in pure clusters", {})[who] = (
                f"{sum(1 for v, _ in pure if v is not None and v >= TARGETS['pure'])} of {len(pure)}")
            any_high = sum(row["high"] for r in runs for row in r["populations"].values() if row["label"] in ("benign", "heavy_benign"))
            rows.setdefault("legitimate accounts in `high` (either score), all seeds", {})[who] = str(any_high)
        else:
            rows.setdefault("worst campaign share of accounts in clusters of purity ≥ 0.95", {})[who] = "n/a"
            rows.setdefault("campaigns with ≥ 80 % of accounts in pure clusters", {})[who] = "n/a"
            rows.setdefault("legitimate accounts in `high` (either score), all seeds", {})[who] = str(
                sum(row["baseline_high"] for r in runs for row in r["populations"].values() if row["label"] in ("benign", "heavy_benign")))
    return rows


def by_design(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[Any]]]:
    out: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        for row in r["campaigns"].values():
            cell = out[str(row["design"])]
            cell["recall"].append(row["ours_recall_at_fpr_0.005"])
            cell["pure"].append(row["share_in_pure_clusters"])
            cell["before"].append(row["ours_share_of_requests_before_first_detection"])
            cell["high_any"].append(row.get("share_high_any_score"))
    return out


def populations(runs: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in runs:
        for name, row in r["populations"].items():
            if row["label"] in ("benign", "heavy_benign", "reseller"):
                cell = out[f"{name} ({row['label']})"]
                cell[0] += row["accounts"]
                cell[1] += row["high"]
                cell[2] += row["medium"]
    return out


def _counts(runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['events']:,}" for r in runs)


def _cpu(runs: list[dict[str, Any]]) -> str:
    return ", ".join(str(r.get("bench_seconds", {}).get("eval_cpu", "—")) for r in runs)


def _worst(values: list[Any], higher_is_worse: bool = False) -> str:
    if any(v is None for v in values):
        return "never" if higher_is_worse else "—"
    return _fmt(max(values) if higher_is_worse else min(values))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev-seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--test-seeds", type=int, nargs="*", default=[1001, 1002, 1003],
                        help="seeds of the test split (1001-6999); `--test-seeds` alone runs none: a dev-only run for tuning")
    parser.add_argument("--holdout-seeds", type=int, nargs="*", default=[],
                        help="seeds of the hold-out split (7001 and up by convention; default none): a final check, never for tuning")
    parser.add_argument("--fixed", nargs="*", default=["default", "stealthy", "pivot", str(ROOT / "bench" / "scenarios" / "hard.yaml")])
    parser.add_argument("--fixed-seed", type=int, default=4242)
    parser.add_argument("--without-accounts", dest="with_accounts", action="store_false",
                        help="evaluate from the events alone (default: with the simulated account metadata, as `scan --accounts`)")
    parser.add_argument("--reuse", action="store_true", help="reuse results already in bench/out/generalisation")
    parser.add_argument("--jobs", type=int, default=2, help="simulate+eval runs at a time (default 2)")
    parser.add_argument("--family", default="robust", choices=("robust", "robust_stress"),
                        help="robust_stress: one campaign in each joint corner of the space, dev seeds only (docs/evaluation.md)")
    args = parser.parse_args()
    seeds_of = {"dev": args.dev_seeds, "test": args.test_seeds, "holdout": args.holdout_seeds}
    splits = [split for split, seeds in seeds_of.items() if seeds]
    if not splits:
        parser.error("no seeds: give --dev-seeds, --test-seeds or --holdout-seeds")
    if args.family == "robust_stress" and splits != ["dev"]:
        parser.error("--family robust_stress has a dev split only: give --dev-seeds and an empty --test-seeds")
    for a, b in (("dev", "test"), ("dev", "holdout"), ("test", "holdout")):
        if set(seeds_of[a]) & set(seeds_of[b]):
            parser.error(f"{a} and {b} seeds must be disjoint")
    began, digest = time.perf_counter(), src_digest()
    # Every (scenario, split, seed) is its own pair of subprocesses: run --jobs of them at a time.
    work = [(args.family, split, seed) for split in splits for seed in seeds_of[split]]
    work += [(scenario, "dev", args.fixed_seed) for scenario in args.fixed]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = dict(zip(work, pool.map(lambda w: run(*w, with_accounts=args.with_accounts, reuse=args.reuse), work), strict=True))
    runs = {split: [done[(args.family, split, seed)] for seed in seeds_of[split]] for split in splits}
    summaries = {split: summarise(r) for split, r in runs.items()}
    lines = [f"## {args.family} family: {' vs '.join(f'{split} seeds {seeds_of[split]}' for split in splits)}"
             f"{', with account metadata' if args.with_accounts else ', events only'}", "",
             "events per seed: " + "; ".join(f"{split} {_counts(runs[split])}" for split in splits), "",
             "eval CPU-seconds per seed: " + "; ".join(f"{split} {_cpu(runs[split])}" for split in splits), "",
             "| metric | " + " | ".join(f"{split}: distillguard | {split}: rate-limit baseline" for split in splits) + " |",
             "|---|" + "---|---|" * len(splits)]
    for metric in summaries[splits[0]]:
        lines.append(f"| {metric} | " + " | ".join(f"{summaries[s][metric]['ours']} | {summaries[s][metric]['baseline']}" for s in splits) + " |")
    lines += ["", "Per campaign design (ours; worst over every campaign of that design in the split's seeds; "
              "`high*` = share of accounts in `high` by either score):", "",
              "| design | " + " | ".join(f"{s} n | {s} worst recall | {s} worst high* | {s} worst pure-cluster share | "
                                         f"{s} worst share before `high`" for s in splits) + " |",
              "|---|" + "---:|" * 5 * len(splits)]
    designs = {split: by_design(r) for split, r in runs.items()}
    for design in sorted(set().union(*designs.values())):
        cells = []
        for split in splits:
            d = designs[split].get(design)
            if not d:
                cells += ["0", "—", "—", "—", "—"]
                continue
            cells += [str(len(d["recall"])), _worst(d["recall"]), _worst(d["high_any"]), _worst(d["pure"]), _worst(d["before"], higher_is_worse=True)]
        lines.append(f"| {design} | " + " | ".join(cells) + " |")
    lines += ["", "Legitimate sub-populations and resellers (accounts / in `high` / in `medium`, either score, summed over seeds):", "",
              "| population | " + " | ".join(f"{s} accounts | {s} high | {s} medium" for s in splits) + " |",
              "|---|" + "---:|" * 3 * len(splits)]
    pops = {split: populations(r) for split, r in runs.items()}
    for name in sorted(set().union(*pops.values())):
        lines.append(f"| {name} | " + " | ".join(" | ".join(str(x) for x in pops[s].get(name, [0, 0, 0])) for s in splits) + " |")
    if args.fixed:
        lines += ["", f"## fixed scenarios at seed {args.fixed_seed} (dev split)", "",
                  "| scenario | events | distiller AUC | recall @ 0.5 % | baseline | reseller recall @ 1 % | baseline | legit. in `high` | "
                  "worst campaign share before `high` |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for scenario in args.fixed:
            r = done[(scenario, "dev", args.fixed_seed)]
            d, s = r["classes"]["distiller"], r["classes"]["reseller"]
            before = [row["ours_share_of_requests_before_first_detection"] for row in r["campaigns"].values()]
            lines.append(f"| {Path(scenario).stem} | {r['events']:,} | {_fmt(d['ours']['roc_auc'])} | {_fmt(d['ours']['recall_at_fpr_0.005'])} | "
                         f"{_fmt(d['baseline']['recall_at_fpr_0.005'])} | {_fmt(s['ours']['recall_at_fpr_0.01'])} | "
                         f"{_fmt(s['baseline']['recall_at_fpr_0.01'])} | {d['ours']['false_positives_at_high']} | "
                         f"{_worst(before, higher_is_worse=True)} |")
    write_report("detection_generalisation.md", lines, began, digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
