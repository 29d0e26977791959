"""Reading upstream responses: what the event log needs, and reasoning stripping.

Streams are relayed as they arrive; these readers look at each chunk on its way
through (one ``orjson.loads`` per SSE event, or of only its text once a text
delta's shape is learnt: gateway/stream_template.py) to collect the completion text,
the reasoning length, the finish reason and the usage for the event and the
token limits. With ``strip_reasoning`` (a policy "degrade" decision) they also
rewrite the chunk so reasoning never reaches the client; with
``summarize_reasoning`` as well, the reasoning is replaced by
:func:`reasoning_summary` instead of being removed: streamed reasoning deltas
are held back and one delta carrying the summary is sent in their place, just
before the first thing that follows the reasoning.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any

import orjson

from distillguard.gateway.shapes import (
    check_tool_calls,
    expect_dict,
    expect_list,
    opt_count,
    opt_dict,
    opt_str,
)
from distillguard.gateway.stream_template import learn, text_between
from distillguard.gateway.upstream_http import UpstreamProtocolError

__all__ = [
    "SUMMARY_MAX_CHARS",
    "AnthropicStreamReader",
    "OpenAIStreamReader",
    "ResponseSummary",
    "ResponsesStreamReader",
    "reasoning_summary",
    "summarise_anthropic",
    "summarise_openai",
    "summarise_responses",
]

SUMMARY_MAX_CHARS = 300
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
_ELLIPSIS = "\u2026"


def reasoning_summary(reasoning: str, limit: int = SUMMARY_MAX_CHARS) -> str:
    """A short extractive stand-in for ``reasoning``, for a degraded account (``detection.degrade_reasoning: summarize``).

    Why: the person behind the account still sees the gist (how the model
    started) and the conclusion (how it ended), but a harvester gets no
    step-by-step trace to train a student on: every step in between is left
    out, and what is shown is capped. It is deterministic and costs a regex
    split, no model call, so the same reasoning always gives the same summary.

    Exactly::

        [reasoning summarised: N characters withheld] FIRST … LAST

    - ``N`` is ``len(reasoning)`` (all of it, as the upstream produced it),
      with thousands separators (``1,234``).
    - Sentences: ``reasoning`` is split after ``.``, ``!`` or ``?`` followed by
      whitespace, and at line breaks; whitespace inside each is collapsed to
      single spaces; empty ones are dropped.
    - ``FIRST`` is the first sentence and ``LAST`` the last, joined by
      ``" … "``. A single sentence is shown alone when it fits; otherwise its
      beginning and its end stand in for FIRST and LAST. With no sentence at
      all, the header is the whole summary.
    - The whole summary is at most ``limit`` characters: FIRST and LAST get
      ``(limit - len(header) - 4) // 2`` characters each. A longer FIRST keeps
      its beginning and a longer LAST its end (the conclusion), cut at a space
      when there is one in the half next to the cut; the ``…`` between them
      stands for everything left out.
    """
    header = f"[reasoning summarised: {len(reasoning):,} characters withheld]"
    sentences = [" ".join(part.split()) for part in _SENTENCE_BREAK.split(reasoning)]
    sentences = [sentence for sentence in sentences if sentence]
    if not sentences:
        return header[:limit]
    if len(sentences) == 1 and len(header) + 1 + len(sentences[0]) <= limit:
        return f"{header} {sentences[0]}"
    each = (limit - len(header) - len(f" {_ELLIPSIS} ") - 1) // 2
    if each < 2:
        return header[:limit]
    first, last = sentences[0], sentences[-1]
    if len(first) > each:
        first = first[:each]
        space = first.rfind(" ", each // 2)
        first = (first[:space] if space > 0 else first).rstrip()
    if len(last) > each:
        last = last[-each:]
        space = last.find(" ", 0, each // 2)
        last = (last[space:] if space >= 0 else last).lstrip()
    return f"{header} {first} {_ELLIPSIS} {last}"


class ResponseSummary:
    __slots__ = ("text_parts", "reasoning_chars", "finish_reason", "prompt_tokens", "completion_tokens", "stripped_chars",
                 "upstream_error")

    def __init__(self) -> None:
        self.text_parts: list[str] = []
        self.reasoning_chars = 0
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.stripped_chars = 0
        self.upstream_error: str | None = None  # an error the upstream reported inside a stream (its type)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def total_tokens(self) -> int:
        if self.prompt_tokens is None and self.completion_tokens is None:
            return max(1, (len(self.text) + self.reasoning_chars) // 4)
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


def summarise_openai(
    body: dict[str, Any], summary: ResponseSummary, *, strip_reasoning: bool = False, summarize_reasoning: bool = False
) -> bool:
    """Fill ``summary`` from a non-streamed OpenAI response; returns True when ``body`` was modified.

    With ``strip_reasoning`` each message's ``reasoning_content`` / ``reasoning``
    is removed or, with ``summarize_reasoning`` too, replaced by its :func:`reasoning_summary`.
    """
    changed = False
    choices = body.get("choices")
    for i, choice in enumerate(expect_list(choices, "choices") if choices is not None else ()):
        if type(choice) is not dict:
            raise UpstreamProtocolError(f"choices.{i}", "an object", choice)
        message = choice.get("message")
        if message is not None:
            if type(message) is not dict:
                raise UpstreamProtocolError(f"choices.{i}.message", "an object", message)
            content, reasoning = _content_and_reasoning(message, i, "message")
            if content:
                summary.text_parts.append(content)
            if reasoning:
                summary.reasoning_chars += len(reasoning)
                if strip_reasoning:
                    summary.stripped_chars += len(reasoning)
                    if summarize_reasoning:
                        short = reasoning_summary(reasoning)
                        for key in ("reasoning_content", "reasoning"):
                            if message.get(key):
                                message[key] = short
                    else:
                        message.pop("reasoning_content", None)
                        message.pop("reasoning", None)
                    changed = True
        else:
            text = choice.get("text")
            if text is not None:
                if type(text) is not str:
                    raise UpstreamProtocolError(f"choices.{i}.text", "a string", text)
                summary.text_parts.append(text)
        finish = choice.get("finish_reason")
        if finish is not None and type(finish) is not str:
            raise UpstreamProtocolError(f"choices.{i}.finish_reason", "a string", finish)
        summary.finish_reason = summary.finish_reason or finish
    usage = opt_dict(body.get("usage"), "usage") or {}
    summary.prompt_tokens = opt_count(usage.get("prompt_tokens", summary.prompt_tokens), "usage.prompt_tokens")
    summary.completion_tokens = opt_count(usage.get("completion_tokens", summary.completion_tokens), "usage.completion_tokens")
    return changed


def _content_and_reasoning(part: dict[str, Any], i: int, name: str) -> tuple[str | None, str | None]:
    """An OpenAI ``message`` or stream ``delta``: its text and reasoning, with its ``tool_calls`` checked.

    The field path for an error (``choices.0.delta.content``) is only built when a check fails.
    """
    text = part.get("content")
    if text is not None and type(text) is not str:
        raise UpstreamProtocolError(f"choices.{i}.{name}.content", "a string", text)
    reasoning = part.get("reasoning_content")
    if reasoning is not None and type(reasoning) is not str:
        raise UpstreamProtocolError(f"choices.{i}.{name}.reasoning_content", "a string", reasoning)
    other = part.get("reasoning")
    if other is not None and type(other) is not str:
        raise UpstreamProtocolError(f"choices.{i}.{name}.reasoning", "a string", other)
    calls = part.get("tool_calls")
    if calls is not None:
        check_tool_calls(calls, f"choices.{i}.{name}.tool_calls")
    return text, reasoning or other


def summarise_anthropic(
    body: dict[str, Any], summary: ResponseSummary, *, strip_reasoning: bool = False, summarize_reasoning: bool = False
) -> bool:
    """Fill ``summary`` from a non-streamed Anthropic message; returns True when ``body`` was modified.

    With ``strip_reasoning`` ``thinking`` blocks are removed or, with
    ``summarize_reasoning`` too, keep their place with their ``thinking``
    replaced by its :func:`reasoning_summary` and an empty ``signature`` (so the
    block cannot be sent back for verification, as with a stripped one).
    """
    changed = False
    kept = []
    content = body.get("content")
    for i, block in enumerate(expect_list(content, "content") if content is not None else ()):
        kind = opt_str(expect_dict(block, f"content.{i}").get("type"), f"content.{i}.type")
        if kind == "text":
            summary.text_parts.append(opt_str(block.get("text"), f"content.{i}.text") or "")
        elif kind == "thinking":
            thinking = opt_str(block.get("thinking"), f"content.{i}.thinking") or ""
            summary.reasoning_chars += len(thinking)
            if strip_reasoning:
                summary.stripped_chars += len(thinking)
                changed = True
                if not summarize_reasoning:
                    continue
                block = {**block, "thinking": reasoning_summary(thinking) if thinking else "", "signature": ""}
        kept.append(block)
    if changed:
        body["content"] = kept
    summary.finish_reason = opt_str(body.get("stop_reason"), "stop_reason")
    usage = opt_dict(body.get("usage"), "usage") or {}
    summary.prompt_tokens = opt_count(usage.get("input_tokens"), "usage.input_tokens")
    summary.completion_tokens = opt_count(usage.get("output_tokens"), "usage.output_tokens")
    return changed


class _SSEReader(ABC):
    END: str  # what a whole stream ends with, for the error when one is cut short

    def __init__(self, *, strip_reasoning: bool = False, summarize_reasoning: bool = False) -> None:
        self.summary = ResponseSummary()
        self.strip_reasoning = strip_reasoning or summarize_reasoning
        self.summarize_reasoning = summarize_reasoning
        self._buffer = b""
        self._done = False  # the stream's own end marker ([DONE]) was seen
        self._template: tuple[bytes, bytes] | None = None  # the bytes around a text delta's literal on its line (stream_template.py)
        self._learning = True  # one try per stream: a stream whose first text delta has no usable split gets no other
        self.usage_seen = False  # an OpenAI event with a usage object was read (stream_usage.py skips its scan until then)
        if summarize_reasoning:  # only a degraded account's stream pays for the held-back state
            self._event_lines: list[bytes] = []  # the lines of the event being read
            self._start_summarising()

    def feed(self, chunk: bytes) -> bytes:
        """Inspect ``chunk``; return the bytes to send on (the chunk itself unless stripping)."""
        data = self._buffer + chunk if self._buffer else chunk
        last_newline = data.rfind(b"\n")
        if last_newline < 0:
            self._buffer = data
            return chunk if not self.strip_reasoning else b""
        if last_newline == len(data) - 1:  # the usual chunk, whole lines only: no copies
            complete, self._buffer = data, b""
        else:
            complete, self._buffer = data[: last_newline + 1], data[last_newline + 1 :]
        if not self.strip_reasoning:
            self._read_all(complete)
            return chunk
        if self.summarize_reasoning:
            return self._summarise_lines(complete.split(b"\n")[:-1])
        out: list[bytes] = []
        for line in complete.split(b"\n")[:-1]:
            if line.startswith(b"data:"):
                rewritten = self._on_data(line[5:].strip(), rewrite=True)
                out.append(line if rewritten is None else b"data: " + rewritten)
            else:
                out.append(line)
        return b"\n".join(out) + b"\n"

    @property
    def ended(self) -> bool:
        """Whether the stream said it was over: a finish (stop) reason, ``[DONE]``, or an error of the upstream's own.

        A stream whose body ends without any of them was cut short (a crashed
        worker behind a proxy that still closed the response properly); the
        gateway ends it with an error rather than let it pass for a whole answer.
        """
        summary = self.summary
        return self._done or summary.finish_reason is not None or summary.upstream_error is not None

    def flush(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        if not self.strip_reasoning:
            return b""
        if self.summarize_reasoning:
            return self._finish_summarising(rest)
        return rest

    # -- summarising: whole SSE events, since one may have to be preceded by another ----------------
    def _summarise_lines(self, lines: list[bytes]) -> bytes:
        """Rewrite the complete lines of a stream; an event is handled once its closing blank line arrives."""
        out: list[bytes] = []
        for line in lines:
            if line.strip():
                self._event_lines.append(line)
            else:
                event, self._event_lines = self._event_lines, []
                out.append(self._summarise_event(event, line + b"\n"))
        return b"".join(out)

    def _finish_summarising(self, rest: bytes) -> bytes:
        """The end of the stream: an unterminated last event is handled as if terminated, then pending summaries go out."""
        lines = [line for line in rest.split(b"\n") if line.strip()]
        event, self._event_lines = self._event_lines + lines, []
        out = self._summarise_event(event, b"\n") if event else b""
        return out + b"".join(self._sse(payload) for payload in self._pending_summaries())

    def _summarise_event(self, lines: list[bytes], end: bytes) -> bytes:
        """One whole SSE event (its lines and the blank line ``end``): sent as it came, or rewritten."""
        data = [line[5:].strip() for line in lines if line.startswith(b"data:")]
        original = b"".join(line + b"\n" for line in lines) + end
        if not data:
            return original
        raw = b"\n".join(data)
        if raw == b"[DONE]":
            self._done = True
            return b"".join(self._sse(payload) for payload in self._pending_summaries()) + original
        payload = _payload(raw)
        self._read(payload, rewrite=False)
        replacement = self._summarise(payload)
        if replacement is None:
            return original
        return b"".join(self._sse(p) for p in replacement)

    @abstractmethod
    def _start_summarising(self) -> None:
        """Set up the state that holds reasoning back."""

    @abstractmethod
    def _summarise(self, payload: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Hold back this event's reasoning; return the events to send in its place (None: send it unchanged)."""

    @abstractmethod
    def _pending_summaries(self) -> list[dict[str, Any]]:
        """Summary events for reasoning still held back (the stream ends); forgets it."""

    @staticmethod
    @abstractmethod
    def _sse(payload: dict[str, Any]) -> bytes:
        """``payload`` as one SSE event in this protocol."""

    def _read_all(self, lines: bytes) -> None:
        """Read the ``data:`` payloads of complete lines (a chunk often holds several events), each on its own, in order.

        A payload is what follows ``data:`` at the start of a line, up to its
        LF (JSON ignores the space after the colon and a CR before the LF):
        what the regular expression ``^data:(.*)$`` finds, by one ``split``
        (compiled, about half the time of the ``bytes.find`` scan it replaced,
        which took a quarter of that expression's: bench/RESULTS.md, "SSE at
        c=64, stop 16"). Each payload must be one JSON value by itself (two
        broken lines can join into one valid value, so they are never parsed
        joined). A text delta shaped like the one learnt earlier in the
        stream has only its text decoded (gateway/stream_template.py); an
        object is parsed whole; anything else (``[DONE]``, an empty payload, a
        payload that is not a JSON object) goes through :meth:`_on_data`, with
        its own error.
        """
        template = self._template
        for line in lines.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            if template is not None:
                text = text_between(line, template[0], template[1])
                if text is not None:
                    if text:
                        self.summary.text_parts.append(text)
                    continue
            self._read_payload(line[5:])
            template = self._template

    def _read_payload(self, payload: bytes) -> None:
        if not (payload.startswith(b"{") or payload.startswith(b" {")):  # [DONE], nothing, or no object: one by one
            self._on_data(payload.strip(), rewrite=False)
            return
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("data", "a JSON object", got="text that is not JSON") from None
        if type(value) is not dict:  # (cannot be: it began with a brace)
            raise UpstreamProtocolError("data", "a JSON object", value)
        self._read(value, rewrite=False)
        if self._learning and self._learnable(value) is not None:
            self._learning = False
            learnt = self._learn(payload)
            if learnt is not None:  # matched against whole lines
                self._template = (b"data:" + learnt[0], learnt[1])

    def _learnable(self, payload: dict[str, Any]) -> str | None:
        """The text of an event whose other events differ only in it (stream_template.py); None: not such an event."""
        return None

    def _learn(self, raw: bytes) -> tuple[bytes, bytes] | None:
        return None

    def _on_data(self, data: bytes, *, rewrite: bool) -> bytes | None:
        """Read one SSE ``data:`` payload; return a rewritten payload, or None to keep it."""
        if not data or data == b"[DONE]":
            self._done = self._done or data == b"[DONE]"
            return None
        payload = _payload(data)
        return orjson.dumps(payload) if self._read(payload, rewrite=rewrite) else None

    @abstractmethod
    def _read(self, payload: dict[str, Any], *, rewrite: bool) -> bool:
        """Take what the event log needs from one event; with ``rewrite``, strip reasoning in place. True if changed.

        Raises :class:`UpstreamProtocolError` for a field of the wrong type: it
        checks every field the reader (and the summariser and the translator
        after it) will use.
        """


