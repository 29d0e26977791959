"""Cached upstream health for ``GET /readyz``.

Why cached: ``/readyz`` is unauthenticated, and probing every upstream per
call let anyone make the gateway send one ``GET /models`` per upstream (with
the operator's key) per request they sent. Here the result of one probe round
is kept for ``ttl_s`` seconds, and at most one round is in flight at a time:
callers that arrive while it runs wait for that round instead of starting
their own. However many ``/readyz`` calls arrive, the upstreams see at most
one probe each per ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence

__all__ = ["UpstreamHealth"]


class UpstreamHealth:
    """``await health.problems()``: one sentence per unreachable upstream, refreshed at most every ``ttl_s``."""

    def __init__(self, names: Sequence[str], probe: Callable[[int], Awaitable[None]], *, ttl_s: float = 5.0,
                 timeout_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        """``probe(i)`` checks upstream ``names[i]`` and raises when it is not healthy."""
        self.names = list(names)
        self.probe = probe
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.rounds = 0  # probe rounds run (tests and metrics)
        self._checked_at: float | None = None
        self._problems: list[str] = []
        self._round: asyncio.Task[list[str]] | None = None

    async def problems(self) -> list[str]:
        if self._checked_at is not None and self.clock() - self._checked_at < self.ttl_s:
            return self._problems
        if self._round is None or self._round.done():
            self._round = asyncio.get_running_loop().create_task(self._run())
        # shield: a caller that goes away must not cancel the round others wait for
        return list(await asyncio.shield(self._round))

    async def _run(self) -> list[str]:
        self.rounds += 1
        results = await asyncio.gather(*(self._check(i) for i in range(len(self.names))))
        self._problems = [problem for problem in results if problem is not None]
        self._checked_at = self.clock()
        return self._problems

    async def _check(self, index: int) -> str | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.probe(index)
        except Exception as exc:
            return f"upstream {self.names[index]} unreachable ({type(exc).__name__})"
        return None

    async def close(self) -> None:
        if self._round is not None and not self._round.done():
            self._round.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._round
