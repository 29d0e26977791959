"""The vocabulary shared by every state backend: quotas, refusals, admissions, the backend seam.

A *subject* is one thing limits apply to: an API key (``key:<id>``) or an
account (``acct:<id>``). A request is admitted against all its subjects at once
or against none, so a refusal never leaves a half-charged request behind.
Times are integer milliseconds on the backend's clock (the process clock in
memory, Redis' ``TIME`` with Redis), so every replica of a fleet measures
windows on one clock and no rounding can make a ``Retry-After`` short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from distillguard.exceptions import DistillguardError

__all__ = [
    "DAY_MS",
    "WINDOW_MS",
    "Admission",
    "Quota",
    "Refusal",
    "StateBackend",
    "StateUnavailable",
    "retry_after_s",
]

WINDOW_MS = 60_000  # requests/min and tokens/min: any 60 s window
DAY_MS = 86_400_000  # daily tokens: the UTC day


@dataclass(frozen=True, slots=True)
class Quota:
    """The resolved limits of one subject for one request; ``None`` means unlimited."""

    subject: str
    requests_per_min: int | None
    tokens_per_min: int | None
    concurrent_requests: int | None
    daily_tokens: int | None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was not admitted, and the earliest moment the same request would be.

    ``retry_at_ms`` is ``None`` when waiting cannot help (the request alone
    needs more tokens than the limit allows) and for concurrency, which frees
    up when other requests finish, not at a computable time.
    """

    subject: str
    code: str  # rate_limit_exceeded | token_rate_limit_exceeded | daily_quota_exceeded | concurrency_limit_exceeded | request_too_large
    limit: int
    now_ms: int
    retry_at_ms: int | None


def retry_after_s(refusal: Refusal) -> int | None:
    """``Retry-After`` in whole seconds: the earliest second at which the same request is admitted (rounded up, never short)."""
    if refusal.retry_at_ms is None:
        return 1 if refusal.code == "concurrency_limit_exceeded" else None
    wait_ms = refusal.retry_at_ms - refusal.now_ms
    return max(1, -(-wait_ms // 1000))


class Admission(Protocol):
    """One admitted request: holds its concurrency slots until :meth:`StateBackend.settle`."""

    request_id: str
    charged: int


class StateUnavailable(DistillguardError):
    """The shared state backend did not answer (down, slow or refusing); the caller decides fail-open or fail-closed."""


class StateBackend(Protocol):
    """Where limits and attestation nonces live: this process (``memory``) or Redis (a fleet).

    ``admit`` is the hot path: one call per request, charging ``tokens`` (the
    prompt, counted before forwarding) against every quota, taking a
    concurrency slot, and — when ``nonce`` is given — recording the nonce,
    all atomically. It returns a :class:`Refusal` instead of raising, because a
    refusal is an ordinary answer. ``settle`` replaces the charge with the real
    usage and frees the slots; it never blocks the caller.
    """

    name: str

    @property
    def degraded(self) -> bool:
        """True while shared state is failing and ``state_failure`` applies (the ``dg_state_degraded`` gauge)."""

    async def start(self) -> None:
        """Connect (a backend that cannot must still start, degraded, and recover by itself)."""

    async def admit(self, quotas: tuple[Quota, ...], tokens: int, request_id: str,
                    nonce: tuple[str, int] | None = None) -> Admission | Refusal | None:
        """Admit, refuse, or (``None``) report that ``nonce`` was already used — nothing is charged then."""

    def settle(self, admission: Admission, tokens: int) -> None:
        """Charge ``tokens`` instead of the admission's prompt estimate and release its concurrency slots."""

    async def close(self) -> None:
        """Flush pending settlements and release connections."""
