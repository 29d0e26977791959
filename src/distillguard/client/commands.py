"""`distillguard client show`: print exactly what the SDK would send, without sending it."""

from __future__ import annotations

import argparse
import json

import httpx

from distillguard.client.identity import Identity, collect_signals
from distillguard.client.transport import sign_request
from distillguard.signals.protocol import SIGNALS_HEADER

__all__ = ["show_command"]


def show_command(args: argparse.Namespace) -> int:
    identity = Identity.load_or_create()
    request = httpx.Request("POST", args.url, content=args.body.encode(), headers={"Content-Type": "application/json"})
    sign_request(request, identity)
    print(f"install directory: {identity.directory}")
    print(f"install id:        {identity.install_id}")
    print(f"public key:        {identity.public_key_b64}\n")
    print("headers added to every request:")
    for name in (SIGNALS_HEADER, "Content-Digest", "Signature-Input", "Signature"):
        print(f"  {name}: {request.headers[name]}")
    print("\nthe signals header decoded (every field is documented in docs/signals.md):")
    print(json.dumps(collect_signals(identity), indent=2))
    return 0
