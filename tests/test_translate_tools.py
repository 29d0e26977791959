"""Tool use across the Anthropic → OpenAI translation: requests, JSON answers and streams, and end to end with the anthropic SDK."""

from __future__ import annotations

import random
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from distillguard.gateway.errors import GatewayError
from distillguard.gateway.translate import (
    StreamTranslator,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from tests.gateway_fixtures import RunningGateway
from tests.upstream_stub import UpstreamStub

WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CLOCK = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}


def _request(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}], **extra}


# -- request ------------------------------------------------------------------------------------------------------


def test_tools_become_functions() -> None:
    out = anthropic_to_openai_request(_request(tools=[WEATHER, {**CLOCK, "type": "custom", "cache_control": {"type": "ephemeral"}}]))
    assert out["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                          "parameters": WEATHER["input_schema"]}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
    ]
    assert "tool_choice" not in out and "parallel_tool_calls" not in out


@pytest.mark.parametrize(("choice", "expected", "parallel"), [
    ({"type": "auto"}, "auto", None),
    ({"type": "any"}, "required", None),
    ({"type": "none"}, "none", None),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}, None),
    ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
    ({"type": "any", "disable_parallel_tool_use": False}, "required", None),
    ({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
     {"type": "function", "function": {"name": "get_weather"}}, False),
])
def test_tool_choice(choice: dict[str, Any], expected: Any, parallel: bool | None) -> None:
    out = anthropic_to_openai_request(_request(tools=[WEATHER], tool_choice=choice))
    assert out["tool_choice"] == expected
    assert out.get("parallel_tool_calls") == parallel


@pytest.mark.parametrize("kind", ["web_search_20250305", "bash_20250124", "text_editor_20250728", "computer_20250124", "code_execution_20250825"])
def test_server_tools_are_refused_by_name(kind: str) -> None:
    with pytest.raises(GatewayError) as info:
        anthropic_to_openai_request(_request(tools=[WEATHER, {"type": kind, "name": "x"}]))
    assert info.value.status == 400 and info.value.code == "not_translated"
    assert kind in info.value.message and "tools.1" in info.value.message


def test_unknown_tool_choice_is_refused() -> None:
    with pytest.raises(GatewayError) as info:
        anthropic_to_openai_request(_request(tools=[WEATHER], tool_choice={"type": "sometimes"}))
    assert info.value.code == "not_translated" and "sometimes" in info.value.message


def test_a_tool_conversation() -> None:
    body = _request(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "two calls", "signature": "s"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Tokyo"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18°C"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "no such"}, {"type": "text", "text": "city"}],
             "is_error": True},
            {"type": "text", "text": "And tomorrow?"},
        ]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_3", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_3"}]},
    ])
    messages = anthropic_to_openai_request(body)["messages"]
    assert messages == [
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Tokyo"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Error: no such\ncity"},
        {"role": "user", "content": "And tomorrow?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_3", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_3", "content": ""},
    ]


def test_raw_arguments_go_back_as_they_came() -> None:
    body = _request(messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c", "name": "f", "input": {"_raw_arguments": "{city: Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c", "content": "invalid input", "is_error": True}]},
    ])
    messages = anthropic_to_openai_request(body)["messages"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == "{city: Paris"


@pytest.mark.parametrize("content", [
    [{"type": "tool_result", "tool_use_id": "c", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}],
    [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}],
    [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}}],
])
def test_images_and_documents_are_still_refused(content: list[dict[str, Any]]) -> None:
    with pytest.raises(GatewayError) as info:
        anthropic_to_openai_request(_request(messages=[{"role": "user", "content": content}]))
    assert info.value.status == 400 and info.value.code == "not_translated"
    assert content[0]["type"] in info.value.message or "image" in info.value.message


# -- JSON answer ----------------------------------------------------------------------------------------------------


def _completion(message: dict[str, Any], finish_reason: str = "tool_calls") -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "model": "m", "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}


def test_tool_calls_become_tool_use_blocks_after_the_text() -> None:
    reply = openai_to_anthropic_response(_completion({"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
    ]}), "m")
    assert reply["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
    ]
    assert reply["stop_reason"] == "tool_use"


def test_tool_calls_edge_cases() -> None:
    reply = openai_to_anthropic_response(_completion({"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{city: Paris"}},
        {"id": "c2", "type": "function", "function": {"name": "f", "arguments": '["not", "an object"]'}},
    ]}, finish_reason="stop"), "m")
    assert [b["type"] for b in reply["content"]] == ["tool_use", "tool_use"]  # no empty text block
    assert reply["content"][0]["id"].startswith("toolu_")  # generated when the upstream gives none
    assert reply["content"][0]["input"] == {"_raw_arguments": "{city: Paris"}
    assert reply["content"][1]["input"] == {"_raw_arguments": '["not", "an object"]'}
    assert reply["stop_reason"] == "tool_use"  # "stop" with tool calls still means: run the tools


