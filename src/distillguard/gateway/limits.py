"""Per-key and per-account limits: requests/min, tokens/min, concurrency, daily tokens.

Windows are two-bucket sliding counters (the previous minute's count weighted by
how much of it still overlaps the window, plus the current minute's), which is
O(1) in time and memory per subject — a timestamp log would grow with the limit.
Tokens are charged after the response, when the real usage is known; a request
is refused when the window is already spent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from distillguard.config import LimitSettings
from distillguard.gateway.errors import GatewayError
from distillguard.store.registry import KeyRecord

__all__ = ["Limiter", "Lease"]

WINDOW_S = 60.0
DAY_S = 86_400.0


class _SlidingCounter:
    __slots__ = ("bucket", "current", "previous")

    def __init__(self) -> None:
        self.bucket = -1
        self.current = 0.0
        self.previous = 0.0

    def _roll(self, now: float) -> float:
        bucket = int(now // WINDOW_S)
        if bucket != self.bucket:
            self.previous = self.current if bucket == self.bucket + 1 else 0.0
            self.current = 0.0
            self.bucket = bucket
        return now - bucket * WINDOW_S

    def value(self, now: float) -> float:
        elapsed = self._roll(now)
        return self.previous * (1.0 - elapsed / WINDOW_S) + self.current

    def add(self, now: float, amount: float) -> None:
        self._roll(now)
        self.current += amount

    def retry_after(self, now: float, limit: float) -> float:
        """Seconds until the weighted count falls below ``limit`` (at least 1)."""
        elapsed = self._roll(now)
        if self.current >= limit or self.previous <= 0:
            return max(1.0, WINDOW_S - elapsed)
        # previous * (1 - t/60) + current < limit  →  t > 60 * (1 - (limit - current) / previous)
        needed = WINDOW_S * (1.0 - (limit - self.current) / self.previous)
        return max(1.0, needed - elapsed)


@dataclass
class _Usage:
    requests: _SlidingCounter = field(default_factory=_SlidingCounter)
    tokens: _SlidingCounter = field(default_factory=_SlidingCounter)
    concurrent: int = 0
    day: int = -1
    day_tokens: int = 0


@dataclass(frozen=True)
class _Resolved:
    requests_per_min: int | None
    tokens_per_min: int | None
    concurrent_requests: int | None
    daily_tokens: int | None


@dataclass
class Lease:
    """Held for the duration of one request; ``release(tokens)`` charges the real usage."""

    usages: tuple[_Usage, ...]
    clock: Callable[[], float]
    released: bool = False

    def release(self, tokens: int) -> None:
        if self.released:
            return
        self.released = True
        now = self.clock()
        day = int(now // DAY_S)
        for usage in self.usages:
            usage.concurrent -= 1
            usage.tokens.add(now, tokens)
            if usage.day != day:
                usage.day, usage.day_tokens = day, 0
            usage.day_tokens += tokens


class Limiter:
    """Admission control for keys and accounts, in memory, one event loop (no locks needed)."""

    def __init__(self, defaults: LimitSettings, clock: Callable[[], float] = time.time) -> None:
        self.defaults = defaults
        self.clock = clock
        self._usage: dict[str, _Usage] = {}
        self._resolved: dict[tuple[int, int], _Resolved] = {}

    def _resolve(self, overrides: dict[str, int | None]) -> _Resolved:
        d = self.defaults
        return _Resolved(
            overrides.get("requests_per_min", d.requests_per_min),
            overrides.get("tokens_per_min", d.tokens_per_min),
            overrides.get("concurrent_requests", d.concurrent_requests),
            overrides.get("daily_tokens", d.daily_tokens),
        )

    def _check(self, subject: str, kind: str, usage: _Usage, limits: _Resolved, now: float, extra_rpm: int | None) -> None:
        rpm = limits.requests_per_min
        if extra_rpm is not None:
            rpm = extra_rpm if rpm is None else min(rpm, extra_rpm)
        if limits.concurrent_requests is not None and usage.concurrent >= limits.concurrent_requests:
            raise GatewayError(
                429, f"Too many concurrent requests for {kind} {subject} (limit {limits.concurrent_requests}).",
                "concurrency_limit_exceeded", retry_after=1.0,
            )
        if rpm is not None and usage.requests.value(now) + 1 > rpm:
            raise GatewayError(
                429, f"Rate limit reached for {kind} {subject}: {rpm} requests per minute.",
                "rate_limit_exceeded", retry_after=math.ceil(usage.requests.retry_after(now, rpm)),
            )
        if limits.tokens_per_min is not None and usage.tokens.value(now) >= limits.tokens_per_min:
            raise GatewayError(
                429, f"Token rate limit reached for {kind} {subject}: {limits.tokens_per_min} tokens per minute.",
                "token_rate_limit_exceeded", retry_after=math.ceil(usage.tokens.retry_after(now, limits.tokens_per_min)),
            )
        day = int(now // DAY_S)
        if limits.daily_tokens is not None and usage.day == day and usage.day_tokens >= limits.daily_tokens:
            raise GatewayError(
                429, f"Daily token quota of {limits.daily_tokens} reached for {kind} {subject}; it resets at 00:00 UTC.",
                "daily_quota_exceeded", retry_after=math.ceil((day + 1) * DAY_S - now),
            )

    def acquire(self, key: KeyRecord, throttle_rpm: int | None = None) -> Lease:
        """Admit one request or raise a 429 :class:`GatewayError` with ``retry_after``."""
        now = self.clock()
        key_usage = self._usage.get(key.key_id)
        if key_usage is None:
            key_usage = self._usage[key.key_id] = _Usage()
        account_usage = self._usage.get(key.account_id)
        if account_usage is None:
            account_usage = self._usage[key.account_id] = _Usage()
        cache_key = (id(key.key_limits), id(key.account_limits))
        resolved = self._resolved.get(cache_key)
        if resolved is None:
            resolved = self._resolved[cache_key] = self._resolve(key.key_limits)
        account_resolved = self._resolve(key.account_limits) if key.account_limits else self._resolve({})
        self._check(key.key_id, "key", key_usage, resolved, now, None)
        self._check(key.account_id, "account", account_usage, account_resolved, now, throttle_rpm)
        for usage in (key_usage, account_usage):
            usage.requests.add(now, 1)
            usage.concurrent += 1
        return Lease((key_usage, account_usage), self.clock)

    def reset_cache(self) -> None:
        self._resolved.clear()
