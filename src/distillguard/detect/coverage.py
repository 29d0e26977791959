"""Coverage sweeps versus conversations.

A person converses: follow-ups that carry earlier answers, on a few topics.
A sweep fires single-turn prompts across many capabilities (maths, code,
science, writing, ...). Capabilities are recognised by cheap cues; breadth is
the entropy of the capability mix, in bits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distillguard.detect.base import Detector, Evidence, confidence, logistic, user_text

__all__ = ["CoverageSweep", "capability"]

_CAPABILITIES = (
    ("code", re.compile(r"\bdef |python|function|\bcode\b|program|algorithm|implement|array|string|list of|```|return ", re.I)),
    ("choice", re.compile(r"(^|\n)\s*[A-D][.)]\s", re.M)),
    ("maths", re.compile(r"\d+\s*[-+*/×x=]\s*\d+|how many|how much|calculate|percent|\$\d|total|each", re.I)),
    ("science", re.compile(r"energy|molecule|cell|atom|force|velocity|electron|protein|reaction|gene|species", re.I)),
    ("writing", re.compile(r"write|essay|poem|story|email|blog|rewrite|summari[sz]e|draft|letter", re.I)),
    ("advice", re.compile(r"should i|how (can|do) i|recommend|best way|tips|help me", re.I)),
)


def capability(text: str) -> str:
    for name, pattern in _CAPABILITIES:
        if pattern.search(text):
            return name
    return "other"


@dataclass
class _State:
    requests: int = 0
    single_turn: int = 0
    follow_ups: int = 0
    capabilities: dict[str, int] = field(default_factory=dict)


class CoverageSweep(Detector):
    name = "coverage_sweep"

    def __init__(self) -> None:
        self.accounts: dict[str, _State] = {}

    def update(self, event: Mapping[str, Any]) -> None:
        account = event.get("account_id")
        if account is None:
            return
        state = self.accounts.get(account)
        if state is None:
            state = self.accounts[account] = _State()
        messages = (event.get("request") or {}).get("messages") or []
        state.requests += 1
        if any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
            state.follow_ups += 1
        else:
            state.single_turn += 1
        kind = capability(user_text(event)[:2000])
        state.capabilities[kind] = state.capabilities.get(kind, 0) + 1

    def evidence(self, account_id: str) -> Evidence | None:
        s = self.accounts.get(account_id)
        if s is None or s.requests == 0:
            return None
        single = s.single_turn / s.requests
        total = sum(s.capabilities.values())
        entropy = -sum((c / total) * math.log2(c / total) for c in s.capabilities.values() if c)
        # Midpoints: 85 % single-turn, 1.6 bits of capability mix (about three capabilities in even use).
        score = logistic(single, 0.85, 0.05) * logistic(entropy, 1.6, 0.25) * confidence(s.requests, 20.0)
        top = ", ".join(f"{k} {v}" for k, v in sorted(s.capabilities.items(), key=lambda kv: -kv[1])[:5])
        return Evidence(
            self.name, score,
            f"{single:.0%} single-turn, {s.follow_ups} follow-ups building on earlier answers; capability mix {entropy:.2f} bits ({top})",
            numbers={"single_turn": round(single, 3), "breadth_bits": round(entropy, 3), "follow_ups": s.follow_ups},
        )
