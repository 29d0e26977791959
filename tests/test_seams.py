"""The gateway's seams (gateway/types.py) and the one exception hierarchy (exceptions.py), tested from outside.

Each fake here is an in-process implementation of one protocol, handed to the
real ``Gateway`` without patching: that the gateway works with them is what the
seams promise. (That the real implementations satisfy the protocols is checked
by mypy, ``_conformance`` in gateway/types.py, which test_code_quality runs.)
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import openai
import orjson

from distillguard.config import Settings
from distillguard.exceptions import DistillguardError
from distillguard.gateway import Gateway
from distillguard.gateway.admin import AdminAPI, AdminContext
from distillguard.gateway.types import (
    EventSinkProtocol,
    KeyRegistryProtocol,
    UpstreamResponseProtocol,
    UpstreamTransportProtocol,
)
from distillguard.gateway.upstream_http import Origin
from distillguard.store.registry import KeyRecord, hash_secret

SRC = Path(__file__).resolve().parent.parent / "src" / "distillguard"
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "fake-1",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the fake transport"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}


class _Response:
    """One whole JSON answer, as the upstream transport's response."""

    def __init__(self, body: bytes) -> None:
        self.status = 200
        self.headers = {"content-type": "application/json"}
        self._body = body

    @property
    def at_eof(self) -> bool:
        return True

    async def read(self) -> bytes:
        return self._body

    async def next_chunk(self) -> bytes | None:
        return None

    async def __aenter__(self) -> UpstreamResponseProtocol:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None


class _Transport(UpstreamTransportProtocol):
    """An upstream in the test's memory, as httpx's MockTransport: records what it was sent, answers ANSWER."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []
        self.closed = False

    async def request(self, origin: Origin, method: bytes, path: bytes, headers: bytes, body: bytes, *,
                      connect_timeout: float | None, read_timeout: float | None) -> UpstreamResponseProtocol:
        self.sent.append((origin.host, path, orjson.loads(body) if body else {}))
        return _Response(orjson.dumps(ANSWER))

    async def close(self) -> None:
        self.closed = True


class _Events(EventSinkProtocol):
    """Only ``submit``: ``start``, ``close`` and ``stats`` (None) come from the protocol's defaults."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def submit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


async def test_the_gateway_runs_on_in_process_fakes_of_its_seams() -> None:
    """A real Gateway with a fake upstream transport and a sink that implements only ``submit``: SDK in, event out."""
    settings = Settings(upstreams=[{"name": "fake", "base_url": "http://upstream.invalid:9/v1", "models": ["fake-*"]}])
    transport, sink = _Transport(), _Events()
    gateway = Gateway(settings, sink=sink, transport=transport)
    gateway.keys.load([KeyRecord("key_f", hash_secret("sk-fake"), "acct_f", None, False, "active")])
    await gateway.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), timeout=10) as http:
            sdk = openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="sk-fake", http_client=http, max_retries=0)
            answer = await sdk.chat.completions.create(model="fake-1", messages=[{"role": "user", "content": "hi"}])
            ready = await http.get("http://gateway/readyz")
    finally:
        await gateway.shutdown()
    assert answer.choices[0].message.content == "from the fake transport"
    assert transport.sent == [
        ("upstream.invalid", b"/chat/completions", {"model": "fake-1", "messages": [{"role": "user", "content": "hi"}]}),
        ("upstream.invalid", b"/models", {}),  # /readyz's health probe went through the fake too
    ]
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert transport.closed
    (event,) = sink.events
    assert (event["key_id"], event["response"]["status"], event["response"]["completion_tokens"]) == ("key_f", 200, 4)


class _Registry(KeyRegistryProtocol):
    def __init__(self) -> None:
        self.accounts: list[dict[str, Any]] = [{"account_id": "acct_1", "name": "one"}]

    def change_counter(self) -> int:
        return 1

    def key_snapshot(self) -> list[KeyRecord]:
        return []

    def list_accounts(self) -> list[dict[str, Any]]:
        return self.accounts


async def test_the_admin_api_needs_only_its_context() -> None:
    """AdminAPI takes an AdminContext (no Gateway): status and the registry's accounts come from what it was given."""
    reloads: list[int] = []

    async def refresh_keys() -> None:
        reloads.append(1)

    context = AdminContext(Settings(), _Registry(), _Events(), None, (), ("up-a", "up-b"), has_signals=False,
                           has_watermark=True, keys_loaded=lambda: 7, refresh_keys=refresh_keys)
    admin = AdminAPI(context)
    status = await admin.call("GET", "/admin/v1/status", {}, b"")
    accounts = await admin.call("GET", "/admin/v1/accounts", {}, b"")
    assert status == (200, {"keys_loaded": 7, "events": None, "upstreams": ["up-a", "up-b"], "components": {
        "signals": False, "policy": False, "online_detection": False, "watermark": True}})
    assert accounts == (200, {"data": [{"account_id": "acct_1", "name": "one"}]})
    assert await admin.call("GET", "/admin/v1/nothing-here", {}, b"") is None


def test_every_public_exception_derives_from_distillguard_error() -> None:
    """One hierarchy (exceptions.py): every public exception class defined in the package is a DistillguardError."""
    exception_bases = {"Exception", "ValueError", "RuntimeError", "OSError", "KeyError", "TypeError", "LookupError"}
    found: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        module = ".".join(("distillguard", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        for node in tree.body:
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases}
            if bases & exception_bases or any(b.endswith(("Error", "Exception", "Unavailable", "Disconnected")) for b in bases):
                found.append(f"{module}.{node.name}")
    assert len(found) >= 15, found  # the walk found the families (a broken walk would pass vacuously)
    outside = [name for name in found
               if not issubclass(getattr(importlib.import_module(name.rpartition(".")[0]), name.rpartition(".")[2]), DistillguardError)]
    assert outside == []
