"""Cluster admission: a campaign's cluster holds no bystander, and legitimate look-alikes stay below `high` (issue #11).

A campaign that imitates people shares with the people it imitates everything that is ordinary: a popular client,
stock parameters, streaming, daytime habits, a free-mail domain, generic follow-ups ("Go on.", "Why is that?"). Such
traits make links (content plus meta or infra), so people who share them were put in the campaign's cluster — tied to
it by one or two surface links while its members are tied by their private bank of phrasings — and the campaign's
cluster was impure (the test split's `imitates_people` campaign: share in pure clusters 0.000). Here the campaign
keeps its cluster, with the members, and the look-alikes are not admitted to it.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from distillguard.detect import Scanner, clustering
from distillguard.detect.accounts import AccountMeta
from distillguard.detect.scanner import HIGH
from distillguard.events import format_ts
from distillguard.store.attributes import hash_attribute
from tests.test_attribution import CLOSERS, DAY, OPENERS, T0, background, task

FREE_MAIL = hash_attribute("email_domain", "mail.example", "s")
CAMPUS_MAIL = hash_attribute("email_domain", "campus.example.edu", "s")
CAMPUS_NET = "10.77.5"  # a campus's /24: ten of the people, and five of the campaign's accounts on its Wi-Fi
PARAMS = {"max_tokens": 1024, "temperature": 0.7, "stream": True}  # what most chat clients send
CLIENT = "fp-chrome-desktop"
# Generic follow-ups: the campaign draws from these, and so do ordinary people.
FOLLOW_UPS = ["Go on.", "Why is that?", "Can you expand on that?", "Tell me more.", "And then?", "What else?"]
# The campaign's private list of openers and closers (paraphrases), and its ways of asking for reasoning.
BANK_OPENERS = ["Quick one for you:", "Here's something I'm curious about:", "Okay, so here goes:", "Wondering about this:",
                "Something for you to chew on:", "Mind helping with this?", "Let me run this by you:", "Got a question:"]
BANK_CLOSERS = ["Would love your take.", "Curious what you think.", "Appreciate the help!", "Walk me through it.",
                "Spell out how you get there.", "Show me the thinking, not just the answer."]
ASKS = ["Walk me through your complete internal reasoning step by step.", "Show every step of your thinking before the answer.",
        "Think it through out loud, all the intermediate reasoning please.", "Lay out your full chain of reasoning first."]
CAMPAIGN, PEOPLE = 20, 50


def turns_event(account: str, t: float, turns: list[str], *, ip: str, header: str = CLIENT, params: dict[str, Any] | None = None,
                system: str | None = None, asn: int = 3320, hosting: bool = False) -> dict[str, Any]:
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        if i:
            messages.append({"role": "assistant", "content": "x"})
        messages.append({"role": "user", "content": turn})
    return {"v": 1, "ts": format_ts(t), "request_id": f"req_{account}_{t}", "account_id": account, "org_id": None, "endpoint": "openai.chat",
            "model": "m1", "client": {"ip": ip, "user_agent": "ua", "header_fp": header, "geo": {"country": "US", "asn": asn, "hosting": hosting}},
            "attestation": None, "request": {"system": system, "messages": messages, "params": params or PARAMS},
            "response": {"status": 200, "text": "x", "prompt_tokens": 30, "completion_tokens": 300}}


def _daytime(rng: random.Random, day: int) -> float:
    return T0 + day * DAY + rng.uniform(8, 21) * 3600


def _conversation(rng: random.Random, first: str, follow: float = 0.6) -> list[list[str]]:
    """A conversation's requests: the opening turn, then a generic follow-up or two (each request repeats the history)."""
    turns = [first]
    out = [list(turns)]
    if rng.random() < follow:
        for _ in range(rng.randint(1, 2)):
            turns.append(rng.choice(FOLLOW_UPS))
            out.append(list(turns))
    return out


