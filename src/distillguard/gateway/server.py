"""`distillguard serve`: build the gateway from settings and run it on our HTTP server.

The gateway is a plain ASGI application (any ASGI server can run it); `serve`
uses ``http_server`` (uvloop + httptools), which writes each JSON response in
one system call. SIGTERM makes it stop accepting, wait for in-flight requests,
then run the lifespan shutdown, where the event sink drains.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from distillguard.config import Settings, load_settings
from distillguard.gateway.app import Gateway

__all__ = ["build_gateway", "serve", "serve_command"]

log = logging.getLogger("distillguard.gateway")


def build_gateway(settings: Settings) -> Gateway:
    """Wire the gateway with every component this installation and configuration provide."""
    from distillguard.policy import PolicyEngine
    from distillguard.signals import SignalCollector
    from distillguard.store import EventSink, Registry
    from distillguard.watermark.gateway import GatewayWatermarker

    registry = Registry(settings.database)
    sink = EventSink(settings.database, settings.spill_dir, retention_days=settings.privacy.retention_days)
    signals = SignalCollector(settings, install_keys=registry.install_keys, enroll_store=registry.enroll_install)
    watermarker = GatewayWatermarker(settings)
    # Always on: the attestation requirement and manual overrides do not depend on
    # online detection; with detection.online off the engine spawns no scorer process.
    policy = PolicyEngine(settings, registry=registry)
    plugins: list[Any] = [watermarker, policy]
    return Gateway(settings, registry=registry, sink=sink, signals=signals, policy=policy, watermarker=watermarker, admin_plugins=plugins)


def serve(settings: Settings) -> None:
    from distillguard.gateway.http_server import run

    logging.getLogger().setLevel(settings.log_level.upper())
    # The event writer thread gives up the interpreter lock inside every SQLite call and must win it back
    # from a busy event loop each time; at the default 5 ms switch interval it falls behind under load.
    sys.setswitchinterval(0.0005)
    app = build_gateway(settings)
    log.info("distillguard gateway on http://%s (admin API under /admin/v1/)", settings.listen)
    run(app, settings.listen_host, settings.listen_port, backlog=4096, graceful_timeout_s=30)


def serve_command(args: argparse.Namespace) -> int:
    serve(load_settings(args.config))
    return 0
