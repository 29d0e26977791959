"""Bad input and faults: each gets an API-shaped error, a log line and an event — nothing is lost."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import orjson
import pytest

from distillguard.events import parse_ts
from distillguard.gateway.errors import error_body, error_type
from distillguard.store import iter_events
from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.upstream_stub import UpstreamStub, free_port


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub) -> Iterator[RunningGateway]:
    dead_port = free_port()  # nothing listens here: connection refused
    upstreams = [
        {"name": "dead", "base_url": f"http://127.0.0.1:{dead_port}/v1", "protocol": "openai", "models": ["dead-model"]},
        {"name": "stub-anthropic", "base_url": stub.base_url, "protocol": "anthropic", "models": ["claude-*"], "timeout_s": 1},
        {"name": "stub", "base_url": stub.base_url, "protocol": "openai", "models": ["*"], "timeout_s": 1},
    ]
    # Online detection off: these tests are about faults, and ~30 quick "hi"s from one account must not be
    # throttled by the scorer's opinion of them halfway through the module.
    gw = start_gateway(tmp_path_factory.mktemp("faults"), upstreams=upstreams, max_body_bytes=20_000, detection={"online": False})
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def key(gateway: RunningGateway) -> dict[str, str]:
    return gateway.create_key("fault-tester")


def _post(gateway: RunningGateway, secret: str, body: bytes | dict, path: str = "/chat/completions") -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    if isinstance(body, dict):
        return httpx.post(gateway.base_url + path, headers=headers, json=body, timeout=10)
    return httpx.post(gateway.base_url + path, headers=headers, content=body, timeout=10)


def _events_with_error(gateway: RunningGateway, code: str, timeout: float = 5.0, at_least: int = 1) -> list[dict]:
    """Events carrying ``code``; waits (up to ``timeout``) for the batched writer to store ``at_least`` of them."""
    deadline = time.time() + timeout
    while True:
        found = [e for e in gateway.events() if e["response"].get("error") == code]
        if len(found) >= at_least or time.time() > deadline:
            return found
        time.sleep(0.1)


def test_malformed_json_is_a_400_in_openai_shape(gateway: RunningGateway, key: dict[str, str]) -> None:
    response = _post(gateway, key["secret"], b'{"model": "stub-1", "messages": [')
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json" and "not valid JSON" in error["message"]
    assert _events_with_error(gateway, "invalid_json")
    assert "invalid_json" in gateway.log()


def test_malformed_json_is_a_400_in_anthropic_shape(gateway: RunningGateway, key: dict[str, str]) -> None:
    response = httpx.post(gateway.base_url + "/messages", headers={"x-api-key": key["secret"]}, content=b"{nope", timeout=10)
    assert response.status_code == 400
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"model": 5, "messages": []}, "model"),
        ({"model": "stub-1", "messages": "hi"}, "messages"),
        ({"model": "stub-1", "messages": [{"content": "x"}]}, "messages.0.role"),
        ({"model": "stub-1", "messages": [], "max_tokens": "lots"}, "max_tokens"),
        ([1, 2], "JSON object"),
    ],
)
def test_wrong_types_are_422_naming_the_field(gateway: RunningGateway, key: dict[str, str], body: object, location: str) -> None:
    response = httpx.post(gateway.base_url + "/chat/completions", headers={"Authorization": f"Bearer {key['secret']}"}, json=body, timeout=10)
    assert response.status_code == 422
    assert location in response.json()["error"]["message"]


def test_oversize_body_is_413(gateway: RunningGateway, key: dict[str, str]) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["secret"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "x" * 50_000}])
    assert info.value.status_code == 413
    assert "exceeds the limit" in str(info.value)
    assert _events_with_error(gateway, "body_too_large")


def test_unknown_model_is_404(gateway: RunningGateway, key: dict[str, str], tmp_path: Path) -> None:
    # This gateway routes "*" to the stub, so use a dedicated one with an exact list.
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["secret"], max_retries=0)
    gw2 = start_gateway(tmp_path, upstreams=[{"name": "only", "base_url": "http://127.0.0.1:9/v1", "models": ["known"]}])
    try:
        secret = gw2.create_key("x")["secret"]
        with pytest.raises(openai.NotFoundError) as info:
            openai.OpenAI(base_url=gw2.base_url, api_key=secret, max_retries=0).chat.completions.create(
                model="gpt-unknown", messages=[{"role": "user", "content": "hi"}])
        assert "gpt-unknown" in str(info.value)
        with pytest.raises(anthropic.NotFoundError):
            anthropic.Anthropic(base_url=gw2.root_url, api_key=secret, max_retries=0).messages.create(
                model="nope", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert len([e for e in gw2.events(expect=2) if e["response"]["error"] == "model_not_found"]) == 2
    finally:
        gw2.stop()
    assert client.models.list().data


def test_bad_and_missing_keys_are_401(gateway: RunningGateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.base_url, api_key="sk-dg-wrong", max_retries=0).chat.completions.create(
            model="stub-1", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=gateway.root_url, api_key="sk-dg-wrong", max_retries=0).messages.create(
            model="stub-1", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    response = httpx.post(gateway.base_url + "/chat/completions", json={"model": "stub-1", "messages": []})
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"
    assert _events_with_error(gateway, "invalid_api_key")


def test_revocation_by_cli_takes_effect_without_restart(gateway: RunningGateway) -> None:
    key = gateway.create_key("to-revoke")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["secret"], max_retries=0)
    client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "hi"}])
    out = subprocess.run(
        [sys.executable, "-m", "distillguard.cli", "keys", "revoke", key["key_id"], "--config", str(gateway.config_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "hi"}])
        except openai.AuthenticationError as exc:
            assert "revoked" in str(exc)
            return
        time.sleep(0.2)
    pytest.fail("revoked key still accepted after 5 s")


def test_suspended_account_is_refused_in_both_shapes_until_activated(gateway: RunningGateway) -> None:
    key = gateway.create_key("to-suspend")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["secret"], max_retries=0)
    client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "hi"}])
    out = subprocess.run(
        [sys.executable, "-m", "distillguard.cli", "accounts", "suspend", key["account_id"], "--reason", "chargeback",
         "--config", str(gateway.config_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    deadline = time.time() + 5
    while True:
        try:
            client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "hi"}])
        except openai.PermissionDeniedError as exc:
            assert exc.status_code == 403 and "suspended" in str(exc)
            break
        assert time.time() < deadline, "suspended account still served after 5 s"
        time.sleep(0.2)
    with pytest.raises(anthropic.PermissionDeniedError):
        anthropic.Anthropic(base_url=gateway.root_url, api_key=key["secret"], max_retries=0).messages.create(
            model="stub-1", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert _events_with_error(gateway, "account_suspended")
    assert gateway.admin("POST", f"/admin/v1/accounts/{key['account_id']}/status", json={"status": "active"}).status_code == 200
    client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "hi"}])  # served again at once
    audit = gateway.admin("GET", "/admin/v1/audit").json()
    actions = [(a["action"], a["actor"]) for a in (audit.get("data", audit) if isinstance(audit, dict) else audit) if a["target"] == key["account_id"]]
    assert ("account.suspend", "cli") in actions and ("account.activate", "admin") in actions
    bad = gateway.admin("POST", f"/admin/v1/accounts/{key['account_id']}/status", json={"status": "banned"})
    assert bad.status_code in (400, 422) and "status" in bad.text


def test_upstream_refusing_connections_is_502(gateway: RunningGateway, key: dict[str, str]) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["secret"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="dead-model", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502 and "could not be reached" in str(info.value)
    with pytest.raises(openai.APIStatusError) as info:
        list(client.chat.completions.create(model="dead-model", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert info.value.status_code == 502
    assert len(_events_with_error(gateway, "upstream_unreachable", at_least=2)) >= 2


def test_upstream_timeout_is_504(gateway: RunningGateway, key: dict[str, str]) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["secret"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="stub-hang", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 504
    assert _events_with_error(gateway, "upstream_timeout")


def test_upstream_error_status_is_passed_through(gateway: RunningGateway, key: dict[str, str]) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["secret"], max_retries=0)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="stub-500", messages=[{"role": "user", "content": "hi"}])
    assert "upstream exploded" in str(info.value)


def test_non_json_upstream_errors_are_wrapped_in_the_callers_shape(gateway: RunningGateway, key: dict[str, str]) -> None:
    """A proxy's HTML 502 page or a plain-text 503 must not reach an SDK labelled as JSON: status kept, body API-shaped."""
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["secret"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="stub-html-502", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502
    assert info.value.response.headers["content-type"] == "application/json"
    error = info.value.response.json()["error"]
    assert error["type"] == "upstream_error" and error["code"] == "upstream_error"
    assert "502 Bad Gateway" in error["message"] and "nginx" in error["message"] and "<" not in error["message"]
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model="stub-text-503", prompt="hi")
    assert info.value.status_code == 503
    assert "upstream connect error" in info.value.response.json()["error"]["message"]

    a_client = anthropic.Anthropic(base_url=gateway.root_url, api_key=key["secret"], max_retries=0)
    for model, status in (("claude-html-502", 502), ("claude-text-503", 503), ("stub-html-502", 502)):  # native, native, translated
        with pytest.raises(anthropic.APIStatusError) as a_info:
            a_client.messages.create(model=model, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert a_info.value.status_code == status
        body = a_info.value.response.json()
        assert body["type"] == "error" and body["error"]["type"] in ("api_error", "overloaded_error")
        assert body["error"]["message"].startswith(f"Upstream error (HTTP {status}):")
    # The upstream's own JSON error object still passes through untouched.
    with pytest.raises(openai.InternalServerError) as json_info:
        client.chat.completions.create(model="stub-500", messages=[{"role": "user", "content": "hi"}])
    assert json_info.value.response.json()["error"]["message"] == "upstream exploded"
    assert _events_with_error(gateway, "upstream_http_502")
    assert "non-JSON body (text/html" in gateway.log()


def test_405_and_409_are_invalid_request_errors(gateway: RunningGateway, key: dict[str, str]) -> None:
    wrong_method = httpx.get(gateway.base_url + "/chat/completions", timeout=10)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["type"] == "invalid_request_error"
    wrong_method = httpx.get(gateway.base_url + "/messages", timeout=10)
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"type": "error", "error": {"type": "invalid_request_error", "message": wrong_method.json()["error"]["message"]}}

    # 409 (an enrollment conflict, docs/attestation.md) goes through the same mapping, in both shapes.
    assert orjson.loads(error_body("openai", 409, "conflict", "x"))["error"]["type"] == "invalid_request_error"
    assert orjson.loads(error_body("anthropic", 409, "conflict", "x"))["error"]["type"] == "invalid_request_error"
    # Any other client error is still a client error, never a server error.
    assert error_type("openai", 418) == error_type("anthropic", 418) == "invalid_request_error"
    assert (error_type("openai", 599), error_type("anthropic", 599)) == ("server_error", "api_error")


