"""Text in, DESIGN §6 JSON out: the entry point shared by the CLI and the admin API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from distillguard.config import Settings
from distillguard.watermark.detect import detect_ids
from distillguard.watermark.tokenizer import load_tokenizer

__all__ = ["detect_text"]


def detect_text(text: str, key_ids: Sequence[str] | None = None, settings: Settings | None = None, *,
                tokenizer_path: str | None = None, scheme: str = "unigram") -> dict[str, Any]:
    settings = settings or Settings()
    tokenizer = load_tokenizer(tokenizer_path)
    ids = tokenizer.encode(text)
    # Unigram's universe is left to detect_ids, which takes it from the same function as every Unigram marker.
    return detect_ids(ids, tokenizer.vocab_size, settings.watermark.master_secret, list(key_ids or ["global"]), scheme=scheme,
                      gamma=settings.watermark.gamma)
