"""Two schemes over token ids: Unigram (static green list) and KGW (green list seeded by the previous token).

Unigram-Watermark (Zhao et al. 2023) needs no context, so it works as a static
``logit_bias`` on black-box upstreams. KGW (Kirchenbauer et al. 2023) re-seeds
the green list from the previous token, which is harder to learn and to steal
and gives many distinct (previous, current) pairs to score — what the
radioactivity test needs. Both add δ to green logits; γ is the green share.
"""

from __future__ import annotations

import hashlib

import numpy as np

from distillguard.watermark.universe import unigram_universe

__all__ = ["KGW", "Unigram"]


_CACHE_SIZE = 8192


def _remember(cache: dict[int, np.ndarray], key: int, value: np.ndarray) -> np.ndarray:
    """Store ``value`` in a bounded per-instance cache (oldest entry evicted first)."""
    if len(cache) >= _CACHE_SIZE:
        cache.pop(next(iter(cache)))
    cache[key] = value
    return value


def _rng(key: bytes, *salt: int) -> np.random.Generator:
    digest = hashlib.blake2b(key + b"".join(int(s).to_bytes(8, "little", signed=True) for s in salt), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


class Unigram:
    """A fixed green list per key over ids ``[0, universe)`` (the universe bounds a black-box bias table)."""

    name = "unigram"

    def __init__(self, key: bytes, vocab_size: int, *, gamma: float = 0.25, delta: float = 2.0, universe: int | None = None) -> None:
        self.key, self.vocab_size, self.gamma, self.delta = key, vocab_size, gamma, delta
        # Default: the universe every marker and the detector share, so a Unigram built without
        # arguments is detected by `watermark detect` (a whole-vocabulary list would not be).
        self.universe = min(universe or unigram_universe(vocab_size, gamma), vocab_size)
        order = _rng(key).permutation(self.universe)
        self.green_ids = np.sort(order[: int(round(gamma * self.universe))])
        self.mask = np.zeros(vocab_size, dtype=bool)
        self.mask[self.green_ids] = True

    def __call__(self, context: list[int], logits: np.ndarray) -> np.ndarray:
        """Logits processor: ``(token ids so far, logits) -> logits``."""
        logits = logits.copy()
        logits[self.green_ids] += self.delta
        return logits

    def logit_bias(self, limit: int = 300) -> dict[int, float]:
        """A sparse bias for APIs that accept one (OpenAI allows 300 entries)."""
        ids = self.green_ids[:limit] if len(self.green_ids) > limit else self.green_ids
        return {int(i): float(self.delta) for i in ids}

    def counts(self, ids: list[int]) -> dict[int, int]:
        """How often each distinct token inside the universe occurs, in first-seen order."""
        counts: dict[int, int] = {}
        universe = self.universe
        for token in ids:
            if 0 <= token < universe:
                counts[token] = counts.get(token, 0) + 1
        return counts

    def scored(self, ids: list[int]) -> list[bool]:
        """Green flags of the distinct tokens inside the universe (repeats are scored once)."""
        seen: set[int] = set()
        flags = []
        for token in ids:
            if token < self.universe and token not in seen:
                seen.add(token)
                flags.append(bool(self.mask[token]))
        return flags


class KGW:
    """Green list re-drawn from (key, previous token); ``(previous, token)`` pairs are scored once each."""

    name = "kgw"

    def __init__(self, key: bytes, vocab_size: int, *, gamma: float = 0.25, delta: float = 2.0) -> None:
        self.key, self.vocab_size, self.gamma, self.delta = key, vocab_size, gamma, delta
        # Plain per-instance dicts, not functools.lru_cache: a cache wrapping a bound method, or a class-level
        # one keyed by ``self``, keeps every instance (and its green lists) alive, and detect_ids builds one
        # instance per call — a long-running process grew by megabytes per KGW detection.
        self._greens: dict[int, np.ndarray] = {}
        self._masks: dict[int, np.ndarray] = {}

    def _green(self, previous: int) -> np.ndarray:
        green = self._greens.get(previous)
        if green is None:
            green = _remember(self._greens, previous, self._green_for(previous))
        return green

    def _green_for(self, previous: int) -> np.ndarray:
        return _rng(self.key, previous).permutation(self.vocab_size)[: int(round(self.gamma * self.vocab_size))]

    def is_green(self, previous: int, token: int) -> bool:
        # Membership via a per-previous-token boolean mask, cached.
        return bool(self._mask(previous)[token])

    def _mask(self, previous: int) -> np.ndarray:
        mask = self._masks.get(previous)
        if mask is None:
            mask = np.zeros(self.vocab_size, dtype=bool)
            mask[self._green(previous)] = True
            _remember(self._masks, previous, mask)
        return mask

    def __call__(self, context: list[int], logits: np.ndarray) -> np.ndarray:
        previous = context[-1] if context else -1
        logits = logits.copy()
        logits[self._green(previous)] += self.delta
        return logits

    def scored(self, ids: list[int]) -> list[bool]:
        seen: set[tuple[int, int]] = set()
        flags = []
        previous = -1
        for token in ids:
            pair = (previous, token)
            if pair not in seen and 0 <= token < self.vocab_size:
                seen.add(pair)
                flags.append(self.is_green(previous, token))
            previous = token
        return flags