def _payload(data: bytes) -> dict[str, Any]:
    """One ``data:`` payload as an object; anything else is a broken stream (every known server sends one JSON object per line)."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError("data", "a JSON object", got="text that is not JSON") from None
    if type(payload) is not dict:
        raise UpstreamProtocolError("data", "a JSON object", payload)
    return payload


class OpenAIStreamReader(_SSEReader):
    """Reads (and, for a degraded account, rewrites) an OpenAI chat or completions stream.

    Summarising: a choice's ``delta.reasoning_content`` / ``delta.reasoning``
    pieces are held back (a chunk left with nothing else is not sent); before
    that choice's first content, tool call or finish reason — or ``[DONE]``, or
    the end of the stream — one chunk with the summary in the same key goes
    out, with the ``id``, ``model`` and other top-level fields of the chunk
    around it.
    """

    END = "a finish reason or [DONE] before its end"

    def _start_summarising(self) -> None:
        self._held: dict[Any, tuple[str, list[str]]] = {}  # choice index → (reasoning key, pieces held back)
        self._last: dict[str, Any] = {}  # the last chunk seen: the summary's id, model, … at the end of the stream

    @staticmethod
    def _sse(payload: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def _learnable(self, payload: dict[str, Any]) -> str | None:
        return _delta_text(payload)

    def _learn(self, raw: bytes) -> tuple[bytes, bytes] | None:
        return learn(raw, b"content", _delta_text)

    def _summary_chunk(self, template: dict[str, Any], index: Any) -> dict[str, Any]:
        key, pieces = self._held.pop(index)
        chunk = {k: v for k, v in template.items() if k not in ("choices", "usage")}
        chunk["choices"] = [{"index": index, "delta": {key: reasoning_summary("".join(pieces))}, "logprobs": None, "finish_reason": None}]
        return chunk

    def _summarise(self, payload: dict[str, Any]) -> list[dict[str, Any]] | None:
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices:
            return None
        self._last = payload
        before: list[dict[str, Any]] = []
        held_back = False
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            if type(index) is not int:  # held-back reasoning is keyed by it
                raise UpstreamProtocolError("choices.index", "an integer", index)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                key = "reasoning_content" if delta.get("reasoning_content") else "reasoning"
                reasoning = delta.get(key)
                if "reasoning_content" in delta or "reasoning" in delta:
                    delta.pop("reasoning_content", None)
                    delta.pop("reasoning", None)
                    if choice.get("logprobs"):  # they would spell the reasoning out token by token
                        choice["logprobs"] = None
                    held_back = True
                if reasoning:
                    self.summary.stripped_chars += len(reasoning)
                    self._held.setdefault(index, (key, []))[1].append(str(reasoning))
                follows = delta.get("content") or delta.get("tool_calls") or delta.get("function_call")
            else:
                follows = choice.get("text")
            if (follows or choice.get("finish_reason")) and index in self._held:
                before.append(self._summary_chunk(payload, index))
        if not held_back:
            return before + [payload] if before else None
        if payload.get("usage") or any(_carries_something(c) for c in choices if isinstance(c, dict)):
            return before + [payload]
        return before  # nothing but reasoning: the chunk itself is not sent

    def _pending_summaries(self) -> list[dict[str, Any]]:
        return [self._summary_chunk(self._last, index) for index in list(self._held)]

    def _read(self, payload: dict[str, Any], *, rewrite: bool) -> bool:
        summary = self.summary
        changed = False
        choices = payload.get("choices")
        if choices is None:
            choices = ()
            error = payload.get("error")
            if error is not None:  # vLLM and others report a failure mid-stream as a chunk with an error object
                summary.upstream_error = _error_type(error)
        elif type(choices) is not list:
            raise UpstreamProtocolError("choices", "a list", choices)
        for i, choice in enumerate(choices):
            if type(choice) is not dict:
                raise UpstreamProtocolError(f"choices.{i}", "an object", choice)
            delta = choice.get("delta")
            if delta is not None:
                if type(delta) is not dict:
                    raise UpstreamProtocolError(f"choices.{i}.delta", "an object", delta)
                text = delta.get("content")
                if type(text) is str and len(delta) == 1:  # most chunks: {"content": "…"}, nothing else to check
                    reasoning = None
                else:
                    text, reasoning = _content_and_reasoning(delta, i, "delta")
                if text:
                    summary.text_parts.append(text)
                if reasoning:
                    summary.reasoning_chars += len(reasoning)
                    if rewrite:
                        summary.stripped_chars += len(reasoning)
                        delta.pop("reasoning_content", None)
                        delta.pop("reasoning", None)
                        changed = True
            else:
                text = choice.get("text")
                if text is not None:
                    if type(text) is not str:
                        raise UpstreamProtocolError(f"choices.{i}.text", "a string", text)
                    if text:
                        summary.text_parts.append(text)
            finish = choice.get("finish_reason")
            if finish is not None:
                if type(finish) is not str:
                    raise UpstreamProtocolError(f"choices.{i}.finish_reason", "a string", finish)
                if finish:
                    summary.finish_reason = finish
        usage = payload.get("usage")
        if usage is not None:
            if type(usage) is not dict:
                raise UpstreamProtocolError("usage", "an object", usage)
            self.usage_seen = True
            if usage:
                summary.prompt_tokens = opt_count(usage.get("prompt_tokens"), "usage.prompt_tokens")
                summary.completion_tokens = opt_count(usage.get("completion_tokens"), "usage.completion_tokens")
        return changed


def _delta_text(payload: dict[str, Any]) -> str | None:
    """The text of an OpenAI chunk that is one choice's text and nothing else the reader looks at (no finish reason,
    no usage, a delta of only ``content``); None for any other chunk. Reading such a chunk only appends its text."""
    choices = payload.get("choices")
    if type(choices) is not list or len(choices) != 1 or payload.get("usage") is not None:
        return None
    choice = choices[0]
    if type(choice) is not dict or choice.get("finish_reason") is not None:
        return None
    delta = choice.get("delta")
    if type(delta) is not dict or len(delta) != 1:
        return None
    text = delta.get("content")
    return text if type(text) is str else None


def _carries_something(choice: dict[str, Any]) -> bool:
    """Whether a streamed choice still says anything once its reasoning is taken out."""
    delta = choice.get("delta")
    if choice.get("finish_reason"):
        return True
    return not isinstance(delta, dict) or any(value not in (None, "", [], {}) for value in delta.values())


class AnthropicStreamReader(_SSEReader):
    """Reads (and, for a degraded account, rewrites) an Anthropic Messages stream.

    Summarising: a ``thinking`` block's ``thinking_delta`` events are held back;
    just before its ``signature_delta`` (sent with an empty signature) or, when
    there is none, its ``content_block_stop``, one ``thinking_delta`` with the
    summary goes out for the same block index. Blocks keep their indices.
    """

    END = "a stop_reason before its end"

    def _start_summarising(self) -> None:
        self._held: dict[Any, list[str]] = {}  # block index → thinking held back

    @staticmethod
    def _sse(payload: dict[str, Any]) -> bytes:
        return b"event: " + str(payload.get("type", "")).encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _summary_delta(self, index: Any) -> dict[str, Any]:
        thinking = "".join(self._held.pop(index))
        return {"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": reasoning_summary(thinking)}}

    def _summarise(self, payload: dict[str, Any]) -> list[dict[str, Any]] | None:
        kind = payload.get("type")
        index = payload.get("index")
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "thinking_delta":
                thinking = str(delta.get("thinking") or "")
                if thinking:
                    self.summary.stripped_chars += len(thinking)
                    self._held.setdefault(index, []).append(thinking)
                return []
            if delta.get("type") == "signature_delta":
                delta["signature"] = ""
                return [self._summary_delta(index), payload] if index in self._held else [payload]
            return None
        if kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") != "thinking" or not (block.get("thinking") or block.get("signature")):
                return None
            if block.get("thinking"):
                self.summary.stripped_chars += len(block["thinking"])
                self._held.setdefault(index, []).append(str(block["thinking"]))
            block["thinking"], block["signature"] = "", ""
            return [payload]
        if kind == "content_block_stop":
            return [self._summary_delta(index), payload] if index in self._held else None
        if kind in ("message_delta", "message_stop", "error") and self._held:  # a block that never stopped
            return [*self._pending_summaries(), payload]
        return None

    def _pending_summaries(self) -> list[dict[str, Any]]:
        return [self._summary_delta(index) for index in list(self._held)]

    def _read(self, payload: dict[str, Any], *, rewrite: bool) -> bool:
        kind = payload.get("type")
        summary = self.summary
        if kind == "content_block_delta":
            _check_index(payload)
            delta = payload.get("delta")
            if type(delta) is not dict:
                raise UpstreamProtocolError("content_block_delta.delta", "an object", delta)
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                text = delta.get("text")
                if type(text) is not str:
                    raise UpstreamProtocolError("text_delta.text", "a string", text)
                summary.text_parts.append(text)
            elif delta_type == "thinking_delta":
                thinking = delta.get("thinking")
                if type(thinking) is not str:
                    raise UpstreamProtocolError("thinking_delta.thinking", "a string", thinking)
                summary.reasoning_chars += len(thinking)
                if rewrite:
                    summary.stripped_chars += len(thinking)
                    delta["thinking"] = ""
                    return True
            elif delta_type == "signature_delta" and rewrite:
                delta["signature"] = ""
                return True
        elif kind == "content_block_start":
            _check_index(payload)
            block = expect_dict(payload.get("content_block"), "content_block_start.content_block")
            if block.get("type") == "thinking":
                opt_str(block.get("thinking"), "content_block_start.content_block.thinking")
        elif kind == "content_block_stop":
            _check_index(payload)
        elif kind == "message_start":
            message = expect_dict(payload.get("message"), "message_start.message")
            usage = opt_dict(message.get("usage"), "message_start.message.usage") or {}
            summary.prompt_tokens = opt_count(usage.get("input_tokens"), "message_start.message.usage.input_tokens")
        elif kind == "message_delta":
            delta = opt_dict(payload.get("delta"), "message_delta.delta") or {}
            summary.finish_reason = opt_str(delta.get("stop_reason"), "message_delta.delta.stop_reason")
            usage = opt_dict(payload.get("usage"), "message_delta.usage") or {}
            output_tokens = opt_count(usage.get("output_tokens"), "message_delta.usage.output_tokens")
            if output_tokens is not None:
                summary.completion_tokens = output_tokens
        elif kind == "message_stop":
            self._done = True
        elif kind == "error":
            summary.upstream_error = _error_type(payload.get("error"))
        elif type(kind) is not str:
            raise UpstreamProtocolError("type", "a string", kind)
        return False


def _check_index(payload: dict[str, Any]) -> None:
    index = payload.get("index")
    if type(index) is not int:
        raise UpstreamProtocolError(f"{payload.get('type')}.index", "an integer", index)


def _error_type(error: Any) -> str:
    """What an in-stream error object calls itself (its ``type`` or ``code``), for the event; never its whole text."""
    if isinstance(error, dict):
        for key in ("type", "code"):
            value = error.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)[:64]
    return "error"


# -- the OpenAI Responses API (POST /v1/responses) ---------------------------------------------------
_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


def _responses_outcome(response: dict[str, Any], summary: ResponseSummary, where: str) -> None:
    """A Responses API ``response`` object's status, usage and error, into ``summary``.

    The finish reason is put in chat's vocabulary, as ``finish_reason`` is for
    every ``openai.*`` endpoint: ``completed`` → ``stop`` (``tool_calls`` when the
    output holds a function call); ``incomplete`` → ``length`` for
    ``max_output_tokens``, ``content_filter``, or the reason as given; any other
    status (``failed``, ``cancelled``, …) as it is.
    """
    status = opt_str(response.get("status"), f"{where}.status")
    if status == "completed":
        output = response.get("output")
        calls = type(output) is list and any(type(item) is dict and item.get("type") == "function_call" for item in output)
        summary.finish_reason = "tool_calls" if calls else "stop"
    elif status == "incomplete":
        details = opt_dict(response.get("incomplete_details"), f"{where}.incomplete_details") or {}
        reason = opt_str(details.get("reason"), f"{where}.incomplete_details.reason")
        summary.finish_reason = _INCOMPLETE_REASONS.get(reason or "", reason or "incomplete")
    elif status is not None:
        summary.finish_reason = status
    if status == "failed":
        summary.upstream_error = _error_type(response.get("error"))
    usage = opt_dict(response.get("usage"), f"{where}.usage") or {}
    summary.prompt_tokens = opt_count(usage.get("input_tokens"), f"{where}.usage.input_tokens")
    summary.completion_tokens = opt_count(usage.get("output_tokens"), f"{where}.usage.output_tokens")


def _reasoning_text(item: dict[str, Any], where: str) -> str:
    """A reasoning item's text: its ``summary`` parts, then its ``content`` (open-weight servers put the raw trace there)."""
    texts: list[str] = []
    for field in ("summary", "content"):
        parts = item.get(field)
        for j, part in enumerate(expect_list(parts, f"{where}.{field}") if parts is not None else ()):
            texts.append(opt_str(expect_dict(part, f"{where}.{field}.{j}").get("text"), f"{where}.{field}.{j}.text") or "")
    return "".join(texts)


