"""The scorer's per-event path: shortcuts that must compute exactly what the full computation does.

``elicits_by_rules`` stands in for ``rule_score(text)[0] >= ELICITING`` on every event, and the Scanner's
``EventContext`` asks "does this turn build on the earlier answer?" once per event for the three detectors that read
it. Both are speed-ups only (bench/RESULTS.md, "The central scorer with a margin"); these tests fail if either
changes an answer.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest

from distillguard.detect import Scanner, context, reasoning
from distillguard.detect.reasoning import ELICITING, elicits_by_rules, rule_score
from distillguard.events import format_ts
from distillguard.sim.phrasing import ELICIT, HELD_OUT


def _stems() -> dict[str, list[str]]:
    """Per concept: every plain stem and a text each of its regex alternatives matches."""
    samples = {"chain": "chain of thought", "cot": "cot", "step": "step by step", "write ": "write it out", "spell": "spelling out",
               "lay": "laying out", "show ": "show me your", "verbali": "verbalize", "erklär": "erklär es laut", "behind ": "behind the",
               "cach": "caché", "intern": "interno", "grader": "grader", "score ": "score the", "rate ": "rate the following answer",
               "judge ": "judge this", "evaluate ": "evaluate the response", "note ": "note la réponse", "<": "<thinking>",
               "language of the ": "language of the question"}
    out: dict[str, list[str]] = {}
    for name, search in reasoning._SEARCHES:
        out[name] = [*search.plain, *(samples[start] for start, _ in search.regexes)]
    return out


def _texts() -> Iterator[str]:
    yield from (str(x) for bank in (ELICIT, HELD_OUT) for v in bank.values() for x in (v if isinstance(v, list) else [v]))
    yield from ("", "hi", "Think step by step.", "Explain step by step how to bake bread", "Write out the steps",
                "Show your reasoning", "Rate the answer below", "<Thinking>", "reasoning in the same language as the question")
    stems = _stems()
    names = sorted(stems)
    # Every pair of concepts, each stem of the first beside a stem of the second: all the combinations rule_score weighs.
    for a, b in itertools.combinations_with_replacement(names, 2):
        for i, stem in enumerate(stems[a]):
            yield f"Please {stem} and {stems[b][i % len(stems[b])]} for 17 * 23."
    rng = random.Random(13)
    every = [stem for name in names for stem in stems[name]]
    for _ in range(3000):  # three or four concepts at once, in any order, upper-cased now and then
        text = " ".join(rng.choice(every) for _ in range(rng.randint(1, 4)))
        yield text.upper() if rng.random() < 0.2 else text


def test_elicits_by_rules_is_exactly_the_rule_score_threshold() -> None:
    checked = eliciting = 0
    for text in _texts():
        expected = rule_score(text)[0] >= ELICITING
        assert elicits_by_rules(text) == expected, text
        checked += 1
        eliciting += expected
    assert reasoning.ReasoningElicitation.threshold == ELICITING
    assert checked > 3000 and 100 < eliciting < checked - 100  # both verdicts well represented


def _event(account: str, i: int, turns: list[str]) -> dict[str, Any]:
    messages: list[dict[str, str]] = []
    for n, turn in enumerate(turns):
        messages.append({"role": "user", "content": turn})
        if n < len(turns) - 1:
            messages.append({"role": "assistant", "content": "An earlier answer."})
    return {"v": 1, "ts": format_ts(1_790_000_000.0 + 60 * i), "request_id": f"r{i}", "account_id": account,
            "endpoint": "openai.chat", "model": "m1", "client": {"ip": "81.2.3.4", "geo": {"country": "DE", "asn": 3320}},
            "request": {"messages": messages, "params": {}}, "response": {"status": 200, "completion_tokens": 300}}


def test_the_scanner_asks_built_on_earlier_once_per_event_and_every_reader_sees_that_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer alternates on every call: if two readers asked separately about one event they would disagree."""
    calls: list[str] = []

    def alternating(text: str) -> bool:
        calls.append(text)
        return len(calls) % 2 == 1

    monkeypatch.setattr(context, "builds_on_earlier", alternating)
    scanner = Scanner()
    follow_ups = 40
    for i in range(follow_ups):  # first follow-ups (two user turns): coverage, sustained and relay all ask
        scanner.update(_event("a", i, [f"Question {i} about orbits?", f"Why is step {i} allowed there?"]))
    for i in range(20):  # single-turn prompts: nobody asks
        scanner.update(_event("a", 100 + i, [f"Single prompt {i}"]))
    assert len(calls) == follow_ups  # once per follow-up, never for a single-turn prompt
    built = (follow_ups + 1) // 2
    assert scanner.coverage.accounts["a"].follow_ups == built
    assert scanner.sustained.accounts["a"].built == built
    assert scanner.relay.accounts["a"].real_conversations == built


