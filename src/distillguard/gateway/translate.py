"""Anthropic Messages ⇄ OpenAI Chat Completions translation.

Lets Anthropic-speaking clients and coding agents use an OpenAI-protocol model
server (vLLM, Ollama, llama.cpp). Translated: system prompt (string or text
blocks), text messages, max_tokens, temperature, top_p, stop sequences,
streaming, stop reasons, usage, reasoning (``reasoning_content`` ⇄
``thinking`` blocks), and client tools: ``tools`` and ``tool_choice``,
``tool_use`` blocks ⇄ ``tool_calls`` (JSON and streamed), ``tool_result``
blocks → ``role: tool`` messages. Not translated: Anthropic server tools
(``web_search_…``, ``bash_…``, ``text_editor_…``, ``computer_…``), images and
documents (inside a ``tool_result`` too) — those are refused with a clear 400.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from distillguard.gateway.errors import GatewayError
from distillguard.gateway.shapes import (
    check_tool_calls,
    expect_dict,
    expect_list,
    opt_count,
    opt_dict,
    opt_str,
)

__all__ = ["StreamTranslator", "anthropic_stop_reason", "anthropic_to_openai_request", "openai_to_anthropic_response"]

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "content_filter": "end_turn", "tool_calls": "tool_use"}
RAW_ARGUMENTS = "_raw_arguments"  # a tool_use's input when the upstream's arguments were not a JSON object
TOOL_ERROR_PREFIX = "Error: "  # prefixed to the content of a tool_result with is_error: true


def anthropic_stop_reason(finish_reason: str | None) -> str:
    """An OpenAI ``finish_reason`` in Anthropic's ``stop_reason`` vocabulary (unknown or none: ``end_turn``).

    The one mapping for the translated answer, its stream and its event, so the
    event records exactly what the client was told.
    """
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def _stop_reason(finish_reason: str | None, called_tools: bool) -> str:
    """:func:`anthropic_stop_reason`, except that an answer which calls tools and "just stops" stops for ``tool_use``.

    Some servers end a tool-calling answer with ``finish_reason: "stop"``; an
    Anthropic client runs the tools only when told ``tool_use``.
    """
    if called_tools and finish_reason in (None, "stop"):
        return "tool_use"
    return anthropic_stop_reason(finish_reason)


def _not_translated(message: str) -> GatewayError:
    return GatewayError(400, message + " (see docs/gateway.md)", "not_translated")


def _block_text(block: Any, where: str) -> str:
    """The text of one input content block: its text, nothing for thinking; anything else cannot be translated."""
    if not isinstance(block, dict):
        raise GatewayError(422, f"{where}: expected a content block object", "invalid_content")
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind in ("thinking", "redacted_thinking"):
        return ""
    raise _not_translated(f"{where}: content blocks of type {kind!r} cannot be translated for an OpenAI-protocol upstream "
                          "(text, tool_use and tool_result are)")


def _text_of(content: Any, where: str, sep: str = "") -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [_block_text(block, f"{where}.{i}") for i, block in enumerate(content)]
        return sep.join(t for t in texts if t) if sep else "".join(texts)
    raise GatewayError(422, f"{where}: expected a string or a list of content blocks", "invalid_content")


def _translate_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise GatewayError(422, "tools: expected a list of tool objects", "invalid_content")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise GatewayError(422, f"tools.{i}: expected a tool object", "invalid_content")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise _not_translated(
                f"tools.{i}: the Anthropic server tool type {kind!r} cannot be run by an OpenAI-protocol upstream; only "
                "client tools (name, description, input_schema) are translated. Route this model to an "
                "Anthropic-protocol upstream or send the request without that tool")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise GatewayError(422, f"tools.{i}.name: field required (a string).", "missing_field")
        function: dict[str, Any] = {"name": name}
        if tool.get("description"):
            function["description"] = tool["description"]
        schema = tool.get("input_schema")
        function["parameters"] = schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
        out.append({"type": "function", "function": function})
    return out


def _translate_tool_choice(choice: Any, out: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        raise GatewayError(422, "tool_choice: expected an object with a 'type'", "invalid_content")
    kind = choice.get("type")
    if kind in ("auto", "none"):
        out["tool_choice"] = kind
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise GatewayError(422, "tool_choice.name: field required (a string) for type 'tool'.", "missing_field")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise _not_translated(f"tool_choice: type {kind!r} cannot be translated for an OpenAI-protocol upstream")
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False


def _arguments_of(tool_input: Any) -> str:
    """A ``tool_use`` block's ``input`` as OpenAI ``arguments``; arguments that were not JSON go back as they came."""
    if isinstance(tool_input, dict) and set(tool_input) == {RAW_ARGUMENTS} and isinstance(tool_input[RAW_ARGUMENTS], str):
        return tool_input[RAW_ARGUMENTS]
    return orjson.dumps(tool_input if tool_input is not None else {}).decode()


