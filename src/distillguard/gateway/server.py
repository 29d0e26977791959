"""`distillguard serve`: build the gateway from settings and run it on our HTTP server.

The gateway is a plain ASGI application (any ASGI server can run it); `serve`
uses ``http_server`` (uvloop + httptools), which writes each JSON response in
one system call and enforces the edge limits of the ``server:`` settings
(deadlines, connection caps; chosen over uvicorn and granian by
``bench/server_compare.py``, see bench/RESULTS.md). SIGTERM makes it stop
accepting, wait for in-flight requests, then run the lifespan shutdown, where
the event sink drains.
"""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from distillguard._compiled import COMPILED, compiled_in_use
from distillguard.config import Settings, load_settings, parse_listen
from distillguard.exceptions import ConfigError
from distillguard.gateway.admin import check_admin_exposure
from distillguard.gateway.app import Gateway
from distillguard.gateway.edge import EdgeLimits, EdgeStats
from distillguard.gateway.http_server import run
from distillguard.gateway.metrics import Metrics
from distillguard.gateway.types import AdminPluginProtocol
from distillguard.logs import configure as configure_logging

if TYPE_CHECKING:
    from distillguard.policy import PolicyEngine
    from distillguard.policy.link import ScorerFactory
    from distillguard.store.wal import WriteAheadLog

__all__ = ["build_gateway", "check_serving", "serve", "serve_command"]

log = logging.getLogger("distillguard.gateway")


def build_gateway(settings: Settings) -> Gateway:
    """Wire the gateway with every component this installation and configuration provide."""
    from distillguard.policy import PolicyEngine
    from distillguard.signals import SignalCollector
    from distillguard.store import EventSink, Registry
    from distillguard.watermark.gateway import GatewayWatermarker

    registry = Registry(settings.database, timeout_s=settings.database_timeout_s)
    sink = EventSink(settings.database, settings.spill_dir, retention_days=settings.privacy.retention_days,
                     timeout_s=settings.database_timeout_s, wal=_event_wal(settings))
    signals = SignalCollector(settings, install_keys=registry.install_keys, enroll_store=registry.enroll_install,
                              shared_nonces=settings.state != "memory")
    watermarker = GatewayWatermarker(settings)
    # Always on: the attestation requirement and manual overrides do not depend on
    # online detection; with detection.online off the engine spawns no scorer process.
    notifier = None
    if settings.state != "memory":  # decisions reach the other replicas through Redis at once, not at their next poll
        from distillguard.state.notify import RedisNotifier

        notifier = RedisNotifier(settings.state, PolicyEngine.new_writer_id(), timeout_s=settings.state_timeout_s)
    scorer: ScorerFactory | None = None
    published_risk = None
    if settings.detection.scorer == "central":  # events go to the fleet's `distillguard scorer` through Redis (docs/deploy.md)
        from distillguard.state.risk_table import RedisRiskTable
        from distillguard.state.scorer_stream import StreamFeed

        scorer = functools.partial(StreamFeed, url=settings.state, max_backlog=settings.detection.scorer_backlog_max)
        published_risk = RedisRiskTable(settings.state, timeout_s=max(1.0, settings.state_timeout_s))
    policy = PolicyEngine(settings, registry=registry, notifier=notifier, scorer=scorer, published_risk=published_risk)
    plugins: list[AdminPluginProtocol] = [watermarker, policy]
    canaries = None
    if settings.canary.enabled:  # off: no planter at all, one `is None` test per answer (docs/watermark.md, "Canaries")
        from distillguard.canary.planter import CanaryPlanter

        canaries = CanaryPlanter(settings.canary)
    gateway = Gateway(settings, registry=registry, sink=sink, signals=signals, policy=policy, watermarker=watermarker,
                      canaries=canaries, admin_plugins=plugins, notifier=notifier)
    _detection_metrics(gateway.metrics, policy)
    return gateway


def _event_wal(settings: Settings) -> WriteAheadLog | None:
    """The event write-ahead log ``event_wal`` asks for (default: on, in ``spill_dir/wal``); a directory that cannot be
    written is a ConfigError here, at start, not a surprise at the first request."""
    from distillguard.store.wal import WriteAheadLog

    wal = settings.event_wal
    if not wal.enabled:
        return None
    return WriteAheadLog(wal.dir or Path(settings.spill_dir) / "wal", segment_bytes=wal.segment_bytes,
                         sync_interval_s=wal.sync_interval_s)


