"""What is harvested over time: the volume of extracted answers and reasoning, and whether it is sustained.

Distillation needs a large, sustained flow of answers: days of extraction,
across accounts. A benchmark evaluation looks the same for an hour — hundreds
of single-turn prompts with a reasoning wrapper from a data centre — and then
stops for good. So this detector measures two things:

* **persistence**: how long the account has been extracting — the span
  between its first and last request and its distinct active UTC days. A
  one-off burst has a span of hours and one or two active days;
* **volume**: completion tokens and reasoning characters received, per active
  day and in total;
* **substance**: how long the answers are on average. A training set is made
  of answers worth imitating; an API app that asks for one-line labels or
  dashboard summaries (``max_tokens`` 64, ~30 tokens an answer) can receive
  hundreds of thousands of tokens over weeks without harvesting anything.

What counts as extracted is the answers nothing later builds on: single-turn
requests and generic follow-ups ("continue", "more"). A coding agent's tool
loop or a learner's conversation receives hundreds of answers over a week,
each the context of the next request (:func:`~distillguard.detect.followups.builds_on_earlier`);
a harvest is made of independent ones. On the dev worlds of the `robust`
family, coding agents' volume of every answer (sustained 0.4–0.7) set the
0.5 %-FPR threshold that small campaigns' accounts had to pass.

The score (volume that is also sustained) is evidence like any other; the
*burst* — a batch of hundreds of requests that has not been sustained — is
what :class:`~distillguard.detect.scanner.Scanner` uses to keep one-off
evaluation jobs out of the high band (docs/detection.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from distillguard.detect.base import (
    AccountStates,
    Detector,
    Distinct,
    Evidence,
    add_distinct,
    event_time,
    logistic,
)
from distillguard.detect.context import EventContext

__all__ = ["BATCH_REQUESTS", "BURST_FLOOR", "TWO_DAYS_H", "SustainedExtraction", "answer_tokens", "burst_factor", "burst_of", "job_size", "persistence", "substance"]

_MAX_DAYS = 400
# A one-off burst keeps at most this share of its distillation score (see burst_factor).
BURST_FLOOR = 0.5


def persistence(span_hours: float, active_days: int) -> float:
    """[0, 1]: about 0.1 for activity within 8 hours, 0.5 at 16 hours, 0.9 from a day on two or more UTC days.

    A single UTC day caps it at about 0.5, whatever the span: a job that runs across midnight spans two days,
    but a burst that ends within a day has not yet come back.
    """
    value = logistic(span_hours, 16.0, 3.5)
    return value if active_days >= 2 else min(value, 0.5)


def answer_tokens(response: Mapping[str, Any]) -> int:
    """What one answer gave, in tokens: its completion plus its reasoning trace at 4 characters a token. Coverage's
    independent volume and this detector's built-on answers count the same way."""
    return int(response.get("completion_tokens") or 0) + int(response.get("reasoning_chars") or 0) // 4


def substance(mean_answer_tokens: float) -> float:
    """[0, 1]: whether the answers are worth distilling, from their mean length in tokens (reasoning included).

    0.07 at 30 tokens (a label, a one-line summary), 0.5 at 80, 0.97 at 150 (a paragraph); the simulated and
    real campaigns' answers run to hundreds of tokens.
    """
    return logistic(mean_answer_tokens, 80.0, 20.0)


def job_size(requests: int) -> float:
    """[0, 1]: how much an account's volume looks like a batch job (0.03 at 50 requests, 0.5 at 150, 0.97 at 250)."""
    return logistic(requests, 150.0, 30.0)


# A large batch (BATCH_REQUESTS and more) counts as sustained only once it has gone on for more than two days.
TWO_DAYS_H = 48.0
BATCH_REQUESTS = 400.0


