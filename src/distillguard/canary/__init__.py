"""Keyed canaries: planted by the gateway in answers to trigger prompts, probed for in suspect models (docs/watermark.md).

Watermarks prove provenance statistically over many tokens; a canary is a
single keyed, unique-but-plausible string that a model distilled from our
answers repeats when asked the trigger question again.
"""

from __future__ import annotations

from distillguard.canary.planter import CanaryPlanter
from distillguard.canary.stream import AnswerShape, StreamCanary
from distillguard.canary.variants import VARIANT_COUNT, canary_for, variants_in

__all__ = ["VARIANT_COUNT", "AnswerShape", "CanaryPlanter", "StreamCanary", "canary_for", "variants_in"]
