"""Server-side network signals: the real client IP, GeoIP/ASN, a header fingerprint, privacy.

``X-Forwarded-For`` and ``Forwarded`` are believed only for hops that are
configured trusted proxies: the list is walked from the right (the hop nearest
to us) and the first address that is not a trusted proxy is the client.
``X-Forwarded-Proto`` likewise counts only when the direct peer is a trusted
proxy; from anyone else it is a claim the client chose.
GeoIP and ASN come from local MaxMind-format ``.mmdb`` files when configured;
nothing is looked up over the network.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

__all__ = ["GeoLookup", "client_ip", "forwarded_scheme", "header_fingerprint", "is_trusted_peer", "protect_ip", "DEFAULT_HOSTING_ASNS"]

Networks = list[ipaddress.IPv4Network | ipaddress.IPv6Network]

DEFAULT_HOSTING_ASNS = frozenset({16509, 14618, 15169, 396982, 8075, 14061, 24940, 16276, 63949, 20473, 45102, 37963, 132203, 31898})
_FORWARDED_FOR = re.compile(r'for="?\[?([^\]";,]+)\]?(?::\d+)?"?', re.IGNORECASE)


@lru_cache(maxsize=65536)
def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.count(":") == 1 and "." in value:  # IPv4 with port
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _in(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: Networks) -> bool:
    return any(ip in network for network in trusted)


def is_trusted_peer(peer: str | None, trusted: Networks) -> bool:
    """Whether the TCP peer is a configured trusted proxy (only then are forwarding headers believed)."""
    ip = _parse_ip(peer) if peer and trusted else None
    return ip is not None and _in(ip, trusted)


def forwarded_scheme(peer: str | None, headers: dict[str, str], trusted: Networks) -> str:
    """The scheme the client used: ``X-Forwarded-Proto`` from a trusted peer, else ``http``.

    The trusted proxy must set the header (not append to a client's): the
    first value is taken. Anything but ``http``/``https`` is ignored.
    """
    value = headers.get("x-forwarded-proto")
    if not value or not is_trusted_peer(peer, trusted):
        return "http"
    scheme = value.split(",", 1)[0].strip().lower()
    return scheme if scheme in ("http", "https") else "http"


def client_ip(peer: str | None, headers: dict[str, str], trusted: Networks) -> str | None:
    """The client address, walking forwarding headers only through trusted proxies."""
    if not trusted:
        return peer
    current = _parse_ip(peer) if peer else None
    if current is None:
        return peer

    def is_trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return _in(ip, trusted)

    chain: list[str] = []
    forwarded = headers.get("forwarded")
    if forwarded:
        chain = _FORWARDED_FOR.findall(forwarded)
    elif headers.get("x-forwarded-for"):
        chain = [part.strip() for part in headers["x-forwarded-for"].split(",")]
    while is_trusted(current) and chain:
        candidate = _parse_ip(chain.pop())
        if candidate is None:
            break
        current = candidate
    return str(current)


def header_fingerprint(names: Iterable[str]) -> str:
    """Our own fingerprint of a client's HTTP stack: the order of its header names.

    Values are left out (they vary per request); names that every client or
    proxy adds in varying places (host, content-length, our own headers) are
    skipped. Not JA4H: its licence does not allow use in this product.
    """
    return _header_fingerprint(tuple(names))


_FINGERPRINT_SKIP = frozenset({"host", "content-length", "authorization", "x-api-key", "cookie", "signature", "signature-input",
                               "content-digest", "dg-client-signals", "x-forwarded-for", "forwarded", "x-real-ip"})


@lru_cache(maxsize=4096)  # a client stack sends the same header names every time
def _header_fingerprint(names: tuple[str, ...]) -> str:
    ordered = [n.lower() for n in names if n.lower() not in _FINGERPRINT_SKIP]
    return hashlib.sha256("|".join(ordered).encode()).hexdigest()[:16]


def protect_ip(ip: str | None, mode: str, key: bytes) -> str | None:
    """Apply the deployment's privacy setting to an address before it is stored."""
    if ip is None or mode == "full":
        return ip
    parsed = _parse_ip(ip)
    if parsed is None:
        return None
    if mode == "truncate":
        prefix = 24 if parsed.version == 4 else 48
        return str(ipaddress.ip_network(f"{parsed}/{prefix}", strict=False).network_address) + f"/{prefix}"
    return "hmac:" + hmac.new(key, str(parsed).encode(), hashlib.sha256).hexdigest()[:24]


class GeoLookup:
    """Country, ASN and hosting flag from local ``.mmdb`` files (either may be absent)."""

    def __init__(self, country_db: str | None, asn_db: str | None, hosting_asns: Iterable[int] = ()) -> None:
        import maxminddb

        self.country = maxminddb.open_database(country_db) if country_db else None
        self.asn = maxminddb.open_database(asn_db) if asn_db else None
        self.hosting_asns = frozenset(hosting_asns) | DEFAULT_HOSTING_ASNS
        self.lookup = lru_cache(maxsize=65536)(self._lookup)

    def _lookup(self, ip: str | None) -> dict[str, Any]:
        result: dict[str, Any] = {"country": None, "asn": None, "hosting": None}
        if ip is None or _parse_ip(ip) is None:
            return result
        if self.country is not None:
            record = self.country.get(ip)
            if isinstance(record, dict):
                country = record.get("country") or record.get("registered_country") or {}
                result["country"] = country.get("iso_code") if isinstance(country, dict) else None
        if self.asn is not None:
            record = self.asn.get(ip)
            if isinstance(record, dict):
                asn = record.get("autonomous_system_number")
                result["asn"] = int(asn) if isinstance(asn, int) else None
                result["hosting"] = bool(result["asn"] in self.hosting_asns or record.get("is_hosting_provider"))
        return result
