"""The margin between campaigns and legitimate accounts on the `robust` dev seeds, in logit units.

    python bench/margin.py [--seeds 1 2 ... 12] [--jobs 2] [--tag NAME] [--top 20] [--perturb] [--summary-only]

``--perturb`` scans each seed with its legitimate accounts moved towards campaigns (:func:`perturb`: evaluation
jobs paced over 36 hours with a campaign-like reasoning request, one person in five on hosting /24s).

For each seed it runs ``distillguard simulate --scenario robust --split dev --seed N`` (kept in
``bench/out/margin/`` and reused), replays the log through a ``Scanner`` with the simulated account metadata and
keeps, per account, its final distillation score, label, population or campaign design, its own evidence scores
and the families they fall in (``DISTILL_FAMILIES``), and its cluster tie (``bench/out/margin/<tag>.<seed>.json``).
It then prints:

- the margin table: per seed, the 99.5th percentile of legitimate accounts' scores, the 5th percentile of
  campaign accounts' scores, and the gap between them in logit units (σ⁻¹(campaign p5) − σ⁻¹(legit p99.5));
  positive means the two distributions are separated at that depth;
- legitimate accounts in `high` / `medium` per population over all seeds;
- per campaign design the worst recall at 0.5 % benign FPR (as `eval` computes it, per seed);
- the ``--top`` highest legitimate accounts over all seeds with the evidence families that put them there, and
  the lowest members of each campaign design with what they carry.

Compare two trees by running it with each on ``PYTHONPATH`` and a different ``--tag``: scores are deterministic,
so the machine's load does not move them. Dev split only: never point it at test or hold-out.
"""

from __future__ import annotations

import argparse
import json
import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from distillguard.detect.scanner import DISTILL_FAMILIES, HIGH, MEDIUM
from distillguard.events import format_ts, parse_ts
from distillguard.sim.evaluate import NEGATIVE, _recall_at_fpr
from measure import OUT
from member_lift import replay, simulate

RUNS = OUT / "margin"


# The perturbations (--perturb): dev's legitimate accounts moved towards campaigns along axes the hidden sets vary.
STRETCH_S = 36 * 3600.0  # every evaluation job paced over 36 hours (dev's run within an hour or two)
CAMPAIGN_LIKE = " Before the final answer, write out your complete reasoning step by step."
HOSTING_ASN = 16509  # one in five people behind a cloud desktop or VPN exit: a handful of hosting /24s among them


def _stable(text: str) -> int:
    return zlib.crc32(text.encode())


