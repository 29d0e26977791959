"""`distillguard eval`: detection quality against labels, beside a rate-limit-only baseline.

Events are replayed in order through the real ``Scanner`` and through the
baseline, with checkpoints along the way, so besides end-of-log quality
(ROC AUC, recall at fixed false-positive rates on benign accounts, precision
of the high band) we measure *time to detect*: simulated hours and requests
until a distiller first reaches the high band.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distillguard.detect.base import logistic
from distillguard.detect.scanner import HIGH, MEDIUM, Scanner
from distillguard.events import parse_ts, read_events

__all__ = ["RateLimitBaseline", "evaluate", "format_table", "targets", "worst_campaigns"]

FPRS = (0.001, 0.005, 0.01)
CLASSES = {"distiller": "distillation_score", "reseller": "reseller_score"}
NEGATIVE = ("benign", "heavy_benign")


@dataclass
class _Volume:
    minute: int = -1
    in_minute: int = 0
    peak_rpm: int = 0
    day: int = -1
    day_requests: int = 0
    day_tokens: int = 0
    peak_day_requests: int = 0
    peak_day_tokens: int = 0


@dataclass
class RateLimitBaseline:
    """What today's gateways do: flag accounts whose rate or volume crosses thresholds.

    Thresholds (fixed): 30 requests in a minute, 2,000 requests or 2M tokens in a UTC day.
    """

    accounts: dict[str, _Volume] = field(default_factory=lambda: defaultdict(_Volume))

    def update(self, event: Mapping[str, Any], ts: float) -> None:
        account = event.get("account_id")
        if account is None:
            return
        v = self.accounts[account]
        minute, day = int(ts // 60), int(ts // 86400)
        if minute != v.minute:
            v.minute, v.in_minute = minute, 0
        v.in_minute += 1
        v.peak_rpm = max(v.peak_rpm, v.in_minute)
        if day != v.day:
            v.day, v.day_requests, v.day_tokens = day, 0, 0
        v.day_requests += 1
        response = event.get("response") or {}
        v.day_tokens += int(response.get("prompt_tokens") or 0) + int(response.get("completion_tokens") or 0)
        v.peak_day_requests = max(v.peak_day_requests, v.day_requests)
        v.peak_day_tokens = max(v.peak_day_tokens, v.day_tokens)

    def score(self, account: str) -> float:
        v = self.accounts.get(account)
        if v is None:
            return 0.0
        return max(logistic(v.peak_rpm, 30, 4), logistic(v.peak_day_requests, 2000, 300), logistic(v.peak_day_tokens, 2e6, 3e5))


def _roc_auc(positives: list[float], negatives: list[float]) -> float | None:
    if not positives or not negatives:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([1] * len(positives) + [0] * len(negatives), positives + negatives))


def _threshold_at_fpr(negatives: list[float], fpr: float) -> float:
    """The strictest threshold that keeps false positives at or under ``fpr`` of negatives (positives must exceed it)."""
    allowed = math.floor(fpr * len(negatives))
    ranked = sorted(negatives, reverse=True)
    return ranked[allowed] if allowed < len(ranked) else -1.0


def _recall_at_fpr(positives: list[float], negatives: list[float], fpr: float) -> float | None:
    """Recall at the strictest threshold that keeps false positives at or under ``fpr`` of negatives."""
    if not positives or not negatives:
        return None
    threshold = _threshold_at_fpr(negatives, fpr)
    return sum(1 for p in positives if p > threshold) / len(positives)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class _Replay:
    """What the replay collects along the way: checkpoints of every campaign's best score."""

    account_labels: dict[str, str]
    campaign_of: dict[str, str | None]
    first_ts: dict[str, float] = field(default_factory=dict)
    seen_requests: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    campaign_requests: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    detected: dict[str, dict[str, tuple[float, int]]] = field(default_factory=lambda: {"ours": {}, "baseline": {}})
    # Per campaign, per checkpoint: (campaign requests so far, best distillation score of its accounts) — ours and baseline.
    trail: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=lambda: {"ours": defaultdict(list), "baseline": defaultdict(list)})

    def checkpoint(self, now: float, ours: dict[str, float], baseline: dict[str, float]) -> None:
        for name, scores in (("ours", ours), ("baseline", baseline)):
            best: dict[str, float] = {}
            for account, score in scores.items():
                if score >= HIGH and account not in self.detected[name]:
                    self.detected[name][account] = (now - self.first_ts[account], self.seen_requests[account])
                campaign = self.campaign_of.get(account)
                if campaign and self.account_labels.get(account) == "distiller":
                    best[campaign] = max(best.get(campaign, 0.0), score)
            for campaign, score in best.items():
                self.trail[name][campaign].append((self.campaign_requests[campaign], score))

    def share_before(self, name: str, campaign: str, threshold: float, strict: bool = False) -> float | None:
        """Share of a campaign's requests sent before the checkpoint where one of its accounts first crossed ``threshold``."""
        size = self.campaign_requests.get(campaign, 0)
        for requests, score in self.trail[name].get(campaign, []):
            if score > threshold or (not strict and score >= threshold):
                return requests / size if size else None
        return None


