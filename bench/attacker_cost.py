"""What it costs an attacker to stay below `medium`: accounts needed to harvest 100,000 answers a week, ours vs a rate limit.

    python bench/attacker_cost.py [--rates 1 2 5 15 40 100 300] [--designs quiet_sweep imitates_people sleeper_fleet grader]
        [--days 3] [--cap 150] [--seed 7]

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
which at least 95 % of the accounts stay below; its cost is N(r*) accounts, and
the attacker picks the design whose N(r*) is smallest (the last table's last
row). Every design keeps its own wording, networks, timing and metadata but is
played at the probed rate with the same log-normal spread over its accounts
(a sleeper fleet's own rule pins each account to 4-12 a day whatever the
rate). Rates are probed slowest first; once two rates in a row leave fewer
than half of the accounts below `medium`, the faster ones are not simulated
(reported as "not probed": more requests per account only add evidence). The
realised rate (the campaign's requests, follow-ups included, per account that
sent one, per day) is printed beside the nominal one.
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
    """Simulate ``min(N(rate), cap)`` accounts of ``design`` at ``rate`` in a legitimate background; score them."""
    scenario = load_scenario("robust").model_copy(update={"scale": 0.3, "days": days, "campaign_designs": [], "sampled_campaigns": 0,
                                                          "models": ["demo-1"], "new_model_day": None})
    actors, labels, metas = build_actors(scenario, seed, "dev")
    rng = random.Random(f"{design}|{rate}|{seed}")
    params = sample_campaign(rng, design, load_wording("dev"), days=days, release_day=None, budget=1e12)
    needed = accounts_needed(rate)
    params.accounts, params.rate, params.start_day, params.lifetime_days = min(needed, cap), rate, 0.0, float(days)
    params.ban_replace, params.ban_day, params.pivot = False, None, False
    params.archetype = "probe"  # the same per-account spread for every design (Fleet pins a sleeper fleet's accounts to 4-12 a day)
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
    events, campaign_requests, members = 0, 0, set(accounts)
    for event in event_stream([*actors, fleet]):
        scanner.update(event)
        baseline.update(event, parse_ts(event["ts"]))
        events += 1
        campaign_requests += event.get("account_id") in members
    report = {e["account_id"]: e for e in scanner.report()["accounts"]}
    ours = [max(float(report[a]["distillation_score"]), float(report[a]["reseller_score"])) for a in accounts if a in report]
    base = [baseline.score(a) for a in accounts if a in report]
    return {"design": design, "rate": rate, "needed": needed, "simulated": len(ours), "events": events,
            "realised_rate": campaign_requests / len(ours) / days if ours else None,
            "ours_below": sum(1 for s in ours if s < MEDIUM) / len(ours) if ours else None,
            "baseline_below": sum(1 for s in base if s < MEDIUM) / len(base) if base else None,
            "ours_median": sorted(ours)[len(ours) // 2] if ours else None}


GIVE_UP_BELOW = 0.5  # two rates in a row with fewer than half the accounts below `medium`: faster ones are not probed


def cheapest(rows: list[dict[str, Any]], key: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The fastest probed row at which the campaign stays below `medium`, and the next faster probed row (which did not)."""
    ok = [r for r in rows if r[key] is not None and r[key] >= STAY_BELOW]
    if not ok:
        return None, None
    best = max(ok, key=lambda r: r["rate"])
    faster = [r for r in rows if r["rate"] > best["rate"]]
    return best, min(faster, key=lambda r: r["rate"]) if faster else None


