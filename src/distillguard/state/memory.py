"""Limits in this process's memory: exact sliding windows, UTC-day quotas, nonces (``state: memory``).

Why a log and not counters: a limit of N per minute must hold in *every* 60 s
window, whatever second it starts at. Two-bucket counters and GCRA both let
more through (GCRA with a burst of N admits up to 2N−1 in one window; the
two-bucket estimate let 110 through a 60/min key). Each subject keeps the
requests it admitted in the last 60 s, oldest first, with the tokens each was
charged; the log is bounded by the requests/min limit (at most N entries).
It is kept column by column, two arrays of machine integers (admission time
in ms, tokens charged): 16 bytes per request per subject. An object per
request cost ~146 bytes, and the log holds every request of the last minute:
57 MB at the 6,800 requests/s the gateway serves on one key at c=64, most of
its resident memory (bench/RESULTS.md, "All-on RSS").
Admission and ``Retry-After`` are then exact:

- requests/min: admitted when fewer than N entries are younger than 60 s;
- tokens/min: admitted when the window's tokens plus this prompt fit the limit;
- daily tokens: admitted when today's (UTC) tokens plus this prompt fit;
- ``Retry-After``: the moment the oldest entries that are in the way expire
  (or midnight UTC), the latest over every subject and limit, in whole seconds
  rounded up.

Concurrency is not here: the gateway counts it in process from a request's
first byte (:class:`distillguard.gateway.limits.Limiter`). Everything runs on
the event loop, so no locks.

Memory is per *active* subject: a subject's window log exists only while it
has requests in the last 60 s. A sweep every 4,096 admissions (every N with
N subjects, so about one subject is looked at per admission) drops subjects
whose window is empty; if one still has tokens charged today (which
a daily quota must remember until midnight UTC) only that number is kept, in
a plain ``{subject: tokens}`` dict, and the subject is rebuilt from it on its
next request. So a key that sent one request today costs about 150 bytes
until midnight, not a window log (two arrays, ~200 bytes empty) — what spread
traffic over 100,000 keys would otherwise pin (bench/accounts_scale.py).
"""

from __future__ import annotations

import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from itertools import islice

from distillguard.state.types import DAY_MS, WINDOW_MS, Admission, Quota, Refusal

__all__ = ["MemoryAdmission", "MemoryState", "NonceCache"]

SWEEP_EVERY = 4096  # admissions between sweeps of subjects that have gone idle


COMPACT_AT = 1024  # trimmed entries left at the front of a log before the arrays are compacted (and at least half)


class _Subject:
    """A subject's window log with its counters (see the module docstring for why arrays).

    The log lives in ``ms`` and ``charged`` from index ``head`` to the end;
    trimmed entries stay in front of ``head`` until they are at least half of
    the arrays (and ``COMPACT_AT``), then go in one move: amortised O(1) per
    request. Entry number ``n`` (counted since the subject was created) sits at
    index ``n - base``, which is how an admission finds its entry to settle.
    :meth:`MemoryState.admit_now` appends to the arrays itself.
    """

    __slots__ = ("name", "ms", "charged", "head", "base", "tokens", "horizon", "day", "day_tokens")

    def __init__(self, name: str) -> None:
        self.name = name
        self.ms = array("q")  # admission time of each entry, ms since the epoch
        self.charged = array("q")  # tokens charged to each entry (the prompt, then the settled usage)
        self.head = 0  # index of the oldest entry still in the window
        self.base = 0  # entries compacted away before index 0
        self.tokens = 0  # sum of the tokens of the entries in the log
        self.horizon = 0  # entries with ms + WINDOW_MS <= horizon have left the log
        self.day = -1
        self.day_tokens = 0

    def __len__(self) -> int:
        return len(self.ms) - self.head

    def time_at(self, i: int) -> int:
        """Admission time (ms) of the ``i``-th oldest entry in the window."""
        return self.ms[self.head + i]

    def charges(self) -> Iterator[int]:
        """Tokens of the entries in the window, oldest first."""
        return islice(self.charged, self.head, None)

    def settle(self, number: int, delta: int) -> None:
        """Add ``delta`` tokens to entry ``number`` and the window's sum, if that entry is still in the window."""
        index = number - self.base
        if index >= self.head:
            self.charged[index] += delta
            self.tokens += delta

    def trim(self, now: int) -> None:
        if now > self.horizon:
            self.horizon = now
        cutoff = self.horizon - WINDOW_MS
        ms, head, end = self.ms, self.head, len(self.ms)
        if head == end or ms[head] > cutoff:
            return
        charged = self.charged
        while head < end and ms[head] <= cutoff:
            self.tokens -= charged[head]
            head += 1
        if head == end or (head >= COMPACT_AT and 2 * head >= end):
            del ms[:head]
            del charged[:head]
            self.base += head
            head = 0
        self.head = head

    def today(self, day: int) -> int:
        if self.day != day:
            self.day, self.day_tokens = day, 0
        return self.day_tokens


