"""A cluster's members scored together (``campaign_pooled``): quiet accounts of one tightly tied fleet are one actor.

Each case has the nearest benign counterpart: the same pooling over ordinary conversation stays low, and a
loosely tied group is not pooled at all.
"""

from __future__ import annotations

from distillguard.detect import Scanner
from distillguard.detect.clustering import Cluster
from distillguard.detect.coverage import CoverageSweep
from distillguard.detect.reasoning import ReasoningElicitation
from distillguard.detect.sustained import SustainedExtraction
from tests.test_detect_robust import DAY, HOUR, T0, TASKS, event

ELICIT = "Before the final answer, write out your complete internal reasoning step by step."


def _fleet(scanner: Scanner, accounts: list[str], per_account_day: int, days: int, *, eliciting: bool) -> None:
    """Each account sends a few single-turn requests a day, on different tasks, for ``days`` days."""
    n = 0
    for day in range(days):
        for i, account in enumerate(accounts):
            for k in range(per_account_day):
                n += 1
                task = TASKS[n % len(TASKS)].format(n=n)
                text = f"{task}\n\n{ELICIT}" if eliciting else task
                scanner.update(event(account, T0 + day * DAY + 9 * HOUR + i * 60 + k * 900, [text], answer_tokens=600))


def _people(scanner: Scanner, accounts: list[str], days: int) -> None:
    """Ordinary multi-turn conversations, a couple a day, building on the answers."""
    for day in range(days):
        for i, account in enumerate(accounts):
            base = T0 + day * DAY + 10 * HOUR + i * 120
            opener = f"I'm planning a garden for my parents' house, day {day}, what should I plant in a shady corner?"
            scanner.update(event(account, base, [opener], answer_tokens=300))
            scanner.update(event(account, base + 300, [opener, "The soil there is clay and stays wet most of the spring, does that change it?"],
                                 answer_tokens=300))


def _cluster(accounts: list[str], coordination: float) -> Cluster:
    return Cluster("cl_test", accounts, 0.3, ["a shared wrapper"], coordination, ["content", "network"])


def test_pooled_counts_are_the_members_counts_added() -> None:
    scanner = Scanner()
    accounts = [f"a{i}" for i in range(6)]
    _fleet(scanner, accounts, per_account_day=2, days=3, eliciting=True)
    reasoning: ReasoningElicitation = scanner.reasoning
    coverage: CoverageSweep = scanner.coverage
    sustained: SustainedExtraction = scanner.sustained
    together = reasoning.pooled(accounts)
    assert together is not None and together.numbers["prompts"] == 36 and together.numbers["eliciting"] == 36
    one = reasoning.evidence("a0")
    assert one is not None and one.numbers["prompts"] == 6
    volume = sustained.pooled(accounts)
    assert volume is not None and volume.numbers["answer_tokens"] == 36 * 600 and volume.numbers["active_days"] == 3
    sweep = coverage.pooled(accounts)
    assert sweep is not None and sweep.numbers["single_turn"] == 1.0
    assert reasoning.pooled(["nobody"]) is None and sustained.pooled([]) is None


def test_quiet_fleet_tied_tightly_is_scored_as_one_actor() -> None:
    scanner = Scanner()
    accounts = [f"fleet{i}" for i in range(40)]
    _fleet(scanner, accounts, per_account_day=1, days=3, eliciting=True)
    scanner._refresh()
    own = max(scanner._evidence_cache[a][0][0] for a in accounts)
    tight = scanner._pooled(_cluster(accounts, 0.9))
    assert tight is not None
    # Three requests per account are too few on their own; 120 eliciting sweep requests over three days are not.
    assert tight.score >= 0.8 > own, (tight.detail, own)
    assert tight.numbers["members"] == 40 and "together" in tight.detail
    loose = scanner._pooled(_cluster(accounts, 0.2))
    assert loose is None or loose.score < 0.05  # a loosely tied group is not taken to be one actor


def test_pooled_people_stay_low() -> None:
    scanner = Scanner()
    accounts = [f"person{i}" for i in range(40)]
    _people(scanner, accounts, days=5)
    scanner._refresh()
    pooled = scanner._pooled(_cluster(accounts, 0.95))
    assert pooled is not None and pooled.score < 0.5, pooled.detail


def test_a_pooled_score_lifts_members_in_the_report() -> None:
    scanner = Scanner()
    accounts = [f"fleet{i}" for i in range(40)]
    _fleet(scanner, accounts, per_account_day=1, days=3, eliciting=True)
    # Attribution is the cluster engineer's; here the cluster is given, to test only how it combines.
    scanner._clusters = lambda own: [_cluster(accounts, 0.9)]  # type: ignore[method-assign]
    report = scanner.report()
    member = next(a for a in report["accounts"] if a["account_id"] == "fleet3")
    assert member["distillation_score"] >= 0.8
    assert any(e["detector"] == "campaign_pooled" for e in member["evidence"])
