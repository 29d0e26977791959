"""Consistency of what a client says about itself with where its requests come from.

The gateway records three checks on valid attestations (docs/signals.md) as
the event's ``signals``: ``tz_country_mismatch`` (the attested timezone is not
used in the IP's country), ``language_mismatch`` (attested locale versus
``Accept-Language``) and ``undeclared_hosting_network`` (no proxy declared,
data-centre address). Logs that do not carry ``signals`` (older exports,
simulators) get the two checks that need only the event recomputed here from
``attestation`` and ``client.geo``.

One mismatch means little — people travel, use VPNs and cloud desktops — so
the score is about the *share* of an account's attested requests that are
inconsistent, with a confidence that needs many of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from distillguard.detect.base import Detector, Evidence, confidence, logistic
from distillguard.signals.consistency import countries_for_timezone

__all__ = ["CHECKS", "Consistency", "event_checks"]

CHECKS = ("tz_country_mismatch", "language_mismatch", "undeclared_hosting_network")


@lru_cache(maxsize=4096)
def _tz_countries(tz: str) -> frozenset[str]:
    return countries_for_timezone(tz)


def event_checks(event: Mapping[str, Any]) -> tuple[bool, set[str]]:
    """(whether the event has a valid attestation to check, the names of the checks it failed)."""
    attestation = event.get("attestation") or {}
    if attestation.get("status") != "valid":
        return False, set()
    recorded = event.get("signals")
    if isinstance(recorded, list):
        return True, {str(s["name"]) for s in recorded if isinstance(s, dict) and s.get("name") in CHECKS}
    geo = (event.get("client") or {}).get("geo") or {}
    failed: set[str] = set()
    country, tz = geo.get("country"), attestation.get("tz")
    if country and isinstance(tz, str) and tz:
        expected = _tz_countries(tz)
        if expected and country not in expected:
            failed.add("tz_country_mismatch")
    if attestation.get("proxy") is False and geo.get("hosting"):
        failed.add("undeclared_hosting_network")
    return True, failed


@dataclass(slots=True)  # one per account: no per-instance __dict__ (docs/detection.md, "Memory")
class _State:
    checked: int = 0
    inconsistent: int = 0
    by_check: dict[str, int] = field(default_factory=dict)


class Consistency(Detector):
    name = "consistency"

    def __init__(self) -> None:
        self.accounts: dict[str, _State] = {}

    def update(self, event: Mapping[str, Any]) -> None:
        account = event.get("account_id")
        if account is None:
            return
        checked, failed = event_checks(event)
        if not checked:
            return
        s = self.accounts.get(account)
        if s is None:
            s = self.accounts[account] = _State()
        s.checked += 1
        if failed:
            s.inconsistent += 1
            for name in sorted(failed):  # a set of str: its order changes with the process's hash seed, the report must not
                s.by_check[name] = s.by_check.get(name, 0) + 1

    def evidence(self, account_id: str) -> Evidence | None:
        s = self.accounts.get(account_id)
        if s is None or s.checked == 0:
            return None
        share = s.inconsistent / s.checked
        # Midpoint 40 %: a VPN now and then stays under it; a client whose stated place is mostly not where its
        # requests come from does not.
        score = logistic(share, 0.4, 0.1) * confidence(s.checked, 15.0)
        parts = ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in sorted(s.by_check.items(), key=lambda kv: (-kv[1], kv[0])))
        return Evidence(self.name, score,
                        f"{s.inconsistent} of {s.checked} attested requests inconsistent with their network ({share:.0%})"
                        + (f": {parts}" if parts else ""),
                        numbers={"checked": s.checked, "inconsistent": s.inconsistent, "share": round(share, 3),
                                 **{name: count for name, count in s.by_check.items()}})
