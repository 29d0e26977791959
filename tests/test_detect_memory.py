"""Detector state per account is bounded (docs/detection.md, "Memory per account"): it does not grow with an
account's events, and a light account costs a few kilobytes."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distillguard.detect import coverage, pivot, reasoning, templates
from distillguard.detect.base import SMALL, add_distinct
from distillguard.detect.scanner import Scanner
from distillguard.detect.timing import SlotSet, Timing, add_slot
from distillguard.events import format_ts


@given(st.lists(st.integers(0, 40), max_size=80), st.integers(1, 30))
def test_add_distinct_is_a_capped_set_add(values: list[int], cap: int) -> None:
    held: tuple[int, ...] | set[int] = ()
    reference: set[int] = set()
    for value in values:
        held = add_distinct(held, value, cap)
        if len(reference) < cap:
            reference.add(value)
        assert set(held) == reference and len(held) == len(reference)
        assert isinstance(held, tuple) == (len(held) <= SMALL)


@given(st.lists(st.integers(-5, 60), max_size=120), st.integers(1, 40))
def test_add_slot_is_a_capped_set_add(values: list[int], cap: int) -> None:
    held: Any = ()
    reference: set[int] = set()
    for value in values:  # in any order: events of a log may come late
        held = add_slot(held, value, cap)
        if len(reference) < cap:
            reference.add(value)
        assert sorted(held) == sorted(reference) and len(held) == len(reference)
        assert isinstance(held, tuple) == (len(held) <= SMALL)


@given(st.lists(st.integers(-5, 60), max_size=60), st.lists(st.integers(-5, 60), max_size=60))
def test_slot_set_views_behave_as_sets(first: list[int], second: list[int]) -> None:
    """Clustering reads the buckets as sets (len, iteration, ``in``, ``&``): the views answer as the sets would."""
    a: Any = ()
    b: Any = ()
    for value in first:
        a = add_slot(a, value, 1000)
    for value in second:
        b = add_slot(b, value, 1000)
    view_a, view_b = SlotSet(a), SlotSet(b)
    assert len(view_a) == len(set(first)) and set(view_a) == set(first)
    assert all(v in view_a for v in first) and 61 not in view_a and "x" not in view_a
    assert set(view_a & view_b) == set(first) & set(second) and len(view_a & view_b) == len(set(first) & set(second))
    assert set(view_a & set(second)) == set(first) & set(second)


def test_a_busy_accounts_active_buckets_cost_bytes_not_objects(traced: None) -> None:
    """4,000 active 5-minute buckets: 8 bytes each in a sorted array (~36 KB); as a set of int objects they took ~250 KB."""
    timing = Timing()
    events = list(_busy("acct_busy", 4_000))
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    for event in events:
        timing.update(event)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    view = timing.buckets("acct_busy")  # what the report's clustering reads: a view, not a copy
    assert len(view) == 4_000
    held = tracemalloc.get_traced_memory()[0] - before
    assert held < 60_000, held


def _busy(account: str, n: int, *, start: float = 1.79e9, step_s: float = 300.0) -> Iterator[dict[str, Any]]:
    """An account that changes everything all the time: a new address, install, country, conversation and prompt
    wording on every request, around the clock, one request every ``step_s``."""
    for i in range(n):
        ts = start + i * step_s
        yield {"v": 1, "ts": format_ts(ts), "request_id": f"r{i}", "account_id": account, "key_id": "k",
               "endpoint": "openai.chat", "model": "m-new" if i > n // 2 else "m-old",
               "client": {"ip": f"10.{i % 250}.{(i // 250) % 250}.{i % 7}", "header_fp": f"fp{i % 50}",
                          "geo": {"country": f"C{i % 90}", "asn": 1000 + i % 300, "hosting": i % 2 == 0}},
               "attestation": {"status": "valid", "install_id": f"inst{i}", "tz": f"Zone/{i % 80}", "utc_offset_min": 0,
                               "proxy": False, "os": "linux", "sdk": "s"},
               "request": {"system": f"system prompt number {i % 100}",
                           "messages": [{"role": "user", "content": f"task {i} word{i} alpha{i % 997} beta{i % 991} please "
                                                                    f"answer in full detail with examples and code {i}"}],
                           "params": {"temperature": (i % 50) / 10, "max_tokens": 4096, "n": 1, "stream": False}},
               "response": {"status": 200, "prompt_tokens": 40, "completion_tokens": 600, "reasoning_chars": 0}}


def _held(scanner: Scanner, events: Iterator[dict[str, Any]]) -> int:
    """Bytes traced as allocated (and still held) while ``scanner`` took ``events`` and reported."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    for event in events:
        scanner.update(event)
    scanner.report()
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - before


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def test_a_busy_account_stops_growing_once_its_caps_are_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    # A throwaway scanner first takes the same kind of traffic, model switch included, so that what the process
    # allocates once (lazy imports, regex and intern caches, first use of a code path) is not counted as the
    # account's growth: without it the second window read 10-23 KB depending on which tests ran before (CI failed
    # at 22.6 KB of 354 KB on 2026-12-06). The warm-up runs before tracing starts: what it allocates is then not
    # traced at all (the same effect), and it runs ~3x faster untraced (the test took 44 s at load 15, and once
    # hit the 300 s timeout at load 20).
    _held(Scanner(), _busy("acct_warm", 8_000))
    # What the detectors remember of prompts' texts (elicitation verdicts, capabilities, frames) is the scanner's, not
    # the account's: bounded (~1.2 + 1.2 + 2.2 MB; tests/test_reasoning_verdicts.py, tests/test_text_memos.py) and
    # filled here by prompts that all differ. Held to one prompt each so that what is measured is the account's own state.
    monkeypatch.setattr(reasoning, "_VERDICTS", 1)
    monkeypatch.setattr(coverage, "_KINDS", 1)
    monkeypatch.setattr(templates, "_FRAMES_KNOWN", 1)
    tracemalloc.start()
    try:
        scanner = Scanner()
        events = _busy("acct_busy", 12_000)
        first = _held(scanner, (next(events) for _ in range(4_000)))  # 14 days: every cap but timing's 4,096 buckets reached
        more = _held(scanner, (next(events) for _ in range(4_000)))  # 14 more days
        last = _held(scanner, events)  # and 14 more
    finally:
        tracemalloc.stop()
    # What still grows: the active days (capped at 400), 24 hour bits a day for the relay; ~11 KB over 14 days.
    assert first > 100_000 and more < 0.05 * first and last < 0.05 * first, (first, more, last)


