"""The seam between the policy engine and whatever scores its events: a child process, or the fleet's central scorer.

The engine hands every event to ``submit`` (on the hot path: must be O(1) and
never block), is called back with each new report, and reads the rest for
``/readyz`` and ``/metrics``. Implementations: :class:`~distillguard.policy.online.OnlineScorer`
(``detection.scorer: local``, a child process per gateway),
:class:`~distillguard.state.scorer_stream.StreamFeed` (``central``: events go to a
Redis stream, decisions come back through the risk snapshot) and, inside
``distillguard scorer``, :class:`~distillguard.policy.central.CentralScorer`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = ["ReportCallback", "ScorerFactory", "ScorerLink"]

ReportCallback = Callable[[dict[str, Any]], None]


class ScorerLink(Protocol):
    @property
    def failed(self) -> bool:
        """The scorer is gone: the last decisions stay in force, new events are not scored."""

    @property
    def backlog(self) -> int:
        """Events handed over but not yet covered by a report."""

    @property
    def shed(self) -> int:
        """Events never scored because the backlog was at its bound (they are in the event log)."""

    @property
    def shed_by_reason(self) -> Mapping[str, int]:
        """``shed`` by reason (the label of ``dg_scorer_shed_events_total``)."""

    @property
    def last_report_at(self) -> float | None:
        """``time.monotonic()`` of the latest report (``None``: none yet)."""

    @property
    def reports(self) -> int:
        """Reports applied so far."""

    @property
    def scored_in_report(self) -> int:
        """Events covered by the latest report."""

    @property
    def scored_accounts(self) -> int | None:
        """Accounts in the latest report of a scorer this process does not hold the report of (the fleet's central
        scorer, from its heartbeat); ``None`` where the engine has the report itself."""

    def submit(self, event: dict[str, Any]) -> None: ...

    def start(self, replay: dict[str, Any] | None = None, indicators_database: str | None = None) -> None:
        """Begin; ``replay`` (``scorer_worker.REPLAY_ENV``'s object) asks to rebuild from the store first, where that applies.

        ``indicators_database``: the store whose imported shared indicators the
        scorer matches and watches for new imports (store/indicators.py,
        ``IndicatorWatch``), where it scores itself."""

    def close(self) -> None: ...


ScorerFactory = Callable[[ReportCallback], ScorerLink]
