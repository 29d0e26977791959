"""Reading and validating what the client sent, and summarising it for the event log."""

from __future__ import annotations

import hashlib
import hmac
import reprlib
from typing import Any

import orjson

from distillguard.gateway.errors import GatewayError

__all__ = ["cap_logprobs", "estimate_prompt_tokens", "flatten_content", "parse_json_body", "redact_text", "request_part",
           "validate_payload"]


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
        raise GatewayError(422, f"{name}: expected {_names(kinds)}, got {type(value).__name__} ({reprlib.repr(value):.60}).", "invalid_type")


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
    if endpoint == "openai.responses":  # input may be absent (a follow-up that names previous_response_id)
        _expect(payload, "input", (str, list))
        _expect(payload, "instructions", str)
        items = payload.get("input")
        for i, item in enumerate(items if isinstance(items, list) else ()):
            if not isinstance(item, dict):
                raise GatewayError(422, f"input.{i}: expected an input item (an object with 'role' and 'content', or a 'type').",
                                   "invalid_type")
    for name in ("max_tokens", "n", "top_logprobs", "max_completion_tokens", "max_output_tokens"):
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
                if part.get("type") in ("text", "input_text", "output_text"):  # output_text: earlier Responses API turns
                    parts.append(as_text(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return as_text(content)


def as_text(value: Any) -> str:
    """``str(value)`` for the event log, bounded: a client's JSON may nest ~1,000 levels, past ``repr``'s recursion limit."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except RecursionError:
        return f"<{type(value).__name__} nested too deeply to record>"


def redact_text(text: str, mode: str, key: bytes) -> str:
    """``text`` as ``privacy.prompt_mode`` says to store it: as is, a keyed hash, or nothing.

    The hash is keyed (HMAC) so that it cannot be reversed by hashing guesses,
    yet identical texts still match, which some detectors rely on.
    """
    if mode == "keep":
        return text
    if mode == "drop":
        return ""
    return "hmac-sha256:" + hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:32]


def request_part(endpoint: str, payload: dict[str, Any], prompt_mode: str = "keep", hash_key: bytes = b"") -> dict[str, Any]:
    system_parts: list[str] = []
    messages: list[dict[str, str]] = []
    if endpoint in ("openai.chat", "anthropic.messages", "anthropic.count_tokens"):
        if endpoint != "openai.chat" and payload.get("system"):
            system_parts.append(flatten_content(payload["system"]))
        messages_in = payload.get("messages")  # a refused request is recorded too: `messages` may be any JSON value here
        for message in messages_in if isinstance(messages_in, list) else ():
            if not isinstance(message, dict):
                continue
            role = as_text(message.get("role"))
            text = flatten_content(message.get("content"))
            if role in ("system", "developer"):
                system_parts.append(text)
            else:
                messages.append({"role": role, "content": text})
    elif endpoint == "openai.completions":
        prompt = payload.get("prompt")
        texts = prompt if isinstance(prompt, list) else [prompt]
        messages = [{"role": "user", "content": as_text(t)} for t in texts]
    elif endpoint == "openai.responses":
        if payload.get("instructions"):
            system_parts.append(as_text(payload["instructions"]))
        messages = _responses_input(payload.get("input"), system_parts)
    elif endpoint == "openai.embeddings":
        inputs = payload.get("input")
        texts = inputs if isinstance(inputs, list) else [inputs]
        messages = [{"role": "user", "content": as_text(t)} for t in texts[:64]]
    system = "\n".join(system_parts) if system_parts else None
    if prompt_mode != "keep":
        system = redact_text(system, prompt_mode, hash_key) if system else system
        messages = [{"role": m["role"], "content": redact_text(m["content"], prompt_mode, hash_key)} for m in messages]
    tools = payload.get("tools")
    return {
        "system": system,
        "messages": messages,
        "params": {  # a refused request is recorded too: only values of the right type, so readers can count them
            "temperature": _number(payload.get("temperature")),
            "max_tokens": _integer(payload.get("max_tokens", payload.get("max_completion_tokens", payload.get("max_output_tokens")))),
            "n": _integer(payload.get("n")),
            "logprobs": bool(payload.get("logprobs")) if payload.get("logprobs") is not None else False,
            "top_logprobs": _integer(payload.get("top_logprobs")),
            "stream": bool(payload.get("stream")),
            "tools": len(tools) if isinstance(tools, list) else 0,
        },
    }


def _responses_input(value: Any, system_parts: list[str]) -> list[dict[str, str]]:
    """A Responses API ``input``: a string is one user message; a list holds input items.

    Items with a ``role`` (``type: message`` or the short form) are kept with
    their text parts flattened; ``system``/``developer`` ones join the system
    prompt. Items without a role (function calls and their outputs, reasoning
    items sent back) are not messages and are left out of the record.
    """
    if value is None:
        return []
    if not isinstance(value, list):
        return [{"role": "user", "content": as_text(value)}]
    messages: list[dict[str, str]] = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            continue
        text = flatten_content(item.get("content"))
        if item["role"] in ("system", "developer"):
            system_parts.append(text)
        else:
            messages.append({"role": item["role"], "content": text})
    return messages


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | int | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def estimate_prompt_tokens(endpoint: str, payload: dict[str, Any]) -> int:
    """Input tokens guessed before the upstream says: characters of system prompt and messages ÷ 4.

    Used where an answer must state a count the upstream has not given yet
    (``count_tokens`` for OpenAI upstreams, ``message_start`` of a translated
    stream); never for billing or limits, which use the upstream's usage.
    """
    part = request_part(endpoint, payload)
    chars = len(part["system"] or "") + sum(len(m["content"]) for m in part["messages"])
    return max(1, chars // 4)


def cap_logprobs(payload: dict[str, Any], cap: int) -> bool:
    """Limit the token distribution an OpenAI-format request can get back to ``cap`` alternatives; True if changed.

    Logprobs are a distillation signal in themselves, and a request can ask
    for them several ways, all covered: chat's ``logprobs: true`` (the chosen
    tokens' logprobs even without ``top_logprobs``) and ``top_logprobs``; the
    legacy completions' integer ``logprobs`` (which returns the chosen token's
    logprob even at 0); vLLM's ``prompt_logprobs``; the Responses API's
    ``include: ["message.output_text.logprobs"]``. At ``cap`` 0 all of them
    are switched off; above it the number of alternatives is lowered to ``cap``.
    """
    changed = False
    logprobs = payload.get("logprobs")
    if cap <= 0:
        include = payload.get("include")
        if isinstance(include, list) and "message.output_text.logprobs" in include:
            payload["include"] = [item for item in include if item != "message.output_text.logprobs"]
            changed = True
        if logprobs is True:
            payload["logprobs"] = False
            changed = True
        elif logprobs is not None and logprobs is not False:
            del payload["logprobs"]
            changed = True
        for name in ("top_logprobs", "prompt_logprobs"):
            if payload.pop(name, None) is not None:
                changed = True
        return changed
    if isinstance(logprobs, int) and not isinstance(logprobs, bool) and logprobs > cap:
        payload["logprobs"] = cap
        changed = True
    for name in ("top_logprobs", "prompt_logprobs"):
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            payload[name] = cap
            changed = True
    return changed
