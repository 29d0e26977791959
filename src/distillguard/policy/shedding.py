"""Load shedding for the scorer's backlog: count every event left unscored, and say so in one line per interval.

The hand-off from the gateway to the online scorer (the child process's queue,
or the fleet's Redis stream) is bounded: when the scorer falls behind, new
events are *not scored* rather than piling up in memory. They are still in the
event log (the sink never depends on the scorer), so ``scan`` sees them. Every
such event is counted (``dg_scorer_shed_events_total``) and a summary line is
logged at most once per ``every_s`` by a background thread — never one line per
event, never silence.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["ShedCounter", "Sheds"]


class ShedCounter:
    """Events shed from scoring: ``add`` on any thread (cheap), ``maybe_log`` from a background thread."""

    def __init__(self, logger: logging.Logger, where: str, *, every_s: float = 10.0) -> None:
        self.log = logger
        self.where = where  # what was full, for the log line: "the scorer queue", "the scorer stream"
        self.every_s = every_s
        self.total = 0
        self._logged = 0
        self._reasons: dict[str, int] = {}  # since the last log line
        self.by_reason: dict[str, int] = {}  # since the start, for the metric's ``reason`` label
        self._lock = threading.Lock()
        self._next_log = 0.0

    def add(self, n: int, reason: str) -> None:
        """``reason``: a short label (``queue_full``, ``stream_full``, ``buffer_full``, ``redis_unavailable``)."""
        with self._lock:
            self.total += n
            self._reasons[reason] = self._reasons.get(reason, 0) + n
            self.by_reason[reason] = self.by_reason.get(reason, 0) + n

    def maybe_log(self, *, force: bool = False) -> None:
        """Log what was shed since the last line, if anything and if the interval has passed (or ``force``)."""
        now = time.monotonic()
        if self.total == self._logged or (not force and now < self._next_log):
            return
        with self._lock:
            n = self.total - self._logged
            reasons, self._reasons = self._reasons, {}
            self._logged = self.total
        self._next_log = now + self.every_s
        why = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
        self.log.warning("online scorer: shed %d events from scoring (%s) at %s; they are in the event log "
                         "(total shed %d; metric dg_scorer_shed_events_total)", n, why, self.where, self.total)


class Sheds:
    """``shed`` and ``shed_by_reason`` (the :class:`~distillguard.policy.link.ScorerLink` members) from ``self.shedding``."""

    shedding: ShedCounter

    @property
    def shed(self) -> int:
        """Events never scored because the backlog was at its bound or the hand-off failed (they are in the event log)."""
        return self.shedding.total

    @property
    def shed_by_reason(self) -> dict[str, int]:
        return dict(self.shedding.by_reason)
