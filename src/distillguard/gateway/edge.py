"""The gateway's edge: what one client may hold of the HTTP server, and the bookkeeping when a limit bites.

:class:`EdgeLimits` are the deadlines and caps (the ``server:`` settings);
:class:`EdgeStats` counts every time one bites (``serve`` puts them on
``/metrics``); :class:`ConnectionCaps` admits connections under the total and
per-IP caps. At a cap it closes the connection that has waited longest
without a request in progress (idle, or still sending its head: what a
slow-loris attacker holds) rather than refusing the newcomer, so a thousand
trickling sockets cannot lock a real client out; only when every connection
is busy is the new one refused. Bites are summarised in one log line at most
every :data:`LOG_INTERVAL_S`, never one line per bite (a flood must not become
a log flood). The descriptor limit is raised at start and the total cap kept
below it: at the common soft limit of 1,024, a thousand idle sockets used to
lock everyone out with nothing logged.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import logging
import resource
import time
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

__all__ = ["ConnectionCaps", "EdgeLimits", "EdgeStats", "LOG_INTERVAL_S", "Peer", "fd_budget", "raise_fd_limit"]

log = logging.getLogger("distillguard.gateway.http")

FD_RESERVE = 128  # descriptors kept for the listening socket, the store, logs, spill files
LOG_INTERVAL_S = 10.0  # at most one summary line per interval while limits bite


DEFAULT_MAX_CONNECTIONS = 10_000


@dataclass(frozen=True)
class EdgeLimits:
    """What a client may hold of the server, and for how long (``server:`` in the configuration)."""

    keepalive_timeout_s: float = 5.0  # idle between requests
    head_timeout_s: float = 10.0  # from a head's first byte to its end, in total
    body_timeout_s: float = 30.0  # from the end of a head to the end of its body, in total
    send_timeout_s: float = 60.0  # a client that takes none of its answer for this long is cut off
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # lowered at start to what the descriptor limit allows
    max_connections_per_ip: int = 256
    # Peers that are not one client (load balancers: ``network.trusted_proxies``) are exempt from the per-IP cap.
    per_ip_exempt: tuple[str, ...] = ()


@dataclass
class EdgeStats:
    """Counters of the limits biting, for ``/metrics``: by what bit, since start."""

    refused: dict[str, int] = field(default_factory=lambda: {"max_connections": 0, "max_connections_per_ip": 0})
    evicted: dict[str, int] = field(default_factory=lambda: {"max_connections": 0, "max_connections_per_ip": 0})
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("head_timeout", "body_timeout", "send_timeout", "head_too_large", "trailer_too_large", "malformed", "bad_host", "transfer_encoding",
         "upgrade"), 0))
    open_connections: int = 0


def raise_fd_limit() -> int:
    """Raise this process's open-file limit from its soft to its hard value; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, wanted, exc)
    return int(soft)


def fd_budget() -> int:
    """How many client connections the open-file limit leaves room for (each may pair with an upstream one)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(16, (int(soft) - FD_RESERVE) // 2)


def fitted(limits: EdgeLimits) -> EdgeLimits:
    """``limits`` with ``max_connections`` lowered to what the open-file limit allows (logged)."""
    budget = fd_budget()
    if limits.max_connections <= budget:
        return limits
    # A warning when the operator asked for more; the default is simply fitted to the machine.
    level = logging.INFO if limits.max_connections == DEFAULT_MAX_CONNECTIONS else logging.WARNING
    log.log(level, "max_connections %d lowered to %d: the open-file limit leaves room for no more "
            "(raise `ulimit -n` to allow more)", limits.max_connections, budget)
    return dataclasses.replace(limits, max_connections=budget)


class Peer(Protocol):
    """A connection, as the caps see it."""

    @property
    def ip(self) -> str | None: ...

    def close(self) -> None: ...


P = TypeVar("P", bound=Peer)


class ConnectionCaps(Generic[P]):
    """Open connections in total, per client IP and waiting (no request in progress), oldest first."""

    def __init__(self, limits: EdgeLimits, stats: EdgeStats) -> None:
        self.limits = limits
        self.stats = stats
        self.exempt = [ipaddress.ip_network(cidr, strict=False) for cidr in limits.per_ip_exempt]
        self.connections: dict[P, None] = {}  # every open connection, oldest first
        self.waiting: dict[P, None] = {}  # those with no request in progress, longest waiting first
        self.per_ip: dict[str, dict[P, None]] = {}
        self.unlogged: collections.Counter[str] = collections.Counter()  # bites since the last summary line
        self.next_log = 0.0
        self.last_ip: str | None = None  # the peer of the latest bite, for the summary line

    def admit(self, conn: P) -> bool:
        """Make room for a new connection under both caps (closing the longest-waiting one) or refuse it."""
        limits = self.limits
        ip = conn.ip
        if len(self.connections) >= limits.max_connections and not self._evict(self.waiting, "max_connections", ip):
            return False
        mine = self.per_ip.get(ip) if ip is not None else None
        if (mine is not None and len(mine) >= limits.max_connections_per_ip and not self._exempt(ip)
                and not self._evict(mine, "max_connections_per_ip", ip)):
            return False
        self.connections[conn] = None
        self.waiting[conn] = None
        if ip is not None:
            if mine is None:
                mine = self.per_ip[ip] = {}
            mine[conn] = None
        self.stats.open_connections = len(self.connections)
        return True

    def _exempt(self, ip: str | None) -> bool:
        if not self.exempt or ip is None:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.exempt)

    def _evict(self, pool: dict[P, None], cap: str, ip: str | None) -> bool:
        """Close the connection of ``pool`` that has waited longest without a request in progress; False if none."""
        for victim in pool:
            if victim in self.waiting:
                self.forget(victim)
                victim.close()
                self.stats.evicted[cap] += 1
                self._bite(f"evicted ({cap})", ip)
                return True
        self.stats.refused[cap] += 1
        self._bite(f"refused ({cap})", ip)
        return False

    def busy(self, conn: P) -> None:
        """A request is in progress on ``conn``: not to be evicted."""
        self.waiting.pop(conn, None)

    def idle_again(self, conn: P) -> None:
        if conn in self.connections:
            self.waiting[conn] = None

    def forget(self, conn: P) -> None:
        if self.connections.pop(conn, 0) is None:
            self.waiting.pop(conn, None)
            ip = conn.ip
            mine = self.per_ip.get(ip) if ip is not None else None
            if mine is not None:
                mine.pop(conn, None)
                if not mine and ip is not None:
                    del self.per_ip[ip]
            self.stats.open_connections = len(self.connections)

    def count_rejection(self, reason: str, ip: str | None) -> None:
        """A request the server refused itself (``EdgeStats.rejected``); all but malformed ones, logged at info, join the summary."""
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        if reason != "malformed":
            self._bite(reason, ip)

    def _bite(self, what: str, ip: str | None) -> None:
        self.unlogged[what] += 1
        self.last_ip = ip
        self.flush_log()

    def flush_log(self) -> None:
        """The summary line, if anything bit and the last line is old enough (the server's sweeper calls this too)."""
        now = time.monotonic()
        if self.unlogged and now >= self.next_log:
            summary = ", ".join(f"{n} {what}" for what, n in sorted(self.unlogged.items()))
            log.warning("connection limits: %s in the last %gs (latest from %s; %d connections open, caps %d total, %d per IP)",
                        summary, LOG_INTERVAL_S, self.last_ip, len(self.connections), self.limits.max_connections,
                        self.limits.max_connections_per_ip)
            self.unlogged.clear()
            self.next_log = now + LOG_INTERVAL_S