def test_events_since_is_validated_and_compared_as_time(gateway: RunningGateway, key: dict[str, str]) -> None:
    for bad in ("yesterday", "2026-13-01T00:00:00Z"):
        response = gateway.admin("GET", "/admin/v1/events", params={"since": bad})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_since"
        assert "since" in error["message"] and "ISO-8601" in error["message"] and bad in error["message"]
    _post(gateway, key["secret"], {"model": "stub-1", "messages": [{"role": "user", "content": "since-probe"}]})
    deadline = time.time() + 5
    mine: list[dict] = []
    while not mine and time.time() < deadline:
        mine = [e for e in gateway.events() if e["request"]["messages"] and e["request"]["messages"][0]["content"] == "since-probe"]
        time.sleep(0.1)
    assert mine
    request_id, when = mine[0]["request_id"], parse_ts(mine[0]["ts"])
    plus_two = dt.timezone(dt.timedelta(hours=2))

    def ids_since(offset_s: float, *, raw_plus: bool = False) -> set[str]:
        since = dt.datetime.fromtimestamp(when + offset_s, plus_two).isoformat()  # e.g. 2026-11-20T12:00:00.123000+02:00
        if raw_plus:  # written into the URL unencoded, as with curl: the '+' arrives as a space
            response = httpx.get(f"{gateway.root_url}/admin/v1/events?since={since}",
                                 headers={"Authorization": f"Bearer {gateway.admin_token}"}, timeout=30)
        else:
            response = gateway.admin("GET", "/admin/v1/events", params={"since": since})
        assert response.status_code == 200, response.text
        return {orjson.loads(line)["request_id"] for line in response.content.splitlines() if line.strip()}

    assert request_id in ids_since(-1.0)
    assert request_id not in ids_since(+1.0)
    assert request_id in ids_since(-1.0, raw_plus=True)
    assert request_id not in ids_since(+1.0, raw_plus=True)


