"""What it costs an attacker to stay below `medium`: accounts needed to harvest 100,000 answers a week, ours vs a rate limit.

    python bench/attacker_cost.py [--rates 2 5 15 40 100 300] [--designs quiet_sweep imitates_people] [--days 3] [--cap 150] [--seed 7]

For each campaign design and per-account rate r (requests per account-day),
a campaign that would harvest 100,000 answers a week needs N = ⌈100,000 / 7r⌉
accounts. We simulate min(N, ``--cap``) such accounts for ``--days`` days
inside a `robust` background (dev split, scale 0.3: ~600 legitimate accounts,
no other campaign), scan the log with account metadata, and count the share of
the campaign's accounts whose risk stays below `medium` (both scores, cluster
lift included). The rate-limit baseline (``sim.evaluate.RateLimitBaseline``:
30 requests/minute, 2,000 requests or 2 M tokens a day) is scored on the same
events.

The attacker's cheapest way to stay below `medium` is the highest rate r* at
which at least 95 % of the accounts stay below; its cost is N(r*) accounts.
Simulating at most ``--cap`` accounts (and fewer days than a week) gives the
detectors *less* cross-account evidence than a real fleet of N accounts would
leave, so the costs measured for us are lower bounds.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from distillguard.detect.accounts import read_accounts
from distillguard.detect.scanner import MEDIUM, Scanner
from distillguard.events import parse_ts
from distillguard.sim.evaluate import RateLimitBaseline
from distillguard.sim.fleet import Fleet, sample_campaign
from distillguard.sim.metadata import MetaMaker, write_accounts
from distillguard.sim.robust import campaign_metadata
from distillguard.sim.scenarios import build_actors, event_stream, load_scenario
from distillguard.sim.splits import load_wording
from measure import src_digest, write_report

HARVEST_PER_WEEK = 100_000
STAY_BELOW = 0.95
BASELINE_LIMITS = {"requests_per_day": 2_000, "requests_per_minute": 30}


def accounts_needed(rate: float) -> int:
    return math.ceil(HARVEST_PER_WEEK / (7 * rate))


def probe(design: str, rate: float, *, days: int, cap: int, seed: int) -> dict[str, Any]:
    scenario = load_scenario("robust").model_copy(update={"scale": 0.3, "days": days, "campaign_designs": [], "sampled_campaigns": 0,
                                                          "models": ["demo-1"], "new_model_day": None})
    actors, labels, metas = build_actors(scenario, seed, "dev")
    rng = random.Random(f"{design}|{rate}|{seed}")
    params = sample_campaign(rng, design, load_wording("dev"), days=days, release_day=None, budget=1e12)
    needed = accounts_needed(rate)
    params.accounts, params.rate, params.start_day, params.lifetime_days = min(needed, cap), rate, 0.0, float(days)
    params.ban_replace, params.ban_day, params.pivot = False, None, False
    accounts = [f"acct_probe{i:05d}{rng.getrandbits(32):08x}" for i in range(params.accounts)]
    start = parse_ts(scenario.start)
    fleet = Fleet("distiller", accounts, campaign="probe", rng=rng, pools=actors[0].pools, wording=load_wording("dev"), params=params,
                  start=start, days=days, models=("demo-1",))
    metas += campaign_metadata(MetaMaker(rng, start), rng, params, accounts, [], start)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "accounts.jsonl"
        write_accounts(path, metas)
        scanner = Scanner(accounts=read_accounts(str(path)))
    baseline = RateLimitBaseline()
    events = 0
    for event in event_stream([*actors, fleet]):
        scanner.update(event)
        baseline.update(event, parse_ts(event["ts"]))
        events += 1
    report = {e["account_id"]: e for e in scanner.report()["accounts"]}
    ours = [max(float(report[a]["distillation_score"]), float(report[a]["reseller_score"])) for a in accounts if a in report]
    base = [baseline.score(a) for a in accounts if a in report]
    return {"design": design, "rate": rate, "needed": needed, "simulated": len(ours), "events": events,
            "ours_below": sum(1 for s in ours if s < MEDIUM) / len(ours) if ours else None,
            "baseline_below": sum(1 for s in base if s < MEDIUM) / len(base) if base else None,
            "ours_median": sorted(ours)[len(ours) // 2] if ours else None}


def cheapest(rows: list[dict[str, Any]], key: str) -> tuple[float | None, int | None]:
    """The highest probed rate at which the campaign stays below `medium`, and the accounts it then needs."""
    ok = [r for r in rows if r[key] is not None and r[key] >= STAY_BELOW]
    if not ok:
        return None, None
    best = max(ok, key=lambda r: r["rate"])
    return best["rate"], best["needed"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[2, 5, 15, 40, 100, 300])
    parser.add_argument("--designs", nargs="+", default=["quiet_sweep", "imitates_people"])
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--cap", type=int, default=150)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    began, digest = time.perf_counter(), src_digest()
    lines = ["## Attacker's cost of staying below `medium` (`bench/attacker_cost.py`)", "",
             f"Harvest target {HARVEST_PER_WEEK:,} answers a week; a design stays below when ≥ {STAY_BELOW:.0%} of its accounts do. "
             f"{args.days} simulated days, at most {args.cap} accounts simulated per point, seed {args.seed}, dev split.", "",
             "| design | requests / account-day | accounts needed | simulated | events | ours: share below `medium` | ours: median risk score "
             "| baseline: share below `medium` |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    summary = []
    for design in args.designs:
        rows = []
        for rate in args.rates:
            row = probe(design, rate, days=args.days, cap=args.cap, seed=args.seed)
            rows.append(row)
            print(f"  {design} at {rate:g}/day: {row}", file=sys.stderr)
            lines.append(f"| {design} | {rate:g} | {row['needed']:,} | {row['simulated']} | {row['events']:,} | {row['ours_below']:.2f} | "
                         f"{row['ours_median']:.3f} | {row['baseline_below']:.2f} |")
        summary.append((design, cheapest(rows, "ours_below"), cheapest(rows, "baseline_below")))
    # The baseline's limit, exactly: under 2,000 requests a day (and 30 a minute) an account stays below its midpoint.
    base_rate = BASELINE_LIMITS["requests_per_day"] - 1
    base_accounts = accounts_needed(base_rate)
    lines += ["", "| design | ours: highest rate that stays below `medium` | ours: accounts for 100k/week | "
              "rate limit: highest rate below | rate limit: accounts | ratio |", "|---|---:|---:|---:|---:|---:|"]
    for design, (rate, needed), _ in summary:
        if rate is None:
            slowest = min(args.rates)
            ours_rate, ours_accounts, ratio = f"< {slowest:g}", f"> {accounts_needed(slowest):,}", f"> {accounts_needed(slowest) / base_accounts:.0f}×"
        else:
            # The true highest safe rate lies between r* and the next probed rate, which did not stay below.
            faster = [r for r in args.rates if r > rate]
            low = accounts_needed(min(faster)) if faster else needed
            ours_rate = f"{rate:g} (not {min(faster):g})" if faster else f"≥ {rate:g}"
            ours_accounts = f"{low:,}–{needed:,}" if faster else f"≤ {needed:,}"
            ratio = f"{low / base_accounts:.0f}–{needed / base_accounts:.0f}×" if faster else f"≤ {needed / base_accounts:.0f}×"
        lines.append(f"| {design} | {ours_rate} | {ours_accounts} | {base_rate:,} (limit: 2,000/day) | {base_accounts} | {ratio} |")
    write_report("attacker_cost.md", lines, began, digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
