"""Which observables of flagged accounts are worth sharing: the export side of ``indicators``.

A value is exported only when it was seen from flagged accounts and from no
other account in the events read, so an office's shared egress address or a
public cloud's autonomous system that benign customers also use is never
handed to another provider as an indicator. Autonomous systems and system
prompts must also be shared by at least two flagged accounts (infrastructure
and wrappers of a cluster, not one account's ISP or app).

Privacy (docs/signals.md): indicators are made from what the event log kept.
Under ``privacy.ip_mode: truncate`` addresses are ``/24`` (``/48``) networks
and are exported as such; under ``hash`` they are keyed hashes that no one
else can match, and are not exported. System prompts are exported only as
SHA-256 and only when the log kept their text (``prompt_mode: keep``);
install ids only as SHA-256.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from distillguard.indicators.model import Indicator, IndicatorKind, install_digest, prompt_digest

__all__ = ["Collected", "collect_indicators"]

MIN_ACCOUNTS: dict[IndicatorKind, int] = {"ip": 1, "cidr": 1, "asn": 2, "install_sha256": 1, "prompt_sha256": 2}


@dataclass
class Collected:
    indicators: list[Indicator] = field(default_factory=list)
    withheld: dict[str, int] = field(default_factory=dict)  # why → how many values


def _address(value: str) -> tuple[IndicatorKind, str] | None:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None  # a keyed hash ("hmac:…", privacy.ip_mode: hash): nobody else can match it
    return ("ip", str(net.network_address)) if net.num_addresses == 1 else ("cidr", str(net))


def _observables(event: Mapping[str, Any]) -> Iterable[tuple[IndicatorKind, str] | str]:
    """(kind, value) pairs of one event, or a string saying why a value is withheld."""
    client = event.get("client") or {}
    ip = client.get("ip")
    if isinstance(ip, str) and ip:
        found = _address(ip)
        yield found if found is not None else "client addresses stored as keyed hashes (privacy.ip_mode: hash)"
    asn = (client.get("geo") or {}).get("asn")
    if isinstance(asn, int):
        yield "asn", str(asn)
    install = (event.get("attestation") or {}).get("install_id")
    if isinstance(install, str) and install:
        yield "install_sha256", install_digest(install)
    system = (event.get("request") or {}).get("system")
    if isinstance(system, str) and system.strip():
        if system.startswith("hmac-sha256:"):  # gateway/requests.py redact_text
            yield "system prompts stored hashed or dropped (privacy.prompt_mode)"
        else:
            yield "prompt_sha256", prompt_digest(system)


def collect_indicators(events: Iterable[Mapping[str, Any]], flagged: Collection[str]) -> Collected:
    """Indicators from the events of ``flagged`` accounts that no other account's events share."""
    seen_by: dict[tuple[IndicatorKind, str], set[str]] = defaultdict(set)
    first_seen: dict[tuple[IndicatorKind, str], str] = {}
    unflagged: set[tuple[IndicatorKind, str]] = set()
    withheld: dict[str, int] = {}
    for event in events:
        account = event.get("account_id")
        if not isinstance(account, str):
            continue
        is_flagged = account in flagged
        for item in _observables(event):
            if isinstance(item, str):
                if is_flagged:
                    withheld[item] = withheld.get(item, 0) + 1
                continue
            if not is_flagged:
                unflagged.add(item)
                continue
            seen_by[item].add(account)
            ts = event.get("ts")
            if isinstance(ts, str) and (item not in first_seen or ts < first_seen[item]):
                first_seen[item] = ts
    out = Collected(withheld=withheld)
    for item, accounts in sorted(seen_by.items(), key=lambda kv: (kv[0][0], -len(kv[1]), kv[0][1])):
        kind, value = item
        if item in unflagged:
            why = f"{kind} values also seen from accounts that are not flagged"
            out.withheld[why] = out.withheld.get(why, 0) + 1
        elif len(accounts) < MIN_ACCOUNTS[kind]:
            why = f"{kind} values seen from fewer than {MIN_ACCOUNTS[kind]} flagged accounts"
            out.withheld[why] = out.withheld.get(why, 0) + 1
        else:
            out.indicators.append(Indicator(kind, value, accounts=len(accounts), first_seen=first_seen.get(item)))
    return out
