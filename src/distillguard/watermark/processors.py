"""Logits processors for self-hosted models: Hugging Face ``transformers`` and vLLM.

Neither library is a dependency. ``HFWatermarkProcessor`` implements the
``LogitsProcessor`` call signature, ``(input_ids: LongTensor[batch, seq],
scores: FloatTensor[batch, vocab]) -> scores``, so it can be put in a
``LogitsProcessorList``; ``vllm_processor`` returns the per-request callable
vLLM's sampling parameters accept, ``(output_token_ids, logits) -> logits``.
torch is imported only when a tensor is actually passed in.

``scheme="unigram"`` draws its green list from the same id range as the
gateway's bias tables (``unigram_universe``), so `watermark detect --scheme
unigram` tests marks from both with one universe.
"""

from __future__ import annotations

from typing import Any

from distillguard.watermark.keys import derive_key
from distillguard.watermark.schemes import KGW, Unigram
from distillguard.watermark.universe import unigram_universe

__all__ = ["HFWatermarkProcessor", "vllm_processor"]


def _scheme(master_secret: str, key_id: str, vocab_size: int, scheme: str, gamma: float, delta: float) -> KGW | Unigram:
    """The marker both processors wrap; Unigram over the universe the detector scores."""
    key = derive_key(master_secret, key_id)
    if scheme == "kgw":
        return KGW(key, vocab_size, gamma=gamma, delta=delta)
    if scheme == "unigram":
        return Unigram(key, vocab_size, gamma=gamma, delta=delta, universe=unigram_universe(vocab_size, gamma))
    raise ValueError(f"scheme: expected 'kgw' or 'unigram', got {scheme!r}")


class HFWatermarkProcessor:
    def __init__(self, master_secret: str, key_id: str, vocab_size: int, *, scheme: str = "kgw", gamma: float = 0.25, delta: float = 2.0) -> None:
        self.scheme = _scheme(master_secret, key_id, vocab_size, scheme, gamma, delta)
        self.delta = delta

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        out = scores.clone()
        for row in range(scores.shape[0]):
            context = input_ids[row].tolist()
            if isinstance(self.scheme, KGW):
                green = self.scheme._green(context[-1] if context else -1)
            else:
                green = self.scheme.green_ids
            out[row, torch.as_tensor(green, dtype=torch.long, device=scores.device)] += self.delta
        return out


def vllm_processor(master_secret: str, key_id: str, vocab_size: int, *, scheme: str = "kgw", gamma: float = 0.25, delta: float = 2.0) -> Any:
    """A callable for vLLM's per-request ``logits_processors``: ``(token_ids, logits) -> logits``."""
    marker = _scheme(master_secret, key_id, vocab_size, scheme, gamma, delta)

    def process(token_ids: list[int], logits: Any) -> Any:
        if hasattr(logits, "clone"):  # a torch tensor
            import torch

            green = marker._green(token_ids[-1] if token_ids else -1) if isinstance(marker, KGW) else marker.green_ids
            logits = logits.clone()
            logits[torch.as_tensor(green, dtype=torch.long, device=logits.device)] += delta
            return logits
        return marker(list(token_ids), logits)

    return process
