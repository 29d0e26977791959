"""Which tokenizer turns text back into the ids a watermark was applied to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["TextTokenizer", "load_tokenizer"]


class _Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass
class TextTokenizer:
    encoder: _Encoder
    vocab_size: int
    source: str

    def encode(self, text: str) -> list[int]:
        return self.encoder.encode(text)


class _HFAdapter:
    def __init__(self, tokenizer: object) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)  # type: ignore[attr-defined]


def load_tokenizer(path: str | None = None) -> TextTokenizer:
    """A local ``tokenizer.json`` (loaded with ``tokenizers``), or the demo model's tokenizer."""
    if path:
        import tokenizers

        hf = tokenizers.Tokenizer.from_file(path)
        return TextTokenizer(_HFAdapter(hf), hf.get_vocab_size(), path)
    from distillguard.demo.model import DemoModel

    model = DemoModel.load()
    return TextTokenizer(model.tokenizer, model.vocab_size, "demo-model")
