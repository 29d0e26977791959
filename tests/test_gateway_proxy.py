"""The gateway relays OpenAI and Anthropic traffic faithfully, with the official SDKs as clients."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.upstream_stub import UpstreamStub


@pytest.fixture(scope="module")
def anthropic_stub() -> Iterator[UpstreamStub]:
    upstream = UpstreamStub().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub, anthropic_stub: UpstreamStub) -> Iterator[RunningGateway]:
    upstreams = [
        {"name": "native-claude", "base_url": anthropic_stub.base_url, "protocol": "anthropic", "models": ["claude-stub"], "api_key": "upstream-secret"},
        {"name": "stub", "base_url": stub.base_url, "protocol": "openai", "models": ["*"], "timeout_s": 3},
    ]
    gw = start_gateway(tmp_path_factory.mktemp("gw"), upstreams=upstreams)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def secret(gateway: RunningGateway) -> str:
    return str(gateway.create_key("proxy-tester")["secret"])


def test_openai_chat_non_streaming(gateway: RunningGateway, secret: str) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=secret)
    reply = client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "What is 6*7?"}], n=2)
    assert reply.choices[0].message.content == "The answer is forty-two."
    assert len(reply.choices) == 2
    assert reply.usage is not None and reply.usage.prompt_tokens == 9


def test_openai_chat_streaming(gateway: RunningGateway, secret: str) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=secret)
    stream = client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "The answer is forty-two."


def test_completions_embeddings_and_models(gateway: RunningGateway, secret: str) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=secret)
    assert client.completions.create(model="stub-1", prompt="Say it").choices[0].text == "The answer is forty-two."
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="stub-1", prompt="x", stream=True))
    assert streamed == "The answer is forty-two."
    embedding = client.embeddings.create(model="stub-1", input=["a", "b"])
    assert len(embedding.data) == 2
    models = {m.id for m in client.models.list()}
    assert {"stub-1", "claude-stub"} <= models


def test_anthropic_translated_to_openai_upstream(gateway: RunningGateway, secret: str, stub: UpstreamStub) -> None:
    client = anthropic.Anthropic(base_url=gateway.root_url, api_key=secret)
    message = client.messages.create(
        model="stub-reasoning", max_tokens=64, system="You are terse.", stop_sequences=["END"],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Why 42?"}]}],
    )
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[1].text == "The answer is forty-two."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 9 and message.usage.output_tokens == 6
    sent = stub.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "You are terse."}
    assert sent["stop"] == ["END"] and sent["max_tokens"] == 64


def test_anthropic_streaming_translated(gateway: RunningGateway, secret: str) -> None:
    client = anthropic.Anthropic(base_url=gateway.root_url, api_key=secret)
    with client.messages.stream(model="stub-reasoning", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(deltas) == "The answer is forty-two."
    assert final.content[0].type == "thinking"
    assert final.usage.output_tokens == 6 and final.stop_reason == "end_turn"


def test_anthropic_passthrough_to_anthropic_upstream(gateway: RunningGateway, secret: str, anthropic_stub: UpstreamStub) -> None:
    client = anthropic.Anthropic(base_url=gateway.root_url, api_key=secret)
    message = client.messages.create(model="claude-stub", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == "The answer is forty-two."  # type: ignore[union-attr]
    assert anthropic_stub.headers[-1]["x-api-key"] == "upstream-secret"  # the upstream credential, not the caller's key
    assert "anthropic-version" in {k.lower() for k in anthropic_stub.headers[-1]}
    with client.messages.stream(model="claude-stub", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as stream:
        assert "".join(stream.text_stream) == "The answer is forty-two."
    count = client.messages.count_tokens(model="claude-stub", messages=[{"role": "user", "content": "hi"}])
    assert count.input_tokens == 12
    estimate = client.messages.count_tokens(model="stub-1", messages=[{"role": "user", "content": "hello there " * 10}])
    assert estimate.input_tokens > 10


def test_tools_are_refused_clearly_when_they_cannot_be_translated(gateway: RunningGateway, secret: str) -> None:
    """Anthropic's server tools (web search, ...) cannot run on an OpenAI-protocol upstream (custom tools are translated)."""
    client = anthropic.Anthropic(base_url=gateway.root_url, api_key=secret)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="stub-1", max_tokens=10, messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )
    assert "tool" in str(info.value).lower() and "translated" in str(info.value)


