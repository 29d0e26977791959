"""Transports that attest every request; plug them into the official SDKs.

``attesting_client(api_key=..., base_url=..., for_sdk="anthropic")`` returns an
HTTP client for ``Anthropic(http_client=...)`` (or ``OpenAI(...)`` with
``for_sdk="openai"``); ``async_attesting_client`` the same for the async
clients. The SDKs are built on ``httpx`` (older releases) or ``httpx2`` (openai
3.x, anthropic 2.x), whose client types are not interchangeable, so
``for_sdk`` picks the library the installed SDK depends on. The ``httpx2``
transports live in :mod:`distillguard.client.httpx2_transport`, imported only
when asked for: ``httpx2`` comes with the SDKs, not with distillguard.

The first request enrolls the install's public key with the gateway (once per
gateway), signed with that key as proof of possession; then every request
carries a ``DG-Client-Signals`` header and an RFC 9421 signature over the
method, the target URI, the body's ``Content-Digest`` and the signals.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import re
import secrets
import time
from collections.abc import MutableMapping
from typing import Any, Literal, Protocol, overload

import httpx
import orjson
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

from distillguard.client.identity import Identity, collect_signals
from distillguard.signals.protocol import (
    COVERED_COMPONENTS,
    ENROLL_PATH,
    LABEL,
    SIGNALS_HEADER,
    TAG,
    VALIDITY_S,
    api_key_digest,
    b64url_encode,
    encode_signals,
    enrollment_message,
)

__all__ = ["AsyncAttestingTransport", "AttestingTransport", "SignableRequest", "async_attesting_client", "attesting_client",
           "enrollment_body", "http_library_for", "sign_request"]

log = logging.getLogger("distillguard.client")

Sdk = Literal["openai", "anthropic"]
HttpLibrary = Literal["httpx", "httpx2"]


class SignableRequest(Protocol):
    """What :func:`sign_request` needs: ``httpx.Request`` and ``httpx2.Request`` both fit."""

    method: str

    @property
    def url(self) -> Any: ...

    @property
    def headers(self) -> MutableMapping[str, str]: ...

    def read(self) -> bytes: ...


class _OwnKey(HTTPSignatureKeyResolver):
    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    def resolve_private_key(self, key_id: str) -> Any:
        return self.identity.private_key

    def resolve_public_key(self, key_id: str) -> Any:
        return self.identity.private_key.public_key()


def sign_request(request: SignableRequest, identity: Identity, overrides: dict[str, Any] | None = None) -> None:
    """Add the signals header, Content-Digest and the signature to ``request`` in place.

    Works on ``httpx`` and ``httpx2`` requests alike. An async request's body
    must have been read (``await request.aread()``) first, as the transports do.
    """
    body = request.read()
    request.headers[SIGNALS_HEADER] = encode_signals(collect_signals(identity, overrides))
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=_OwnKey(identity))
    created = dt.datetime.now(dt.UTC)
    signer.sign(request, key_id=identity.install_id, created=created, expires=created + dt.timedelta(seconds=VALIDITY_S),
                nonce=secrets.token_urlsafe(16), label=LABEL, tag=TAG, covered_component_ids=COVERED_COMPONENTS, body=body)


def enrollment_body(identity: Identity, api_key: str, created: int | None = None) -> bytes:
    """The enrollment request's JSON body, with the proof that this install holds its private key (bound to ``api_key``)."""
    created = int(time.time()) if created is None else created
    proof = identity.private_key.sign(enrollment_message(identity.install_id, identity.public_key_b64, created, api_key_digest(api_key)))
    return orjson.dumps({"install_id": identity.install_id, "public_key": identity.public_key_b64, "created": created,
                         "proof": b64url_encode(proof)})


class Enrollment:
    """Whether and how this install still has to enroll with one gateway; shared by every transport.

    Success is remembered on disk (``enrolled.json``) and in memory, so the
    file is not read per request. A refusal that retrying cannot fix (a 4xx
    such as 409 "enrolled for another account") is remembered for the life of
    the transport and logged once, instead of costing an extra round trip
    before every request; other failures are retried before the next request.
    """

    def __init__(self, api_key: str, base_url: str, identity: Identity) -> None:
        # The gateway's root: openai clients use ".../v1", anthropic clients the root; one enrollment serves both.
        self.api_key, self.base_url, self.identity = api_key, base_url.rstrip("/").removesuffix("/v1"), identity
        self.done = identity.enrolled_for(self.base_url)
        self.refused = False

    @property
    def pending(self) -> bool:
        return not self.done and not self.refused

    def request(self) -> tuple[str, dict[str, str], bytes]:
        """URL, headers and body of the enrollment POST (a fresh proof each time)."""
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        return self.base_url + ENROLL_PATH, headers, enrollment_body(self.identity, self.api_key)

    def record(self, status: int, body: bytes) -> None:
        if status == 200:
            self.identity.mark_enrolled(self.base_url)
            self.done = True
        elif 400 <= status < 500 and status not in (408, 429):
            self.refused = True
            log.warning("gateway %s refused to enroll install %s (%d): %s; requests are sent signed but will not verify",
                        self.base_url, self.identity.install_id, status, body[:300].decode(errors="replace"))