def test_length_with_a_tool_call_stays_max_tokens() -> None:
    reply = openai_to_anthropic_response(_completion({"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": '}}]}, finish_reason="length"), "m")
    assert reply["stop_reason"] == "max_tokens"
    assert reply["content"][0]["input"] == {"_raw_arguments": '{"a": '}


# -- stream ---------------------------------------------------------------------------------------------------------


def _sse(chunks: list[dict[str, Any]], usage: bool = True) -> bytes:
    base = {"id": "x", "object": "chat.completion.chunk", "model": "m"}
    out = b"".join(b"data: " + orjson.dumps({**base, **c}) + b"\n\n" for c in chunks)
    if usage:
        out += b"data: " + orjson.dumps({**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 8}}) + b"\n\n"
    return out + b"data: [DONE]\n\n"


def _delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _call(index: int | None, call_id: str | None = None, name: str | None = None, arguments: str | None = None) -> dict[str, Any]:
    piece: dict[str, Any] = {} if index is None else {"index": index}
    function: dict[str, Any] = {}
    if call_id:
        piece.update(id=call_id, type="function")
    if name:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    piece["function"] = function
    return _delta({"tool_calls": [piece]})


def _split_call(index: int, call_id: str, name: str, arguments: str, size: int = 1) -> list[dict[str, Any]]:
    return [_call(index, call_id, name, "")] + [_call(index, arguments=arguments[i:i + size]) for i in range(0, len(arguments), size)]


def _translate(stream: bytes, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """Feed ``stream`` to a translator in random-sized pieces; the Anthropic events it sent."""
    translator = StreamTranslator("m", 1)
    rng = random.Random(seed)
    out, i = b"", 0
    while i < len(stream):
        step = rng.randint(1, 40)
        out += translator.feed(stream[i:i + step])
        i += step
    out += translator.finish()
    events = []
    for block in out.split(b"\n\n"):
        if block:
            name, data = block.split(b"\n", 1)
            events.append((name.removeprefix(b"event: ").decode(), orjson.loads(data.removeprefix(b"data: "))))
    return events


def _message(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The message the events build, checking Anthropic's rules: blocks in order, one open at a time, deltas to the open one."""
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    content: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    open_block: int | None = None
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_block is None and data["index"] == len(content)
            open_block = data["index"]
            content.append(dict(data["content_block"]))
        elif name == "content_block_delta":
            assert data["index"] == open_block
            delta, block = data["delta"], content[data["index"]]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            else:
                assert delta["type"] == "input_json_delta" and block["type"] == "tool_use"
                partial[data["index"]] = partial.get(data["index"], "") + delta["partial_json"]
        else:
            assert name == "content_block_stop" and data["index"] == open_block
            if data["index"] in partial:
                content[data["index"]]["input"] = orjson.loads(partial[data["index"]])
            open_block = None
    assert open_block is None
    final = events[-2][1]
    return {"content": content, "stop_reason": final["delta"]["stop_reason"], "usage": final["usage"]}


def _json_deltas(events: list[tuple[str, dict[str, Any]]]) -> int:
    return sum(1 for name, data in events if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta")


ARGS = '{"city": "Paris", "unit": "celsius", "note": "a \\"quoted\\" {brace}"}'


@pytest.mark.parametrize("seed", range(5))
def test_stream_arguments_in_many_pieces(seed: int) -> None:
    chunks = [_delta({"role": "assistant", "content": None}), *_split_call(0, "call_1", "get_weather", ARGS), _delta({}, "tool_calls")]
    events = _translate(_sse(chunks), seed)
    message = _message(events)
    assert message["content"] == [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": orjson.loads(ARGS)}]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {"input_tokens": 5, "output_tokens": 8}
    assert _json_deltas(events) == len(ARGS)  # streamed as they came, not gathered


def test_stream_text_then_a_tool_call() -> None:
    chunks = [_delta({"role": "assistant", "content": ""}), _delta({"content": "Let me"}), _delta({"content": " check."}),
              *_split_call(0, "call_1", "get_weather", '{"city": "Paris"}', 3), _delta({}, "tool_calls")]
    message = _message(_translate(_sse(chunks)))
    assert message["content"] == [{"type": "text", "text": "Let me check."},
                                  {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]
    assert message["stop_reason"] == "tool_use"


def test_stream_thinking_text_and_two_parallel_calls() -> None:
    chunks = [_delta({"reasoning_content": "Two cities."}), _delta({"content": "Checking both."}),
              *_split_call(0, "call_1", "get_weather", '{"city": "Paris"}', 2),
              *_split_call(1, "call_2", "get_weather", '{"city": "Tokyo"}', 5), _delta({}, "tool_calls")]
    events = _translate(_sse(chunks))
    message = _message(events)
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use", "tool_use"]
    assert [(b["id"], b["input"]) for b in message["content"][2:]] == [("call_1", {"city": "Paris"}), ("call_2", {"city": "Tokyo"})]
    # the second call started only after the first was whole, and streamed live too
    assert _json_deltas(events) == len('{"city": "Paris"}') // 2 + 1 + 4


def test_stream_interleaved_calls_are_sent_one_after_the_other() -> None:
    chunks = [_call(0, "call_1", "get_weather", ""), _call(1, "call_2", "get_time", ""),
              _call(0, arguments='{"city"'), _call(1, arguments="{"), _delta({"content": "(text in between)"}),
              _call(0, arguments=': "Paris"'), _call(1, arguments="}"), _call(0, arguments="}"), _delta({}, "tool_calls")]
    message = _message(_translate(_sse(chunks)))
    assert message["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
        {"type": "text", "text": "(text in between)"},
    ]


def test_stream_any_interleaving_gives_whole_blocks() -> None:
    """Two calls and some text, their pieces shuffled together in every order a seed gives: every block comes out whole."""
    args_a = orjson.dumps({"city": 'Pa}ri"s{', "n": [1, {"x": 2}]}).decode()
    args_b = orjson.dumps({"t": "  ok "}).decode()
    text = "Hello there, world."

    def pieces(value: str, rng: random.Random) -> list[str]:
        cuts = sorted(rng.sample(range(1, len(value)), min(len(value) - 1, rng.randint(1, 8))))
        return [value[i:j] for i, j in zip([0, *cuts], [*cuts, len(value)], strict=True)]

    for seed in range(300):
        rng = random.Random(seed)
        sequences = [
            [_call(0, "a", "fa", ""), *(_call(0, arguments=p) for p in pieces(args_a, rng))],
            [_call(1, "b", "fb", p) if k == 0 else _call(1, arguments=p) for k, p in enumerate(pieces(args_b, rng))],
            [_delta({"content": p}) for p in pieces(text, rng)],
        ]
        merged = []
        while any(sequences):
            merged.append(rng.choice([s for s in sequences if s]).pop(0))
        message = _message(_translate(_sse([*merged, _delta({}, "tool_calls")]), seed))
        calls = {b["id"]: b["input"] for b in message["content"] if b["type"] == "tool_use"}
        assert calls == {"a": orjson.loads(args_a), "b": orjson.loads(args_b)}, seed
        assert "".join(b["text"] for b in message["content"] if b["type"] == "text") == text, seed
        assert message["stop_reason"] == "tool_use"


def test_stream_whole_calls_in_one_chunk_without_index() -> None:
    """As Ollama and some llama.cpp builds send them: each call whole, several in one delta, sometimes without index."""
    delta = {"tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]}
    message = _message(_translate(_sse([_delta(delta), _delta({}, "stop")], usage=False)))
    assert [(b["id"], b["name"], b["input"]) for b in message["content"]] == [("a", "get_weather", {"city": "Paris"}), ("b", "get_time", {})]
    assert message["stop_reason"] == "tool_use"  # "stop" with tool calls: run the tools
    assert message["usage"] == {"output_tokens": 0}


def test_stream_without_tools_is_unchanged() -> None:
    message = _message(_translate(_sse([_delta({"content": "Hi"}), _delta({}, "length")])))
    assert message["content"] == [{"type": "text", "text": "Hi"}] and message["stop_reason"] == "max_tokens"
    empty = _message(_translate(_sse([_delta({}, "stop")])))
    assert empty["content"] == [{"type": "text", "text": ""}] and empty["stop_reason"] == "end_turn"


def test_stream_tool_call_cut_by_length() -> None:
    chunks = [*_split_call(0, "c", "get_weather", '{"city": "Pa', 4), _delta({}, "length")]
    events = _translate(_sse(chunks))
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    starts = [d for n, d in events if n == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["tool_use"]


# -- end to end: the anthropic SDK against a real gateway and an OpenAI-protocol upstream ---------------------------------


@pytest.fixture(scope="module")
def client(gateway: RunningGateway) -> anthropic.Anthropic:
    secret = gateway.create_key("tool-user")["secret"]
    return anthropic.Anthropic(base_url=gateway.root_url, api_key=secret, max_retries=0)


def test_sdk_create_gets_tool_use_blocks(client: anthropic.Anthropic, stub: UpstreamStub, gateway: RunningGateway) -> None:
    raw = client.messages.with_raw_response.create(
        model="stub-tools", max_tokens=64, tools=[WEATHER, CLOCK],  # type: ignore[list-item]
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "Weather in Paris?"}])
    message = raw.parse()
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[0].text == "Let me check."  # type: ignore[union-attr]
    call = message.content[1]
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris", "unit": "celsius"}
    assert call.id == "call_stub0000paris"
    assert message.stop_reason == "tool_use"
    sent = stub.requests[-1]
    assert sent["tools"][0] == {"type": "function", "function": {"name": "get_weather", "description": WEATHER["description"],
                                                                 "parameters": WEATHER["input_schema"]}}
    assert sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is False
    event = gateway.event(raw.headers["x-request-id"])
    assert event["response"]["finish_reason"] == "tool_use" and event["request"]["params"]["tools"] == 2


def test_sdk_stream_yields_tool_use_blocks(client: anthropic.Anthropic, gateway: RunningGateway) -> None:
    with client.messages.stream(model="stub-tools", max_tokens=64, tools=[WEATHER],  # type: ignore[list-item]
                                messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:
        partials = [e.delta.partial_json for e in stream if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert len(partials) > 5  # the arguments arrived in pieces
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Let me check."  # type: ignore[union-attr]
    assert final.content[1].input == {"city": "Paris", "unit": "celsius"}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"
    assert final.usage.input_tokens == 9 and final.usage.output_tokens == 10
    event = gateway.event(request_id)
    assert event["response"]["finish_reason"] == "tool_use" and event["response"]["completion_tokens"] == 10
    assert event["response"]["text"] == "Let me check."  # tool calls are not part of the recorded text


def test_sdk_stream_two_parallel_calls(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="stub-tools-parallel", max_tokens=64, tools=[WEATHER],  # type: ignore[list-item]
                                messages=[{"role": "user", "content": "Paris and Tokyo?"}]) as stream:
        final = stream.get_final_message()
    assert [(b.type, b.id, b.input) for b in final.content] == [  # type: ignore[union-attr]
        ("tool_use", "call_stub0000paris", {"city": "Paris", "unit": "celsius"}),
        ("tool_use", "call_stub0001tokyo", {"city": "Tokyo", "unit": "celsius"}),
    ]
    assert final.stop_reason == "tool_use"


def test_sdk_tool_result_reaches_the_upstream_as_a_tool_message(client: anthropic.Anthropic, stub: UpstreamStub) -> None:
    question: anthropic.types.MessageParam = {"role": "user", "content": "Weather in Paris?"}
    first = client.messages.create(model="stub-tools", max_tokens=64, tools=[WEATHER], messages=[question])  # type: ignore[list-item]
    call = next(b for b in first.content if b.type == "tool_use")
    reply = client.messages.create(
        model="stub-tools", max_tokens=64, tools=[WEATHER],  # type: ignore[list-item]
        messages=[question, {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18°C and sunny"},
                                               {"type": "text", "text": "Short answer please."}]}])
    assert reply.content[0].text == "The tool said: 18°C and sunny"  # type: ignore[union-attr]
    assert reply.stop_reason == "end_turn"
    sent = stub.requests[-1]["messages"]
    assert sent[1] == {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "call_stub0000paris", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris","unit":"celsius"}'}}]}
    assert sent[2] == {"role": "tool", "tool_call_id": "call_stub0000paris", "content": "18°C and sunny"}
    assert sent[3] == {"role": "user", "content": "Short answer please."}


def test_sdk_server_tools_are_refused_clearly(client: anthropic.Anthropic, stub: UpstreamStub) -> None:
    before = len(stub.requests)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="stub-tools", max_tokens=64, messages=[{"role": "user", "content": "news?"}],
                               tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 1}])
    assert "web_search_20250305" in str(info.value) and "cannot be run by an OpenAI-protocol upstream" in str(info.value)
    assert len(stub.requests) == before  # never sent upstream


def test_raw_stream_is_well_formed(gateway: RunningGateway, client: anthropic.Anthropic) -> None:
    response = httpx.post(gateway.base_url + "/messages", headers={"x-api-key": client.api_key}, timeout=10, json={
        "model": "stub-tools-parallel", "max_tokens": 64, "stream": True, "tools": [WEATHER],
        "messages": [{"role": "user", "content": "Paris and Tokyo?"}]})
    events = []
    for block in response.content.split(b"\n\n"):
        if block.strip():
            name, data = block.split(b"\n", 1)
            events.append((name.removeprefix(b"event: ").decode(), orjson.loads(data.removeprefix(b"data: "))))
    message = _message(events)
    assert [b["input"]["city"] for b in message["content"]] == ["Paris", "Tokyo"]
    assert message["stop_reason"] == "tool_use"
