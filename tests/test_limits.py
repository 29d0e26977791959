"""The limiter with an injected clock: exact windows, exact Retry-After, prompt charging and settlement.

Hypothesis drives random traffic through it and checks the two promises of
docs/gateway.md: no 60 s window ever holds more than the limit, and
``Retry-After`` names the earliest second at which the same request is admitted.
"""

from __future__ import annotations

import asyncio
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.config import LimitSettings
from distillguard.gateway.errors import GatewayError
from distillguard.gateway.limits import Limiter
from distillguard.gateway.prompt_tokens import PromptCounter, prompt_bytes
from distillguard.gateway.stream_usage import UsageChunkFilter, ask_stream_usage
from distillguard.state import MemoryState, Quota, Refusal, retry_after_s
from distillguard.store.registry import KeyRecord

UNLIMITED = LimitSettings(requests_per_min=None, tokens_per_min=None, concurrent_requests=None, daily_tokens=None)


class Clock:
    def __init__(self, start_s: float = 1_000_000.0) -> None:
        self.now = start_s

    def __call__(self) -> float:
        return self.now


def _key(key_limits: dict[str, int | None] | None = None, account_limits: dict[str, int | None] | None = None) -> KeyRecord:
    return KeyRecord("key_1", "h", "acct_1", None, False, "active", key_limits or {}, account_limits or {})


def _admit(limiter: Limiter, key: KeyRecord, tokens: int = 0, throttle_rpm: int | None = None) -> object:
    return asyncio.run(limiter.admit(key, tokens, "req", throttle_rpm=throttle_rpm))


def test_the_two_bucket_overshoot_is_gone() -> None:
    """Finding 17: 60/min let 110 through one window when the traffic straddled a minute boundary."""
    clock = Clock(59.0)  # one second before a bucket boundary of the old counter
    limiter = Limiter(UNLIMITED, clock=clock)
    key = _key({"requests_per_min": 60})
    admitted = []
    for step in range(200):  # 200 attempts over 2 s, spanning the boundary
        clock.now = 59.0 + step * 0.01
        try:
            _admit(limiter, key)
            admitted.append(clock.now)
        except GatewayError:
            pass
    assert len(admitted) == 60


def test_retry_after_is_exact_at_10_rpm() -> None:
    """Finding 13: at 10 rpm, requests at t=0..9 s; the 11th at t=10 must wait exactly 50 s, not 49."""
    clock = Clock(0.0)
    limiter = Limiter(UNLIMITED, clock=clock)
    key = _key({"requests_per_min": 10})
    for second in range(10):
        clock.now = float(second)
        _admit(limiter, key)
    clock.now = 10.0
    with pytest.raises(GatewayError) as info:
        _admit(limiter, key)
    assert info.value.status == 429 and info.value.code == "rate_limit_exceeded"
    assert info.value.retry_after == 50
    clock.now = 59.999
    with pytest.raises(GatewayError):
        _admit(limiter, key)
    clock.now = 60.0
    _admit(limiter, key)


def test_tokens_per_min_counts_the_prompt_up_front_and_settles_the_real_usage() -> None:
    clock = Clock(0.0)
    limiter = Limiter(UNLIMITED, clock=clock)
    key = _key(account_limits={"tokens_per_min": 5_000})
    first = _admit(limiter, key, tokens=3_000)
    with pytest.raises(GatewayError) as info:  # 3,000 charged + 3,000 > 5,000 while the first is still running
        _admit(limiter, key, tokens=3_000)
    assert info.value.code == "token_rate_limit_exceeded" and info.value.retry_after == 60
    assert "account acct_1" in info.value.message
    limiter.settle(first, 1_000)  # the upstream said 1,000 in all
    _admit(limiter, key, tokens=3_000)
    with pytest.raises(GatewayError) as info:
        _admit(limiter, key, tokens=10_000)
    assert info.value.code == "request_too_large" and info.value.retry_after is None