class SigningTransport:
    """Enroll once, then sign every request: shared by the httpx and httpx2 transports.

    The two libraries have the same request and transport API but distinct
    classes, so the concrete transports only name their library's classes.
    """

    request_class: Any
    default_inner: Any

    def __init__(self, api_key: str, base_url: str, *, identity: Identity | None = None, inner: Any = None,
                 signal_overrides: dict[str, Any] | None = None) -> None:
        self.identity = identity or Identity.load_or_create()
        self.enrollment = Enrollment(api_key, base_url, self.identity)
        self.inner = inner or self.default_inner()
        self.overrides = signal_overrides

    def handle_request(self, request: Any) -> Any:
        if self.enrollment.pending:
            url, headers, body = self.enrollment.request()
            response = self.inner.handle_request(self.request_class("POST", url, headers=headers, content=body))
            self.enrollment.record(response.status_code, response.read())
            response.close()
        sign_request(request, self.identity, self.overrides)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class AsyncSigningTransport:
    """The asynchronous twin of :class:`SigningTransport`."""

    request_class: Any
    default_inner: Any

    def __init__(self, api_key: str, base_url: str, *, identity: Identity | None = None, inner: Any = None,
                 signal_overrides: dict[str, Any] | None = None) -> None:
        self.identity = identity or Identity.load_or_create()
        self.enrollment = Enrollment(api_key, base_url, self.identity)
        self.inner = inner or self.default_inner()
        self.overrides = signal_overrides

    async def handle_async_request(self, request: Any) -> Any:
        if self.enrollment.pending:
            url, headers, body = self.enrollment.request()
            response = await self.inner.handle_async_request(self.request_class("POST", url, headers=headers, content=body))
            self.enrollment.record(response.status_code, await response.aread())
            await response.aclose()
        await request.aread()  # keeps the body on the request, where sign_request reads it
        sign_request(request, self.identity, self.overrides)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class AttestingTransport(SigningTransport, httpx.BaseTransport):
    request_class = httpx.Request
    default_inner = httpx.HTTPTransport


class AsyncAttestingTransport(AsyncSigningTransport, httpx.AsyncBaseTransport):
    request_class = httpx.Request
    default_inner = httpx.AsyncHTTPTransport


_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def http_library_for(sdk: Sdk) -> HttpLibrary:
    """The HTTP library the installed ``openai`` or ``anthropic`` package is built on.

    Read from the package's declared requirements rather than its private
    modules: ``httpx2`` if it requires it, else ``httpx`` (older releases).
    """
    try:
        requirements = importlib.metadata.requires(sdk) or []
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(f"for_sdk={sdk!r}: the {sdk!r} package is not installed") from None
    names = {match.group(1).lower().replace("_", "-") for r in requirements if (match := _REQUIREMENT_NAME.match(r))}
    return "httpx2" if "httpx2" in names else "httpx"


@overload
def attesting_client(*, api_key: str, base_url: str, for_sdk: None = None, identity: Identity | None = None,
                     signal_overrides: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Client: ...
@overload
def attesting_client(*, api_key: str, base_url: str, for_sdk: Sdk, identity: Identity | None = None,
                     signal_overrides: dict[str, Any] | None = None, **kwargs: Any) -> Any: ...
def attesting_client(*, api_key: str, base_url: str, for_sdk: Sdk | None = None, identity: Identity | None = None,
                     signal_overrides: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """A client whose every request is attested; pass it as ``http_client=`` to the SDK named by ``for_sdk``.

    Without ``for_sdk`` it is an ``httpx.Client`` (what openai accepts, and
    older anthropic releases require); with it, an ``httpx.Client`` or an
    ``httpx2.Client``, whichever that installed SDK is built on. Extra keyword
    arguments go to the client's constructor.
    """
    if for_sdk is not None and http_library_for(for_sdk) == "httpx2":
        from distillguard.client.httpx2_transport import attesting_httpx2_client

        return attesting_httpx2_client(api_key=api_key, base_url=base_url, identity=identity, signal_overrides=signal_overrides, **kwargs)
    return httpx.Client(transport=AttestingTransport(api_key, base_url, identity=identity, signal_overrides=signal_overrides), **kwargs)


@overload
def async_attesting_client(*, api_key: str, base_url: str, for_sdk: None = None, identity: Identity | None = None,
                           signal_overrides: dict[str, Any] | None = None, **kwargs: Any) -> httpx.AsyncClient: ...
@overload
def async_attesting_client(*, api_key: str, base_url: str, for_sdk: Sdk, identity: Identity | None = None,
                           signal_overrides: dict[str, Any] | None = None, **kwargs: Any) -> Any: ...
def async_attesting_client(*, api_key: str, base_url: str, for_sdk: Sdk | None = None, identity: Identity | None = None,
                           signal_overrides: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """The async twin of :func:`attesting_client` (``httpx.AsyncClient`` or ``httpx2.AsyncClient``)."""
    if for_sdk is not None and http_library_for(for_sdk) == "httpx2":
        from distillguard.client.httpx2_transport import async_attesting_httpx2_client

        return async_attesting_httpx2_client(api_key=api_key, base_url=base_url, identity=identity,
                                             signal_overrides=signal_overrides, **kwargs)
    return httpx.AsyncClient(transport=AsyncAttestingTransport(api_key, base_url, identity=identity, signal_overrides=signal_overrides),
                             **kwargs)
