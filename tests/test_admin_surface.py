"""The admin surface (issue #12, finding 3 and 10): who may start it, where it listens, what bodies it takes.

Each test drives a real ``distillguard serve`` subprocess (or the CLI) from the
outside, as an operator or an attacker would.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_fixtures import RunningGateway, start_gateway, write_config
from tests.upstream_stub import UpstreamStub, free_port


def _serve(tmp_path: Path, stub: UpstreamStub, **config: Any) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` expecting it to refuse to start: it must exit by itself, quickly."""
    path, _ = write_config(tmp_path, [{"name": "stub", "base_url": stub.base_url}], **config)
    return subprocess.run([sys.executable, "-m", "distillguard.cli", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"admin_token": ""}, "admin_token: empty"),
        ({"admin_token": "   "}, "admin_token: empty"),
        ({"admin_token": "change-me", "listen": "0.0.0.0:{port}"}, "admin_token: still the default 'change-me'"),
        ({"admin_token": "change-me", "listen": "127.0.0.1:{port}", "admin_listen": "0.0.0.0:{port2}"},
         "(admin_listen), which is not a loopback address"),
    ],
)
def test_serve_refuses_a_guessable_admin_token(tmp_path: Path, stub: UpstreamStub, config: dict[str, str], expected: str) -> None:
    config = {k: v.format(port=free_port(), port2=free_port()) for k, v in config.items()}
    done = _serve(tmp_path, stub, **config)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert "listening" not in done.stderr


def test_default_token_on_loopback_starts_with_a_warning(tmp_path: Path, stub: UpstreamStub) -> None:
    gw = start_gateway(tmp_path, stub.base_url, admin_token="change-me")
    try:
        assert "admin_token is the default 'change-me'" in gw.log()
        assert httpx.get(gw.root_url + "/admin/v1/status", headers={"Authorization": "Bearer change-me"}).status_code == 200
        assert httpx.get(gw.root_url + "/admin/v1/status", headers={"Authorization": "Bearer"}).status_code == 401
    finally:
        gw.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])  # localhost: every address it resolves to is checked
