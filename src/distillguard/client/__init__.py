"""The attesting client SDK (public API).

    from anthropic import Anthropic
    from distillguard.client import attesting_client

    client = Anthropic(base_url=URL, api_key=KEY,
                       http_client=attesting_client(api_key=KEY, base_url=URL, for_sdk="anthropic"))

``for_sdk`` ("openai" or "anthropic") picks ``httpx`` or ``httpx2``, whichever
the installed SDK is built on. The ``httpx2`` names below are imported on
first use, so this package does not need ``httpx2`` installed.
``distillguard client show`` prints exactly what is sent.
"""

from __future__ import annotations

import importlib
from typing import Any

from distillguard.client.identity import Identity, collect_signals, config_dir
from distillguard.client.transport import (
    AsyncAttestingTransport,
    AttestingTransport,
    async_attesting_client,
    attesting_client,
    enrollment_body,
    http_library_for,
    sign_request,
)

__all__ = ["AsyncAttestingTransport", "AsyncHttpx2AttestingTransport", "AttestingTransport", "Httpx2AttestingTransport", "Identity",
           "async_attesting_client", "async_attesting_httpx2_client", "attesting_client", "attesting_httpx2_client",
           "collect_signals", "config_dir", "enrollment_body", "http_library_for", "sign_request"]

_HTTPX2_NAMES = frozenset({"AsyncHttpx2AttestingTransport", "Httpx2AttestingTransport", "async_attesting_httpx2_client",
                           "attesting_httpx2_client"})


def __getattr__(name: str) -> Any:
    """Import the ``httpx2`` transports lazily (PEP 562), so ``httpx2`` stays optional."""
    if name in _HTTPX2_NAMES:
        return getattr(importlib.import_module("distillguard.client.httpx2_transport"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
