"""Refusal floods and log lines (issue #12, findings 6 and 14).

Before: every refused request was a stored event (~0.9 KB, an attacker fills
the disk without a key) and a WARNING line; CR/LF in a path, model name or
install id forged log lines; a 404 logged its whole path (60 KB per request).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from distillguard.gateway.refusals import OVERFLOW, RefusalWindows, source_of
from distillguard.logs import FIELD_CHARS, JsonFormatter, SafeFormatter, escape_controls
from distillguard.store import iter_events
from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.upstream_stub import UpstreamStub

# -- the windows ----------------------------------------------------------------------------------------

def test_first_refusal_of_a_window_is_reported_the_rest_counted() -> None:
    now = [0.0]
    windows = RefusalWindows(interval_s=10, clock=lambda: now[0])
    assert windows.note("198.51.100.7", "openai.chat", 401, "invalid_api_key", authenticated=False)
    assert not any(windows.note("198.51.100.7", "openai.chat", 401, "invalid_api_key", authenticated=False) for _ in range(99))
    assert windows.note("198.51.100.8", "openai.chat", 401, "invalid_api_key", authenticated=False)  # another source
    assert windows.note("198.51.100.7", "openai.chat", 401, "missing_api_key", authenticated=False)  # another code
    now[0] = 9.9
    assert windows.close() == []
    now[0] = 10.0
    closed = windows.close()
    assert [(w.who, w.code, w.repeats) for w in closed] == [("198.51.100.7", "invalid_api_key", 99)]
    assert len(windows) == 0  # every window is forgotten when it closes, repeated or not
    assert windows.note("198.51.100.7", "openai.chat", 401, "invalid_api_key", authenticated=False)  # a new window


def test_sources_beyond_the_bound_share_one_overflow_window() -> None:
    windows = RefusalWindows(interval_s=10, max_windows=100, clock=lambda: 0.0)
    firsts = sum(windows.note(f"10.0.{i // 256}.{i % 256}", "openai.chat", 401, "invalid_api_key", authenticated=False)
                 for i in range(10_000))
    assert len(windows) == 101  # the bound, plus one overflow window for this endpoint, status and code
    assert firsts == 101
    (overflow,) = [w for w in windows.close(everything=True) if w.who == OVERFLOW]
    assert overflow.new_sources == 10_000 - 100 and overflow.repeats == 10_000 - 101
    assert windows.overflowed == 10_000 - 100


def test_ipv6_sources_are_counted_by_their_64() -> None:
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert source_of("203.0.113.9") == "203.0.113.9"
    assert source_of(None) == "unknown"


# -- the formatter -------------------------------------------------------------------------------------

def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("distillguard.gateway", logging.WARNING, __file__, 1, msg, args, None)


@pytest.mark.parametrize("evil", ["a\r\n2026-12-07 00:00:00 INFO forged: admin logged in", "\x1b[2J\x1b[31mred", "nul\x00byte",
                                  "line\u2028separator", "c1\x85nel", "tab\tand\x7fdel"])
def test_client_text_cannot_break_a_log_line(evil: str) -> None:
    line = SafeFormatter("%(levelname)s %(name)s: %(message)s").format(_record("GET %s → 404", evil))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x00" not in line
    assert "\u2028" not in line and "\x85" not in line and "\x7f" not in line
    assert line.startswith("WARNING distillguard.gateway: GET ")
    assert escape_controls("a\r\nb\x1b") == "a\\r\\nb\\x1b"


def test_long_fields_are_cut() -> None:
    line = SafeFormatter("%(message)s").format(_record("GET %s → 404", "/x" * 30_000))
    assert len(line) < FIELD_CHARS + 100 and "(60000 chars)" in line


def test_json_lines_are_one_object_each() -> None:
    line = JsonFormatter().format(_record("model %s not found", "evil\nINFO forged"))
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "distillguard.gateway"
    assert entry["message"] == "model evil\nINFO forged not found" and entry["ts"].endswith("Z")


# -- through a real gateway ----------------------------------------------------------------------------

@pytest.fixture()
def flood_gateway(tmp_path: Path, stub: UpstreamStub) -> Iterator[RunningGateway]:
    upstreams = [{"name": "stub", "base_url": stub.base_url, "protocol": "openai", "models": ["stub-*"], "timeout_s": 3}]
    gw = start_gateway(tmp_path, upstreams=upstreams, detection={"online": False})  # quick repeated "hi"s: not a detection test
    yield gw
    gw.stop()


def test_an_invalid_key_flood_is_stored_as_a_summary(flood_gateway: RunningGateway) -> None:
    gw = flood_gateway
    sent = 300
    with httpx.Client(timeout=10) as client:
        for i in range(sent):
            response = client.post(gw.base_url + "/chat/completions", headers={"Authorization": f"Bearer sk-dg-wrong{i}"},
                                   json={"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]})
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert gw.stop() == 0  # SIGTERM: open windows are summarised before the sink drains
    refused = [e for e in iter_events(gw.database) if e["response"]["error"] == "invalid_api_key"]
    singles = [e for e in refused if "aggregate" not in e]
    summaries = [e for e in refused if "aggregate" in e]
    assert 1 <= len(singles) <= 2 and 1 <= len(summaries) <= 2  # one window, or two if the run crossed 10 s
    assert len(singles) + sum(e["aggregate"]["count"] for e in summaries) == sent  # every refusal accounted for
    summary = summaries[0]
    assert summary["aggregate"]["source"] == "127.0.0.1" and summary["client"]["ip"] == "127.0.0.1"
    assert summary["endpoint"] == "openai.chat" and summary["response"]["status"] == 401 and summary["account_id"] is None
    assert summary["aggregate"]["first_ts"] <= summary["aggregate"]["last_ts"]
    log = gw.log()
    assert log.count("→ 401 invalid_api_key") <= 2  # one WARNING per window, not per request
    assert "more refusals on openai.chat → 401 invalid_api_key from source 127.0.0.1" in log


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        return sock.recv(65536)


def test_forged_log_lines_are_escaped_and_long_paths_cut(flood_gateway: RunningGateway) -> None:
    gw = flood_gateway
    port = int(gw.root_url.rsplit(":", 1)[1])
    answer = _raw_request(port, b"GET /v1/nothing%0d%0a2026-12-07%2000:00:00,000%20INFO%20forged HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404")
    secret = gw.create_key("logs")["secret"]
    forged = "nope\r\n2026-12-07 00:00:00,000 INFO distillguard.gateway: forged"
    response = httpx.post(gw.base_url + "/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                          json={"model": forged, "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert response.status_code == 404  # "The model '…' does not exist": logged with the model name in it
    long_path = "/v1/" + "a" * 50_000
    assert httpx.get(gw.root_url + long_path, timeout=10).status_code in (404, 414, 431)
    gw.stop()
    log = gw.log()
    assert "forged" in log
    for line in log.splitlines():
        assert not line.startswith("2026-12-07 00:00:00"), f"forged line: {line!r}"
        assert len(line) < 2000, f"uncut line of {len(line)} characters"


def test_json_logs(tmp_path: Path, stub: UpstreamStub) -> None:
    gw = start_gateway(tmp_path, stub.base_url, log_format="json")
    try:
        httpx.get(gw.root_url + "/v1/nothing%0aforged", timeout=10)
    finally:
        gw.stop()
    entries = [orjson.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
    assert entries and all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
    assert any("404" in e["message"] for e in entries)




def test_unknown_routes_are_summarised_in_the_log_only(flood_gateway: RunningGateway) -> None:
    gw = flood_gateway
    with httpx.Client(timeout=10) as client:
        for i in range(50):
            assert client.get(gw.root_url + f"/v1/nothing-{i}").status_code == 404
    assert gw.stop() == 0
    log = gw.log()
    assert log.count("GET /v1/nothing-") == 1 and "49 more refusals on unknown_route → 404 unknown_route from source 127.0.0.1" in log
    assert not [e for e in iter_events(gw.database) if e["endpoint"] == "unknown_route"]  # 404s are not events


def test_upstream_errors_are_logged_once_per_key_and_window(flood_gateway: RunningGateway) -> None:
    gw = flood_gateway
    key = gw.create_key("upstream-errors")
    with httpx.Client(timeout=10) as client:
        for _ in range(20):
            response = client.post(gw.base_url + "/chat/completions", headers={"Authorization": f"Bearer {key['secret']}"},
                                   json={"model": "stub-html-502", "messages": [{"role": "user", "content": "hi"}]})
            assert response.status_code == 502
    assert gw.stop() == 0
    log = gw.log()
    assert log.count("with a non-JSON body") == 1
    assert f"19 more refusals on openai.chat → 502 upstream_http_502 from key {key['key_id']}" in log
    assert len([e for e in iter_events(gw.database) if e["response"]["error"] == "upstream_http_502"]) == 20  # each still an event
