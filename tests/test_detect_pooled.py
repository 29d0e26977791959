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
from tests.test_detect_robust import CODE_TASKS, DAY, HOUR, T0, TASKS, event

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


def _best_own(scanner: Scanner, accounts: list[str]) -> float:
    """The highest of the accounts' own distillation scores (before any cluster lifts them)."""
    scanner._refresh()
    return max(scanner._evidence_cache[a][0][0] for a in accounts)


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
    own = _best_own(scanner, accounts)
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


def _sleeper_day_one(scanner: Scanner, accounts: list[str]) -> None:
    """A sleeper fleet's first day: each account sends six single-turn requests over daytime hours, one in
    sixteen of the fleet's prompts eliciting reasoning, long answers, from one hosting network."""
    n = 0
    for k in range(6):
        for i, account in enumerate(accounts):
            n += 1
            task = TASKS[n % len(TASKS)].format(n=n)
            text = f"{task}\n\n{ELICIT}" if n % 16 == 0 else task
            scanner.update(event(account, T0 + 8 * HOUR + k * 1.5 * HOUR + i * 30, [text], answer_tokens=500,
                                 ip=f"203.0.113.{i % 200}", asn=16509, hosting=True))


def test_sleeper_fleet_tied_tightly_reaches_high_on_its_first_day() -> None:
    """Extraction spread across a hundred accounts is sustained, as extraction across days is: the fleet's first
    day, pooled, is high although no member is (counted over one day alone, the pool scores 0.62)."""
    scanner = Scanner()
    accounts = [f"sleeper{i}" for i in range(100)]
    _sleeper_day_one(scanner, accounts)
    own = _best_own(scanner, accounts)
    tight = scanner._pooled(_cluster(accounts, 0.9))
    assert tight is not None and tight.score >= 0.8 > own, (tight.detail, own)
    assert tight.numbers["pooled_sustained_extraction"] > 0.7 and tight.numbers["pooled_token_economics"] > 0.3
    assert "sustained across accounts" in tight.detail
    # The same day's traffic from a group attribution ties only weakly is not lifted to high by its spread.
    looser = scanner._pooled(_cluster(accounts, 0.45))
    assert looser is None or looser.score < 0.5, looser.detail


def test_one_off_evaluation_jobs_pooled_stay_below_high() -> None:
    """Three benchmark runs with a public reasoning wrapper, each hundreds of prompts within an hour, even if
    attribution tied them tightly: each member is a one-off batch job, so tied together they are still one-off
    runs (the pooled score keeps the burst factor, half of it) although their 1,800 maths prompts are a sweep in depth."""
    scanner = Scanner()
    accounts = [f"evaljob{i}" for i in range(3)]
    for j, account in enumerate(accounts):
        for n in range(600):
            text = f"Solve for x: {n}x + {j} = {n + 22}.\nLet's think step by step."
            scanner.update(event(account, T0 + j * DAY + 10 * HOUR + n * 5, [text], answer_tokens=400, asn=16509,
                                 hosting=True, ip=f"198.51.100.{j}", max_tokens=4096))
    scanner._refresh()
    pooled = scanner._pooled(_cluster(accounts, 0.95))
    assert pooled is not None and pooled.score < 0.8, pooled.detail
    assert pooled.numbers["pooled_coverage_sweep"] > 0.9  # the depth is seen; the burst is what holds them
    scanner._clusters = lambda own: []  # type: ignore[method-assign]
    report = scanner.report()
    assert all(a["distillation_score"] < 0.8 for a in report["accounts"])


def test_tight_fleet_sweeping_without_any_reasoning_wording_is_high_and_a_loose_one_is_not() -> None:
    """No elicitation, ordinary parameters, one hosting network: what is left is attribution (the fleet), the
    sweep's shape and its sustained volume — three independent families that together reach high (without
    attribution as a family the pool scores 0.73, medium), while the same traffic loosely tied stays low."""
    scanner = Scanner()
    accounts = [f"sweep{i}" for i in range(24)]
    _fleet(scanner, accounts, per_account_day=25, days=2, eliciting=False)
    own = _best_own(scanner, accounts)
    tight = scanner._pooled(_cluster(accounts, 0.9))
    assert tight is not None and tight.score >= 0.8 > own, (tight.detail, own)
    assert tight.numbers["pooled_cot_elicitation"] == 0.0 and "one more family" in tight.detail
    loose = scanner._pooled(_cluster(accounts, 0.4))
    assert loose is None or loose.score < 0.5, loose.detail


def test_tight_fleet_sweeping_one_capability_is_high() -> None:
    """A code-only sweep spread over 24 accounts (25 single-turn coding tasks per account-day, two days, no
    elicitation): no capability breadth, but its depth in one capability is a sweep's, and with attribution and the
    sustained volume that reaches high (before depth counted, coverage_sweep was 0 and the pool 0.48)."""
    scanner = Scanner()
    accounts = [f"coder{i}" for i in range(24)]
    n = 0
    for day in range(2):
        for i, account in enumerate(accounts):
            for k in range(25):
                n += 1
                task = CODE_TASKS[n % len(CODE_TASKS)].format(n=n)
                scanner.update(event(account, T0 + day * DAY + 9 * HOUR + i * 60 + k * 900, [task], answer_tokens=500))
    own = _best_own(scanner, accounts)
    tight = scanner._pooled(_cluster(accounts, 0.9))
    assert tight is not None and tight.score >= 0.8 > own, (tight.detail, own)
    assert tight.numbers["pooled_coverage_sweep"] > 0.9 and "one domain in depth" in tight.detail