def _assistant_message(content: Any, where: str) -> dict[str, Any]:
    if not isinstance(content, list):
        return {"role": "assistant", "content": _text_of(content, where)}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        if isinstance(block, dict) and block.get("type") == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise GatewayError(422, f"{where}.{i}: a tool_use block needs a string 'id' and 'name'", "invalid_content")
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": _arguments_of(block.get("input"))}})
        else:
            texts.append(_block_text(block, f"{where}.{i}"))
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
        if not message["content"]:
            message["content"] = None  # what OpenAI itself sends for an answer that only calls tools
    return message


def _user_messages(content: Any, where: str) -> list[dict[str, Any]]:
    """A user message: its ``tool_result`` blocks as ``tool`` messages, in order, then the rest of its text, if any."""
    if not isinstance(content, list):
        return [{"role": "user", "content": _text_of(content, where)}]
    results: list[dict[str, Any]] = []
    texts: list[str] = []
    for i, block in enumerate(content):
        if isinstance(block, dict) and block.get("type") == "tool_result":
            call_id = block.get("tool_use_id")
            if not isinstance(call_id, str):
                raise GatewayError(422, f"{where}.{i}.tool_use_id: field required (a string).", "missing_field")
            inner = block.get("content")
            text = "" if inner is None else _text_of(inner, f"{where}.{i}.content", sep="\n")
            if block.get("is_error") is True:
                text = TOOL_ERROR_PREFIX + text
            results.append({"role": "tool", "tool_call_id": call_id, "content": text})
        else:
            texts.append(_block_text(block, f"{where}.{i}"))
    if not results:
        return [{"role": "user", "content": "".join(texts)}]
    text = "".join(texts)
    return results + ([{"role": "user", "content": text}] if text else [])


def anthropic_to_openai_request(body: dict[str, Any]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system, "system")})
    for i, message in enumerate(body.get("messages") or []):
        role, content, where = message.get("role"), message.get("content"), f"messages.{i}.content"
        if role == "assistant":
            messages.append(_assistant_message(content, where))
        elif role == "user":
            messages.extend(_user_messages(content, where))
        else:
            messages.append({"role": role, "content": _text_of(content, where)})
    out: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body.get("max_tokens")}
    for name in ("temperature", "top_p", "stream", "top_k", "seed", "min_tokens"):  # the last three: vLLM-style extras
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    if body.get("stream"):
        out["stream_options"] = {"include_usage": True}
    if body.get("tools"):
        out["tools"] = _translate_tools(body["tools"])
    if body.get("tool_choice") is not None:
        _translate_tool_choice(body["tool_choice"], out)
    return out


def _message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def _tool_use_id() -> str:
    return "toolu_" + secrets.token_hex(12)


def _tool_input(arguments: Any) -> dict[str, Any]:
    """OpenAI ``arguments`` (JSON text) as a ``tool_use`` input: the object, ``{}`` if empty, else the raw text kept."""
    if isinstance(arguments, dict):  # a few servers send the object itself
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        parsed = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        parsed = None
    return parsed if isinstance(parsed, dict) else {RAW_ARGUMENTS: arguments if isinstance(arguments, str) else str(arguments)}


