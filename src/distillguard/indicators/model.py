"""Indicators of abuse that providers can share, and matching them against events.

An :class:`Indicator` is one observable that another provider's detection (or
ours) tied to distillation or reselling: a client address or network, an
autonomous system, the SHA-256 of an attesting install's id, the SHA-256 of a
shared wrapper/system prompt, or a canary key id. Everything here is plain
data; the STIX 2.1 wire format lives in :mod:`distillguard.indicators.stix`.

Hashes are plain SHA-256 (not the deployment's keyed hash, docs/signals.md) on
purpose: two providers can only match a value if they compute the same hash.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Indicator", "IndicatorKind", "IndicatorSet", "install_digest", "prompt_digest"]

IndicatorKind = Literal["ip", "cidr", "asn", "install_sha256", "prompt_sha256", "canary_key"]
KINDS: tuple[IndicatorKind, ...] = ("ip", "cidr", "asn", "install_sha256", "prompt_sha256", "canary_key")


def install_digest(install_id: str) -> str:
    """SHA-256 (hex) of an attesting install's id: shareable without handing out the id itself."""
    return hashlib.sha256(install_id.encode()).hexdigest()


def prompt_digest(text: str) -> str:
    """SHA-256 (hex) of a system prompt with whitespace runs collapsed, so re-indenting a wrapper does not change it."""
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


@dataclass(frozen=True)
class Indicator:
    """One shared observable; ``accounts`` is how many flagged accounts it was seen from (0 when unknown)."""

    kind: IndicatorKind
    value: str
    accounts: int = 0
    source: str | None = None
    stix_id: str | None = None
    first_seen: str | None = None


def _network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None


class IndicatorSet:
    """Indicators indexed for matching events (event log v1, DESIGN §4) in constant time per field.

    Networks are matched by containment: an event address inside an indicator
    CIDR, or an event's stored network (``privacy.ip_mode: truncate`` keeps
    ``a.b.c.0/24``) overlapping an indicator address or CIDR.
    """

    def __init__(self, indicators: Iterable[Indicator]) -> None:
        self.indicators = list(indicators)
        self.ips: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.asns: set[int] = set()
        self.installs: set[str] = set()
        self.prompts: set[str] = set()
        self.canary_keys: set[str] = set()
        for ind in self.indicators:
            if ind.kind == "ip":
                net = _network(ind.value)
                if net is not None:
                    self.ips.add(str(net.network_address))
                    self.networks.append(net)
            elif ind.kind == "cidr":
                net = _network(ind.value)
                if net is not None:
                    self.networks.append(net)
            elif ind.kind == "asn":
                self.asns.add(int(ind.value))
            elif ind.kind == "install_sha256":
                self.installs.add(ind.value.lower())
            elif ind.kind == "prompt_sha256":
                self.prompts.add(ind.value.lower())
            else:
                self.canary_keys.add(ind.value)
        self._ip_cache: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self.indicators)

    def _ip_matches(self, value: str) -> bool:
        hit = self._ip_cache.get(value)
        if hit is None:
            if value in self.ips:
                hit = True
            else:
                net = _network(value)  # hashed addresses ("hmac:…") are not networks and never match
                hit = net is not None and any(net.version == n.version and net.overlaps(n) for n in self.networks)
            if len(self._ip_cache) < 100_000:
                self._ip_cache[value] = hit
        return hit

    def matches(self, event: Mapping[str, Any]) -> list[IndicatorKind]:
        """The kinds of indicator this event matches (empty when none)."""
        found: list[IndicatorKind] = []
        client = event.get("client") or {}
        ip = client.get("ip")
        if isinstance(ip, str) and (self.ips or self.networks) and self._ip_matches(ip):
            found.append("ip")
        asn = (client.get("geo") or {}).get("asn")
        if isinstance(asn, int) and asn in self.asns:
            found.append("asn")
        attestation = event.get("attestation") or {}
        install = attestation.get("install_id")
        if isinstance(install, str) and self.installs and install_digest(install) in self.installs:
            found.append("install_sha256")
        system = (event.get("request") or {}).get("system")
        if isinstance(system, str) and system and self.prompts and prompt_digest(system) in self.prompts:
            found.append("prompt_sha256")
        return found
