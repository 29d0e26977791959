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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distillguard.detect.base import Detector, Evidence, confidence, logistic, user_text

__all__ = ["TemplatedPrompts", "frame_of", "normalise_system"]

_WORDS = re.compile(r"\w+", re.UNICODE)
_MAX_FRAMES = 512


def _norm(words: list[str]) -> str:
    return " ".join("0" if w.isdigit() else w.lower() for w in words)


def frame_of(text: str) -> str:
    """A prompt's skeleton: its first 5 and last 9 words (digits as 0), or all of a short prompt."""
    if len(text) > 512:
        # Long prompts (code, pasted context): only the ends matter, so skip tokenising the middle.
        # Six words in the head slice guarantee the first five are whole; ten in the tail, the last nine.
        head, tail = _WORDS.findall(text[:256]), _WORDS.findall(text[-256:])
        if len(head) >= 6 and len(tail) >= 10:
            return _norm(head[:5]) + " … " + _norm(tail[-9:])
    words = _WORDS.findall(text)
    if len(words) <= 14:
        return _norm(words)
    return _norm(words[:5]) + " … " + _norm(words[-9:])


def normalise_system(text: str | None) -> str | None:
    if not text or not text.strip():
        return None
    return hashlib.sha256(" ".join(_WORDS.findall(text.lower())).encode()).hexdigest()[:16]


@dataclass
class _State:
    requests: int = 0
    frames: dict[str, int] = field(default_factory=dict)
    systems: dict[str, int] = field(default_factory=dict)


class TemplatedPrompts(Detector):
    name = "templated_prompts"

    def __init__(self) -> None:
        self.accounts: dict[str, _State] = {}

    def update(self, event: Mapping[str, Any]) -> None:
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
        frame = frame_of(user_text(event))
        if frame in state.frames or len(state.frames) < _MAX_FRAMES:
            state.frames[frame] = state.frames.get(frame, 0) + 1
        system = normalise_system((event.get("request") or {}).get("system"))
        if system is not None and (system in state.systems or len(state.systems) < 64):
            state.systems[system] = state.systems.get(system, 0) + 1

    def repeated_frames(self, account_id: str, minimum: int = 3) -> list[str]:
        state = self.accounts.get(account_id)
        return [f for f, c in state.frames.items() if c >= minimum] if state else []

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
