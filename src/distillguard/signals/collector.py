"""The gateway's one call per request: every client and network signal, and the region rule.

``collect`` reads only memory: install keys are cached at start, on
enrollment and by a background look-up after a miss, GeoIP lookups are
memoised, the nonce cache is in memory (with ``state: redis`` the nonce is
checked in Redis instead, in the request's admission: :attr:`SignalResult.nonce`). ``enroll`` (run in a thread by the
gateway) may use the database.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature

from distillguard.config import Settings
from distillguard.exceptions import EnrollmentError, UsageError
from distillguard.signals.attestation import OTHER_ACCOUNT, AttestationVerifier
from distillguard.signals.consistency import consistency_signals, primary_country
from distillguard.signals.installs import (
    INSTALL_ID_RULE,
    INSTALL_LIMIT,
    EnrolledInstall,
    InstallSource,
    load_public_key,
    valid_install_id,
)
from distillguard.signals.network import (
    GeoLookup,
    client_ip,
    forwarded_scheme,
    header_fingerprint,
    protect_ip,
)
from distillguard.signals.protocol import SIGNALS_HEADER, b64url_decode, enrollment_message

__all__ = ["EnrollmentError", "SignalCollector", "SignalResult"]

log = logging.getLogger("distillguard.signals")
# A request carrying none of these has no attestation (AttestationVerifier.verify answers None for it).
_ATTESTATION_HEADERS = frozenset(("signature-input", "signature", SIGNALS_HEADER.lower()))


@dataclass
class SignalResult:
    client: dict[str, Any]
    attestation: dict[str, Any] | None
    region_denied: str | None = None
    signals: list[dict[str, Any]] = field(default_factory=list)
    nonce: str | None = None  # with shared nonces: the valid attestation's nonce, checked in the request's admission
    accept_language: str | None = None


class SignalCollector:
    def __init__(
        self,
        settings: Settings,
        install_keys: InstallSource | Mapping[str, str] | None = None,
        enroll_store: Callable[..., Any] | None = None,
        *,
        shared_nonces: bool = False,
    ) -> None:
        network = settings.network
        self.settings = settings
        self.trusted = [ipaddress.ip_network(cidr, strict=False) for cidr in network.trusted_proxies]
        self.verifier = AttestationVerifier(install_keys, clock_skew_s=settings.attestation.clock_skew_s,
                                            nonce_ttl_s=settings.attestation.nonce_ttl_s, defer_nonces=shared_nonces)
        self.nonce_ttl_ms = int(self.verifier.nonces.ttl_s * 1000)
        self.geo = GeoLookup(network.geoip_country_db, network.geoip_asn_db, network.hosting_asns)
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
        header_map: dict[str, str] = {}
        attests = False
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1")
            names.append(name)
            lower = name.lower()
            header_map[lower] = raw_value.decode("latin-1")
            if lower in _ATTESTATION_HEADERS:
                attests = True
        ip = client_ip(peer_ip, header_map, self.trusted)
        geo = self.geo.lookup(ip)
        verifier = self.verifier
        verifier.clear_deferred_nonce()  # a call, not `= None`: compiled, a None assigned here would be trusted below
        attestation = None
        if attests:  # else the verifier answers None (no attestation) without anything to look at: skip its work
            scheme = forwarded_scheme(peer_ip, header_map, self.trusted)
            url = f"{scheme}://{header_map.get('host', 'localhost')}{path_qs}"
            decoded = [(raw_name.decode("latin-1"), raw_value.decode("latin-1")) for raw_name, raw_value in headers]
            attestation = verifier.verify(method, url, decoded, body, account_id=account_id)
        accept_language = header_map.get("accept-language")
        signals = consistency_signals(attestation, geo, accept_language)
        if attestation is None and self.requires_attestation(account_id):
            signals.append({"name": "attestation_required", "evidence": f"account {account_id} must attest, the request carried none"})
        region = self._region(geo.get("country"), attestation)
        if region is not None and self.settings.network.region_action == "flag":
            signals.append({"name": "region_flagged", "evidence": region})
            region = None
        client = {"ip": protect_ip(ip, self.ip_mode, self.hash_key), "user_agent": header_map.get("user-agent"),
                  "header_fp": header_fingerprint(names), "geo": dict(geo)}
        return SignalResult(client, attestation, region, signals, verifier.deferred_nonce, accept_language)

    def mark_replayed(self, result: SignalResult) -> None:
        """The shared nonce cache says ``result``'s attestation was seen before: it is ``replayed``, not ``valid``."""
        attestation = result.attestation
        if attestation is None:
            return
        self.verifier.mark_replayed(attestation)
        result.nonce = None
        kept = [s for s in result.signals if s["name"] in ("attestation_required", "region_flagged")]
        result.signals = consistency_signals(attestation, result.client["geo"], result.accept_language) + kept

    def _region(self, ip_country: str | None, attestation: dict[str, Any] | None) -> str | None:
        if not self.allow and not self.deny:
            return None
        source = self.settings.network.region_source
        candidates: set[str] = set()
        if source in ("ip", "both") and ip_country:
            candidates.add(ip_country.upper())
        if source in ("timezone", "both") and attestation and attestation.get("status") == "valid":
            # The zone's own country, not every country sharing its rules (Berlin is DE, not also NO).
            tz_country = primary_country(attestation.get("tz"))
            if tz_country:
                candidates.add(tz_country)
        for country in sorted(candidates):
            if country in self.deny or (self.allow and country not in self.allow):
                return f"This service is not offered in your region ({country})."
        return None

    def enroll(self, key_id: str, account_id: str, body: bytes, *, api_key_sha256: str) -> dict[str, Any]:
        """Register an install's public key for the calling API key's account (POST /v1/distillguard/enroll).

        The body must carry a proof of possession: a signature by the key being
        enrolled (docs/attestation.md), so nobody can enroll a public key whose
        private key they do not hold. An install belongs to one account; keys of
        that account may enroll it again (idempotent), others get 409.
        """
        install_id, public_key, created, proof = self._parse_enrollment(body)
        self._check_proof(install_id, public_key, created, proof, api_key_sha256)
        known = self.verifier.installs.peek(install_id)
        if known is not None:
            return self._already_enrolled(known, install_id, public_key, key_id, account_id)
        created_now = self._store_enrollment(key_id, install_id, public_key, account_id)
        self.verifier.add_key(install_id, public_key, account_id)
        log.info("%s install %s for key %s (account %s)", "enrolled" if created_now else "found enrolled", install_id, key_id, account_id)
        return {"install_id": install_id, "key_id": key_id, "status": "enrolled" if created_now else "already_enrolled"}

    @staticmethod
    def _parse_enrollment(body: bytes) -> tuple[str, str, int, str]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise EnrollmentError(400, "enrollment body must be JSON: {\"install_id\", \"public_key\", \"created\", \"proof\"}") from None
        data = data if isinstance(data, dict) else {}
        install_id, public_key = data.get("install_id"), data.get("public_key")
        if not isinstance(public_key, str):
            raise EnrollmentError(422, "install_id and public_key (base64url Ed25519) are required")
        if not valid_install_id(install_id):
            raise EnrollmentError(422, f"install_id must be {INSTALL_ID_RULE}")
        try:
            load_public_key(public_key)
        except ValueError:
            raise EnrollmentError(422, "public_key is not a base64url-encoded raw Ed25519 public key") from None
        created, proof = data.get("created"), data.get("proof")
        if not isinstance(created, int) or isinstance(created, bool) or not isinstance(proof, str):
            raise EnrollmentError(422, "created (POSIX seconds) and proof (base64url Ed25519 signature by the enrolled key) "
                                       "are required: proof of possession of the private key (docs/attestation.md)")
        return install_id, public_key, created, proof

    def _check_proof(self, install_id: str, public_key: str, created: int, proof: str, api_key_sha256: str) -> None:
        """The proof must be fresh (within the attestation skew window), signed by the key being enrolled, for this API key."""
        skew = self.settings.attestation.clock_skew_s
        if abs(time.time() - created) > skew:
            raise EnrollmentError(403, f"enrollment proof is outside the accepted window of ±{skew:g} s (created={created}); "
                                       "check the client's clock")
        try:
            load_public_key(public_key).verify(b64url_decode(proof), enrollment_message(install_id, public_key, created, api_key_sha256))
        except (InvalidSignature, ValueError):
            raise EnrollmentError(403, "enrollment proof does not verify: it must be signed by the private key of "
                                       "the public key being enrolled, for the API key it is sent with (docs/attestation.md)") from None

    @staticmethod
    def _already_enrolled(known: EnrolledInstall, install_id: str, public_key: str, key_id: str, account_id: str) -> dict[str, Any]:
        if known.encoded != public_key:
            raise EnrollmentError(409, f"install {install_id} is already enrolled with another key")
        if known.account_id is not None and known.account_id != account_id:
            raise EnrollmentError(409, f"{OTHER_ACCOUNT}: install {install_id} is enrolled for another account")
        return {"install_id": install_id, "key_id": key_id, "status": "already_enrolled"}

    def _store_enrollment(self, key_id: str, install_id: str, public_key: str, account_id: str) -> bool:
        """Persist the enrollment; True if it is new, False if this install was already enrolled (same key, same account)."""
        if self.enroll_store is None:
            return True
        try:
            result = self.enroll_store(key_id, install_id, public_key, account_id=account_id,
                                       max_per_key=self.settings.attestation.max_installs_per_key)
        except UsageError as exc:
            if str(exc).startswith(INSTALL_LIMIT):
                log.warning("key %s refused a new install: %s", key_id, exc)
                raise EnrollmentError(403, f"{exc}; revoke the key and issue a new one, or ask the operator to raise "
                                           "attestation.max_installs_per_key") from None
            raise EnrollmentError(409, str(exc)) from None
        except Exception as failed:
            log.warning("storing the enrollment of install %s failed: %s", install_id, failed)
            raise EnrollmentError(503, "enrollment could not be stored; try again") from None
        return result is not False
