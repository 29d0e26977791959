"""Values of unexpected runtime types from outside, against the gateway as built (compiled with mypyc by ``make install``).

Compiled code checks every declared type at run time: a JSON number where a ``str`` is annotated, a ``null`` where
a list is iterated, an integer past 64 bits, bytes that are not UTF-8 in a header — each would be a ``TypeError`` in
the middle of a request, which the client sees as a 500 or a closed connection. These tests send such values from
outside (the official wire formats, raw sockets) to every model endpoint, the admin API and the headers the gateway
reads, and require an API-shaped answer (2xx, or a 4xx in the caller's error shape), never a 5xx or silence, plus a
complete event for each refused model request. ``tests/test_compiled.py`` checks that the compiled modules are the
ones imported; the probe battery of issues #12 and #13 rerun on the compiled build is in bench/RESULTS.md
("Probes and faults on the compiled build").
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from distillguard.cli import main
from distillguard.config import MAX_LIMIT
from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.upstream_stub import UpstreamStub

# One value of each JSON type, and the edges compiled code has trouble with: a 100-bit integer, a huge float,
# control characters. Every field below receives each of them.
ODD_VALUES: list[Any] = [None, 5, 2**100, -1, 1e308, True, "x", "", [], [5], [None], {}, {"a": 1}, "\x00\x1b\r\n"]
BASES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/messages": {"model": "stub-1", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/messages/count_tokens": {"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"model": "stub-1", "input": "hi"},
    "/v1/completions": {"model": "stub-1", "prompt": "hi"},
    "/v1/embeddings": {"model": "stub-1", "input": "hi"},
}
FIELDS = ["model", "messages", "stream", "max_tokens", "temperature", "n", "logprobs", "top_logprobs", "stream_options",
          "tools", "system", "input", "instructions", "prompt", "max_output_tokens", "metadata"]
MESSAGE_FIELDS = ["role", "content", "tool_calls", "reasoning_content"]
CONTENT_PARTS: list[Any] = [[{"type": "text", "text": 5}], [{"type": 5}], [{"type": "tool_use", "id": 5, "name": 5, "input": 5}],
                            [{"type": "tool_result", "tool_use_id": 5, "content": [5]}], [{"type": "text"}]]
HEADERS = ["user-agent", "anthropic-version", "anthropic-beta", "x-forwarded-for", "x-real-ip", "accept-language",
           "dg-client-signals", "signature", "signature-input", "content-type", "x-request-id"]
HEADER_VALUES = [b"\xff\xfe", b"a\x00b", b"\x80" * 300, b""]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub) -> Iterator[RunningGateway]:
    unlimited = {"requests_per_min": None, "tokens_per_min": None, "daily_tokens": None, "concurrent_requests": None}
    upstreams = [{"name": "stub-anthropic", "base_url": stub.base_url, "protocol": "anthropic", "models": ["claude-*"], "timeout_s": 3},
                 {"name": "stub", "base_url": stub.base_url, "protocol": "openai", "models": ["*"], "timeout_s": 3}]
    gw = start_gateway(tmp_path_factory.mktemp("odd"), upstreams=upstreams, limits=unlimited, detection={"online": False})
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def secret(gateway: RunningGateway) -> str:
    return str(gateway.create_key("odd-inputs")["secret"])


def _api_shaped(path: str, response: httpx.Response) -> str | None:
    """Why ``response`` is not an acceptable answer to client input, or None when it is."""
    if response.status_code >= 500:
        return f"{response.status_code} {response.text[:200]}"
    if response.status_code < 400:
        return None
    body = response.json()
    error = body.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return f"{response.status_code} without an error object: {response.text[:200]}"
    if path.startswith("/v1/messages") and body.get("type") != "error":
        return f"{response.status_code} not in Anthropic's shape: {response.text[:200]}"
    return None


def _variants(base: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in FIELDS:
        for value in ODD_VALUES:
            yield f"{field}={value!r}", {**base, field: value}
            yield f"{field}={value!r} streamed", {**base, field: value, **({"stream": True} if field != "stream" else {})}
    if "messages" in base or path == "/v1/responses":
        where = "messages" if "messages" in base else "input"
        for field in MESSAGE_FIELDS:
            for value in ODD_VALUES + CONTENT_PARTS:
                yield f"{where}.0.{field}={value!r}", {**base, where: [{"role": "user", "content": "hi", field: value}]}


# Every endpoint to the OpenAI-protocol upstream; the Messages API also to the Anthropic-protocol one (the only API
# this gateway sends there: the others are a 400 protocol_mismatch before any field is read).
ROUTES = [(path, "stub-1") for path in BASES] + [(path, "claude-1") for path in BASES if path.startswith("/v1/messages")]


@pytest.mark.parametrize(("path", "model"), ROUTES)
def test_every_field_of_every_odd_type_gets_an_api_shaped_answer(gateway: RunningGateway, secret: str, path: str, model: str) -> None:
    headers = {"Authorization": f"Bearer {secret}", "x-api-key": secret}
    wrong = []
    with httpx.Client(base_url=gateway.root_url, headers=headers, timeout=15) as client:
        for label, body in _variants({**BASES[path], "model": model}, path):
            reason = _api_shaped(path, client.post(path, content=json.dumps(body)))
            if reason is not None:
                wrong.append(f"{label}: {reason}")
    assert not wrong, f"{len(wrong)} answers to odd values on {path} were not API-shaped:\n" + "\n".join(wrong[:20])
    assert "Traceback" not in gateway.log(), gateway.log()[-3000:]


@pytest.mark.parametrize("raw_body", [
    b'{"model": 5, "model": "stub-1", "messages": [{"role": "user", "content": "hi"}]}',  # duplicate keys: the last one counts
    b'{"model": "stub-1", "max_tokens": 1' + b"0" * 400 + b', "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "stub-1", "temperature": 1e999, "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "stub-1\xff", "messages": [{"role": "user", "content": "hi\xfe"}]}',
    b'{"model": "stub-1", "messages": [{"role": "user", "content": "hi\\ud800"}]}',
    b'\xef\xbb\xbf{"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "stub-1", "metadata": ' + b"[" * 5000 + b"]" * 5000 + b', "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "stub-1", "messages": [{"role": "user", "content": ' + b"[" * 1000 + b"]" * 1000 + b"}]}",
], ids=["duplicate-keys", "400-digit-int", "float-overflow", "non-utf8", "lone-surrogate", "bom", "nested-5000", "nested-content"])
def test_odd_json_text_gets_an_api_shaped_answer(gateway: RunningGateway, secret: str, raw_body: bytes) -> None:
    response = httpx.post(gateway.base_url + "/chat/completions", content=raw_body, timeout=15,
                          headers={"Authorization": f"Bearer {secret}", "content-type": "application/json"})
    assert _api_shaped("/v1/chat/completions", response) is None


def test_a_refused_request_with_a_non_list_messages_is_a_complete_event(gateway: RunningGateway, secret: str) -> None:
    """`messages: 5` is a 422, and its event is the ordinary one: it once failed to build, leaving a minimal event
    without the client's details and one ERROR traceback in the log per request."""
    for value in (5, 1.5, True):
        response = httpx.post(gateway.base_url + "/chat/completions", timeout=15,
                              json={"model": "stub-1", "messages": value},
                              headers={"Authorization": f"Bearer {secret}", "User-Agent": "odd-inputs/1"})
        assert response.status_code == 422
        assert response.json()["error"]["message"].startswith("messages: expected an array")
        event = gateway.event(response.headers["x-request-id"])
        assert event["response"]["status"] == 422
        assert event["response"]["error"] == "invalid_type"
        assert event["client"]["user_agent"] == "odd-inputs/1"
    assert "building the event" not in gateway.log()


