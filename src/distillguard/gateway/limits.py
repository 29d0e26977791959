"""Per-key and per-account limits as the gateway applies them: requests/min, tokens/min, concurrency, daily tokens.

A request goes through three steps:

1. :meth:`Limiter.enter`, right after authentication and before the body is
   read: the concurrency gate of this process. A request counts from its first
   byte until :meth:`Slot.release`, which runs on every exit path.
2. :meth:`Limiter.admit`, just before forwarding: the prompt is charged against
   requests/min, tokens/min and the daily quota of the key and of the account,
   in the state backend (:mod:`distillguard.state`: this process, or Redis for
   a fleet, where concurrency is also shared through leases). Refusals become
   a 429 whose ``Retry-After`` is the earliest second the same request would be
   admitted.
3. :meth:`Limiter.settle`, after the response: the real usage replaces the
   prompt estimate.

The exact window arithmetic lives in the backends; this module resolves which
limits apply (defaults, key and account overrides, a policy throttle) and turns
refusals into API errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from distillguard.config import LimitSettings
from distillguard.gateway.errors import GatewayError
from distillguard.state import (
    Admission,
    MemoryState,
    Quota,
    Refusal,
    StateBackend,
    StateUnavailable,
    retry_after_s,
)
from distillguard.store.registry import KeyRecord

__all__ = ["Limiter", "Slot"]


class Slot:
    """A request's place in this process's concurrency count, from its first byte; ``release`` is idempotent."""

    __slots__ = ("_counts", "_subjects", "quotas")

    def __init__(self, counts: dict[str, int], subjects: tuple[str, ...], quotas: tuple[Quota, Quota]) -> None:
        self._counts = counts
        self._subjects = subjects
        self.quotas = quotas  # the key's and the account's limits, resolved once for the request (admit reuses them)

    def release(self) -> None:
        counts = self._counts
        for subject in self._subjects:
            left = counts[subject] - 1
            if left:
                counts[subject] = left
            else:
                del counts[subject]
        self._subjects = ()


class Limiter:
    """Admission control for keys and accounts; one per gateway process, on its event loop (no locks)."""

    def __init__(self, defaults: LimitSettings, state: StateBackend | None = None, clock: Callable[[], float] = time.time) -> None:
        self.defaults = defaults
        backend: StateBackend = state if state is not None else MemoryState(clock)
        self.state = backend
        self._memory = backend if isinstance(backend, MemoryState) else None  # its admit needs no await
        self._running: dict[str, int] = {}

    # -- which limits apply --------------------------------------------------------------
    def _quota(self, subject: str, overrides: Mapping[str, int | None]) -> Quota:
        d = self.defaults
        if not overrides:  # most keys and accounts: the defaults
            return Quota(subject, d.requests_per_min, d.tokens_per_min, d.concurrent_requests, d.daily_tokens)
        return Quota(
            subject,
            overrides.get("requests_per_min", d.requests_per_min),
            overrides.get("tokens_per_min", d.tokens_per_min),
            overrides.get("concurrent_requests", d.concurrent_requests),
            overrides.get("daily_tokens", d.daily_tokens),
        )

    def quotas(self, key: KeyRecord, throttle_rpm: int | None = None) -> tuple[Quota, Quota]:
        """The key's and the account's limits; a policy throttle lowers the account's requests/min.

        Resolved on every request (two small objects, about a microsecond; once
        per request: :meth:`enter` keeps them in the :class:`Slot` for
        :meth:`admit`), not cached per key: a cache would be per-key memory that
        traffic spread over 100,000 keys keeps full and the garbage collector
        keeps walking (measured slower than resolving, bench/accounts_scale.py),
        and a key table change needs no invalidation.
        """
        return _throttled((self._quota("key:" + key.key_id, key.key_limits), self._quota("acct:" + key.account_id, key.account_limits)),
                          throttle_rpm)

    # -- 1. concurrency, from the first byte ------------------------------------------------
    def enter(self, key: KeyRecord) -> Slot:
        """Count one more request running for the key and its account, or raise 429 if either is at its limit."""
        key_quota, account_quota = self.quotas(key)
        running = self._running
        for quota in (key_quota, account_quota):
            limit = quota.concurrent_requests
            if limit is not None and running.get(quota.subject, 0) >= limit:
                raise _error(Refusal(quota.subject, "concurrency_limit_exceeded", limit, 0, None), 0)
        subjects = (key_quota.subject, account_quota.subject)
        for subject in subjects:
            running[subject] = running.get(subject, 0) + 1
        return Slot(running, subjects, (key_quota, account_quota))

    def running(self, subject: str) -> int:
        return self._running.get(subject, 0)

    # -- 2. admission, before forwarding ----------------------------------------------------------
    async def admit(self, key: KeyRecord, tokens: int, request_id: str, *, throttle_rpm: int | None = None,
                    nonce: tuple[str, int] | None = None, slot: Slot | None = None) -> Admission | None:
        """Charge ``tokens`` of prompt and admit the request, or raise a 429 (503 when shared state fails closed).

        Returns None when ``nonce`` was used before (a replayed attestation):
        nothing is charged then, and the caller decides whether to serve it.
        ``slot``, the request's from :meth:`enter`, saves resolving its limits again.
        """
        quotas = self.quotas(key, throttle_rpm) if slot is None else _throttled(slot.quotas, throttle_rpm)
        memory = self._memory
        result: Admission | Refusal | None
        try:
            if memory is not None:
                result = memory.admit_now(quotas, tokens, request_id, nonce)
            else:
                result = await self.state.admit(quotas, tokens, request_id, nonce)
        except StateUnavailable as exc:
            raise GatewayError(503, f"Limits cannot be checked right now ({exc}); try again shortly.",
                               "state_unavailable", retry_after=1.0) from None
        if isinstance(result, Refusal):
            raise _error(result, tokens)
        return result

    # -- 3. settlement, after the response ------------------------------------------------------
    def settle(self, admission: Admission, tokens: int) -> None:
        """Charge the real usage instead of the prompt estimate (never blocks)."""
        self.state.settle(admission, tokens)


def _throttled(quotas: tuple[Quota, Quota], throttle_rpm: int | None) -> tuple[Quota, Quota]:
    """``quotas`` (key, account) with a policy throttle applied to the account's requests/min."""
    if throttle_rpm is None:
        return quotas
    key_quota, account = quotas
    rpm = throttle_rpm if account.requests_per_min is None else min(account.requests_per_min, throttle_rpm)
    return key_quota, Quota(account.subject, rpm, account.tokens_per_min, account.concurrent_requests, account.daily_tokens)


def _error(refusal: Refusal, tokens: int) -> GatewayError:
    kind, _, ident = refusal.subject.partition(":")
    who = f"{'account' if kind == 'acct' else 'key'} {ident}"
    limit = refusal.limit
    code = refusal.code
    if code == "rate_limit_exceeded":
        message = f"Rate limit reached for {who}: {limit} requests per minute."
    elif code == "token_rate_limit_exceeded":
        message = f"Token rate limit reached for {who}: {limit} tokens per minute (this request's prompt counts {tokens})."
    elif code == "daily_quota_exceeded":
        message = f"Daily token quota of {limit} reached for {who} (this request's prompt counts {tokens}); it resets at 00:00 UTC."
    elif code == "concurrency_limit_exceeded":
        message = f"Too many concurrent requests for {who} (limit {limit})."
    else:
        message = (f"This request's prompt counts {tokens} tokens, more than the {limit} tokens {who} may use in its "
                   "window; waiting will not help: shorten the prompt or ask for a higher limit.")
    retry = retry_after_s(refusal)
    return GatewayError(429, message, code, retry_after=None if retry is None else float(retry))
