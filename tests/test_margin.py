"""The margin between campaigns and legitimate accounts, where it is structural (issue #11, engineer `margin`).

Three cases at the edge, each with the counterpart on the other side of it:

- a benchmark evaluation run over two days is still one burst, not sustained extraction; the same prompts over
  five days are;
- a campaign whose accounts are tied by two *private* families (a private system prompt, one payment card) is
  scored as one actor, although two families give it a coordination of only about 0.6; the same accounts untied
  are not;
- a person whose only evidence is one family (the wording, at its maximum) stays below `high` inside a campaign's
  cluster — after the member lift and after the pooled score.
"""

from __future__ import annotations

import random

import pytest

from distillguard.detect import Scanner, clustering
from distillguard.detect.accounts import AccountMeta
from distillguard.detect.scanner import HIGH, MEDIUM, POOL_GATE, attributed
from distillguard.detect.sustained import burst_of
from distillguard.store.attributes import hash_attribute
from tests.test_attribution import DAY, T0, background, ev, task
from tests.test_detect_robust import HOUR, TASKS, event

REASONING_WRAPPER = "Think it through step by step and explain your reasoning before the final answer."


def _benchmark(scanner: Scanner, account: str, plan: list[tuple[float, int, float]], ip: str = "159.89.10.5") -> None:
    """One benchmark's prompts in a reasoning wrapper from one data-centre address: ``plan`` is (start, prompts, gap s)."""
    n = 0
    for start, count, gap in plan:
        for i in range(count):
            n += 1
            scanner.update(event(account, start + i * gap, [f"{TASKS[n % len(TASKS)].format(n=n)}\n\n{REASONING_WRAPPER}"],
                                 answer_tokens=350, ip=ip, asn=14061, country="US", hosting=True, max_tokens=4096))


def test_a_large_batch_needs_more_than_two_days_to_count_as_sustained() -> None:
    assert burst_of(20.0, 2, 1500) >= 0.49 and burst_of(36.0, 3, 1500) >= 0.49  # a 36-hour job touching three UTC days
    assert burst_of(47.0, 2, 1500) >= 0.45
    assert burst_of(60.0, 3, 1500) < 0.1 and burst_of(24.0 * 5, 6, 1500) < 0.05  # extraction that goes on
    # Smaller volumes over two days are scored on what they ask (a campaign's accounts: 150–250 requests).
    assert burst_of(40.0, 2, 200) < 0.15 and burst_of(30.0, 2, 250) < 0.15
    assert burst_of(1.0, 1, 600) > 0.95 and burst_of(0.1, 1, 40) < 0.05  # a one-day batch; a minute's few dozen


@pytest.mark.parametrize("plan", [
    [(T0 + 14 * HOUR, 750, 6.0), (T0 + DAY + 8 * HOUR, 750, 6.0)],  # two halves, afternoon and the next morning
    [(T0 + 12 * HOUR, 1500, 36 * HOUR / 1500)],  # paced over 36 hours, round the clock
], ids=["two-halves", "paced-36h"])
def test_an_evaluation_job_over_two_days_is_not_high_and_the_same_over_five_days_is(plan: list[tuple[float, int, float]]) -> None:
    """1,500 prompts with a reasoning wrapper from a data centre over two days: before the two-day rule, 0.86 (two
    halves) and 0.998 (paced) — `high` — since two active days counted as sustained. The same 1,500 prompts sent 300
    a day for five days are extraction that goes on, and stay `high`."""
    scanner = Scanner()
    _benchmark(scanner, "evaljob", plan)
    _benchmark(scanner, "harvest", [(T0 + day * DAY + 9 * HOUR, 300, 20.0) for day in range(5)], ip="167.99.4.20")
    report = scanner.report()
    entries = {e["account_id"]: e for e in report["accounts"]}
    job, harvest = entries["evaljob"], entries["harvest"]
    assert job["distillation_score"] < HIGH, job
    assert harvest["distillation_score"] >= HIGH
    why = next(e for e in job["evidence"] if e["detector"] == "sustained_extraction")
    assert why["numbers"]["burst"] >= 0.45 and "one-off batch so far" in why["detail"]


