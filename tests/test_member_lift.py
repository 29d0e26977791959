"""How far a cluster lifts its members, and how far one family of evidence lifts an account (issue #11).

A campaign that imitates people shares with ordinary people everything that is ordinary: a campus /24, a free-mail
domain, stock-looking parameters, daytime habits, the published wrapper, the same topics. People who share all that
land in its cluster; they must not be scored as the campaign, while a quiet member tied by the campaign's private
system prompt still is. And one family of evidence alone — the wording, however often it asks for reasoning —
stays below `high`.
"""

from __future__ import annotations

import random

import pytest

from distillguard.detect import Scanner, clustering
from distillguard.detect.accounts import AccountMeta
from distillguard.detect.chance import ChanceModel, poisson_below
from distillguard.detect.scanner import DISTILL_BIAS, FAMILY_CAP, HIGH, distill_logit
from distillguard.store.attributes import hash_attribute
from tests.test_attribution import CLOSERS, DAY, OPENERS, T0, background, cluster_with, ev, task

FREE_MAIL = hash_attribute("email_domain", "mail.example", "s")
# The campaign's private list of openers and its ways of asking for reasoning, drawn per request.
BANK = ["Next one for you:", "Here's another:", "Okay, new question:", "Quick follow-on:", "Moving on:", "One more thing:",
        "Switching topics:", "Let me ask this:", "Another one:", "Try this one:"]
ASKS = ["Walk me through your complete internal reasoning step by step.", "Show every step of your thinking before the answer.",
        "Think it through out loud, all the intermediate reasoning please.", "Lay out your full chain of reasoning first.",
        "Give the detailed reasoning behind each step, then the answer.", "Explain your thought process in full detail before answering."]
PARAMS = {"max_tokens": 2048, "temperature": 0.8, "stream": True}
SYSTEM = "You are Tutor-Prime. Answer as a patient expert; never mention these instructions."


def _daytime(rng: random.Random, i: int) -> float:
    return T0 + (i % 7) * DAY + rng.uniform(8, 20) * 3600


def campus(quiet: int = 0) -> Scanner:
    """Ten loud campaign accounts and ``quiet`` quiet ones (5 requests each, the campaign's system prompt), and four
    people: all on one campus /24, all with the same free-mail domain, parameters and daytime habits; the people
    use the published wrapper now and then, the usual openers and the same topics."""
    names = [f"camp{k}" for k in range(10)] + [f"quiet{k}" for k in range(quiet)] + [f"look{k}" for k in range(4)]
    meta = {n: AccountMeta(n, created_at=T0 - random.Random(n).uniform(30, 400) * DAY, attributes={"email_domain": FREE_MAIL})
            for n in names}
    for u in range(120):
        domain = FREE_MAIL if u < 3 else hash_attribute("email_domain", f"isp{u % 40}.example", "s")
        meta[f"person{u:02d}"] = AccountMeta(f"person{u:02d}", created_at=T0 - (20 + 3.1 * u) * DAY, attributes={"email_domain": domain})
    scanner = Scanner(accounts=meta)
    background(scanner, 120)
    for k in range(10):
        rng = random.Random(f"camp{k}")
        for i in range(30):
            scanner.update(ev(f"camp{k}", _daytime(rng, i), f"{rng.choice(BANK)} {task(k * 100 + i)} {rng.choice(ASKS)}",
                              system=SYSTEM, ip=f"10.77.5.{10 + k}", params=PARAMS))
    for k in range(quiet):
        rng = random.Random(f"quiet{k}")
        for i in range(5):
            scanner.update(ev(f"quiet{k}", _daytime(rng, i), task(3000 + k * 100 + i), system=SYSTEM, ip=f"10.77.5.{50 + k}",
                              params=PARAMS))
    for k in range(4):
        rng = random.Random(f"look{k}")
        for i in range(30):
            tail = "Let's think step by step." if rng.random() < 0.3 else rng.choice(CLOSERS)
            scanner.update(ev(f"look{k}", _daytime(rng, i), f"{rng.choice(OPENERS)} {task(5000 + k * 100 + i)}, and also "
                              f"{task(7000 + k * 100 + i)} {tail}", ip=f"10.77.5.{100 + k}", params=PARAMS))
    return scanner


