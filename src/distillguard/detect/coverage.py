"""Coverage sweeps versus conversations.

A person converses: follow-ups that carry earlier answers, on a few topics.
A sweep fires single-turn prompts across many capabilities (maths, code,
science, writing, ...) — or hundreds of them into one capability: harvesting
one domain in depth is still harvesting. Capabilities are recognised by cheap
cues; breadth is the entropy of the capability mix, in bits; depth is how many
unbuilt requests went into the one recognised capability most asked for.

Cues are English and a sweep's wrapper need not be (a French frame around
every task reads as "other"), so the sweep's third shape needs no cue at all:
**independent volume**, how many requests that no later turn builds on
received an answer worth keeping (`substance`, as in
:mod:`~distillguard.detect.sustained`). People's single-shot questions over a
week are a few dozen at most, in between conversations; a light app's
hundreds get one-line answers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from distillguard.detect.base import Detector, Evidence, confidence, logistic, remember
from distillguard.detect.context import EventContext
from distillguard.detect.sustained import answer_tokens, substance
from distillguard.detect.textmatch import StemSearch, fold_case

__all__ = ["DEPTH_MIDPOINT", "INDEPENDENT_MIDPOINT", "CoverageSweep", "capability"]

# Unbuilt requests into one capability at which depth counts as half a sweep (see CoverageSweep._evidence_of).
DEPTH_MIDPOINT = 100.0
# Unbuilt requests with substantial answers, in any capability, at which independent volume counts as half a sweep
# (0.14 at 29, 0.5 at 50, 0.74 at 66, 0.95 at 110). Dev worlds of the `robust` family (seeds 1-2): people, learners,
# coders, night owls and early adopters send at most 33 unbuilt requests in a week, at unbuilt shares of 0.39-0.84 (the
# unbuilt-share factor, half at 0.85, takes most of this part away); a 24-account campaign's accounts 60-80 each in
# three days, every one unbuilt. Until stop 15 the midpoint was 60, which left such
# an account at 0.55-0.66 here and its own score at 0.29-0.40 (dev seed 1, camp_7) with 70 harvested answers; lower
# than 50, a person's week of 35 single-shot questions among conversations (tests/test_detect_harvest.py) passes 0.1.
INDEPENDENT_MIDPOINT = 50.0

# Cues are tried in order; the first that matches names the request's capability.
_CUES = (
    ("code", r"\bdef |python|function|\bcode\b|program|algorithm|implement|array|string|list of|```|return ", re.I),
    ("choice", r"(^|\n)\s*[A-D][.)]\s", re.M),
    ("maths", r"\d+\s*[-+*/×x=]\s*\d+|how many|how much|calculate|percent|\$\d|total|each", re.I),
    ("science", r"energy|molecule|cell|atom|force|velocity|electron|protein|reaction|gene|species", re.I),
    ("writing", r"write|essay|poem|story|email|blog|rewrite|summari[sz]e|draft|letter", re.I),
    ("advice", r"should i|how (can|do) i|recommend|best way|tips", re.I),
)
# The reference semantics (and the path for the rare text that fold_case cannot lower-case safely).
_CAPABILITIES = tuple((name, re.compile(pattern, flags)) for name, pattern, flags in _CUES)


def _choice_search(pattern: str, flags: int) -> Callable[[str], bool]:
    regex = re.compile(pattern, flags)
    # Every match contains a capital A-D directly followed by "." or ")": eight substring tests rule out
    # most prompts before the multiline regex (~5 µs per prompt) runs.
    marks = tuple(letter + mark for letter in "ABCD" for mark in ".)")
    return lambda text: any(map(text.__contains__, marks)) and regex.search(text) is not None


# The fast path: the IGNORECASE cues (whose letters are all lower-case ASCII) as StemSearch over fold_case(text),
# ~8x cheaper than the IGNORECASE regexes and identical in result (see textmatch.fold_case); "choice" is
# case-sensitive and tested on the original text.
_FAST: tuple[tuple[str, bool, Callable[[str], bool]], ...] = tuple(
    (name, True, StemSearch(pattern)) if flags & re.I else (name, False, _choice_search(pattern, flags))
    for name, pattern, flags in _CUES
)


# Prompts whose capability is remembered (CoverageSweep._kinds): ~1.2 MB.
_KINDS = 16384


def capability(text: str) -> str:
    folded = fold_case(text)
    if folded is None:
        for name, pattern in _CAPABILITIES:
            if pattern.search(text):
                return name
        return "other"
    for name, on_folded, matches in _FAST:
        if matches(folded if on_folded else text):
            return name
    return "other"


@dataclass(slots=True)  # one per account: no per-instance __dict__ (docs/detection.md, "Memory")
class _State:
    requests: int = 0
    single_turn: int = 0
    follow_ups: int = 0  # follow-ups that build on the earlier answer
    generic_follow_ups: int = 0  # "continue", "more", "and then?"
    unbuilt_tokens: int = 0  # answer tokens (reasoning characters at 4 a token) of the unbuilt requests
    capabilities: dict[str, int] = field(default_factory=dict)


class CoverageSweep(Detector):
    name = "coverage_sweep"

    def __init__(self) -> None:
        self.accounts: dict[str, _State] = {}
        # Each prompt's capability, by the hash of its text (``base.remember``; ~70 bytes a prompt, one of seven
        # interned names as the value): ~6 µs of cue tests per prompt, skipped for a prompt seen again.
        self._kinds: dict[int, str] = {}

    def update(self, event: Mapping[str, Any]) -> None:
        self.update_with(EventContext(event))

    def update_with(self, context: EventContext) -> None:
        """``update`` reading the prompt from the event's shared context (the Scanner works it out once for all)."""
        event = context.event
        account = event.get("account_id")
        if account is None:
            return
        state = self.accounts.get(account)
        if state is None:
            state = self.accounts[account] = _State()
        state.requests += 1
        topic = context.text
        unbuilt = True
        if context.follow_up:
            if context.builds_on_earlier:
                state.follow_ups += 1
                unbuilt = False
            else:
                state.generic_follow_ups += 1
                # "continue" has no capability of its own: the conversation's opening request says what is swept.
                messages = (event.get("request") or {}).get("messages") or []
                first = next((m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"), "")
                topic = first if isinstance(first, str) else ""
        else:
            state.single_turn += 1
        if unbuilt:
            state.unbuilt_tokens += answer_tokens(event.get("response") or {})
        key = hash(topic)
        kind = self._kinds.get(key)
        if kind is None:
            kind = capability(topic[:2000])
            remember(self._kinds, key, kind, _KINDS)
        state.capabilities[kind] = state.capabilities.get(kind, 0) + 1

    def evidence(self, account_id: str) -> Evidence | None:
        return self._evidence_of(self.accounts.get(account_id))

    def pooled(self, account_ids: Iterable[str]) -> Evidence | None:
        """The evidence of several accounts' requests counted together, as if one actor sent them all (a cluster)."""
        pool = _State()
        for account in account_ids:
            s = self.accounts.get(account)
            if s is not None:
                pool.requests += s.requests
                pool.single_turn += s.single_turn
                pool.follow_ups += s.follow_ups
                pool.generic_follow_ups += s.generic_follow_ups
                pool.unbuilt_tokens += s.unbuilt_tokens
                for kind, count in s.capabilities.items():
                    pool.capabilities[kind] = pool.capabilities.get(kind, 0) + count
        return self._evidence_of(pool)

    def _evidence_of(self, s: _State | None) -> Evidence | None:
        if s is None or s.requests == 0:
            return None
        single = s.single_turn / s.requests
        # Generic follow-ups ("continue", "more") extend an answer without building on it: a harvester's
        # way to look conversational. They count with the single-turn requests.
        unbuilt = (s.single_turn + s.generic_follow_ups) / s.requests
        total = sum(s.capabilities.values())
        entropy = -sum((c / total) * math.log2(c / total) for c in s.capabilities.values() if c)
        # Depth: the unbuilt requests (estimated as the unbuilt share of them) in the recognised capability asked
        # most — "other" is no capability. A code-only sweep has no breadth at all; a heavy coder converses (follow-ups
        # that build), an API app's one capability comes with short answers (token_economics, sustained_extraction).
        domain, in_domain = max(((k, v) for k, v in s.capabilities.items() if k != "other"), key=lambda kv: kv[1],
                                default=("other", 0))
        deep = in_domain * unbuilt
        # Independent volume: the unbuilt requests whatever their capability, as far as their answers are worth
        # keeping (substance of their mean answer: a light app's one-line labels are not).
        independent = s.single_turn + s.generic_follow_ups
        worth = substance(s.unbuilt_tokens / independent) if independent else 0.0
        # Midpoints: 85 % single-turn; 1.6 bits of capability mix (about three capabilities in even use) or
        # DEPTH_MIDPOINT unbuilt requests into one capability (0.12 at 50, 0.88 at 200, 0.99 at 400) or
        # INDEPENDENT_MIDPOINT unbuilt requests with substantial answers.
        breadth = logistic(entropy, 1.6, 0.25)
        depth = logistic(math.log10(1.0 + deep), math.log10(DEPTH_MIDPOINT), 0.15)
        volume = logistic(math.log10(1.0 + independent), math.log10(INDEPENDENT_MIDPOINT), 0.12) * worth
        score = logistic(unbuilt, 0.85, 0.05) * max(breadth, depth, volume) * confidence(s.requests, 20.0)
        top = ", ".join(f"{k} {v}" for k, v in sorted(s.capabilities.items(), key=lambda kv: -kv[1])[:5])
        detail = (f"{single:.0%} single-turn, {s.follow_ups} follow-ups building on earlier answers, {s.generic_follow_ups} generic "
                  f"(\"continue\", \"more\"); capability mix {entropy:.2f} bits ({top})")
        if depth > breadth and depth >= 0.5:
            detail += f"; about {deep:.0f} unbuilt requests into one capability ({domain}): a sweep of one domain in depth"
        elif volume > breadth and volume >= 0.5:
            detail += (f"; {independent} independent requests that nothing built on, answered with "
                       f"{s.unbuilt_tokens / independent:.0f} tokens on average: single-shot harvesting whatever the topic")
        return Evidence(
            self.name, score, detail,
            numbers={"single_turn": round(single, 3), "breadth_bits": round(entropy, 3), "follow_ups": s.follow_ups,
                     "generic_follow_ups": s.generic_follow_ups, "depth_requests": round(deep, 1),
                     "independent_requests": independent},
        )
