"""Marking black-box upstreams from the gateway: a static, sparse per-key ``logit_bias``.

Only the upstream's tokenizer is needed (a local ``tokenizer.json``). Green
lists are drawn inside the first ``unigram_universe(vocab, γ)`` ids (see
``universe.py``), sized so that the whole green list fits the provider's bias
limit (300 entries for OpenAI). Bias tables are computed once per key and
cached. Only OpenAI-protocol upstreams are marked: the Anthropic Messages API
has no ``logit_bias``.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field

from distillguard.config import Settings
from distillguard.watermark.keys import derive_key, key_for
from distillguard.watermark.universe import BIAS_LIMIT, UNIVERSE, unigram_universe

__all__ = ["GatewayWatermarker", "UNIVERSE", "BIAS_LIMIT", "WatermarkDetectRequest", "unigram_universe"]

log = logging.getLogger("distillguard.watermark")


class GatewayWatermarker:
    """Per-upstream, per-key bias tables; numpy is loaded only when marking is enabled."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = settings.watermark.enabled
        self._vocab: dict[str, int] = {}
        self._cache: dict[tuple[str, str], dict[int, float]] = {}
        for upstream in settings.upstreams:
            if upstream.watermark == "logit_bias" and upstream.protocol != "openai":
                log.warning("upstream %s: watermark 'logit_bias' ignored, a %s-protocol upstream does not accept logit_bias",
                            upstream.name, upstream.protocol)
            elif upstream.watermark == "logit_bias" and upstream.tokenizer:
                import tokenizers

                self._vocab[upstream.name] = tokenizers.Tokenizer.from_file(upstream.tokenizer).get_vocab_size()
        if self.enabled:
            for name in self._vocab:  # warm the global key's table at start-up, not on a request
                self.bias_for(name)

    def bias_for(self, upstream_name: str, *, account_id: str | None = None, org_id: str | None = None,
                 cluster_id: str | None = None) -> tuple[str, dict[int, float]] | None:
        if not self.enabled or upstream_name not in self._vocab:
            return None
        key_id = key_for(org_id=org_id, cluster_id=cluster_id)
        cached = self._cache.get((upstream_name, key_id))
        if cached is None:
            from distillguard.watermark.schemes import Unigram

            vocab_size, gamma = self._vocab[upstream_name], self.settings.watermark.gamma
            scheme = Unigram(derive_key(self.settings.watermark.master_secret, key_id), vocab_size, gamma=gamma,
                             delta=self.settings.watermark.delta, universe=unigram_universe(vocab_size, gamma))
            cached = self._cache[(upstream_name, key_id)] = scheme.logit_bias(BIAS_LIMIT)
        return key_id, cached

    async def handle_admin(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, object] | None:
        """``POST /admin/v1/watermark/detect``; a malformed body raises ``ValidationError`` (the admin API's 422)."""
        if path != "/admin/v1/watermark/detect" or method != "POST":
            return None
        import asyncio
        import os

        from distillguard.watermark.service import detect_text

        request = WatermarkDetectRequest.model_validate_json(body or b"{}")
        if request.tokenizer is not None and not os.path.isfile(request.tokenizer):
            return 422, _invalid(f"tokenizer: no such file on the gateway's machine: {request.tokenizer!r}")
        try:
            result = await asyncio.to_thread(detect_text, request.text, request.key_ids, self.settings, tokenizer_path=request.tokenizer)
        except ValueError as exc:
            return 422, _invalid(str(exc))
        except Exception as exc:  # tokenizers raises a bare Exception for a file that is not a tokenizer.json
            if request.tokenizer is None:
                raise
            return 422, _invalid(f"tokenizer: cannot load {request.tokenizer!r} as a tokenizer.json ({exc})")
        return 200, result


def _invalid(message: str) -> dict[str, object]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}


class WatermarkDetectRequest(BaseModel):
    """The body of ``POST /admin/v1/watermark/detect``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(min_length=1, pattern=r"\S", description="the suspect text")
    key_ids: list[str] | None = Field(default=None, max_length=100, description="keys to test (default: global)")
    tokenizer: str | None = Field(default=None, description="a tokenizer.json on the gateway's machine (default: the demo model's)")
