"""The gateway's one call per request: every client and network signal, and the region rule.

``collect`` reads only memory: install keys are cached at start and on
enrollment, GeoIP lookups are memoised, the nonce cache is in memory.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from distillguard.config import Settings
from distillguard.signals.attestation import AttestationVerifier, load_public_key
from distillguard.signals.consistency import consistency_signals, countries_for_timezone
from distillguard.signals.network import GeoLookup, client_ip, header_fingerprint, protect_ip

__all__ = ["EnrollmentError", "SignalCollector", "SignalResult"]

log = logging.getLogger("distillguard.signals")


class EnrollmentError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class SignalResult:
    client: dict[str, Any]
    attestation: dict[str, Any] | None
    region_denied: str | None = None
    signals: list[dict[str, Any]] = field(default_factory=list)


class SignalCollector:
    def __init__(
        self,
        settings: Settings,
        install_keys: Callable[[], dict[str, str]] | dict[str, str] | None = None,
        enroll_store: Callable[..., Any] | None = None,
    ) -> None:
        network = settings.network
        self.settings = settings
        self.trusted = [ipaddress.ip_network(cidr, strict=False) for cidr in network.trusted_proxies]
        self.geo = GeoLookup(network.geoip_country_db, network.geoip_asn_db, network.hosting_asns)
        self.verifier = AttestationVerifier(install_keys, clock_skew_s=settings.attestation.clock_skew_s)
        self.enroll_store = enroll_store
        self.ip_mode = settings.privacy.ip_mode
        self.hash_key = settings.privacy.hash_key.encode()
        self.allow = {c.upper() for c in network.allow_countries}
        self.deny = {c.upper() for c in network.deny_countries}
        self.required = set(settings.attestation.required_for_accounts)
        self.require_all = settings.attestation.require_all

    def requires_attestation(self, account_id: str | None) -> bool:
        return self.require_all or (account_id is not None and account_id in self.required)

    def collect(self, method: str, path_qs: str, headers: list[tuple[bytes, bytes]], peer_ip: str | None, body: bytes,
                *, key_id: str | None = None, account_id: str | None = None) -> SignalResult:
        names: list[str] = []
        decoded: list[tuple[str, str]] = []
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1")
            names.append(name)
            decoded.append((name, raw_value.decode("latin-1")))
        header_map = {n.lower(): v for n, v in decoded}
        ip = client_ip(peer_ip, header_map, self.trusted)
        geo = self.geo.lookup(ip)
        scheme = header_map.get("x-forwarded-proto", "http") if self.trusted else "http"
        url = f"{scheme}://{header_map.get('host', 'localhost')}{path_qs}"
        attestation = self.verifier.verify(method, url, decoded, body)
        signals = consistency_signals(attestation, geo, header_map.get("accept-language"))
        if attestation is None and self.requires_attestation(account_id):
            signals.append({"name": "attestation_required", "evidence": f"account {account_id} must attest, the request carried none"})
        region = self._region(geo.get("country"), attestation)
        if region is not None and self.settings.network.region_action == "flag":
            signals.append({"name": "region_flagged", "evidence": region})
            region = None
        client = {"ip": protect_ip(ip, self.ip_mode, self.hash_key), "user_agent": header_map.get("user-agent"),
                  "header_fp": header_fingerprint(names), "geo": dict(geo)}
        return SignalResult(client, attestation, region, signals)

    def _region(self, ip_country: str | None, attestation: dict[str, Any] | None) -> str | None:
        if not self.allow and not self.deny:
            return None
        source = self.settings.network.region_source
        candidates: set[str] = set()
        if source in ("ip", "both") and ip_country:
            candidates.add(ip_country.upper())
        if source in ("timezone", "both") and attestation and attestation.get("status") == "valid":
            candidates.update(countries_for_timezone(attestation.get("tz")))
        for country in sorted(candidates):
            if country in self.deny or (self.allow and country not in self.allow):
                return f"This service is not offered in your region ({country})."
        return None

    def enroll(self, key_id: str, account_id: str, body: bytes) -> dict[str, Any]:
        """Register an install's public key for the calling API key (POST /v1/distillguard/enroll)."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise EnrollmentError(400, "enrollment body must be JSON: {\"install_id\": ..., \"public_key\": ...}") from None
        install_id, public_key = (data or {}).get("install_id"), (data or {}).get("public_key")
        if not isinstance(install_id, str) or not 8 <= len(install_id) <= 128 or not isinstance(public_key, str):
            raise EnrollmentError(422, "install_id (8–128 characters) and public_key (base64url Ed25519) are required")
        try:
            load_public_key(public_key)
            base64.urlsafe_b64decode(public_key + "=" * (-len(public_key) % 4))
        except (ValueError, TypeError):
            raise EnrollmentError(422, "public_key is not a base64url-encoded raw Ed25519 public key") from None
        if self.verifier.has_key(install_id):
            if self.verifier.raw_keys.get(install_id) == public_key:
                return {"install_id": install_id, "key_id": key_id, "status": "already_enrolled"}
            raise EnrollmentError(409, f"install {install_id} is already enrolled with another key")
        if self.enroll_store is not None:
            try:
                self.enroll_store(key_id, install_id, public_key, account_id=account_id)
            except Exception as exc:
                raise EnrollmentError(409, str(exc)) from None
        self.verifier.add_key(install_id, public_key)
        log.info("enrolled install %s for key %s", install_id, key_id)
        return {"install_id": install_id, "key_id": key_id, "status": "enrolled"}
