"""How many tokens a request's prompt is charged before it is forwarded.

Token limits must hold for streams too, and a stream's real usage is known
only at its end, so every request is charged its prompt up front and settled
with the upstream's usage afterwards (:class:`distillguard.gateway.limits.Limiter`).

The count covers everything the model reads: system prompts, every message's
text (content parts, tool calls and their arguments, tool results), tool and
function definitions, ``instructions``, completions' ``prompt`` and
embeddings' ``input`` — every string value and object key under those fields.
Images, audio and files (``image_url``, base64 ``source``/``data``) are not
counted: their price is not a function of their bytes.

- With ``upstreams[].tokenizer`` set (a local ``tokenizer.json``), that text is
  counted with the upstream's own tokenizer (``tokenizers``, Rust: ~1 µs per
  token, on the event loop).
- Otherwise the estimate is its UTF-8 bytes ÷ 4, rounded up (token ids in a
  ``prompt`` or ``input`` count one each). For English that is close to
  OpenAI's and Llama's tokenizers; for code and most other scripts it counts
  fewer tokens than a real tokenizer would, which the settlement corrects.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PromptCounter", "prompt_bytes", "prompt_texts"]

PROMPT_FIELDS = ("system", "messages", "tools", "functions", "tool_choice", "instructions", "prompt", "input", "suffix")
_SKIPPED = frozenset(("image_url", "input_image", "input_audio", "file_data", "data", "source", "image", "audio"))


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def prompt_bytes(payload: dict[str, Any]) -> int:
    """UTF-8 bytes of the prompt text (token ids count 4 each)."""
    total = 0
    stack: list[Any] = [payload.get(name) for name in PROMPT_FIELDS if payload.get(name) is not None]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            total += _utf8_len(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key in _SKIPPED:
                    continue
                total += _utf8_len(key) if isinstance(key, str) else 4
                if item is not None:
                    stack.append(item)
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, int | float):  # token ids (and booleans, which are ints)
            total += 4
    return total


def prompt_texts(payload: dict[str, Any]) -> list[str]:
    """The prompt's strings (and object keys), for a real tokenizer."""
    out: list[str] = []
    stack: list[Any] = [payload.get(name) for name in PROMPT_FIELDS if payload.get(name) is not None]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key not in _SKIPPED:
                    out.append(str(key))
                    if item is not None:
                        stack.append(item)
        elif isinstance(value, list):
            stack.extend(value)
        elif value is not None:
            out.append(str(value))
    return out


class PromptCounter:
    """Counts prompts per upstream: its ``tokenizer`` when configured, else the bytes ÷ 4 estimate."""

    def __init__(self) -> None:
        self._tokenizers: dict[str, Any] = {}

    def count(self, payload: dict[str, Any], tokenizer_path: str | None = None) -> int:
        if tokenizer_path is None:
            return max(1, -(-prompt_bytes(payload) // 4))
        tokenizer = self._tokenizers.get(tokenizer_path)
        if tokenizer is None:
            import tokenizers  # only for upstreams that name their tokenizer

            tokenizer = self._tokenizers[tokenizer_path] = tokenizers.Tokenizer.from_file(tokenizer_path)
        texts = prompt_texts(payload)
        if not texts:
            return 1
        return max(1, sum(len(encoding.ids) for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)))
