"""Token limits through a real gateway: prompts are charged before forwarding, streams included (issue #12, finding 2)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.upstream_stub import UpstreamStub

WORDS = "the quick brown fox jumps over a lazy dog "  # 41 ASCII bytes


def _prompt(tokens: int) -> str:
    return (WORDS * (tokens * 4 // len(WORDS) + 1))[: tokens * 4]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub) -> Iterator[RunningGateway]:
    gw = start_gateway(tmp_path_factory.mktemp("accounting"), stub.base_url)
    yield gw
    gw.stop()


def _statuses(gateway: RunningGateway, secret: str, prompt: str, *, stream: bool, model: str = "stub-1", n: int = 15) -> list[int]:
    statuses = []
    with httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=30) as client:
        for _ in range(n):
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}
            with client.stream("POST", "/chat/completions", json=body) as response:
                response.read()
                statuses.append(response.status_code)
    return statuses


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("limit", ["tokens_per_min", "daily_tokens"])
def test_big_prompts_cannot_bypass_token_limits_by_streaming(gateway: RunningGateway, stream: bool, limit: str) -> None:
    """Before: 15 of 15 streamed ~10,000-token prompts were admitted at 5,000 tokens/min (1 of 15 without streaming)."""
    key = gateway.create_key(f"bulk-{limit}-{stream}", limits={limit: 5_000})
    statuses = _statuses(gateway, key["secret"], _prompt(10_000), stream=stream)
    assert statuses.count(200) <= 1
    assert set(statuses) <= {200, 429}


def test_streams_are_settled_with_the_upstreams_usage(gateway: RunningGateway) -> None:
    """2,000-token prompts at 5,000 tokens/min: two fit (charged up front, settled with the upstream's count), the third waits."""
    key = gateway.create_key("settled", limits={"tokens_per_min": 5_000})
    statuses = _statuses(gateway, key["secret"], _prompt(2_000), stream=True, model="stub-counting", n=5)
    assert statuses == [200, 200, 429, 429, 429]
    refused = httpx.post(gateway.base_url + "/chat/completions", headers={"Authorization": f"Bearer {key['secret']}"},
                         json={"model": "stub-counting", "messages": [{"role": "user", "content": _prompt(2_000)}], "stream": True})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "token_rate_limit_exceeded"
    assert 55 <= int(refused.headers["retry-after"]) <= 60


def test_stream_usage_is_hidden_unless_asked_and_recorded_either_way(gateway: RunningGateway, stub: UpstreamStub) -> None:
    key = gateway.create_key("usage")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["secret"], max_retries=0)
    messages = [{"role": "user", "content": _prompt(100)}]
    raw = client.chat.completions.with_raw_response.create(model="stub-counting", messages=messages, stream=True)  # type: ignore[call-overload]
    request_id = raw.headers["x-request-id"]
    chunks = list(raw.parse())
    assert stub.requests[-1]["stream_options"] == {"include_usage": True}  # the gateway asked for it
    assert chunks and all(chunk.choices for chunk in chunks)  # but the client, which did not ask, never sees the usage chunk
    assert all(chunk.usage is None for chunk in chunks)
    event = gateway.event(request_id)
    assert event["response"]["prompt_tokens"] == 100 and event["response"]["completion_tokens"] > 0
    asked = list(client.chat.completions.create(model="stub-counting", messages=messages, stream=True,  # type: ignore[call-overload]
                                                stream_options={"include_usage": True}))
    assert asked[-1].choices == [] and asked[-1].usage is not None and asked[-1].usage.prompt_tokens == 100


def test_concurrency_counts_from_the_first_byte_and_is_released_on_every_exit(gateway: RunningGateway) -> None:
    key = gateway.create_key("one-at-a-time", limits={"concurrent_requests": 1})
    host, port = gateway.root_url.removeprefix("http://").rsplit(":", 1)
    headers = {"Authorization": f"Bearer {key['secret']}"}
    body = b'{"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]}'
    slow = socket.create_connection((host, int(port)))
    slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key["secret"].encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10])
    try:
        deadline = time.time() + 5
        while True:  # the head has arrived, the body has not: the slot is already taken
            second = httpx.post(gateway.base_url + "/chat/completions", headers=headers, content=body)
            if second.status_code == 429 or time.time() > deadline:
                break
            time.sleep(0.05)
        assert second.status_code == 429 and second.json()["error"]["code"] == "concurrency_limit_exceeded"
    finally:
        slow.close()  # the client goes away mid-body: the slot must come back
    deadline = time.time() + 5
    while time.time() < deadline:
        third = httpx.post(gateway.base_url + "/chat/completions", headers=headers, content=body)
        if third.status_code == 200:
            break
        time.sleep(0.05)
    assert third.status_code == 200
