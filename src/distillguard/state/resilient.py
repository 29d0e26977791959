"""What the gateway does when shared state fails: ``state_failure: fail_open`` or ``fail_closed``.

Redis down, refusing or slower than its timeout trips a breaker at once: the
failed request and every one after it are answered without waiting for Redis
again, either admitted by this replica's own exact limits (``fail_open``, the
default: the fleet may then admit up to N replicas × each limit) or refused
with a 503 (``fail_closed``). One line is logged when it trips and one when it
recovers, and ``dg_state_degraded`` says which it is. A probe checks Redis
every second in the background and switches back by itself. The event log
never goes through here: events are written to the store whatever Redis does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

from distillguard.state.memory import MemoryAdmission, MemoryState
from distillguard.state.redis_state import RedisAdmission, RedisState
from distillguard.state.types import Admission, Quota, Refusal, StateUnavailable

__all__ = ["ResilientState"]

log = logging.getLogger("distillguard.state")

Admitted = MemoryAdmission | RedisAdmission


class ResilientState:
    """A :class:`RedisState` with a breaker and a local fallback; see the module docstring."""

    name = "redis"

    def __init__(self, shared: RedisState, failure: Literal["fail_open", "fail_closed"], local: MemoryState | None = None,
                 probe_interval_s: float = 1.0) -> None:
        self.shared = shared
        self.failure = failure
        self.local = local or MemoryState()
        self.probe_interval_s = probe_interval_s
        self.degraded = False
        self.trips = 0
        self._probe: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect; if Redis is not there yet, start degraded (the probe connects later)."""
        try:
            await self.shared.start()
        except StateUnavailable as exc:
            self._trip(exc)

    async def admit(self, quotas: tuple[Quota, ...], tokens: int, request_id: str,
                    nonce: tuple[str, int] | None = None) -> Admitted | Refusal | None:
        if not self.degraded:
            try:  # the shared state bounds its own calls by state_timeout_s (no timer per request here)
                return await self.shared.admit(quotas, tokens, request_id, nonce)
            except StateUnavailable as exc:
                self._trip(exc)
        if self.failure == "fail_closed":
            raise StateUnavailable(f"shared state {self.shared.url} is unavailable (state_failure: fail_closed)")
        return self.local.admit_now(quotas, tokens, request_id, nonce)

    def settle(self, admission: Admission, tokens: int) -> None:
        if isinstance(admission, MemoryAdmission):
            self.local.settle(admission, tokens)
        elif not self.degraded:
            self.shared.settle(admission, tokens)
        # else: Redis is down; its slots come back when their leases expire

    def _trip(self, exc: BaseException) -> None:
        if self.degraded:
            return
        self.degraded = True
        self.trips += 1
        what = "serving with this replica's own limits" if self.failure == "fail_open" else "refusing requests with 503"
        log.error("shared state %s failed (%s: %s); %s until it answers again (state_failure: %s)",
                  self.shared.url, type(exc).__name__, exc or "timed out", what, self.failure)
        self._probe = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            try:
                with contextlib.suppress(Exception):  # connections from before the outage are dead: start afresh
                    await self.shared.client.connection_pool.disconnect()
                await self.shared.start()
            except StateUnavailable:
                continue
            self.degraded = False
            log.warning("shared state %s answers again; limits are shared across replicas again", self.shared.url)
            return

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.shared.close()
