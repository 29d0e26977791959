"""Reading a stream's text deltas without parsing each one whole: the bytes around the text are learnt once per stream.

Why: an OpenAI-protocol stream is mostly events that differ only in one string,
``{"id":…,"choices":[{"index":0,"delta":{"content":"…"},"finish_reason":null}]}``,
and parsing every one of them into dictionaries was the largest SSE-only cost of
a streamed request (bench/RESULTS.md, "SSE at c=64, stop 16"). The reader parses
an event whole once, and when it has that shape learns the bytes before and after
the text's string literal (:func:`learn`). A later event with exactly those bytes
around one JSON string literal (:func:`text_between`) is the same event with
another text, so only the literal is decoded; anything else is parsed whole.

Why that is exact: a JSON document is a sequence of tokens, and a string literal
is one token. :func:`learn` checks, by parsing the learnt bytes around a sentinel
literal, that they make an event of the learnable shape whose text is the
sentinel (so the split is where the text's value is: not a duplicate key's
earlier value, not inside another string). An event whose bytes are the same
prefix, one complete string literal (checked by decoding it alone: it must be a
``str`` and the bytes must begin and end with its quotes) and the same suffix has
the same tokens as that probe except that one literal, hence the same shape with
that literal's text; reading such an event does nothing but append its text.
Nothing else is trusted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["learn", "text_between"]

_QUOTE = 34  # b'"'
_BACKSLASH = 92  # b"\\"
_SPACES = b" \t\r\n"
_SENTINEL = "\x00distillguard\x00"
_SENTINEL_LITERAL = orjson.dumps(_SENTINEL)


def _literal_end(raw: bytes, start: int) -> int:
    """The index just past the string literal whose opening quote is at ``start`` (-1: unterminated)."""
    at = start + 1
    while True:
        quote = raw.find(b'"', at)
        if quote < 0:
            return -1
        slashes = 0
        back = quote - 1
        while back > start and raw[back] == _BACKSLASH:
            slashes += 1
            back -= 1
        if slashes % 2 == 0:
            return quote + 1
        at = quote + 1


def _value_start(raw: bytes, key_end: int) -> int:
    """Where the value after a key ending at ``key_end`` begins if it is a string literal (-1 otherwise)."""
    at = key_end
    size = len(raw)
    while at < size and raw[at] in _SPACES:
        at += 1
    if at >= size or raw[at] != 58:  # b":"
        return -1
    at += 1
    while at < size and raw[at] in _SPACES:
        at += 1
    return at if at < size and raw[at] == _QUOTE else -1


TextOf = Callable[[dict[str, Any]], str | None]  # an event's text when it has the learnable shape, else None


def learn(raw: bytes, key: bytes, text_of: TextOf) -> tuple[bytes, bytes] | None:
    """The bytes before and after the literal of the text (the value of a ``key``) in the event ``raw``.

    ``text_of`` says whether a parsed event has the learnable shape, and its
    text. A split is taken only when the bytes around a sentinel literal parse
    to an event of that shape whose text is the sentinel: then any event made
    of the same bytes around another string literal has that shape and that
    literal's text, whatever ``raw`` itself held. None when no split checks out.
    """
    needle = b'"' + key + b'"'
    at = raw.find(needle)
    while at >= 0:
        start = _value_start(raw, at + len(needle))
        if start >= 0:
            end = _literal_end(raw, start)
            if end < 0:
                return None
            prefix, suffix = raw[:start], raw[end:]
            if _checks_out(prefix, suffix, text_of):
                return prefix, suffix
        at = raw.find(needle, at + 1)
    return None


def _checks_out(prefix: bytes, suffix: bytes, text_of: TextOf) -> bool:
    try:
        probe = orjson.loads(prefix + _SENTINEL_LITERAL + suffix)
    except orjson.JSONDecodeError:
        return False
    return type(probe) is dict and text_of(probe) == _SENTINEL


def text_between(raw: bytes, prefix: bytes, suffix: bytes) -> str | None:
    """The text of an event that is ``prefix`` + one JSON string literal + ``suffix``; None for any other event.

    ``raw`` may be a whole ``data:`` line and ``prefix`` begin with ``data:``.
    (One-argument ``startswith``/``endswith``: compiled, they cost a third of
    the forms with offsets.)
    """
    first = len(prefix)
    last = len(raw) - len(suffix)  # just past the literal
    if last - first < 2 or raw[first] != _QUOTE or raw[last - 1] != _QUOTE or not raw.startswith(prefix) or not raw.endswith(suffix):
        return None
    try:
        text = orjson.loads(raw[first:last])
    except orjson.JSONDecodeError:
        return None
    return text if type(text) is str else None