def summarise_responses(
    body: dict[str, Any], summary: ResponseSummary, *, strip_reasoning: bool = False, summarize_reasoning: bool = False
) -> bool:
    """Fill ``summary`` from a non-streamed Responses API answer; returns True when ``body`` was modified.

    The text is the ``output_text`` parts of the ``message`` items; the
    reasoning length counts the ``reasoning`` items' summary and content text.
    With ``strip_reasoning`` the reasoning items are removed from ``output``;
    with ``summarize_reasoning`` too, each keeps its place with one
    ``summary_text`` part holding its :func:`reasoning_summary` and no
    ``content`` or ``encrypted_content`` (so it cannot be sent back whole).
    """
    changed = False
    kept: list[Any] = []
    output = body.get("output")
    for i, item in enumerate(expect_list(output, "output") if output is not None else ()):
        kind = opt_str(expect_dict(item, f"output.{i}").get("type"), f"output.{i}.type")
        if kind == "message":
            content = item.get("content")
            for j, part in enumerate(expect_list(content, f"output.{i}.content") if content is not None else ()):
                if opt_str(expect_dict(part, f"output.{i}.content.{j}").get("type"), f"output.{i}.content.{j}.type") == "output_text":
                    summary.text_parts.append(opt_str(part.get("text"), f"output.{i}.content.{j}.text") or "")
        elif kind == "reasoning":
            reasoning = _reasoning_text(item, f"output.{i}")
            summary.reasoning_chars += len(reasoning)
            if strip_reasoning:
                summary.stripped_chars += len(reasoning)
                changed = True
                if not summarize_reasoning:
                    continue
                item = {k: v for k, v in item.items() if k not in ("content", "encrypted_content")}
                item["summary"] = [{"type": "summary_text", "text": reasoning_summary(reasoning)}] if reasoning else []
        kept.append(item)
    if changed:
        body["output"] = kept
    _responses_outcome(body, summary, "response")
    return changed


