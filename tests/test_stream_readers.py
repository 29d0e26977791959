"""The SSE readers that collect each stream's text, finish reason and usage for its event.

They read all the complete events of a chunk at once (each payload parsed on
its own); these tests hold that to the same results as reading event by event,
and to the same verdict when the upstream sends something that is not JSON (a
broken stream). tests/test_protocol_properties.py checks them with Hypothesis.
"""

from __future__ import annotations

import random
import re
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from distillguard.gateway.responses import AnthropicStreamReader, OpenAIStreamReader
from distillguard.gateway.upstream_http import UpstreamProtocolError


def _openai_events(pieces: list[str]) -> list[bytes]:
    events = [orjson.dumps({"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}) for p in pieces]
    events.append(orjson.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                                "usage": {"prompt_tokens": 7, "completion_tokens": len(pieces)}}))
    return events


def _stream(payloads: list[bytes], line_end: bytes = b"\n") -> bytes:
    return b"".join(b"data: " + p + line_end + line_end for p in payloads) + b"data: [DONE]" + line_end + line_end


def test_any_split_into_chunks_gives_the_same_summary() -> None:
    pieces = [f"word{i} " for i in range(40)]
    body = _stream(_openai_events(pieces))
    rng = random.Random(5)
    for line_end in (b"\n", b"\r\n"):
        body = _stream(_openai_events(pieces), line_end)
        for _ in range(30):
            cuts = sorted(rng.sample(range(1, len(body)), rng.randint(0, 12)))
            reader = OpenAIStreamReader()
            relayed = b"".join(reader.feed(body[a:b]) for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)) + reader.flush()
            assert relayed == body  # relayed untouched
            assert reader.summary.text == "".join(pieces)
            assert reader.summary.finish_reason == "length"
            assert (reader.summary.prompt_tokens, reader.summary.completion_tokens) == (7, 40)


def test_a_malformed_event_breaks_the_stream() -> None:
    """A ``data:`` line that is not JSON is a broken stream (issue #12): the gateway ends it with an error and a 502 event."""
    events = _openai_events(["a", "b", "c"])
    events.insert(1, b'{"choices": [oops')
    reader = OpenAIStreamReader()
    with pytest.raises(UpstreamProtocolError, match="not JSON"):
        reader.feed(_stream(events))


def test_payloads_that_only_parse_when_joined_are_read_one_by_one() -> None:
    """``{"x":"`` and ``"}`` are not JSON, but joined with a comma they are: the fast path must not be fooled into reading them."""
    events = [b'{"choices":[{"index":0,"delta":{"content":"', b'"}}]}', *_openai_events(["ok"])]
    reader = OpenAIStreamReader()
    with pytest.raises(UpstreamProtocolError, match="not JSON"):
        reader.feed(_stream(events))
    assert reader.summary.text == ""


def test_payloads_that_join_into_as_many_values_are_still_refused() -> None:
    """Two broken lines can join into exactly two JSON values (``{"a":[{}`` + ``{}]},{…}``): counting the values
    does not catch that, so each ``data:`` payload must parse on its own (it used to pass as a valid stream)."""
    broken = [b'{"choices":[],"a":[{}', b'{}]},{"choices":[{"index":0,"delta":{"content":"smuggled"},"finish_reason":null}]}']
    for payloads in (broken, [*broken, *_openai_events(["ok"])]):
        reader = OpenAIStreamReader()
        with pytest.raises(UpstreamProtocolError, match="not JSON"):
            reader.feed(_stream(payloads))
        assert "smuggled" not in reader.summary.text


def test_anthropic_stream_summary() -> None:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 11}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm, let me see"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hello"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " there"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
    ]
    body = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)
    reader = AnthropicStreamReader()
    assert reader.feed(body) == body
    summary = reader.summary
    assert (summary.text, summary.reasoning_chars, summary.finish_reason) == ("Hello there", len("hmm, let me see"), "end_turn")
    assert (summary.prompt_tokens, summary.completion_tokens) == (11, 3)
    stripping = AnthropicStreamReader(strip_reasoning=True)
    out = stripping.feed(body) + stripping.flush()
    assert b"hmm, let me see" not in out and b"Hello" in out
    assert stripping.summary.stripped_chars == len("hmm, let me see")


_Q = b'{"choices":[{"index":0,"delta":{"content":"q"}}]}'
_R = b'{"choices":[{"index":0,"delta":{"content":"r"},"finish_reason":null}]}'


@given(st.lists(st.sampled_from([b"data:", b"data: ", b"data", b"event: x", b"\n", b"\r\n", b"\r", b" ", b":", b"{}", _Q, _R, _R,
                                 b'"data: q"', b"[DONE]", b"x"]), max_size=30).map(b"".join))
def test_data_lines_are_found_exactly_as_the_regular_expression_finds_them(lines: bytes) -> None:
    """The readers' ``bytes.find`` scan for ``data:`` lines replaced this regular expression; it must agree on any input:
    a ``data:`` inside a line is not a payload, a CR stays in the payload (JSON ignores it), only complete lines are read
    (a last line without its LF waits for the next chunk). The reader's text and its verdict are those of reading each
    payload the expression finds."""
    complete = lines[: lines.rfind(b"\n") + 1]
    expected: tuple[str, ...] | str = ()
    text = ""
    for payload in re.findall(rb"^data:(.*)$", complete, re.MULTILINE):
        payload = payload.strip()
        if payload in (b"", b"[DONE]"):
            continue
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError:
            expected = "error"
            break
        if type(value) is not dict:
            expected = "error"
            break
        text += "".join(choice["delta"]["content"] for choice in value.get("choices", ()))
    reader = OpenAIStreamReader()
    try:
        reader.feed(lines)
    except UpstreamProtocolError:
        assert expected == "error"
    else:
        assert expected != "error" and reader.summary.text == text
