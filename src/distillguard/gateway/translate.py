"""Anthropic Messages ⇄ OpenAI Chat Completions translation.

Lets Anthropic-speaking clients and coding agents use an OpenAI-protocol model
server (vLLM, Ollama, llama.cpp). Translated: system prompt (string or text
blocks), text messages, max_tokens, temperature, top_p, stop sequences,
streaming, stop reasons, usage, and reasoning (``reasoning_content`` ⇄
``thinking`` blocks). Not translated yet: tools, images, documents, and
``tool_use``/``tool_result`` blocks — those are refused with a clear 400.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from distillguard.gateway.errors import GatewayError

__all__ = ["StreamTranslator", "anthropic_stop_reason", "anthropic_to_openai_request", "openai_to_anthropic_response"]

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "content_filter": "end_turn", "tool_calls": "tool_use"}


def anthropic_stop_reason(finish_reason: str | None) -> str:
    """An OpenAI ``finish_reason`` in Anthropic's ``stop_reason`` vocabulary (unknown or none: ``end_turn``).

    The one mapping for the translated answer, its stream and its event, so the
    event records exactly what the client was told.
    """
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, block in enumerate(content):
            if not isinstance(block, dict):
                raise GatewayError(422, f"{where}.{i}: expected a content block object", "invalid_content")
            kind = block.get("type")
            if kind == "text":
                parts.append(str(block.get("text", "")))
            elif kind in ("thinking", "redacted_thinking"):
                continue
            else:
                raise GatewayError(
                    400,
                    f"{where}.{i}: content blocks of type {kind!r} cannot be translated for an OpenAI-protocol "
                    "upstream yet (only text is); see docs/gateway.md",
                    "not_translated",
                )
        return "".join(parts)
    raise GatewayError(422, f"{where}: expected a string or a list of content blocks", "invalid_content")


def anthropic_to_openai_request(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("tools") or body.get("tool_choice"):
        raise GatewayError(
            400,
            "tools: tool use cannot be translated for an OpenAI-protocol upstream yet; route this model to an "
            "Anthropic-protocol upstream or send the request without tools (see docs/gateway.md)",
            "not_translated",
        )
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system, "system")})
    for i, message in enumerate(body.get("messages") or []):
        messages.append({"role": message.get("role"), "content": _text_of(message.get("content"), f"messages.{i}.content")})
    out: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body.get("max_tokens")}
    for name in ("temperature", "top_p", "stream", "top_k", "seed", "min_tokens"):  # the last three: vLLM-style extras
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    if body.get("stream"):
        out["stream_options"] = {"include_usage": True}
    return out


def _message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def openai_to_anthropic_response(body: dict[str, Any], model: str) -> dict[str, Any]:
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    content.append({"type": "text", "text": message.get("content") or ""})
    usage = body.get("usage") or {}
    return {
        "id": _message_id(),
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or model,
        "content": content,
        "stop_reason": anthropic_stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": {"input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0)},
    }


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class StreamTranslator:
    """Turns an OpenAI chat-completions SSE stream into Anthropic Messages SSE events, chunk by chunk.

    ``message_start`` must be sent before the first content, but OpenAI streams
    report usage only in their last chunk; so ``message_start`` carries
    ``estimated_input_tokens`` (the gateway's guess) and the final
    ``message_delta`` carries the upstream's real input and output counts, which
    Anthropic clients take as the cumulative totals.
    """

    def __init__(self, model: str, estimated_input_tokens: int = 0) -> None:
        self.model = model
        self.buffer = b""
        self.started = False
        self.block_index = -1
        self.block_kind: str | None = None
        self.finish_reason: str | None = None
        self.input_tokens = estimated_input_tokens
        self.output_tokens = 0
        self.usage_reported = False
        self.finished = False

    def _start(self) -> bytes:
        self.started = True
        message: dict[str, Any] = {
            "id": _message_id(), "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return _sse("message_start", {"type": "message_start", "message": message})

    def _switch_block(self, kind: str) -> bytes:
        out = b""
        if self.block_kind is not None:
            out += _sse("content_block_stop", {"type": "content_block_stop", "index": self.block_index})
        self.block_index += 1
        self.block_kind = kind
        block = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""}
        return out + _sse("content_block_start", {"type": "content_block_start", "index": self.block_index, "content_block": block})

    def feed(self, chunk: bytes) -> bytes:
        self.buffer += chunk
        out = b""
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                out += self.finish()
                continue
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            out += self._on_chunk(payload)
        return out

    def _on_chunk(self, payload: dict[str, Any]) -> bytes:
        out = b""
        usage = payload.get("usage")
        if usage:
            self.usage_reported = True
            self.input_tokens = usage.get("prompt_tokens", self.input_tokens) or 0
            self.output_tokens = usage.get("completion_tokens", self.output_tokens) or 0
        if not self.started:
            out += self._start()
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content")
            if reasoning:
                if self.block_kind != "thinking":
                    out += self._switch_block("thinking")
                out += _sse("content_block_delta", {"type": "content_block_delta", "index": self.block_index,
                                                    "delta": {"type": "thinking_delta", "thinking": reasoning}})
            text = delta.get("content")
            if text:
                if self.block_kind != "text":
                    out += self._switch_block("text")
                out += _sse("content_block_delta", {"type": "content_block_delta", "index": self.block_index,
                                                    "delta": {"type": "text_delta", "text": text}})
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def finish(self) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        out = b"" if self.started else self._start()
        if self.block_kind is None:
            out += self._switch_block("text")
        out += _sse("content_block_stop", {"type": "content_block_stop", "index": self.block_index})
        usage: dict[str, int] = {"output_tokens": self.output_tokens}
        if self.usage_reported:  # the real count replaces message_start's estimate; without it the estimate stands
            usage = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        out += _sse("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": anthropic_stop_reason(self.finish_reason), "stop_sequence": None},
                                      "usage": usage})
        return out + _sse("message_stop", {"type": "message_stop"})
