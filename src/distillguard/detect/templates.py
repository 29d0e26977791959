"""Templated prompts and shared system prompts.

A campaign wraps each swept task in one of a few templates, so the prompts'
*frames* — their opening and closing words, with numbers folded — repeat while
the middles change. Frames are counted per account (bounded), and the frames
an account repeats are summarised as a MinHash so clustering can find other
accounts using the same or paraphrased templates (LSH, :mod:`distillguard.detect.minhash`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from distillguard.detect.base import Detector, Evidence, confidence, count_heavy, logistic, remember
from distillguard.detect.context import EventContext

__all__ = ["TemplatedPrompts", "frame_of", "normalise_system", "scaffold_parts", "wrapper_parts"]

_WORDS = re.compile(r"\w+", re.UNICODE)
# Frames are counted by their hash, not their text: only the counts are ever read (the templated share), and a
# 512-frame table of ~80-character strings cost ~40 KB per account (≈ 150 MB on a 4,000-account log); as ints it
# is ~15 KB. Python's str hash is per-process, which is fine for counts within one process; a 64-bit collision
# between two of one account's 512 frames is negligible.
_MAX_FRAMES = 512


def _norm(words: Sequence[str]) -> str:
    """The words lower-cased, all-digit words as "0", joined by spaces."""
    # One lower() over the joined words instead of one per word: the only context-dependent lower-casing (final
    # sigma) looks no further than the nearest character that is neither cased nor case-ignorable, and the space
    # between words is such a character, so each word lowers as it would alone.
    if any(map(str.isdigit, words)):
        words = ["0" if w.isdigit() else w for w in words]
    return " ".join(words).lower()


# The first n words of a text in one match: \w+ is greedy and must be followed by a non-word character, so the
# groups are exactly the first n maximal \w runs (no other way for the pattern to match), or no match when the
# text has fewer than n words.
_FIRST_6 = re.compile(r"\W*" + r"\W+".join([r"(\w+)"] * 6))
_FIRST_10 = re.compile(r"\W*" + r"\W+".join([r"(\w+)"] * 10))


def frame_of(text: str) -> str:
    """A prompt's skeleton: its first 5 and last 9 words (digits as 0), or all of a short prompt."""
    # Only the ends matter, so the middle is never tokenised: ``findall`` costs ~0.2 µs per word (a match object
    # each), ~10 µs on a typical prompt and most of this detector's cost, while one match for the first six words
    # and one on the reversed text for the last ten cost ~1 µs. Reversing keeps every word's extent (\w is a
    # per-character class). When the sixth word ends before the tenth-last starts, the prompt has at least 16 words
    # and the frame is the first five and last nine; otherwise the prompt is short and is tokenised whole.
    head = _FIRST_6.match(text)
    if head is not None:
        tail = _FIRST_10.match(text[::-1])
        if tail is not None and head.end(6) <= len(text) - tail.end(10):
            # The tail's words are reversed and last-first; reversing them joined puts both right.
            last = " ".join(tail.group(1, 2, 3, 4, 5, 6, 7, 8, 9))[::-1].split(" ")
            return _norm(head.group(1, 2, 3, 4, 5)) + " … " + _norm(last)
    words = _WORDS.findall(text)
    if len(words) <= 14:
        return _norm(words)
    return _norm(words[:5]) + " … " + _norm(words[-9:])


@lru_cache(maxsize=64)
def normalise_system(text: str | None) -> str | None:
    # Cached: a system prompt is typically sent unchanged with every request of an integration (and repeats are
    # what this detector counts), so hashing it once per distinct prompt saves ~2 µs per event.
    if not text or not text.strip():
        return None
    return hashlib.sha256(" ".join(_WORDS.findall(text.lower())).encode()).hexdigest()[:16]


# Wrapper pieces are counted lossily (heavy hitters only): when an account's table is full, the pieces seen once
# are dropped. A wrapper frames at least 12 % of an account's prompts, so it recurs long before the table fills
# and survives every pruning; a swept task's own first and last words rarely recur and are what gets dropped.
# 128 pieces cost about 12 KB per account (1,024 unpruned pieces cost ~100 KB: 400 MB on a 4,000-account log).
_MAX_WRAPPERS = 128
# Prompts whose frame is remembered (TemplatedPrompts._frames): ~2.2 MB (~530 bytes each, measured on the `default` scenario).
_FRAMES_KNOWN = 4096


