"""The gateway: a raw ASGI application (no framework) in front of model servers.

Per request, in memory only: authenticate (key table), read and validate the
body, route the model, collect client signals, ask the policy, admit through the
limits, forward to the upstream and relay the answer (streams chunk by chunk),
then hand one event to the sink and the online scorer. Nothing on this path
touches a database, a file, or the analytics stack.

Written against ASGI directly rather than a framework because a streaming proxy
needs exact control of ``receive``/``send`` (client disconnects, chunk timing)
and because every microsecond of framework per request shows in the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from distillguard.config import Settings
from distillguard.events import format_ts, new_request_id
from distillguard.exceptions import EnrollmentError
from distillguard.gateway.auth import KeyTable, extract_secret
from distillguard.gateway.errors import (
    GatewayError,
    error_body,
    json_object,
    mask_secrets,
    upstream_error_body,
    upstream_error_excerpt,
)
from distillguard.gateway.health import UpstreamHealth
from distillguard.gateway.limits import Limiter, Slot
from distillguard.gateway.metrics import SAMPLE_EVERY_S, Metrics
from distillguard.gateway.prompt_tokens import PromptCounter
from distillguard.gateway.refusals import OVERFLOW, RefusalWindows, Window, source_of
from distillguard.gateway.requests import (
    cap_logprobs,
    estimate_prompt_tokens,
    parse_json_body,
    redact_text,
    request_part,
    validate_payload,
)
from distillguard.gateway.responses import (
    AnthropicStreamReader,
    OpenAIStreamReader,
    ResponsesStreamReader,
    ResponseSummary,
    summarise_anthropic,
    summarise_openai,
    summarise_responses,
)
from distillguard.gateway.stream_usage import UsageChunkFilter, ask_stream_usage
from distillguard.gateway.translate import (
    StreamTranslator,
    anthropic_stop_reason,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from distillguard.gateway.types import (
    AdminPluginProtocol,
    ClientSignals,
    EventSinkProtocol,
    KeyRegistryProtocol,
    Message,
    PolicyDecision,
    PolicyEngineProtocol,
    Receive,
    Scope,
    Send,
    SignalCollectorProtocol,
    UpstreamResponseProtocol,
    UpstreamTransportProtocol,
    WatermarkerProtocol,
)
from distillguard.gateway.upstream import Router, Upstream
from distillguard.gateway.upstream_http import (
    UpstreamBadResponse,
    UpstreamBusy,
    UpstreamClient,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamUnreachable,
)
from distillguard.signals.network import client_ip, protect_ip
from distillguard.state import Admission, open_state
from distillguard.store.registry import KeyRecord

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
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
JSON_REQUEST_LINE = b"Content-Type: application/json\r\n"
LOGGED_ONLY = frozenset(("unknown_route", "distillguard.enroll"))  # refusals summarised in the log; these requests have no events
REFUSAL_WINDOW_S = 10.0  # refusals are logged and (unauthenticated) stored once per source per window, then summarised
READYZ_TTL_S = 5.0  # /readyz reuses one round of upstream probes for this long
MODEL_LIST_TTL_S = 30.0  # GET /v1/models reuses the upstreams' own model lists for this long


class ClientDisconnected(Exception):
    """The client went away before the response was complete."""


class _Exchange:
    """Everything one request accumulates on its way through, for its event."""

    __slots__ = (
        "endpoint", "protocol", "started", "key", "payload", "model", "status", "summary", "error",
        "signals", "decision", "watermark_key", "request_id", "peer", "headers", "ts", "translated", "finished",
        "streaming", "hide_usage", "summarised", "emitted",
    )

    def __init__(self, endpoint: str, protocol: str, scope: Scope) -> None:
        self.endpoint = endpoint
        self.protocol = protocol
        self.started = time.perf_counter()
        self.ts = format_ts()
        self.key: KeyRecord | None = None
        self.payload: dict[str, Any] | None = None
        self.model: str | None = None
        self.status = 500
        self.summary: ResponseSummary | None = None
        self.error: str | None = None
        self.signals: ClientSignals | None = None
        self.decision: PolicyDecision | None = None
        self.watermark_key: str | None = None
        self.translated = False  # Anthropic caller, OpenAI upstream
        self.finished = False  # the whole response has been handed to the server
        self.streaming = False  # a stream's status line has gone out: errors now end it in-band
        self.hide_usage = False  # we asked an OpenAI upstream for stream usage the client did not ask for
        self.summarised = False  # a repeated unauthenticated refusal: counted in a summary event, no event of its own
        self.emitted = False  # the event has gone to the sink (just before the response's last bytes)
        self.request_id = new_request_id()
        client = scope.get("client")
        self.peer = client[0] if client else None
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


class Gateway:
    """The ASGI application. Optional components are ``None`` when not configured."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: KeyRegistryProtocol | None = None,
        sink: EventSinkProtocol | None = None,
        signals: SignalCollectorProtocol | None = None,
        policy: PolicyEngineProtocol | None = None,
        watermarker: WatermarkerProtocol | None = None,
        admin_plugins: Sequence[AdminPluginProtocol] = (),
        transport: UpstreamTransportProtocol | None = None,
        poll_interval_s: float = 1.0,
    ) -> None:
        """``transport`` replaces the upstream client (an in-process fake in tests); by default one is made at startup."""
        self.settings = settings
        self.registry = registry
        self.sink = sink
        self.signals = signals
        self.policy = policy
        self.watermarker = watermarker
        self.admin_plugins = list(admin_plugins)
        self.poll_interval_s = poll_interval_s
        self.router = Router(settings.upstreams)
        self.keys = KeyTable()
        self.state = open_state(settings.state, settings.state_failure, settings.state_timeout_s)
        self.limiter = Limiter(settings.limits, self.state)
        self.prompt_counter = PromptCounter()
        self.metrics = Metrics()
        self.client: UpstreamTransportProtocol | None = transport
        self.max_body = settings.max_body_bytes
        self.prompt_mode = settings.privacy.prompt_mode
        self.hash_key = settings.privacy.hash_key.encode()
        self._change_counter = -1
        self._keys_lock = asyncio.Lock()
        self.full_key_loads = 0  # whole-table loads: one at start, more only when this gateway fell behind the change log
        self._poll_task: asyncio.Task[None] | None = None
        self._sample_task: asyncio.Task[None] | None = None
        self._console: Any = None  # the operators' console, imported on its first request (never on the hot path)
        self.started_at = time.time()
        self.refusals = RefusalWindows(interval_s=REFUSAL_WINDOW_S)
        self._refusal_task: asyncio.Task[None] | None = None
        self._trusted = [ipaddress.ip_network(cidr, strict=False) for cidr in settings.network.trusted_proxies]
        self.health = UpstreamHealth([u.name for u in self.router.upstreams], self._probe_upstream, ttl_s=READYZ_TTL_S)
        self._listed_models: tuple[float, dict[str, str]] | None = None
        self._listing = asyncio.Lock()
        from distillguard.gateway.admin import (  # local: admin pulls in pydantic and SQLAlchemy
            AdminAPI,
            AdminContext,
        )

        self.admin = AdminAPI(AdminContext(
            settings, registry, sink, policy, self.admin_plugins, tuple(u.name for u in self.router.upstreams),
            has_signals=signals is not None, has_watermark=watermarker is not None,
            keys_loaded=lambda: len(self.keys), refresh_keys=self.refresh_keys,
        ))
        # admin_listen: the admin API answers only on that port, and that port answers nothing else.
        self._admin_port = int(settings.admin_listen.rpartition(":")[2]) if settings.admin_listen else None
        if sink is not None and sink.stats is not None:
            self.metrics.add_gauge("distillguard_event_queue_depth", "Events waiting to be written.", lambda: _sink_count(sink, "queued"))
            self.metrics.add_gauge("distillguard_events_written", "Events written to the store.", lambda: _sink_count(sink, "written"))
            self.metrics.add_gauge("distillguard_events_spilled", "Events spilled to local JSONL files.", lambda: _sink_count(sink, "spilled"))
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
        if self.client is None:
            self.client = UpstreamClient()
        await self.state.start()
        self._sample_task = asyncio.create_task(self._sample_metrics())
        self._refusal_task = asyncio.create_task(self._close_refusal_windows())
        if self.registry is not None:
            await self.reload_keys()
            self._poll_task = asyncio.create_task(self._poll_registry())
        if self.sink is not None:
            self.sink.start()
        if self.policy is not None:
            self.policy.start()

    async def shutdown(self) -> None:
        for task in (self._poll_task, self._sample_task, self._refusal_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.health.close()
        for window in self.refusals.close(everything=True):  # before the sink drains: the summaries are events too
            self._summarise_window(window)
        if self.client is not None:
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
        self.limiter.reset_cache()
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
            self.limiter.reset_cache(r.key_id for r in delta.records)
            await self._reload_overrides()
            self._change_counter = delta.counter

    async def _reload_overrides(self) -> None:
        if self.policy is not None:
            await asyncio.to_thread(self.policy.reload_overrides)  # manual overrides are registry state too

    async def _sample_metrics(self) -> None:
        """Running totals every few seconds, for the console's traffic charts."""
        while True:
            self.metrics.sample()
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def _poll_registry(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                assert self.registry is not None  # polled only with a registry
                counter = await asyncio.to_thread(self.registry.change_counter)
                if counter != self._change_counter:
                    await self.refresh_keys()
                    log.debug("key table at registry change %d: %d keys", self._change_counter, len(self.keys))
            except Exception as exc:  # a DB hiccup must not kill the poller
                log.warning("key table refresh failed: %s", exc)

    # -- ASGI entry point ------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self._admin_port is not None and self._wrong_listener(scope):
                await self._respond(send, 404, error_body("openai", 404, f"No route for {scope['method']} {scope['path']} here.", "unknown_route"))
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

    # -- small responses ----------------------------------------------------------------
    @staticmethod
    async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = JSON_HEADERS) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _header(scope["headers"], b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise GatewayError(413, f"Request body of {int(declared)} bytes exceeds the limit of {self.max_body} bytes.", "body_too_large")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_body:
                    raise GatewayError(413, f"Request body exceeds the limit of {self.max_body} bytes.", "body_too_large")
                chunks.append(chunk)
            if not message.get("more_body"):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- the model endpoints ----------------------------------------------------------------
    async def _model_request(self, route: tuple[str, str, str], scope: Scope, receive: Receive, send: Send) -> None:
        endpoint, protocol, upstream_path = route
        ex = _Exchange(endpoint, protocol, scope)
        send = self._emitting_before_end(ex, send)
        slot: Slot | None = None
        admission: Admission | None = None
        self.metrics.in_flight += 1
        try:
            headers = ex.headers
            ex.key = key = self.keys.authenticate(extract_secret(_header(headers, b"authorization"), _header(headers, b"x-api-key")))
            slot = self.limiter.enter(key)  # concurrency counts from here, before the body is read
            body = await self._read_body(scope, receive)
            ex.payload = payload = parse_json_body(body)
            ex.model = validate_payload(endpoint, payload)
            upstream = self.router.route(ex.model)
            if self.signals is not None:
                ex.signals = self.signals.collect(
                    scope["method"], scope["path"] + ("?" + scope["query_string"].decode() if scope.get("query_string") else ""),
                    headers, ex.peer, body, key_id=key.key_id, account_id=key.account_id,
                )
                self.metrics.attestations[(ex.signals.attestation or {}).get("status", "none")] += 1
                if ex.signals.region_denied:
                    raise GatewayError(403, ex.signals.region_denied, "region_not_supported")
            throttle_rpm = None
            if self.policy is not None:
                ex.decision = decision = self.policy.decide(key.account_id, key.key_id, ex.signals)
                self.metrics.policy_actions[decision.action] += 1
                if decision.action == "block":
                    raise GatewayError(403, decision.message or "This account is blocked.", "account_blocked")
                if decision.action == "challenge":
                    raise GatewayError(403, decision.message or "This request needs a valid client attestation.", "attestation_required")
                if decision.action == "throttle":
                    throttle_rpm = decision.throttle_rpm or self.settings.detection.throttle_requests_per_min
            admission = await self._admit(ex, key, upstream, throttle_rpm)
            await self._forward(ex, upstream, upstream_path, body, scope, receive, send)
        except GatewayError as exc:
            ex.status, ex.error = exc.status, exc.event_error
            if self._note_refusal(ex, exc.code):
                log.warning("%s %s → %d %s: %s", scope["method"], scope["path"], exc.status, exc.code, exc.message)
            headers = list(JSON_HEADERS)
            if exc.retry_after is not None:
                headers.append((b"retry-after", str(int(exc.retry_after)).encode()))
            headers.append((b"x-request-id", ex.request_id.encode()))
            with contextlib.suppress(Exception):
                await self._respond(send, exc.status, error_body(protocol, exc.status, exc.message, exc.code), headers)
        except ClientDisconnected:
            ex.status, ex.error = 499, "client_disconnected"
            log.info("%s %s: client disconnected, upstream request cancelled", scope["method"], scope["path"])
        except Exception as exc:  # a bug must still produce an API-shaped answer and an event
            ex.status, ex.error = 500, f"internal_error: {type(exc).__name__}"
            log.exception("%s %s: internal error", scope["method"], scope["path"])
            with contextlib.suppress(Exception):
                if ex.streaming:  # the status line is out: end the stream with an in-band error
                    await self._end_stream_with_error(ex, send, 500, "The gateway failed to handle this request.")
                else:
                    await self._respond(send, 500, error_body(protocol, 500, "The gateway failed to handle this request.", "internal_error"))
        finally:
            self.metrics.in_flight -= 1
            if slot is not None:
                slot.release()
            if admission is not None:
                self.limiter.settle(admission, _used_tokens(ex, admission.charged))
            self.metrics.observe(endpoint, ex.status, time.perf_counter() - ex.started)
            if not ex.summarised and not ex.emitted:  # no response went out (client gone): the event goes now
                self._emit_safely(ex)

    # -- refusals: logged and stored once per source (or key) per window, then summarised -------------
    def _note_refusal(self, ex: _Exchange, code: str) -> bool:
        """Count a refusal (gateway/refusals.py); True when it is the first of its window: log it (and store its event).

        A repeated *unauthenticated* refusal is marked ``summarised``: it gets
        no event of its own, its window's summary event counts it.
        """
        key = ex.key
        if key is not None:
            return self.refusals.note(key.key_id, ex.endpoint, ex.status, code, authenticated=True)
        ua = _header(ex.headers, b"user-agent")
        first = self.refusals.note(source_of(self._client_ip(ex)), ex.endpoint, ex.status, code, authenticated=False,
                                   user_agent=ua.decode("latin-1")[:200] if ua else None)
        ex.summarised = not first
        return first

    def _stored_ip(self, ip: str | None) -> str | None:
        """An address as the event log may keep it (privacy.ip_mode: full, truncated or keyed hash; docs/signals.md)."""
        return protect_ip(ip, self.settings.privacy.ip_mode, self.hash_key)

    def _client_ip(self, ex: _Exchange) -> str | None:
        if not self._trusted or ex.peer is None:
            return ex.peer
        forwarded = {k.decode("latin-1"): v.decode("latin-1") for k, v in ex.headers if k in (b"forwarded", b"x-forwarded-for")}
        return client_ip(ex.peer, forwarded, self._trusted)

    async def _close_refusal_windows(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for window in self.refusals.close():
                self._summarise_window(window)

    def _summarise_window(self, window: Window) -> None:
        """One WARNING line for a window's repeated refusals and, when unauthenticated, one summary event (docs/events.md)."""
        whom = f"key {window.who}" if window.authenticated else f"source {window.who}"
        if window.who == OVERFLOW:
            whom = f"{window.new_sources} sources beyond the {self.refusals.max_windows} tracked"
        log.warning("%d more refusals on %s → %d %s from %s in %g s (first at %s, last at %s)", window.repeats, window.endpoint,
                    window.status, window.code, whom, self.refusals.interval_s, window.first_repeat_ts, window.last_ts)
        if window.authenticated or self.sink is None or window.endpoint in LOGGED_ONLY:
            return
        source = window.who if window.who in (OVERFLOW, "unknown") else self._stored_ip(window.who.partition("/")[0])
        aggregate: dict[str, Any] = {"count": window.repeats, "first_ts": window.first_repeat_ts, "last_ts": window.last_ts,
                                     "interval_s": self.refusals.interval_s, "source": source}
        if window.who == OVERFLOW:
            aggregate["new_sources"] = window.new_sources
        self.sink.submit({
            "v": 1, "ts": window.first_repeat_ts, "request_id": new_request_id(), "account_id": None, "key_id": None, "org_id": None,
            "endpoint": window.endpoint, "model": None,
            "client": {"ip": source if window.who not in (OVERFLOW, "unknown") else None, "user_agent": window.user_agent,
                       "header_fp": None, "geo": {"country": None, "asn": None, "hosting": None}},
            "attestation": None, "request": {"system": None, "messages": [], "params": {}},
            "response": {"status": window.status, "text": None, "reasoning_chars": 0, "prompt_tokens": None, "completion_tokens": None,
                         "finish_reason": None, "latency_ms": None, "error": window.code},
            "policy": {"action": "allow", "rule": None}, "watermark": {"key_id": None},
            "aggregate": aggregate,
        })

    async def _admit(self, ex: _Exchange, key: KeyRecord, upstream: Upstream, throttle_rpm: int | None) -> Admission:
        """Charge the prompt against the limits (with a shared nonce cache, check the attestation's nonce in the same call)."""
        # count_tokens asks the upstream to count, not to generate: a request, but no tokens
        tokens = 0 if ex.endpoint == "anthropic.count_tokens" else self.prompt_counter.count(ex.payload or {}, upstream.settings.tokenizer)
        signals = ex.signals
        collector = self.signals
        nonce = signals.nonce if signals is not None and collector is not None else None
        admission = await self.limiter.admit(key, tokens, ex.request_id, throttle_rpm=throttle_rpm,
                                             nonce=(nonce, collector.nonce_ttl_ms) if nonce and collector is not None else None)
        if admission is not None:
            return admission
        # The attestation was replayed (seen by some replica before): decide again as if it had been caught locally.
        assert collector is not None  # only a nonce makes admit answer None
        collector.mark_replayed(signals)
        self.metrics.attestations["valid"] -= 1
        self.metrics.attestations["replayed"] += 1
        if self.policy is not None:
            ex.decision = decision = self.policy.decide(key.account_id, key.key_id, signals)
            if decision.action in ("block", "challenge"):
                raise GatewayError(403, decision.message or "This request needs a valid client attestation.",
                                   "account_blocked" if decision.action == "block" else "attestation_required")
            if decision.action == "throttle":
                throttle_rpm = decision.throttle_rpm or self.settings.detection.throttle_requests_per_min
        admission = await self.limiter.admit(key, tokens, ex.request_id, throttle_rpm=throttle_rpm)
        assert admission is not None
        return admission

    def _prepare_upstream_body(self, ex: _Exchange, upstream: Upstream, body: bytes) -> tuple[bytes, bool]:
        """The bytes to send upstream and whether the stream must be translated OpenAI → Anthropic."""
        payload = ex.payload
        assert payload is not None
        modified = False
        translate = ex.protocol == "anthropic" and upstream.protocol == "openai"
        if ex.endpoint == "openai.responses" and upstream.protocol == "anthropic":
            raise GatewayError(400, f"Model '{ex.model}' is served by an Anthropic-protocol upstream, and this gateway does not "
                                    "translate the OpenAI Responses API (POST /v1/responses) to Anthropic Messages; call it with "
                                    "POST /v1/messages.", "protocol_mismatch")
        if ex.protocol == "openai" and upstream.protocol == "anthropic":
            raise GatewayError(400, f"Model '{ex.model}' is served by an Anthropic-protocol upstream; call it with POST /v1/messages.", "protocol_mismatch")
        if translate and ex.endpoint == "anthropic.messages":
            payload = anthropic_to_openai_request(payload)
            modified = True
        cap = ex.decision.max_top_logprobs if ex.decision is not None else None
        if cap is not None and cap_logprobs(payload, cap):
            modified = True
        if not translate and ex.protocol == "openai" and payload.get("stream") is True and ex.endpoint in ("openai.chat", "openai.completions"):
            ex.hide_usage = ask_stream_usage(payload)  # token limits need the stream's real usage
            modified = modified or ex.hide_usage
        watermarker = self.watermarker
        if watermarker is not None and self._marks(upstream, ex.endpoint):
            key = ex.key
            assert key is not None
            risk = self.policy.risk(key.account_id) if self.policy is not None else None
            cluster_id = risk.get("cluster_id") if risk else None  # a detected hydra gets its own key
            marked = watermarker.bias_for(upstream.name, account_id=key.account_id, org_id=key.org_id, cluster_id=cluster_id)
            if marked is not None:
                ex.watermark_key, bias = marked
                merged = {str(k): v for k, v in bias.items()}
                merged.update({str(k): v for k, v in (payload.get("logit_bias") or {}).items()})
                payload["logit_bias"] = merged
                modified = True
        if not modified:
            return body, translate
        try:
            return orjson.dumps(payload), translate
        except orjson.JSONEncodeError:  # orjson reads 1,024 levels of nesting but writes only 254
            raise GatewayError(400, "The request body is nested too deeply to forward (more than 254 levels of objects "
                                    "and arrays, e.g. in a tool's input_schema); flatten it.", "nesting_too_deep") from None

    def _marks(self, upstream: Upstream, endpoint: str) -> bool:
        """Whether this request gets the watermark's ``logit_bias``.

        Only OpenAI-protocol upstreams accept ``logit_bias``; an Anthropic
        caller routed to one (translated) is marked like any other request.
        """
        return (self.watermarker is not None and upstream.protocol == "openai" and upstream.settings.watermark == "logit_bias"
                and endpoint in ("openai.chat", "openai.completions", "anthropic.messages"))

    async def _forward(self, ex: _Exchange, upstream: Upstream, path: str, body: bytes, scope: Scope, receive: Receive, send: Send) -> None:
        if ex.endpoint == "anthropic.count_tokens" and upstream.protocol == "openai":
            await self._estimate_tokens(ex, send)
            return
        upstream_body, translate = self._prepare_upstream_body(ex, upstream, body)
        ex.translated = translate
        headers = JSON_REQUEST_LINE + upstream.auth_lines
        if upstream.protocol == "anthropic":
            version = _header(ex.headers, b"anthropic-version") or b"2023-06-01"
            headers += b"anthropic-version: " + _header_value(version) + b"\r\n"
            beta = _header(ex.headers, b"anthropic-beta")
            if beta:
                headers += b"anthropic-beta: " + _header_value(beta) + b"\r\n"
        if translate and path == "/messages":
            path = "/chat/completions"
        # The exchange runs in this task; a watcher cancels it when the client goes away,
        # which closes the upstream connection so the model server stops generating.
        task = asyncio.current_task()
        assert task is not None
        watcher = _DisconnectWatcher(scope, receive, task)
        try:
            await self._exchange_with_upstream(ex, upstream, path.encode(), headers, upstream_body, translate, send)
        except asyncio.CancelledError:
            if watcher.fired:
                task.uncancel()
                if ex.finished:  # the server reports the end of a finished response as a disconnect
                    return
                raise ClientDisconnected from None
            raise
        finally:
            watcher.stop()

    async def _exchange_with_upstream(
        self, ex: _Exchange, upstream: Upstream, path: bytes, headers: bytes, body: bytes, translate: bool, send: Send
    ) -> None:
        client = self.client
        assert client is not None
        reasoning = ex.decision.reasoning if ex.decision is not None else "keep"  # or a degrade's "strip" / "summarize"
        try:
            resp = await client.request(upstream.origin, b"POST", path, headers, body,
                                        connect_timeout=upstream.connect_timeout_s, read_timeout=upstream.read_timeout_s)
            async with resp:
                content_type = resp.headers.get("content-type", "")
                if resp.status == 200 and content_type.startswith("text/event-stream"):
                    await self._relay_stream(ex, resp, translate, reasoning, send)
                else:
                    raw = await resp.read()
                    await self._relay_body(ex, upstream, resp.status, content_type, raw, translate, reasoning, send)
                ex.finished = True
        except UpstreamBusy as exc:  # only before sending: nothing has started
            self.metrics.upstream_errors[(upstream.name, "busy")] += 1
            log.warning("upstream %s: %s", upstream.name, exc)
            raise GatewayError(503, f"The upstream model server '{upstream.name}' is at its connection limit; retry shortly.",
                               "upstream_busy", retry_after=1) from None
        except (UpstreamUnreachable, UpstreamDisconnected) as exc:
            self.metrics.upstream_errors[(upstream.name, "connect")] += 1
            if ex.streaming:  # the stream had started: end it with an in-band error event
                ex.status, ex.error = 502, "upstream_disconnected_mid_stream"
                log.warning("upstream %s dropped mid-stream: %s", upstream.name, exc)
                await self._end_stream_with_error(ex, send, 502, "The upstream model server dropped the stream.")
                return
            raise GatewayError(502, f"The upstream model server '{upstream.name}' could not be reached ({type(exc).__name__}).", "upstream_unreachable") from None
        except TimeoutError:
            self.metrics.upstream_errors[(upstream.name, "timeout")] += 1
            if ex.streaming:
                ex.status, ex.error = 504, "upstream_timeout_mid_stream"
                log.warning("upstream %s timed out mid-stream", upstream.name)
                await self._end_stream_with_error(ex, send, 504, "The upstream model server stopped sending.")
                return
            raise GatewayError(504, f"The upstream model server '{upstream.name}' did not answer within {upstream.settings.timeout_s:g}s.", "upstream_timeout") from None
        except UpstreamBadResponse as exc:
            self.metrics.upstream_errors[(upstream.name, "payload")] += 1
            what = "upstream_protocol_error" if isinstance(exc, UpstreamProtocolError) else "upstream_bad_response"
            log.warning("upstream %s broke the protocol for %s (%s): %s", upstream.name, ex.endpoint,
                        "mid-stream" if ex.streaming else "before answering", exc)
            if ex.streaming:
                ex.status, ex.error = 502, f"{what}: {exc}"
                await self._end_stream_with_error(ex, send, 502, f"The upstream model server sent a broken stream ({exc}).")
                return
            raise GatewayError(502, f"The upstream model server '{upstream.name}' sent a broken response ({exc}).", what,
                               detail=str(exc)) from None

    @staticmethod
    async def _end_stream_with_error(ex: _Exchange, send: Send, status: int, message: str) -> None:
        body = error_body(ex.protocol, status, message, "upstream_stream_error")
        event = (b"event: error\ndata: " if ex.protocol == "anthropic" else b"data: ") + body + b"\n\n"
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": event, "more_body": False})

    async def _relay_stream(self, ex: _Exchange, resp: UpstreamResponseProtocol, translate: bool, reasoning: str, send: Send) -> None:
        strip, summarize = reasoning != "keep", reasoning == "summarize"
        reader: OpenAIStreamReader | AnthropicStreamReader | ResponsesStreamReader
        if ex.endpoint == "openai.responses":  # a degraded account's reasoning is stripped, not summarised, here
            reader = ResponsesStreamReader(strip_reasoning=strip)
        elif ex.protocol == "openai" or translate:
            reader = OpenAIStreamReader(strip_reasoning=strip, summarize_reasoning=summarize)
        else:
            reader = AnthropicStreamReader(strip_reasoning=strip, summarize_reasoning=summarize)
        ex.summary = reader.summary
        translator = StreamTranslator(ex.model or "", estimate_prompt_tokens(ex.endpoint, ex.payload or {})) if translate else None
        ex.status = 200
        ex.streaming = True
        await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, (b"x-request-id", ex.request_id.encode())]})
        tail = b""
        usage_filter = UsageChunkFilter() if ex.hide_usage else None
        while (chunk := await resp.next_chunk()) is not None:
            out = reader.feed(chunk)
            if translator is not None:
                out = translator.feed(out)
            elif usage_filter is not None:
                out = usage_filter.feed(out)
            if resp.at_eof:  # the last piece: send it with the end of the stream, in one write
                tail = out
                break
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
        rest = reader.flush()
        if not reader.ended:  # cut short: what arrived goes out, then the in-band error (not a made-up end)
            if translator is not None:
                rest = translator.feed(rest)
            elif usage_filter is not None:
                rest = usage_filter.feed(rest)
            if tail + rest:
                await send({"type": "http.response.body", "body": tail + rest, "more_body": True})
            raise UpstreamProtocolError("stream", reader.END, got="the end of the body")
        if translator is not None:
            rest = translator.feed(rest) + translator.finish()
            if translator.stop_reason == "tool_use":  # the event records what the client was told
                reader.summary.finish_reason = "tool_calls"
        elif usage_filter is not None:
            rest = usage_filter.feed(rest) + usage_filter.flush()
        if reader.summary.upstream_error is not None:  # relayed as sent; the event says the answer ended in an error
            ex.error = f"upstream_stream_error: {reader.summary.upstream_error}"
            log.warning("stream for %s ended with an error from the upstream: %s", ex.endpoint, reader.summary.upstream_error)
        await send({"type": "http.response.body", "body": tail + rest, "more_body": False})

    async def _relay_body(
        self, ex: _Exchange, upstream: Upstream, status: int, content_type: str, raw: bytes, translate: bool, reasoning: str, send: Send
    ) -> None:
        if status >= 400:
            ex.status = status
            await self._relay_error(ex, upstream, status, content_type, raw, translate, send)
            return
        parsed = json_object(raw)
        if parsed is None:  # a 2xx answer to an API call is always a JSON object
            raise UpstreamProtocolError("body", "a JSON object", got=_body_kind(raw))
        summary = ResponseSummary()
        strip, summarize = reasoning != "keep", reasoning == "summarize"
        if ex.protocol == "anthropic" and not translate:
            changed = summarise_anthropic(parsed, summary, strip_reasoning=strip, summarize_reasoning=summarize)
        elif ex.endpoint == "openai.responses":
            changed = summarise_responses(parsed, summary, strip_reasoning=strip, summarize_reasoning=summarize)
        else:
            changed = summarise_openai(parsed, summary, strip_reasoning=strip, summarize_reasoning=summarize)
        if translate:
            parsed = openai_to_anthropic_response(parsed, ex.model or "")
            if parsed["stop_reason"] == "tool_use":  # the event records what the client was told
                summary.finish_reason = "tool_calls"
            if strip and not summarize:  # summarised: the thinking block carries the summary
                parsed["content"] = [b for b in parsed["content"] if b["type"] != "thinking"]
            changed = True
        ex.summary = summary
        out = orjson.dumps(parsed) if changed else raw
        headers = [(b"content-type", content_type.encode() or b"application/json"), (b"x-request-id", ex.request_id.encode())]
        ex.status = status
        await self._respond(send, status, out, headers)

    async def _relay_error(
        self, ex: _Exchange, upstream: Upstream, status: int, content_type: str, raw: bytes, translate: bool, send: Send
    ) -> None:
        """An upstream's error status, passed on with a body the caller's SDK can read.

        Credentials in it are masked first (the configured upstream key and
        common key shapes, :func:`mask_secrets`). A JSON error object then goes
        through when the caller speaks the upstream's protocol. Anything else —
        a proxy's HTML 502 page, plain text, an OpenAI error for an Anthropic
        caller — is wrapped in the caller's error shape with a short excerpt,
        keeping the status.
        """
        self.metrics.upstream_errors[(upstream.name, f"http_{status}")] += 1
        ex.error = f"upstream_http_{status}"
        raw = mask_secrets(raw, upstream.secrets)  # an upstream may echo the operator's key back
        first = self._note_refusal(ex, ex.error)  # logged once per key and window, then summarised
        if not translate and json_object(raw) is not None:
            if first:
                log.warning("upstream %s answered %d for %s", upstream.name, status, ex.endpoint)
        else:
            if first and not translate:
                log.warning("upstream %s answered %d for %s with a non-JSON body (%s), wrapped as an API error: %s",
                            upstream.name, status, ex.endpoint, content_type or "no content-type", upstream_error_excerpt(raw))
            elif first:
                log.warning("upstream %s answered %d for %s (translated for an Anthropic caller): %s",
                            upstream.name, status, ex.endpoint, upstream_error_excerpt(raw))
            raw = upstream_error_body(ex.protocol, status, raw)
        await self._respond(send, status, raw, [(b"content-type", b"application/json"), (b"x-request-id", ex.request_id.encode())])

    async def _estimate_tokens(self, ex: _Exchange, send: Send) -> None:
        ex.status = 200
        ex.summary = ResponseSummary()
        ex.summary.prompt_tokens = estimate_prompt_tokens(ex.endpoint, ex.payload or {})
        ex.summary.completion_tokens = 0
        await self._respond(send, 200, orjson.dumps({"input_tokens": ex.summary.prompt_tokens}))

    # -- events -----------------------------------------------------------------------------
    def _emitting_before_end(self, ex: _Exchange, send: Send) -> Send:
        """``send``, except that the exchange's event goes to the sink just before the response's last bytes.

        With the sink's write-ahead log that puts the event in a local file
        before the client has its whole answer (the final JSON body, or a
        stream's terminal chunk): a request the client saw complete has its
        event even if the process is killed right after (docs/store.md).
        """
        async def send_emitting(message: Message) -> None:
            if not ex.emitted and message["type"] == "http.response.body" and not message.get("more_body"):
                ex.emitted = True
                if not ex.summarised:
                    self._emit_safely(ex)
            await send(message)

        return send_emitting

    def _emit_safely(self, ex: _Exchange) -> None:
        """:meth:`_emit`, and if building the event fails (a bug), a minimal event instead: none is ever dropped."""
        try:
            self._emit(ex)
        except Exception as exc:
            log.exception("building the event of %s failed; a minimal event is stored instead", ex.request_id)
            key = ex.key
            event = {
                "v": 1, "ts": ex.ts, "request_id": ex.request_id, "account_id": key.account_id if key else None,
                "key_id": key.key_id if key else None, "org_id": key.org_id if key else None, "endpoint": ex.endpoint,
                "model": ex.model if isinstance(ex.model, str) else None,
                "client": {"ip": ex.peer, "user_agent": None, "header_fp": None, "geo": {"country": None, "asn": None, "hosting": None}},
                "attestation": None, "request": {"system": None, "messages": [], "params": {}},
                "response": {"status": ex.status, "text": None, "reasoning_chars": 0, "prompt_tokens": None, "completion_tokens": None,
                             "finish_reason": None, "latency_ms": round((time.perf_counter() - ex.started) * 1000, 2),
                             "error": ex.error or f"event_error: {type(exc).__name__}"},
                "policy": {"action": "allow", "rule": None}, "watermark": {"key_id": ex.watermark_key},
            }
            if self.sink is not None:
                self.sink.submit(event)

    def _emit(self, ex: _Exchange) -> None:
        key = ex.key
        summary = ex.summary
        signals = ex.signals
        if signals is not None:
            client = signals.client
            attestation = signals.attestation
        else:
            ua = _header(ex.headers, b"user-agent")  # a refusal before signals: the address still obeys privacy.ip_mode
            client = {"ip": self._stored_ip(self._client_ip(ex)), "user_agent": ua.decode("latin-1") if ua else None, "header_fp": None,
                      "geo": {"country": None, "asn": None, "hosting": None}}
            attestation = None
        decision = ex.decision
        policy = decision.as_event() if decision is not None else {"action": "allow", "rule": None}
        text = summary.text if summary is not None else None
        if text and self.prompt_mode != "keep":
            text = redact_text(text, self.prompt_mode, self.hash_key)
        finish_reason = summary.finish_reason if summary is not None else None
        if ex.translated and finish_reason is not None:  # the client's vocabulary: what it was told
            finish_reason = anthropic_stop_reason(finish_reason)
        event = {
            "v": 1,
            "ts": ex.ts,
            "request_id": ex.request_id,
            "account_id": key.account_id if key else None,
            "key_id": key.key_id if key else None,
            "org_id": key.org_id if key else None,
            "endpoint": ex.endpoint,
            "model": ex.model,
            "client": client,
            "attestation": attestation,
            "request": request_part(ex.endpoint, ex.payload, self.prompt_mode, self.hash_key) if ex.payload is not None else {"system": None, "messages": [], "params": {}},
            "response": {
                "status": ex.status,
                "text": text,
                "reasoning_chars": summary.reasoning_chars if summary is not None else 0,
                "prompt_tokens": summary.prompt_tokens if summary is not None else None,
                "completion_tokens": summary.completion_tokens if summary is not None else None,
                "finish_reason": finish_reason,
                "latency_ms": round((time.perf_counter() - ex.started) * 1000, 2),
                "error": ex.error,
            },
            "policy": policy,
            "watermark": {"key_id": ex.watermark_key},
        }
        if signals is not None and signals.signals:
            event["signals"] = signals.signals
        if self.sink is not None:
            self.sink.submit(event)
        if self.policy is not None:
            self.policy.observe(event)

    # -- everything else ------------------------------------------------------------------------
    async def _other_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/healthz" and method == "GET":
            await self._respond(send, 200, b'{"status":"ok"}')
        elif path == "/readyz" and method == "GET":
            await self._readyz(send)
        elif path == "/metrics" and method == "GET":
            await self._respond(send, 200, self.metrics.render(), [(b"content-type", b"text/plain; version=0.0.4")])
        elif path == "/v1/models" and method == "GET":
            await self._list_models(scope, send)
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

            await self._respond(send, 200, openapi_json())
        elif path == "/v1/distillguard/enroll" and method == "POST":
            await self._enroll(scope, receive, send)
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
            await self._respond(send, status, error_body(protocol, status, message, "unknown_route"), headers)

    async def _readyz(self, send: Send) -> None:
        problems: list[str] = []
        stats = self.sink.stats if self.sink is not None else None
        if stats is not None and not stats.get("store_ok", True):  # down, or a write blocked past the sink's stall limit
            problems.append(stats.get("store_problem") or "event store unavailable (events are spilling to disk)")
        problems += await self.health.problems()  # cached: unauthenticated calls never fan out to the upstreams
        body: dict[str, Any] = {"status": "ready" if not problems else "not_ready", "problems": problems, "keys_loaded": len(self.keys)}
        scorer = self.policy.scorer_status() if self.policy is not None else None
        if scorer is not None:  # informational: a replica whose scorer is down still serves with the last decisions
            body["scorer"] = scorer
        await self._respond(send, 200 if not problems else 503, orjson.dumps(body))

    async def _probe_upstream(self, index: int) -> None:
        await self._get_from_upstream(self.router.upstreams[index], b"/models")

    async def _list_models(self, scope: Scope, send: Send) -> None:
        """``GET /v1/models``: authenticated, admitted by the limits like any request, and one event (``openai.models``)."""
        ex = _Exchange("openai.models", "openai", scope)
        send = self._emitting_before_end(ex, send)
        slot: Slot | None = None
        admission: Admission | None = None
        try:
            headers = ex.headers
            ex.key = key = self.keys.authenticate(extract_secret(_header(headers, b"authorization"), _header(headers, b"x-api-key")))
            slot = self.limiter.enter(key)
            admission = await self.limiter.admit(key, 0, ex.request_id)  # a request, no tokens
            data = [{"id": name, "object": "model", "created": int(self.started_at), "owned_by": owner}
                    for name, owner in sorted((await self._model_names()).items())]
            ex.status = 200
            await self._respond(send, 200, orjson.dumps({"object": "list", "data": data}), [*JSON_HEADERS, (b"x-request-id", ex.request_id.encode())])
        except GatewayError as exc:
            ex.status, ex.error = exc.status, exc.event_error
            if self._note_refusal(ex, exc.code):
                log.warning("GET /v1/models → %d %s: %s", exc.status, exc.code, exc.message)
            headers = [*JSON_HEADERS, (b"x-request-id", ex.request_id.encode())]
            if exc.retry_after is not None:
                headers.append((b"retry-after", str(int(exc.retry_after)).encode()))
            await self._respond(send, exc.status, error_body("openai", exc.status, exc.message, exc.code), headers)
        finally:
            if slot is not None:
                slot.release()
            if admission is not None:
                self.limiter.settle(admission, 0)
            self.metrics.observe(ex.endpoint, ex.status, time.perf_counter() - ex.started)
            if not ex.summarised and not ex.emitted:  # no response went out (client gone): the event goes now
                self._emit_safely(ex)

    async def _model_names(self) -> dict[str, str]:
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
                if any(ch in p for p in upstream.settings.models for ch in "*?[") and upstream.protocol == "openai" and self.client is not None:
                    try:
                        async with asyncio.timeout(5):
                            listed = orjson.loads(await self._get_from_upstream(upstream, b"/models"))
                        for item in listed.get("data") or []:
                            seen.setdefault(str(item.get("id")), upstream.name)
                    except Exception as exc:
                        log.warning("listing models of upstream %s failed: %s", upstream.name, exc)
            self._listed_models = (time.monotonic(), seen)
            return seen

    async def _get_from_upstream(self, upstream: Upstream, path: bytes) -> bytes:
        """GET a small document from an upstream (health, model list); any non-2xx raises."""
        client = self.client
        assert client is not None
        resp = await client.request(upstream.origin, b"GET", path, upstream.auth_lines, b"",
                                    connect_timeout=upstream.connect_timeout_s, read_timeout=upstream.read_timeout_s)
        async with resp:
            body = await resp.read()
        if not 200 <= resp.status < 300:
            raise UpstreamError(f"HTTP {resp.status}")
        return body

    async def _enroll(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope["headers"]
        key: KeyRecord | None = None
        try:
            key = self.keys.authenticate(extract_secret(_header(headers, b"authorization"), _header(headers, b"x-api-key")))
            body = await self._read_body(scope, receive)
            if self.signals is None:
                raise GatewayError(404, "Client attestation is not enabled on this gateway.", "attestation_disabled")
            try:
                result = await asyncio.to_thread(self.signals.enroll, key.key_id, key.account_id, body, api_key_sha256=key.secret_hash)
            except EnrollmentError as exc:
                raise GatewayError(exc.status, exc.message, "enrollment_failed") from None
            await self._respond(send, 200, orjson.dumps(result))
        except GatewayError as exc:
            client = scope.get("client")
            who = key.key_id if key is not None else source_of(client[0] if client else None)
            if self.refusals.note(who, "distillguard.enroll", exc.status, exc.code, authenticated=key is not None):
                log.warning("enroll → %d %s", exc.status, exc.message)
            await self._respond(send, exc.status, error_body("openai", exc.status, exc.message, exc.code))
        except ClientDisconnected:
            return


class _DisconnectWatcher:
    """Cancels ``task`` when the client disconnects.

    Under distillguard's own server, a callback registered through the
    ``distillguard.on_disconnect`` scope extension; under any other ASGI
    server, a task waiting for ``http.disconnect``.
    """

    __slots__ = ("fired", "_task", "_watch", "_unregister")

    def __init__(self, scope: Scope, receive: Receive, task: asyncio.Task[Any]) -> None:
        self.fired = False
        self._task = task
        self._watch: asyncio.Task[None] | None = None
        self._unregister: Callable[[], None] | None = None
        register = (scope.get("extensions") or {}).get("distillguard.on_disconnect")
        if register is not None:
            self._unregister = register(self._fire)
        else:
            self._watch = asyncio.get_running_loop().create_task(self._run(receive))

    def _fire(self) -> None:
        self.fired = True
        self._task.cancel()

    async def _run(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._fire()
                return

    def stop(self) -> None:
        if self._unregister is not None:
            self._unregister()
        elif self._watch is not None and not self._watch.done():
            self._watch.cancel()


def _body_kind(raw: bytes) -> str:
    """How an upstream body that should have been a JSON object looks, for the error (not its text: it may echo secrets)."""
    if not raw.strip():
        return "an empty body"
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"{len(raw)} bytes that are not JSON (truncated or not JSON at all)"
    return "a JSON " + type(value).__name__.replace("dict", "object").replace("NoneType", "null")


def _sink_count(sink: EventSinkProtocol, name: str) -> float:
    """One of the sink's counters, for a /metrics gauge (registered only for a sink that keeps stats); 0 when it has
    no such counter (the write-ahead log's, without a log)."""
    stats = sink.stats
    return float(stats.get(name) or 0) if stats is not None else 0.0


def _header_value(value: bytes) -> bytes:
    """A client-supplied header value made safe to copy into our request (no line breaks)."""
    return value.replace(b"\r", b"").replace(b"\n", b"")


def _used_tokens(ex: _Exchange, charged: int) -> int:
    """What a request finally costs against token limits: the upstream's usage, or the best estimate without it.

    The prompt estimate charged at admission stands for a prompt the upstream
    did not count; completion text without a count is estimated as UTF-8
    bytes ÷ 4. A request the upstream refused with a 4xx costs nothing; one
    that failed otherwise (timeout, dropped connection) keeps its prompt charge.
    """
    summary = ex.summary
    if ex.endpoint == "anthropic.count_tokens":
        return 0
    if summary is None:
        return 0 if (ex.error or "").startswith("upstream_http_4") else charged
    prompt = summary.prompt_tokens if isinstance(summary.prompt_tokens, int) else charged
    completion = summary.completion_tokens
    if not isinstance(completion, int):
        completion = -(-(len(summary.text.encode()) + summary.reasoning_chars) // 4)
    return max(0, prompt) + max(0, completion)