CHECKPOINTS = 200
# Of the checkpoints, every RECLUSTER_EVERY-th re-clusters; the others reuse the last clusters (with current scores),
# as the online scorer does between clusterings (scorer_worker.ReportCadence).
RECLUSTER_EVERY = 5


def evaluate(paths: list[str], labels: dict[str, Any], checkpoints: int = CHECKPOINTS,
             scanner: Scanner | None = None) -> dict[str, Any]:
    """Replay ``paths`` through ``scanner`` (a fresh ``Scanner`` by default) and the baseline; score against ``labels``.

    Time to detect is read at checkpoints: one every ``max(500, events ÷ checkpoints)`` events. The online scorer
    reports every second or so, so a coarse grid overstates it: at 40 checkpoints over a simulated week a campaign
    that lives a day was looked at every four hours, and one caught at 8 % of its requests was reported at 19 %.
    Between re-clusterings a checkpoint reuses the last clusters, like the online scorer; the last one re-clusters.
    """
    entries = {a: v if isinstance(v, dict) else {"label": v} for a, v in labels["accounts"].items()}
    replay = _Replay({a: v["label"] for a, v in entries.items()}, {a: v.get("campaign") for a, v in entries.items()})
    total = int(labels.get("events") or 0)
    every = max(500, total // checkpoints) if total else 5000
    scanner = scanner or Scanner()
    baseline = RateLimitBaseline()
    count = 0
    ts = 0.0
    for event in read_events(paths):
        account = event.get("account_id")
        ts = parse_ts(event["ts"])
        scanner.update(event)
        baseline.update(event, ts)
        if account is not None:
            replay.first_ts.setdefault(account, ts)
            replay.seen_requests[account] += 1
            campaign = replay.campaign_of.get(account)
            if campaign:
                replay.campaign_requests[campaign] += 1
        count += 1
        if count % every == 0:
            _checkpoint(replay, scanner, baseline, ts, recluster=(count // every) % RECLUSTER_EVERY == 1)
    report = _checkpoint(replay, scanner, baseline, ts, recluster=True)
    ours = {e["account_id"]: e for e in report["accounts"]}
    account_labels = replay.account_labels
    result: dict[str, Any] = {"events": count, "accounts": len(ours), "scenario": labels.get("scenario"), "seed": labels.get("seed"),
                              "split": labels.get("split"), "checkpoint_every_events": every, "classes": {}, "campaigns": {}}
    negatives = [a for a in ours if account_labels.get(a) in NEGATIVE]
    for cls, field_name in CLASSES.items():
        positives = [a for a in ours if account_labels.get(a) == cls]
        row: dict[str, Any] = {"positives": len(positives), "negatives": len(negatives)}
        for name, score_of in (("ours", lambda a, f=field_name: ours[a][f]), ("baseline", baseline.score)):
            pos = [score_of(a) for a in positives]
            neg = [score_of(a) for a in negatives]
            # Precision of this class's score: of the accounts it puts in the high band, the share that are of this class.
            high = [a for a in ours if score_of(a) >= HIGH]
            metrics: dict[str, Any] = {
                "roc_auc": _roc_auc(pos, neg),
                **{f"recall_at_fpr_{f:g}": _recall_at_fpr(pos, neg, f) for f in FPRS},
                "recall_at_high": (sum(1 for p in pos if p >= HIGH) / len(pos)) if pos else None,
                "false_positives_at_high": sum(1 for n in neg if n >= HIGH),
                "high_band_precision": (sum(1 for a in high if account_labels.get(a) == cls) / len(high)) if high else None,
            }
            if cls == "distiller":
                found = replay.detected[name]
                hours = [found[a][0] / 3600 for a in positives if a in found]
                requests = [found[a][1] for a in positives if a in found]
                metrics.update({"detected": len(hours), "hours_to_detect_median": _quantile(hours, 0.5), "hours_to_detect_p90": _quantile(hours, 0.9),
                                "requests_to_detect_median": _quantile([float(r) for r in requests], 0.5)})
            row[name] = metrics
        result["classes"][cls] = row
    thresholds = {"ours": _threshold_at_fpr([ours[a]["distillation_score"] for a in negatives], CAMPAIGN_FPR) if negatives else 1.0,
                  "baseline": _threshold_at_fpr([baseline.score(a) for a in negatives], CAMPAIGN_FPR) if negatives else 1.0}
    result["campaign_threshold"] = {"fpr": CAMPAIGN_FPR, **thresholds}
    clusters = {c["cluster_id"]: c["accounts"] for c in report.get("clusters", [])}
    for campaign, info in (labels.get("campaigns") or {}).items():
        result["campaigns"][campaign] = _campaign_row(campaign, info, ours, baseline, replay, thresholds, clusters, entries)
    result["populations"] = _populations(ours, entries, baseline, negatives)
    result["worst_campaign"] = worst_campaigns(result["campaigns"])
    result["targets"] = targets(result)
    return result


CAMPAIGN_FPR = 0.005


def _checkpoint(replay: _Replay, scanner: Scanner, baseline: RateLimitBaseline, now: float, *, recluster: bool) -> dict[str, Any]:
    report = scanner.report(recluster=recluster)
    replay.checkpoint(now, {e["account_id"]: e["distillation_score"] for e in report["accounts"]},
                      {a: baseline.score(a) for a in replay.seen_requests})
    return report


def _campaign_row(campaign: str, info: dict[str, Any], ours: dict[str, dict[str, Any]], baseline: RateLimitBaseline, replay: _Replay,
                  thresholds: dict[str, float], clusters: dict[str, list[str]], entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    members = [a for a in info.get("accounts", []) if a in ours]
    size = replay.campaign_requests.get(campaign, 0)
    clustered = [a for a in members if ours[a].get("cluster_id")]
    purity: dict[str, float] = {}
    for a in clustered:
        cid = ours[a]["cluster_id"]
        if cid not in purity:
            cluster = clusters.get(cid, [])
            purity[cid] = sum(1 for m in cluster if entries.get(m, {}).get("campaign") == campaign) / len(cluster) if cluster else 0.0
    pure = [a for a in clustered if purity[ours[a]["cluster_id"]] >= PURE]
    row: dict[str, Any] = {
        "design": info.get("archetype") or info.get("population"),
        "accounts": len(members),
        "requests": size,
        **{f"{name}_recall_at_fpr_{CAMPAIGN_FPR:g}": (sum(1 for a in members if score(a) > thresholds[name]) / len(members) if members else None)
           for name, score in (("ours", lambda a: float(ours[a]["distillation_score"])), ("baseline", baseline.score))},
        # Caught by either score (an operator acts on the risk band, whichever score put it there).
        "share_high_any_score": (sum(1 for a in members if max(float(ours[a]["distillation_score"]), float(ours[a]["reseller_score"])) >= HIGH)
                                 / len(members) if members else None),
        "share_in_clusters": len(clustered) / len(members) if members else None,
        "share_in_pure_clusters": len(pure) / len(members) if members else None,
        "clusters": len(purity),
        "cluster_purity_min": min(purity.values()) if purity else None,
        **{f"{name}_share_of_requests_before_first_detection": replay.share_before(name, campaign, HIGH) for name in ("ours", "baseline")},
        **{f"{name}_share_of_requests_before_fpr_threshold": replay.share_before(name, campaign, thresholds[name], strict=True)
           for name in ("ours", "baseline")},
    }
    return row


PURE = 0.95


def _populations(ours: dict[str, dict[str, Any]], entries: dict[str, dict[str, Any]], baseline: RateLimitBaseline,
                 negatives: list[str]) -> dict[str, Any]:
    """Per sub-population: how many accounts land in each band (ours and the baseline)."""
    out: dict[str, Any] = {}
    for account, entry in ours.items():
        info = entries.get(account, {})
        population = str(info.get("population") or info.get("label") or "unlabelled")
        row = out.setdefault(population, {"label": info.get("label"), "accounts": 0, "high": 0, "medium": 0, "max_score": 0.0,
                                          "baseline_high": 0, "baseline_medium": 0})
        score = max(float(entry["distillation_score"]), float(entry["reseller_score"]))
        base = baseline.score(account)
        row["accounts"] += 1
        row["high"] += score >= HIGH
        row["medium"] += MEDIUM <= score < HIGH
        row["baseline_high"] += base >= HIGH
        row["baseline_medium"] += MEDIUM <= base < HIGH
        row["max_score"] = max(row["max_score"], score)
    return dict(sorted(out.items(), key=lambda kv: (str(kv[1]["label"]), kv[0])))


def worst_campaigns(campaigns: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The worst campaign on each campaign metric (ours): the number that must meet a target, not the mean."""
    if not campaigns:
        return {}
    recall_key = f"ours_recall_at_fpr_{CAMPAIGN_FPR:g}"

    def worst(key: str, higher_is_worse: bool = False) -> dict[str, Any]:
        def badness(item: tuple[str, Any]) -> float:
            value = item[1]
            if value is None:  # never detected, or no account seen: the worst there is
                return math.inf
            return float(value) if higher_is_worse else -float(value)

        campaign, value = max(((c, row.get(key)) for c, row in campaigns.items()), key=badness)
        return {"campaign": campaign, "design": campaigns[campaign].get("design"), "value": value}

    return {"recall_at_fpr": worst(recall_key), "share_in_pure_clusters": worst("share_in_pure_clusters"),
            "share_of_requests_before_first_detection": worst("ours_share_of_requests_before_first_detection", higher_is_worse=True)}


TARGETS = {"distiller_recall_at_fpr_0.005": 0.95, "reseller_recall_at_fpr_0.01": 0.90, "negatives_high": 0,
           "campaign_share_in_pure_clusters": 0.80, "campaign_share_before_detection": 0.10}


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Issue #11's targets, met or not, with the measured value beside each."""
    classes = result["classes"]
    campaigns = result["campaigns"].values()
    negatives_high = sum(row["high"] for row in result.get("populations", {}).values() if row["label"] in NEGATIVE)
    distill = classes.get("distiller", {}).get("ours", {}).get("recall_at_fpr_0.005")
    resell = classes.get("reseller", {}).get("ours", {}).get("recall_at_fpr_0.01")
    pure = [row["share_in_pure_clusters"] for row in campaigns if row["share_in_pure_clusters"] is not None]
    before = [row["ours_share_of_requests_before_first_detection"] for row in campaigns]
    worst_before = None if any(b is None for b in before) else max(before, default=None)
    checks = {
        "distiller_recall_at_fpr_0.005": (distill, distill is not None and distill >= TARGETS["distiller_recall_at_fpr_0.005"]),
        "reseller_recall_at_fpr_0.01": (resell, resell is not None and resell >= TARGETS["reseller_recall_at_fpr_0.01"]),
        "negatives_high": (negatives_high, negatives_high <= TARGETS["negatives_high"]),
        "campaign_share_in_pure_clusters": (min(pure, default=None), bool(pure) and min(pure) >= TARGETS["campaign_share_in_pure_clusters"]),
        "campaign_share_before_detection": (worst_before if before else None,
                                            bool(before) and worst_before is not None and worst_before <= TARGETS["campaign_share_before_detection"]),
    }
    return {name: {"value": value, "target": TARGETS[name], "met": met} for name, (value, met) in checks.items()}


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(result: dict[str, Any]) -> str:
    lines = [f"scenario {result.get('scenario')} ({result.get('split') or 'dev'} split) seed {result.get('seed')}: "
             f"{result['events']} events, {result['accounts']} accounts"]
    for cls, row in result["classes"].items():
        lines.append(f"\n{cls} ({row['positives']} positive accounts vs {row['negatives']} benign incl. heavy users)")
        lines.append(f"  {'metric':<32} {'distillguard':>14} {'rate-limit baseline':>20}")
        for metric in row["ours"]:
            lines.append(f"  {metric:<32} {_fmt(row['ours'][metric]):>14} {_fmt(row['baseline'].get(metric)):>20}")
    if result["campaigns"]:
        threshold = result["campaign_threshold"]
        lines.append(f"\ncampaigns (recall at the {threshold['fpr']:.1%}-benign-FPR threshold: ours {threshold['ours']:.3f}, "
                     f"baseline {threshold['baseline']:.3f}; 'before' = share of the campaign's requests sent before its first "
                     "account reached high / that threshold; high* = share of its accounts in the high band by either score)")
        lines.append(f"  {'campaign':<9} {'design':<16} {'accts':>6} {'requests':>8} {'recall':>7} {'base':>6} {'high*':>6} {'in cl.':>6} "
                     f"{'pure':>6} {'purity':>6} {'bef.high':>8} {'bef.thr':>7} {'base':>6}")
        recall = f"_recall_at_fpr_{threshold['fpr']:g}"
        for campaign, info in result["campaigns"].items():
            lines.append(f"  {campaign:<9} {str(info.get('design') or ''):<16} {info['accounts']:>6} {info['requests']:>8} "
                         f"{_fmt(info['ours' + recall]):>7} {_fmt(info['baseline' + recall]):>6} {_fmt(info['share_high_any_score']):>6} "
                         f"{_fmt(info['share_in_clusters']):>6} "
                         f"{_fmt(info['share_in_pure_clusters']):>6} {_fmt(info['cluster_purity_min']):>6} "
                         f"{_fmt(info['ours_share_of_requests_before_first_detection']):>8} "
                         f"{_fmt(info['ours_share_of_requests_before_fpr_threshold']):>7} "
                         f"{_fmt(info['baseline_share_of_requests_before_first_detection']):>6}")
        for metric, worst in result["worst_campaign"].items():
            lines.append(f"  worst {metric}: {worst['campaign']} ({worst['design']}) {_fmt(worst['value'])}")
    if result.get("populations"):
        lines.append("\npopulations: accounts in the high / medium band (max of both scores), ours and baseline")
        lines.append(f"  {'population':<18} {'label':<13} {'accts':>6} {'high':>5} {'medium':>6} {'max':>6} {'base high':>9} {'base med':>8}")
        for population, row in result["populations"].items():
            lines.append(f"  {population:<18} {str(row['label']):<13} {row['accounts']:>6} {row['high']:>5} {row['medium']:>6} "
                         f"{row['max_score']:>6.3f} {row['baseline_high']:>9} {row['baseline_medium']:>8}")
    if result.get("targets"):
        lines.append("\ntargets (issue #11)")
        for name, check in result["targets"].items():
            lines.append(f"  {name:<34} {_fmt(check['value']):>8}  target {check['target']!s:>5}  {'met' if check['met'] else 'MISSED'}")
    return "\n".join(lines)
