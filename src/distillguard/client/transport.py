"""httpx transports that attest every request; plug them into the official SDKs.

``attesting_client(api_key=..., base_url=...)`` returns an ``httpx.Client`` for
``OpenAI(http_client=...)`` or ``Anthropic(http_client=...)``;
``async_attesting_client`` the same for the async clients. The first request
enrolls the install's public key with the gateway (once per gateway), then
every request carries a ``DG-Client-Signals`` header and an RFC 9421 signature
over the method, the target URI, the body's ``Content-Digest`` and the signals.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import httpx
import orjson
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

from distillguard.client.identity import Identity, collect_signals
from distillguard.signals.protocol import (
    COVERED_COMPONENTS,
    LABEL,
    SIGNALS_HEADER,
    TAG,
    VALIDITY_S,
    encode_signals,
)

__all__ = ["AsyncAttestingTransport", "AttestingTransport", "async_attesting_client", "attesting_client", "sign_request"]

ENROLL_PATH = "/v1/distillguard/enroll"


class _OwnKey(HTTPSignatureKeyResolver):
    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    def resolve_private_key(self, key_id: str) -> Any:
        return self.identity.private_key

    def resolve_public_key(self, key_id: str) -> Any:
        return self.identity.private_key.public_key()


def sign_request(request: httpx.Request, identity: Identity, overrides: dict[str, Any] | None = None) -> None:
    """Add the signals header, Content-Digest and the signature to ``request`` in place."""
    body = request.read()
    request.headers[SIGNALS_HEADER] = encode_signals(collect_signals(identity, overrides))
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=_OwnKey(identity))
    created = dt.datetime.now(dt.UTC)
    signer.sign(request, key_id=identity.install_id, created=created, expires=created + dt.timedelta(seconds=VALIDITY_S),
                nonce=secrets.token_urlsafe(16), label=LABEL, tag=TAG, covered_component_ids=COVERED_COMPONENTS, body=body)


def _enroll_request(base_url: str, api_key: str, identity: Identity) -> httpx.Request:
    root = base_url.rstrip("/").removesuffix("/v1")
    return httpx.Request("POST", root + ENROLL_PATH, headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
                         content=orjson.dumps({"install_id": identity.install_id, "public_key": identity.public_key_b64}))


class AttestingTransport(httpx.BaseTransport):
    def __init__(self, api_key: str, base_url: str, *, identity: Identity | None = None, inner: httpx.BaseTransport | None = None,
                 signal_overrides: dict[str, Any] | None = None) -> None:
        self.api_key, self.base_url = api_key, base_url
        self.identity = identity or Identity.load_or_create()
        self.inner = inner or httpx.HTTPTransport()
        self.overrides = signal_overrides

    def _ensure_enrolled(self) -> None:
        if self.identity.enrolled_for(self.base_url):
            return
        response = self.inner.handle_request(_enroll_request(self.base_url, self.api_key, self.identity))
        response.read()
        if response.status_code == 200:
            self.identity.mark_enrolled(self.base_url)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._ensure_enrolled()
        sign_request(request, self.identity, self.overrides)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class AsyncAttestingTransport(httpx.AsyncBaseTransport):
    def __init__(self, api_key: str, base_url: str, *, identity: Identity | None = None, inner: httpx.AsyncBaseTransport | None = None,
                 signal_overrides: dict[str, Any] | None = None) -> None:
        self.api_key, self.base_url = api_key, base_url
        self.identity = identity or Identity.load_or_create()
        self.inner = inner or httpx.AsyncHTTPTransport()
        self.overrides = signal_overrides

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.identity.enrolled_for(self.base_url):
            response = await self.inner.handle_async_request(_enroll_request(self.base_url, self.api_key, self.identity))
            await response.aread()
            if response.status_code == 200:
                self.identity.mark_enrolled(self.base_url)
        body = await request.aread()
        request._content = body  # httpx keeps the read body here; sign_request reads it synchronously
        sign_request(request, self.identity, self.overrides)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def attesting_client(*, api_key: str, base_url: str, identity: Identity | None = None,
                     signal_overrides: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` whose every request is attested; pass it as ``http_client=``."""
    return httpx.Client(transport=AttestingTransport(api_key, base_url, identity=identity, signal_overrides=signal_overrides), **kwargs)


def async_attesting_client(*, api_key: str, base_url: str, identity: Identity | None = None,
                           signal_overrides: dict[str, Any] | None = None, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=AsyncAttestingTransport(api_key, base_url, identity=identity, signal_overrides=signal_overrides),
                             **kwargs)
