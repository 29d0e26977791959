"""Events out of the gateway: one per request, a minimal one when building it fails, and refusal summaries.

Every request that reached a model endpoint (or ``GET /v1/models``) ends here,
in ``finally``: the event goes to the sink and to the policy engine's
``observe``. A repeated unauthenticated refusal (an invalid-key flood) gets no
event of its own: :meth:`Emitter.note_refusal` counts it in a per-source
window (gateway/refusals.py) whose summary event says how many there were
(docs/events.md). Addresses obey ``privacy.ip_mode`` here, and prompt text
``privacy.prompt_mode``, so no other module needs to know either.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from typing import Any

from distillguard.config import Settings
from distillguard.events import new_request_id
from distillguard.gateway.exchange import Exchange
from distillguard.gateway.refusals import OVERFLOW, RefusalWindows, Window, source_of
from distillguard.gateway.requests import redact_text, request_part
from distillguard.gateway.translate import anthropic_stop_reason
from distillguard.gateway.types import EventSinkProtocol, Message, PolicyEngineProtocol, Send
from distillguard.gateway.wire import header
from distillguard.signals.network import client_ip, protect_ip

__all__ = ["LOGGED_ONLY", "Emitter"]

log = logging.getLogger("distillguard.gateway")

LOGGED_ONLY = frozenset(("unknown_route", "distillguard.enroll"))  # refusals summarised in the log; these requests have no events


def latency_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``perf_counter`` reading), to hundredths, as events record them.

    Not ``round(x, 2)``: for a float that goes through its decimal digits, ~0.6 µs per request, as much as building
    the rest of the response part; this is the same value (half-way cases round up rather than to even)."""
    return math.floor((time.perf_counter() - started) * 100_000 + 0.5) / 100


class Emitter:
    """Builds and hands on the gateway's events; see the module docstring."""

    def __init__(self, settings: Settings, sink: EventSinkProtocol | None, policy: PolicyEngineProtocol | None,
                 refusals: RefusalWindows) -> None:
        self.settings = settings
        self.sink = sink
        self.policy = policy
        self.refusals = refusals
        self.prompt_mode = settings.privacy.prompt_mode
        self.hash_key = settings.privacy.hash_key.encode()
        self._trusted = [ipaddress.ip_network(cidr, strict=False) for cidr in settings.network.trusted_proxies]

    # -- refusals: logged and stored once per source (or key) per window, then summarised -------------
    def note_refusal(self, ex: Exchange, code: str) -> bool:
        """Count a refusal (gateway/refusals.py); True when it is the first of its window: log it (and store its event).

        A repeated *unauthenticated* refusal is marked ``summarised``: it gets
        no event of its own, its window's summary event counts it.
        """
        key = ex.key
        if key is not None:
            return self.refusals.note(key.key_id, ex.endpoint, ex.status, code, authenticated=True)
        ua = header(ex.headers, b"user-agent")
        first = self.refusals.note(source_of(self.client_ip(ex)), ex.endpoint, ex.status, code, authenticated=False,
                                   user_agent=ua.decode("latin-1")[:200] if ua else None)
        ex.summarised = not first
        return first

    def stored_ip(self, ip: str | None) -> str | None:
        """An address as the event log may keep it (privacy.ip_mode: full, truncated or keyed hash; docs/signals.md)."""
        return protect_ip(ip, self.settings.privacy.ip_mode, self.hash_key)

    def client_ip(self, ex: Exchange) -> str | None:
        if not self._trusted or ex.peer is None:
            return ex.peer
        forwarded = {k.decode("latin-1"): v.decode("latin-1") for k, v in ex.headers if k in (b"forwarded", b"x-forwarded-for")}
        return client_ip(ex.peer, forwarded, self._trusted)

    def summarise_window(self, window: Window) -> None:
        """One WARNING line for a window's repeated refusals and, when unauthenticated, one summary event (docs/events.md)."""
        whom = f"key {window.who}" if window.authenticated else f"source {window.who}"
        if window.who == OVERFLOW:
            whom = f"{window.new_sources} sources beyond the {self.refusals.max_windows} tracked"
        log.warning("%d more refusals on %s → %d %s from %s in %g s (first at %s, last at %s)", window.repeats, window.endpoint,
                    window.status, window.code, whom, self.refusals.interval_s, window.first_repeat_ts, window.last_ts)
        if window.authenticated or self.sink is None or window.endpoint in LOGGED_ONLY:
            return
        source = window.who if window.who in (OVERFLOW, "unknown") else self.stored_ip(window.who.partition("/")[0])
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

    # -- request events -------------------------------------------------------------------------
    def emitting_before_end(self, ex: Exchange, send: Send) -> Send:
        """``send``, except that the exchange's event goes to the sink with the response's last bytes.

        With the sink's write-ahead log (``durable_on_submit``) the event goes
        just *before* them, which puts it in a local file before the client has
        its whole answer (the final JSON body, or a stream's terminal chunk): a
        request the client saw complete has its event even if the process is
        killed right after (docs/store.md). Without one nothing is gained by
        waiting, so the event is built just *after* them, and building it
        (~10-15 µs) is not part of the answer's latency.

        One wrapper for both orders: which one is decided here, once per
        request, and the wrapper tests a local boolean only on the last body
        message. It replaced two near-identical closures; the wrapper alone
        costs 0.05-0.1 µs more per request than they did, under 0.1 % of a
        request's gateway CPU (``bench/emission_wrapper.py``; bench/RESULTS.md,
        "One send wrapper").
        """
        sink = self.sink
        before = sink is not None and sink.durable_on_submit

        async def send_emitting(message: Message) -> None:
            if ex.emitted or message["type"] != "http.response.body" or message.get("more_body"):
                await send(message)
                return
            if not before:
                await send(message)  # a failed send leaves ``emitted`` False: the request's ``finally`` emits instead
            ex.emitted = True
            if not ex.summarised:
                self.emit_safely(ex)
            if before:
                await send(message)

        return send_emitting

    def emit_safely(self, ex: Exchange) -> None:
        """:meth:`emit`, and if building the event fails (a bug), a minimal event instead: none is ever dropped."""
        try:
            self.emit(ex)
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
                             "finish_reason": None, "latency_ms": latency_ms(ex.started),
                             "error": ex.error or f"event_error: {type(exc).__name__}"},
                "policy": {"action": "allow", "rule": None}, "watermark": {"key_id": ex.watermark_key},
            }
            if self.sink is not None:
                self.sink.submit(event)

    def emit(self, ex: Exchange) -> None:
        key = ex.key
        summary = ex.summary
        signals = ex.signals
        if signals is not None:
            client = signals.client
            attestation = signals.attestation
        else:
            ua = header(ex.headers, b"user-agent")  # a refusal before signals: the address still obeys privacy.ip_mode
            client = {"ip": self.stored_ip(self.client_ip(ex)), "user_agent": ua.decode("latin-1") if ua else None, "header_fp": None,
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
                "latency_ms": latency_ms(ex.started),
                "error": ex.error,
            },
            "policy": policy,
            "watermark": {"key_id": ex.watermark_key},
        }
        if signals is not None and signals.signals:
            event["signals"] = signals.signals
        if ex.canary is not None:
            event["canary"] = ex.canary
        if self.sink is not None:
            self.sink.submit(event)
        if self.policy is not None:
            self.policy.observe(event)
