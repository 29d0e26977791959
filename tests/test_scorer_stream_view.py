"""The central scorer's stream carries each event's ``scoring_view``: a scan of the views must equal a scan of the events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from distillguard.detect.scanner import Scanner
from distillguard.events import read_events
from distillguard.sim.scenarios import load_scenario, simulate
from distillguard.state.scorer_stream import encode_event, scoring_view


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    path: Path = tmp_path_factory.mktemp("view") / "e.jsonl"
    simulate(load_scenario("small"), 5, path)
    return list(read_events([path]))


def test_scan_of_the_stream_views_equals_the_scan_of_the_events(events: list[dict[str, Any]]) -> None:
    full, viewed = Scanner(), Scanner()
    for event in events:
        full.update(event)
        viewed.update(orjson.loads(encode_event(event)))
    expected = full.report()
    assert expected["accounts"] and any(e["risk"] != "low" for e in expected["accounts"])
    assert viewed.report() == expected


def test_the_view_leaves_out_answers_and_earlier_turns_and_keeps_the_event(events: list[dict[str, Any]]) -> None:
    long = next(e for e in events if len(e["request"]["messages"]) > 2)
    before = orjson.dumps(long)
    view = scoring_view(long)
    assert orjson.dumps(long) == before  # the event (on its way to the store too) is not touched
    assert "text" not in view["response"] and view["response"]["completion_tokens"] == long["response"]["completion_tokens"]
    messages, original = view["request"]["messages"], long["request"]["messages"]
    assert messages[0] == original[0] and messages[-1] == original[-1] and len(messages) == len(original)
    assert all(m == o for m, o in zip(messages, original, strict=True) if o["role"] == "user")
    assert any(m["content"] == "" and o["content"] for m, o in zip(messages, original, strict=True) if o["role"] == "assistant")
    total = sum(len(orjson.dumps(e)) for e in events)
    carried = sum(len(encode_event(e)) for e in events)
    assert carried < 0.9 * total  # the simulator's answers are short (~400 characters); real ones weigh more