def burst_of(span_hours: float, active_days: int, requests: int) -> float:
    """[0, 1]: how much ``requests`` sent over ``span_hours`` on ``active_days`` UTC days are a one-off batch.

    ``(1 − persistence) × job_size(requests)`` — a few dozen requests in a minute are scored on what they ask, not
    held back as a job; 500 in an hour, never again, are — or, for a large batch (0.5 at ``BATCH_REQUESTS``, 0.97
    at 600), ``(1 − min(persistence, logistic(span; 48 h, 3 h)))``: a batch of a benchmark's size that ends within two
    days has not come back, whatever UTC days it touches, and is as much a one-off batch as one sent in an hour. A
    one-off evaluation run across midnight, paced overnight, or in two halves on consecutive days (1,500 prompts with a
    reasoning wrapper from a data centre) was ``high`` at 0.86–0.998 when two active days counted as sustained
    (``persistence`` 0.9 from a day on); counted half sustained (until stop 18: ``max(0.5, …)``) it kept 0.75 of its
    score and evaluation jobs paced over 36 hours set the legitimate 99.5th percentile of ``bench/margin.py --perturb``
    at 0.75. Only large batches: on dev, an imitates-people campaign's accounts (150–240 requests over about two days)
    lost 0.07–0.17 of their score when the two-day rule applied to every account.
    """
    value = persistence(span_hours, active_days)
    two_day = min(value, logistic(span_hours, TWO_DAYS_H, 3.0))
    return max((1.0 - value) * job_size(requests), (1.0 - two_day) * logistic(requests, BATCH_REQUESTS, 60.0))


def burst_factor(burst: float) -> float:
    """What share of its distillation score an account keeps, from how much it is a one-off burst (0 to 1).

    From 1 (not a burst) down to ``BURST_FLOOR``: a large one-off burst tops out at the edge of the medium band
    (0.5) and has to come back on another day — or belong to a cluster — to reach high. At 0.7 (until stop 14)
    release-day evaluation jobs, whose one benchmark is a sweep in depth (coverage_sweep), sat at 0.64–0.70 and
    set the 0.5 %-FPR threshold: a one-day burst that never returns should not resemble sustained extraction.
    """
    return 1.0 - (1.0 - BURST_FLOOR) * burst


@dataclass(slots=True)  # one per account: no per-instance __dict__ (docs/detection.md, "Memory")
class _State:
    requests: int = 0
    first: float = math.inf
    last: float = -math.inf
    days: Distinct[int] = ()  # a small tuple, then a set (base.add_distinct)
    answer_tokens: int = 0
    reasoning_chars: int = 0
    built: int = 0  # follow-ups that build on an earlier answer, and what they received (tokens, reasoning at 4 a token)
    built_tokens: int = 0


