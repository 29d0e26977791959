"""Arrival windows (detect/arrivals.py): a small campaign ramped up over hours makes no surge of arrivals, but its
trait's arrivals do — it is clustered and caught within a tenth of its requests; a class of learners who start one
textbook's exercises together, and two evaluation jobs of one public benchmark, are not."""

from __future__ import annotations

import random
from typing import Any

from distillguard.detect import Scanner
from distillguard.detect.accounts import AccountMeta
from distillguard.detect.arrivals import arrival_blocks
from distillguard.detect.scanner import HIGH
from tests.test_arrivals import proxy_address
from tests.test_cohorts import DAY, HOUR, PARAMS, T0, ev, maths_task, people

START = T0 + 1.2 * DAY
CAMPAIGN, PER_ACCOUNT = 20, 60


def campaign(meta: dict[str, AccountMeta]) -> list[dict[str, Any]]:
    """20 aged accounts (no creation burst) brought in one by one over six hours, then each sending 60 prompts over
    the next two days: disjoint draws from one maths pool (no item asked twice across the campaign), no wrapper, the
    popular SDK and the background's parameters, a new residential proxy address for every request."""
    rng = random.Random(20)
    out = []
    for k in range(CAMPAIGN):
        name = f"camp{k:02d}"
        meta[name] = AccountMeta(name, created_at=T0 - rng.uniform(30, 400) * DAY)
        params = rng.choice(PARAMS)
        t = START + k * 0.3 * HOUR + rng.uniform(0, 0.2 * HOUR)
        for i in range(PER_ACCOUNT):
            ip, asn = proxy_address(rng)
            out.append(ev(name, t, maths_task(5000 + k * PER_ACCOUNT + i), ip=ip, asn=asn, header="fp-openai-py", params=params))
            t += rng.uniform(0.2, 1.4) * HOUR
    return out


def learners_and_eval_jobs(meta: dict[str, AccountMeta]) -> list[dict[str, Any]]:
    """The hard negatives of the same hours: 15 learners of one course who start the textbook's exercises in the same
    six hours (items drawn from one 150-item pool, so they overlap; a browser, home addresses, "step by step"), and two
    evaluation jobs that each run the same 150 items with "Let's think step by step" from a data centre."""
    rng = random.Random(15)
    out = []
    for u in range(15):
        name = f"learner{u:02d}"
        meta[name] = AccountMeta(name, created_at=T0 - rng.uniform(30, 400) * DAY)
        home, asn = f"10.{rng.randrange(256)}.{rng.randrange(256)}.9", rng.choice([3320, 7018, 7922, 3209])
        t = START + rng.uniform(0, 6 * HOUR)
        for _ in range(20):
            out.append(ev(name, t, f"{maths_task(9000 + rng.randrange(150))} Can you explain it step by step?", ip=home, asn=asn,
                          header="fp-chrome", params=PARAMS[1]))
            t += rng.uniform(0.5, 5) * HOUR
    for j in range(2):
        name = f"evaljob{j}"
        meta[name] = AccountMeta(name, created_at=T0 - rng.uniform(30, 400) * DAY)
        t = START + rng.uniform(0, 6 * HOUR)
        for i in range(150):
            out.append(ev(name, t, f"{maths_task(9000 + i)}\nLet's think step by step.", ip=f"104.131.{40 + j}.{10 + j}", asn=14061,
                          header="fp-curl", params={"max_tokens": 2048, "temperature": 0.0}))
            t += rng.uniform(1, 3)
    for e in out:
        if e["account_id"].startswith("evaljob"):
            e["client"]["geo"]["hosting"] = True
    return out


def test_a_campaign_ramped_up_over_hours_is_caught_within_a_tenth_of_its_requests_and_a_class_and_two_eval_jobs_are_not() -> None:
    meta: dict[str, AccountMeta] = {}
    events = sorted(people(meta, 400) + campaign(meta) + learners_and_eval_jobs(meta), key=lambda e: e["ts"])
    scanner = Scanner(accounts=meta)
    sent, tenth = 0, CAMPAIGN * PER_ACCOUNT // 10
    for event in events:
        scanner.update(event)
        if event["account_id"].startswith("camp"):
            sent += 1
            if sent == tenth:
                break
    active = scanner.fingerprints.accounts
    blocks = arrival_blocks({a: (s.first_seen, s.requests) for a, s in active.items()}, max(s.last_seen for s in active.values()),
                            frozenset(), meta)
    # No hour surges: the campaign arrives at about three accounts an hour, beside the people's own arrivals.
    assert not [b for b in blocks if b.origin == "arrival surge" and sum(a.startswith("camp") for a in b.members) >= 5]
    report = scanner.report()
    entries = {e["account_id"]: e for e in report["accounts"]}
    camp = [a for a in entries if a.startswith("camp")]
    assert len(camp) == CAMPAIGN
    sent_each = sorted(active[a].requests for a in camp)  # a tenth of the campaign's requests: a handful per account
    assert sent_each[len(sent_each) // 2] <= 6 and sent_each[-1] <= 12
    clusters = [c for c in report["clusters"] if set(c["accounts"]) & set(camp)]
    assert clusters and all(set(c["accounts"]) <= set(camp) for c in clusters)  # pure
    assert sum(len(c["accounts"]) for c in clusters) >= 0.8 * CAMPAIGN
    assert any("arrival window" in s for c in clusters for s in c["shared"])
    assert any(entries[a]["distillation_score"] >= HIGH for a in camp)  # caught within 10 % of its requests
    negatives = [a for a in entries if a.startswith(("learner", "evaljob", "person"))]
    assert [a for a in negatives if entries[a]["cluster_id"]] == []
    assert [a for a in negatives if entries[a]["risk"] == "high"] == []