def test_port_in_use_is_a_clear_error_before_serving(tmp_path: Path, stub: UpstreamStub, host: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(tmp_path, stub, listen=f"{host}:{port}")
    assert done.returncode == 2
    assert f"listen: cannot listen on {host}:{port}: already in use" in done.stderr
    assert "gateway on http" not in done.stderr and "listening" not in done.stderr


def test_admin_listen_separates_the_admin_api(tmp_path: Path, stub: UpstreamStub) -> None:
    admin_port = free_port()
    gw = start_gateway(tmp_path, stub.base_url, admin_listen=f"127.0.0.1:{admin_port}")
    try:
        headers = {"Authorization": f"Bearer {gw.admin_token}"}
        main_answer = httpx.get(gw.root_url + "/admin/v1/status", headers=headers)
        assert main_answer.status_code == 404
        assert main_answer.json()["error"]["code"] == "unknown_route"
        admin_root = f"http://127.0.0.1:{admin_port}"
        assert httpx.get(admin_root + "/admin/v1/status", headers=headers).status_code == 200
        account = httpx.post(admin_root + "/admin/v1/accounts", headers=headers, json={"name": "a"}).json()
        key = httpx.post(admin_root + f"/admin/v1/accounts/{account['account_id']}/keys", headers=headers, json={}).json()
        chat = {"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]}
        auth = {"Authorization": f"Bearer {key['secret']}"}
        assert httpx.post(gw.base_url + "/chat/completions", headers=auth, json=chat, timeout=30).status_code == 200
        assert httpx.post(admin_root + "/v1/chat/completions", headers=auth, json=chat, timeout=30).status_code == 404
    finally:
        gw.stop()


BODY_ROUTES = [
    ("POST", "/admin/v1/accounts"),
    ("POST", "/admin/v1/accounts/{account}/keys"),
    ("PUT", "/admin/v1/accounts/{account}/limits"),
    ("PUT", "/admin/v1/accounts/{account}/status"),
    ("POST", "/admin/v1/accounts/{account}/action"),
    ("POST", "/admin/v1/clusters/cl_0/action"),
    ("POST", "/admin/v1/review/rev_0"),
    ("POST", "/admin/v1/watermark/detect"),
]


@pytest.mark.parametrize(("method", "route"), BODY_ROUTES)
@pytest.mark.parametrize("body", [b"[]", b"5", b'"text"', b"null", b"{", b'{"unknown_field": 1}'])
def test_admin_bodies_that_are_not_the_right_object_get_422(gateway: RunningGateway, method: str, route: str,
                                                            body: bytes) -> None:
    account = gateway.create_key("bodies")["account_id"]
    answer = gateway.admin(method, route.format(account=account), content=body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"]["message"].startswith("Invalid admin request:")


def test_admin_body_field_errors_name_the_field(gateway: RunningGateway) -> None:
    answer = gateway.admin("POST", "/admin/v1/accounts", json={"name": "x", "limits": {"requests_per_min": -1}})
    assert answer.status_code == 422
    assert "limits.requests_per_min" in answer.json()["error"]["message"]
    account = gateway.create_key("fields")["account_id"]
    answer = gateway.admin("PUT", f"/admin/v1/accounts/{account}/limits", json={"request_per_min": 5})
    assert answer.status_code == 422 and "request_per_min" in answer.json()["error"]["message"]


def test_admin_bodies_are_size_limited(gateway: RunningGateway) -> None:
    answer = gateway.admin("POST", "/admin/v1/accounts", json={"name": "x" * 70_000})
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "body_too_large"
    # A watermark test carries a whole harvest (the demo's is ~100 KiB): it has its own, larger bound.
    answer = gateway.admin("POST", "/admin/v1/watermark/detect", json={"text": "x" * 5_000_000})
    assert answer.status_code == 413
    answer = gateway.admin("POST", "/admin/v1/watermark/detect", json={"text": "word " * 30_000})
    assert answer.status_code != 413


def test_manual_action_on_an_unknown_account_is_404(gateway: RunningGateway) -> None:
    answer = gateway.admin("POST", "/admin/v1/accounts/acct_does_not_exist/action", json={"action": "block"})
    assert answer.status_code == 404
    assert "does not exist" in answer.json()["error"]["message"]
    account = gateway.create_key("real")["account_id"]
    answer = gateway.admin("POST", f"/admin/v1/accounts/{account}/action", json={"action": "block", "reason": "test"})
    assert answer.status_code == 200
    assert gateway.admin("POST", "/admin/v1/accounts/acct_does_not_exist/action", json={"action": "clear"}).status_code == 200


@pytest.mark.parametrize("depth", [100, 300, 900])
def test_deeply_nested_tool_schema_is_not_a_server_error(gateway: RunningGateway, depth: int) -> None:
    key = gateway.create_key("deep")
    schema = '{"type":"object","properties":{"a":' * depth + '{"type":"object"}' + "}}" * depth
    body = ('{"model":"stub-1","max_tokens":10,"messages":[{"role":"user","content":"hi"}],'
            '"tools":[{"name":"t","description":"d","input_schema":' + schema + "}]}")
    answer = httpx.post(gateway.root_url + "/v1/messages", content=body, timeout=30,
                        headers={"x-api-key": key["secret"], "anthropic-version": "2023-06-01"})
    assert answer.status_code < 500, answer.text
    assert answer.json()["type"] in ("message", "error")
    if answer.status_code >= 400:
        assert "nested too deeply" in answer.json()["error"]["message"] or "depth" in answer.json()["error"]["message"]


def test_deeply_nested_message_content_is_recorded_not_a_server_error(gateway: RunningGateway) -> None:
    key = gateway.create_key("deep-content")
    depth = 1000
    content = '{"a":' * depth + "1" + "}" * depth
    body = '{"model":"stub-1","messages":[{"role":"user","content":' + content + "}]}"
    answer = httpx.post(gateway.base_url + "/chat/completions", content=body, timeout=30,
                        headers={"Authorization": f"Bearer {key['secret']}"})
    assert answer.status_code < 500, answer.text
    event = gateway.event(answer.headers["x-request-id"])
    assert event["response"]["status"] == answer.status_code
