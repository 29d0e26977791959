"""Arrival surges (detect/arrivals.py): hundreds of aged accounts starting together are clustered and caught; a release
day's crowd of strangers is not."""

from __future__ import annotations

import random
from typing import Any

from distillguard.detect import Scanner
from distillguard.detect.accounts import AccountMeta
from distillguard.detect.arrivals import arrival_blocks
from distillguard.detect.scanner import HIGH
from tests.test_cohorts import (
    CLIENTS,
    DAY,
    HOUR,
    OPENERS,
    PARAMS,
    SUBJECTS,
    T0,
    ev,
    maths_task,
    people,
    replay,
)


def proxy_address(rng: random.Random) -> tuple[str, int]:
    """A residential proxy's exit: a new /24 of some consumer ISP on every request."""
    return f"{rng.choice([24, 71, 98, 172])}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.choice([3320, 7018, 7922, 3209])


def aged_campaign(meta: dict[str, AccountMeta], n: int, start: float) -> list[dict[str, Any]]:
    """``n`` accounts bought or aged months ago (no creation burst), started by one script at ``start``: two or three
    prompts of one maths sweep each, every one from a new residential proxy address, clients and parameters drawn
    from what people use."""
    rng = random.Random(7)
    out = []
    for k in range(n):
        name = f"aged{k:03d}"
        meta[name] = AccountMeta(name, created_at=T0 - rng.uniform(30, 400) * DAY)
        header, params = rng.choice(CLIENTS), rng.choice(PARAMS)
        t = start + rng.uniform(0, 2 * HOUR)
        for i in range(rng.choice((2, 3))):
            ip, asn = proxy_address(rng)
            out.append(ev(name, t, maths_task(1000 + k * 3 + i), ip=ip, asn=asn, header=header, params=params))
            t += rng.uniform(1, 10) * HOUR
    return out


def test_300_aged_accounts_starting_together_on_rotating_addresses_are_one_pure_cluster_and_high() -> None:
    """No creation burst, no shared client, wrapper or parameter set: what ties the 300 is that they arrived within two
    hours, when the hours around bring about one account each, and that every one of them is on a new network from
    its second request on, which no one in the background is. With account metadata and without."""
    for with_metadata in (True, False):
        meta: dict[str, AccountMeta] = {}
        events = people(meta, 400)
        events += aged_campaign(meta, 300, T0 + 1.5 * DAY)
        scanner = replay(meta, events) if with_metadata else Scanner()
        if not with_metadata:
            for event in sorted(events, key=lambda e: e["ts"]):
                scanner.update(event)
        report = scanner.report()
        entries = {e["account_id"]: e for e in report["accounts"]}
        aged = [a for a in entries if a.startswith("aged")]
        assert len(aged) == 300
        clusters = [c for c in report["clusters"] if set(c["accounts"]) & set(aged)]
        assert len(clusters) == 1, with_metadata
        assert set(clusters[0]["accounts"]) == set(aged), with_metadata  # all 300 and no one else
        assert any("one arrival surge" in s for s in clusters[0]["shared"])
        assert all(entries[a]["distillation_score"] >= HIGH for a in aged), with_metadata
        assert not [a for a, e in entries.items() if a.startswith("person") and e["risk"] == "high"]


def test_300_early_adopters_first_seen_on_release_day_do_not_cluster() -> None:
    """A model's release day: 300 legitimate accounts, old and new, first seen within three hours of it, most on the
    popular SDK, each from its own home address with its own questions. They are a surge (the arrivals module finds
    the block), and the client is over-represented in it — but a stranger of the same hours would carry it as often,
    so no one is admitted to a cohort, no cluster forms and no one is high."""
    meta: dict[str, AccountMeta] = {}
    events = people(meta, 400)
    release = T0 + 1.5 * DAY
    rng = random.Random(3)
    adopters: list[dict[str, Any]] = []
    for u in range(300):
        name = f"adopter{u:03d}"
        new = rng.random() < 0.4  # signed up for the new model; the others have had an account for months
        meta[name] = AccountMeta(name, created_at=release - rng.uniform(0, 6) * HOUR if new else T0 - rng.uniform(30, 900) * DAY)
        header = "fp-openai-py" if rng.random() < 0.7 else rng.choice(CLIENTS)  # the SDK of the release post's examples
        params = rng.choice(PARAMS)
        home, asn = f"10.{rng.randrange(256)}.{rng.randrange(256)}.7", rng.choice([3320, 7018, 7922, 3209])
        t = release + rng.uniform(0, 3 * HOUR)
        for _ in range(4):
            adopters.append(ev(name, t, f"{rng.choice(OPENERS)} {rng.choice(SUBJECTS)} {rng.choice(['', 'again', 'for my exam', 'please'])}", ip=home, asn=asn,
                               header=header, params=params))
            t += rng.uniform(0.5, 12) * HOUR
    scanner = replay(meta, events + adopters)
    active = scanner.fingerprints.accounts
    blocks = arrival_blocks({a: (s.first_seen, s.requests) for a, s in active.items()}, max(s.last_seen for s in active.values()),
                            frozenset(), meta)
    assert any(sum(a.startswith("adopter") for a in b.members) >= 150 for b in blocks)  # the surge is there (of the old accounts) ...
    report = scanner.report()
    entries = [e for e in report["accounts"] if e["account_id"].startswith("adopter")]
    assert len(entries) == 300
    assert [e["account_id"] for e in entries if e["cluster_id"]] == []  # ... and it says nothing about its strangers
    assert max(e["distillation_score"] for e in entries) < HIGH