def test_streams_are_relayed_as_they_arrive(gateway: RunningGateway, secret: str) -> None:
    started = time.perf_counter()
    arrivals = []
    with httpx.stream(
        "POST", gateway.base_url + "/chat/completions", headers={"Authorization": f"Bearer {secret}"},
        json={"model": "stub-slow-stream", "messages": [{"role": "user", "content": "hi"}], "stream": True}, timeout=30,
    ) as response:
        for _ in response.iter_raw():
            arrivals.append(time.perf_counter() - started)
    # The stub takes ~2.6 s in all; the first bytes must arrive long before the last.
    assert arrivals[-1] > 2.0
    assert arrivals[0] < 1.0
    assert len(arrivals) >= 5


def test_a_stream_read_through_its_learnt_template_is_stored_whole(gateway: RunningGateway, secret: str) -> None:
    """Deltas arriving 0.2 s apart (one read each) after a role chunk, the usage chunk hidden from a client that did not
    ask: the text deltas after the first are read by their text alone (gateway/stream_template.py); the client and
    the stored event still get every word, the usage still counts."""
    chunks: list[bytes] = []
    with httpx.stream(
        "POST", gateway.base_url + "/chat/completions", headers={"Authorization": f"Bearer {secret}"},
        json={"model": "stub-slow-stream", "messages": [{"role": "user", "content": "template probe"}], "stream": True}, timeout=30,
    ) as response:
        chunks.extend(response.iter_raw())
    body = b"".join(chunks)
    assert b'"usage":{' not in body and body.endswith(b"data: [DONE]\n\n")
    words = [orjson.loads(line[6:])["choices"][0]["delta"].get("content") for line in body.split(b"\n") if line.startswith(b"data: {")]
    sent = "".join(word for word in words if word)
    deadline = time.time() + 5
    mine: list[dict] = []
    while not mine and time.time() < deadline:
        mine = [e for e in gateway.events() if e["request"]["messages"] and e["request"]["messages"][-1]["content"] == "template probe"]
    assert len(mine) == 1
    assert sent and mine[0]["response"]["text"] == sent and mine[0]["response"]["finish_reason"] == "stop"
    assert mine[0]["response"]["completion_tokens"] == len([word for word in words if word])  # the hidden chunk's count


def test_events_record_every_request(gateway: RunningGateway, secret: str) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=secret)
    client.chat.completions.create(model="stub-1", messages=[{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "multi"}, {"type": "text", "text": "part"}]}])
    deadline = time.time() + 5
    mine: list[dict] = []
    while not mine and time.time() < deadline:
        events = gateway.events()
        mine = [e for e in events if e["request"]["messages"] and e["request"]["messages"][-1]["content"] == "multipart"]
    assert len(mine) == 1
    event = mine[0]
    for field in ("v", "ts", "request_id", "account_id", "endpoint", "request", "response"):
        assert field in event
    assert event["request"]["system"] == "S"
    assert event["endpoint"] == "openai.chat" and event["response"]["status"] == 200
    assert event["response"]["text"] == "The answer is forty-two."
    streamed = [e for e in events if e["model"] == "stub-reasoning" and e["request"]["params"]["stream"]]
    assert streamed and streamed[0]["response"]["reasoning_chars"] > 0


def test_metrics_and_health(gateway: RunningGateway) -> None:
    metrics = httpx.get(gateway.root_url + "/metrics").text
    assert 'distillguard_requests_total{endpoint="openai.chat",status="200"}' in metrics
    assert "distillguard_request_duration_seconds_bucket" in metrics
    assert "distillguard_event_queue_depth" in metrics
    assert httpx.get(gateway.root_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.root_url + "/readyz")
    assert ready.status_code == 200, ready.text


