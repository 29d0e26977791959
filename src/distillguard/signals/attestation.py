"""Verifying client attestations: RFC 9421 signatures over the request and its signals.

The verifier uses ``http-message-signatures`` (Ed25519) with the install's
enrolled public key, requires the signature to cover the method, target URI,
``Content-Digest`` (checked against the body) and the signals header, checks
``created``/``expires`` against a configurable skew window, rejects a
nonce seen before, and checks that the install is enrolled for the calling
account. Keys come from an in-memory cache (no database round trip on the
request path, see :mod:`distillguard.signals.installs`); enrollment updates it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_message_signatures import (
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
    algorithms,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException

from distillguard.exceptions import ConfigError
from distillguard.signals.fast_verify import fast_verify
from distillguard.signals.installs import (
    EnrolledInstall,
    InstallKeyCache,
    InstallSource,
    load_public_key,
    valid_install_id,
)
from distillguard.signals.protocol import COVERED_COMPONENTS, SIGNALS_HEADER, TAG, decode_signals
from distillguard.state.memory import NonceCache

__all__ = ["OTHER_ACCOUNT", "AttestationVerifier", "NonceCache", "load_public_key", "min_nonce_ttl_s"]

OTHER_ACCOUNT = "install_enrolled_for_other_account"


def min_nonce_ttl_s(clock_skew_s: float) -> float:
    """How long a signature can stay acceptable after the gateway first sees it, so how long its nonce must be kept.

    A signature is accepted while ``now - 2S <= created <= now + S`` (a
    maximum age of S plus S of skew, and S of skew into the future). Seen
    first with ``created`` S in the future, it stays acceptable for 3S more;
    a nonce forgotten sooner could be replayed.
    """
    return 3 * clock_skew_s


class _Request:
    """The request view the signature library resolves components from."""

    __slots__ = ("method", "url", "headers")

    def __init__(self, method: str, url: str, headers: dict[str, str]) -> None:
        self.method, self.url, self.headers = method, url, headers


class _KeyResolver(HTTPSignatureKeyResolver):
    """Resolves the signature's ``keyid`` from the install cache and remembers what it found."""

    def __init__(self, installs: InstallKeyCache) -> None:
        self.installs = installs
        self.missing: str | None = None
        self.found: EnrolledInstall | None = None

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey | None:
        self.found = self.installs.get(key_id)
        if self.found is None:
            self.missing = key_id
            return None
        return self.found.public_key

    def resolve_private_key(self, key_id: str) -> Any:
        raise HTTPMessageSignaturesException("the verifier holds no private keys")


class AttestationVerifier:
    """Verifies attestations against the enrolled installs; one per gateway process."""

    def __init__(self, install_keys: InstallSource | Mapping[str, str] | None = None, clock_skew_s: float = 300.0,
                 nonce_ttl_s: float | None = None, defer_nonces: bool = False) -> None:
        minimum = min_nonce_ttl_s(clock_skew_s)
        if nonce_ttl_s is not None and nonce_ttl_s < minimum:
            raise ConfigError(
                f"attestation.nonce_ttl_s: {nonce_ttl_s:g} s is shorter than the {minimum:g} s a signature can stay acceptable "
                f"(3 × attestation.clock_skew_s = 3 × {clock_skew_s:g}), so replays could slip through; "
                f"set it to at least {minimum:g} or leave it unset")
        self.clock_skew_s = clock_skew_s
        self.nonces = NonceCache(ttl_s=minimum if nonce_ttl_s is None else nonce_ttl_s)
        self.defer_nonces = defer_nonces
        self.deferred_nonce: str | None = None  # with defer_nonces: the last valid signature's nonce, still to be checked
        self.installs = InstallKeyCache(install_keys)

    def add_key(self, install_id: str, encoded: str, account_id: str | None = None) -> None:
        self.installs.add(install_id, encoded, account_id)

    def has_key(self, install_id: str) -> bool:
        return self.installs.peek(install_id) is not None

    def clear_deferred_nonce(self) -> None:
        """Forget the last request's deferred nonce (the signal collector calls it before each request)."""
        self.deferred_nonce = None

    def verify(self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes,
               account_id: str | None = None) -> dict[str, Any] | None:
        """The event's ``attestation`` object, or None when the request carries no attestation.

        ``account_id`` is the account of the API key the request came with: an
        install enrolled for another account is ``invalid``. Without it (offline
        verification) the account is not checked.
        """
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
        resolver = _KeyResolver(self.installs)
        request = _Request(method, url, header_map)
        try:
            params = fast_verify(method, url, header_map, body, max_skew_s=self.clock_skew_s,
                                 public_key_for=resolver.resolve_public_key, request=request)
        except Exception:  # the fast path may only accept; anything odd goes to the library
            params = None
        if params is None:
            resolver.missing = None
            verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=resolver)
            verifier.max_clock_skew = dt.timedelta(seconds=self.clock_skew_s)
            try:
                results = verifier.verify(request, max_age=dt.timedelta(seconds=self.clock_skew_s),
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
        enrolled_for = resolver.found.account_id if resolver.found else None
        if account_id is not None and enrolled_for is not None and enrolled_for != account_id:
            return self._result("invalid", claimed, f"{OTHER_ACCOUNT}: the install is enrolled for account {enrolled_for}, "
                                                    f"the API key belongs to {account_id}")
        nonce = params.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            return self._result("invalid", claimed, "signature carries no nonce")
        if self.defer_nonces:  # checked by the shared state in the request's admission (AttestationVerifier docstring)
            self.deferred_nonce = nonce
        elif not self.nonces.check_and_add(nonce, time.time()):
            return self._result("replayed", claimed, "nonce already used")
        return self._result("valid", claimed, None)

    @staticmethod
    def mark_replayed(result: dict[str, Any]) -> None:
        """Turn a ``valid`` result whose deferred nonce turned out to be used already into ``replayed``."""
        result["status"] = "replayed"
        result["reason"] = "nonce already used"

    @staticmethod
    def _result(status: str, claimed: dict[str, Any], reason: str | None) -> dict[str, Any]:
        def pick(name: str, kind: type | tuple[type, ...]) -> Any:
            value = claimed.get(name)
            return value if isinstance(value, kind) and not isinstance(value, bool) or (kind is bool and isinstance(value, bool)) else None

        result = {
            "status": status,
            "install_id": pick("install_id", str) if valid_install_id(claimed.get("install_id")) else None,
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
