"""Cohorts (detect/cohorts.py): hundreds of quiet accounts of one campaign clustered and caught; strangers never merged."""

from __future__ import annotations

import math
import random
from typing import Any

from distillguard.detect import Scanner
from distillguard.detect.accounts import AccountMeta
from distillguard.detect.cohorts import log10_binomial_tail
from distillguard.detect.scanner import HIGH
from distillguard.events import format_ts

T0 = 1_790_000_000.0
HOUR, DAY = 3600.0, 86_400.0
CLIENTS = ["fp-openai-py", "fp-anthropic-py", "fp-curl", "fp-chrome", "fp-firefox", "fp-safari", "fp-node", "fp-go"]
PARAMS = [{"max_tokens": 1024, "temperature": 0.7, "stream": True}, {"temperature": 1.0, "stream": True}, {},
          {"max_tokens": 4096, "stream": False}, {"temperature": 0.2}, {"max_tokens": 2048, "temperature": 0.7}]
SUBJECTS = ["integrals", "the Krebs cycle", "TCP handshakes", "French verbs", "tax brackets", "sourdough", "Rust lifetimes",
            "plate tectonics", "the Roman republic", "bond yields", "photosynthesis", "hash tables", "chess openings"]
OPENERS = ["hey, quick one:", "Can you explain", "I was wondering about", "what's the deal with", "Help me understand",
           "Is it true that", "My teacher mentioned", "Could you summarise", "ok so", "Please tell me about"]


def ev(account: str, t: float, prompt: str, *, ip: str, asn: int, header: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "ts": format_ts(t), "request_id": f"req_{account}_{t}", "account_id": account, "org_id": None,
            "endpoint": "openai.chat", "model": "m1",
            "client": {"ip": ip, "user_agent": "ua", "header_fp": header, "geo": {"country": "US", "asn": asn, "hosting": False}},
            "attestation": None, "request": {"system": None, "messages": [{"role": "user", "content": prompt}], "params": params},
            "response": {"status": 200, "text": "x " * 300, "prompt_tokens": 40, "completion_tokens": 600}}


def maths_task(i: int) -> str:
    """One item of a swept maths dataset: its own numbers and wording, no wrapper."""
    rng = random.Random(i)
    a, b, c = rng.randint(3, 90), rng.randint(2, 40), rng.randint(2, 9)
    who = rng.choice(["Maria", "Tom", "A farmer", "The school", "Kenji", "A baker", "Priya", "The club"])
    thing = rng.choice(["apples", "tickets", "litres of paint", "books", "marbles", "bricks", "stamps", "cupcakes"])
    return (f"{who} has {a} {thing} and gets {b} more each week for {c} weeks, then gives away a third of them. "
            f"How many {thing} are left? Give the final number.")


def people(scanner_meta: dict[str, AccountMeta], n: int, *, prefix: str = "person", requests: int = 12,
           created: Any = None) -> list[tuple[str, dict[str, Any]]]:
    """Ordinary people: their own clients, parameters, home addresses and questions, at their own times."""
    rng = random.Random(prefix)
    out = []
    for u in range(n):
        name = f"{prefix}{u:03d}"
        scanner_meta[name] = AccountMeta(name, created_at=created(u, rng) if created else T0 - rng.uniform(30, 900) * DAY)
        header, params = rng.choice(CLIENTS), rng.choice(PARAMS)
        home, asn = f"10.{rng.randrange(256)}.{rng.randrange(256)}.7", rng.choice([3320, 7018, 7922, 3209])
        for _ in range(requests):
            t = T0 + rng.uniform(0, 3 * DAY)
            out.append(ev(name, t, f"{rng.choice(OPENERS)} {rng.choice(SUBJECTS)} {rng.choice(['', 'again', 'for my exam', 'please'])}",
                          ip=home, asn=asn, header=header, params=params))
    return out


def residential(rng: random.Random) -> dict[str, Any]:
    """A new home address on one of three large consumer ISPs: what a hydra account rotating residential proxies shows."""
    return {"ip": f"172.{rng.randrange(16, 32)}.{rng.randrange(256)}.{rng.randrange(1, 255)}", "asn": rng.choice([3320, 7018, 7922])}


def replay(meta: dict[str, AccountMeta], events: list[dict[str, Any]]) -> Scanner:
    scanner = Scanner(accounts=meta)
    for event in sorted(events, key=lambda e: e["ts"]):
        scanner.update(event)
    return scanner