class MemoryAdmission:
    """An admitted request: where its entry is in each subject's log, to settle its real usage there."""

    __slots__ = ("request_id", "charged", "tokens", "ms", "entries", "subjects")

    def __init__(self, request_id: str, charged: int, ms: int, entries: tuple[int, ...], subjects: tuple[_Subject, ...]) -> None:
        self.request_id = request_id
        self.charged = charged  # tokens charged at admission (the prompt)
        self.tokens = charged  # tokens its log entries hold now (after settling: the real usage)
        self.ms = ms  # admission time: the UTC day whose quota it was charged to
        self.entries = entries  # its entry number in each subject's log, in the order of ``subjects``
        self.subjects = subjects


def check_quota(subject: _Subject, quota: Quota, tokens: int, now: int, day: int) -> Refusal | None:
    """The refusal ``quota`` calls for (the latest retry time among its limits), or None when it admits."""
    worst: Refusal | None = None
    rpm = quota.requests_per_min
    if rpm is not None and len(subject.ms) - subject.head >= rpm:  # len(subject), without a call per admission
        # Admitted once the (len - rpm + 1) oldest entries have expired: the one at index len - rpm is the last of them.
        retry = subject.time_at(len(subject) - rpm) + WINDOW_MS if rpm > 0 else None
        worst = Refusal(quota.subject, "rate_limit_exceeded", rpm, now, retry)
    tpm = quota.tokens_per_min
    if tpm is not None and subject.tokens + tokens > tpm:
        if tokens > tpm:
            return Refusal(quota.subject, "request_too_large", tpm, now, None)
        excess = subject.tokens + tokens - tpm
        retry = None
        for i, charged in enumerate(subject.charges()):
            excess -= charged
            if excess <= 0:
                retry = subject.time_at(i) + WINDOW_MS
                break
        worst = _later(worst, Refusal(quota.subject, "token_rate_limit_exceeded", tpm, now, retry))
    daily = quota.daily_tokens
    if daily is not None and subject.today(day) + tokens > daily:
        if tokens > daily:
            return Refusal(quota.subject, "request_too_large", daily, now, None)
        worst = _later(worst, Refusal(quota.subject, "daily_quota_exceeded", daily, now, (day + 1) * DAY_MS))
    return worst


def _later(a: Refusal | None, b: Refusal) -> Refusal:
    """The refusal that lasts longer (a request must wait for every limit in its way)."""
    if a is None:
        return b
    if a.retry_at_ms is None or (b.retry_at_ms is not None and a.retry_at_ms >= b.retry_at_ms):
        return a
    return b


