"""Timing: round-the-clock activity, local-daytime fit, and the minutes an account is active.

People sleep: their requests fall in their local daytime (from the attested
timezone, or the busiest-hours window when there is none). Harvesting scripts
and resellers serving a planet run around the clock. Active 5-minute buckets
are kept (bounded) so clustering can measure synchronisation across accounts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distillguard.detect.base import (
    AccountStates,
    Detector,
    Distinct,
    Evidence,
    add_distinct,
    confidence,
    event_time,
    logistic,
)

__all__ = ["Timing"]

_MAX_BUCKETS = 4096
_MAX_DAYS = 400  # active days counted (as sustained.py): the state must not grow with the log's length


@dataclass(slots=True)  # one per account: no per-instance __dict__ (docs/detection.md, "Memory")
class _State:
    requests: int = 0
    utc_hours: list[int] = field(default_factory=lambda: [0] * 24)
    local_day: int = 0
    local_known: int = 0
    days: Distinct[int] = ()  # small tuple, then a set (base.add_distinct)
    buckets: Distinct[int] = ()


class Timing(Detector):
    name = "timing"

    def __init__(self) -> None:
        self.accounts: AccountStates[_State] = AccountStates(_State)

    def update(self, event: Mapping[str, Any]) -> None:
        state = self.accounts.of(event)
        if state is None:
            return
        ts = event_time(event)
        state.requests += 1
        hour = int(ts // 3600)
        state.utc_hours[hour % 24] += 1
        state.days = add_distinct(state.days, hour // 24, _MAX_DAYS)
        state.buckets = add_distinct(state.buckets, int(ts // 300), _MAX_BUCKETS)
        attestation = event.get("attestation") or {}
        offset = attestation.get("utc_offset_min")
        if isinstance(offset, int):
            state.local_known += 1
            local_hour = int((ts + offset * 60) // 3600) % 24
            if 7 <= local_hour <= 23:
                state.local_day += 1

    def buckets(self, account_id: str) -> set[int]:
        state = self.accounts.get(account_id)
        if state is None:
            return set()
        buckets = state.buckets
        return buckets if isinstance(buckets, set) else set(buckets)  # a light account's few, held as a tuple

    def evidence(self, account_id: str) -> Evidence | None:
        s = self.accounts.get(account_id)
        if s is None or s.requests == 0:
            return None
        # Quietest 6-hour window's share of traffic: near 0 for a person, near 25 % for a 24/7 script.
        doubled = s.utc_hours + s.utc_hours
        quiet = min(sum(doubled[i : i + 6]) for i in range(24)) / s.requests
        round_the_clock = logistic(quiet, 0.10, 0.03)
        daytime = s.local_day / s.local_known if s.local_known else None
        score = round_the_clock * confidence(s.requests, 30.0)
        detail = f"quietest 6 hours carry {quiet:.0%} of requests over {len(s.days)} active days"
        if daytime is not None:
            detail += f"; {daytime:.0%} of attested requests in local daytime"
            if daytime > 0.9:
                score *= 0.5
        return Evidence(self.name, score, detail, numbers={"quiet_share": round(quiet, 3), "active_days": len(s.days),
                                                           "local_daytime": None if daytime is None else round(daytime, 3)})