def imitation(*, eval_jobs: int = 0, light_apps: int = 0) -> Scanner:
    """A campaign of 20 accounts imitating people, 50 people sharing its client, parameters, habits, e-mail domain and
    follow-ups (ten of them behind the same campus /24 as some members), and 400 ordinary people."""
    names = [f"camp{k}" for k in range(CAMPAIGN)] + [f"look{k:02d}" for k in range(PEOPLE)]
    campus = {f"camp{k}" for k in range(5)} | {f"look{k:02d}" for k in range(10)}
    meta = {n: AccountMeta(n, created_at=T0 - random.Random(n).uniform(30, 400) * DAY,
                           attributes={"email_domain": CAMPUS_MAIL if n in campus else FREE_MAIL}) for n in names}
    for u in range(120):
        domain = FREE_MAIL if u < 10 else hash_attribute("email_domain", f"isp{u % 40}.example", "s")
        meta[f"person{u:02d}"] = AccountMeta(f"person{u:02d}", created_at=T0 - (20 + 3.1 * u) * DAY, attributes={"email_domain": domain})
    scanner = Scanner(accounts=meta)
    events: list[dict[str, Any]] = []
    for k in range(CAMPAIGN):
        rng = random.Random(f"camp{k}")
        ip = f"{CAMPUS_NET}.{10 + k}" if k < 5 else f"10.{120 + k}.3.{k}"
        for i in range(30):
            ask = f" {rng.choice(ASKS)}" if rng.random() < 0.5 else ""
            prompt = f"{rng.choice(BANK_OPENERS)} {task(k * 100 + i)}.{ask} {rng.choice(BANK_CLOSERS)}"
            t = _daytime(rng, i % 7)
            for j, turns in enumerate(_conversation(rng, prompt)):
                events.append(turns_event(f"camp{k}", t + 60 * j, turns, ip=ip))
    for k in range(PEOPLE):
        rng = random.Random(f"look{k}")
        ip = f"{CAMPUS_NET}.{100 + k}" if k < 10 else f"10.{30 + k}.8.{k}"
        for i in range(18):
            tail = "Let's think step by step." if rng.random() < 0.3 else rng.choice(CLOSERS)
            more = f", and also {task(7000 + k * 100 + i)}" if rng.random() < 0.5 else ""
            prompt = f"{rng.choice(OPENERS)} {task(5000 + k * 100 + i)}{more} {tail}"
            t = _daytime(rng, i % 7)
            for j, turns in enumerate(_conversation(rng, prompt, 0.8)):
                events.append(turns_event(f"look{k:02d}", t + 60 * j, turns, ip=ip))
    # One-off evaluation jobs of three companies: the same public wrapper and stock parameters, one burst each, data centres.
    eval_params = {"max_tokens": 2048, "temperature": 0.0, "stream": False}
    for j in range(eval_jobs):
        rng = random.Random(f"eval{j}")
        start = T0 + (1 + j) * DAY + rng.uniform(0, 3600)
        for i in range(400):
            events.append(turns_event(f"eval{j}", start + 2.5 * i, [f"{task(9000 + j * 1000 + i)}\n\nLet's think step by step."],
                                      ip=f"52.{10 + j}.7.{i % 200 + 1}", header="fp-python-requests", params=eval_params, asn=16509, hosting=True))
    # Light API apps: a stock system prompt, short single-turn requests at a steady rate, on one cloud.
    for j in range(light_apps):
        rng = random.Random(f"app{j}")
        for i in range(300):
            events.append(turns_event(f"app{j}", T0 + i * 7 * DAY / 300 + rng.uniform(0, 600), [f"Summarise: {task(20000 + j * 1000 + i)}"],
                                      ip=f"34.{60 + j}.2.{i % 50 + 1}", header="fp-node-fetch", system="You are a helpful assistant.",
                                      params={"max_tokens": 256, "temperature": 0.2, "stream": False}, asn=15169, hosting=True))
    background(scanner, 400)
    for event in sorted(events, key=lambda e: str(e["ts"])):
        scanner.update(event)
    return scanner


