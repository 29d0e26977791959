"""Verifying client attestations: RFC 9421 signatures over the request and its signals.

The verifier uses ``http-message-signatures`` (Ed25519) with the install's
enrolled public key, requires the signature to cover the method, target URI,
``Content-Digest`` (checked against the body) and the signals header, checks
``created``/``expires`` against a configurable skew window, and rejects a
nonce seen before. Keys come from an in-memory cache (no database round trip);
enrollment updates the cache.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_message_signatures import (
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
    algorithms,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException

from distillguard.signals.protocol import COVERED_COMPONENTS, SIGNALS_HEADER, TAG, decode_signals

__all__ = ["AttestationVerifier", "NonceCache", "load_public_key"]


def load_public_key(encoded: str) -> Ed25519PublicKey:
    raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    return Ed25519PublicKey.from_public_bytes(raw)


class NonceCache:
    """Nonces seen within their validity window; bounded, oldest evicted first."""

    def __init__(self, ttl_s: float, max_entries: int = 1_000_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def check_and_add(self, nonce: str, now: float) -> bool:
        """True when the nonce is fresh (and remember it); False when it is a replay."""
        with self._lock:
            while self._seen:
                oldest, expiry = next(iter(self._seen.items()))
                if expiry > now and len(self._seen) < self.max_entries:
                    break
                self._seen.popitem(last=False)
            if nonce in self._seen:
                return False
            self._seen[nonce] = now + self.ttl_s
            return True


class _Request:
    """The request view the signature library resolves components from."""

    __slots__ = ("method", "url", "headers")

    def __init__(self, method: str, url: str, headers: dict[str, str]) -> None:
        self.method, self.url, self.headers = method, url, headers


class _KeyResolver(HTTPSignatureKeyResolver):
    def __init__(self, keys: dict[str, Ed25519PublicKey]) -> None:
        self.keys = keys
        self.missing: str | None = None

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey | None:
        key = self.keys.get(key_id)
        if key is None:
            self.missing = key_id
        return key

    def resolve_private_key(self, key_id: str) -> Any:
        raise HTTPMessageSignaturesException("the verifier holds no private keys")


class AttestationVerifier:
    def __init__(self, install_keys: Callable[[], dict[str, str]] | dict[str, str] | None = None, clock_skew_s: float = 300.0) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self.raw_keys: dict[str, str] = {}
        self.clock_skew_s = clock_skew_s
        self.nonces = NonceCache(ttl_s=2 * clock_skew_s + 300)
        self._source = install_keys
        self.reload()

    def reload(self) -> None:
        source = self._source() if callable(self._source) else (self._source or {})
        for install_id, encoded in source.items():
            self.add_key(install_id, encoded)

    def add_key(self, install_id: str, encoded: str) -> None:
        self._keys[install_id] = load_public_key(encoded)
        self.raw_keys[install_id] = encoded

    def has_key(self, install_id: str) -> bool:
        return install_id in self._keys

    def verify(self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes) -> dict[str, Any] | None:
        """The event's ``attestation`` object, or None when the request carries no attestation."""
        header_map: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            header_map[key] = header_map[key] + ", " + value if key in header_map else value
        has_signature = "signature-input" in header_map or "signature" in header_map
        signals_value = header_map.get(SIGNALS_HEADER.lower())
        if not has_signature and signals_value is None:
            return None
        claimed: dict[str, Any] = {}
        if signals_value is not None:
            try:
                claimed = decode_signals(signals_value)
            except ValueError:
                return self._result("invalid", {}, "signals header is not base64url JSON")
        if not has_signature:
            return self._result("invalid", claimed, "signals sent without a signature")
        resolver = _KeyResolver(self._keys)
        verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=resolver)
        verifier.max_clock_skew = dt.timedelta(seconds=self.clock_skew_s)
        try:
            results = verifier.verify(_Request(method, url, header_map), max_age=dt.timedelta(seconds=self.clock_skew_s),
                                      expect_tag=TAG, require_components=COVERED_COMPONENTS, body=body)
        except (InvalidSignature, HTTPMessageSignaturesException, ValueError, TypeError, KeyError) as exc:
            message = str(exc)
            if resolver.missing is not None:
                return self._result("missing_key", claimed, f"install {resolver.missing!r} is not enrolled")
            if "past" in message or "age exceeds" in message or "future" in message:
                return self._result("expired", claimed, message)
            return self._result("invalid", claimed, message or type(exc).__name__)
        except Exception as exc:  # garbage must never become a 500
            return self._result("invalid", claimed, f"unverifiable signature ({type(exc).__name__})")
        params = results[0].parameters
        if claimed.get("install_id") != params.get("keyid"):
            return self._result("invalid", claimed, "signals name a different install than the signing key")
        nonce = params.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            return self._result("invalid", claimed, "signature carries no nonce")
        if not self.nonces.check_and_add(nonce, time.time()):
            return self._result("replayed", claimed, "nonce already used")
        return self._result("valid", claimed, None)

    @staticmethod
    def _result(status: str, claimed: dict[str, Any], reason: str | None) -> dict[str, Any]:
        def pick(name: str, kind: type | tuple[type, ...]) -> Any:
            value = claimed.get(name)
            return value if isinstance(value, kind) and not isinstance(value, bool) or (kind is bool and isinstance(value, bool)) else None

        result = {
            "status": status,
            "install_id": pick("install_id", str),
            "tz": pick("tz", str),
            "utc_offset_min": pick("utc_offset_min", int),
            "locale": pick("locale", str),
            "proxy": pick("proxy", bool),
            "os": pick("os", str),
            "sdk": pick("sdk", str),
        }
        if reason:
            result["reason"] = reason[:200]
        return result
