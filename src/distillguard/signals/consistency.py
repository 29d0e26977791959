"""Consistency checks between what the client attests and what the network shows.

Timezones map to countries through the IANA tables shipped in ``tzdata``, in
two ways that answer different questions:

- :func:`countries_for_timezone` — every country a zone is used in
  (``zone1970.tab`` lists several for many zones: ``Europe/Berlin`` is also
  the time of DK, NO, SE and SJ). Right for the tz-vs-IP check, where any of
  them is consistent.
- :func:`primary_country` — the one country ``zone.tab`` gives the zone
  (``Europe/Berlin`` → DE). Right for region rules, where the set above would
  refuse a Berlin user because Norway shares the zone.

Link names (``Asia/Calcutta``, ``US/Eastern``) resolve through the links in
``tzdata.zi``. Each check that fails becomes a named signal with its evidence;
none of them blocks on its own.
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache
from typing import Any

__all__ = ["countries_for_timezone", "consistency_signals", "primary_country"]


def _tzdata_text(name: str) -> str:
    try:
        return importlib.resources.files("tzdata").joinpath("zoneinfo", name).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):
        return ""


def _tab_rows(name: str) -> list[tuple[list[str], str]]:
    """(country codes, zone) per row of a ``.tab`` file."""
    rows: list[tuple[list[str], str]] = []
    for line in _tzdata_text(name).splitlines():
        parts = line.split("\t")
        if line.startswith("#") or len(parts) < 3:
            continue
        rows.append((parts[0].split(","), parts[2]))
    return rows


@lru_cache(maxsize=1)
def _links() -> dict[str, str]:
    """Link name → zone, from the ``L <target> <link>`` lines of ``tzdata.zi``."""
    links: dict[str, str] = {}
    for line in _tzdata_text("tzdata.zi").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "L":
            links[parts[2]] = parts[1]
    return links


@lru_cache(maxsize=1)
def _all_countries() -> dict[str, frozenset[str]]:
    table: dict[str, set[str]] = {}
    for name in ("zone1970.tab", "zone.tab"):
        for codes, zone in _tab_rows(name):
            table.setdefault(zone, set()).update(codes)
    return {zone: frozenset(codes) for zone, codes in table.items()}


@lru_cache(maxsize=1)
def _primary() -> dict[str, str]:
    return {zone: codes[0] for codes, zone in _tab_rows("zone.tab")}


def countries_for_timezone(tz: str | None) -> frozenset[str]:
    """Every country that uses ``tz`` (for a link name: its own and its target zone's)."""
    table = _all_countries()
    own = table.get(tz or "", frozenset())
    target = _links().get(tz or "")
    return own | table.get(target, frozenset()) if target else own


def primary_country(tz: str | None) -> str | None:
    """The single country ``zone.tab`` assigns to ``tz`` (through its link target if needed); None if none."""
    primary = _primary()
    if not tz:
        return None
    if tz in primary:
        return primary[tz]
    target = _links().get(tz)
    return primary.get(target) if target else None


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
