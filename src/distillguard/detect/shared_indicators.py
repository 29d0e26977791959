"""Matches against indicators other providers shared (STIX 2.1, `distillguard indicators import`).

An account whose traffic comes from addresses, networks, autonomous systems
or attesting installs that another provider's detection flagged, or that
sends a system prompt whose hash they flagged, is likely the same operation
moving between providers. Indicators are someone else's verdict, so this is
supporting evidence: its weight (``DISTILL_WEIGHTS["shared_indicators"]``)
cannot push an account past the medium band on its own, and it is present only
when indicators were supplied (``scan --indicators``, or the store's imported
ones for the online scorer), so scores without them are unchanged.

Score: the share of the account's requests that match, logistic with
midpoint 0.2 (width 0.06), times :func:`confidence` in the number of
matching requests (scale 6), so one stray match scores little.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distillguard.detect.base import Detector, Evidence, confidence, logistic
from distillguard.indicators.model import IndicatorSet

__all__ = ["SharedIndicators"]


class SharedIndicators(Detector):
    name = "shared_indicators"

    def __init__(self, indicators: IndicatorSet) -> None:
        self.indicators = indicators
        self.requests: dict[str, int] = {}
        self.hits: dict[str, dict[str, int]] = {}

    def update(self, event: Mapping[str, Any]) -> None:
        account = event.get("account_id")
        if account is None:
            return
        self.requests[account] = self.requests.get(account, 0) + 1
        kinds = self.indicators.matches(event)
        if kinds:
            per_kind = self.hits.setdefault(account, {"requests": 0})
            per_kind["requests"] += 1
            for kind in kinds:
                per_kind[kind] = per_kind.get(kind, 0) + 1

    def evidence(self, account_id: str) -> Evidence | None:
        per_kind = self.hits.get(account_id)
        if not per_kind:
            return None
        matched, total = per_kind["requests"], self.requests[account_id]
        share = matched / total
        score = logistic(share, 0.2, 0.06) * confidence(matched, 6.0)
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(per_kind.items()) if kind != "requests")
        return Evidence(self.name, score, f"{matched} of {total} requests match indicators shared by other providers ({kinds})",
                        numbers={"matched": matched, "requests": total, "by_kind": {k: n for k, n in per_kind.items() if k != "requests"}})