def _raw(gateway: RunningGateway, data: bytes) -> bytes:
    host, port = gateway.root_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


# Framing a parser may hand the application as None, or not at all: each is answered with a status line (501 for a
# transfer coding the server does not know, RFC 9112 §6.1), never a closed connection.
FRAMINGS: dict[str, tuple[bytes, bytes]] = {
    "absolute-form": (b"GET http://gw/healthz HTTP/1.1\r\nHost: gw\r\n\r\n", b"200"),
    "fragment": (b"GET /healthz#x HTTP/1.1\r\nHost: gw\r\n\r\n", b"200"),
    "no query, empty host": (b"GET /healthz HTTP/1.1\r\nHost: \r\n\r\n", b"200"),
    "asterisk-form": (b"OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n", b"404"),
    "CONNECT": (b"CONNECT gw:80 HTTP/1.1\r\nHost: gw\r\n\r\n", b"400"),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"400"),
    "TLS client hello": (bytes.fromhex("16030100a5010000a10303") + bytes(200), b"400"),
    "negative length": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: -1\r\n\r\n{}", b"400"),
    "100-digit length": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: " + b"9" * 100 + b"\r\n\r\n{}", b"400"),
    "length list": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 2, 2\r\n\r\n{}", b"400"),
    "unknown coding": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\n\r\n", b"501"),
    "chunk extension not UTF-8": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"2;a=\xff\r\n{}\r\n0\r\n\r\n", b"400"),
    "header name not UTF-8": (b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX\xffA: b\r\n\r\n", b"400"),
    "host not UTF-8": (b"GET /healthz HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n", b"400"),
    "path %00 and %ff": (b"GET /v1/%00%ff HTTP/1.1\r\nHost: gw\r\n\r\n", b"404"),
    "query not UTF-8": (b"GET /admin/v1/events?since=\xff HTTP/1.1\r\nHost: gw\r\n\r\n", b"400"),
}