def test_daily_quota_waits_until_midnight_utc() -> None:
    clock = Clock(86_400 * 3 + 3_600.0)  # 01:00 UTC
    limiter = Limiter(UNLIMITED, clock=clock)
    key = _key({"daily_tokens": 100})
    _admit(limiter, key, tokens=80)
    with pytest.raises(GatewayError) as info:
        _admit(limiter, key, tokens=30)
    assert info.value.code == "daily_quota_exceeded" and info.value.retry_after == 23 * 3_600
    clock.now = 86_400 * 4.0
    _admit(limiter, key, tokens=30)


def test_concurrency_counts_from_enter_and_is_released() -> None:
    limiter = Limiter(UNLIMITED)
    key = _key({"concurrent_requests": 2})
    slots = [limiter.enter(key), limiter.enter(key)]
    with pytest.raises(GatewayError) as info:
        limiter.enter(key)
    assert info.value.code == "concurrency_limit_exceeded" and info.value.retry_after == 1
    slots[0].release()
    slots[0].release()  # idempotent: a second release must not free a slot it does not hold
    slots.append(limiter.enter(key))
    with pytest.raises(GatewayError):
        limiter.enter(key)
    for slot in slots:
        slot.release()
    assert limiter.running("key:key_1") == 0 and limiter.running("acct:acct_1") == 0


def test_a_policy_throttle_lowers_the_accounts_rate() -> None:
    clock = Clock(0.0)
    limiter = Limiter(UNLIMITED, clock=clock)
    key = _key()
    for _ in range(3):
        _admit(limiter, key, throttle_rpm=3)
    with pytest.raises(GatewayError) as info:
        _admit(limiter, key, throttle_rpm=3)
    assert "account acct_1: 3 requests per minute" in info.value.message
    _admit(limiter, key)  # unthrottled again: no limit


def test_the_latest_retry_wins_across_subjects_and_limits() -> None:
    clock = Clock(0.0)
    limiter = Limiter(UNLIMITED, clock=clock)
    key = _key({"requests_per_min": 2}, {"tokens_per_min": 100})
    _admit(limiter, key, tokens=5)  # t=0
    clock.now = 30.0
    _admit(limiter, key, tokens=90)  # t=30: the key's 2 requests are used, the account has 95 tokens
    clock.now = 31.0
    with pytest.raises(GatewayError) as info:
        _admit(limiter, key, tokens=50)
    # The key frees a request at t=60; the account fits 50 more tokens only when the t=30 entry leaves too, at t=90.
    assert info.value.retry_after == 59


def test_idle_subjects_are_forgotten() -> None:
    clock = Clock(0.0)
    state = MemoryState(clock)
    quota = (Quota("key:a", 10, None, None, None),)
    state.admit_now(quota, 0, "r1")
    clock.now = 61.0
    state.sweep(state.now_ms())
    assert "key:a" not in state._subjects


# -- properties ---------------------------------------------------------------------------------------

attempts = st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 60)), min_size=1, max_size=120)


@settings(max_examples=150, deadline=None)
@given(rpm=st.integers(1, 12), tpm=st.integers(60, 200), steps=attempts)
def test_no_window_ever_holds_more_than_the_limit(rpm: int, tpm: int, steps: list[tuple[int, int]]) -> None:
    clock = Clock(0.0)
    state = MemoryState(clock)
    quotas = (Quota("key:k", rpm, tpm, None, None), Quota("acct:a", None, None, None, None))
    now_ms = 0
    admitted: list[tuple[int, int]] = []
    for gap_ms, tokens in steps:
        now_ms += gap_ms
        clock.now = now_ms / 1000
        result = state.admit_now(quotas, tokens, "r")
        if not isinstance(result, Refusal) and result is not None:
            admitted.append((now_ms, tokens))
    for end, _ in admitted:  # every 60 s window that ends at an admission (the fullest ones)
        inside = [(t, n) for t, n in admitted if end - 60_000 < t <= end]
        assert len(inside) <= rpm
        assert sum(n for _, n in inside) <= tpm


