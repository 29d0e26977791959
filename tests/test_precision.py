"""Legitimate populations kept out of `medium` and `high` by what makes their behaviour not extraction (issue #11,
engineer `legit2`, stop 18).

- A benchmark-sized batch that ends within two days is as much a one-off batch as one sent in an hour
  (``sustained.burst_of``): it keeps at most half of its score, however it was paced.
"""

from __future__ import annotations

from distillguard.detect import Scanner
from distillguard.detect.scanner import HIGH
from distillguard.detect.sustained import burst_of
from tests.test_attribution import DAY, T0
from tests.test_detect_robust import HOUR


def test_a_benchmark_paced_over_36_hours_is_a_one_off_batch_as_one_sent_in_an_hour() -> None:
    """1,500 prompts with a reasoning wrapper from a data centre, paced over 36 hours and never again: a batch of a
    benchmark's size that ends within two days has not come back. Counted half sustained (before), it kept 0.75 of its
    score (0.75: `medium`, what set the legitimate 99.5th percentile of ``bench/margin.py --perturb``); now, like a
    one-hour run, at most half (the edge of `medium`). The same prompts sent 300 a day for five days stay `high`."""
    from tests.test_margin import _benchmark

    assert burst_of(36.0, 3, 1500) > 0.95 and burst_of(1.0, 1, 1500) > 0.95
    assert burst_of(47.0, 2, 1500) > 0.5 and burst_of(60.0, 3, 1500) < 0.1  # more than two days: it went on
    scanner = Scanner()
    _benchmark(scanner, "paced", [(T0 + 12 * HOUR, 1500, 36 * HOUR / 1500)])
    _benchmark(scanner, "hour", [(T0 + 12 * HOUR, 1500, 2.0)], ip="159.89.11.5")
    _benchmark(scanner, "harvest", [(T0 + day * DAY + 9 * HOUR, 300, 20.0) for day in range(5)], ip="167.99.4.20")
    scores = {e["account_id"]: e["distillation_score"] for e in scanner.report()["accounts"]}
    assert scores["paced"] <= scores["hour"] + 0.02 and scores["paced"] < 0.55, scores  # before: 0.75
    assert scores["harvest"] >= HIGH
