"""The event model v1 reader/writer: the contract every other package relies on."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from distillguard.events import (
    EventFormatError,
    EventReadProblem,
    EventWriter,
    format_ts,
    new_event,
    parse_ts,
    read_events,
    validate_event,
)


def _event(i: int) -> dict:
    return dict(
        new_event(
            endpoint="openai.chat",
            account_id=f"acct_{i % 3}",
            request={"messages": [{"role": "user", "content": f"question {i}"}], "params": {}},
            response={"status": 200, "text": "answer", "completion_tokens": 1},
            ts=format_ts(1_700_000_000 + i),
        )
    )


def test_new_event_writes_every_required_field() -> None:
    event = _event(1)
    for field in ("v", "ts", "request_id", "account_id", "endpoint", "request", "response"):
        assert field in event
    assert event["v"] == 1
    assert event["request_id"].startswith("req_")


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"events{suffix}"
    with EventWriter(path) as writer:
        writer.write_many(_event(i) for i in range(50))
    events = list(read_events([path]))
    assert [e["request"]["messages"][0]["content"] for e in events] == [f"question {i}" for i in range(50)]


def test_malformed_lines_are_reported_with_file_and_line_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [orjson.dumps(_event(0)), b"{not json", orjson.dumps({"ts": "yesterday", "endpoint": "x"}), orjson.dumps(_event(1))]
    path.write_bytes(b"\n".join(lines) + b"\n")
    problems: list[EventReadProblem] = []
    events = list(read_events([path], on_problem=problems.append))
    assert len(events) == 2
    assert [(p.line, "JSON" in p.message or "ts" in p.message) for p in problems] == [(2, True), (3, True)]
    assert str(problems[0]).startswith(f"{path}:2:")


def test_strict_mode_stops_at_first_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(orjson.dumps(_event(0)) + b"\n[1, 2]\n")
    with pytest.raises(EventFormatError, match=r"bad.jsonl:2"):
        list(read_events([path], strict=True))


def test_truncated_gzip_reports_how_far_it_got(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl.gz"
    payload = gzip.compress(b"".join(orjson.dumps(_event(i)) + b"\n" for i in range(2000)))
    path.write_bytes(payload[: len(payload) // 2])
    problems: list[EventReadProblem] = []
    events = list(read_events([path], on_problem=problems.append))
    assert 0 < len(events) < 2000
    assert len(problems) == 1 and "ends early" in problems[0].message
    assert problems[0].line == len(events) + 1 or problems[0].line > len(events)


def test_unknown_fields_pass_through_and_missing_optional_ones_are_accepted() -> None:
    event = validate_event({"ts": "2026-11-23T10:00:00.123Z", "endpoint": "openai.chat", "extra": 1})
    assert event["extra"] == 1  # type: ignore[typeddict-item]
    assert event["request"] == {} and event["response"] == {}


def test_validate_names_the_field() -> None:
    with pytest.raises(EventFormatError) as info:
        validate_event({"ts": "2026-11-23T10:00:00Z", "endpoint": "x", "account_id": 5})
    assert info.value.location == "account_id"


@given(st.floats(min_value=0, max_value=4_000_000_000))
def test_timestamps_round_trip_to_the_millisecond(seconds: float) -> None:
    assert abs(parse_ts(format_ts(seconds)) - seconds) < 0.0011
