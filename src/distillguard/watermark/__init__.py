"""Provenance: keyed watermarks in generated text, their detection, and marking at the gateway."""

from distillguard.watermark.detect import detect_ids, holm, z_test
from distillguard.watermark.gateway import GatewayWatermarker
from distillguard.watermark.keys import derive_key, key_for
from distillguard.watermark.processors import HFWatermarkProcessor, vllm_processor
from distillguard.watermark.schemes import KGW, Unigram
from distillguard.watermark.service import detect_text

__all__ = ["GatewayWatermarker", "HFWatermarkProcessor", "KGW", "Unigram", "derive_key", "detect_ids", "detect_text", "holm",
           "key_for", "vllm_processor", "z_test"]
