"""Arrival surges: many accounts first seen in the same hours, far more than the log's *local* arrival rate.

A campaign of hundreds of aged accounts has no creation burst (``scan --accounts`` sees sign-ups spread over
a year), but it starts as one script starts: its accounts send their first request within hours of each other,
when a handful of accounts an hour arrive otherwise. Such a surge is a :class:`~distillguard.detect.cohorts.Block`
(family ``time``), and :func:`~distillguard.detect.cohorts.find_cohorts` then asks of it what it asks of a
creation burst: which traits its accounts carry far more often than the background does. A surge alone is
never evidence — a model's release day brings its own surge of people — only a surge's over-represented
traits are.

The null model is local, because arrivals are not steady: at a log's start every account active at all is
"first seen", and the count falls for days after; people arrive by day, not by night; a release day brings
early adopters. So an hour's expected arrivals is the larger of two estimates: the median of the hours around
it (``CONTEXT_H`` either side, the ``GUARD_H`` nearest left out so a surge does not raise its own baseline),
and the log's warm-up — how many accounts would be seen for the first time in that hour if every account had
been active since before the log began, each at its own rate over the log (a first sight after ``t`` hours
has probability ``exp(−rate·t)``; this is what keeps the log's first hours from looking like a surge). An hour
surges when it holds ``ARRIVAL_EXCESS`` times that; consecutive surging hours are one block of at least
``ARRIVAL_MIN`` accounts.

Accounts whose arrival is their sign-up (created less than ``NEW_ACCOUNT_S`` before their first request,
by the operator's records) are left out: a burst of sign-ups is :func:`~distillguard.detect.cohorts.burst_runs`'
case, and people who sign up for a new model on its release day are the surge a release brings. Without
metadata every account counts. Cost: one pass over the accounts' first-seen times and an array of hourly
counts; no pairs.

A surge is counted over all accounts, so a campaign ramped up over many hours, started inside the log's warm-up,
or small beside a large log's arrivals makes none. So every window of ``WINDOWS_H`` hours is a block as well
(``_windows``): not an excess of the hour, but a test of each trait's own arrivals in it against the trait's
share among accounts that arrived at other times (``Block.exclusive``), with a carrier admitted only through a
kind of trait that is rare in the background (``Block.rare_below``): a window is one of many, and its strangers
are all of its hours' arrivals.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from distillguard.detect.accounts import AccountMeta
from distillguard.detect.cohorts import ARRIVAL_KINDS, Block

__all__ = ["ARRIVAL_MIN", "arrival_blocks"]

HOUR_S = 3600.0
# How many hours either side of an hour make its local baseline, and how many nearest ones are left out of it.
CONTEXT_H = 24
GUARD_H = 2
# An hour surges when its arrivals reach this many times its baseline (never below one arrival an hour) ...
ARRIVAL_EXCESS = 4.0
BASELINE_FLOOR = 1.0
# ... and a run of surging hours is a block when it holds at least this many accounts.
ARRIVAL_MIN = 20
# A surge's carrier joins a cohort when fewer than this many of the surge's strangers are expected to match it
# (``cohorts.find_cohorts``); a creation burst's run admits at 0.25. Stricter, because strangers come together in
# the same hours for one public reason (a model's release, a launch post) and then share that day's popular client
# and parameter sets: on dev seed 1, 0.25 admitted three people of a release-day surge into a campaign's cohort.
ADMIT_BELOW = 0.01
# Arrival windows: every window of these many hours (stepped by half of it) with at least WINDOW_MIN first-seen accounts
# is a block too. A trait far more common among one window's arrivals than in the background is a script's arrival
# rate, not the log's: a campaign too small beside everyone's arrivals, or ramped up over hours, makes no hour surge
# (20 accounts over six hours; 500 in a log of 100,000), yet the arrivals on its traits are the trait's own surge.
WINDOWS_H = (4, 24)
WINDOW_MIN = 10
# A window's carrier must match one kind of its significant traits that at most this share of the background carries
# (``Block.rare_below``): a private wrapper, system prompt or parameter set, a hosting network, rotation.
WINDOW_RARE = 0.01
# Created less than this before its first request: the account's arrival is its sign-up, not a surge's.
NEW_ACCOUNT_S = 86_400.0


def arrival_blocks(activity: Mapping[str, tuple[float, int]], log_end: float, exclude: AbstractSet[str],
                   metadata: Mapping[str, AccountMeta] | None = None) -> list[Block]:
    """Blocks of accounts first seen in a surge of arrivals (module docstring), earliest first, then every arrival
    window (``WINDOWS_H``) of at least ``WINDOW_MIN`` accounts, earliest first, shorter windows first.

    ``activity``: each account's first request (POSIX seconds) and its number of requests; ``log_end``: the latest
    request of the log; ``exclude``: accounts already in another block (a creation burst's run); ``metadata``:
    creation times, to leave out accounts that arrive as they sign up.
    """
    metadata = metadata or {}
    by_hour: dict[int, list[str]] = defaultdict(list)
    rates: dict[float, int] = defaultdict(int)  # requests per second if spread over the whole log, binned → accounts
    log_start = min((t for t, _ in activity.values()), default=0.0)
    span = max(86_400.0, log_end - log_start)
    for account, (t, requests) in activity.items():
        if account in exclude:
            continue
        meta = metadata.get(account)
        if meta is not None and meta.created_at is not None and t - meta.created_at < NEW_ACCOUNT_S:
            continue
        by_hour[int(t // HOUR_S)].append(account)
        rates[2.0 ** (round(4 * math.log2(max(1, requests) / span)) / 4)] += 1
    if not by_hour:
        return []
    first, last = min(by_hour), max(by_hour)
    counts = [len(by_hour.get(h, ())) for h in range(first, last + 1)]
    baselines: list[float] = []  # each hour's expected arrivals
    for i in range(len(counts)):
        around = counts[max(0, i - CONTEXT_H):max(0, i - GUARD_H)] + counts[i + GUARD_H + 1:i + CONTEXT_H + 1]
        baselines.append(max(BASELINE_FLOOR, statistics.median(around) if around else 0.0,
                             _warm_up((first + i) * HOUR_S - log_start, rates)))
    surging = [(first + i, baselines[i]) for i, count in enumerate(counts)
               if count >= ARRIVAL_EXCESS * BASELINE_FLOOR and count >= ARRIVAL_EXCESS * baselines[i]]
    blocks: list[Block] = []
    run: list[tuple[int, float]] = []
    for hour, baseline in surging:
        if run and hour != run[-1][0] + 1:
            blocks += _block(run, by_hour)
            run = []
        run.append((hour, baseline))
    blocks += _block(run, by_hour)
    return blocks + _windows(first, counts, baselines, by_hour)


def _windows(first: int, counts: list[int], baselines: list[float], by_hour: Mapping[int, list[str]]) -> list[Block]:
    """Every ``WINDOWS_H`` window of hours, stepped by half its length, holding at least ``WINDOW_MIN`` arrivals: a
    block whose strangers are all its hours' expected arrivals (an excess only of the trait, not of the hour)."""
    blocks = []
    for width in WINDOWS_H:
        step = max(1, width // 2)
        for i in range(0, max(1, len(counts) - step), step):
            hours = range(i, min(len(counts), i + width))
            n = sum(counts[h] for h in hours)
            if n < WINDOW_MIN:
                continue
            members = tuple(a for h in hours for a in sorted(by_hour.get(first + h, ())))
            start, end = (first + hours[0]) * HOUR_S, (first + hours[-1] + 1) * HOUR_S
            expected = sum(baselines[h] for h in hours)
            label = f"{n} accounts first seen {_when(start)}–{_when(end)}, where such hours bring {expected:.0f}"
            blocks.append(Block(label, "time", members, expected, ADMIT_BELOW, ARRIVAL_KINDS, by_kind=True,
                                origin=f"{width}-hour arrival window", exclusive=False, rare_below=WINDOW_RARE))
    return blocks


def _warm_up(since_start: float, rates: Mapping[float, int]) -> float:
    """How many accounts a log shows for the first time in the hour starting ``since_start`` seconds after its first
    request, were every account active since before the log began at its own rate (``rates``: requests per second →
    accounts): the log's start is every account's first sight, and the first sights thin out as ``exp(−rate × t)``."""
    t0, t1 = max(0.0, since_start), max(0.0, since_start) + HOUR_S
    return sum(n * (math.exp(-rate * t0) - math.exp(-rate * t1)) for rate, n in rates.items())


def _block(run: list[tuple[int, float]], by_hour: Mapping[int, list[str]]) -> list[Block]:
    if not run:
        return []
    members = tuple(a for hour, _ in run for a in sorted(by_hour[hour]))
    if len(members) < ARRIVAL_MIN:
        return []
    start, end = run[0][0] * HOUR_S, (run[-1][0] + 1) * HOUR_S
    expected = sum(baseline for _, baseline in run)
    label = (f"{len(members)} accounts first seen {_when(start)}–{_when(end)[-9:]}, where the hours around "
             f"bring {expected:.0f}")
    return [Block(label, "time", members, expected, ADMIT_BELOW, ARRIVAL_KINDS, by_kind=True, origin="arrival surge")]


def _when(ts: float) -> str:
    return f"{dt.datetime.fromtimestamp(ts, dt.UTC):%Y-%m-%d %H:%M} UTC"
