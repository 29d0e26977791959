"""A small trained classifier of elicitation intent: hashed character n-grams, logistic weights, numpy only.

The stem rules in :mod:`~distillguard.detect.reasoning` recognise the
concepts they list; paraphrases and languages they do not list slip through.
This model scores the *wording* instead: the character 2- to 5-grams of the
lower-cased text (digits folded to 0, whitespace collapsed) are hashed into
2**18 buckets, and a logistic regression fitted offline
(``tools/train_intent.py``, scikit-learn) gives each bucket a weight. Inference
here is a few numpy operations over a batch of prompts — no scikit-learn in the
scanner or the online scorer — on at most the first and last 200 characters of
each prompt (where a wrapper puts its instructions) and the first 200 of the
system prompt.

Features and scores are defined by :func:`ngram_buckets` alone, so training
and inference cannot drift apart. The weights ship as package data
(``detect/intent_model.npz``: ``weights`` float16, ``bias``, ``bits``, ``ngrams``).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterator
from functools import lru_cache

import numpy as np

__all__ = ["IntentModel", "load_intent_model", "ngram_buckets", "prepare"]

_PRIME = np.uint32(16_777_619)
_MIX1, _MIX2 = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35)
NGRAMS = (2, 3, 4, 5)
HEAD = TAIL = 200
_SYSTEM = 200


def prepare(text: str, system: str | None = None) -> str:
    """The text the model reads: head and tail of the prompt and the start of the system prompt, lower-cased."""
    if len(text) > HEAD + TAIL:
        text = text[:HEAD] + " \u2026 " + text[-TAIL:]
    if system:
        text = system[:_SYSTEM] + " \u2029 " + text
    return " " + text.lower() + " "


def _ngram_parts(prepared: list[str], bits: int, ngrams: tuple[int, ...]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per n-gram size: (text index, bucket) of every character n-gram that lies inside one text."""
    codes = np.frombuffer("".join(prepared).encode("utf-32-le"), dtype=np.uint32).copy()
    codes[(codes >= 0x31) & (codes <= 0x39)] = 0x30
    codes[(codes == 0x0A) | (codes == 0x09) | (codes == 0x0D)] = 0x20
    lengths = np.fromiter((len(p) for p in prepared), dtype=np.int32, count=len(prepared))
    owner = np.repeat(np.arange(len(prepared), dtype=np.int32), lengths)
    shift = np.uint32(32 - bits)
    with np.errstate(over="ignore"):
        rolling = codes
        for n in range(2, max(ngrams) + 1):
            if len(codes) < n:
                return
            rolling = (rolling[:-1] * _PRIME) ^ codes[n - 1:]
            if n not in ngrams:
                continue
            h = rolling + np.uint32((n * 0x9E3779B9) & 0xFFFFFFFF)
            h ^= h >> np.uint32(16)
            h *= _MIX1
            h ^= h >> np.uint32(13)
            h *= _MIX2
            h ^= h >> np.uint32(16)
            first = owner[: len(h)]
            inside = first == owner[n - 1:]
            yield first[inside], (h >> shift)[inside]


def ngram_buckets(prepared: list[str], bits: int, ngrams: tuple[int, ...] = NGRAMS) -> tuple[np.ndarray, np.ndarray]:
    """(text index, bucket) of every character n-gram of every text (duplicates kept: counts are the features).

    All texts are hashed in one pass over their concatenation — numpy's per-call overhead is paid once per
    batch, not once per prompt — and n-grams that straddle two texts are dropped. Digits are folded to 0 and
    line breaks and tabs to spaces, so numbers and layout do not become features.
    """
    parts = list(_ngram_parts(prepared, bits, ngrams)) if prepared else []
    if not parts:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.uint32)
    return np.concatenate([o for o, _ in parts]), np.concatenate([b for _, b in parts])


class IntentModel:
    """P(eliciting) per prompt: ``logistic(bias + sum(weights[bucket]) / sqrt(n-grams))`` over its n-grams."""

    def __init__(self, weights: np.ndarray, bias: float, bits: int, ngrams: tuple[int, ...] = NGRAMS) -> None:
        if weights.shape != (1 << bits,):
            raise ValueError(f"intent model: {weights.shape[0]} weights for {bits} bits (expected {1 << bits})")
        self.weights = weights.astype(np.float32)
        self.bias = float(bias)
        self.bits = bits
        self.ngrams = ngrams

    def logits(self, prepared: list[str]) -> np.ndarray:
        """One logit per :func:`prepare`-d text, scored as one batch (the same sums as :func:`ngram_buckets`)."""
        total = np.zeros(len(prepared))
        count = np.zeros(len(prepared))
        if prepared:
            # A text of L characters has max(0, L - n + 1) n-grams inside it: counted from the lengths, not with a
            # second bincount per size (the same integers; ~7 % of the classifier's time). _ngram_parts yields the
            # sizes in ascending order and stops at the first size longer than all the texts together.
            lengths = np.fromiter((len(p) for p in prepared), dtype=np.int64, count=len(prepared))
            sizes = [n for n in range(2, max(self.ngrams) + 1) if n in self.ngrams]
            for (owners, buckets), n in zip(_ngram_parts(prepared, self.bits, self.ngrams), sizes, strict=False):
                total += np.bincount(owners, weights=self.weights[buckets], minlength=len(prepared))
                count += np.maximum(lengths - (n - 1), 0)
        return self.bias + total / np.sqrt(np.maximum(count, 1.0))

    def probabilities(self, prepared: list[str]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.clip(self.logits(prepared), -35.0, 35.0)))

    def probability(self, text: str, system: str | None = None) -> float:
        """One prompt (tests and single lookups; the scanner scores in batches)."""
        return float(self.probabilities([prepare(text, system)])[0])


@lru_cache(maxsize=1)
def load_intent_model() -> IntentModel | None:
    """The shipped model, or None when the package data is missing (the rules then work alone)."""
    resource = importlib.resources.files("distillguard.detect").joinpath("intent_model.npz")
    try:
        with resource.open("rb") as handle, np.load(handle) as data:
            return IntentModel(data["weights"], float(data["bias"]), int(data["bits"]), tuple(int(n) for n in data["ngrams"]))
    except FileNotFoundError:
        return None
