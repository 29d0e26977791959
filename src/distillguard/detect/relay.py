"""A relay in front of one key: unrelated conversations interleaved, all day long, in many languages.

A reseller that forwards its customers through its own server shows one IP
and, without forwarded attestations, no installs: the network tells nothing.
What it cannot hide is the traffic's shape. One person holds one
conversation at a time and comes back to it; a relay serves many people at
once, so requests *return* to a conversation after requests of other
conversations came in between, hour after hour, across most hours of the day
(people in several regions), often in several languages (counted over conversations that have a follow-up).

A conversation is identified by its opening (system prompt and first user
message). Single-turn traffic (sweeps, API apps, batch jobs) has no returns,
so it cannot look like a relay. A relay whose customers rarely overlap still
holds far more *real* conversations a day (ones whose follow-ups ask
something of their own) than one person does. An office sharing one account
interleaves too, but within one working day and one language, so neither is
enough alone: it must come with long daily activity or a mix of languages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distillguard.detect.base import (
    AccountStates,
    Detector,
    Evidence,
    confidence,
    event_time,
    logistic,
)
from distillguard.detect.context import EventContext
from distillguard.detect.langid import guess_language

__all__ = ["RelaySharing"]

_OPEN = 64  # conversations remembered per account (most recently used)
_RETURN_WINDOW_S = 3600.0
_MAX_HOUR_SETS = 400


def _opening(event: Mapping[str, Any]) -> tuple[int, str, int]:
    """(conversation key, first user message, number of user turns).

    The key is Python's hash of the opening (this process's): conversations are only told apart within one
    account's 64 most recent, where a 64-bit collision is negligible; a blake2b digest as text cost ~1 µs and
    65 bytes per remembered conversation, the int 36. It is never -1 (CPython's hash never is): ``last_key``'s start."""
    request = event.get("request") or {}
    messages = request.get("messages") or []
    first, turns = "", 0
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            if turns == 0:
                content = message.get("content")
                first = content if isinstance(content, str) else ""
            turns += 1
    system = request.get("system") or ""
    key = hash((str(system)[:200], first[:300]))
    return key, first, turns


@dataclass(slots=True)  # one per account: no per-instance __dict__ (docs/detection.md, "Memory")
class _State:
    requests: int = 0
    multi_turn: int = 0
    returns: int = 0
    last_key: int = -1
    # Most recently used last (a plain dict keeps insertion order; an OrderedDict costs ~160 bytes more per account).
    recent: dict[int, float] = field(default_factory=dict)
    day_hours: dict[int, int] = field(default_factory=dict)  # UTC day -> bitmask of active hours
    languages: dict[str, int] = field(default_factory=dict)
    conversations: int = 0
    real_conversations: int = 0  # conversations whose first follow-up asks something of its own


class RelaySharing(Detector):
    name = "relay_sharing"
    family = "reseller"

    def __init__(self) -> None:
        self.accounts: AccountStates[_State] = AccountStates(_State)

    def update(self, event: Mapping[str, Any]) -> None:
        self.update_with(EventContext(event))

    def update_with(self, context: EventContext) -> None:
        """``update`` reading the prompt from the event's shared context (the Scanner works it out once for all)."""
        event = context.event
        s = self.accounts.of(event)
        if s is None:
            return
        ts = event_time(event)
        s.requests += 1
        hour = int(ts // 3600)
        day = hour // 24
        if day in s.day_hours or len(s.day_hours) < _MAX_HOUR_SETS:
            s.day_hours[day] = s.day_hours.get(day, 0) | (1 << (hour % 24))
        key, first, turns = _opening(event)
        if turns > 1:
            s.multi_turn += 1
        seen = s.recent.get(key)
        if turns == 2:
            # A conversation is counted once, at its first follow-up: single-turn traffic (most of a sweep's)
            # never pays for the language guess, and "continue" does not make a conversation.
            if context.builds_on_earlier:
                s.real_conversations += 1
            language = guess_language(first)
            if language is not None:
                s.languages[language] = s.languages.get(language, 0) + 1
        if seen is None:
            s.conversations += 1
        elif key != s.last_key and ts - seen <= _RETURN_WINDOW_S and turns > 1:
            s.returns += 1  # back to an open conversation after another one in between
        recent = s.recent
        if seen is not None:
            del recent[key]  # re-inserted last: most recently used
        recent[key] = ts
        if len(recent) > _OPEN:
            del recent[next(iter(recent))]
        s.last_key = key

    def evidence(self, account_id: str) -> Evidence | None:
        s = self.accounts.get(account_id)
        if s is None or s.requests == 0:
            return None
        returns = s.returns / s.requests
        days = max(1, len(s.day_hours))
        hours = sum(bin(mask).count("1") for mask in s.day_hours.values()) / days
        per_day = s.real_conversations / days
        total = sum(s.languages.values())
        entropy = -sum((c / total) * math.log2(c / total) for c in s.languages.values()) if total else 0.0
        languages = 2 ** entropy  # the effective number of languages
        # Many people at once: either conversations interleaved (one request in eight returning to one of them)
        # or more real conversations a day than a person holds (midpoint 8; people hold 1-4) ...
        many = max(logistic(returns, 0.12, 0.04) * confidence(s.returns, 8.0),
                   logistic(per_day, 8.0, 2.0) * confidence(s.real_conversations, 15.0))
        # ... over more of the day than a person chats or an office works (midpoint 10 active hours; people 2-4,
        # a team's working day 8-9, two regions' customers 12-18) or in several languages.
        breadth = max(logistic(hours, 10.0, 1.5), logistic(languages, 3.0, 0.5))
        score = many * breadth
        top = ", ".join(f"{k} {v}" for k, v in sorted(s.languages.items(), key=lambda kv: -kv[1])[:4])
        return Evidence(
            self.name, score,
            f"{s.returns} of {s.requests} requests returned to a conversation after others were interleaved ({returns:.0%}); "
            f"{s.real_conversations} real conversations ({per_day:.0f} a day), active {hours:.0f} hours a day on average; "
            f"languages {top or 'unknown'}",
            family="reseller",
            numbers={"return_share": round(returns, 3), "conversations_per_day": round(per_day, 1), "hours_per_day": round(hours, 1),
                     "effective_languages": round(languages, 2)},
        )