def _detection_metrics(metrics: Metrics, policy: PolicyEngine) -> None:
    """What detection and the policy engine know, on /metrics (read at scrape time, never per request)."""
    metrics.add_labeled_gauge("distillguard_flagged_accounts", "Accounts flagged in the latest online report, by source: score "
                              "(at or above detection.flag_threshold) or shared_indicators (below it, acted on for matching "
                              "imported shared indicators: detection.indicator_action).", "source",
                              lambda: policy.flagged_counts()[0])
    metrics.add_gauge("distillguard_flagged_clusters", "Clusters at or above detection.flag_threshold in the latest online report.",
                      lambda: float(policy.flagged_counts()[1]))
    metrics.add_gauge("distillguard_scored_accounts", "Accounts in the online scorer's latest report (with detection.scorer: "
                      "central, the fleet's central scorer's, from its heartbeat: every account it scored, not only those "
                      "this replica holds).", lambda: float(policy.scored_count()))
    metrics.add_gauge("distillguard_enforced_accounts", "Accounts whose requests are not simply allowed now (manual or risk-based).",
                      lambda: float(len(policy.decisions())))
    metrics.add_gauge("distillguard_scorer_backlog_events", "Events observed but not yet covered by an online report.",
                      lambda: float(policy.scorer.backlog if policy.online else 0))
    metrics.add_counter("dg_scorer_shed_events_total", "Events not scored because the scorer's backlog was at its bound "
                        "(detection.scorer_backlog_max) or its hand-off failed; they are in the event log. By reason.",
                        "reason", lambda: dict(policy.scorer.shed_by_reason))
    metrics.add_gauge("distillguard_scorer_up", "1 while the online scorer process runs (0 when it is gone or detection.online is off).",
                      lambda: float(policy.scorer_status()["status"] in ("ok", "stale")))
    metrics.add_gauge("distillguard_scorer_stale", "1 when risk decisions are stale: the scorer is down, or events wait and no report "
                      "came for 30 s.", lambda: float(policy.scorer_status()["status"] in ("down", "stale")))
    metrics.add_gauge("distillguard_scorer_report_age_seconds", "Seconds since the online scorer's latest report was applied (-1: none yet).",
                      lambda: _report_age(policy))
    metrics.add_counter("distillguard_alerts_total", "Alert webhooks, by outcome (sent, failed, retries, deduplicated, dropped).",
                        "outcome", lambda: {k: v for k, v in policy.alerter.stats.items() if k != "queued"})


def _report_age(policy: PolicyEngine) -> float:
    age = policy.scorer_status()["last_report_age_s"]
    return -1.0 if age is None else float(age)


def _check_free(key: str, address: str) -> None:
    """Bind ``address`` once and let go, so a port in use is a clear exit-2 error before anything is started or logged."""
    host, port = parse_listen(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"{key}: cannot resolve host {host!r} ({exc.strerror})") from None
    for family, kind, proto, _, sockaddr in dict.fromkeys(infos):  # every address the server will bind (localhost: two)
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio binds IPv6 beside IPv4
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                reason = "already in use by another process" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise ConfigError(f"{key}: cannot listen on {address}: {reason}; stop the other process or choose "
                                  "another port") from None


def check_serving(settings: Settings) -> None:
    """Everything that would make ``serve`` fail or be unsafe, checked before it starts (exit 2 with the key's name)."""
    if settings.admin_listen is not None and parse_listen(settings.admin_listen)[1] == settings.listen_port:
        raise ConfigError(f"admin_listen: {settings.admin_listen} uses the same port as listen ({settings.listen}); the two "
                          "listeners are told apart by port: give the admin API another one, or leave admin_listen unset")
    warning = check_admin_exposure(settings)
    if warning:
        log.warning("%s", warning)
    _check_free("listen", settings.listen)
    if settings.admin_listen is not None:
        _check_free("admin_listen", settings.admin_listen)


def edge_limits(settings: Settings) -> EdgeLimits:
    """The server's deadlines and caps from the ``server:`` settings; trusted proxies are exempt from the per-IP cap."""
    server = settings.server
    return EdgeLimits(keepalive_timeout_s=server.keepalive_timeout_s, head_timeout_s=server.head_timeout_s,
                      body_timeout_s=server.body_timeout_s, send_timeout_s=server.send_timeout_s, max_connections=server.max_connections,
                      max_connections_per_ip=server.max_connections_per_ip, per_ip_exempt=tuple(settings.network.trusted_proxies))


def export_edge_stats(metrics: Metrics, stats: EdgeStats) -> None:
    """Put the server's counters on the gateway's ``/metrics``."""
    metrics.add_gauge("distillguard_open_connections", "Client connections open now.", lambda: float(stats.open_connections))
    metrics.add_counter("distillguard_connections_refused_total", "New connections refused with 503 at a cap (nothing to evict).",
                        "cap", lambda: stats.refused)
    metrics.add_counter("distillguard_connections_evicted_total", "Waiting connections closed to make room at a cap.",
                        "cap", lambda: stats.evicted)
    metrics.add_counter("distillguard_http_rejected_total", "Requests the HTTP server refused or cut off itself (408, 400, 431, 501; send_timeout: closed), by reason.",
                        "reason", lambda: stats.rejected)


def serve(settings: Settings, *, worker: int | None = None) -> None:
    """Run one gateway process; ``worker`` is its index under ``serve --workers`` (it then shares the port)."""
    configure_logging(settings.log_level, settings.log_format)
    if worker is None:
        check_serving(settings)
    app = build_gateway(settings)
    app.freeze_gc_after_start = True
    compiled = compiled_in_use()
    log.info("per-request modules: %s", f"{len(compiled)} of {len(COMPILED)} compiled with mypyc" if compiled else
             "pure Python (the install compiled nothing: docs/architecture.md, \"Compiled hot path\")")
    stats = EdgeStats()
    export_edge_stats(app.metrics, stats)
    also_listen: tuple[tuple[str, int], ...] = ()
    if settings.admin_listen is not None:
        also_listen = (parse_listen(settings.admin_listen),)
        log.info("distillguard gateway on http://%s (admin API only on http://%s/admin/v1/)", settings.listen, settings.admin_listen)
    else:
        log.info("distillguard gateway on http://%s (admin API under /admin/v1/)", settings.listen)
    run(app, settings.listen_host, settings.listen_port, backlog=4096, graceful_timeout_s=settings.server.graceful_timeout_s,
        also_listen=also_listen, limits=edge_limits(settings), stats=stats, reuse_port=worker is not None)


def serve_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    workers = getattr(args, "workers", None)
    if workers is not None:
        from distillguard.gateway.workers import serve_workers

        return serve_workers(args.config, settings, workers)
    serve(settings)
    return 0
