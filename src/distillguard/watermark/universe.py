"""Which token ids a Unigram green list is drawn from: one function for every marker and the detector.

A black-box upstream can only be marked through a ``logit_bias`` table, which
providers cap (300 entries for OpenAI). The green list is therefore drawn
from the first ``universe`` ids — common tokens for BPE vocabularies and for
the demo model's frequency-ordered one, where a bias has an effect — and the
universe shrinks as γ grows so that the whole green list (γ × universe ids)
fits in the table: a green id the table cannot bias would still be counted by
the test and dilute the mark. The self-hosted processors use the same
universe so that one Unigram test detects text from either marker.

No numpy here: the gateway imports this at start-up.
"""

from __future__ import annotations

import math

__all__ = ["BIAS_LIMIT", "UNIVERSE", "unigram_universe"]

UNIVERSE = 1200
BIAS_LIMIT = 300


def unigram_universe(vocab_size: int, gamma: float) -> int:
    """``min(UNIVERSE, vocab_size, floor(BIAS_LIMIT / γ))``: 1,200 ids at γ = 0.25, 600 at γ = 0.5."""
    if gamma <= 0:
        return min(UNIVERSE, vocab_size)
    fits = math.floor(BIAS_LIMIT / gamma + 1e-9)  # 300 / 0.3 is 999.99… in floating point
    return max(1, min(UNIVERSE, vocab_size, fits))
