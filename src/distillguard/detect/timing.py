"""Timing: round-the-clock activity, local-daytime fit, and the minutes an account is active.

People sleep: their requests fall in their local daytime (from the attested
timezone, or the busiest-hours window when there is none). Harvesting scripts
and resellers serving a planet run around the clock. Active 5-minute buckets
are kept (bounded) so clustering can measure synchronisation across accounts.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from distillguard.detect.base import (
    SMALL,
    AccountStates,
    Detector,
    Evidence,
    confidence,
    event_time,
    logistic,
)

__all__ = ["SlotSet", "Timing", "add_slot"]

_MAX_BUCKETS = 4096
_MAX_DAYS = 400  # active days counted (as sustained.py): the state must not grow with the log's length


# A capped set of distinct slot numbers (days, 5-minute buckets): a tuple while small, then a sorted array of 64-bit ints.
# A busy account's active buckets, held as a set, cost ~16 KB of hash table plus 32 bytes per int object (~25 KB per
# account in `scan default`, a third of all detector state); as an array, 8 bytes each. Events come in time order,
# so a new slot is nearly always appended; membership is a bisection.
Slots = tuple[int, ...] | array


def add_slot(values: Slots, value: int, cap: int) -> Slots:
    """``values`` with ``value`` added unless present or ``cap`` values are held already (exactly a capped ``set.add``);
    assign the result back."""
    if isinstance(values, tuple):
        if value in values or len(values) >= cap:
            return values
        if len(values) < SMALL:
            return (*values, value)
        return array("q", sorted((*values, value)))
    n = len(values)
    last = values[-1]
    if value == last:
        return values
    if value > last:
        if n < cap:
            values.append(value)
        return values
    i = bisect_left(values, value)
    if values[i] != value and n < cap:
        values.insert(i, value)
    return values


class SlotSet(AbstractSet[int]):
    """A read-only set view of an account's slots, without copying them (clustering reads every account's buckets).

    Building a ``set`` of each account's buckets for every report would bring back, all at once at report time,
    the memory the arrays saved (the peak of ``scan`` is the report). ``&`` of two views intersects the sorted
    arrays with numpy; ``in`` is a bisection. The view reads the live array: use it before the next update.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Slots) -> None:
        self._values = values if isinstance(values, array) else array("q", sorted(values))

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[int]:
        return iter(self._values)

    def __contains__(self, value: object) -> bool:
        values = self._values
        if not isinstance(value, int):
            return False
        i = bisect_left(values, value)
        return i < len(values) and values[i] == value

    def __and__(self, other: AbstractSet[object]) -> SlotSet:
        if not isinstance(other, SlotSet):
            return SlotSet(tuple(sorted(v for v in self._values if v in other)))
        import numpy as np  # only at report time, and the report's clustering has imported it already

        mine = np.frombuffer(self._values, dtype=np.int64)
        theirs = np.frombuffer(other._values, dtype=np.int64)
        return SlotSet(array("q", np.intersect1d(mine, theirs, assume_unique=True).tobytes()))


@dataclass(slots=True)  # one per account: no per-instance __dict__ (docs/detection.md, "Memory")
class _State:
    requests: int = 0
    utc_hours: list[int] = field(default_factory=lambda: [0] * 24)
    local_day: int = 0
    local_known: int = 0
    days: Slots = ()  # small tuple, then a sorted array (add_slot)
    buckets: Slots = ()


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
        state.days = add_slot(state.days, hour // 24, _MAX_DAYS)
        state.buckets = add_slot(state.buckets, int(ts // 300), _MAX_BUCKETS)
        attestation = event.get("attestation") or {}
        offset = attestation.get("utc_offset_min")
        if isinstance(offset, int):
            state.local_known += 1
            local_hour = int((ts + offset * 60) // 3600) % 24
            if 7 <= local_hour <= 23:
                state.local_day += 1

    def buckets(self, account_id: str) -> SlotSet:
        """The account's active 5-minute buckets, as a set view of its state (no copy: see :class:`SlotSet`)."""
        state = self.accounts.get(account_id)
        return SlotSet(() if state is None else state.buckets)

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