def wrapper_parts(frame: str) -> tuple[str, ...]:
    """A prompt's candidate wrapper pieces: its first 2 and 4 and its last 2 and 4 words (from its frame).

    A wrapper is a recurring prefix or suffix around varying content ("Solve the following problem. …",
    "… Provide a complete solution."); which of these pieces recur, and in how many accounts, is decided
    by attribution (:mod:`distillguard.detect.attribution`), not here. Prompts of fewer than 4 words give none.
    """
    head, sep, tail = frame.partition(" … ")
    first = head.split(" ")
    last = tail.split(" ") if sep else first
    if len(first) < 4 or len(last) < 4:
        return ()
    return ("p2:" + " ".join(first[:2]), "p4:" + " ".join(first[:4]), "s2:" + " ".join(last[-2:]), "s4:" + " ".join(last[-4:]))


# A scaffold marker: a prompt's first or last whitespace-delimited token when it is formatting, not language — only
# punctuation (">>", "---", "=>", "###"), a short label with a colon ("Input:", "Output:", "问题："), or a bracketed
# label ("[item]", "<task>"). A script that frames every swept task as "Input: {task}" or "{task}\n---" writes no word
# a frame keeps (``frame_of`` reads words only; a one-word label and the task's first word make a different two-word
# piece on every prompt), so its template was invisible to attribution.
_MARKER = re.compile(r"[^\w\s]{1,8}|\w{1,16}[:：]|[\[(<{]\w{1,16}[\])>}][:：]?")


def scaffold_parts(text: str) -> tuple[str, ...]:
    """A prompt's scaffold markers (``_MARKER``) as wrapper pieces: ``"p1:input:"`` for its first token, ``"s1:---"``
    for its last, lower-cased; none when the prompt is a single token or its ends are words."""
    parts = text.split(None, 1)
    if len(parts) < 2:
        return ()
    first = parts[0]
    last = parts[1].rsplit(None, 1)[-1]
    out = []
    if len(first) <= 20 and _MARKER.fullmatch(first):
        out.append("p1:" + first.lower())
    if len(last) <= 20 and _MARKER.fullmatch(last):
        out.append("s1:" + last.lower())
    return tuple(out)


@dataclass(slots=True)  # one per account: no per-instance __dict__ (docs/detection.md, "Memory")
class _State:
    requests: int = 0
    single_turn: int = 0
    frames: dict[int, int] = field(default_factory=dict)  # hash(frame) -> single-turn prompts with it
    systems: dict[str, int] = field(default_factory=dict)
    wrappers: dict[str, int] = field(default_factory=dict)


class TemplatedPrompts(Detector):
    name = "templated_prompts"

    def __init__(self) -> None:
        self.accounts: dict[str, _State] = {}
        # Each single-turn prompt's (frame key, wrapper pieces), by the hash of its text (``base.remember``; ~530
        # bytes a prompt): ~6 µs of framing per prompt, skipped for a prompt seen again.
        self._frames: dict[int, tuple[int, tuple[str, ...]]] = {}

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
        messages = (event.get("request") or {}).get("messages") or []
        if len(messages) > 1:
            return  # follow-ups are conversation, not template use
        text = context.text
        text_key = hash(text)
        known = self._frames.get(text_key)
        if known is None:
            frame = frame_of(text)
            known = (hash(frame), wrapper_parts(frame) + scaffold_parts(text))
            remember(self._frames, text_key, known, _FRAMES_KNOWN)
        key, parts = known
        if key in state.frames or len(state.frames) < _MAX_FRAMES:
            state.frames[key] = state.frames.get(key, 0) + 1
        state.single_turn += 1
        wrappers = state.wrappers
        for part in parts:
            count_heavy(wrappers, part, _MAX_WRAPPERS)
        system = normalise_system((event.get("request") or {}).get("system"))
        if system is not None and (system in state.systems or len(state.systems) < 64):
            state.systems[system] = state.systems.get(system, 0) + 1

    def wrappers(self, account_id: str) -> tuple[int, dict[str, int]]:
        """(single-turn prompts, {wrapper piece: prompts carrying it}) — see :func:`wrapper_parts`."""
        state = self.accounts.get(account_id)
        return (state.single_turn, state.wrappers) if state else (0, {})

    def systems(self, account_id: str) -> dict[str, int]:
        state = self.accounts.get(account_id)
        return dict(state.systems) if state else {}

    def evidence(self, account_id: str) -> Evidence | None:
        s = self.accounts.get(account_id)
        if s is None or s.requests == 0:
            return None
        counted = sum(s.frames.values())
        templated = sum(c for c in s.frames.values() if c >= 3)
        share = templated / max(1, counted)
        score = logistic(share, 0.5, 0.1) * confidence(s.requests, 20.0)
        top_system = max(s.systems.values()) if s.systems else 0
        return Evidence(
            self.name, score,
            f"{templated} of {counted} single-turn prompts reuse one of {sum(1 for c in s.frames.values() if c >= 3)} repeated frames; "
            f"{top_system} requests carry the same system prompt",
            numbers={"templated_share": round(share, 3), "repeated_frames": sum(1 for c in s.frames.values() if c >= 3)},
        )
