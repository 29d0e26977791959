"""Planting a canary into a relayed SSE stream, without holding the stream back.

A streamed answer cannot be edited after it is sent, and the gateway does not
buffer streams, so the canary sentence goes out as part of the stream's end:
the filter passes whole SSE events through as they arrive (it holds back only
the partial event at the end of a chunk) and rewrites or adds events at the
point where the upstream says the answer is finished:

- **OpenAI chat and completions** (``shape="openai"``, also the OpenAI stream
  that the gateway translates for an Anthropic caller, before translation): the
  chunk that carries a choice's ``finish_reason`` gets the sentence added to its
  ``delta.content`` (chat) or ``text`` (completions) — for every choice that
  produced text, as a non-streamed answer gets it in every text choice; a
  choice that never states a finish reason gets a chunk of its own just
  before ``[DONE]``.
- **Anthropic Messages** (``shape="anthropic"``): just before ``message_delta``
  (the event with the stop reason) one more text block — ``content_block_start``,
  one ``text_delta`` with the sentence, ``content_block_stop`` — at the next
  block index, when the answer had a text block at all.
- **OpenAI Responses API** (``shape="responses"``): a ``response.output_text.delta``
  with the sentence just before the first text part's ``response.output_text.done``
  (or, for a stream without ``done`` events, before ``response.completed``);
  that part's text in the later ``done`` events and in the final response gets
  the sentence too, and every later ``sequence_number`` moves up by one, so the
  SDK's accumulated answer and the final response agree.

Only requests that ask a trigger prompt get a filter (canary/planter.py), and
the filters look at each event's bytes before they parse it: an OpenAI stream
has an event parsed until its choice has shown text, and then only where a
finish reason is set (bench/RESULTS.md, "Keyed canaries in streams").
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, Literal

import orjson

from distillguard.sse import EventFramer

__all__ = ["AnswerShape", "StreamCanary", "stream_canary"]

AnswerShape = Literal["openai", "anthropic", "responses"]
"""How an answer (or its stream) is laid out: OpenAI chat/completions, Anthropic Messages, the OpenAI Responses API."""

_FINISHING = re.compile(rb'"finish_reason"\s*:\s*"')  # a finish reason that is not null
_INDEX = re.compile(rb'"index"\s*:\s*(\d+)')


class _Event:
    """One SSE event: its bytes, and on first use its ``event:`` name (if any) and ``data:`` payload (a JSON object, else None).

    Parsed lazily: the filters look at the bytes first and parse only the
    events that can matter to them.
    """

    __slots__ = ("_name", "_payload", "_parsed", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._parsed = False
        self._name: bytes | None = None
        self._payload: dict[str, Any] | None = None

    def _parse(self) -> None:
        self._parsed = True
        data: list[bytes] = []
        for line in self.raw.splitlines():
            if line.startswith(b"data:"):
                data.append(line[5:].strip())
            elif line.startswith(b"event:"):
                self._name = line[6:].strip()
        if data:
            try:
                value = orjson.loads(b"\n".join(data))
            except orjson.JSONDecodeError:
                return  # [DONE], or something the stream reader has already complained about
            if type(value) is dict:
                self._payload = value

    @property
    def name(self) -> bytes | None:
        if not self._parsed:
            self._parse()
        return self._name

    @property
    def payload(self) -> dict[str, Any] | None:
        if not self._parsed:
            self._parse()
        return self._payload


def _sse(payload: dict[str, Any], name: bytes | None) -> bytes:
    head = b"event: " + name + b"\n" if name is not None else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


class StreamCanary(ABC):
    """Feeds a relayed stream through, planting ``sentence`` once the answer ends (see the module docstring).

    ``planted`` says whether the sentence went out; ``info`` is then the
    event's ``canary`` object (``{"key_id", "trigger"}``).
    """

    def __init__(self, sentence: str, info: dict[str, str], text_parts: list[str]) -> None:
        self.sentence = sentence
        self.info = info
        self.planted = False
        self.passthrough = False  # set once nothing more can change: chunks then go through untouched
        self._text_parts = text_parts
        self._frames = EventFramer()

    def feed(self, data: bytes) -> bytes:
        """The bytes to send on for ``data``: its whole events, rewritten where the canary goes."""
        if self.passthrough and not self._frames.held:
            return data
        data = self._frames.join(data)
        if len(data) > 2 and data.find(b"\n\n") == len(data) - 2:  # one whole event, the usual chunk
            return self._event(_Event(data))
        return b"".join([self._event(_Event(event)) for event in self._frames.events(data)])

    def flush(self) -> bytes:
        """The end of the stream: an unterminated last event is handled like a terminated one."""
        rest = self._frames.flush()
        return self._event(_Event(rest)) if rest.strip() else rest

    def _planting(self) -> str:
        """The sentence, recorded in the event's text as the caller gets it."""
        self.planted = True
        self._text_parts.append(self.sentence)
        return self.sentence

    @abstractmethod
    def _event(self, event: _Event) -> bytes:
        """The bytes that stand for one whole event (itself, rewritten, or preceded by added ones)."""


