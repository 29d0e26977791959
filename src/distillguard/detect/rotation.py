"""Rotating addresses: one account, or one install, on many networks within a day.

A person's requests come from a handful of networks a day (home, office,
phone, a VPN exit). A campaign behind a residential-proxy pool gets a new
address — usually a new /24 and often a new ASN — for each request. So per
UTC day we count the distinct /24 networks an account is seen on and how many
of its requests arrived from a network it had not used earlier that day
("fresh"); the same for each attested install (one install should not hop
across the planet). Only the current day's sets are held per account (capped),
so memory does not grow with the log.

Those two counts need a day's worth of requests before they speak (the
networks-per-day curve is half at 6), so an account of a small campaign that
sends a few requests a day, each from a new network, stayed low for days. A
second route reads the same behaviour as a **sequential test**, request by
request: once a day has already shown ``CROWD`` networks (home, office, phone
— a traveller's whole day), is each further request from yet another one?
The log-likelihood ratio of those outcomes between a rotating pool (a new
network ``P_ROTATING`` of the time) and the most mobile people (``P_PEOPLE``)
grows by ~1.1 with every fresh network and falls by ~1.9 with every network
reused, so five fresh networks in a row after the third say as much as a
day's count of them, and a VPN user who reuses a few exits never gets there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
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
    typical,
)

__all__ = ["CROWD", "NetworkRotation", "network_of", "rotation_llr", "sequential"]

_CAP = 512
_INSTALL_CAP = 64
# The sequential route: after a day has shown CROWD networks, each further request is one outcome — a network new
# that day or not — weighed between a rotating pool (P_ROTATING fresh) and the most mobile people (P_PEOPLE). The
# log-likelihood ratio maps to [0, 1] by logistic(LLR; LLR_MIDPOINT, LLR_WIDTH): 0.5 at 4.5 nats (about four fresh
# networks in a row beyond the third), 0.95 at 7.4 (seven).
CROWD = 3
P_ROTATING, P_PEOPLE = 0.9, 0.3
LLR_MIDPOINT, LLR_WIDTH = 4.5, 1.0
_FRESH_LLR = math.log(P_ROTATING / P_PEOPLE)
_REUSED_LLR = math.log((1.0 - P_ROTATING) / (1.0 - P_PEOPLE))


def sequential(llr: float) -> float:
    """The sequential route's score: ``logistic(LLR; LLR_MIDPOINT, LLR_WIDTH)`` when the outcomes favour rotation, else 0.

    Without an outcome (no day past ``CROWD`` networks: nearly every account) the route says nothing, rather than the
    logistic's 0.011 at 0 — which, × the weight 4, lifted every legitimate account's score a little (dev seed 1: an
    early adopter from 0.498 to 0.506, into ``medium``).
    """
    return logistic(llr, LLR_MIDPOINT, LLR_WIDTH) if llr > 0 else 0.0


def rotation_llr(fresh: int, reused: int) -> float:
    """Log-likelihood ratio (nats) of ``fresh`` new and ``reused`` known networks, beyond a day's first ``CROWD``,
    for a rotating pool against the most mobile people (positive: rotation)."""
    return fresh * _FRESH_LLR + reused * _REUSED_LLR


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
    crowded: int = 0  # requests on a day that had already shown CROWD networks (the sequential test's outcomes)
    crowded_fresh: int = 0  # of them, from a network new that day


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
            new = network not in s.nets
            if new:
                s.fresh += 1
            if len(s.nets) >= CROWD:
                s.crowded += 1
                s.crowded_fresh += new
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
        by_day = _by_day(s)
        llr = rotation_llr(s.crowded_fresh, s.crowded - s.crowded_fresh)
        score = max(by_day, sequential(llr))
        fresh = s.fresh / s.repeat_day_requests if s.repeat_day_requests else 0.0
        per_day = s.with_network / max(1, s.days)
        install_hop = s.install_hops / s.install_requests if s.install_requests else 0.0
        detail = (f"{fresh:.0%} of requests after a day's first came from a network not used earlier that day; "
                  f"up to {s.peak_nets} /24 networks and {s.peak_asns} ASNs in one day over {s.days} days "
                  f"({per_day:.1f} requests a day)")
        if s.crowded:
            detail += (f"; beyond a day's first {CROWD} networks, {s.crowded_fresh} of {s.crowded} requests came from yet "
                       f"another (log-likelihood ratio {llr:+.1f} for a rotating pool against the most mobile people)")
        if s.install_requests:
            detail += f"; attested installs changed network on {install_hop:.0%} of their requests"
        return Evidence(self.name, score, detail,
                        numbers={"fresh_network_share": round(fresh, 3), "peak_networks_per_day": s.peak_nets,
                                 "peak_asns_per_day": s.peak_asns, "install_hop_share": round(install_hop, 3),
                                 "beyond_crowd": s.crowded, "beyond_crowd_fresh": s.crowded_fresh, "rotation_llr": round(llr, 2)})

    def pooled(self, account_ids: Iterable[str]) -> Evidence | None:
        """Several accounts' outcomes taken together, as one actor's (a cluster, ``Scanner._pooled``).

        The sequential test's outcomes add up across the members — eleven accounts that each took four or five
        fresh networks after their third are one pool rotating through fifty — and the per-day route enters at
        the members' median, as the detectors that are not counts do.
        """
        states = [s for s in (self.accounts.get(a) for a in account_ids) if s is not None and s.with_network]
        if not states:
            return None
        crowded = sum(s.crowded for s in states)
        fresh = sum(s.crowded_fresh for s in states)
        llr = rotation_llr(fresh, crowded - fresh)
        by_day = typical(_by_day(s) for s in states)
        score = max(by_day, sequential(llr))
        return Evidence(self.name, score,
                        f"beyond each day's first {CROWD} networks, {fresh} of {crowded} requests came from yet another "
                        f"(log-likelihood ratio {llr:+.1f}); the typical member's day-by-day rotation scores {by_day:.2f}",
                        numbers={"beyond_crowd": crowded, "beyond_crowd_fresh": fresh, "rotation_llr": round(llr, 2)})


def _by_day(s: _State) -> float:
    """The day-by-day route: a fresh network on most of a day's later requests, on many networks in one day — or one
    attested install doing the same."""
    fresh = s.fresh / s.repeat_day_requests if s.repeat_day_requests else 0.0
    # Midpoints: half of a day's later requests from networks new that day, 6 networks in one day. Both are
    # needed (a traveller has a fresh share but few networks; a big office has one network), and the
    # confidence grows with the requests that could have shown a change of network.
    score = logistic(fresh, 0.45, 0.08) * logistic(s.peak_nets, 6, 1.5) * confidence(s.repeat_day_requests, 6.0)
    if s.install_requests >= 5:
        # One attested install on many networks a day is the same behaviour, pinned to one device.
        install_hop = s.install_hops / s.install_requests
        score = max(score, logistic(install_hop, 0.45, 0.08) * confidence(s.install_requests, 6.0))
    return score
