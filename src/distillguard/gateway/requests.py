"""Reading and validating what the client sent, and summarising it for the event log."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson

from distillguard.gateway.errors import GatewayError

__all__ = ["parse_json_body", "request_part", "flatten_content", "validate_payload"]


def parse_json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise GatewayError(400, "The request body is empty; send a JSON object.", "invalid_json")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"The request body is not valid JSON: {exc}.", "invalid_json") from None
    if not isinstance(payload, dict):
        raise GatewayError(422, f"The request body must be a JSON object, not {type(payload).__name__}.", "invalid_type")
    return payload


def _expect(payload: dict[str, Any], name: str, kinds: type | tuple[type, ...], *, required: bool = False) -> None:
    value = payload.get(name)
    if value is None:
        if required:
            raise GatewayError(422, f"{name}: field required.", "missing_field")
        return
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise GatewayError(422, f"{name}: expected {_names(kinds)}, got a boolean ({value!r}).", "invalid_type")
    if not isinstance(value, kinds):
        raise GatewayError(422, f"{name}: expected {_names(kinds)}, got {type(value).__name__} ({value!r:.60}).", "invalid_type")


def _names(kinds: type | tuple[type, ...]) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    names = {"str": "a string", "list": "an array", "int": "an integer", "float": "a number", "bool": "a boolean", "dict": "an object"}
    return " or ".join(dict.fromkeys(names.get(k.__name__, k.__name__) for k in kinds))


def validate_payload(endpoint: str, payload: dict[str, Any]) -> str:
    """Check the fields the gateway relies on; return the model name."""
    _expect(payload, "model", str, required=True)
    if endpoint in ("openai.chat", "anthropic.messages", "anthropic.count_tokens"):
        _expect(payload, "messages", list, required=True)
        for i, message in enumerate(payload["messages"]):
            if not isinstance(message, dict):
                raise GatewayError(422, f"messages.{i}: expected an object with 'role' and 'content'.", "invalid_type")
            if not isinstance(message.get("role"), str):
                raise GatewayError(422, f"messages.{i}.role: field required (a string).", "missing_field")
    if endpoint == "anthropic.messages":
        _expect(payload, "max_tokens", int, required=True)
    if endpoint == "openai.completions":
        _expect(payload, "prompt", (str, list), required=True)
    if endpoint == "openai.embeddings":
        _expect(payload, "input", (str, list), required=True)
    for name in ("max_tokens", "n", "top_logprobs", "max_completion_tokens"):
        _expect(payload, name, int)
    for name in ("temperature", "top_p"):
        _expect(payload, name, (int, float))
    _expect(payload, "stream", bool)
    return str(payload["model"])


def flatten_content(content: Any) -> str:
    """Multi-part content → its text parts joined (DESIGN §4)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                if part.get("type") in ("text", "input_text"):
                    parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return str(content)


def _redact(text: str, mode: str, key: bytes) -> str:
    if mode == "drop":
        return ""
    return "hmac-sha256:" + hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:32]


def request_part(endpoint: str, payload: dict[str, Any], prompt_mode: str = "keep", hash_key: bytes = b"") -> dict[str, Any]:
    system_parts: list[str] = []
    messages: list[dict[str, str]] = []
    if endpoint in ("openai.chat", "anthropic.messages", "anthropic.count_tokens"):
        if endpoint != "openai.chat" and payload.get("system"):
            system_parts.append(flatten_content(payload["system"]))
        for message in payload.get("messages") or []:
            if not isinstance(message, dict):
                continue
            role = str(message.get("role"))
            text = flatten_content(message.get("content"))
            if role in ("system", "developer"):
                system_parts.append(text)
            else:
                messages.append({"role": role, "content": text})
    elif endpoint == "openai.completions":
        prompt = payload.get("prompt")
        texts = prompt if isinstance(prompt, list) else [prompt]
        messages = [{"role": "user", "content": t if isinstance(t, str) else str(t)} for t in texts]
    elif endpoint == "openai.embeddings":
        inputs = payload.get("input")
        texts = inputs if isinstance(inputs, list) else [inputs]
        messages = [{"role": "user", "content": t if isinstance(t, str) else str(t)} for t in texts[:64]]
    system = "\n".join(system_parts) if system_parts else None
    if prompt_mode != "keep":
        system = _redact(system, prompt_mode, hash_key) if system else system
        messages = [{"role": m["role"], "content": _redact(m["content"], prompt_mode, hash_key)} for m in messages]
    tools = payload.get("tools")
    return {
        "system": system,
        "messages": messages,
        "params": {
            "temperature": payload.get("temperature"),
            "max_tokens": payload.get("max_tokens", payload.get("max_completion_tokens")),
            "n": payload.get("n"),
            "logprobs": bool(payload.get("logprobs")) if payload.get("logprobs") is not None else False,
            "top_logprobs": payload.get("top_logprobs"),
            "stream": bool(payload.get("stream")),
            "tools": len(tools) if isinstance(tools, list) else 0,
        },
    }
