"""Cutting a relayed byte stream into whole SSE events, holding back the partial event at a chunk's end.

Upstream chunks need not end where events do, and a filter that rewrites or
drops events (the usage-only chunk, gateway/stream_usage.py; a canary planted
at the answer's end, canary/stream.py) must see each event whole. This is the
one place that does the cutting.
"""

from __future__ import annotations

import re

__all__ = ["EventFramer"]

_EVENT_END = re.compile(rb"\r?\n\r?\n")


class EventFramer:
    """Holds back the unterminated tail of a chunk until the rest of its event arrives."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = b""

    def join(self, data: bytes) -> bytes:
        """``data`` after what was held back before it (nothing is held afterwards)."""
        if self.held:
            data, self.held = self.held + data, b""
        return data

    def events(self, data: bytes) -> list[bytes]:
        """The whole events of ``data`` (already :meth:`join`\\ ed), each with its terminating blank line; the rest is held."""
        ends = [m.end() for m in _EVENT_END.finditer(data)]
        if not ends:
            self.held = data
            return []
        self.held = data[ends[-1]:]
        return [data[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]

    def flush(self) -> bytes:
        """The stream ended: whatever was held back (an unterminated last event, or nothing)."""
        rest, self.held = self.held, b""
        return rest
