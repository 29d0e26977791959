"""Reselling and key sharing: one key, many installs, networks, countries and timezones at once.

Counts are of distinct values (capped sets), plus two behaviours that need
several places at the same time: distinct installs or countries inside one
hour (concurrent use), and country changes between consecutive requests
less than an hour apart (impossible travel). Unrelated conversations
interleaved within an hour are counted by their opening messages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distillguard.detect.base import AccountStates, Detector, Evidence, confidence, event_time, logistic

__all__ = ["KeySharing"]

_CAP = 256


def _add(values: set[str], value: Any) -> None:
    if value is not None and value != "" and len(values) < _CAP:
        values.add(str(value))


@dataclass
class _State:
    requests: int = 0
    installs: set[str] = field(default_factory=set)
    prefixes: set[str] = field(default_factory=set)
    asns: set[str] = field(default_factory=set)
    countries: set[str] = field(default_factory=set)
    timezones: set[str] = field(default_factory=set)
    hour: int = -1
    hour_installs: set[str] = field(default_factory=set)
    hour_countries: set[str] = field(default_factory=set)
    hour_threads: set[str] = field(default_factory=set)
    peak_installs: int = 0
    peak_countries: int = 0
    peak_threads: int = 0
    last_country: str | None = None
    last_ts: float = 0.0
    travel: int = 0


class KeySharing(Detector):
    name = "key_sharing"
    family = "reseller"

    def __init__(self) -> None:
        self.accounts: AccountStates[_State] = AccountStates(_State)

    def update(self, event: Mapping[str, Any]) -> None:
        s = self.accounts.of(event)
        if s is None:
            return
        ts = event_time(event)
        s.requests += 1
        client = event.get("client") or {}
        geo = client.get("geo") or {}
        attestation = event.get("attestation") or {}
        install = attestation.get("install_id")
        ip = client.get("ip") or ""
        country = geo.get("country")
        _add(s.installs, install)
        _add(s.prefixes, ip.rsplit(".", 1)[0] if "." in ip else ip[:19])
        _add(s.asns, geo.get("asn"))
        _add(s.countries, country)
        _add(s.timezones, attestation.get("tz"))
        hour = int(ts // 3600)
        if hour != s.hour:
            s.hour = hour
            s.hour_installs, s.hour_countries, s.hour_threads = set(), set(), set()
        _add(s.hour_installs, install)
        _add(s.hour_countries, attestation.get("tz") or country)
        messages = (event.get("request") or {}).get("messages") or []
        if messages and isinstance(messages[0], dict):
            opener = str(messages[0].get("content", ""))[:200]
            _add(s.hour_threads, hashlib.blake2b(opener.encode(), digest_size=8).hexdigest())
        s.peak_installs = max(s.peak_installs, len(s.hour_installs))
        s.peak_countries = max(s.peak_countries, len(s.hour_countries))
        s.peak_threads = max(s.peak_threads, len(s.hour_threads))
        if country and s.last_country and country != s.last_country and abs(ts - s.last_ts) < 3600:
            s.travel += 1
        if country:
            s.last_country, s.last_ts = country, ts

    def evidence(self, account_id: str) -> Evidence | None:
        s = self.accounts.get(account_id)
        if s is None or s.requests == 0:
            return None
        places = max(len(s.timezones), len(s.countries))
        # Midpoints: 4 installs, 4 countries/timezones, 3 concurrent installs or places in one hour, 5 interleaved threads.
        spread = max(logistic(len(s.installs), 4, 1.0), logistic(places, 4, 1.0))
        concurrent = max(logistic(s.peak_installs, 3, 0.7), logistic(s.peak_countries, 3, 0.7))
        interleaved = logistic(s.peak_threads, 5, 1.2)
        # Spread across installs and places is the defining trait; simultaneity and interleaving corroborate it.
        score = (0.6 * spread + 0.25 * concurrent + 0.15 * interleaved) * confidence(s.requests, 20.0)
        return Evidence(
            self.name, score,
            f"{len(s.installs)} installs, {len(s.prefixes)} /24 networks, {len(s.asns)} ASNs, {len(s.countries)} countries, "
            f"{len(s.timezones)} timezones; up to {s.peak_installs} installs and {s.peak_countries} places in one hour, "
            f"{s.peak_threads} unrelated conversations interleaved, {s.travel} impossible-travel hops",
            family="reseller",
            numbers={"installs": len(s.installs), "networks": len(s.prefixes), "asns": len(s.asns), "countries": len(s.countries),
                     "timezones": len(s.timezones), "peak_installs_per_hour": s.peak_installs, "peak_places_per_hour": s.peak_countries,
                     "peak_threads_per_hour": s.peak_threads, "impossible_travel": s.travel},
        )