def perturb(events: Iterable[dict[str, Any]], info: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Dev made harder for legitimate accounts, deterministically: each evaluation job paced over ``STRETCH_S`` (two
    UTC days or three) with a campaign-like reasoning request appended to every prompt; one in five people on hosting
    /24s (``HOSTING_ASN``, 32 /24s shared among them). Campaigns are left as they are. Re-sorted by time."""
    events = list(events)
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    population = {a: row.get("population") for a, row in info.items()}
    for event in events:
        account = event.get("account_id")
        if population.get(account) == "eval_job":
            t = parse_ts(event["ts"])
            first[account] = min(first.get(account, t), t)
            last[account] = max(last.get(account, t), t)
    out = []
    for event in events:
        account = event.get("account_id")
        kind = population.get(account)
        if kind == "eval_job" and account in first:
            t0 = first[account]
            t = t0 + (parse_ts(event["ts"]) - t0) * STRETCH_S / max(60.0, last[account] - t0)
            request = dict(event.get("request") or {})
            messages = [dict(m) for m in request.get("messages") or ()]
            if messages and isinstance(messages[-1].get("content"), str):
                messages[-1]["content"] += CAMPAIGN_LIKE
            request["messages"] = messages
            event = {**event, "ts": format_ts(t), "request": request}
        elif kind == "person" and account is not None and _stable(account) % 5 == 0:
            h = _stable(account)
            client = dict(event.get("client") or {})
            client["geo"] = {**(client.get("geo") or {}), "hosting": True, "asn": HOSTING_ASN}
            client["ip"] = f"3.{(h >> 8) % 8}.{(h >> 16) % 4}.{h % 250 + 2}"
            event = {**event, "client": client}
        out.append(event)
    out.sort(key=lambda e: parse_ts(e["ts"]))
    return out


def scan(seed: int, tag: str, perturbed: bool = False) -> Path:
    """Every account's final score and own evidence on one seed, written to ``<tag>.<seed>.json``."""
    stem = simulate("robust", seed, RUNS)
    out = RUNS / f"{tag}.{seed}.json"
    scanner, report, labels, info = replay(stem, perturb if perturbed else None)
    designs = {c: row.get("design") for c, row in (labels.get("campaigns") or {}).items()}
    clusters = scanner._last_clusters or []
    ties = {a: c.tie(a) for c in clusters for a in c.accounts}
    pooled = {e["account_id"]: next((x.get("numbers", {}) for x in e["evidence"] if x["detector"] == "campaign_pooled"), {})
              for e in report["accounts"] if e["cluster_id"]}
    shape = {c.cluster_id: {"members": len(c.accounts), "coordination": round(c.coordination, 3), "families": c.families,
                            "private": round(getattr(c, "private", -1.0), 3), "score": round(c.score, 3),
                            "labels": dict(Counter(str(info.get(a, {}).get("label")) for a in c.accounts))} for c in clusters}
    for e in report["accounts"]:
        if e["cluster_id"] in shape and "pooled" not in shape[e["cluster_id"]]:
            shape[e["cluster_id"]]["pooled"] = pooled.get(e["account_id"], {})
    (RUNS / f"{tag}.{seed}.clusters.json").write_text(json.dumps(shape))
    rows = []
    for entry in report["accounts"]:
        account = entry["account_id"]
        meta = info.get(account, {})
        own = {e["detector"]: round(float(e["score"]), 3) for e in entry["evidence"]}
        rows.append({"account": account, "label": meta.get("label"),
                     "group": meta.get("population") or designs.get(meta.get("campaign")) or meta.get("label"),
                     "campaign": meta.get("campaign"), "score": float(entry["distillation_score"]),
                     "reseller": float(entry["reseller_score"]), "requests": entry["requests"],
                     "cluster": entry["cluster_id"], "tie": round(ties.get(account, 0.0), 3), "evidence": own})
    out.write_text(json.dumps(rows))
    return out


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = q * (len(ordered) - 1)
    low = math.floor(index)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def _families(evidence: dict[str, float]) -> str:
    found: dict[str, float] = defaultdict(float)
    for name, score in evidence.items():
        if name in DISTILL_FAMILIES and score >= 0.1:
            found[DISTILL_FAMILIES[name]] = max(found[DISTILL_FAMILIES[name]], score)
    parts = [f"{f} {s:.2f}" for f, s in sorted(found.items(), key=lambda kv: -kv[1])]
    for name in ("hydra_cluster", "campaign_pooled"):
        if name in evidence:
            parts.append(f"{name} {evidence[name]:.2f}")
    return ", ".join(parts) or "nothing"


def summarise(tag: str, seeds: list[int], top: int) -> None:
    legit_all: list[tuple[float, int, dict[str, Any]]] = []
    high: Counter[str] = Counter()
    medium: Counter[str] = Counter()
    accounts: Counter[str] = Counter()
    worst: dict[str, tuple[float, str]] = {}
    lowest: dict[str, list[tuple[float, int, dict[str, Any]]]] = defaultdict(list)
    print(f"margin table ({tag}): seed | legit p99.5 | campaign p5 | gap (logit) | recall @ 0.5 % | legit high | legit medium")
    gaps = []
    for seed in seeds:
        rows = json.loads((RUNS / f"{tag}.{seed}.json").read_text())
        legit = [r for r in rows if r["label"] in NEGATIVE]
        camp = [r for r in rows if r["label"] == "distiller"]
        lp = _quantile([r["score"] for r in legit], 0.995)
        cp = _quantile([r["score"] for r in camp], 0.05)
        gap = _logit(cp) - _logit(lp)
        gaps.append(gap)
        recall = _recall_at_fpr([r["score"] for r in camp], [r["score"] for r in legit], 0.005)
        h = sum(1 for r in legit if max(r["score"], r["reseller"]) >= HIGH)
        m = sum(1 for r in legit if MEDIUM <= max(r["score"], r["reseller"]) < HIGH)
        print(f"| {seed} | {lp:.3f} | {cp:.3f} | {gap:+.2f} | {recall:.3f} | {h} | {m} |")
        for r in legit:
            accounts[r["group"]] += 1
            either = max(r["score"], r["reseller"])
            if either >= HIGH:
                high[r["group"]] += 1
            elif either >= MEDIUM:
                medium[r["group"]] += 1
            legit_all.append((r["score"], seed, r))
        negatives = [r["score"] for r in legit]
        for campaign in {r["campaign"] for r in camp}:
            members = [r for r in camp if r["campaign"] == campaign]
            value = _recall_at_fpr([r["score"] for r in members], negatives, 0.005) or 0.0
            design = members[0]["group"]
            if design not in worst or value < worst[design][0]:
                worst[design] = (value, f"{campaign}/seed {seed}")
            lowest[design] += [(r["score"], seed, r) for r in members]
    print(f"gap: mean {sum(gaps) / len(gaps):+.2f}, worst {min(gaps):+.2f}")
    print("\nlegitimate populations (accounts / high / medium, all seeds):")
    for group in sorted(accounts):
        print(f"| {group} | {accounts[group]} | {high[group]} | {medium[group]} |")
    print("\nworst recall @ 0.5 % FPR per design:")
    for design, (value, where) in sorted(worst.items()):
        print(f"| {design} | {value:.3f} | {where} |")
    print(f"\n{top} highest legitimate accounts:")
    for score, seed, r in sorted(legit_all, key=lambda t: -t[0])[:top]:
        print(f"  {score:.3f} seed {seed} {r['group']:<14} {r['requests']:>5} req tie {r['tie']:.2f}  {_families(r['evidence'])}")
    print("\nlowest campaign members per design (5 each):")
    for design in sorted(lowest):
        for score, seed, r in sorted(lowest[design], key=lambda t: t[0])[:5]:
            print(f"  {design:<16} {score:.3f} seed {seed} {r['campaign']} {r['requests']:>5} req tie {r['tie']:.2f}  {_families(r['evidence'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 13)))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--tag", default="current")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--summary-only", action="store_true", help="read the per-seed files of an earlier run with this tag")
    parser.add_argument("--perturb", action="store_true", help="scan dev made harder for legitimate accounts (perturb())")
    args = parser.parse_args()
    if not args.summary_only:
        n = len(args.seeds)
        with ProcessPoolExecutor(args.jobs) as pool:
            list(pool.map(scan, args.seeds, [args.tag] * n, [args.perturb] * n))
    summarise(args.tag, args.seeds, args.top)


if __name__ == "__main__":
    main()