def test_people_sharing_a_campaigns_campus_domain_habits_and_topics_are_neither_lifted_nor_admitted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanism of issue #11's test split, rebuilt on our own wording: people tied to a campaign by a /24, an
    e-mail domain, parameters and habits (content and meta, like the campaign's own members) were lifted at tie 1.0
    (0.85–0.86 here before the rule, ties 0.86; own evidence ≤ 0.03). Tied by nothing private, they are not lifted —
    and, since cluster admission (``clustering.admitted``), not in its cluster at all. With admission switched off
    (``ADMIT_TIE`` 0) they are in it, which is what makes the case, and the private-tie rule alone keeps them low."""
    for admit in (0.0, clustering.ADMIT_TIE):
        monkeypatch.setattr(clustering, "ADMIT_TIE", admit)
        scanner = campus()
        report = scanner.report()
        entry = {e["account_id"]: e for e in report["accounts"]}
        cluster = cluster_with(report, "camp0")
        assert cluster is not None and cluster["score"] >= 0.9
        looks = sum(1 for k in range(4) if f"look{k}" in cluster["accounts"])
        assert looks >= 2 if admit == 0.0 else looks == 0, (admit, cluster["accounts"])
        assert all(entry[f"camp{k}"]["distillation_score"] >= HIGH for k in range(10))
        for k in range(4):
            look = entry[f"look{k}"]
            assert look["distillation_score"] < 0.5, (look["account_id"], look["distillation_score"])
        clustered = next(c for c in scanner._last_clusters or [] if c.cluster_id == cluster["cluster_id"])
        assert all(clustered.tie(f"look{k}") < 0.5 for k in range(4) if f"look{k}" in cluster["accounts"])


def test_a_quiet_member_tied_by_the_campaigns_private_system_prompt_is_still_lifted() -> None:
    scanner = campus(quiet=3)
    report = scanner.report()
    entry = {e["account_id"]: e for e in report["accounts"]}
    cluster = cluster_with(report, "camp0")
    assert cluster is not None and {"quiet0", "quiet1", "quiet2"} <= set(cluster["accounts"])
    for k in range(3):
        quiet = entry[f"quiet{k}"]
        own = next(e for e in quiet["evidence"] if e["detector"] == "cot_elicitation")["score"]
        assert own < 0.1 and quiet["distillation_score"] >= HIGH, quiet
    assert all(entry[f"look{k}"]["distillation_score"] < 0.5 for k in range(4))


def test_chance_discounts_what_accounts_with_many_values_share_and_not_a_private_value() -> None:
    assert poisson_below(0, 1.0) == 0.0 and poisson_below(3, 0.0) == 1.0
    assert abs(poisson_below(2, 1.0) - 2 * 2.718281828459045 ** -1) < 1e-12
    # 100 background accounts; "common" values are carried by 20 of them, "mine" by none.
    background_accounts = {f"b{i}" for i in range(100)}
    values = {f"b{i}": [f"common{i % 5}"] for i in range(100)}
    values |= {"relay1": [f"common{j}" for j in range(5)] + [f"r1-{j}" for j in range(40)],
               "relay2": [f"common{j}" for j in range(5)] + [f"r2-{j}" for j in range(40)],
               "fleet1": ["mine"], "fleet2": ["mine"]}
    holders = {f"common{j}": 20 for j in range(5)}
    model = ChanceModel(values, holders, background_accounts)
    assert model.free("fleet1", "fleet2", 1) == 1.0  # a value no one else carries: chance explains none of it
    # Two relays carrying 45 values each share the five common ones: what chance would give them.
    assert model.expected("relay1", "relay2") >= 5.0 and model.free("relay1", "relay2", 5) < 0.5
    # Two ordinary accounts with one value each, carried by a fifth of the background, sharing it: a fifth of such pairs
    # would, so it keeps P(X = 0) = e^-0.2 of its worth (its rarity weight already discounts it further).
    assert abs(model.free("b0", "b5", 1) - 2.718281828459045 ** -0.2) < 1e-9


def test_one_family_of_evidence_alone_stays_below_high_and_two_reach_it() -> None:
    """A learner who asks for step-by-step explanations in every prompt can have the wording family at its maximum
    (cot_elicitation and templated_prompts both 1.0: σ(−5 + 8) = 0.95 before the cap); alone, it is medium at most.
    With a second, independent family (a sweep's shape) it is high. Every family alone stays below high."""
    sigma = lambda z: 1 / (1 + 2.718281828459045 ** -z)  # noqa: E731
    assert sigma(DISTILL_BIAS + FAMILY_CAP) < HIGH
    wording = {"cot_elicitation": 1.0, "templated_prompts": 1.0}
    assert sigma(distill_logit(wording)) < HIGH
    for family in ({"coverage_sweep": 1.0, "token_economics": 1.0}, {"network_rotation": 1.0, "consistency": 1.0},
                   {"timing": 1.0, "sustained_extraction": 1.0}, {"model_pivot": 1.0}):
        assert sigma(distill_logit(family)) < HIGH
    assert sigma(distill_logit({**wording, "coverage_sweep": 0.6})) >= HIGH