class SustainedExtraction(Detector):
    name = "sustained_extraction"

    def __init__(self) -> None:
        self.accounts: AccountStates[_State] = AccountStates(_State)

    def update(self, event: Mapping[str, Any]) -> None:
        self.update_with(EventContext(event))

    def update_with(self, context: EventContext) -> None:
        """``update`` reading the prompt from the event's shared context (the Scanner works it out once for all)."""
        event = context.event
        s = self.accounts.of(event)
        if s is None:
            return
        ts = event_time(event)
        s.requests += 1
        s.first = min(s.first, ts)
        s.last = max(s.last, ts)
        s.days = add_distinct(s.days, int(ts // 86400), _MAX_DAYS)
        response = event.get("response") or {}
        tokens, reasoning = int(response.get("completion_tokens") or 0), int(response.get("reasoning_chars") or 0)
        s.answer_tokens += tokens
        s.reasoning_chars += reasoning
        if context.follow_up and context.builds_on_earlier:
            s.built += 1
            s.built_tokens += answer_tokens(response)

    def persistence(self, account_id: str) -> float:
        s = self.accounts.get(account_id)
        if s is None or s.requests == 0:
            return 0.0
        return persistence((s.last - s.first) / 3600.0, len(s.days))

    def burst(self, account_id: str) -> float:
        """[0, 1]: a large batch of requests that has not (yet) been sustained — an evaluation job's shape
        (:func:`burst_of`: a few dozen requests in a minute are scored on what they ask, not held back as a job;
        500 in an hour, never again, are; 1,500 over two days are too)."""
        s = self.accounts.get(account_id)
        if s is None or s.requests == 0:
            return 0.0
        return burst_of((s.last - s.first) / 3600.0, len(s.days), s.requests)

    def _pool(self, account_ids: Iterable[str]) -> _State:
        pool = _State()
        days: set[int] = set()
        for account in account_ids:
            s = self.accounts.get(account)
            if s is None or s.requests == 0:
                continue
            pool.requests += s.requests
            pool.first = min(pool.first, s.first)
            pool.last = max(pool.last, s.last)
            pool.answer_tokens += s.answer_tokens
            pool.reasoning_chars += s.reasoning_chars
            pool.built += s.built
            pool.built_tokens += s.built_tokens
            if len(days) < _MAX_DAYS:
                days.update(s.days)
        pool.days = days
        return pool

    def pooled_burst(self, account_ids: Iterable[str]) -> float:
        """:meth:`burst` of several accounts taken together (a cluster's members, as one actor)."""
        pool = self._pool(account_ids)
        if pool.requests == 0:
            return 0.0
        return burst_of((pool.last - pool.first) / 3600.0, len(pool.days), pool.requests)

    def pooled(self, account_ids: Iterable[str], across: float = 0.0) -> Evidence | None:
        """The evidence of several accounts' traffic taken together, as if one actor sent it all (a cluster).

        ``across`` (the cluster's coordination, in [0, 1]) is how firmly the extraction is sustained across
        *accounts*: persistence is then ``max(over time, across)``. Distillation is extraction sustained across
        days or across accounts — a fleet that spreads a sweep's volume over a hundred accounts on its first
        day has no one-off batch's shape, just as :meth:`Scanner.report` relieves a tightly tied member's burst
        by the same coordination.
        """
        return self._evidence_of(self._pool(account_ids), across)

    def evidence(self, account_id: str) -> Evidence | None:
        return self._evidence_of(self.accounts.get(account_id))

    def _evidence_of(self, s: _State | None, across: float = 0.0) -> Evidence | None:
        if s is None or s.requests == 0:
            return None
        span_h = (s.last - s.first) / 3600.0
        days = len(s.days)
        over_time = persistence(span_h, days)
        sustained = max(over_time, min(1.0, max(0.0, across)))
        burst = burst_of(span_h, days, s.requests)
        if sustained > over_time:  # sustained across accounts: a fleet's spread is no one-off batch
            burst = min(burst, 1.0 - sustained)
        # Reasoning characters count as tokens at 4 characters a token; answers that a later turn built on are a
        # conversation's or an agent's working context, not extracted.
        extracted = max(0.0, s.answer_tokens + s.reasoning_chars / 4 - s.built_tokens)
        # Midpoint 60,000 tokens (about 150 long answers); 10x that is near 1. A person's chat over weeks stays
        # well under it; it is the long-run flow a training set needs.
        volume = logistic(math.log10(1.0 + extracted), math.log10(60_000), 0.3)
        mean_answer = extracted / max(1, s.requests - s.built)
        worth = substance(mean_answer)
        score = sustained * volume * worth
        return Evidence(
            self.name, score,
            f"{s.answer_tokens:,} answer tokens and {s.reasoning_chars:,} reasoning characters received over {days} active "
            f"day{'s' if days != 1 else ''} ({span_h:.0f} h from first to last request; "
            f"{s.requests / max(1, days):.0f} requests per active day)"
            + (f"; {s.built} follow-ups built on earlier answers ({s.built_tokens:,} tokens not counted as extracted)" if s.built else "")
            + (f"; answers average {mean_answer:.0f} tokens: short labels or summaries, little to distil" if worth < 0.5 else "")
            + (f"; sustained across accounts as firmly as they are tied ({sustained:.2f})" if sustained > over_time else "")
            + (f"; a one-off batch so far, so the distillation score is scaled by {burst_factor(burst):.2f}" if burst > 0.25 else ""),
            numbers={"answer_tokens": s.answer_tokens, "reasoning_chars": s.reasoning_chars, "active_days": days,
                     "span_hours": round(span_h, 1), "persistence": round(sustained, 3), "burst": round(burst, 3),
                     "mean_answer_tokens": round(mean_answer, 1),
                     "extracted_tokens": round(extracted), "built_on": s.built},
        )