def test_rate_limit_is_429_with_retry_after(gateway: RunningGateway) -> None:
    key = gateway.create_key("limited", limits={"requests_per_min": 2})
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["secret"], max_retries=0)
    for _ in range(2):
        client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "hi"}])
    retry_after = info.value.response.headers.get("retry-after")
    assert retry_after is not None and 1 <= int(retry_after) <= 60
    a_client = anthropic.Anthropic(base_url=gateway.root_url, api_key=key["secret"], max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as a_info:
        a_client.messages.create(model="stub-1", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert a_info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert _events_with_error(gateway, "rate_limit_exceeded")


def test_client_disconnect_mid_stream_cancels_upstream(gateway: RunningGateway, key: dict[str, str], stub: UpstreamStub) -> None:
    before = stub.cancelled
    with httpx.stream(
        "POST", gateway.base_url + "/chat/completions", headers={"Authorization": f"Bearer {key['secret']}"},
        json={"model": "stub-slow-stream", "messages": [{"role": "user", "content": "disconnect me"}], "stream": True}, timeout=10,
    ) as response:
        next(response.iter_raw())
    deadline = time.time() + 5
    while stub.cancelled == before and time.time() < deadline:
        time.sleep(0.05)
    assert stub.cancelled > before, "the upstream request was not cancelled"
    events = []
    while not events and time.time() < deadline + 5:
        events = [e for e in gateway.events() if e["request"]["messages"] and e["request"]["messages"][0]["content"] == "disconnect me"]
        time.sleep(0.1)
    assert events and events[0]["response"]["status"] == 499 and events[0]["response"]["error"] == "client_disconnected"


def test_unknown_route_and_admin_auth(gateway: RunningGateway) -> None:
    assert httpx.get(gateway.root_url + "/v1/nothing").status_code == 404
    assert httpx.get(gateway.root_url + "/admin/v1/accounts").status_code == 401
    assert httpx.get(gateway.root_url + "/admin/v1/accounts", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_sigterm_drains_every_event(tmp_path: Path, stub: UpstreamStub) -> None:
    gw = start_gateway(tmp_path, stub.base_url)
    secret = gw.create_key("drain")["secret"]
    client = openai.OpenAI(base_url=gw.base_url, api_key=secret, max_retries=0)
    errors: list[Exception] = []

    def burst() -> None:
        for _ in range(25):
            try:
                client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "burst"}])
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gw.stop(signal.SIGTERM)
    stored = [e for e in iter_events(gw.database) if e["request"]["messages"] and e["request"]["messages"][0]["content"] == "burst"]
    assert not errors
    assert len(stored) == 100


