"""The attesting sidecar: `distillguard client proxy --listen ADDR --to URL` (docs/attestation.md).

For clients that cannot take the SDK's transport (an agent, a tool in another
language, a binary): point them at the sidecar instead of the gateway, and the
sidecar forwards each request to the gateway with the attestation the SDK
would have added — the same install identity, the same enrollment on first
use, the same signed ``DG-Client-Signals`` header — by running it through the
SDK's own :class:`~distillguard.client.transport.AsyncAttestingTransport`
(one per API key seen, over one shared connection pool). Nothing else
changes: the caller's headers (its own API key, ``User-Agent``,
``anthropic-version`` …) and body go through as sent, and the answer comes
back as the gateway sent it, streamed chunk by chunk (server-sent events
arrive as they are produced).

It listens with the gateway's own HTTP server (``gateway/http_server.py``)
and forwards with httpx. The signals' ``sdk`` field says
``distillguard-sidecar/…`` so the operator can tell sidecar traffic from SDK
traffic; the signals are collected on the machine the sidecar runs on, which
is why it listens on loopback by default: a sidecar shared over a network
would attest other machines' requests as its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from distillguard.client.identity import SDK_NAME, Identity
from distillguard.client.transport import AsyncAttestingTransport
from distillguard.gateway.errors import error_body
from distillguard.gateway.types import Receive, Scope, Send

__all__ = ["SIDECAR_SDK", "AttestingProxy"]

log = logging.getLogger("distillguard.client.proxy")

SIDECAR_SDK = "distillguard-sidecar/" + SDK_NAME.rsplit("/", 1)[1]
MAX_BODY_BYTES = 32 * 1024 * 1024
# Hop-by-hop fields (RFC 9110 §7.6.1) and the ones httpx sets itself for the new connection.
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
                  b"host", b"content-length", b"proxy-authorization", b"proxy-authenticate"})
TIMEOUT = {"connect": 10.0, "read": 600.0, "write": 60.0, "pool": 30.0}  # a reasoning model may think for minutes before a token


def _api_key(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        lower = name.lower()
        if lower == b"x-api-key":
            return value.decode("latin-1").strip()
        if lower == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].decode("latin-1").strip()
    return ""


class AttestingProxy:
    """The sidecar as an ASGI application: every request forwarded to ``to``, attested."""

    def __init__(self, to: str, *, identity: Identity | None = None, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.to = to.rstrip("/").removesuffix("/v1")  # the gateway's root; callers' paths already carry /v1
        self.identity = identity or Identity.load_or_create()
        self.inner = inner or httpx.AsyncHTTPTransport()
        self.signers: dict[str, AsyncAttestingTransport] = {}
        self.forwarded = 0

    def signer(self, api_key: str) -> AsyncAttestingTransport:
        """One transport per API key (the SDK's shape); the install enrolls once per gateway, with the first key seen."""
        signer = self.signers.get(api_key)
        if signer is None:
            signer = self.signers[api_key] = AsyncAttestingTransport(api_key, self.to, identity=self.identity, inner=self.inner,
                                                                     signal_overrides={"sdk": SIDECAR_SDK})
        return signer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.inner.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        protocol = "anthropic" if scope["path"].startswith("/v1/messages") else "openai"
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await _answer(send, protocol, 413, f"request body over {MAX_BODY_BYTES} bytes", "request_too_large")
                return
            if not message.get("more_body", False):
                break
        headers = [(name, value) for name, value in scope["headers"] if name.lower() not in _HOP]
        target = self.to + scope["raw_path"].decode("latin-1") if scope.get("raw_path") else self.to + scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        request = httpx.Request(scope["method"], target, headers=headers, content=bytes(body), extensions={"timeout": TIMEOUT})
        try:
            response = await self.signer(_api_key(headers)).handle_async_request(request)
        except httpx.HTTPError as exc:
            log.warning("%s %s: the gateway at %s did not answer: %s", scope["method"], scope["path"], self.to, exc)
            await _answer(send, protocol, 502, f"distillguard sidecar: the gateway at {self.to} did not answer "
                                                 f"({type(exc).__name__}: {exc}); check `--to` and that the gateway runs", "sidecar_upstream_error")
            return
        self.forwarded += 1
        await self._relay(scope, send, response)

    async def _relay(self, scope: Scope, send: Send, response: httpx.Response) -> None:
        """The gateway's answer, unchanged: its status, its headers (less hop-by-hop), its bytes as they arrive."""
        gone = asyncio.Event()
        register = (scope.get("extensions") or {}).get("distillguard.on_disconnect")
        if register is not None:
            register(gone.set)
        head: dict[str, Any] = {"type": "http.response.start", "status": response.status_code,
                                "headers": [(n, v) for n, v in response.headers.raw if n.lower() not in _HOP]}
        try:
            await send(head)
            async for chunk in response.stream:  # type: ignore[union-attr]  # a transport's response always has an async stream
                if gone.is_set():
                    return  # the caller left: stop reading, so the gateway sees the disconnect too
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as exc:  # the gateway broke off mid-answer: end ours the same way
            log.warning("%s %s: the gateway's answer broke off: %s", scope["method"], scope["path"], exc)
        finally:
            await response.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _answer(send: Send, protocol: str, status: int, message: str, code: str) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": error_body(protocol, status, message, code), "more_body": False})
