"""Whether a model request may go upstream: client signals, the policy's decision, then the limits' admission.

Authentication and the concurrency slot come first (in ``Gateway``, before the
body is read); this module takes the request from its parsed body to an
admitted charge, raising :class:`GatewayError` for every refusal so the caller
has one place that answers and records them. Everything here reads memory
(the key table, the policy's decision cache, the limits' state) except the
limits' admission itself, which is one call to the shared state backend.
"""

from __future__ import annotations

from distillguard.config import Settings
from distillguard.gateway.errors import GatewayError
from distillguard.gateway.exchange import Exchange
from distillguard.gateway.limits import Limiter, Slot
from distillguard.gateway.metrics import Metrics
from distillguard.gateway.prompt_tokens import PromptCounter
from distillguard.gateway.types import PolicyEngineProtocol, Scope, SignalCollectorProtocol
from distillguard.gateway.upstream import Upstream
from distillguard.state import Admission
from distillguard.store.registry import KeyRecord

__all__ = ["RequestAdmission"]


class RequestAdmission:
    """Signals → policy → limits for one request; see the module docstring."""

    def __init__(self, settings: Settings, limiter: Limiter, prompt_counter: PromptCounter, metrics: Metrics,
                 signals: SignalCollectorProtocol | None, policy: PolicyEngineProtocol | None) -> None:
        self.settings = settings
        self.limiter = limiter
        self.prompt_counter = prompt_counter
        self.metrics = metrics
        self.signals = signals
        self.policy = policy

    def screen(self, ex: Exchange, key: KeyRecord, scope: Scope, body: bytes) -> int | None:
        """Collect the client signals and ask the policy; raises on a refusal, else returns a throttle's requests/min (or ``None``)."""
        if self.signals is not None:
            ex.signals = self.signals.collect(
                scope["method"], scope["path"] + ("?" + scope["query_string"].decode() if scope.get("query_string") else ""),
                ex.headers, ex.peer, body, key_id=key.key_id, account_id=key.account_id,
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
        return throttle_rpm

    async def admit(self, ex: Exchange, key: KeyRecord, upstream: Upstream, throttle_rpm: int | None, slot: Slot | None = None) -> Admission:
        """Charge the prompt against the limits (with a shared nonce cache, check the attestation's nonce in the same call).

        ``slot`` is the request's concurrency slot: its limits, resolved when it was taken, are reused.
        """
        # count_tokens asks the upstream to count, not to generate: a request, but no tokens
        tokens = 0 if ex.endpoint == "anthropic.count_tokens" else self.prompt_counter.count(ex.payload or {}, upstream.settings.tokenizer)
        signals = ex.signals
        collector = self.signals
        nonce = signals.nonce if signals is not None and collector is not None else None
        admission = await self.limiter.admit(key, tokens, ex.request_id, throttle_rpm=throttle_rpm, slot=slot,
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
        admission = await self.limiter.admit(key, tokens, ex.request_id, throttle_rpm=throttle_rpm, slot=slot)
        assert admission is not None
        return admission
