"""Consistency checks between what the client attests and what the network shows.

Timezone vs IP country uses the IANA tables shipped in ``tzdata``
(``zone1970.tab`` lists the countries each zone is used in). Each check that
fails becomes a named signal with its evidence; none of them blocks on its own.
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache
from typing import Any

__all__ = ["countries_for_timezone", "consistency_signals"]


@lru_cache(maxsize=1)
def _zone_table() -> dict[str, frozenset[str]]:
    table: dict[str, set[str]] = {}
    for name in ("zone1970.tab", "zone.tab"):
        try:
            text = importlib.resources.files("tzdata").joinpath("zoneinfo", name).read_text(encoding="utf-8")
        except (FileNotFoundError, ModuleNotFoundError):
            continue
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) >= 3:
                table.setdefault(parts[2], set()).update(parts[0].split(","))
    aliases = {"Asia/Calcutta": "Asia/Kolkata", "Europe/Kiev": "Europe/Kyiv", "US/Eastern": "America/New_York", "US/Pacific": "America/Los_Angeles"}
    for alias, target in aliases.items():
        if target in table:
            table.setdefault(alias, set()).update(table[target])
    return {zone: frozenset(codes) for zone, codes in table.items()}


def countries_for_timezone(tz: str | None) -> frozenset[str]:
    return _zone_table().get(tz or "", frozenset())


def consistency_signals(attestation: dict[str, Any] | None, geo: dict[str, Any], accept_language: str | None) -> list[dict[str, Any]]:
    signals: list[dict[str, Any]] = []
    if not attestation or attestation.get("status") != "valid":
        return signals
    country, tz = geo.get("country"), attestation.get("tz")
    if country and tz:
        expected = countries_for_timezone(tz)
        if expected and country not in expected:
            signals.append({"name": "tz_country_mismatch", "evidence": f"attested timezone {tz} is used in {sorted(expected)[:5]}, IP is in {country}"})
    locale = attestation.get("locale")
    if locale and accept_language:
        lang = locale.replace("-", "_").split("_")[0].lower()
        offered = [part.split(";")[0].strip().split("-")[0].lower() for part in accept_language.split(",") if part.strip()]
        if offered and offered[0] != "*" and lang not in offered:
            signals.append({"name": "language_mismatch", "evidence": f"attested locale {locale}, Accept-Language {accept_language[:40]}"})
    if attestation.get("proxy") is False and geo.get("hosting"):
        signals.append({"name": "undeclared_hosting_network", "evidence": f"no proxy declared, but the request comes from hosting ASN {geo.get('asn')}"})
    return signals