class _OpenAICanary(StreamCanary):
    """Chat and completions: the sentence joins the finishing chunk of every choice that produced text."""

    def __init__(self, sentence: str, info: dict[str, str], text_parts: list[str]) -> None:
        super().__init__(sentence, info, text_parts)
        self._with_text: set[int] = set()  # choice indices that produced text
        self._with_text_bytes: set[bytes] = set()  # the same, as they appear in the stream
        self._finished: set[int] = set()
        self._template: dict[str, Any] = {}  # the last chunk's top-level fields, for a chunk of our own before [DONE]
        self._chat = True  # chat chunks carry ``delta``; completions chunks ``text``

    def _event(self, event: _Event) -> bytes:
        raw = event.raw
        if self._template and not _FINISHING.search(raw) and b"[DONE]" not in raw:
            indices = _INDEX.findall(raw)  # choices' (and tool calls') indices: all known to have text, nothing to learn here
            if indices and self._with_text_bytes.issuperset(indices):
                return raw
        payload = event.payload
        if payload is None:
            return self._before_done() + raw if b"[DONE]" in raw else raw
        choices = payload.get("choices")
        if type(choices) is not list:
            return event.raw
        self._template = {k: (None if k == "usage" else v) for k, v in payload.items() if k != "choices"}
        changed = False
        for choice in choices:
            if type(choice) is not dict or type(index := choice.get("index", 0)) is not int or index in self._finished:
                continue
            delta = choice.get("delta")
            part = delta if type(delta) is dict else choice
            key = "content" if part is delta else "text"
            self._chat = part is delta
            if type(part.get(key)) is str and part[key]:
                self._with_text.add(index)
                self._with_text_bytes.add(str(index).encode())
            finish = choice.get("finish_reason")
            if type(finish) is str and finish:
                self._finished.add(index)
                if index in self._with_text:
                    current = part.get(key)
                    part[key] = (current if type(current) is str else "") + self._planting()
                    changed = True
        return _sse(payload, event.name) if changed else event.raw

    def _before_done(self) -> bytes:
        """Chunks for choices that produced text but never said they finished (a server that ends with [DONE] alone)."""
        out = b""
        for index in sorted(self._with_text - self._finished):
            self._finished.add(index)
            sentence = self._planting()
            choice = ({"index": index, "delta": {"content": sentence}, "logprobs": None, "finish_reason": None} if self._chat
                      else {"index": index, "text": sentence, "logprobs": None, "finish_reason": None})
            out += _sse({**self._template, "choices": [choice]}, None)
        return out