def test_hot_path_never_imports_the_analytics_stack(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from distillguard.config import Settings\n"
        "from distillguard.gateway import build_gateway\n"
        f"build_gateway(Settings(database='sqlite:///{tmp_path}/x.db', spill_dir='{tmp_path}/s'))\n"
        "heavy = [m for m in ('numpy', 'sklearn', 'datasketch', 'distillguard.detect', 'torch', 'jinja2', 'distillguard.console')\n"
        "         if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def _sse_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in body.split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        if b"event" in lines:
            events.append((lines[b"event"].decode(), orjson.loads(lines[b"data"])))
    return events


def test_translated_stream_estimates_input_tokens_then_reports_the_real_counts(gateway: RunningGateway, secret: str) -> None:
    prompt = "How many legs does a spider have? " * 4  # 136 characters: the estimate is 136 // 4
    response = httpx.post(gateway.base_url + "/messages", headers={"x-api-key": secret}, timeout=10, json={
        "model": "stub-1", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": prompt}]})
    events = _sse_events(response.content)
    start = next(data for name, data in events if name == "message_start")
    assert start["message"]["usage"]["input_tokens"] == len(prompt) // 4
    final = next(data for name, data in events if name == "message_delta")
    assert final["usage"] == {"input_tokens": 9, "output_tokens": 6}  # the stub's real usage
    client = anthropic.Anthropic(base_url=gateway.root_url, api_key=secret)
    with client.messages.stream(model="stub-1", max_tokens=64, messages=[{"role": "user", "content": prompt}]) as stream:
        message = stream.get_final_message()
    assert message.usage.input_tokens == 9 and message.usage.output_tokens == 6


@pytest.mark.parametrize(("protocol", "model", "stream", "expected"), [
    ("openai", "stub-1", False, "stop"),
    ("openai", "stub-length", True, "length"),
    ("anthropic", "claude-stub", False, "end_turn"),  # native Anthropic upstream
    ("anthropic", "claude-stub", True, "end_turn"),
    ("anthropic", "stub-1", False, "end_turn"),  # translated from an OpenAI upstream
    ("anthropic", "stub-length", False, "max_tokens"),
    ("anthropic", "stub-length", True, "max_tokens"),
])
def test_events_record_the_finish_reason_in_the_clients_vocabulary(
    gateway: RunningGateway, secret: str, protocol: str, model: str, stream: bool, expected: str
) -> None:
    if protocol == "openai":
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        response = httpx.post(gateway.base_url + "/chat/completions", headers={"Authorization": f"Bearer {secret}"}, json=body, timeout=10)
    else:
        body = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        response = httpx.post(gateway.base_url + "/messages", headers={"x-api-key": secret}, json=body, timeout=10)
        told = (next(d["delta"]["stop_reason"] for n, d in _sse_events(response.content) if n == "message_delta") if stream
                else response.json()["stop_reason"])
        assert told == expected
    assert response.status_code == 200
    assert gateway.event(response.headers["x-request-id"])["response"]["finish_reason"] == expected


@pytest.mark.parametrize("mode", ["hash", "drop"])
def test_prompt_mode_also_redacts_the_stored_response_text(tmp_path: Path, stub: UpstreamStub, mode: str) -> None:
    gw = start_gateway(tmp_path, stub.base_url, privacy={"prompt_mode": mode, "hash_key": "k3y"})
    try:
        secret = gw.create_key("private")["secret"]
        client = openai.OpenAI(base_url=gw.base_url, api_key=secret)
        raw = client.chat.completions.with_raw_response.create(model="stub-1", messages=[{"role": "user", "content": "secret question"}])
        assert raw.parse().choices[0].message.content == "The answer is forty-two."  # the client still gets the answer
        event = gw.event(raw.headers["x-request-id"])
        expected = {"hash": "hmac-sha256:" + hmac.new(b"k3y", b"The answer is forty-two.", hashlib.sha256).hexdigest()[:32],
                    "drop": ""}[mode]
        assert event["response"]["text"] == expected
        assert event["request"]["messages"][0]["content"] != "secret question"
        assert (event["response"]["prompt_tokens"], event["response"]["completion_tokens"]) == (9, 6)  # counts are kept
    finally:
        gw.stop()
