"""Provenance: keyed watermarks in generated text, their detection, and marking at the gateway.

Attributes are imported lazily: the gateway needs only :class:`GatewayWatermarker`
and must not pay for numpy unless watermarking is switched on.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distillguard.watermark.detect import detect_ids, holm, z_test
    from distillguard.watermark.gateway import GatewayWatermarker
    from distillguard.watermark.keys import derive_key, key_for
    from distillguard.watermark.processors import HFWatermarkProcessor, vllm_processor
    from distillguard.watermark.schemes import KGW, Unigram
    from distillguard.watermark.service import detect_text
    from distillguard.watermark.universe import unigram_universe

_HOMES = {
    "detect_ids": "detect", "holm": "detect", "z_test": "detect",
    "GatewayWatermarker": "gateway",
    "derive_key": "keys", "key_for": "keys",
    "HFWatermarkProcessor": "processors", "vllm_processor": "processors",
    "KGW": "schemes", "Unigram": "schemes",
    "detect_text": "service",
    "unigram_universe": "universe",
}

__all__ = ["GatewayWatermarker", "HFWatermarkProcessor", "KGW", "Unigram", "derive_key", "detect_ids", "detect_text", "holm",
           "key_for", "unigram_universe", "vllm_processor", "z_test"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'distillguard.watermark' has no attribute {name!r}")
    return getattr(importlib.import_module(f"distillguard.watermark.{home}"), name)
