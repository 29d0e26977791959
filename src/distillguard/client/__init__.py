"""The attesting client SDK (public API).

    from openai import OpenAI
    from distillguard.client import attesting_client

    client = OpenAI(base_url=URL, api_key=KEY, http_client=attesting_client(api_key=KEY, base_url=URL))

``distillguard client show`` prints exactly what is sent.
"""

from distillguard.client.identity import Identity, collect_signals, config_dir
from distillguard.client.transport import (
    AsyncAttestingTransport,
    AttestingTransport,
    async_attesting_client,
    attesting_client,
    sign_request,
)

__all__ = ["AsyncAttestingTransport", "AttestingTransport", "Identity", "async_attesting_client", "attesting_client",
           "collect_signals", "config_dir", "sign_request"]
