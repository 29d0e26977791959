"""The attesting transports for ``httpx2``, the HTTP library of openai 3.x and anthropic 2.x.

A separate module so that ``import distillguard.client`` never needs
``httpx2``: it is imported here, and this module only when an ``httpx2``
client is asked for. ``httpx2`` mirrors ``httpx``'s Request/Transport API, so
signing (:func:`~distillguard.client.transport.sign_request`) and enrollment
(:class:`~distillguard.client.transport.Enrollment`) are shared; only the base
classes and the request type differ.
"""

from __future__ import annotations

from typing import Any

import httpx2

from distillguard.client.identity import Identity
from distillguard.client.transport import AsyncSigningTransport, SigningTransport

__all__ = ["AsyncHttpx2AttestingTransport", "Httpx2AttestingTransport", "async_attesting_httpx2_client", "attesting_httpx2_client"]


class Httpx2AttestingTransport(SigningTransport, httpx2.BaseTransport):
    request_class = httpx2.Request
    default_inner = httpx2.HTTPTransport


class AsyncHttpx2AttestingTransport(AsyncSigningTransport, httpx2.AsyncBaseTransport):
    request_class = httpx2.Request
    default_inner = httpx2.AsyncHTTPTransport


def attesting_httpx2_client(*, api_key: str, base_url: str, identity: Identity | None = None,
                            signal_overrides: dict[str, Any] | None = None, **kwargs: Any) -> httpx2.Client:
    """An ``httpx2.Client`` whose every request is attested, for ``Anthropic(http_client=...)`` or ``OpenAI(...)``."""
    transport = Httpx2AttestingTransport(api_key, base_url, identity=identity, signal_overrides=signal_overrides)
    return httpx2.Client(transport=transport, **kwargs)


def async_attesting_httpx2_client(*, api_key: str, base_url: str, identity: Identity | None = None,
                                  signal_overrides: dict[str, Any] | None = None, **kwargs: Any) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` whose every request is attested, for ``AsyncAnthropic`` or ``AsyncOpenAI``."""
    transport = AsyncHttpx2AttestingTransport(api_key, base_url, identity=identity, signal_overrides=signal_overrides)
    return httpx2.AsyncClient(transport=transport, **kwargs)