def openai_to_anthropic_response(body: dict[str, Any], model: str) -> dict[str, Any]:
    """A whole OpenAI chat completion as an Anthropic message.

    Raises :class:`UpstreamProtocolError` when a field it uses has the wrong
    type (the gateway answers 502), never anything else.
    """
    choices = body.get("choices")
    choices = expect_list(choices, "choices") if choices is not None else []
    choice = expect_dict(choices[0], "choices.0") if choices else {}
    message = opt_dict(choice.get("message"), "choices.0.message") or {}
    content: list[dict[str, Any]] = []
    reasoning = opt_str(message.get("reasoning_content"), "choices.0.message.reasoning_content")
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    raw_calls = message.get("tool_calls")
    calls = check_tool_calls(raw_calls, "choices.0.message.tool_calls") if raw_calls is not None else []
    text = opt_str(message.get("content"), "choices.0.message.content")
    if text or not calls:
        content.append({"type": "text", "text": text or ""})
    for call in calls:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or _tool_use_id(), "name": function.get("name") or "",
                        "input": _tool_input(function.get("arguments"))})
    usage = opt_dict(body.get("usage"), "usage") or {}
    upstream_model = body.get("model")
    return {
        "id": _message_id(),
        "type": "message",
        "role": "assistant",
        "model": upstream_model if isinstance(upstream_model, str) and upstream_model else model,
        "content": content,
        "stop_reason": _stop_reason(opt_str(choice.get("finish_reason"), "choices.0.finish_reason"), bool(calls)),
        "stop_sequence": None,
        "usage": {"input_tokens": opt_count(usage.get("prompt_tokens"), "usage.prompt_tokens") or 0,
                  "output_tokens": opt_count(usage.get("completion_tokens"), "usage.completion_tokens") or 0},
    }


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class _ToolCall:
    """One streamed OpenAI tool call (by its ``index``) on its way to becoming a ``tool_use`` block."""

    __slots__ = ("arguments", "call_id", "name", "sent", "state")

    def __init__(self) -> None:
        self.call_id: str | None = None
        self.name: str | None = None
        self.arguments: list[str] = []
        self.sent = 0  # pieces of ``arguments`` already sent as input_json_delta
        self.state = "pending"  # pending (no block yet) → open → closed

    def complete(self) -> bool:
        """Whether the arguments so far are a whole JSON object (a proper prefix of one never is)."""
        try:
            return isinstance(orjson.loads("".join(self.arguments)), dict)
        except orjson.JSONDecodeError:
            return False


# What a stream delivers, in order: ("text", str), ("thinking", str) or ("tool", index, tool_call_piece).
_Item = tuple[Any, ...]