ASKS = ["Walk me through your complete internal reasoning step by step.", "Show every step of your thinking before the answer.",
        "Think it through out loud, all the intermediate reasoning please.", "Lay out your full chain of reasoning first."]
SYSTEM = "You are Nimbus-7, a meticulous solver. Follow the house answer format."
PARAMS = {"max_tokens": 2048, "temperature": 0.7, "stream": True}


def _campaign(*, tied: bool, accounts: int = 8, requests: int = 8) -> tuple[Scanner, list[str]]:
    """``accounts`` accounts asking for reasoning on swept tasks, ``requests`` each over four days, each from its own home
    address: ``tied`` — one private system prompt and one payment card (two families, content and meta, both private)
    — or each with its own prompt and card. 120 ordinary people around them."""
    names = [f"camp{k}" for k in range(accounts)]
    cards = {n: hash_attribute("payment_fp", "card-4242" if tied else f"card-{n}", "s") for n in names}
    meta = {n: AccountMeta(n, created_at=T0 - random.Random(n).uniform(30, 400) * DAY, attributes={"payment_fp": cards[n]}) for n in names}
    for u in range(120):
        meta[f"person{u:02d}"] = AccountMeta(f"person{u:02d}", created_at=T0 - (20 + 3.1 * u) * DAY,
                                             attributes={"payment_fp": hash_attribute("payment_fp", f"card{u}", "s")})
    scanner = Scanner(accounts=meta)
    background(scanner, 120)
    for k, name in enumerate(names):
        rng = random.Random(name)
        system = SYSTEM if tied else f"You are solver number {k}; {['be brief', 'be thorough', 'cite sources', 'use tables'][k % 4]}."
        for i in range(requests):
            ask = rng.choice(ASKS) if tied else ASKS[k % len(ASKS)].replace("step", f"step (item {k})")
            scanner.update(ev(name, T0 + (i % 4) * DAY + rng.uniform(0, DAY), f"{task(k * 100 + i)} {ask}",
                              system=system, ip=f"{20 + k}.{7 * k}.9.{k}", params=PARAMS))
    return scanner, names


def test_a_campaign_tied_by_two_private_families_is_high_and_the_same_accounts_untied_are_not() -> None:
    """Eight accounts, eight requests each: alone each is `medium` (its wording). Tied by a private system prompt and
    one card — two link families, coordination 0.59 — the pooled gate read coordination alone and held them at 0.74–0.78
    (`medium`); their ties are private (``Cluster.private`` 1.0), so they are one actor and `high`."""
    scanner, names = _campaign(tied=True)
    report = scanner.report()
    entries = {e["account_id"]: e for e in report["accounts"]}
    cluster = next(c for c in scanner._last_clusters or [] if "camp0" in c.accounts)
    assert set(cluster.accounts) == set(names)
    assert cluster.coordination < 0.65 and cluster.private >= 0.9  # two families, both private
    assert attributed(cluster) > 0.85 and attributed(cluster) > cluster.coordination
    for name in names:
        assert entries[name]["distillation_score"] >= HIGH, entries[name]
        assert any(e["detector"] == "campaign_pooled" and e["score"] >= HIGH for e in entries[name]["evidence"])
    assert all(e["distillation_score"] < MEDIUM for e in report["accounts"] if e["account_id"].startswith("person"))

    scanner, names = _campaign(tied=False)
    report = scanner.report()
    entries = {e["account_id"]: e for e in report["accounts"]}
    assert not any(set(c.accounts) & set(names) for c in scanner._last_clusters or [])
    assert all(entries[name]["distillation_score"] < HIGH for name in names)


