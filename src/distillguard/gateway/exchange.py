"""One proxied request's record: what it accumulates on its way through, and what it finally costs.

Every stage of a model request (admission, relay, event emission) reads and
writes the same :class:`Exchange`, so the event built at the end describes
exactly what happened, whichever stage stopped the request. Kept apart from
the stages so that none of them imports another to share it.
"""

from __future__ import annotations

import time
from typing import Any

from distillguard.events import format_ts, new_request_id
from distillguard.gateway.responses import ResponseSummary
from distillguard.gateway.types import ClientSignals, PolicyDecision, Scope
from distillguard.store.registry import KeyRecord

__all__ = ["Exchange", "used_tokens"]


class Exchange:
    """Everything one request accumulates on its way through, for its event."""

    __slots__ = (
        "endpoint", "protocol", "started", "key", "payload", "model", "status", "summary", "error",
        "signals", "decision", "watermark_key", "request_id", "peer", "headers", "ts", "translated", "finished",
        "streaming", "hide_usage", "summarised", "emitted", "canary",
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
        self.canary: dict[str, str] | None = None  # {"key_id", "trigger"} when a canary was planted in the answer
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


def used_tokens(ex: Exchange, charged: int) -> int:
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
