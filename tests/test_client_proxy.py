"""`distillguard client proxy`: the attesting sidecar, with the official SDKs pointed at it and a real gateway behind it.

The SDKs are not modified (no ``http_client``): the sidecar must add the
attestation the SDK would, enroll the install on first use, stream answers
through as they arrive, and answer in the caller's protocol when the gateway
cannot be reached.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from distillguard.cli import main
from distillguard.client import Identity
from tests.gateway_fixtures import RunningGateway
from tests.test_client_sdks import ANSWER, attestation_for
from tests.upstream_stub import free_port


def _start_sidecar(to: str, client_dir: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {**os.environ, "DG_CLIENT_DIR": str(client_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "distillguard.cli", "client", "proxy", "--listen", f"127.0.0.1:{port}", "--to", to],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the sidecar exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            httpx.get(url + "/healthz", timeout=1)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the sidecar did not start listening in 60 s")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


@pytest.fixture(scope="module")
def sidecar(gateway: RunningGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Identity]]:
    client_dir = tmp_path_factory.mktemp("sidecar-identity")
    proc, url = _start_sidecar(gateway.root_url, client_dir)
    yield url, Identity.load_or_create(client_dir)
    _stop(proc)


def test_unmodified_sdks_get_valid_attestations_streaming_included(gateway: RunningGateway, sidecar: tuple[str, Identity]) -> None:
    url, identity = sidecar
    secret = str(gateway.create_key("sidecar-user")["secret"])
    oai = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
    answer = oai.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "sidecar-openai"}])
    assert answer.choices[0].message.content == ANSWER
    chunks = oai.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "sidecar-openai-stream"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    claude = anthropic.Anthropic(base_url=url, api_key=secret, max_retries=0)
    with claude.messages.stream(model="stub-1", max_tokens=16, messages=[{"role": "user", "content": "sidecar-anthropic-stream"}]) as stream:
        assert "".join(stream.text_stream) == ANSWER
    for marker in ("sidecar-openai", "sidecar-openai-stream", "sidecar-anthropic-stream"):
        attestation = attestation_for(gateway, marker)
        assert attestation.get("status") == "valid", (marker, attestation)
        assert attestation["install_id"] == identity.install_id
        assert str(attestation["sdk"]).startswith("distillguard-sidecar/")
    assert identity.enrolled_for(gateway.root_url)  # enrolled on first use, like the SDK


def test_streams_are_relayed_as_they_arrive(gateway: RunningGateway, sidecar: tuple[str, Identity]) -> None:
    """stub-slow-stream sends 10 chunks 0.2 s apart: the first must reach the caller long before the last is sent."""
    url, _ = sidecar
    secret = str(gateway.create_key("sidecar-stream")["secret"])
    oai = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
    started = time.monotonic()
    arrivals = [time.monotonic() - started for chunk in oai.chat.completions.create(
        model="stub-slow-stream", messages=[{"role": "user", "content": "slow"}], stream=True) if chunk.choices]
    assert len(arrivals) >= 5 and arrivals[-1] - arrivals[0] > 1.0, arrivals


def test_refusals_pass_through_in_the_callers_protocol(gateway: RunningGateway, sidecar: tuple[str, Identity]) -> None:
    url, _ = sidecar
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0).models.list()
    answer = httpx.post(url + "/v1/messages", headers={"x-api-key": "wrong", "anthropic-version": "2023-06-01"}, timeout=30,
                        json={"model": "stub-1", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]})
    assert answer.status_code == 401 and answer.json()["type"] == "error"


def test_unreachable_gateway_is_a_502_in_the_callers_shape(tmp_path: Path) -> None:
    proc, url = _start_sidecar(f"http://127.0.0.1:{free_port()}", tmp_path / "c")
    try:
        answer = httpx.post(url + "/v1/chat/completions", headers={"Authorization": "Bearer k"}, timeout=30,
                            json={"model": "m", "messages": []})
        assert answer.status_code == 502
        assert answer.json()["error"]["code"] == "sidecar_upstream_error" and "--to" in answer.json()["error"]["message"]
        claude = httpx.post(url + "/v1/messages", headers={"x-api-key": "k"}, timeout=30, json={})
        assert claude.status_code == 502 and claude.json()["type"] == "error"
    finally:
        _stop(proc)


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["client", "proxy", "--listen", "nope", "--to", "http://x"]) == 2
    assert "--listen" in capsys.readouterr().err
    assert main(["client", "proxy", "--to", "ftp:/x"]) == 2
    assert "--to 'ftp:/x'" in capsys.readouterr().err
