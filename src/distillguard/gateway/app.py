"""The gateway: a raw ASGI application (no framework) in front of model servers.

Per request, in memory only: authenticate (key table), read and validate the
body, route the model, collect client signals, ask the policy, admit through the
limits (gateway/admission.py), forward to the upstream and relay the answer,
streams chunk by chunk (gateway/relay.py), then hand one event to the sink and
the online scorer (gateway/emission.py). Nothing on this path touches a
database, a file, or the analytics stack.

This module is the ASGI entry and the conductor: it owns the components'
lifecycle (startup, the key table's poller and change notices, shutdown), routes each request, and
runs a model request through the stages above with one place that answers
and records every refusal. The side endpoints live in their own modules
(readiness.py, model_list.py, enroll.py, admin.py, the console).

Written against ASGI directly rather than a framework because a streaming proxy
needs exact control of ``receive``/``send`` (client disconnects, chunk timing)
and because every microsecond of framework per request shows in the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from distillguard.config import Settings
from distillguard.gateway.admission import RequestAdmission
from distillguard.gateway.auth import KeyTable
from distillguard.gateway.emission import Emitter
from distillguard.gateway.enroll import Enrollment
from distillguard.gateway.errors import GatewayError, error_body
from distillguard.gateway.exchange import Exchange, used_tokens
from distillguard.gateway.limits import Limiter, Slot
from distillguard.gateway.metrics import SAMPLE_EVERY_S, Metrics
from distillguard.gateway.model_list import ModelList
from distillguard.gateway.prompt_tokens import PromptCounter
from distillguard.gateway.readiness import Readiness
from distillguard.gateway.refusals import RefusalWindows, source_of
from distillguard.gateway.relay import Relay
from distillguard.gateway.requests import parse_json_body, validate_payload
from distillguard.gateway.types import (
    AdminPluginProtocol,
    ASGIApp,
    CanaryPlanterProtocol,
    EventSinkProtocol,
    KeyRegistryProtocol,
    PolicyEngineProtocol,
    Receive,
    Scope,
    Send,
    SignalCollectorProtocol,
    UpstreamTransportProtocol,
    WatermarkerProtocol,
)
from distillguard.gateway.upstream import Router
from distillguard.gateway.upstream_http import UpstreamClient
from distillguard.gateway.wire import JSON_HEADERS, ClientDisconnected, read_body, respond
from distillguard.state import Admission, open_state

if TYPE_CHECKING:
    from distillguard.state.notify import ChangeNotifier

__all__ = ["Gateway"]

log = logging.getLogger("distillguard.gateway")

ROUTES: dict[tuple[str, str], tuple[str, str, str]] = {
    # (method, path) → (endpoint name, caller protocol, upstream path)
    ("POST", "/v1/chat/completions"): ("openai.chat", "openai", "/chat/completions"),
    ("POST", "/v1/completions"): ("openai.completions", "openai", "/completions"),
    ("POST", "/v1/embeddings"): ("openai.embeddings", "openai", "/embeddings"),
    ("POST", "/v1/responses"): ("openai.responses", "openai", "/responses"),
    ("POST", "/v1/messages"): ("anthropic.messages", "anthropic", "/messages"),
    ("POST", "/v1/messages/count_tokens"): ("anthropic.count_tokens", "anthropic", "/messages/count_tokens"),
}
# The young generation's collection threshold in a serving process (CPython's default: 700 allocations). A request
# allocates a few hundred GC-tracked objects, nearly all freed by reference counting within the request, so at the
# default a young collection ran every few requests and walked mostly the objects of the requests in flight: ~6 % of
# the gateway's CPU under load (perf, bench/RESULTS.md "Gateway CPU per request"); at 10,000, ~2 %.
YOUNG_GC_THRESHOLD = 10_000
REFUSAL_WINDOW_S = 10.0  # refusals are logged and (unauthenticated) stored once per source per window, then summarised


class Gateway:
    """The ASGI application. Optional components are ``None`` when not configured.

    Each collaborator is typed by its seam in gateway/types.py; ``transport``
    replaces the upstream client (an in-process fake in tests).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: KeyRegistryProtocol | None = None,
        sink: EventSinkProtocol | None = None,
        signals: SignalCollectorProtocol | None = None,
        policy: PolicyEngineProtocol | None = None,
        watermarker: WatermarkerProtocol | None = None,
        canaries: CanaryPlanterProtocol | None = None,
        admin_plugins: Sequence[AdminPluginProtocol] = (),
        transport: UpstreamTransportProtocol | None = None,
        notifier: ChangeNotifier | None = None,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.sink = sink
        self.signals = signals
        self.policy = policy
        self.watermarker = watermarker
        self.admin_plugins = list(admin_plugins)
        self.poll_interval_s = poll_interval_s
        # With state: redis, a key-table change made here is announced and one announced elsewhere applied at once
        # (state/notify.py, kind "keys"); the poll every poll_interval_s stays, for a lost notice or a CLI change.
        self.notifier = notifier
        self._notified = False  # a "keys" notice came and its refresh has not started yet
        self._notice_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.router = Router(settings.upstreams)
        self.keys = KeyTable()
        self.state = open_state(settings.state, settings.state_failure, settings.state_timeout_s, settings.state_headroom_ms)
        self.limiter = Limiter(settings.limits, self.state)
        self.metrics = Metrics()
        self.client: UpstreamTransportProtocol = transport if transport is not None else UpstreamClient()
        self.max_body = settings.max_body_bytes
        self.started_at = time.time()
        self.refusals = RefusalWindows(interval_s=REFUSAL_WINDOW_S)
        self.emitter = Emitter(settings, sink, policy, self.refusals)
        self.admission = RequestAdmission(settings, self.limiter, PromptCounter(), self.metrics, signals, policy)
        self.relay = Relay(self.client, self.metrics, policy, watermarker, self.emitter.note_refusal, canaries)
        self.readiness = Readiness(self.router, self.client, sink, policy, self.keys.__len__)
        self.health = self.readiness.health
        self.models = ModelList(self.router, self.client, self.keys, self.limiter, self.metrics, self.emitter, int(self.started_at))
        self.enrollment = Enrollment(self.keys, signals, self.refusals, self.max_body)
        self._change_counter = -1
        self._keys_lock = asyncio.Lock()
        self.full_key_loads = 0  # whole-table loads: one at start, more only when this gateway fell behind the change log
        self.freeze_gc_after_start = False  # set by `serve` (one gateway per process; also YOUNG_GC_THRESHOLD); tests leave theirs alone
        self._poll_task: asyncio.Task[None] | None = None
        self._sample_task: asyncio.Task[None] | None = None
        self._refusal_task: asyncio.Task[None] | None = None
        self._console: ASGIApp | None = None  # the operators' console, imported on its first request (never on the hot path)
        from distillguard.gateway.admin import (  # local: admin pulls in pydantic and SQLAlchemy
            AdminAPI,
            AdminContext,
        )

        self.admin = AdminAPI(AdminContext(
            settings, registry, sink, policy, self.admin_plugins, tuple(u.name for u in self.router.upstreams),
            has_signals=signals is not None, has_watermark=watermarker is not None,
            keys_loaded=self.keys.__len__, refresh_keys=self.keys_changed,
        ))
        # admin_listen: the admin API answers only on that port, and that port answers nothing else.
        self._admin_port = int(settings.admin_listen.rpartition(":")[2]) if settings.admin_listen else None
        if sink is not None and sink.stats is not None:
            self.metrics.add_gauge("distillguard_event_queue_depth", "Events waiting to be written.", lambda: _sink_count(sink, "queued"))
            self.metrics.add_gauge("distillguard_events_written", "Events written to the store.", lambda: _sink_count(sink, "written"))
            self.metrics.add_gauge("distillguard_events_spilled", "Events spilled to local JSONL files.", lambda: _sink_count(sink, "spilled"))
            self.metrics.add_gauge("distillguard_spill_lines_quarantined", "Spill-file lines that were not events, kept "
                                   "in <file>.bad beside it instead of replayed.", lambda: _sink_count(sink, "quarantined"))
            self.metrics.add_gauge("distillguard_event_wal_degraded", "1 while the event write-ahead log cannot be written "
                                   "(events are still stored, but not protected against a kill).",
                                   lambda: _sink_count(sink, "wal_degraded"))
            self.metrics.add_gauge("distillguard_event_wal_unprotected", "Events since start that the write-ahead log could "
                                   "not take (degraded mode).", lambda: _sink_count(sink, "wal_failed"))
        self.metrics.add_gauge("distillguard_keys_loaded", "API keys in the in-memory table.", lambda: float(len(self.keys)))
        self.metrics.add_gauge("distillguard_key_table_full_loads", "Whole key-table loads (at start; later only after falling "
                               "behind the change log).", lambda: float(self.full_key_loads))
        self.metrics.add_gauge("dg_state_degraded", "1 while shared state (Redis) is failing and state_failure applies.",
                               lambda: float(self.state.degraded))

    # -- lifecycle -----------------------------------------------------------------
    async def startup(self) -> None:
        await self.state.start()
        self._sample_task = asyncio.create_task(self._sample_metrics())
        self._refusal_task = asyncio.create_task(self._close_refusal_windows())
        if self.registry is not None:
            await self.reload_keys()
            self._poll_task = asyncio.create_task(self._poll_registry(self.registry))
            if self.notifier is not None:
                self._loop = asyncio.get_running_loop()
                self.notifier.start(self._on_notice)
        if self.freeze_gc_after_start:
            # What exists now lives as long as the process (100,000 key records, modules, settings): keep it out of
            # every later full collection, which otherwise walks it again and again under load (bench/accounts_scale.py).
            gc.collect()
            gc.freeze()
            _, older, oldest = gc.get_threshold()
            gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)
        if self.sink is not None:
            self.sink.start()
        if self.policy is not None:
            self.policy.start()

    async def shutdown(self) -> None:
        self._loop = None  # notices that still come find nothing to wake (the notifier closes with the policy engine)
        for task in (self._poll_task, self._notice_task, self._sample_task, self._refusal_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.health.close()
        for window in self.refusals.close(everything=True):  # before the sink drains: the summaries are events too
            self.emitter.summarise_window(window)
        await self.client.close()
        await self.state.close()
        if self.policy is not None:
            await asyncio.to_thread(self.policy.close)
        if self.sink is not None:
            await asyncio.to_thread(self.sink.close)

    async def reload_keys(self) -> None:
        """Load the whole key table (at start; afterwards :meth:`refresh_keys` applies changes one key at a time)."""
        async with self._keys_lock:
            await self._load_all_keys()

    async def _load_all_keys(self) -> None:
        registry = self.registry
        assert registry is not None, "reload_keys needs a registry"
        counter = await asyncio.to_thread(registry.change_counter)
        records = await asyncio.to_thread(registry.key_snapshot)
        self.keys.load(records)
        self.full_key_loads += 1
        await self._reload_overrides()
        self._change_counter = counter

    async def refresh_keys(self) -> None:
        """Apply the registry's changes since the last load: only the keys they touched (one for a create or revoke).

        The poller calls it when the change counter moves, the admin API after
        each change (so a key it creates works on the very next request). A
        gateway that fell behind the pruned change log loads everything again.
        Serialised, so a poll and an admin change never apply out of order.
        """
        registry = self.registry
        assert registry is not None, "refresh_keys needs a registry"
        async with self._keys_lock:
            delta = await asyncio.to_thread(registry.key_changes_since, self._change_counter)
            if delta is None:
                await self._load_all_keys()
                return
            if delta.counter == self._change_counter:
                return
            self.keys.update(delta.records)
            await self._reload_overrides()
            self._change_counter = delta.counter

    async def keys_changed(self) -> None:
        """After this process changed the registry (the admin API): apply the change here, then tell the other processes.

        The notice goes out after the change is committed and applied here, so a
        replica that hears it finds the change in the registry; publishing is
        bounded by ``state_timeout_s`` and a failure only leaves the others to
        their next poll.
        """
        await self.refresh_keys()
        if self.notifier is not None:
            await asyncio.to_thread(self.notifier.publish, "keys")

    def _on_notice(self, kind: str) -> None:
        """A notice from another process (on the notifier's thread): a key-table change is applied on the event loop."""
        loop = self._loop
        if kind == "keys" and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: this gateway is gone
                loop.call_soon_threadsafe(self._refresh_on_notice)

    def _refresh_on_notice(self) -> None:
        # Notices that come while a refresh waits to start are answered by that refresh: a burst (a bulk creation on
        # another replica) costs one or two reads of the change log, not one per notice.
        self._notified = True
        if self._notice_task is None or self._notice_task.done():
            self._notice_task = asyncio.get_running_loop().create_task(self._refresh_notified())

    async def _refresh_notified(self) -> None:
        while self._notified:
            self._notified = False
            try:
                await self.refresh_keys()
            except Exception as exc:  # the poll tries again within poll_interval_s
                log.warning("key table refresh after a change notice failed: %s", exc)

    async def _reload_overrides(self) -> None:
        if self.policy is not None:
            await asyncio.to_thread(self.policy.reload_overrides)  # manual overrides are registry state too

    async def _sample_metrics(self) -> None:
        """Running totals every few seconds, for the console's traffic charts."""
        while True:
            self.metrics.sample()
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def _poll_registry(self, registry: KeyRegistryProtocol) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                counter = await asyncio.to_thread(registry.change_counter)
                if counter != self._change_counter:
                    await self.refresh_keys()
                    log.debug("key table at registry change %d: %d keys", self._change_counter, len(self.keys))
            except Exception as exc:  # a DB hiccup must not kill the poller
                log.warning("key table refresh failed: %s", exc)

    async def _close_refusal_windows(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for window in self.refusals.close():
                self.emitter.summarise_window(window)

    # -- ASGI entry point ------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self._admin_port is not None and self._wrong_listener(scope):
                await respond(send, 404, error_body("openai", 404, f"No route for {scope['method']} {scope['path']} here.", "unknown_route"))
                return
            route = ROUTES.get((scope["method"], scope["path"]))
            if route is not None:
                await self._model_request(route, scope, receive, send)
            else:
                await self._other_request(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    def _wrong_listener(self, scope: Scope) -> bool:
        """With ``admin_listen``: an admin path on the main listener, or anything else on the admin listener."""
        server = scope.get("server")
        on_admin_port = server is not None and server[1] == self._admin_port
        return on_admin_port != scope["path"].startswith("/admin/")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the model endpoints ----------------------------------------------------------------
    async def _model_request(self, route: tuple[str, str, str], scope: Scope, receive: Receive, send: Send) -> None:
        endpoint, protocol, upstream_path = route
        ex = Exchange(endpoint, protocol, scope)
        send = self.emitter.emitting_before_end(ex, send)
        slot: Slot | None = None
        admission: Admission | None = None
        self.metrics.in_flight += 1
        try:
            ex.key = key = self.keys.authenticate_request(ex.headers)
            slot = self.limiter.enter(key)  # concurrency counts from here, before the body is read
            body = await read_body(scope, receive, self.max_body)
            ex.payload = payload = parse_json_body(body)
            ex.model = validate_payload(endpoint, payload)
            upstream = self.router.route(ex.model)
            throttle_rpm = self.admission.screen(ex, key, scope, body)
            admission = await self.admission.admit(ex, key, upstream, throttle_rpm, slot)
            await self.relay.forward(ex, upstream, upstream_path, body, scope, receive, send)
        except GatewayError as exc:
            ex.status, ex.error = exc.status, exc.event_error
            if self.emitter.note_refusal(ex, exc.code):
                log.warning("%s %s → %d %s: %s", scope["method"], scope["path"], exc.status, exc.code, exc.message)
            headers = list(JSON_HEADERS)
            if exc.retry_after is not None:
                headers.append((b"retry-after", str(int(exc.retry_after)).encode()))
            headers.append((b"x-request-id", ex.request_id.encode()))
            with contextlib.suppress(Exception):
                await respond(send, exc.status, error_body(protocol, exc.status, exc.message, exc.code), headers)
        except ClientDisconnected:
            ex.status, ex.error = 499, "client_disconnected"
            log.info("%s %s: client disconnected, upstream request cancelled", scope["method"], scope["path"])
        except Exception as bug:  # a bug must still produce an API-shaped answer and an event
            ex.status, ex.error = 500, f"internal_error: {type(bug).__name__}"
            log.exception("%s %s: internal error", scope["method"], scope["path"])
            with contextlib.suppress(Exception):
                if ex.streaming:  # the status line is out: end the stream with an in-band error
                    await self.relay.end_stream_with_error(ex, send, 500, "The gateway failed to handle this request.")
                else:
                    await respond(send, 500, error_body(protocol, 500, "The gateway failed to handle this request.", "internal_error"))
        finally:
            self.metrics.in_flight -= 1
            if slot is not None:
                slot.release()
            if admission is not None:
                self.limiter.settle(admission, used_tokens(ex, admission.charged))
            self.metrics.observe(endpoint, ex.status, time.perf_counter() - ex.started)
            if not ex.summarised and not ex.emitted:  # no response went out (client gone): the event goes now
                self.emitter.emit_safely(ex)

    # -- everything else ------------------------------------------------------------------------
    async def _other_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/healthz" and method == "GET":
            await respond(send, 200, b'{"status":"ok"}')
        elif path == "/readyz" and method == "GET":
            await self.readiness.readyz(send)
        elif path == "/metrics" and method == "GET":
            await respond(send, 200, self.metrics.render(), [(b"content-type", b"text/plain; version=0.0.4")])
        elif path == "/v1/models" and method == "GET":
            await self.models.handle(scope, send)
        elif path == "/admin/ui" or path.startswith("/admin/ui/"):
            if self._console is None:
                # Jinja2 and the templates load on the first console request, never on the hot path.
                from distillguard.console import Console

                self._console = Console(self.admin, self.metrics)
            await self._console(scope, receive, send)
        elif path.startswith("/admin/"):
            await self.admin.handle(scope, receive, send)
        elif path == "/openapi.json" and method == "GET":
            from distillguard.gateway.openapi import openapi_json  # built from the admin models on first use

            await respond(send, 200, openapi_json())
        elif path == "/v1/distillguard/enroll" and method == "POST":
            await self.enrollment.handle(scope, receive, send)
        else:
            # A documented path with another method is a 405 with Allow; the document knows every route.
            from distillguard.gateway.openapi import allowed_methods

            protocol = "anthropic" if path.startswith("/v1/messages") else "openai"
            allowed = allowed_methods(path)
            status = 405 if allowed else 404
            message = f"{method} {path} is not supported by this gateway." if status == 405 else f"No route for {method} {path}."
            client = scope.get("client")
            if self.refusals.note(source_of(client[0] if client else None), "unknown_route", status, "unknown_route", authenticated=False):
                log.warning("%s %s → %d", method, path, status)  # the path is cut to 200 characters by the log formatter
            headers = [*JSON_HEADERS, (b"allow", ", ".join(allowed).encode())] if allowed else JSON_HEADERS
            await respond(send, status, error_body(protocol, status, message, "unknown_route"), headers)


def _sink_count(sink: EventSinkProtocol, name: str) -> float:
    """One of the sink's counters, for a /metrics gauge (registered only for a sink that keeps stats); 0 when it has
    no such counter (the write-ahead log's, without a log)."""
    stats = sink.stats
    return float(stats.get(name) or 0) if stats is not None else 0.0