@pytest.mark.parametrize("framing", list(FRAMINGS))
def test_odd_framing_gets_a_status_line(gateway: RunningGateway, framing: str) -> None:
    data, status = FRAMINGS[framing]
    answer = _raw(gateway, data)
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:200]


@pytest.mark.parametrize("name", HEADERS)
def test_header_bytes_that_are_not_text_get_an_answer(gateway: RunningGateway, secret: str, name: str) -> None:
    body = json.dumps(BASES["/v1/messages"]).encode()
    for value in HEADER_VALUES:
        head = (f"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nx-api-key: {secret}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n").encode() + name.encode() + b": " + value + b"\r\n\r\n"
        answer = _raw(gateway, head + body)
        assert answer[:10] in (b"HTTP/1.1 2", b"HTTP/1.1 4"), f"{name}: {value[:20]!r} → {answer[:200]!r}"


@pytest.mark.parametrize("credential", [b"Bearer \xff\xfe", b"Bearer " + b"\x80" * 64, b"\xff", b"Bearer", b"Basic Zm9vOmJhcg=="])
def test_credentials_that_are_not_text_are_a_401(gateway: RunningGateway, credential: bytes) -> None:
    body = json.dumps(BASES["/v1/chat/completions"]).encode()
    for name in (b"Authorization", b"x-api-key"):
        answer = _raw(gateway, b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n" + name + b": " + credential +
                      f"\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]


def test_a_limit_past_2_to_the_53_is_a_422_and_the_accounts_stay_listable(gateway: RunningGateway) -> None:
    """A 100-bit limit was stored, then every `GET /admin/v1/accounts` was a 500 (orjson stops at 64 bits)."""
    too_big = {"requests_per_min": 2**100}
    created = gateway.admin("POST", "/admin/v1/accounts", json={"name": "huge", "limits": too_big})
    assert created.status_code == 422 and "limits.requests_per_min" in created.json()["error"]["message"]
    account = gateway.admin("POST", "/admin/v1/accounts", json={"name": "edge", "limits": {"daily_tokens": MAX_LIMIT}})
    assert account.status_code == 201
    account_id = account.json()["account_id"]
    for method, path, body in [
        ("POST", f"/admin/v1/accounts/{account_id}/keys", {"limits": {"tokens_per_min": MAX_LIMIT + 1}}),
        ("PUT", f"/admin/v1/accounts/{account_id}/limits", {"concurrent_requests": 2**64}),
        ("POST", "/admin/v1/accounts/bulk", {"accounts": [{"name": "b", "limits": {"daily_tokens": 2**70}, "key": True}]}),
    ]:
        response = gateway.admin(method, path, json=body)
        assert response.status_code == 422, (path, response.text)
        assert "less than or equal to" in response.json()["error"]["message"]
    listing = gateway.admin("GET", "/admin/v1/accounts")
    assert listing.status_code == 200
    assert not any(a["name"] in ("huge", "b") for a in listing.json()["data"])


def test_a_config_limit_past_2_to_the_53_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dg.yaml"
    path.write_text(yaml.safe_dump({"limits": {"tokens_per_min": 2**60}}))
    assert main(["accounts", "list", "--config", str(path)]) == 2
    assert f"{path}: limits.tokens_per_min: Input should be less than or equal to {MAX_LIMIT}" in capsys.readouterr().err