def test_a_300_account_hydra_at_two_requests_each_is_one_pure_cluster_and_high() -> None:
    """300 accounts made in one afternoon, each sending two prompts of one maths sweep from a new residential address
    with ordinary parameters: no account has anything to score or to pair on, but 300 of the burst's accounts on one
    client profile that an eighth of the background uses is no chance (cohorts module), and the union is a sweep."""
    meta: dict[str, AccountMeta] = {}
    events = people(meta, 400)
    rng = random.Random(11)
    hydra = [f"hydra{k:03d}" for k in range(300)]
    for k, name in enumerate(hydra):
        meta[name] = AccountMeta(name, created_at=T0 - 2 * DAY + rng.uniform(0, 5 * HOUR))
        for i in range(2):
            events.append(ev(name, T0 + DAY + rng.uniform(0, DAY), maths_task(k * 2 + i),
                             **residential(rng),
                             header="fp-openai-py", params=rng.choice(PARAMS)))
    report = replay(meta, events).report()
    entries = {e["account_id"]: e for e in report["accounts"]}
    hydra_clusters = [c for c in report["clusters"] if set(c["accounts"]) & set(hydra)]
    assert len(hydra_clusters) == 1
    assert set(hydra_clusters[0]["accounts"]) == set(hydra)  # every member, and no one else: pure
    assert any("one creation burst" in s for s in hydra_clusters[0]["shared"])
    assert all(entries[a]["distillation_score"] >= HIGH for a in hydra)
    assert not [a for a, e in entries.items() if a.startswith("person") and e["risk"] == "high"]


def test_300_strangers_at_two_requests_on_one_isp_or_behind_one_office_address_do_not_cluster() -> None:
    """The null model's other side: 300 legitimate accounts of two requests each, all on one ISP's /24 — or all behind
    one egress address with one company domain, onboarded in one afternoon (a creation burst) — use the background's
    clients, parameters and wording, so nothing they share is over-represented; no cohort, no cluster, no one high."""
    onboarding = T0 - 40 * DAY
    for shape in ("isp", "office"):
        meta: dict[str, AccountMeta] = {}
        events = people(meta, 400)
        quiet = people(meta, 300, prefix="local", requests=2,
                       created=(lambda u, rng: onboarding + rng.uniform(0, 4 * HOUR)) if shape == "office" else None)
        for event in quiet:
            if shape == "office":
                event["client"]["ip"], event["client"]["geo"]["asn"] = "203.0.113.10", 7922
                meta[event["account_id"]] = AccountMeta(event["account_id"], created_at=meta[event["account_id"]].created_at,
                                                        attributes={"email_domain": "h1:" + "ab" * 16})
            else:
                event["client"]["ip"], event["client"]["geo"]["asn"] = f"81.2.69.{random.Random(event['ts']).randrange(1, 255)}", 3320
        report = replay(meta, events + quiet).report()
        locals_ = [e for e in report["accounts"] if e["account_id"].startswith("local")]
        assert len(locals_) == 300
        assert [e["account_id"] for e in locals_ if e["cluster_id"]] == [], shape
        assert max(e["distillation_score"] for e in locals_) < HIGH, shape


def test_binomial_tail_matches_the_exact_sum() -> None:
    for k, n, p in ((5, 20, 0.1), (30, 300, 0.05), (1, 10, 0.5), (12, 12, 0.0116)):
        exact = sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))
        assert abs(log10_binomial_tail(k, n, p) - math.log10(exact)) < 1e-9
    assert log10_binomial_tail(0, 10, 0.3) == 0.0


def test_binomial_tail_stops_early_only_where_the_whole_tail_is_above_the_bound() -> None:
    """``stop_above`` returns the first term (a lower bound) when that alone exceeds the bound; otherwise the very same
    sum, so a cohort's test and its reported ``log10_p`` are unchanged."""
    rng = random.Random(3)
    stopped = 0
    for _ in range(2000):
        n = rng.randint(5, 3000)
        k = rng.randint(1, n)
        p = rng.choice([rng.uniform(0, 1), rng.uniform(0, 0.01), 10 ** rng.uniform(-13, 0)])
        whole = log10_binomial_tail(k, n, p)
        early = log10_binomial_tail(k, n, p, -8.0)
        if early > -8.0:
            assert whole > -8.0 and early <= whole + 1e-12
            stopped += int(early != whole)
        else:
            assert early == whole
    assert stopped > 100  # the bound does stop early