class StreamTranslator:
    """Turns an OpenAI chat-completions SSE stream into Anthropic Messages SSE events, chunk by chunk.

    It is fed what :class:`~distillguard.gateway.responses.OpenAIStreamReader`
    passed on, so every field it reads has already been type-checked (a wrong
    one ended the stream there).

    ``message_start`` must be sent before the first content, but OpenAI streams
    report usage only in their last chunk; so ``message_start`` carries
    ``estimated_input_tokens`` (the gateway's guess) and the final
    ``message_delta`` carries the upstream's real input and output counts, which
    Anthropic clients take as the cumulative totals.

    Tool calls: Anthropic blocks come one after the other (start, deltas, stop),
    while OpenAI tool-call pieces carry an ``index`` and could in principle
    interleave. Pieces of the open ``tool_use`` block are sent as they come
    (``input_json_delta``); anything else that arrives while the open tool's
    arguments are not yet a whole JSON object (another call's pieces, text) is
    held back in arrival order and sent once they are, or at the end. Upstreams
    that send calls one after the other (vLLM, llama.cpp, Ollama) thus stream
    every call live.
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
        self.tools: dict[int, _ToolCall] = {}
        self.tool_ids: dict[str, int] = {}  # for the rare upstream that sends no index
        self.last_tool: int | None = None
        self.current_tool: int | None = None  # the index of the open tool_use block's call
        self.held: list[_Item] = []
        self.called_tools = False

    @property
    def stop_reason(self) -> str:
        """The ``stop_reason`` the client is (or will be) told."""
        return _stop_reason(self.finish_reason, self.called_tools)

    def _start(self) -> bytes:
        self.started = True
        message: dict[str, Any] = {
            "id": _message_id(), "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return _sse("message_start", {"type": "message_start", "message": message})

    def _close_block(self) -> bytes:
        if self.block_kind is None:
            return b""
        if self.block_kind == "tool_use" and self.current_tool is not None:
            self.tools[self.current_tool].state = "closed"
            self.current_tool = None
        self.block_kind = None
        return _sse("content_block_stop", {"type": "content_block_stop", "index": self.block_index})

    def _switch_block(self, kind: str, block: dict[str, Any] | None = None) -> bytes:
        out = self._close_block()
        self.block_index += 1
        self.block_kind = kind
        if block is None:
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
            if isinstance(payload, dict):
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
                out += self._dispatch(("thinking", reasoning))
            text = delta.get("content")
            if text:
                out += self._dispatch(("text", text))
            for position, piece in enumerate(delta.get("tool_calls") or []):
                if isinstance(piece, dict):
                    out += self._dispatch(("tool", self._tool_index(piece, position), piece))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _tool_index(self, piece: dict[str, Any], position: int) -> int:
        index = piece.get("index")
        if not isinstance(index, int):  # no index: a new id is a new call, no id continues the last one
            call_id = piece.get("id")
            if isinstance(call_id, str) and call_id:
                index = self.tool_ids.get(call_id)
                if index is None:
                    index = max(self.tool_ids.values(), default=-1) + 1
            else:
                index = self.last_tool if self.last_tool is not None else position
        call_id = piece.get("id")
        if isinstance(call_id, str) and call_id:
            self.tool_ids.setdefault(call_id, index)
        self.last_tool = index
        return index

    def _dispatch(self, item: _Item) -> bytes:
        """Send ``item`` now, or hold it back while the open tool call's arguments are unfinished."""
        if self.block_kind == "tool_use" and not (item[0] == "tool" and item[1] == self.current_tool):
            current = self.tools[self.current_tool] if self.current_tool is not None else None
            if self.held or (current is not None and not current.complete()):
                self.held.append(item)
                return b""
        return self._send(item)

    def _send(self, item: _Item) -> bytes:
        out = b""
        kind = item[0]
        if kind in ("text", "thinking"):
            if self.block_kind != kind:
                out += self._switch_block(kind)
            delta = {"type": "text_delta", "text": item[1]} if kind == "text" else {"type": "thinking_delta", "thinking": item[1]}
            return out + _sse("content_block_delta", {"type": "content_block_delta", "index": self.block_index, "delta": delta})
        index, piece = item[1], item[2]
        call = self.tools.setdefault(index, _ToolCall())
        if call.state == "closed":  # more of a call already closed as a whole JSON object: nothing valid can follow
            return b""
        call_id = piece.get("id")
        if isinstance(call_id, str) and call_id and call.call_id is None:
            call.call_id = call_id
        function = piece.get("function") or {}
        name = function.get("name")
        if isinstance(name, str) and name and call.name is None:
            call.name = name
        arguments = function.get("arguments")
        if isinstance(arguments, dict):
            arguments = orjson.dumps(arguments).decode()
        if isinstance(arguments, str) and arguments:
            call.arguments.append(arguments)
        if call.state == "pending":
            if call.name is None:  # a block cannot start without its name: wait for it
                return b""
            out += self._open_tool(index)
        out += self._send_arguments(call)
        if self.held and call.complete():  # the call is whole: what waited behind it can go
            out += self._close_block() + self._release()
        return out

    def _open_tool(self, index: int) -> bytes:
        call = self.tools[index]
        call.state = "open"
        self.called_tools = True
        block = {"type": "tool_use", "id": call.call_id or _tool_use_id(), "name": call.name or "", "input": {}}
        out = self._switch_block("tool_use", block)
        self.current_tool = index
        return out

    def _send_arguments(self, call: _ToolCall) -> bytes:
        partial = "".join(call.arguments[call.sent:])
        call.sent = len(call.arguments)
        if not partial:
            return b""
        return _sse("content_block_delta", {"type": "content_block_delta", "index": self.block_index,
                                            "delta": {"type": "input_json_delta", "partial_json": partial}})

    def _release(self) -> bytes:
        held, self.held = self.held, []
        return b"".join(self._dispatch(item) for item in held)

    def finish(self) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        out = b"" if self.started else self._start()
        while self.held:  # the stream is over: close the open call and let what waited behind it go
            out += self._close_block() + self._release()
        for index, call in sorted(self.tools.items()):  # a call whose name never came still becomes a block
            if call.state == "pending" and (call.call_id or call.arguments):
                out += self._open_tool(index) + self._send_arguments(call)
        if self.block_index == -1:
            out += self._switch_block("text")
        out += self._close_block()
        usage: dict[str, int] = {"output_tokens": self.output_tokens}
        if self.usage_reported:  # the real count replaces message_start's estimate; without it the estimate stands
            usage = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        out += _sse("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                                      "usage": usage})
        return out + _sse("message_stop", {"type": "message_stop"})
