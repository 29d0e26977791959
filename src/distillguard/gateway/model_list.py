"""``GET /v1/models``: the models this gateway routes, as OpenAI's list — authenticated, limited and evented like any request.

The list is the configured exact model names plus what pattern-routed OpenAI
upstreams list themselves, cached for ``MODEL_LIST_TTL_S`` so a flood of
listings costs the upstreams one call per upstream per interval. The request
takes a concurrency slot and one admission (a request, no tokens) and gets an
``openai.models`` event, so listing cannot be used to probe keys for free.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from distillguard.gateway.auth import KeyTable
from distillguard.gateway.emission import Emitter
from distillguard.gateway.errors import GatewayError, error_body
from distillguard.gateway.exchange import Exchange
from distillguard.gateway.limits import Limiter, Slot
from distillguard.gateway.metrics import Metrics
from distillguard.gateway.types import Scope, Send, UpstreamTransportProtocol
from distillguard.gateway.upstream import Router, get_document
from distillguard.gateway.wire import JSON_HEADERS, respond
from distillguard.state import Admission

__all__ = ["MODEL_LIST_TTL_S", "ModelList"]

log = logging.getLogger("distillguard.gateway")

MODEL_LIST_TTL_S = 30.0  # GET /v1/models reuses the upstreams' own model lists for this long


class ModelList:
    """Answers ``GET /v1/models``; see the module docstring."""

    def __init__(self, router: Router, client: UpstreamTransportProtocol, keys: KeyTable, limiter: Limiter, metrics: Metrics,
                 emitter: Emitter, created: int) -> None:
        self.router = router
        self.client = client
        self.keys = keys
        self.limiter = limiter
        self.metrics = metrics
        self.emitter = emitter
        self.created = created  # the list's "created" for every model: when this gateway started
        self._listed_models: tuple[float, dict[str, str]] | None = None
        self._listing = asyncio.Lock()

    async def handle(self, scope: Scope, send: Send) -> None:
        """``GET /v1/models``: authenticated, admitted by the limits like any request, and one event (``openai.models``)."""
        ex = Exchange("openai.models", "openai", scope)
        send = self.emitter.emitting_before_end(ex, send)
        slot: Slot | None = None
        admission: Admission | None = None
        try:
            ex.key = key = self.keys.authenticate_request(ex.headers)
            slot = self.limiter.enter(key)
            admission = await self.limiter.admit(key, 0, ex.request_id, slot=slot)  # a request, no tokens
            data = [{"id": name, "object": "model", "created": self.created, "owned_by": owner}
                    for name, owner in sorted((await self.model_names()).items())]
            ex.status = 200
            await respond(send, 200, orjson.dumps({"object": "list", "data": data}), [*JSON_HEADERS, (b"x-request-id", ex.request_id.encode())])
        except GatewayError as exc:
            ex.status, ex.error = exc.status, exc.event_error
            if self.emitter.note_refusal(ex, exc.code):
                log.warning("GET /v1/models → %d %s: %s", exc.status, exc.code, exc.message)
            headers = [*JSON_HEADERS, (b"x-request-id", ex.request_id.encode())]
            if exc.retry_after is not None:
                headers.append((b"retry-after", str(int(exc.retry_after)).encode()))
            await respond(send, exc.status, error_body("openai", exc.status, exc.message, exc.code), headers)
        finally:
            if slot is not None:
                slot.release()
            if admission is not None:
                self.limiter.settle(admission, 0)
            self.metrics.observe(ex.endpoint, ex.status, time.perf_counter() - ex.started)
            if not ex.summarised and not ex.emitted:  # no response went out (client gone): the event goes now
                self.emitter.emit_safely(ex)

    async def model_names(self) -> dict[str, str]:
        """Model name → upstream: the configured exact names, plus what pattern-routed OpenAI upstreams list (cached)."""
        now = time.monotonic()
        cached = self._listed_models
        if cached is not None and now - cached[0] < MODEL_LIST_TTL_S:
            return cached[1]
        async with self._listing:  # one listing round at a time; the others then read its result
            cached = self._listed_models
            if cached is not None and time.monotonic() - cached[0] < MODEL_LIST_TTL_S:
                return cached[1]
            seen: dict[str, str] = {name: u.name for name, u in self.router.listed_models()}
            for upstream in self.router.upstreams:
                if any(ch in p for p in upstream.settings.models for ch in "*?[") and upstream.protocol == "openai":
                    try:
                        async with asyncio.timeout(5):
                            listed = orjson.loads(await get_document(self.client, upstream, b"/models"))
                        for item in listed.get("data") or []:
                            seen.setdefault(str(item.get("id")), upstream.name)
                    except Exception as exc:
                        log.warning("listing models of upstream %s failed: %s", upstream.name, exc)
            self._listed_models = (time.monotonic(), seen)
            return seen
