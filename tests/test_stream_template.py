"""A stream's text deltas read through the learnt bytes around their text (gateway/stream_template.py).

The reader learns, from the first text delta it parses whole, the bytes before
and after that delta's text literal, and afterwards decodes only the literal of
any event with exactly those bytes around it. These tests hold a reader that
learns to the same summary and the same errors as one that never does, on any
stream and any split into chunks, including texts full of quotes, backslashes
and braces, duplicate keys, odd whitespace, and events that look like the learnt
ones but are not.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.gateway.responses import OpenAIStreamReader, _delta_text
from distillguard.gateway.stream_template import learn, text_between
from distillguard.gateway.upstream_http import UpstreamProtocolError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from fast_upstream import STREAM  # noqa: E402  (the benchmark's canned stream: what the fast path is for)


def _summary(body_chunks: list[bytes], *, learning: bool) -> tuple[Any, ...]:
    reader = OpenAIStreamReader()
    if not learning:
        reader._learning = False
    try:
        relayed = b"".join(reader.feed(chunk) for chunk in body_chunks) + reader.flush()
    except UpstreamProtocolError as exc:
        return ("error", str(exc))
    s = reader.summary
    return (relayed, s.text_parts, s.finish_reason, s.prompt_tokens, s.completion_tokens, s.reasoning_chars, s.upstream_error,
            reader.ended)


_TEXT = st.lists(st.sampled_from(['a', ' ', '"', '\\', '}', ']', ',', ':', '{', 'é', '\n', '\u2028', '\x00', '"content"']),
                 max_size=12).map("".join)


@st.composite
def _event(draw: st.DrawFn) -> bytes:
    """One ``data:`` payload: mostly ordinary text deltas, and the shapes that must not be taken for one."""
    text = draw(_TEXT)
    kind = draw(st.sampled_from(["delta", "delta", "delta", "delta", "role", "finish", "usage", "dup", "spaced", "extra", "number",
                                 "two", "escaped", "broken", "reasoning"]))
    head = b'{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
    literal = orjson.dumps(text)
    if kind == "delta":
        return head + b'{"content":' + literal + b'},"finish_reason":null}]}'
    if kind == "role":
        return head + b'{"role":"assistant","content":' + literal + b'},"finish_reason":null}]}'
    if kind == "finish":
        return head + b'{},"finish_reason":"stop"}]}'
    if kind == "usage":
        return b'{"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}'
    if kind == "dup":  # the last duplicate wins in orjson: a split at the first one must be refused
        return head + b'{"content":"x","content":' + literal + b'},"finish_reason":null}]}'
    if kind == "spaced":
        return head + b'{"content" :  ' + literal + b' },"finish_reason":null}]}'
    if kind == "extra":  # a text delta with one more field after it: the learnt suffix must not match
        return head + b'{"content":' + literal + b',"refusal":null},"finish_reason":null}]}'
    if kind == "number":
        return head + b'{"content":5},"finish_reason":null}]}'
    if kind == "two":  # a literal followed by what looks like the suffix, then more: not one literal
        return head + b'{"content":' + literal + b'},"finish_reason":null}]}' + b',"x":' + literal
    if kind == "escaped":  # an escaped quote right before what looks like the suffix
        return head + b'{"content":"ab\\"},"finish_reason":null}]}'
    if kind == "broken":
        return head + b'{"content":' + literal
    return head + b'{"reasoning_content":' + literal + b'},"finish_reason":null}]}'


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_event(), min_size=1, max_size=12), cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=6),
       space=st.booleans(), done=st.booleans())
def test_learning_reads_every_stream_exactly_as_parsing_every_event(events: list[bytes], cuts: list[int], space: bool,
                                                                    done: bool) -> None:
    body = b"".join(b"data:" + (b" " if space else b"") + e + b"\n\n" for e in events) + (b"data: [DONE]\n\n" if done else b"")
    points = sorted({c for c in cuts if c < len(body)})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    assert _summary(chunks, learning=True) == _summary(chunks, learning=False)


def test_the_benchmark_stream_is_read_through_its_template() -> None:
    reader = OpenAIStreamReader()
    assert reader.feed(STREAM) == STREAM
    assert reader._template is not None
    plain = OpenAIStreamReader()
    plain._learning = False
    plain.feed(STREAM)
    assert reader.summary.text_parts == plain.summary.text_parts and len(reader.summary.text_parts) == 8
    assert reader.summary.finish_reason == "stop" and reader.ended


def test_a_split_at_a_duplicate_key_is_refused_and_the_real_one_taken() -> None:
    raw = b'{"choices":[{"delta":{"content":"x","content":"y"}}]}'
    prefix, suffix = learn(raw, b"content", _delta_text) or (b"", b"")
    assert prefix == b'{"choices":[{"delta":{"content":"x","content":' and suffix == b"}}]}"
    assert text_between(b'{"choices":[{"delta":{"content":"x","content":"z\\"q"}}]}', prefix, suffix) == 'z"q'


@pytest.mark.parametrize("other", [
    b'{"choices":[{"delta":{"content":"a"},"finish_reason":null}]}',  # another prefix
    b'{"choices":[{"delta":{"content":"a\\"}}]}',  # unterminated literal
    b'{"choices":[{"delta":{"content":"a","b":"c"}}]}',  # two literals between the learnt bytes
    b'{"choices":[{"delta":{"content":5}}]}',  # not a string
    b'{"choices":[{"delta":{"content":""}}]',  # suffix cut short
])
def test_anything_but_one_literal_between_the_learnt_bytes_is_parsed_whole(other: bytes) -> None:
    raw = b'{"choices":[{"delta":{"content":"hello"}}]}'
    template = learn(raw, b"content", _delta_text)
    assert template == (b'{"choices":[{"delta":{"content":', b"}}]}")
    assert text_between(other, *template) is None


def test_a_chunk_that_is_no_text_delta_teaches_nothing() -> None:
    for raw in (b'{"choices":[{"delta":{"role":"assistant","content":""}}]}', b'{"choices":[],"usage":{"prompt_tokens":1}}',
                b'{"choices":[{"delta":{"content":"a"},"finish_reason":"stop"}]}'):
        assert learn(raw, b"content", _delta_text) is None
