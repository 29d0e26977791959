"""The elicitation detector remembers each prompt's verdict: a prompt seen again is counted without reading it again,
the counts are those of reading every prompt, and what is remembered stays bounded."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from distillguard.detect import reasoning
from distillguard.detect.intent import _ngram_parts, load_intent_model, prepare
from distillguard.detect.reasoning import ELICITING, ReasoningElicitation, elicits_by_rules

PROMPTS = [
    ("Please write out your internal reasoning step by step before answering: what is 17 * 23?", ""),  # the rules
    ("Show me the full thought process you went through to get there, nothing left out.", ""),  # the classifier's
    ("What is the capital of France?", ""),
    ("What is the capital of France?", "You are a grader. Score the following answer."),  # the system prompt decides
    ("Summarise this article in three sentences.", "You are a helpful assistant."),
    ("hi", ""),  # too short for the classifier
]


def _event(i: int, text: str, system: str) -> dict[str, Any]:
    return {"account_id": f"acct_{i % 3}", "_t": 1.79e9 + i, "ts": "2026-09-21T00:00:00Z",
            "request": {"system": system or None, "messages": [{"role": "user", "content": text}]}}


def _expected(text: str, system: str) -> tuple[bool, bool]:
    """(eliciting, by the rules) of one prompt read afresh: the rules on the text, then on the system prompt, then
    the classifier."""
    rules = elicits_by_rules(text) or (bool(system) and elicits_by_rules(system))
    if rules:
        return True, True
    model = load_intent_model()
    if model is None or len((text + system).strip()) < 8:
        return False, False
    return model.probabilities([prepare(text, system)])[0] >= ELICITING, False


def test_prompts_seen_again_count_as_reading_every_prompt_does() -> None:
    detector = ReasoningElicitation()
    expected: dict[str, list[int]] = {}
    for i in range(300):
        text, system = PROMPTS[i % len(PROMPTS)]
        detector.update(_event(i, text, system))
        eliciting, by_rules = _expected(text, system)
        counts = expected.setdefault(f"acct_{i % 3}", [0, 0, 0])
        counts[0] += 1
        counts[1] += eliciting
        counts[2] += eliciting and by_rules
    detector.flush()
    assert {a: [s.prompts, s.eliciting, s.by_rules] for a, s in detector.accounts.items()} == expected
    assert any(counts[1] > counts[2] for counts in expected.values()) or load_intent_model() is None  # the classifier counted


def test_a_prompt_seen_again_is_not_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []

    def counting(text: str) -> bool:
        read.append(text)
        return elicits_by_rules(text)

    monkeypatch.setattr(reasoning, "elicits_by_rules", counting)
    detector = ReasoningElicitation()
    for i in range(50):
        detector.update(_event(i, *PROMPTS[0]))
        detector.update(_event(i, *PROMPTS[2]))
    detector.flush()
    assert read == [PROMPTS[0][0], PROMPTS[2][0]]
    assert detector.accounts["acct_0"].prompts == 34


def test_remembered_verdicts_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reasoning, "_VERDICTS", 100)
    detector = ReasoningElicitation()
    for i in range(1_000):
        detector.update(_event(i, f"question number {i}: what is {i} + {i}?", ""))
        assert len(detector._verdicts) <= 100
    detector.flush()
    assert len(detector._verdicts) <= 100
    assert sum(s.prompts for s in detector.accounts.values()) == 1_000


def test_the_classifier_counts_ngrams_from_the_lengths_as_bincount_did() -> None:
    model = load_intent_model()
    if model is None:
        pytest.skip("no intent model shipped")
    texts = [prepare(text, system) for text, system in PROMPTS] + ["", "a", "ab", " x ", "abcdef" * 50]
    for batch in (texts, texts[-4:], texts[-3:-1], ["a"]):
        total, count = np.zeros(len(batch)), np.zeros(len(batch))
        for owners, buckets in _ngram_parts(batch, model.bits, model.ngrams):
            total += np.bincount(owners, weights=model.weights[buckets], minlength=len(batch))
            count += np.bincount(owners, minlength=len(batch))
        assert np.array_equal(model.logits(batch), model.bias + total / np.sqrt(np.maximum(count, 1.0)))