@settings(max_examples=150, deadline=None)
@given(rpm=st.integers(1, 8), tpm=st.integers(60, 200), daily=st.integers(100, 400), steps=attempts, probe=st.integers(0, 60))
def test_retry_after_is_the_earliest_second_the_same_request_is_admitted(
    rpm: int, tpm: int, daily: int, steps: list[tuple[int, int]], probe: int
) -> None:
    clock = Clock(86_400 * 5 - 90.0)  # close to midnight, so daily quotas reset within the test
    start_ms = round(clock.now * 1000)
    state = MemoryState(clock)
    quotas = (Quota("key:k", rpm, tpm, None, daily), Quota("acct:a", rpm + 1, None, None, None))
    now_ms = start_ms
    for gap_ms, tokens in steps:
        now_ms += gap_ms
        clock.now = now_ms / 1000
        state.admit_now(quotas, tokens, "r")

    def replayed() -> MemoryState:
        """A state that went through the same admissions, reading the test's clock: a probe admits, so each probe gets
        its own (a copy by replay: the compiled ``MemoryState`` cannot be deep-copied)."""
        trial, at_ms = MemoryState(clock), start_ms
        for gap_ms, tokens in steps:
            at_ms += gap_ms
            clock.now = at_ms / 1000
            trial.admit_now(quotas, tokens, "r")
        return trial

    probed = replayed()
    clock.now = now_ms / 1000
    refusal = probed.admit_now(quotas, probe, "probe")
    if not isinstance(refusal, Refusal) or refusal.retry_at_ms is None:
        return
    wait = retry_after_s(refusal)
    assert wait is not None

    def admitted_after(seconds: int) -> bool:
        trial = replayed()
        clock.now = (now_ms + seconds * 1000) / 1000
        return not isinstance(trial.admit_now(quotas, probe, "probe"), Refusal)

    assert admitted_after(wait)
    assert wait == 1 or not admitted_after(wait - 1)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), gap_ms=st.integers(25, 60))
def test_settling_keeps_every_window_sum_exact_across_log_compaction(seed: int, gap_ms: int) -> None:
    """Settles land on their own entry, or nowhere once it left the window, also after the log's arrays were compacted.

    Thousands of requests, so the trimmed front of each log is compacted several times while admissions are pending
    (the reference keeps every request; the subject's sum and length must match the requests of the last 60 s).
    """
    rng = random.Random(seed)
    clock = Clock(1_000.0)
    state = MemoryState(clock)
    quotas = (Quota("key:k", 10**9, 10**12, None, None), Quota("acct:a", 10**9, 10**12, None, None))
    now_ms = 1_000_000
    admitted: list[list[int]] = []  # [ms, tokens now] of every request
    pending: list[tuple[object, int]] = []
    for _ in range(6_000):
        now_ms += rng.randint(0, 2 * gap_ms)
        clock.now = now_ms / 1000
        tokens = rng.randint(0, 300)
        admission = state.admit_now(quotas, tokens, "r")
        assert admission is not None and not isinstance(admission, Refusal)
        admitted.append([now_ms, tokens])
        pending.append((admission, len(admitted) - 1))
        while pending and rng.random() < 0.5:  # settle a random pending request with its real usage
            settled, index = pending.pop(rng.randrange(len(pending)))
            usage = rng.randint(0, 400)
            state.settle(settled, usage)  # type: ignore[arg-type]
            admitted[index][1] = usage
        if rng.random() < 0.02:  # compare with the reference now and then (each comparison walks every request)
            inside = [n for t, n in admitted if t > now_ms - 60_000]
            for name in ("key:k", "acct:a"):
                subject = state._subjects[name]
                assert (len(subject), subject.tokens) == (len(inside), sum(inside))
    assert state._subjects["key:k"].base > 0  # the log was compacted along the way


