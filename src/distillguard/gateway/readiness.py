"""``GET /readyz``: whether this replica can serve — the event store and the upstreams — without fanning out per call.

The store's state comes from the sink's own stats (never a query), the
upstreams' from :class:`UpstreamHealth`'s cached probe round, so however often
the unauthenticated endpoint is called, the upstreams see one probe each per
``READYZ_TTL_S``. The online scorer's state is reported but does not make the
replica unready: it still serves with the last decisions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from distillguard.gateway.health import UpstreamHealth
from distillguard.gateway.types import (
    EventSinkProtocol,
    PolicyEngineProtocol,
    Send,
    UpstreamTransportProtocol,
)
from distillguard.gateway.upstream import Router, get_document
from distillguard.gateway.wire import respond

__all__ = ["READYZ_TTL_S", "Readiness"]

READYZ_TTL_S = 5.0  # /readyz reuses one round of upstream probes for this long


class Readiness:
    """Answers ``/readyz``; ``health`` is the cached upstream probe (closed at shutdown)."""

    def __init__(self, router: Router, client: UpstreamTransportProtocol, sink: EventSinkProtocol | None,
                 policy: PolicyEngineProtocol | None, keys_loaded: Callable[[], int]) -> None:
        self.router = router
        self.client = client
        self.sink = sink
        self.policy = policy
        self.keys_loaded = keys_loaded
        self.health = UpstreamHealth([u.name for u in router.upstreams], self._probe_upstream, ttl_s=READYZ_TTL_S)

    async def readyz(self, send: Send) -> None:
        problems: list[str] = []
        stats = self.sink.stats if self.sink is not None else None
        if stats is not None and not stats.get("store_ok", True):  # down, or a write blocked past the sink's stall limit
            problems.append(stats.get("store_problem") or "event store unavailable (events are spilling to disk)")
        problems += await self.health.problems()  # cached: unauthenticated calls never fan out to the upstreams
        body: dict[str, Any] = {"status": "ready" if not problems else "not_ready", "problems": problems, "keys_loaded": self.keys_loaded()}
        scorer = self.policy.scorer_status() if self.policy is not None else None
        if scorer is not None:  # informational: a replica whose scorer is down still serves with the last decisions
            body["scorer"] = scorer
        await respond(send, 200 if not problems else 503, orjson.dumps(body))

    async def _probe_upstream(self, index: int) -> None:
        await get_document(self.client, self.router.upstreams[index], b"/models")
