"""Legitimate populations kept out of `medium` and `high` by what makes their behaviour not extraction (issue #11,
engineer `legit2`, stop 18).

- An early adopter who asks a new model "show me your reasoning" a handful of times on its release day has asked
  for a handful of traces, not harvested them: the wording family needs dozens of eliciting prompts to count fully
  (``reasoning.TRACES_SCALE``), while attribution still reads the share at its quick confidence (``INTENT_SCALE``).
  The same habit at a harvest's volume stays `high`.
- A benchmark-sized batch that ends within two days is as much a one-off batch as one sent in an hour
  (``sustained.burst_of``): it keeps at most half of its score, however it was paced.
"""

from __future__ import annotations

from distillguard.detect import Scanner
from distillguard.detect.reasoning import INTENT_SCALE, TRACES_SCALE
from distillguard.detect.scanner import HIGH, MEDIUM
from distillguard.detect.sustained import burst_of
from tests.test_attribution import DAY, T0, background, task
from tests.test_detect_robust import HOUR, event

ASK = "Show me your reasoning, step by step, before the answer."


def _adopter(scanner: Scanner, account: str, release: float, *, scale: int = 1, ip: str = "81.2.3.4") -> None:
    """``scale`` × (4 requests on the old model over the three days before ``release``, then 14 on the new model in its
    first day, 6 of them asking for the reasoning): single-turn tasks of several kinds, answered at length."""
    n = 0
    for k in range(scale):
        for i in range(4):
            n += 1
            scanner.update(event(account, release - 3 * DAY + i * 17 * HOUR + k * 60, [task(k * 1000 + i)], answer_tokens=450, ip=ip))
        for i in range(14):
            n += 1
            prompt = f"{task(k * 1000 + 100 + i)} {ASK}" if i % 7 < 3 else task(k * 1000 + 100 + i)
            scanner.update(event(account, release + 600 + i * 1500 + k * 30, [prompt], answer_tokens=450, ip=ip, max_tokens=4096 if i == 0 else None)
                           | {"model": "m2"})


def _scanned(scale: int) -> dict[str, float]:
    scanner = Scanner()
    background(scanner)
    release = T0 + 4 * DAY
    scanner.update(event("someone", release, ["hello there, a first try"]) | {"model": "m2"})  # the release's first sight
    _adopter(scanner, "adopter", release, scale=scale)
    report = scanner.report()
    return {e["account_id"]: e["distillation_score"] for e in report["accounts"]}


def test_a_handful_of_reasoning_asks_on_a_release_day_is_not_a_harvest_and_the_same_at_volume_is() -> None:
    """18 requests, 6 asking for the reasoning, 14 on a new model on its first day, single-turn: three families from one
    handful (before: wording 0.78 at confidence scale 4, `high`; robust dev seed 8's early adopter at 0.91). Ten times
    that — 60 eliciting prompts among 180 — is a harvest of reasoning traces and stays `high`."""
    assert TRACES_SCALE >= 3 * INTENT_SCALE
    scores = _scanned(1)
    assert scores["adopter"] < MEDIUM, scores["adopter"]
    assert _scanned(10)["adopter"] >= HIGH


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