def test_the_window_log_costs_a_few_bytes_per_request() -> None:
    """A minute's log holds every request of the last 60 s (408,000 at 6,800 requests/s): 16 bytes per request and
    subject, where an object per request cost ~146 bytes for the key and the account together (bench/RESULTS.md,
    "All-on RSS")."""
    clock = Clock(1_000.0)
    state = MemoryState(clock)
    quotas = (Quota("key:k", 10**9, 10**12, None, None), Quota("acct:a", 10**9, 10**12, None, None))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            clock.now = 1_000.0 + i / 6_800
            state.settle(state.admit_now(quotas, 300, "r"), 265)  # type: ignore[arg-type]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(state._subjects["key:k"]) == 20_000
    assert held / 20_000 < 48, f"{held / 20_000:.0f} bytes per logged request"


# -- prompt counting and stream usage --------------------------------------------------------------------


def test_prompt_estimate_counts_every_text_the_model_reads() -> None:
    payload = {
        "model": "m",
        "messages": [{"role": "system", "content": "abcd" * 10}, {"role": "user", "content": [{"type": "text", "text": "é" * 8},
                                                                                           {"type": "image_url", "image_url": {"url": "data:" + "A" * 9999}}]}],
        "tools": [{"type": "function", "function": {"name": "f", "description": "x" * 40}}],
    }
    counted = prompt_bytes(payload)
    assert counted >= 40 + 16 + 40  # system, 8 two-byte characters, the tool description
    assert counted < 400  # the image's bytes are not text
    assert PromptCounter().count(payload) == -(-counted // 4)
    assert PromptCounter().count({"model": "m", "prompt": [1, 2, 3]}) == 3  # token ids: one each


def test_stream_usage_is_asked_for_and_hidden_unless_the_client_asked() -> None:
    payload: dict[str, object] = {"stream": True}
    assert ask_stream_usage(payload) is True and payload["stream_options"] == {"include_usage": True}
    assert ask_stream_usage({"stream_options": {"include_usage": True}}) is False
    stream = (b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
              b"data: [DONE]\n\n")
    for cut in range(1, len(stream)):  # wherever the upstream's chunks split the events
        usage_filter = UsageChunkFilter()
        out = usage_filter.feed(stream[:cut]) + usage_filter.feed(stream[cut:]) + usage_filter.flush()
        assert out == stream.replace(b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n', b"")


def test_the_usage_chunk_is_hidden_wherever_it_is_split_when_the_reader_says_when_usage_came() -> None:
    """The relay lets whole events pass the filter unscanned until the stream reader has read a usage object
    (``usage_seen``): the usage-only chunk is still hidden for every split into two or three reads, and still counted."""
    from distillguard.gateway.responses import OpenAIStreamReader

    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
    stream = (b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\n'
              b'data: {"choices":[{"index":0,"delta":{"content":" there"}}],"usage":null}\n\n' + usage + b"data: [DONE]\n\n")
    for first in range(1, len(stream) - 1, 3):
        for second in (first + 1, first + 7, len(stream) - 1):
            if not first < second < len(stream):
                continue
            reader, usage_filter, out = OpenAIStreamReader(), UsageChunkFilter(), b""
            for piece in (stream[:first], stream[first:second], stream[second:]):
                out += usage_filter.feed(reader.feed(piece), reader.usage_seen)
            out += usage_filter.feed(reader.flush()) + usage_filter.flush()
            assert out == stream.replace(usage, b"")
            assert (reader.summary.prompt_tokens, reader.summary.completion_tokens, reader.summary.text) == (3, 1, "hi there")
    reader = OpenAIStreamReader()
    reader.feed(stream[: stream.index(usage)])
    assert not reader.usage_seen  # ("usage": null is no usage object)
    reader.feed(usage)
    assert reader.usage_seen
