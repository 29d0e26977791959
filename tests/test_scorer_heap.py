"""The scorers' heap freeze after each report (``scorer_worker.settle_heap``) keeps memory bounded.

Two ways it could leak: a reference cycle that is already garbage when the heap is frozen would be held for the
rest of the process (the collector never looks at frozen objects again), and re-freezing after every report could
grow the permanent generation if replaced account state stayed in it. Both are checked on a real ``Scanner``.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from distillguard.detect.scanner import Scanner
from distillguard.scorer_worker import HeapSettler, settle_heap


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Leave the test process's collector as it found it."""
    yield
    gc.unfreeze()
    gc.collect()


class _Node:
    other: Any = None


def test_garbage_cycles_made_before_a_report_are_collected_not_frozen_for_good() -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a cycle, as an exception kept with its traceback makes
    gone = weakref.ref(a)
    del a, b  # garbage now, but only the cyclic collector can free it
    settle_heap()
    assert gone() is None, "a garbage cycle was frozen: it would stay in the process for good"


def _event(account: int, i: int) -> dict[str, Any]:
    return {"v": 1, "ts": f"2026-12-01T{10 + i % 8:02d}:{i % 60:02d}:00.000Z", "request_id": f"req_{account}_{i}",
            "account_id": f"acct_{account}", "key_id": f"key_{account}", "endpoint": "openai.chat", "model": "stub-1",
            "client": {"ip": f"10.0.{account}.1", "user_agent": "bench", "header_fp": f"fp{account}",
                       "geo": {"country": "DE", "asn": 3320, "hosting": False}},
            "request": {"system": None, "messages": [{"role": "user", "content": f"question {i % 12} for account {account}"}],
                        "params": {"max_tokens": 200}},
            "response": {"status": 200, "text": "an answer", "reasoning_chars": 0, "prompt_tokens": 12, "completion_tokens": 30,
                         "finish_reason": "stop", "latency_ms": 80.0}}


def test_refreezing_after_every_report_does_not_grow_the_permanent_generation_when_state_is_replaced() -> None:
    """The same 40 accounts send the same requests round after round: every report rebuilds every account's entry (its
    request count changed) and drops the last one. Once their state has stopped growing, the frozen count stays put."""
    gc.unfreeze()
    gc.collect()
    scanner = Scanner()
    frozen = []
    for _ in range(16):
        for account in range(40):
            for i in range(12):
                scanner.update(_event(account, i))
        garbage: list[Any] = []
        garbage.append(garbage)  # a cycle made between reports each time: collected by the settle, never frozen
        del garbage
        scanner.report()
        settle_heap()
        frozen.append(gc.get_freeze_count())
    assert scanner.events == 16 * 40 * 12
    settled = frozen[5:]
    assert max(settled) - min(settled) <= 0.02 * min(settled), frozen
    gc.unfreeze()
    assert gc.collect() == 0, "garbage was held in the permanent generation"


def test_the_heap_is_settled_every_so_many_events_as_well_as_after_each_report() -> None:
    settler = HeapSettler(every=100)
    settle_heap()
    frozen = gc.get_freeze_count()
    kept = [[i] for i in range(500)]  # long-lived state the updates made
    settler.counted(60)
    assert gc.get_freeze_count() == frozen  # not yet: 60 of 100
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    settler.counted(40)
    assert gc.get_freeze_count() >= frozen + len(kept)  # settled: the new state is out of the collector's reach ...
    assert gone() is None  # ... and garbage made meanwhile was collected first, not frozen
    frozen = gc.get_freeze_count()
    settler.counted(99)
    assert gc.get_freeze_count() == frozen  # the count started again at the settle
