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
from distillguard.client.transport import Enrollment, sign_request

__all__ = ["AsyncHttpx2AttestingTransport", "Httpx2AttestingTransport", "async_attesting_httpx2_client", "attesting_httpx2_client"]


class Httpx2AttestingTransport(httpx2.BaseTransport):
    def __init__(self, api_key: str, base_url: str, *, identity: Identity | None = None, inner: httpx2.BaseTransport | None = None,
                 signal_overrides: dict[str, Any] | None = None) -> None:
        self.identity = identity or Identity.load_or_create()
        self.enrollment = Enrollment(api_key, base_url, self.identity)
        self.inner = inner or httpx2.HTTPTransport()
        self.overrides = signal_overrides

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if self.enrollment.pending:
            url, headers, body = self.enrollment.request()
            response = self.inner.handle_request(httpx2.Request("POST", url, headers=headers, content=body))
            self.enrollment.record(response.status_code, response.read())
            response.close()
        sign_request(request, self.identity, self.overrides)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class AsyncHttpx2AttestingTransport(httpx2.AsyncBaseTransport):
    def __init__(self, api_key: str, base_url: str, *, identity: Identity | None = None,
                 inner: httpx2.AsyncBaseTransport | None = None, signal_overrides: dict[str, Any] | None = None) -> None:
        self.identity = identity or Identity.load_or_create()
        self.enrollment = Enrollment(api_key, base_url, self.identity)
        self.inner = inner or httpx2.AsyncHTTPTransport()
        self.overrides = signal_overrides

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self.enrollment.pending:
            url, headers, body = self.enrollment.request()
            response = await self.inner.handle_async_request(httpx2.Request("POST", url, headers=headers, content=body))
            self.enrollment.record(response.status_code, await response.aread())
            await response.aclose()
        await request.aread()  # keeps the body on the request, where sign_request reads it
        sign_request(request, self.identity, self.overrides)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


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
