"""Upstream model servers: routing by model name, and each upstream's fixed request parts.

Routing is a dict lookup for exact model names, then the upstreams' glob
patterns in configuration order. Everything about an upstream that does not
change per request (origin, auth header lines, timeouts) is prepared once here,
so the hot path only concatenates bytes (``upstream_http.UpstreamClient``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from distillguard.config import UpstreamSettings
from distillguard.gateway.errors import GatewayError
from distillguard.gateway.types import UpstreamTransportProtocol
from distillguard.gateway.upstream_http import Origin, UpstreamError

__all__ = ["Router", "Upstream", "get_document"]


@dataclass(frozen=True)
class Upstream:
    settings: UpstreamSettings
    origin: Origin
    auth_lines: bytes  # ``Name: value\r\n`` lines sent with every request
    connect_timeout_s: float
    read_timeout_s: float  # a read timeout, not a total one: a long stream is fine while the upstream keeps talking
    secrets: tuple[bytes, ...] = ()  # credentials masked in the upstream's error bodies (errors.mask_secrets)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def protocol(self) -> str:
        return self.settings.protocol

    def url(self, path: str) -> str:
        """``path`` is relative to the API root, e.g. ``/chat/completions``."""
        return self.settings.base_url + path


def _make(settings: UpstreamSettings) -> Upstream:
    auth = b""
    if settings.api_key:
        if settings.protocol == "anthropic":
            auth = b"x-api-key: " + settings.api_key.encode() + b"\r\n"
        else:
            auth = b"Authorization: Bearer " + settings.api_key.encode() + b"\r\n"
    secrets = (settings.api_key.encode(),) if settings.api_key else ()
    origin = Origin.from_url(settings.base_url, idle_timeout_s=settings.idle_timeout_s, max_connections=settings.max_connections)
    return Upstream(settings, origin, auth, settings.connect_timeout_s, settings.timeout_s, secrets)


class Router:
    def __init__(self, upstreams: list[UpstreamSettings]) -> None:
        self.upstreams = [_make(u) for u in upstreams]
        self._exact: dict[str, Upstream] = {}
        self._patterns: list[tuple[str, Upstream]] = []
        for upstream in self.upstreams:
            for pattern in upstream.settings.models:
                if any(ch in pattern for ch in "*?["):
                    self._patterns.append((pattern, upstream))
                else:
                    self._exact.setdefault(pattern, upstream)
        self._cache: dict[str, Upstream | None] = {}

    def route(self, model: str) -> Upstream:
        upstream = self._cache.get(model, False)
        if upstream is False:
            upstream = self._exact.get(model)
            if upstream is None:
                upstream = next((u for p, u in self._patterns if fnmatch.fnmatchcase(model, p)), None)
            if len(self._cache) < 10_000:
                self._cache[model] = upstream
        if upstream is None:
            raise GatewayError(404, f"The model '{model}' does not exist or is not served by this gateway.", "model_not_found")
        return upstream  # type: ignore[return-value]

    def listed_models(self) -> list[tuple[str, Upstream]]:
        return [(name, u) for name, u in self._exact.items()]


async def get_document(client: UpstreamTransportProtocol, upstream: Upstream, path: bytes) -> bytes:
    """GET a small document from an upstream (health probe, model list); any non-2xx raises :class:`UpstreamError`."""
    resp = await client.request(upstream.origin, b"GET", path, upstream.auth_lines, b"",
                                connect_timeout=upstream.connect_timeout_s, read_timeout=upstream.read_timeout_s)
    async with resp:
        body = await resp.read()
    if not 200 <= resp.status < 300:
        raise UpstreamError(f"HTTP {resp.status}")
    return body
