"""Indicators as STIX 2.1 bundles, written and read with the maintained ``stix2`` library.

Network indicators use STIX's own cyber-observable types (``ipv4-addr``,
``ipv6-addr``, ``autonomous-system``); the rest use custom observable types
with the ``x-distillguard-`` prefix, as STIX 2.1 §7.3 allows:

============================  ============================================================
pattern                       meaning
============================  ============================================================
``[ipv4-addr:value = 'A']``   a client address (``ISSUBSET 'A/24'`` for a network)
``[autonomous-system:number = N]``  an autonomous system several flagged accounts came from
``[x-distillguard-install:id_sha256 = 'H']``  SHA-256 of an attesting install's id
``[x-distillguard-prompt:sha256 = 'H']``      SHA-256 of a shared wrapper/system prompt
``[x-distillguard-canary:key_id = 'K']``      a canary key whose answers were harvested
============================  ============================================================

Reading accepts any valid STIX 2.1 bundle: comparisons of those kinds joined
by ``OR`` are imported, anything else (other object types, ``AND``, negation,
other pattern languages) is skipped and counted, never guessed at.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import stix2
import stix2.exceptions
from stix2 import patterns as p
from stix2.pattern_visitor import create_pattern_object

from distillguard.exceptions import InputError
from distillguard.indicators.model import Indicator, IndicatorKind

__all__ = ["ParsedBundle", "build_bundle", "parse_bundle", "pattern_for"]

_CUSTOM = {"install_sha256": ("x-distillguard-install", "id_sha256"), "prompt_sha256": ("x-distillguard-prompt", "sha256"),
           "canary_key": ("x-distillguard-canary", "key_id")}
_BY_PATH: dict[tuple[str, str], IndicatorKind] = {path: kind for kind, path in _CUSTOM.items()}  # type: ignore[misc]
_NAMES = {"ip": "client address", "cidr": "client network", "asn": "autonomous system", "install_sha256": "attesting install (SHA-256 of its id)",
          "prompt_sha256": "shared system prompt (SHA-256)", "canary_key": "harvested canary key"}


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def pattern_for(indicator: Indicator) -> str:
    """The STIX pattern of one indicator."""
    if indicator.kind in ("ip", "cidr"):
        net = ipaddress.ip_network(indicator.value, strict=False)
        kind = "ipv4-addr" if net.version == 4 else "ipv6-addr"
        if indicator.kind == "ip" or net.num_addresses == 1:
            return f"[{kind}:value = {_quoted(str(net.network_address))}]"
        return f"[{kind}:value ISSUBSET {_quoted(str(net))}]"
    if indicator.kind == "asn":
        return f"[autonomous-system:number = {int(indicator.value)}]"
    object_type, prop = _CUSTOM[indicator.kind]
    return f"[{object_type}:{prop} = {_quoted(indicator.value)}]"


def build_bundle(indicators: Iterable[Indicator], *, producer: str, valid_from: dt.datetime | None = None) -> stix2.Bundle:
    """A bundle of one ``identity`` (the producer) and one ``indicator`` per observable."""
    now = dt.datetime.now(dt.UTC)
    identity = stix2.Identity(name=producer, identity_class="organization",
                              description="an LLM API provider running distillguard (distillation and reselling defence)")
    objects: list[Any] = [identity]
    for ind in indicators:
        seen = f"; first seen {ind.first_seen}" if ind.first_seen else ""
        objects.append(stix2.Indicator(
            name=f"distillguard: {_NAMES[ind.kind]} of flagged API accounts",
            description=f"{_NAMES[ind.kind]} seen from {ind.accounts} account(s) flagged for distillation or reselling{seen}",
            indicator_types=["malicious-activity"], pattern=pattern_for(ind), pattern_type="stix",
            valid_from=valid_from or now, created_by_ref=identity.id, labels=["distillguard", ind.kind],
        ))
    return stix2.Bundle(objects=objects, allow_custom=True)


@dataclass
class ParsedBundle:
    indicators: list[Indicator] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # why → how many comparisons or objects
    producer: str | None = None

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


def _leaf(expr: Any, out: ParsedBundle, source: str | None, stix_id: str) -> None:
    """Collect the supported comparisons of one pattern, walking its ``OR``s."""
    if isinstance(expr, (p.OrObservationExpression, p.OrBooleanExpression)):
        for operand in expr.operands:
            _leaf(operand, out, source, stix_id)
    elif isinstance(expr, p.ObservationExpression):
        _leaf(expr.operand, out, source, stix_id)
    elif isinstance(expr, p.ParentheticalExpression):
        _leaf(expr.expression, out, source, stix_id)
    elif isinstance(expr, p._ComparisonExpression) and not expr.negated:
        object_type = expr.lhs.object_type_name
        prop = ".".join(str(getattr(c, "property_name", c)) for c in expr.lhs.property_path)
        value = expr.rhs.value
        kind: IndicatorKind | None = None
        if object_type in ("ipv4-addr", "ipv6-addr") and prop == "value" and isinstance(value, str):
            try:
                net = ipaddress.ip_network(value, strict=False)
            except ValueError:
                out.skip(f"{object_type}:value is not an address: {value[:60]!r}")
                return
            if isinstance(expr, p.EqualityComparisonExpression):
                kind = "ip" if net.num_addresses == 1 else "cidr"
            elif isinstance(expr, p.IsSubsetComparisonExpression):
                kind = "cidr"
            value = str(net.network_address) if kind == "ip" else str(net)
        elif object_type == "autonomous-system" and prop == "number" and isinstance(value, int) \
                and isinstance(expr, p.EqualityComparisonExpression):
            kind, value = "asn", str(value)
        elif (object_type, prop) in _BY_PATH and isinstance(value, str) and isinstance(expr, p.EqualityComparisonExpression):
            kind = _BY_PATH[(object_type, prop)]
        if kind is None:
            out.skip(f"unsupported comparison {object_type}:{prop} {expr.operator}")
            return
        out.indicators.append(Indicator(kind, value, source=source, stix_id=stix_id))
    else:
        out.skip(f"unsupported pattern part ({type(expr).__name__}: AND, FOLLOWEDBY, qualifiers and negation are not imported)")


def parse_bundle(data: Any, where: str) -> ParsedBundle:
    """Validate a STIX 2.1 bundle (already JSON-decoded) and extract its indicators.

    ``where`` names the input in errors, which point at the field:
    ``bundle.json: objects[3].pattern: …``. Raises :class:`InputError`.
    """
    if not isinstance(data, dict) or data.get("type") != "bundle":
        raise InputError(f"{where}: not a STIX 2.1 bundle (expected a JSON object with \"type\": \"bundle\")")
    objects = data.get("objects", [])
    if not isinstance(objects, list):
        raise InputError(f"{where}: objects: expected a list of STIX objects")
    out = ParsedBundle()
    producers: dict[str, str] = {}
    parsed: list[tuple[int, Any]] = []
    for i, raw in enumerate(objects):
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise InputError(f"{where}: objects[{i}]: expected a STIX object with a \"type\"")
        if raw.get("spec_version") not in (None, "2.1"):
            raise InputError(f"{where}: objects[{i}].spec_version: {raw.get('spec_version')!r}; only STIX 2.1 is read")
        try:
            obj = stix2.parse(raw, allow_custom=True, version="2.1")
        except (stix2.exceptions.STIXError, ValueError, TypeError) as exc:
            raise InputError(f"{where}: objects[{i}] ({raw.get('type')} {raw.get('id', '')}): {exc}".replace("\n", " ")) from None
        if raw["type"] == "identity":
            producers[str(obj.id)] = str(obj.get("name", ""))
        parsed.append((i, obj))
    for i, obj in parsed:
        if obj.get("type") == "identity":
            continue
        if obj.get("type") != "indicator":
            out.skip(f"{obj.get('type')} objects")
            continue
        if obj.get("pattern_type") != "stix":
            out.skip(f"indicators in pattern language {obj.get('pattern_type')!r}")
            continue
        if obj.get("revoked"):
            out.skip("revoked indicators")
            continue
        valid_until = obj.get("valid_until")
        if valid_until is not None and valid_until < dt.datetime.now(dt.UTC):
            out.skip("expired indicators (valid_until in the past)")
            continue
        try:
            expr = create_pattern_object(obj.pattern, version="2.1")
        except Exception as exc:  # the pattern grammar's own errors have no common base class
            raise InputError(f"{where}: objects[{i}].pattern: {exc}".replace("\n", " ")) from None
        source = producers.get(str(obj.get("created_by_ref", "")))
        _leaf(expr, out, source, str(obj.id))
    if len(set(producers.values())) == 1:
        out.producer = next(iter(producers.values()))
    return out