def test_light_accounts_cost_a_few_kilobytes_each(traced: None) -> None:
    scanner = Scanner()
    accounts = 1_500
    events = (event for i in range(accounts) for event in _busy(f"acct_{i}", 3, start=1.79e9 + i))
    per_account = _held(scanner, events) / accounts
    # Detector state (~9 KB with these events, which change every value on every request) and the account's report
    # entry (~7 KB, held for the next incremental report): 17.2 KB on 2026-12-07, 22.9 KB before the small-tuple sets,
    # the slots and the evidence recomputed instead of kept.
    assert per_account < 20_000, per_account


def test_model_pivot_prunes_hours_outside_release_windows_without_changing_its_evidence(monkeypatch: pytest.MonkeyPatch) -> None:
    events = list(_busy("acct_pivot", 3_000, step_s=600.0))  # 21 days, one model released half-way
    pruned, whole, bound = pivot.ModelPivot(), pivot.ModelPivot(), pivot._PRUNE_AT
    for event in events:
        pruned.update(event)
    monkeypatch.setattr(pivot, "_PRUNE_AT", 10**9)
    for event in events:
        whole.update(event)
    assert len(pruned.accounts["acct_pivot"].hours) <= bound < len(whole.accounts["acct_pivot"].hours)
    found, expected = pruned.evidence("acct_pivot"), whole.evidence("acct_pivot")
    assert found is not None and expected is not None and found.score > 0.5
    assert (found.score, found.detail) == (expected.score, expected.detail)
