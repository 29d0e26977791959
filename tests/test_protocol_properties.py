"""Hypothesis properties of the SSE readers and the Anthropic ⇄ OpenAI translation (issue #12, deliverable 7).

Two promises: whatever JSON an upstream sends, the readers, summarisers and
translators either accept it or raise :class:`UpstreamProtocolError` (which
the gateway turns into a 502 and one event) — never another exception; and
valid input goes through unchanged in meaning, however the stream is cut into
chunks.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillguard.gateway.errors import GatewayError
from distillguard.gateway.requests import validate_payload
from distillguard.gateway.responses import (
    AnthropicStreamReader,
    OpenAIStreamReader,
    ResponseSummary,
    summarise_anthropic,
    summarise_openai,
)
from distillguard.gateway.translate import (
    StreamTranslator,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from distillguard.gateway.upstream_http import UpstreamProtocolError

FIELDS = ["choices", "delta", "content", "finish_reason", "usage", "prompt_tokens", "completion_tokens", "reasoning_content",
          "reasoning", "tool_calls", "function", "name", "arguments", "index", "id", "text", "message", "type", "error",
          "input_tokens", "output_tokens", "stop_reason", "content_block", "thinking", "signature", "model", "role"]
TYPES = ["content_block_delta", "content_block_start", "content_block_stop", "message_start", "message_delta", "message_stop",
         "error", "text_delta", "thinking_delta", "signature_delta", "input_json_delta", "text", "thinking", "tool_use"]

scalars = st.none() | st.booleans() | st.integers(-3, 10**12) | st.floats(allow_nan=False, allow_infinity=False) | \
    st.sampled_from(["", "stop", "x", "{", "{}", '{"a": 1}', *TYPES]) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), inner, max_size=5),
    max_leaves=25,
)
json_objects = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)
FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sse(payloads: list[bytes], *, anthropic: bool = False) -> bytes:
    if anthropic:
        return b"".join(b"event: x\ndata: " + p + b"\n\n" for p in payloads)
    return b"".join(b"data: " + p + b"\n\n" for p in payloads) + b"data: [DONE]\n\n"


def _split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


def _relay(reader: Any, pieces: list[bytes], translator: StreamTranslator | None = None) -> bytes:
    out = b""
    for piece in pieces:
        relayed = reader.feed(piece)
        out += translator.feed(relayed) if translator is not None else relayed
    rest = reader.flush()
    if translator is not None:
        rest = translator.feed(rest) + translator.finish()
    return out + rest


# -- arbitrary JSON never raises anything but UpstreamProtocolError ------------------------------------

@FAST
@given(st.lists(json_values, min_size=1, max_size=4), st.lists(st.integers(0, 10**6), max_size=4),
       st.sampled_from(["keep", "strip", "summarize"]), st.booleans())
def test_openai_reader_and_translator_accept_or_refuse_any_json(values: list[Any], cuts: list[int], mode: str, translate: bool) -> None:
    reader = OpenAIStreamReader(strip_reasoning=mode != "keep", summarize_reasoning=mode == "summarize")
    translator = StreamTranslator("m", 3) if translate else None
    try:
        _relay(reader, _split(_sse([orjson.dumps(v) for v in values]), cuts), translator)
    except UpstreamProtocolError:
        return
    assert all(isinstance(part, str) for part in reader.summary.text_parts)
    assert isinstance(reader.summary.finish_reason, str | None)


@FAST
@given(st.lists(json_values, min_size=1, max_size=4), st.lists(st.integers(0, 10**6), max_size=4),
       st.sampled_from(["keep", "strip", "summarize"]))
def test_anthropic_reader_accepts_or_refuses_any_json(values: list[Any], cuts: list[int], mode: str) -> None:
    reader = AnthropicStreamReader(strip_reasoning=mode != "keep", summarize_reasoning=mode == "summarize")
    try:
        _relay(reader, _split(_sse([orjson.dumps(v) for v in values], anthropic=True), cuts))
    except UpstreamProtocolError:
        return
    assert all(isinstance(part, str) for part in reader.summary.text_parts)
    assert isinstance(reader.summary.prompt_tokens, int | None) and isinstance(reader.summary.completion_tokens, int | None)


@FAST
@given(json_objects, st.sampled_from(["keep", "strip", "summarize"]))
def test_whole_answers_are_accepted_or_refused(body: dict[str, Any], mode: str) -> None:
    strip, summarize = mode != "keep", mode == "summarize"
    for summarise in (summarise_openai, summarise_anthropic):
        summary = ResponseSummary()
        try:
            summarise(dict(body), summary, strip_reasoning=strip, summarize_reasoning=summarize)
        except UpstreamProtocolError:
            continue
        assert isinstance(summary.text, str)
        summary.total_tokens()
    try:
        translated = openai_to_anthropic_response(dict(body), "m")
    except UpstreamProtocolError:
        return
    orjson.dumps(translated)
    assert translated["stop_reason"] in ("end_turn", "max_tokens", "tool_use")


@FAST
@given(json_objects)
def test_any_anthropic_request_translates_or_is_a_4xx(extra: dict[str, Any]) -> None:
    payload = {**extra, "model": "m", "max_tokens": 5}
    payload.setdefault("messages", [])
    try:
        validate_payload("anthropic.messages", payload)
        translated = anthropic_to_openai_request(payload)
    except GatewayError as exc:
        assert 400 <= exc.status < 500
        return
    orjson.dumps(translated)


# -- valid input round-trips ------------------------------------------------------------------------------

words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@FAST
@given(st.lists(words, min_size=1, max_size=10), st.lists(words, max_size=4), st.sampled_from(["stop", "length"]),
       st.lists(st.integers(0, 10**6), max_size=8))
def test_valid_openai_stream_is_relayed_unchanged_and_read_whole(
        pieces: list[str], reasoning: list[str], finish: str, cuts: list[int]) -> None:
    chunks = [orjson.dumps({"choices": [{"index": 0, "delta": {"reasoning_content": r}, "finish_reason": None}]}) for r in reasoning]
    chunks += [orjson.dumps({"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}) for p in pieces]
    chunks.append(orjson.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                                "usage": {"prompt_tokens": 4, "completion_tokens": len(pieces)}}))
    body = _sse(chunks)
    reader = OpenAIStreamReader()
    assert _relay(reader, _split(body, cuts)) == body
    summary = reader.summary
    assert (summary.text, summary.finish_reason) == ("".join(pieces), finish)
    assert summary.reasoning_chars == sum(len(r) for r in reasoning)
    assert (summary.prompt_tokens, summary.completion_tokens) == (4, len(pieces))


def _anthropic_events(out: bytes) -> list[dict[str, Any]]:
    events = []
    for frame in out.split(b"\n\n"):
        if frame.strip():
            event_line, data_line = frame.split(b"\n", 1)
            payload = orjson.loads(data_line.removeprefix(b"data: "))
            assert event_line == b"event: " + payload["type"].encode()
            events.append(payload)
    return events


@FAST
@given(st.lists(words, max_size=6), st.lists(words, max_size=3),
       st.lists(st.dictionaries(st.sampled_from(["city", "unit", "n"]), st.integers(-(2**53), 2**53) | words, max_size=3), max_size=3),
       st.lists(st.integers(1, 7), min_size=1, max_size=3), st.lists(st.integers(0, 10**6), max_size=8))
def test_openai_stream_translates_to_the_same_anthropic_message(
        pieces: list[str], reasoning: list[str], calls: list[dict[str, Any]], widths: list[int], cuts: list[int]) -> None:
    """Text, thinking and tool calls (arguments streamed in pieces) come out as the same blocks, whatever the chunking."""
    chunks = [orjson.dumps({"choices": [{"index": 0, "delta": {"reasoning_content": r}}]}) for r in reasoning]
    chunks += [orjson.dumps({"choices": [{"index": 0, "delta": {"content": p}}]}) for p in pieces]
    for index, arguments in enumerate(calls):
        text = orjson.dumps(arguments).decode()
        chunks.append(orjson.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": index, "id": f"call_{index}", "type": "function", "function": {"name": f"tool{index}", "arguments": ""}}]}}]}))
        width = widths[index % len(widths)]
        for start in range(0, len(text), width):
            chunks.append(orjson.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": index, "function": {"arguments": text[start:start + width]}}]}}]}))
    chunks.append(orjson.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if calls else "stop"}]}))
    chunks.append(orjson.dumps({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5}}))
    events = _anthropic_events(_relay(OpenAIStreamReader(), _split(_sse(chunks), cuts), StreamTranslator("m", 3)))

    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    blocks: dict[int, dict[str, Any]] = {}
    for event in events:
        if event["type"] == "content_block_start":
            blocks[event["index"]] = {**event["content_block"], "json": ""}
        elif event["type"] == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            else:
                block["json"] += delta["partial_json"]
    ordered = [blocks[i] for i in sorted(blocks)]
    assert "".join(b["thinking"] for b in ordered if b["type"] == "thinking") == "".join(reasoning)
    assert "".join(b["text"] for b in ordered if b["type"] == "text") == "".join(pieces)
    tools = [b for b in ordered if b["type"] == "tool_use"]
    assert [(b["name"], orjson.loads(b["json"])) for b in tools] == [(f"tool{i}", args) for i, args in enumerate(calls)]
    message_delta = events[-2]
    assert message_delta["delta"]["stop_reason"] == ("tool_use" if calls else "end_turn")
    assert message_delta["usage"] == {"input_tokens": 9, "output_tokens": 5}


@FAST
@given(st.one_of(st.none(), words), words,
       st.lists(st.dictionaries(st.sampled_from(["city", "unit"]), words, max_size=2), max_size=3))
def test_whole_openai_answer_translates_and_back(reasoning: str | None, text: str, calls: list[dict[str, Any]]) -> None:
    """An OpenAI answer → Anthropic message → (as the assistant turn of the next request) OpenAI message: same text and calls."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [{"id": f"call_{i}", "type": "function", "function": {"name": f"t{i}", "arguments": orjson.dumps(a).decode()}}
                                 for i, a in enumerate(calls)]
    body = {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    answer = openai_to_anthropic_response(body, "m")
    assert answer["usage"] == {"input_tokens": 3, "output_tokens": 4}
    assert answer["stop_reason"] == ("tool_use" if calls else "end_turn")
    request = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer["content"]}]}
    back = anthropic_to_openai_request(request)["messages"][1]
    assert back["content"] == (text or None if calls else text)
    assert [(c["id"], c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in back.get("tool_calls", [])] == \
        [(f"call_{i}", f"t{i}", a) for i, a in enumerate(calls)]
