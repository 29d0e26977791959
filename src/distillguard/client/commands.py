"""`distillguard client show` (exactly what the SDK would send, without sending it) and `client proxy` (the sidecar)."""

from __future__ import annotations

import argparse
import json

import httpx

from distillguard.client.identity import Identity, collect_signals
from distillguard.client.transport import sign_request
from distillguard.exceptions import UsageError
from distillguard.signals.protocol import SIGNALS_HEADER

__all__ = ["proxy_command", "show_command"]


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


def proxy_command(args: argparse.Namespace) -> int:
    """Run the attesting sidecar until Ctrl-C / SIGTERM (docs/attestation.md, "The sidecar")."""
    import ipaddress
    import logging

    from distillguard.client.proxy import AttestingProxy
    from distillguard.config import parse_listen
    from distillguard.gateway.http_server import run

    try:
        host, port = parse_listen(args.listen, "--listen")
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    target = httpx.URL(args.to)
    if target.scheme not in ("http", "https") or not target.host:
        raise UsageError(f"--to {args.to!r}: expected the gateway's URL, e.g. http://127.0.0.1:8700 or https://gw.example")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(f"distillguard client proxy: warning: listening on {host}, not loopback: every machine that can reach it sends "
              "requests attested as this install", flush=True)
    logging.getLogger("distillguard").setLevel(logging.INFO)
    proxy = AttestingProxy(args.to)
    print(f"distillguard client proxy: http://{args.listen} → {proxy.to} as install {proxy.identity.install_id} "
          f"({proxy.identity.directory}); point clients at http://{args.listen}/v1 (OpenAI) or http://{args.listen} (Anthropic)",
          flush=True)
    run(proxy, host, port, graceful_timeout_s=10.0)
    return 0