# Each person's own way of asking for reasoning, in every prompt: the wording family at its maximum, in words of
# their own (none of the campaign's, nor each other's).
OWN_ASKS = ["Please write out your complete reasoning, every step, before the final answer.",
            "Show me all of your intermediate reasoning first, then conclude.",
            "Give your complete chain of thought before you settle on anything."]


def test_a_person_whose_only_evidence_is_the_wording_stays_below_high_in_a_campaigns_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """A person asking for reasoning in every prompt (the wording family at its maximum: `medium` alone) who shares
    the campaign's home ISP /24, parameters and habits, and whose card is the campaign's free-mail domain's twin —
    surface traits only. Admission off (``ADMIT_TIE`` 0), so that the person sits in the campaign's cluster: neither
    the cluster's lift nor its pooled score (gate near 1 for the campaign's private ties) takes the person to
    `high`, because both are scaled by the person's own private tie."""
    monkeypatch.setattr(clustering, "ADMIT_TIE", 0.0)
    scanner, names = _campaign(tied=True, accounts=10, requests=12)
    domain = hash_attribute("email_domain", "mail.example", "s")
    for name in names:
        scanner.metadata[name].attributes["email_domain"] = domain  # type: ignore[index]
    for k in range(3):
        person = f"learner{k}"
        scanner.metadata[person] = AccountMeta(person, created_at=T0 - 90 * DAY,  # type: ignore[index]
                                               attributes={"email_domain": domain})
        rng = random.Random(person)
        for i in range(24):
            scanner.update(ev(person, T0 + (i % 4) * DAY + rng.uniform(0, DAY), f"{task(5000 + k * 100 + i)} {OWN_ASKS[k]}",
                              ip=f"{20 + k}.{7 * k}.9.{100 + k}", params=PARAMS))
    report = scanner.report()
    entries = {e["account_id"]: e for e in report["accounts"]}
    cluster = next(c for c in scanner._last_clusters or [] if "camp0" in c.accounts)
    gate = 1 / (1 + 2.718281828459045 ** (-(attributed(cluster) - POOL_GATE[0]) / POOL_GATE[1]))
    assert gate > 0.95 and all(entries[n]["distillation_score"] >= HIGH for n in names)
    inside = [f"learner{k}" for k in range(3) if f"learner{k}" in cluster.accounts]
    assert inside, "the case needs the person in the campaign's cluster"
    for person in (f"learner{k}" for k in range(3)):
        own = next(e["score"] for e in entries[person]["evidence"] if e["detector"] == "cot_elicitation")
        assert own > 0.8, entries[person]  # the wording family at its maximum ...
        assert entries[person]["distillation_score"] < HIGH, entries[person]  # ... and below high at every level


def test_a_fleet_pivots_with_a_harvests_volume_and_its_members_alone_do_not() -> None:
    """Twelve accounts each moving ten requests to a new model on its first day: counted per account, ten requests
    are an early adopter's try (confidence scale 24: score near 0); pooled, 120 requests all moved are a pivot."""
    scanner = Scanner()
    members = [f"pivot{k}" for k in range(12)]
    release = T0 + 3 * DAY
    for k, account in enumerate(members):
        for i in range(10):  # before the release, on the old model
            scanner.update(ev(account, T0 + i * 6 * HOUR + k * 60, task(k * 100 + i)) | {"model": "m1"})
        for i in range(10):  # its first day, all on the new one
            scanner.update(ev(account, release + 600 + i * 2 * HOUR + k * 60, task(k * 100 + 50 + i)) | {"model": "m2"})
    scanner.update(ev("someone", release, "hello") | {"model": "m2"})  # the release's first sight
    own = [scanner.pivot.evidence(a) for a in members]
    assert all(e is not None and e.score < 0.2 for e in own), [e.score for e in own if e]
    pooled = scanner.pivot.pooled(members)
    assert pooled is not None and pooled.score > 0.9 and pooled.numbers["in_window"] == 120, pooled
    assert scanner.pivot.pooled(["nobody"]) is None