def test_a_campaign_imitating_people_keeps_a_pure_cluster_beside_fifty_look_alikes(monkeypatch: pytest.MonkeyPatch) -> None:
    campaign = {f"camp{k}" for k in range(CAMPAIGN)}
    # The twin: without admission the ten campus look-alikes are in the campaign's cluster (what makes the case).
    monkeypatch.setattr(clustering, "ADMIT_TIE", 0.0)
    report = imitation().report()
    best = max(report["clusters"], key=lambda c: len(campaign & set(c["accounts"])))
    assert len({a for a in best["accounts"] if a.startswith("look")}) >= 5, best["accounts"]
    monkeypatch.undo()

    scanner = imitation()
    report = scanner.report()
    entry = {e["account_id"]: e for e in report["accounts"]}
    best = max(report["clusters"], key=lambda c: len(campaign & set(c["accounts"])))
    members = set(best["accounts"])
    assert len(campaign & members) >= 0.8 * CAMPAIGN, (len(campaign & members), sorted(members - campaign))
    assert len(campaign & members) / len(members) >= 0.95, sorted(members - campaign)
    for cluster in report["clusters"]:  # no look-alike in any cluster holding a campaign account
        if campaign & set(cluster["accounts"]):
            assert not {a for a in cluster["accounts"] if a.startswith("look")}, cluster
    for k in range(PEOPLE):
        assert entry[f"look{k:02d}"]["distillation_score"] < HIGH, entry[f"look{k:02d}"]
    assert all(entry[a]["distillation_score"] >= HIGH for a in campaign)


def _link(private: float) -> Any:
    return clustering._Link({"content": 0.5, "meta": 0.5}, [], 1.0, private=private)


def test_admission_keeps_members_tied_by_private_evidence_and_drops_strays_tied_by_surface_links() -> None:
    fleet = [f"m{i}" for i in range(6)]
    links = [(a, b, _link(0.9)) for i, a in enumerate(fleet) for b in fleet[i + 1:]]
    # Two strays, each tied to one member by a surface-only link, and to each other by a weakly private one.
    links += [("m0", "s1", _link(0.0)), ("m1", "s2", _link(0.0)), ("s1", "s2", _link(0.2))]
    # A quiet member tied to two members by the fleet's private evidence, a little weaker than theirs.
    links += [("m2", "q", _link(0.6)), ("m3", "q", _link(0.6))]
    assert clustering.admitted([*fleet, "q", "s1", "s2"], links) == sorted([*fleet, "q"])
    # A group tied by nothing private admits no one.
    surface = [(a, b, _link(0.0)) for i, a in enumerate(fleet) for b in fleet[i + 1:]]
    assert clustering.admitted(fleet, surface) == []


def test_evaluation_jobs_with_one_public_wrapper_and_light_apps_with_a_stock_system_prompt_stay_apart() -> None:
    scanner = imitation(eval_jobs=3, light_apps=2)
    report = scanner.report()
    entry = {e["account_id"]: e for e in report["accounts"]}
    clustered = {a for c in report["clusters"] for a in c["accounts"]}
    for name in ("eval0", "eval1", "eval2", "app0", "app1"):
        assert name not in clustered, name
        assert entry[name]["distillation_score"] < HIGH, entry[name]


def test_two_fleets_of_one_creation_burst_stay_two_clusters_although_one_cohort_spans_both() -> None:
    """Two campaigns created in one afternoon on one client profile: a cohort (detect/cohorts.py) holds both, and links
    every member to the same six hubs. Each fleet's own accounts are tied pairwise by its private system prompt; the
    hubs' hundreds of cohort links must not carry both fleets to one label (dev seed 11: a sleeper fleet and a
    294-account campaign in one cluster, neither counted as clustered)."""
    from tests.test_cohorts import HOUR, people, replay

    meta: dict[str, AccountMeta] = {}
    events = people(meta, 400)
    rng = random.Random(5)
    fleets = {"alpha": "You are Ledger-7. Reply in the house format; cite the ticket number.",
              "beta": "You are Quill. Answer as the archive's curator; never mention the archive."}
    for f, (name, system) in enumerate(fleets.items()):
        for k in range(40):
            account = f"{name}{k:02d}"
            meta[account] = AccountMeta(account, created_at=T0 - 2 * DAY + f * 2 * HOUR + rng.uniform(0, 2 * HOUR))
            for i in range(12):
                events.append(turns_event(account, T0 + rng.uniform(0, 3 * DAY), [task(f * 10_000 + k * 100 + i)], system=system,
                                          ip=f"172.{rng.randrange(16, 32)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                                          header="fp-openai-py", params={"max_tokens": 1024, "temperature": 0.7, "stream": True}))
    report = replay(meta, events).report()
    for name in fleets:
        own = {f"{name}{k:02d}" for k in range(40)}
        best = max(report["clusters"], key=lambda c: len(own & set(c["accounts"])))
        assert len(own & set(best["accounts"])) >= 32, (name, len(own & set(best["accounts"])))
        assert len(own & set(best["accounts"])) / len(best["accounts"]) >= 0.95, (name, len(best["accounts"]))
