"""Refusals counted per source and interval, so a flood costs bounded memory, disk and log.

Why: a request with a wrong API key costs the attacker nothing, and before
this every one of them was a stored event (~0.9 KB) and a WARNING line — an
attacker could fill the disk and the log without a key. Now each refusal is
*noted* in a window keyed by who was refused (the client's address for
unauthenticated refusals — IPv4 address, IPv6 /64 —, the API key for
authenticated ones), the endpoint, the status and the error code:

- the first refusal of a window is logged and (unauthenticated) stored as an
  ordinary event, so one mistyped key shows up at once, exactly as before;
- the others of the window are only counted; when the window closes
  (``interval_s`` after its first refusal) one WARNING line says how many
  there were, and for unauthenticated refusals one *summary event* stores
  them (docs/events.md, ``aggregate``).

Memory is bounded by ``max_windows``: past it, a refusal from a new source
goes into one overflow window per endpoint, status and code (its ``source``
is ``"overflow"``), whose summary counts requests and distinct new sources
turned away from a window of their own. So a flood from a million addresses
costs at most ``max_windows`` windows, and one event and one log line per
window per interval.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

from distillguard.events import format_ts

__all__ = ["OVERFLOW", "RefusalWindows", "Window", "source_of"]

OVERFLOW = "overflow"


def source_of(ip: str | None) -> str:
    """The source a refusal is counted under: the IPv4 address, or the IPv6 /64 (one host's usual allocation)."""
    if not ip:
        return "unknown"
    if ":" not in ip:
        return ip
    try:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    except ValueError:
        return "unknown"


@dataclass
class Window:
    """The refusals of one (who, endpoint, status, code) in one interval."""

    who: str
    endpoint: str
    status: int
    code: str
    authenticated: bool
    opened: float  # clock time of the first refusal
    first_ts: str
    last_ts: str = ""
    repeats: int = 0  # refusals after the first (the first was logged and stored on its own)
    new_sources: int = 0  # overflow only: refusals that would each have opened a window of their own
    first_repeat_ts: str = ""
    user_agent: str | None = None


    def count_repeat(self) -> None:
        self.repeats += 1
        self.last_ts = format_ts()
        if self.repeats == 1:
            self.first_repeat_ts = self.last_ts


Key = tuple[str, str, int, str, bool]


class RefusalWindows:
    """``note()`` on every refusal; ``close(now)`` about once a second; see the module docstring."""

    def __init__(self, *, interval_s: float = 10.0, max_windows: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.max_windows = max_windows
        self.clock = clock
        self._windows: dict[Key, Window] = {}
        self.noted = 0  # refusals seen (metrics and tests)
        self.overflowed = 0  # refusals counted in an overflow window

    def __len__(self) -> int:
        return len(self._windows)

    def note(self, who: str, endpoint: str, status: int, code: str, *, authenticated: bool, user_agent: str | None = None) -> bool:
        """Count one refusal; True when it is the first of its window (log it and store its event as usual)."""
        self.noted += 1
        key = (who, endpoint, status, code, authenticated)
        window = self._windows.get(key)
        if window is not None:
            window.count_repeat()
            return False
        if len(self._windows) >= self.max_windows:
            self.overflowed += 1
            key = (OVERFLOW, endpoint, status, code, authenticated)
            window = self._windows.get(key)
            if window is None:  # the overflow windows may pass max_windows: one per endpoint × status × code
                window = self._windows[key] = Window(OVERFLOW, endpoint, status, code, authenticated, self.clock(), format_ts())
                window.new_sources = 1
                return True
            window.count_repeat()
            window.new_sources += 1
            return False
        self._windows[key] = Window(who, endpoint, status, code, authenticated, self.clock(), format_ts(), user_agent=user_agent)
        return True

    def close(self, now: float | None = None, *, everything: bool = False) -> list[Window]:
        """Forget the windows whose interval is over (all with ``everything``); return those that counted repeats."""
        now = self.clock() if now is None else now
        closed: list[Window] = []
        for key, window in list(self._windows.items()):
            if everything or now - window.opened >= self.interval_s:
                del self._windows[key]
                if window.repeats:
                    closed.append(window)
        return closed