_RESPONSES_END = frozenset(("response.completed", "response.incomplete", "response.failed"))
_REASONING_DELTAS = frozenset(("response.reasoning_summary_text.delta", "response.reasoning_text.delta"))
_REASONING_DONE = frozenset(("response.reasoning_summary_text.done", "response.reasoning_text.done"))
_REASONING_PARTS = frozenset(("response.reasoning_summary_part.added", "response.reasoning_summary_part.done",
                              "response.content_part.added", "response.content_part.done"))


def _blank_reasoning(item: dict[str, Any]) -> bool:
    """Empty a reasoning output item in place (summary, content, encrypted content); True if it was one."""
    if item.get("type") != "reasoning":
        return False
    item["summary"] = []
    if "content" in item:
        item["content"] = []
    item.pop("encrypted_content", None)
    return True


class ResponsesStreamReader(_SSEReader):
    """Reads (and, for a degraded account, strips) a Responses API stream.

    Text comes from ``response.output_text.delta``; reasoning length from
    ``response.reasoning_summary_text.delta`` and ``response.reasoning_text.delta``;
    usage and the finish reason from the closing ``response.completed``,
    ``response.incomplete`` or ``response.failed`` (the stream has no ``[DONE]``:
    one of those is its end). An ``error`` event is the upstream's own error.

    Stripping blanks the reasoning where it appears (deltas, ``done`` events,
    summary parts, reasoning items in ``output_item`` events and in the final
    response), keeping every event so sequence numbers stay whole. Summarising
    is not offered for this protocol: the gateway strips instead (docs/gateway.md).
    """

    END = "response.completed, response.incomplete or response.failed before its end"

    def __init__(self, *, strip_reasoning: bool = False) -> None:
        super().__init__(strip_reasoning=strip_reasoning)

    def _start_summarising(self) -> None:
        raise TypeError("ResponsesStreamReader does not summarise reasoning; it strips it (strip_reasoning=True)")

    def _summarise(self, payload: dict[str, Any]) -> list[dict[str, Any]] | None:
        return None  # never reached: __init__ does not take summarize_reasoning

    def _pending_summaries(self) -> list[dict[str, Any]]:
        return []

    @staticmethod
    def _sse(payload: dict[str, Any]) -> bytes:
        return b"event: " + str(payload.get("type", "")).encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _read(self, payload: dict[str, Any], *, rewrite: bool) -> bool:
        kind = payload.get("type")
        summary = self.summary
        if kind == "response.output_text.delta":
            text = payload.get("delta")
            if type(text) is not str:
                raise UpstreamProtocolError("response.output_text.delta.delta", "a string", text)
            summary.text_parts.append(text)
        elif kind in _REASONING_DELTAS:
            reasoning = payload.get("delta")
            if type(reasoning) is not str:
                raise UpstreamProtocolError(f"{kind}.delta", "a string", reasoning)
            summary.reasoning_chars += len(reasoning)
            if rewrite and reasoning:
                summary.stripped_chars += len(reasoning)
                payload["delta"] = ""
                return True
        elif kind in _RESPONSES_END:
            response = expect_dict(payload.get("response"), f"{kind}.response")
            _responses_outcome(response, summary, f"{kind}.response")
            if summary.finish_reason is None:
                summary.finish_reason = str(kind).rpartition(".")[2]  # the stream ended, whatever its status said
            if rewrite:
                output = response.get("output")
                return type(output) is list and any([_blank_reasoning(item) for item in output if type(item) is dict])
        elif kind == "error":
            summary.upstream_error = _error_type({"code": payload.get("code")})
        elif type(kind) is not str:
            raise UpstreamProtocolError("type", "a string", kind)
        elif rewrite:
            return self._strip_other(kind, payload)
        return False

    @staticmethod
    def _strip_other(kind: str, payload: dict[str, Any]) -> bool:
        """Blank reasoning carried by events other than deltas (with ``rewrite`` only)."""
        if kind in _REASONING_DONE and payload.get("text"):
            payload["text"] = ""
            return True
        part = payload.get("part")
        if kind in _REASONING_PARTS and type(part) is dict and part.get("type") in ("summary_text", "reasoning_text") and part.get("text"):
            part["text"] = ""
            return True
        item = payload.get("item")
        if kind in ("response.output_item.added", "response.output_item.done") and type(item) is dict:
            return _blank_reasoning(item)
        return False
