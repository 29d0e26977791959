"""Reading upstream responses: what the event log needs, and reasoning stripping.

Streams are relayed as they arrive; these readers look at each chunk on its way
through (one ``orjson.loads`` per chunk of SSE events) to collect the completion text,
the reasoning length, the finish reason and the usage for the event and the
token limits. With ``strip_reasoning`` (a policy "degrade" decision) they also
rewrite the chunk so reasoning never reaches the client.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any

import orjson

__all__ = ["ResponseSummary", "OpenAIStreamReader", "AnthropicStreamReader", "summarise_openai", "summarise_anthropic"]


class ResponseSummary:
    __slots__ = ("text_parts", "reasoning_chars", "finish_reason", "prompt_tokens", "completion_tokens", "stripped_chars")

    def __init__(self) -> None:
        self.text_parts: list[str] = []
        self.reasoning_chars = 0
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.stripped_chars = 0

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def total_tokens(self) -> int:
        if self.prompt_tokens is None and self.completion_tokens is None:
            return max(1, (len(self.text) + self.reasoning_chars) // 4)
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


def summarise_openai(body: dict[str, Any], summary: ResponseSummary, *, strip_reasoning: bool = False) -> bool:
    """Fill ``summary`` from a non-streamed OpenAI response; returns True when ``body`` was modified."""
    changed = False
    for choice in body.get("choices") or []:
        message = choice.get("message")
        if message is not None:
            if message.get("content"):
                summary.text_parts.append(str(message["content"]))
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            if reasoning:
                summary.reasoning_chars += len(reasoning)
                if strip_reasoning:
                    summary.stripped_chars += len(reasoning)
                    message.pop("reasoning_content", None)
                    message.pop("reasoning", None)
                    changed = True
        elif choice.get("text") is not None:
            summary.text_parts.append(str(choice["text"]))
        summary.finish_reason = summary.finish_reason or choice.get("finish_reason")
    usage = body.get("usage") or {}
    summary.prompt_tokens = usage.get("prompt_tokens", summary.prompt_tokens)
    summary.completion_tokens = usage.get("completion_tokens", summary.completion_tokens)
    return changed


def summarise_anthropic(body: dict[str, Any], summary: ResponseSummary, *, strip_reasoning: bool = False) -> bool:
    changed = False
    kept = []
    for block in body.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            summary.text_parts.append(block.get("text", ""))
        elif kind == "thinking":
            summary.reasoning_chars += len(block.get("thinking", ""))
            if strip_reasoning:
                summary.stripped_chars += len(block.get("thinking", ""))
                changed = True
                continue
        kept.append(block)
    if changed:
        body["content"] = kept
    summary.finish_reason = body.get("stop_reason")
    usage = body.get("usage") or {}
    summary.prompt_tokens = usage.get("input_tokens")
    summary.completion_tokens = usage.get("output_tokens")
    return changed


_DATA_LINE = re.compile(rb"^data:(.*)$", re.MULTILINE)  # JSON ignores the surrounding whitespace


class _SSEReader(ABC):
    def __init__(self, *, strip_reasoning: bool = False) -> None:
        self.summary = ResponseSummary()
        self.strip_reasoning = strip_reasoning
        self._buffer = b""

    def feed(self, chunk: bytes) -> bytes:
        """Inspect ``chunk``; return the bytes to send on (the chunk itself unless stripping)."""
        data = self._buffer + chunk if self._buffer else chunk
        last_newline = data.rfind(b"\n")
        if last_newline < 0:
            self._buffer = data
            return chunk if not self.strip_reasoning else b""
        complete, self._buffer = data[: last_newline + 1], data[last_newline + 1 :]
        if not self.strip_reasoning:
            self._read_all(_DATA_LINE.findall(complete))
            return chunk
        out: list[bytes] = []
        for line in complete.split(b"\n")[:-1]:
            if line.startswith(b"data:"):
                rewritten = self._on_data(line[5:].strip(), rewrite=True)
                out.append(line if rewritten is None else b"data: " + rewritten)
            else:
                out.append(line)
        return b"\n".join(out) + b"\n"

    def flush(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest if self.strip_reasoning else b""

    def _read_all(self, payloads: list[bytes]) -> None:
        """Read many ``data:`` payloads with one ``orjson.loads`` (a chunk often holds several events).

        If any payload is not JSON, or the joined array does not split back
        into one value per payload, they are read one by one instead.
        """
        wanted = [p for p in payloads if p.strip() not in (b"", b"[DONE]")]
        if not wanted:
            return
        try:
            values = orjson.loads(b"[" + b",".join(wanted) + b"]") if len(wanted) > 1 else [orjson.loads(wanted[0])]
        except orjson.JSONDecodeError:
            values = None
        if values is None or len(values) != len(wanted):
            for payload in wanted:
                self._on_data(payload.strip(), rewrite=False)
            return
        for value in values:
            if isinstance(value, dict):
                self._read(value, rewrite=False)

    def _on_data(self, data: bytes, *, rewrite: bool) -> bytes | None:
        """Read one SSE ``data:`` payload; return a rewritten payload, or None to keep it."""
        if not data or data == b"[DONE]":
            return None
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(payload, dict):
            return None
        return orjson.dumps(payload) if self._read(payload, rewrite=rewrite) else None

    @abstractmethod
    def _read(self, payload: dict[str, Any], *, rewrite: bool) -> bool:
        """Take what the event log needs from one event; with ``rewrite``, strip reasoning in place. True if changed."""


class OpenAIStreamReader(_SSEReader):
    def _read(self, payload: dict[str, Any], *, rewrite: bool) -> bool:
        summary = self.summary
        changed = False
        for choice in payload.get("choices") or []:
            delta = choice.get("delta")
            if delta is not None:
                text = delta.get("content")
                if text:
                    summary.text_parts.append(text)
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning:
                    summary.reasoning_chars += len(reasoning)
                    if rewrite:
                        summary.stripped_chars += len(reasoning)
                        delta.pop("reasoning_content", None)
                        delta.pop("reasoning", None)
                        changed = True
            elif choice.get("text"):
                summary.text_parts.append(choice["text"])
            if choice.get("finish_reason"):
                summary.finish_reason = choice["finish_reason"]
        usage = payload.get("usage")
        if usage:
            summary.prompt_tokens = usage.get("prompt_tokens")
            summary.completion_tokens = usage.get("completion_tokens")
        return changed


class AnthropicStreamReader(_SSEReader):
    def __init__(self, *, strip_reasoning: bool = False) -> None:
        super().__init__(strip_reasoning=strip_reasoning)
        self._thinking_blocks: set[int] = set()

    def _read(self, payload: dict[str, Any], *, rewrite: bool) -> bool:
        kind = payload.get("type")
        summary = self.summary
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "text_delta":
                summary.text_parts.append(delta.get("text", ""))
            elif delta.get("type") == "thinking_delta":
                summary.reasoning_chars += len(delta.get("thinking", ""))
                if rewrite:
                    summary.stripped_chars += len(delta.get("thinking", ""))
                    delta["thinking"] = ""
                    return True
            elif delta.get("type") == "signature_delta" and rewrite:
                delta["signature"] = ""
                return True
        elif kind == "message_start":
            usage = (payload.get("message") or {}).get("usage") or {}
            summary.prompt_tokens = usage.get("input_tokens")
        elif kind == "message_delta":
            summary.finish_reason = (payload.get("delta") or {}).get("stop_reason")
            usage = payload.get("usage") or {}
            if usage.get("output_tokens") is not None:
                summary.completion_tokens = usage["output_tokens"]
        return False