class NonceCache:
    """Attestation nonces seen within their validity window; bounded, oldest evicted first.

    Locked because offline verification may share one from several threads;
    on the event loop the lock is never contended.
    """

    def __init__(self, ttl_s: float, max_entries: int = 1_000_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def check_and_add(self, nonce: str, now: float) -> bool:
        """True when the nonce is fresh (and remember it); False when it is a replay."""
        with self._lock:
            seen = self._seen
            while seen:
                oldest, expiry = next(iter(seen.items()))
                if expiry > now and len(seen) < self.max_entries:
                    break
                seen.popitem(last=False)
            if nonce in seen:
                return False
            seen[nonce] = now + self.ttl_s
            return True


class MemoryState:
    """Exact limits for one process (the default ``state: memory``); see the module docstring."""

    name = "memory"
    degraded = False  # process memory cannot fail the way a shared store can

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._subjects: dict[str, _Subject] = {}
        self._parked_day = -1  # the UTC day of _parked
        self._parked: dict[str, int] = {}  # swept subjects' tokens charged on _parked_day (daily quotas)
        self._nonces: dict[int, NonceCache] = {}  # by TTL in ms (one per configured TTL, normally one)
        self._until_sweep = SWEEP_EVERY

    def now_ms(self) -> int:
        return round(self.clock() * 1000)

    def subject(self, name: str) -> _Subject:
        found = self._subjects.get(name)
        if found is None:
            found = self._subjects[name] = _Subject(name)
            parked = self._parked.pop(name, None)
            if parked is not None:
                found.day, found.day_tokens = self._parked_day, parked
        return found

    def check_nonce(self, nonce: str, ttl_ms: int) -> bool:
        cache = self._nonces.get(ttl_ms)
        if cache is None:
            cache = self._nonces[ttl_ms] = NonceCache(ttl_ms / 1000)
        return cache.check_and_add(nonce, self.clock())

    def admit_now(self, quotas: tuple[Quota, ...], tokens: int, request_id: str,
                  nonce: tuple[str, int] | None = None) -> MemoryAdmission | Refusal | None:
        """:meth:`admit` without the coroutine (the gateway calls this directly in memory mode)."""
        if nonce is not None and not self.check_nonce(*nonce):
            return None
        now = self.now_ms()
        day = now // DAY_MS
        subjects = tuple([self.subject(q.subject) for q in quotas])
        refusal: Refusal | None = None
        for subject, quota in zip(subjects, quotas, strict=True):
            subject.trim(now)
            found = check_quota(subject, quota, tokens, now, day)
            if found is not None:
                if found.retry_at_ms is None and found.code == "request_too_large":
                    return found
                refusal = _later(refusal, found)
        if refusal is not None:
            return refusal
        entries = []
        for subject in subjects:  # log it (inline: a method call here was a third of the limiter's CPU per request)
            times = subject.ms
            entries.append(subject.base + len(times))  # its entry number, to settle it later
            times.append(now)
            subject.charged.append(tokens)
            subject.tokens += tokens
            if subject.day != day:
                subject.day, subject.day_tokens = day, tokens
            else:
                subject.day_tokens += tokens
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self.sweep(now)
        return MemoryAdmission(request_id, tokens, now, tuple(entries), subjects)

    async def admit(self, quotas: tuple[Quota, ...], tokens: int, request_id: str,
                    nonce: tuple[str, int] | None = None) -> MemoryAdmission | Refusal | None:
        return self.admit_now(quotas, tokens, request_id, nonce)

    def settle(self, admission: Admission, tokens: int) -> None:
        assert isinstance(admission, MemoryAdmission), "settled by the backend that admitted it"
        delta = tokens - admission.tokens
        if delta == 0:
            return
        admission.tokens = tokens
        day = admission.ms // DAY_MS
        for subject, number in zip(admission.subjects, admission.entries, strict=True):
            if self._subjects.get(subject.name) is not subject:  # swept while the request ran (over 60 s): only today's count is left
                subject = self.subject(subject.name)
                if subject.day == day:
                    subject.day_tokens = max(0, subject.day_tokens + delta)
                continue
            subject.settle(number, delta)
            if subject.day == day:
                subject.day_tokens = max(0, subject.day_tokens + delta)

    def sweep(self, now: int) -> None:
        """Forget subjects with an empty window; park the tokens of those that used some today (see the module docstring)."""
        # At most about one subject looked at per admission, however many there are (100,000 keys spread traffic over)
        self._until_sweep = max(SWEEP_EVERY, len(self._subjects))
        day = now // DAY_MS
        if self._parked_day != day:
            self._parked_day, self._parked = day, {}
        parked = self._parked
        idle = []
        for name, subject in self._subjects.items():
            subject.trim(now)
            if len(subject) == 0:  # an empty window
                idle.append(name)
                if subject.day == day and subject.day_tokens:
                    parked[name] = subject.day_tokens
        for name in idle:
            del self._subjects[name]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
