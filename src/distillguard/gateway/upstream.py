"""Upstream model servers: routing by model name and one pooled HTTP client.

One ``aiohttp.ClientSession`` with keep-alive connections is shared by every
request: opening a TCP connection per request would cost more than everything
else the gateway does. Routing is a dict lookup for exact model names, then
the upstreams' glob patterns in configuration order.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import aiohttp

from distillguard.config import UpstreamSettings
from distillguard.gateway.errors import GatewayError

__all__ = ["Router", "Upstream", "open_session"]


@dataclass(frozen=True)
class Upstream:
    settings: UpstreamSettings
    timeout: aiohttp.ClientTimeout
    auth_headers: tuple[tuple[str, str], ...]

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
    headers: list[tuple[str, str]] = []
    if settings.api_key:
        if settings.protocol == "anthropic":
            headers.append(("x-api-key", settings.api_key))
        else:
            headers.append(("Authorization", f"Bearer {settings.api_key}"))
    # A read timeout, not a total one: a long stream is fine as long as the upstream keeps talking.
    timeout = aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout_s, sock_read=settings.timeout_s)
    return Upstream(settings, timeout, tuple(headers))


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


def open_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",))