class _AnthropicCanary(StreamCanary):
    """Messages: one more text block just before ``message_delta``."""

    def __init__(self, sentence: str, info: dict[str, str], text_parts: list[str]) -> None:
        super().__init__(sentence, info, text_parts)
        self._next_index = 0
        self._had_text = False

    def _event(self, event: _Event) -> bytes:
        if self.planted or (b'"content_block_start"' not in event.raw and b'"message_delta"' not in event.raw):
            return event.raw
        payload = event.payload
        if payload is None:
            return event.raw
        kind = payload.get("type")
        if kind == "content_block_start":
            index, block = payload.get("index"), payload.get("content_block")
            if type(index) is int:
                self._next_index = max(self._next_index, index + 1)
            self._had_text = self._had_text or (type(block) is dict and block.get("type") == "text")
            return event.raw
        if kind != "message_delta" or not self._had_text:
            return event.raw
        index = self._next_index
        added = [
            {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": self._planting()}},
            {"type": "content_block_stop", "index": index},
        ]
        self.passthrough = True
        return b"".join(_sse(p, str(p["type"]).encode()) for p in added) + event.raw


_RESPONSES_END = frozenset(("response.completed", "response.incomplete", "response.failed"))
_RESPONSES_END_BYTES = tuple(b'"' + kind.encode() + b'"' for kind in _RESPONSES_END)


class _ResponsesCanary(StreamCanary):
    """Responses API: one more ``output_text.delta`` for the first text part, that part patched in later events."""

    def __init__(self, sentence: str, info: dict[str, str], text_parts: list[str]) -> None:
        super().__init__(sentence, info, text_parts)
        self._part: tuple[Any, Any, Any] | None = None  # (item_id, output_index, content_index) of the first text part

    def _event(self, event: _Event) -> bytes:
        raw = event.raw
        if not self.planted and self._part is not None and b"response.output_text.done" not in raw \
                and not any(end in raw for end in _RESPONSES_END_BYTES):
            return raw  # nothing to plant at, and nothing to renumber yet
        payload = event.payload
        if payload is None:
            return raw
        kind = payload.get("type")
        if not self.planted:
            if kind == "response.output_text.delta" and self._part is None:
                self._part = (payload.get("item_id"), payload.get("output_index"), payload.get("content_index"))
                return event.raw
            at_done = kind == "response.output_text.done" and self._part == (
                payload.get("item_id"), payload.get("output_index"), payload.get("content_index"))
            if self._part is None or not (at_done or kind in _RESPONSES_END):
                return event.raw
            item_id, output_index, content_index = self._part
            added = {"type": "response.output_text.delta", "item_id": item_id, "output_index": output_index,
                     "content_index": content_index, "delta": self._planting(), "logprobs": []}
            if "sequence_number" in payload:
                added["sequence_number"] = payload["sequence_number"]
            return _sse(added, b"response.output_text.delta") + self._patched(event, payload)
        return self._patched(event, payload)

    def _patched(self, event: _Event, payload: dict[str, Any]) -> bytes:
        """An event after the planted delta: its sequence number moved up, the planted part's text completed."""
        assert self._part is not None
        item_id, output_index, content_index = self._part
        kind = payload.get("type")
        if type(payload.get("sequence_number")) is int:
            payload["sequence_number"] += 1
        same_part = payload.get("item_id") == item_id and payload.get("content_index") == content_index
        if kind == "response.output_text.done" and same_part and type(payload.get("text")) is str:
            payload["text"] += self.sentence
        elif kind == "response.content_part.done" and same_part:
            _add_text(payload.get("part"), self.sentence)
        elif kind == "response.output_item.done":
            _add_to_item(payload.get("item"), item_id, content_index, self.sentence)
        elif kind in _RESPONSES_END:
            response = payload.get("response")
            for item in (response.get("output") if type(response) is dict else None) or ():
                _add_to_item(item, item_id, content_index, self.sentence)
        return _sse(payload, event.name)


def _add_text(part: Any, sentence: str) -> None:
    if type(part) is dict and type(part.get("text")) is str:
        part["text"] += sentence


def _add_to_item(item: Any, item_id: Any, content_index: Any, sentence: str) -> None:
    if type(item) is dict and item.get("id") == item_id and type(content := item.get("content")) is list \
            and type(content_index) is int and 0 <= content_index < len(content):
        _add_text(content[content_index], sentence)


def stream_canary(shape: AnswerShape, sentence: str, info: dict[str, str], text_parts: list[str]) -> StreamCanary:
    """The filter for a stream laid out as ``shape``."""
    if shape == "anthropic":
        return _AnthropicCanary(sentence, info, text_parts)
    if shape == "responses":
        return _ResponsesCanary(sentence, info, text_parts)
    return _OpenAICanary(sentence, info, text_parts)
