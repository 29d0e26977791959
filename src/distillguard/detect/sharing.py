"""Reselling and key sharing: one key, many installs, networks, countries and timezones at once.

Counts are of distinct values (capped sets), plus two behaviours that need
several places at the same time: distinct installs or countries inside one
hour (concurrent use), and country changes between consecutive requests
less than an hour apart (impossible travel). Unrelated conversations
interleaved within an hour are counted by their opening messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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

__all__ = ["KeySharing"]

_CAP = 256


def _add(values: Distinct[str], value: Any) -> Distinct[str]:
    if value is None or value == "":
        return values
    return add_distinct(values, str(value), _CAP)


@dataclass(slots=True)  # one per account: no per-instance __dict__ (docs/detection.md, "Memory")
class _State:
    requests: int = 0
    # Distinct values as small tuples, then sets (base.add_distinct): ~1.3 KB less per light account.
    installs: Distinct[str] = ()
    prefixes: Distinct[str] = ()
    asns: Distinct[str] = ()
    countries: Distinct[str] = ()
    timezones: Distinct[str] = ()
    hour: int = -1
    hour_installs: Distinct[str] = ()
    hour_countries: Distinct[str] = ()
    hour_threads: Distinct[int] = ()  # hash() of the openings: only how many differ is read
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
        s.installs = _add(s.installs, install)
        s.prefixes = _add(s.prefixes, ip.rsplit(".", 1)[0] if "." in ip else ip[:19])
        s.asns = _add(s.asns, geo.get("asn"))
        s.countries = _add(s.countries, country)
        s.timezones = _add(s.timezones, attestation.get("tz"))
        hour = int(ts // 3600)
        if hour != s.hour:
            s.hour = hour
            s.hour_installs, s.hour_countries, s.hour_threads = (), (), ()
        s.hour_installs = _add(s.hour_installs, install)
        s.hour_countries = _add(s.hour_countries, attestation.get("tz") or country)
        messages = (event.get("request") or {}).get("messages") or []
        if messages and isinstance(messages[0], dict):
            # Python's string hash (this process's): distinct openings within one hour are only counted, and a
            # 64-bit collision among an hour's few hundred at most is negligible; a blake2b digest as text cost
            # ~1 µs and 65 bytes more per opening.
            s.hour_threads = add_distinct(s.hour_threads, hash(str(messages[0].get("content", ""))[:200]), _CAP)
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
