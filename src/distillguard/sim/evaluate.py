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
from distillguard.detect.scanner import HIGH, Scanner
from distillguard.events import parse_ts, read_events

__all__ = ["RateLimitBaseline", "evaluate", "format_table"]

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


def _recall_at_fpr(positives: list[float], negatives: list[float], fpr: float) -> float | None:
    """Recall at the strictest threshold that keeps false positives at or under ``fpr`` of negatives."""
    if not positives or not negatives:
        return None
    allowed = math.floor(fpr * len(negatives))
    ranked = sorted(negatives, reverse=True)
    threshold = ranked[allowed] if allowed < len(ranked) else -1.0
    return sum(1 for p in positives if p > threshold) / len(positives)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def evaluate(paths: list[str], labels: dict[str, Any], checkpoints: int = 40) -> dict[str, Any]:
    account_labels = {a: v["label"] if isinstance(v, dict) else v for a, v in labels["accounts"].items()}
    campaign_of = {a: v.get("campaign") for a, v in labels["accounts"].items() if isinstance(v, dict)}
    total = int(labels.get("events") or 0)
    every = max(500, total // checkpoints) if total else 5000
    scanner, baseline = Scanner(), RateLimitBaseline()
    first_ts: dict[str, float] = {}
    seen_requests: dict[str, int] = defaultdict(int)
    detected: dict[str, dict[str, tuple[float, int]]] = {"ours": {}, "baseline": {}}
    campaign_requests: dict[str, int] = defaultdict(int)
    campaign_first: dict[str, dict[str, int]] = {"ours": {}, "baseline": {}}
    count = 0
    ts = 0.0

    def checkpoint(now: float) -> None:
        report = scanner.report()
        for name, scores in (("ours", {e["account_id"]: e["distillation_score"] for e in report["accounts"]}),
                             ("baseline", {a: baseline.score(a) for a in seen_requests})):
            for account, score in scores.items():
                if score >= HIGH and account not in detected[name]:
                    detected[name][account] = (now - first_ts[account], seen_requests[account])
                    campaign = campaign_of.get(account)
                    if campaign and campaign not in campaign_first[name] and account_labels.get(account) == "distiller":
                        campaign_first[name][campaign] = campaign_requests[campaign]

    for event in read_events(paths):
        account = event.get("account_id")
        ts = parse_ts(event["ts"])
        scanner.update(event)
        baseline.update(event, ts)
        if account is not None:
            first_ts.setdefault(account, ts)
            seen_requests[account] += 1
            campaign = campaign_of.get(account)
            if campaign:
                campaign_requests[campaign] += 1
        count += 1
        if count % every == 0:
            checkpoint(ts)
    checkpoint(ts)
    report = scanner.report()
    ours = {e["account_id"]: e for e in report["accounts"]}
    result: dict[str, Any] = {"events": count, "accounts": len(ours), "scenario": labels.get("scenario"), "seed": labels.get("seed"),
                              "checkpoint_every_events": every, "classes": {}, "campaigns": {}}
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
                hours = [detected[name][a][0] / 3600 for a in positives if a in detected[name]]
                requests = [detected[name][a][1] for a in positives if a in detected[name]]
                metrics.update({"detected": len(hours), "hours_to_detect_median": _quantile(hours, 0.5), "hours_to_detect_p90": _quantile(hours, 0.9),
                                "requests_to_detect_median": _quantile([float(r) for r in requests], 0.5)})
            row[name] = metrics
        result["classes"][cls] = row
    for campaign in labels.get("campaigns") or {}:
        size = campaign_requests.get(campaign, 0)
        result["campaigns"][campaign] = {
            "requests": size,
            **{f"{name}_share_of_requests_before_first_detection": (campaign_first[name][campaign] / size if campaign in campaign_first[name] and size else None)
               for name in ("ours", "baseline")},
        }
    return result


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(result: dict[str, Any]) -> str:
    lines = [f"scenario {result.get('scenario')} seed {result.get('seed')}: {result['events']} events, {result['accounts']} accounts"]
    for cls, row in result["classes"].items():
        lines.append(f"\n{cls} ({row['positives']} positive accounts vs {row['negatives']} benign incl. heavy users)")
        lines.append(f"  {'metric':<32} {'distillguard':>14} {'rate-limit baseline':>20}")
        for metric in row["ours"]:
            lines.append(f"  {metric:<32} {_fmt(row['ours'][metric]):>14} {_fmt(row['baseline'].get(metric)):>20}")
    if result["campaigns"]:
        lines.append("\ncampaigns: share of the campaign's requests sent before its first account reached high risk")
        for campaign, info in result["campaigns"].items():
            lines.append(f"  {campaign:<10} {info['requests']:>8} requests   ours {_fmt(info['ours_share_of_requests_before_first_detection']):>6}"
                         f"   baseline {_fmt(info['baseline_share_of_requests_before_first_detection']):>6}")
    return "\n".join(lines)


