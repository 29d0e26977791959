"""Coverage and templates remember what they work out of a prompt's text (its capability; its frame and wrapper
pieces): a prompt seen again is not read again, the counts are those of reading every prompt, the memos stay bounded."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from distillguard.detect import coverage, templates
from distillguard.detect.coverage import CoverageSweep, capability
from distillguard.detect.templates import TemplatedPrompts, frame_of, wrapper_parts

PROMPTS = [
    "Solve the following problem. A train leaves at 3 pm at 60 km/h; how many km has it gone by 5 pm? Show your work.",
    "Write a python function that returns the longest common prefix of a list of strings.",
    "Write a short poem about the sea.",
    "What is the capital of France?",
    "hi",
]


def _event(i: int, text: str) -> dict[str, Any]:
    return {"account_id": f"acct_{i % 3}", "_t": 1.79e9 + i, "ts": "2026-09-21T00:00:00Z",
            "request": {"messages": [{"role": "user", "content": text}]}, "response": {"completion_tokens": 100}}


def test_remembered_prompts_count_as_reading_every_prompt_does() -> None:
    sweep, framed = CoverageSweep(), TemplatedPrompts()
    kinds: dict[str, Counter[str]] = {}
    frames: dict[str, Counter[int]] = {}
    wrappers: dict[str, Counter[str]] = {}
    for i in range(200):
        text = PROMPTS[i % len(PROMPTS)]
        sweep.update(_event(i, text))
        framed.update(_event(i, text))
        account = f"acct_{i % 3}"
        kinds.setdefault(account, Counter())[capability(text)] += 1
        frames.setdefault(account, Counter())[hash(frame_of(text))] += 1
        wrappers.setdefault(account, Counter()).update(wrapper_parts(frame_of(text)))
    assert {a: s.capabilities for a, s in sweep.accounts.items()} == kinds
    assert {a: s.frames for a, s in framed.accounts.items()} == frames
    assert {a: s.wrappers for a, s in framed.accounts.items()} == wrappers


def test_a_prompt_seen_again_is_not_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    monkeypatch.setattr(coverage, "capability", lambda text: read.append(text) or capability(text))
    monkeypatch.setattr(templates, "frame_of", lambda text: read.append(text) or frame_of(text))
    sweep, framed = CoverageSweep(), TemplatedPrompts()
    for i in range(30):
        sweep.update(_event(i, PROMPTS[0]))
        framed.update(_event(i, PROMPTS[0]))
    assert read == [PROMPTS[0], PROMPTS[0]]  # once by each detector


def test_the_memos_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coverage, "_KINDS", 50)
    monkeypatch.setattr(templates, "_FRAMES_KNOWN", 50)
    sweep, framed = CoverageSweep(), TemplatedPrompts()
    for i in range(500):
        text = f"question number {i}: please write a short essay about topic {i} and its history in full detail"
        sweep.update(_event(i, text))
        framed.update(_event(i, text))
        assert len(sweep._kinds) <= 50 and len(framed._frames) <= 50
    assert sum(s.requests for s in sweep.accounts.values()) == 500