def test_store_unavailable_spills_and_replays(tmp_path: Path, stub: UpstreamStub) -> None:
    """A SQLite file that becomes unwritable: events spill to JSONL, then are replayed on recovery."""
    gw = start_gateway(tmp_path, stub.base_url)
    secret = gw.create_key("spill")["secret"]
    client = openai.OpenAI(base_url=gw.base_url, api_key=secret, max_retries=0)
    db_path = Path(gw.database.removeprefix("sqlite:///"))
    # Lock the database exclusively from another connection so the sink's writes fail.
    import sqlite3

    blocker = sqlite3.connect(db_path, timeout=0.1, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for _ in range(10):
            client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "while down"}])
        deadline = time.time() + 15
        while not any(gw.spill_dir.glob("spill-*.jsonl")) and time.time() < deadline:
            time.sleep(0.1)
        assert any(gw.spill_dir.glob("spill-*.jsonl")), "no spill file while the store was locked"
        # The overflow guard spills as soon as a write has waited 2 s; the writer's own line comes when that write
        # fails, at database_timeout_s (5 s): wait for it rather than expect it with the first spill file.
        while "spilling" not in gw.log() and time.time() < deadline:
            time.sleep(0.1)
        assert "spilling" in gw.log()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    deadline = time.time() + 15
    while any(gw.spill_dir.glob("spill-*.jsonl")) and time.time() < deadline:
        time.sleep(0.2)
    gw.stop()
    stored = [e for e in iter_events(gw.database) if e["request"]["messages"] and e["request"]["messages"][0]["content"] == "while down"]
    assert len(stored) == 10
    assert not any(gw.spill_dir.glob("spill-*.jsonl"))


def test_free_port_helper_gives_a_bindable_port() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert os.getpid() > 0
