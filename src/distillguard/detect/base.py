"""The one shape every detector has: ``update(event)``, then ``evidence(account_id)``.

Like scikit-learn's estimators, detectors differ inside and look the same
outside, so ``scan``, the online scorer and the tests treat them alike, and a
new detector touches one file. Scores are mapped to [0, 1] with *fixed*
logistic curves whose midpoints are stated in the code and in
docs/detection.md — never with the batch's own statistics — so a threshold
keeps its meaning across runs and deployments.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from distillguard.events import parse_ts

__all__ = ["AccountStates", "Detector", "Evidence", "confidence", "count_heavy", "event_time", "logistic", "remember", "typical",
           "user_text"]

S = TypeVar("S")


def logistic(x: float, midpoint: float, width: float) -> float:
    """0.5 at ``midpoint``; about 0.12 and 0.88 at ``midpoint ∓ 2·width``."""
    z = (x - midpoint) / width
    if z < -35:
        return 0.0
    return 1.0 / (1.0 + math.exp(-z))


def typical(values: Iterable[float]) -> float:
    """A group's typical member's value: the upper median (the middle one, or the higher of the two), 0 when empty.

    What a cluster's members are compared with (their ties, their bursts, their detectors' scores): one member's own
    value, never an average that one loud member can pull."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


def confidence(n: int, scale: float = 12.0) -> float:
    """How much a rate measured on ``n`` requests can be trusted (0 → 0, 12 → 0.63, 36 → 0.95)."""
    return 1.0 - math.exp(-n / scale)


def user_text(event: Mapping[str, Any]) -> str:
    """The last user message of a request (what the caller is asking now)."""
    messages = (event.get("request") or {}).get("messages") or []
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


def count_heavy(table: dict[str, int], key: str, cap: int) -> None:
    """Count ``key`` in a table of at most ``cap`` keys, keeping the heavy hitters: when the table is full, the keys
    seen once are dropped to make room (a key that recurs in a good share of an account's traffic survives every
    pruning; one-off text, which is most of it, does not)."""
    if key in table:
        table[key] += 1
        return
    if len(table) >= cap:
        for once in [k for k, c in table.items() if c == 1]:
            del table[once]
    if len(table) < cap:
        table[key] = 1


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def remember(memo: dict[K, V], key: K, value: V, cap: int) -> None:
    """``memo[key] = value`` in a memo of at most ``cap`` entries, all forgotten at once when it is full (cheap, and
    what recurs is back soon). The detectors remember what they work out of a prompt's text — a pure function of
    it — keyed by the text's hash, so that a prompt seen again is not read again."""
    if len(memo) >= cap:
        memo.clear()
    memo[key] = value


def event_time(event: Mapping[str, Any]) -> float:
    """The event's time in epoch seconds (the Scanner parses it once into ``_t``)."""
    ts = event.get("_t")
    return float(ts) if ts is not None else parse_ts(event["ts"])


H = TypeVar("H", bound=Hashable)
# A capped set of distinct values, held as a tuple while small. Most of a large provider's accounts are light: at
# 100,000 accounts with one to three requests each, the detectors' per-account sets held one or two values, and an
# empty or one-element set costs 216 bytes where a one-element tuple costs 48. ``len`` and ``in`` work on both.
Distinct = tuple[H, ...] | set[H]
SMALL = 8  # values held in a tuple; from the ninth on, a set (membership tests stay O(1) for busy accounts)


def add_distinct(values: Distinct[H], value: H, cap: int) -> Distinct[H]:
    """``values`` with ``value`` added unless present or ``cap`` values are held already; assign the result back
    (``s.ips = add_distinct(s.ips, ip, 256)``): exactly a capped ``set.add``, in less memory while small."""
    if value in values or len(values) >= cap:
        return values
    if isinstance(values, set):
        values.add(value)
        return values
    if len(values) < SMALL:
        return (*values, value)
    return {*values, value}


class AccountStates(dict[str, S], Generic[S]):
    """One bounded state object per account, made on first sight: ``states.of(event)``."""

    def __init__(self, factory: Callable[[], S]) -> None:
        super().__init__()
        self.factory = factory

    def of(self, event: Mapping[str, Any]) -> S | None:
        """The state of the event's account (created if new), or None for an event without an account."""
        account = event.get("account_id")
        if account is None:
            return None
        state = self.get(account)
        if state is None:
            state = self[account] = self.factory()
        return state


@dataclass(slots=True)  # ~9 per updated account held through a report: no per-instance __dict__
class Evidence:
    detector: str
    score: float
    detail: str
    family: str = "distillation"  # or "reseller"
    numbers: dict[str, Any] = field(default_factory=dict)

    def as_report(self) -> dict[str, Any]:
        # Built in place (no throw-away dict to unpack): a report rebuilds this for every updated account's evidence.
        entry = {"detector": self.detector, "score": round(self.score, 4), "detail": self.detail}
        if self.numbers:
            entry["numbers"] = self.numbers
        return entry


class Detector(ABC):
    name: str = "detector"
    family: str = "distillation"

    @abstractmethod
    def update(self, event: Mapping[str, Any]) -> None:
        """Take one event into account (cheap, bounded memory per account)."""

    @abstractmethod
    def evidence(self, account_id: str) -> Evidence | None:
        """The detector's current verdict on one account, or None when it has nothing to say."""