def test_account_items_of_some_kinds_are_the_whole_list_filtered_by_kind() -> None:
    """Clustering's cohorts ask ``account_items`` for seven kinds only (``kinds``): the same items in the same order."""
    from distillguard.detect.attribution import KINDS, account_items
    from distillguard.detect.cohorts import ARRIVAL_KINDS, COHORT_KINDS

    meta: dict[str, AccountMeta] = {}
    events = people(meta, 40, requests=6)
    rng = random.Random(5)
    for u in range(30):  # scripted accounts: a wrapper, a system prompt, hosting networks, rotation
        name = f"script{u:02d}"
        meta[name] = AccountMeta(name, created_at=T0 - DAY, attributes={"email_domain": "x.example", "payment_fp": f"card{u % 3}"})
        for i in range(rng.randint(1, 12)):
            event = ev(name, T0 + rng.uniform(0, DAY), f"Answer step by step and show all work: {maths_task(u * 50 + i)}",
                       ip=f"203.0.{rng.randrange(4) if u % 2 else i}.{u}", asn=16509, header="fp-curl", params=PARAMS[u % 3])
            event["client"]["geo"]["hosting"] = bool(u % 2)
            event["request"]["system"] = "You are DataBot. Always answer with the final number last." if u % 3 else None
            if u % 4 == 0:
                event["attestation"] = {"install_id": f"inst{u}"}
            events.append(event)
    scanner = replay(meta, events)
    collector, templates = scanner.fingerprints, scanner.templates
    every = set(KINDS)
    checked = 0
    for account, state in collector.accounts.items():
        single_turn, wrappers = templates.wrappers(account)
        for minimum in (None, 1):
            whole = account_items(state, single_turn, wrappers, templates.systems(account), meta[account].attributes, ("slot",),
                                  minimum_count=minimum)
            for kinds in (ARRIVAL_KINDS, COHORT_KINDS, frozenset({"wrapper"}), frozenset({"net", "ip", "payment"}), every, frozenset()):
                some = account_items(state, single_turn, wrappers, templates.systems(account), meta[account].attributes, ("slot",),
                                     minimum_count=minimum, kinds=kinds)
                assert some == [item for item in whole if item.kind in kinds], (account, kinds)
                checked += len(some)
    assert checked > 1000
    assert {i.kind for a, s in collector.accounts.items()
            for i in account_items(s, *templates.wrappers(a), templates.systems(a), meta[a].attributes, ("slot",), minimum_count=1)} >= \
        {"wrapper", "short_wrapper", "system_prompt", "params", "install", "ip", "hosting_net", "net", "hosting_asn", "rotation",
         "profile", "attribute", "payment", "burst"}


def test_quiet_accounts_of_a_burst_tied_only_by_a_scaffold_marker_are_one_pure_cluster() -> None:
    """40 accounts made in one afternoon, each sending one or two prompts in the operator's own formatting ("%% {task}"),
    each from a new residential address, on the background's clients and parameters: the marker is their only shared
    trait, and it has no word a frame or a wrapper piece keeps (templates.scaffold_parts). Before scaffold markers
    were a cohort's trait these accounts formed no cluster at all; the people, whose prompts open with words, none."""
    meta: dict[str, AccountMeta] = {}
    events = people(meta, 400)
    rng = random.Random(5)
    hydra = [f"hydra{k:03d}" for k in range(40)]
    for k, name in enumerate(hydra):
        meta[name] = AccountMeta(name, created_at=T0 - 3 * DAY + rng.uniform(0, 4 * HOUR))
        for i in range(1 + k % 2):
            subject = rng.choice(SUBJECTS)
            task = rng.choice([f"Why does {subject} behave as it does at scale {i + k}?", f"List the key results about {subject}.",
                               f"Explain how {subject} works from first principles, case {k}.", f"What limits {subject} in practice?"])
            events.append(ev(name, T0 + DAY + rng.uniform(0, DAY), f"%% {task}",
                             **residential(rng),
                             header=rng.choice(CLIENTS), params=rng.choice(PARAMS)))
    report = replay(meta, events).report()
    hydra_clusters = [c for c in report["clusters"] if set(c["accounts"]) & set(hydra)]
    assert len(hydra_clusters) == 1
    assert set(hydra_clusters[0]["accounts"]) == set(hydra)
    assert any("%%" in s and "one creation burst" in s for s in hydra_clusters[0]["shared"])
    entries = {e["account_id"]: e for e in report["accounts"]}
    assert not [a for a, e in entries.items() if a.startswith("person") and e["cluster_id"]]