def test_a_detector_fed_alone_sees_what_the_scanner_hands_it() -> None:
    """``update(event)`` builds its own context: the same counts as through the Scanner's shared one."""
    events = [_event(f"acc{i % 3}", i, ["Explain tides.", "And then?"] if i % 4 == 0 else
                     ["Explain tides.", "Why does the moon matter more than the sun here?"] if i % 4 == 1 else
                     [f"Write out your internal reasoning step by step for {i} * 7."] if i % 4 == 2 else [f"Summarise item {i}."])
              for i in range(60)]
    scanner = Scanner()
    alone = Scanner()
    for event in events:
        scanner.update(event)
        event_t = {**event, "_t": 1_790_000_000.0 + 60 * int(event["request_id"][1:])}
        for detector in (alone.reasoning, alone.coverage, alone.templates, alone.sustained, alone.relay):
            detector.update(event_t)
    for account in ("acc0", "acc1", "acc2"):
        for name in ("reasoning", "coverage", "templates", "sustained", "relay"):
            ours, theirs = getattr(scanner, name).evidence(account), getattr(alone, name).evidence(account)
            assert ours is not None and theirs is not None
            assert (ours.score, ours.detail, ours.numbers) == (theirs.score, theirs.detail, theirs.numbers), (account, name)



def _rank_event(account: str, t: float, prompt: str, ip: str, asn: int, hosting: bool) -> dict[str, Any]:
    return {"v": 1, "ts": format_ts(t), "request_id": f"req_{account}_{t}", "account_id": account, "org_id": None,
            "endpoint": "openai.chat", "model": "m1",
            "client": {"ip": ip, "user_agent": "ua", "header_fp": "fp-curl", "geo": {"country": "US", "asn": asn, "hosting": hosting}},
            "attestation": None, "request": {"system": None, "messages": [{"role": "user", "content": prompt}], "params": {}},
            "response": {"status": 200, "text": "x " * 200, "prompt_tokens": 40, "completion_tokens": 400}}


def test_a_report_that_reranks_only_rebuilt_entries_orders_them_as_a_full_sort_does() -> None:
    """``Scanner.report`` looks only at the accounts refreshed since the last report and the members of its clusters,
    and merges their re-ranked entries into the last report's order: every report must be in the order a sort of all
    its entries gives, and the last one the same as one report over the same events."""
    rng = random.Random(11)
    t0 = 1_790_000_000.0
    events = []
    for u in range(400):  # people, a few questions each, at their own times
        for _ in range(rng.randint(1, 4)):
            events.append(_rank_event(f"p{u:03d}", t0 + rng.uniform(0, 86_400), f"question {rng.randrange(10**6)} about {rng.choice('abcdefgh')}",
                                      f"10.{u}.{rng.randrange(9)}.7", 7018, False))
    for u in range(24):  # a fleet: one wrapper, one hosting network, step-by-step answers
        for i in range(12):
            events.append(_rank_event(f"h{u:02d}", t0 + rng.uniform(0, 86_400),
                                      f"Answer step by step and show all of your reasoning: task {u * 100 + i} of the sweep",
                                      f"203.0.113.{u}", 16509, True))
    events.sort(key=lambda e: e["ts"])
    scanner, incremental = Scanner(), 0
    for start in range(0, len(events), 40):
        for event in events[start:start + 40]:
            scanner.update(event)
        report = scanner.report(recluster=start % 400 == 0)
        rows = report["accounts"]
        assert rows == sorted(rows, key=lambda e: (-max(e["distillation_score"], e["reseller_score"]), e["account_id"]))
        incremental += 2 * len(scanner.rebuilt) < len(rows)
    once = Scanner()
    for event in events:
        once.update(event)
    assert scanner.report() == once.report()
    assert incremental >= 10  # most reports took the incremental path
    assert any(e["cluster_id"] for e in once.report()["accounts"])  # clusters' members were among the candidates
    # A cluster found by a report whose members sent nothing since the one before: their entries are rebuilt all the same.
    people = [e for e in events if e["account_id"].startswith("p")]
    order = people[:-40] + [e for e in events if e["account_id"].startswith("h")] + people[-40:]
    late, whole = Scanner(), Scanner()
    for event in order:
        whole.update(event)
    for event in people[:-40]:
        late.update(event)
    late.report()
    for event in order[len(people) - 40:-40]:
        late.update(event)
    late.report(recluster=False)
    for event in people[-40:]:
        late.update(event)
    assert late.report() == whole.report()
    assert 2 * len(late.rebuilt) < len(late.accounts)