def realised_needed(row: dict[str, Any]) -> int:
    """Accounts for 100,000 answers a week at the rate the probe's accounts really sent (follow-ups and spread included)."""
    return accounts_needed(row["realised_rate"] or row["rate"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[1, 2, 5, 15, 40, 100, 300])
    parser.add_argument("--designs", nargs="+", default=["quiet_sweep", "imitates_people", "sleeper_fleet", "grader"])
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--cap", type=int, default=150)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    began, digest = time.perf_counter(), src_digest()
    lines = ["## Attacker's cost of staying below `medium` (`bench/attacker_cost.py`)", "",
             f"Harvest target {HARVEST_PER_WEEK:,} answers a week; a design stays below when ≥ {STAY_BELOW:.0%} of its accounts do. "
             f"{args.days} simulated days, at most {args.cap} accounts simulated per point, seed {args.seed}, dev split.", "",
             "| design | requests / account-day | realised | accounts needed | simulated | events | ours: share below `medium` "
             "| ours: median risk score | baseline: share below `medium` |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    summary = []
    rows_of: dict[str, list[dict[str, Any]]] = {}
    for design in args.designs:
        rows: list[dict[str, Any]] = []
        rows_of[design] = rows
        for rate in sorted(args.rates):
            failing = [r for r in rows[-2:] if r["ours_below"] is not None and r["ours_below"] < GIVE_UP_BELOW]
            if len(rows) >= 2 and len(failing) == 2:
                lines.append(f"| {design} | {rate:g} | — | {accounts_needed(rate):,} | not probed | — | — | — | — |")
                continue
            row = probe(design, rate, days=args.days, cap=args.cap, seed=args.seed)
            rows.append(row)
            print(f"  {design} at {rate:g}/day: {row}", file=sys.stderr)
            lines.append(f"| {design} | {rate:g} | {row['realised_rate']:.1f} | {row['needed']:,} | {row['simulated']} | {row['events']:,} | "
                         f"{row['ours_below']:.2f} | {row['ours_median']:.3f} | {row['baseline_below']:.2f} |")
        summary.append((design, cheapest(rows, "ours_below"), cheapest(rows, "baseline_below")))
    # The baseline's limit, exactly: under 2,000 requests a day (and 30 a minute) an account stays below its midpoint.
    base_rate = BASELINE_LIMITS["requests_per_day"] - 1
    base_accounts = accounts_needed(base_rate)
    lines += ["", "| design | ours: highest rate that stays below `medium` | ours: accounts for 100k/week | "
              "rate limit: highest rate below | rate limit: accounts | ratio |", "|---|---:|---:|---:|---:|---:|"]
    bounds = []  # per design: (lowest cost in accounts, row text)
    for design, (best, faster), _ in summary:
        if best is None:
            slowest = min(rows_of[design], key=lambda r: r["rate"])
            low = realised_needed(slowest)
            bounds.append((low, f"< {slowest['rate']:g}", f"> {low:,}", f"> {low / base_accounts:.0f}×"))
        elif faster is not None:
            # The true highest safe rate lies between r* and the next probed rate, which did not stay below.
            low, high = realised_needed(faster), realised_needed(best)
            bounds.append((low, f"{best['rate']:g} (not {faster['rate']:g})", f"{low:,}–{high:,}",
                           f"{low / base_accounts:.0f}–{high / base_accounts:.0f}×"))
        else:
            high = realised_needed(best)
            bounds.append((0, f"≥ {best['rate']:g}", f"≤ {high:,}", f"≤ {high / base_accounts:.0f}×"))
        _, rate_text, accounts_text, ratio = bounds[-1]
        lines.append(f"| {design} | {rate_text} | {accounts_text} | {base_rate:,} (limit: 2,000/day) | {base_accounts} | {ratio} |")
    # The attacker picks the design that needs the fewest accounts.
    cheapest_low, rate_text, accounts_text, ratio = min(bounds, key=lambda b: b[0])
    lines.append(f"| **the attacker's cheapest design** | {rate_text} | {accounts_text} | {base_rate:,} | {base_accounts} | **{ratio}** |")
    lines += ["", "Accounts are counted at the realised rate (the campaign's requests per account that sent one, per day), "
              "not the nominal one."]
    write_report("attacker_cost.md", lines, began, digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
