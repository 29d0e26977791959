"""Proxying: a model request's body to the upstream, and the upstream's answer back to the client, streams chunk by chunk.

Everything between "admitted" and "answered": the body is adjusted for the
upstream (Anthropic → OpenAI translation, the policy's logprob cap, stream
usage, the watermark's ``logit_bias``), sent over the upstream transport, and
the answer relayed — JSON re-serialised only when something in it changed,
SSE chunk by chunk through the stream readers (gateway/responses.py), which
summarise it for the event and strip or summarise a degraded account's
reasoning. Upstream failures become API-shaped errors before the status line
and in-band error events after it; the client going away cancels the upstream
request (gateway/disconnect.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from distillguard.gateway.disconnect import DisconnectWatcher
from distillguard.gateway.errors import (
    GatewayError,
    error_body,
    json_object,
    mask_secrets,
    upstream_error_body,
    upstream_error_excerpt,
)
from distillguard.gateway.exchange import Exchange
from distillguard.gateway.metrics import Metrics
from distillguard.gateway.requests import cap_logprobs, estimate_prompt_tokens
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
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from distillguard.gateway.types import (
    CanaryPlanterProtocol,
    PolicyEngineProtocol,
    Receive,
    Scope,
    Send,
    StreamCanaryProtocol,
    UpstreamResponseProtocol,
    UpstreamTransportProtocol,
    WatermarkerProtocol,
)
from distillguard.gateway.upstream import Upstream
from distillguard.gateway.upstream_http import (
    UpstreamBadResponse,
    UpstreamBusy,
    UpstreamDisconnected,
    UpstreamProtocolError,
    UpstreamUnreachable,
)
from distillguard.gateway.wire import SSE_HEADERS, ClientDisconnected, header, respond

if TYPE_CHECKING:
    from distillguard.canary.stream import AnswerShape

__all__ = ["Relay"]

log = logging.getLogger("distillguard.gateway")

JSON_REQUEST_LINE = b"Content-Type: application/json\r\n"


class Relay:
    """Forwards admitted requests and relays the answers; see the module docstring.

    ``note_refusal`` is the event emitter's (an upstream's 4xx/5xx is logged
    once per key and window, like the gateway's own refusals).
    """

    def __init__(self, client: UpstreamTransportProtocol, metrics: Metrics, policy: PolicyEngineProtocol | None,
                 watermarker: WatermarkerProtocol | None, note_refusal: Callable[[Exchange, str], bool],
                 canaries: CanaryPlanterProtocol | None = None) -> None:
        self.client = client
        self.canaries = canaries
        self.metrics = metrics
        self.policy = policy
        self.watermarker = watermarker
        self.note_refusal = note_refusal

    def _prepare_upstream_body(self, ex: Exchange, upstream: Upstream, body: bytes) -> tuple[bytes, bool]:
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

    async def forward(self, ex: Exchange, upstream: Upstream, path: str, body: bytes, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the admitted request to ``upstream`` and relay its answer; raises :class:`GatewayError` before the status line."""
        if ex.endpoint == "anthropic.count_tokens" and upstream.protocol == "openai":
            await self._estimate_tokens(ex, send)
            return
        upstream_body, translate = self._prepare_upstream_body(ex, upstream, body)
        ex.translated = translate
        headers = JSON_REQUEST_LINE + upstream.auth_lines
        if upstream.protocol == "anthropic":
            version = header(ex.headers, b"anthropic-version") or b"2023-06-01"
            headers += b"anthropic-version: " + _header_value(version) + b"\r\n"
            beta = header(ex.headers, b"anthropic-beta")
            if beta:
                headers += b"anthropic-beta: " + _header_value(beta) + b"\r\n"
        if translate and path == "/messages":
            path = "/chat/completions"
        # The exchange runs in this task; a watcher cancels it when the client goes away,
        # which closes the upstream connection so the model server stops generating.
        task = asyncio.current_task()
        assert task is not None
        watcher = DisconnectWatcher(scope, receive, task)
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
        self, ex: Exchange, upstream: Upstream, path: bytes, headers: bytes, body: bytes, translate: bool, send: Send
    ) -> None:
        client = self.client
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
        except (UpstreamUnreachable, UpstreamDisconnected) as lost:
            self.metrics.upstream_errors[(upstream.name, "connect")] += 1
            if ex.streaming:  # the stream had started: end it with an in-band error event
                ex.status, ex.error = 502, "upstream_disconnected_mid_stream"
                log.warning("upstream %s dropped mid-stream: %s", upstream.name, lost)
                await self.end_stream_with_error(ex, send, 502, "The upstream model server dropped the stream.")
                return
            raise GatewayError(502, f"The upstream model server '{upstream.name}' could not be reached ({type(lost).__name__}).", "upstream_unreachable") from None
        except TimeoutError:
            self.metrics.upstream_errors[(upstream.name, "timeout")] += 1
            if ex.streaming:
                ex.status, ex.error = 504, "upstream_timeout_mid_stream"
                log.warning("upstream %s timed out mid-stream", upstream.name)
                await self.end_stream_with_error(ex, send, 504, "The upstream model server stopped sending.")
                return
            raise GatewayError(504, f"The upstream model server '{upstream.name}' did not answer within {upstream.settings.timeout_s:g}s.", "upstream_timeout") from None
        except UpstreamBadResponse as broken:
            self.metrics.upstream_errors[(upstream.name, "payload")] += 1
            what = "upstream_protocol_error" if isinstance(broken, UpstreamProtocolError) else "upstream_bad_response"
            log.warning("upstream %s broke the protocol for %s (%s): %s", upstream.name, ex.endpoint,
                        "mid-stream" if ex.streaming else "before answering", broken)
            if ex.streaming:
                ex.status, ex.error = 502, f"{what}: {broken}"
                await self.end_stream_with_error(ex, send, 502, f"The upstream model server sent a broken stream ({broken}).")
                return
            raise GatewayError(502, f"The upstream model server '{upstream.name}' sent a broken response ({broken}).", what,
                               detail=str(broken)) from None

    @staticmethod
    async def end_stream_with_error(ex: Exchange, send: Send, status: int, message: str) -> None:
        body = error_body(ex.protocol, status, message, "upstream_stream_error")
        event = (b"event: error\ndata: " if ex.protocol == "anthropic" else b"data: ") + body + b"\n\n"
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": event, "more_body": False})

    async def _relay_stream(self, ex: Exchange, resp: UpstreamResponseProtocol, translate: bool, reasoning: str, send: Send) -> None:
        strip, summarize = reasoning != "keep", reasoning == "summarize"
        reader: OpenAIStreamReader | AnthropicStreamReader | ResponsesStreamReader
        if ex.endpoint == "openai.responses":  # a degraded account's reasoning is stripped, not summarised, here
            reader = ResponsesStreamReader(strip_reasoning=strip)
        elif ex.protocol == "openai" or translate:
            reader = OpenAIStreamReader(strip_reasoning=strip, summarize_reasoning=summarize)
        else:
            reader = AnthropicStreamReader(strip_reasoning=strip, summarize_reasoning=summarize)
        ex.summary = reader.summary
        canary = None
        if self.canaries is not None:  # a trigger prompt's stream gets a filter that plants the canary where it ends
            canary = self.canaries.for_stream(ex.endpoint, ex.payload, reader.summary.text_parts, shape=_answer_shape(ex, translate),
                                              action=ex.decision.action if ex.decision is not None else "allow")
        await self._relay_stream_body(ex, resp, reader, canary, translate, send)

    async def _relay_stream_body(self, ex: Exchange, resp: UpstreamResponseProtocol,
                                 reader: OpenAIStreamReader | AnthropicStreamReader | ResponsesStreamReader,
                                 canary: StreamCanaryProtocol | None, translate: bool, send: Send) -> None:
        translator = StreamTranslator(ex.model or "", estimate_prompt_tokens(ex.endpoint, ex.payload or {})) if translate else None
        ex.status = 200
        ex.streaming = True
        await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, (b"x-request-id", ex.request_id.encode())]})
        tail = b""
        usage_filter = UsageChunkFilter() if ex.hide_usage else None
        tracks_usage = isinstance(reader, OpenAIStreamReader)  # the reader that says when a usage object has come
        while (chunk := await resp.next_chunk()) is not None:
            out = reader.feed(chunk)
            if canary is not None:
                out = canary.feed(out)
                if canary.planted:  # the event goes out with the stream's last write: it must know by then
                    ex.canary = canary.info
            if translator is not None:
                out = translator.feed(out)
            elif usage_filter is not None:
                out = usage_filter.feed(out, reader.usage_seen or not tracks_usage)
            if resp.at_eof:  # the last piece: send it with the end of the stream, in one write
                tail = out
                break
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
        rest = reader.flush()
        if canary is not None:
            rest = canary.feed(rest) + canary.flush()
            if canary.planted:
                ex.canary = canary.info
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
        self, ex: Exchange, upstream: Upstream, status: int, content_type: str, raw: bytes, translate: bool, reasoning: str, send: Send
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
        planted = False
        if self.canaries is not None:  # before the summary, so the event holds the answer as the caller gets it
            ex.canary = self.canaries.plant(ex.endpoint, ex.payload, parsed, shape=_answer_shape(ex, translate),
                                            action=ex.decision.action if ex.decision is not None else "allow")
            planted = ex.canary is not None
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
        out = orjson.dumps(parsed) if changed or planted else raw
        headers = [(b"content-type", content_type.encode() or b"application/json"), (b"x-request-id", ex.request_id.encode())]
        ex.status = status
        await respond(send, status, out, headers)

    async def _relay_error(
        self, ex: Exchange, upstream: Upstream, status: int, content_type: str, raw: bytes, translate: bool, send: Send
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
        first = self.note_refusal(ex, ex.error)  # logged once per key and window, then summarised
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
        await respond(send, status, raw, [(b"content-type", b"application/json"), (b"x-request-id", ex.request_id.encode())])

    async def _estimate_tokens(self, ex: Exchange, send: Send) -> None:
        ex.status = 200
        ex.summary = ResponseSummary()
        ex.summary.prompt_tokens = estimate_prompt_tokens(ex.endpoint, ex.payload or {})
        ex.summary.completion_tokens = 0
        await respond(send, 200, orjson.dumps({"input_tokens": ex.summary.prompt_tokens}))


def _answer_shape(ex: Exchange, translate: bool) -> AnswerShape:
    """How the upstream's answer is laid out where the canary is planted (before an OpenAI → Anthropic translation)."""
    if ex.endpoint == "openai.responses":
        return "responses"
    return "anthropic" if ex.protocol == "anthropic" and not translate else "openai"


def _body_kind(raw: bytes) -> str:
    """How an upstream body that should have been a JSON object looks, for the error (not its text: it may echo secrets)."""
    if not raw.strip():
        return "an empty body"
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"{len(raw)} bytes that are not JSON (truncated or not JSON at all)"
    return "a JSON " + type(value).__name__.replace("dict", "object").replace("NoneType", "null")


def _header_value(value: bytes) -> bytes:
    """A client-supplied header value made safe to copy into our request (no line breaks)."""
    return value.replace(b"\r", b"").replace(b"\n", b"")
