"""Detection quality at a held-out seed: `distillguard eval` on several scenarios, ours beside the rate-limit baseline.

    python bench/detection_quality.py [--seed 4242] [--scenarios default stealthy pivot bench/scenarios/hard.yaml] [--reuse]

For each scenario it runs ``distillguard simulate`` at the seed (never used
while developing the detectors; ``stealthy``, ``pivot`` and ``hard`` also use
the held-out half of the prompt pools and held-out phrasings), then
``distillguard eval --json``, and prints one markdown table per class with our
numbers and the baseline's side by side, plus the campaign detection shares.
Outputs go to ``bench/out/eval/``; ``--reuse`` skips scenarios already there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "eval"
DG = [sys.executable, "-m", "distillguard.cli"]
ROWS = [("roc_auc", "ROC AUC"), ("recall_at_fpr_0.001", "recall @ 0.1 % FPR"), ("recall_at_fpr_0.005", "recall @ 0.5 % FPR"),
        ("recall_at_fpr_0.01", "recall @ 1 % FPR"), ("recall_at_high", "recall in `high` band"),
        ("false_positives_at_high", "benign accounts in `high` band"), ("high_band_precision", "`high` band precision (this class)"),
        ("hours_to_detect_median", "time to detect, median (sim. hours)"), ("hours_to_detect_p90", "time to detect, p90 (sim. hours)"),
        ("requests_to_detect_median", "requests to detect, median")]


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def run(scenario: str, seed: int, reuse: bool) -> dict[str, Any]:
    name = Path(scenario).stem if scenario.endswith((".yaml", ".yml")) else scenario
    events, labels, result = OUT / f"{name}.jsonl.gz", OUT / f"{name}.labels.json", OUT / f"{name}.eval.json"
    if reuse and result.exists():
        return dict(json.loads(result.read_text()))
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subprocess.run([*DG, "simulate", "--scenario", scenario, "--seed", str(seed), "--out", str(events), "--labels", str(labels)], check=True)
    simulated = time.perf_counter()
    out = subprocess.run([*DG, "eval", "--events", str(events), "--labels", str(labels), "--json"], check=True, capture_output=True, text=True)
    data: dict[str, Any] = json.loads(out.stdout)
    data["bench_seconds"] = {"simulate": round(simulated - started, 1), "eval": round(time.perf_counter() - simulated, 1)}
    result.write_text(json.dumps(data, indent=2))
    return data


def report(name: str, data: dict[str, Any]) -> str:
    lines = [f"### {name} (seed {data.get('seed')}): {data['events']:,} events, {data['accounts']:,} accounts", ""]
    for cls, row in data["classes"].items():
        lines += [f"**{cls}** — {row['positives']} positive accounts vs {row['negatives']} benign (heavy users included)", "",
                  "| metric | distillguard | rate-limit baseline |", "|---|---:|---:|"]
        for key, label in ROWS:
            if key in row["ours"]:
                lines.append(f"| {label} | {_fmt(row['ours'][key])} | {_fmt(row['baseline'].get(key))} |")
        lines.append("")
    if data.get("campaigns"):
        lines += ["| campaign | requests | share sent before first `high` (ours) | baseline |", "|---|---:|---:|---:|"]
        for campaign, info in data["campaigns"].items():
            lines.append(f"| {campaign} | {info['requests']:,} | {_fmt(info['ours_share_of_requests_before_first_detection'])} | "
                         f"{_fmt(info['baseline_share_of_requests_before_first_detection'])} |")
        lines.append("")
    if "bench_seconds" in data:
        lines += [f"simulate {data['bench_seconds']['simulate']} s, eval {data['bench_seconds']['eval']} s", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--scenarios", nargs="+", default=["default", "stealthy", "pivot", str(ROOT / "bench" / "scenarios" / "hard.yaml")])
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    sections = [report(Path(s).stem if s.endswith((".yaml", ".yml")) else s, run(s, args.seed, args.reuse)) for s in args.scenarios]
    text = "\n".join(sections)
    print(text)
    (OUT / "detection_quality.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
