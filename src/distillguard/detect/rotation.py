"""Rotating addresses: one account, or one install, on many networks within a day.

A person's requests come from a handful of networks a day (home, office,
phone, a VPN exit). A campaign behind a residential-proxy pool gets a new
address — usually a new /24 and often a new ASN — for each request. So per
UTC day we count the distinct /24 networks an account is seen on and how many
of its requests arrived from a network it had not used earlier that day
("fresh"); the same for each attested install (one install should not hop
across the planet). Only the current day's sets are held per account (capped),
so memory does not grow with the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distillguard.detect.base import (
    AccountStates,
    Detector,
    Distinct,
    Evidence,
    add_distinct,
    confidence,
    event_time,
    logistic,
)

__all__ = ["NetworkRotation", "network_of"]

_CAP = 512
_INSTALL_CAP = 64


def network_of(ip: str) -> str:
    """The /24 of an IPv4 address ('a.b.c'); the first 19 characters of anything else (an IPv6 /48-ish prefix)."""
    if not ip:
        return ""
    if "." in ip and ":" not in ip:
        return ip.rsplit(".", 1)[0]
    return ip[:19]


@dataclass(slots=True)  # one per account: no per-instance __dict__ (docs/detection.md, "Memory")
class _State:
    requests: int = 0
    day: int = -1
    nets: Distinct[str] = ()  # small tuples, then sets (base.add_distinct)
    asns: Distinct[Any] = ()
    install_nets: dict[str, Distinct[str]] = field(default_factory=dict)
    with_network: int = 0  # requests carrying an address
    fresh: int = 0  # requests from a network not yet seen by the account that day (beyond the first of the day)
    repeat_day_requests: int = 0  # requests that could have been fresh (not the first of their day)
    days: int = 0
    peak_nets: int = 0
    peak_asns: int = 0
    install_hops: int = 0  # install seen on a network new for that install the same day (beyond its first)
    install_requests: int = 0


class NetworkRotation(Detector):
    name = "network_rotation"

    def __init__(self) -> None:
        self.accounts: AccountStates[_State] = AccountStates(_State)

    def update(self, event: Mapping[str, Any]) -> None:
        s = self.accounts.of(event)
        if s is None:
            return
        s.requests += 1
        client = event.get("client") or {}
        network = network_of(str(client.get("ip") or ""))
        if not network:
            return
        ts = event_time(event)
        day = int(ts // 86400)
        if day != s.day:
            s.day, s.days = day, s.days + 1
            s.nets, s.asns, s.install_nets = (), (), {}
        else:
            s.repeat_day_requests += 1
            if network not in s.nets:
                s.fresh += 1
        s.with_network += 1
        s.nets = add_distinct(s.nets, network, _CAP)
        asn = (client.get("geo") or {}).get("asn")
        if asn is not None:
            s.asns = add_distinct(s.asns, asn, _CAP)
        s.peak_nets = max(s.peak_nets, len(s.nets))
        s.peak_asns = max(s.peak_asns, len(s.asns))
        attestation = event.get("attestation") or {}
        install = attestation.get("install_id")
        if install:
            s.install_requests += 1
            seen = s.install_nets.get(install)
            if seen is None:
                if len(s.install_nets) < _INSTALL_CAP:
                    s.install_nets[install] = (network,)
            elif network not in seen:
                s.install_hops += 1
                s.install_nets[install] = add_distinct(seen, network, _CAP)

    def evidence(self, account_id: str) -> Evidence | None:
        s = self.accounts.get(account_id)
        if s is None or s.with_network == 0:
            return None
        fresh = s.fresh / s.repeat_day_requests if s.repeat_day_requests else 0.0
        per_day = s.with_network / max(1, s.days)
        # Midpoints: half of a day's later requests from networks new that day, 6 networks in one day. Both are
        # needed (a traveller has a fresh share but few networks; a big office has one network), and the
        # confidence grows with the requests that could have shown a change of network.
        score = logistic(fresh, 0.45, 0.08) * logistic(s.peak_nets, 6, 1.5) * confidence(s.repeat_day_requests, 6.0)
        install_hop = s.install_hops / s.install_requests if s.install_requests else 0.0
        if s.install_requests >= 5:
            # One attested install on many networks a day is the same behaviour, pinned to one device.
            score = max(score, logistic(install_hop, 0.45, 0.08) * confidence(s.install_requests, 6.0))
        detail = (f"{fresh:.0%} of requests after a day's first came from a network not used earlier that day; "
                  f"up to {s.peak_nets} /24 networks and {s.peak_asns} ASNs in one day over {s.days} days "
                  f"({per_day:.1f} requests a day)")
        if s.install_requests:
            detail += f"; attested installs changed network on {install_hop:.0%} of their requests"
        return Evidence(self.name, score, detail,
                        numbers={"fresh_network_share": round(fresh, 3), "peak_networks_per_day": s.peak_nets,
                                 "peak_asns_per_day": s.peak_asns, "install_hop_share": round(install_hop, 3)})
