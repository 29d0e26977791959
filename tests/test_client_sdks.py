"""The SDK promise: one call makes the official openai and anthropic clients attest, sync and async, streaming included.

openai 3.x and anthropic 2.x are built on ``httpx2``; ``attesting_client(..., for_sdk=...)``
must hand each the client type it accepts. Every request goes through a real
gateway and must be recorded with attestation status ``valid``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from distillguard.client import Identity, async_attesting_client, attesting_client, http_library_for
from tests.gateway_fixtures import RunningGateway

ANSWER = "The answer is forty-two."


@pytest.fixture(scope="module")
def secret(gateway: RunningGateway) -> str:
    return str(gateway.create_key("sdk-user")["secret"])


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content or [] if isinstance(block, dict))


def attestation_for(gateway: RunningGateway, marker: str) -> dict[str, Any]:
    """The attestation of the event whose last message is ``marker`` (events are written in batches)."""
    deadline = time.time() + 10
    while time.time() < deadline:
        for event in gateway.events():
            messages = event["request"]["messages"]
            if messages and _text(messages[-1]["content"]) == marker:
                return dict(event["attestation"] or {})
        time.sleep(0.1)
    raise AssertionError(f"no event for {marker}")


def assert_valid(gateway: RunningGateway, identity: Identity, *markers: str) -> None:
    for marker in markers:
        attestation = attestation_for(gateway, marker)
        assert attestation.get("status") == "valid", (marker, attestation)
        assert attestation["install_id"] == identity.install_id


def test_for_sdk_picks_the_library_the_installed_sdk_is_built_on(tmp_path: Path) -> None:
    assert http_library_for("anthropic") == "httpx2" and http_library_for("openai") == "httpx2"
    identity = Identity.load_or_create(tmp_path / "c")
    assert isinstance(attesting_client(api_key="k", base_url="http://x", identity=identity, for_sdk="anthropic"), httpx2.Client)
    assert isinstance(async_attesting_client(api_key="k", base_url="http://x", identity=identity, for_sdk="anthropic"), httpx2.AsyncClient)
    assert isinstance(attesting_client(api_key="k", base_url="http://x", identity=identity), httpx.Client)  # the default is unchanged


def test_httpx2_stays_optional_at_import_time() -> None:
    code = "import sys, distillguard.client as c; assert 'httpx2' not in sys.modules; c.attesting_httpx2_client; assert 'httpx2' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_anthropic_sync_and_streaming_attest(gateway: RunningGateway, secret: str, tmp_path: Path) -> None:
    identity = Identity.load_or_create(tmp_path / "anthropic-sync")
    http_client = attesting_client(api_key=secret, base_url=gateway.root_url, identity=identity, for_sdk="anthropic")
    client = anthropic.Anthropic(base_url=gateway.root_url, api_key=secret, http_client=http_client, max_retries=0)
    message = client.messages.create(model="stub-1", max_tokens=16, messages=[{"role": "user", "content": "anthropic-sync"}])
    assert "".join(b.text for b in message.content if b.type == "text") == ANSWER
    with client.messages.stream(model="stub-1", max_tokens=16, messages=[{"role": "user", "content": "anthropic-stream"}]) as stream:
        assert "".join(stream.text_stream) == ANSWER
    raw = client.messages.create(model="stub-1", max_tokens=16, messages=[{"role": "user", "content": "anthropic-raw-stream"}], stream=True)
    assert any(event.type == "message_stop" for event in raw)
    assert_valid(gateway, identity, "anthropic-sync", "anthropic-stream", "anthropic-raw-stream")


async def test_anthropic_async_and_streaming_attest(gateway: RunningGateway, secret: str, tmp_path: Path) -> None:
    identity = Identity.load_or_create(tmp_path / "anthropic-async")
    http_client = async_attesting_client(api_key=secret, base_url=gateway.root_url, identity=identity, for_sdk="anthropic")
    client = anthropic.AsyncAnthropic(base_url=gateway.root_url, api_key=secret, http_client=http_client, max_retries=0)
    message = await client.messages.create(model="stub-1", max_tokens=16, messages=[{"role": "user", "content": "anthropic-async"}])
    assert "".join(b.text for b in message.content if b.type == "text") == ANSWER
    async with client.messages.stream(model="stub-1", max_tokens=16,
                                      messages=[{"role": "user", "content": "anthropic-async-stream"}]) as stream:
        assert "".join([text async for text in stream.text_stream]) == ANSWER
    await client.close()
    assert_valid(gateway, identity, "anthropic-async", "anthropic-async-stream")


def test_openai_sync_and_streaming_attest(gateway: RunningGateway, secret: str, tmp_path: Path) -> None:
    identity = Identity.load_or_create(tmp_path / "openai-sync")
    http_client = attesting_client(api_key=secret, base_url=gateway.base_url, identity=identity, for_sdk="openai")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=secret, http_client=http_client, max_retries=0)
    reply = client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "openai-sync"}])
    assert reply.choices[0].message.content == ANSWER
    stream = client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "openai-stream"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == ANSWER
    assert_valid(gateway, identity, "openai-sync", "openai-stream")


async def test_openai_async_and_streaming_attest(gateway: RunningGateway, secret: str, tmp_path: Path) -> None:
    identity = Identity.load_or_create(tmp_path / "openai-async")
    http_client = async_attesting_client(api_key=secret, base_url=gateway.base_url, identity=identity, for_sdk="openai")
    client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=secret, http_client=http_client, max_retries=0)
    reply = await client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "openai-async"}])
    assert reply.choices[0].message.content == ANSWER
    stream = await client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "openai-async-stream"}],
                                                  stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == ANSWER
    await client.close()
    assert_valid(gateway, identity, "openai-async", "openai-async-stream")
