"""Getting the real usage of OpenAI-protocol streams, which report it only when asked.

Without usage a stream could only be charged its text ÷ 4, so token limits were
easy to bypass by streaming. The gateway therefore always asks an OpenAI
upstream for it (``stream_options: {"include_usage": true}``), and when the
client did not ask, removes the extra chunk before the client sees it: the one
with ``"choices": []`` and a ``usage`` object, sent just before ``[DONE]``. The
other chunks then carry ``"usage": null``, as the OpenAI API sends them with
``include_usage``; SDKs accept that either way.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from distillguard.sse import EventFramer

__all__ = ["UsageChunkFilter", "ask_stream_usage"]

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


def ask_stream_usage(payload: dict[str, Any]) -> bool:
    """Make ``payload`` ask for stream usage; True when the client had not asked (so the usage chunk must be hidden)."""
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    payload["stream_options"] = {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    return True


def _has_usage_object(data: bytes) -> bool:
    """Whether ``data`` holds ``"usage": {`` (a bytes search first: most chunks have no usage, or ``"usage": null``)."""
    start = data.find(b'"usage"')
    return start >= 0 and _USAGE_OBJECT.search(data, start) is not None


def _is_usage_chunk(event: bytes) -> bool:
    data = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(payload, dict) and payload.get("choices") == [] and isinstance(payload.get("usage"), dict)


class UsageChunkFilter:
    """Passes an SSE stream through whole events at a time, leaving out the usage-only chunk."""

    __slots__ = ("_frames",)

    def __init__(self) -> None:
        self._frames = EventFramer()

    def feed(self, data: bytes, usage_seen: bool = True) -> bytes:
        """``data`` without the usage-only chunk, in whole events (a partial event at its end is held back).

        ``usage_seen``: whether the stream reader has read an event with a usage
        object so far (``OpenAIStreamReader.usage_seen``; every ``data:`` line
        passes through the reader before it gets here). Until it has, whole
        events pass without a byte scan.
        """
        data = self._frames.join(data)
        if not data:  # (the relay feeds the reader's empty flush at every stream's end)
            return data
        if data.endswith(b"\n\n") and not (usage_seen and _has_usage_object(data)):
            return data  # whole events without a usage object: the common chunk, passed as it is
        events = self._frames.events(data)
        return b"".join(event for event in events if not (_has_usage_object(event) and _is_usage_chunk(event)))

    def flush(self) -> bytes:
        rest = self._frames.flush()
        if rest and _has_usage_object(rest) and _is_usage_chunk(rest):
            return b""
        return rest
