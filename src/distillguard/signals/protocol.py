"""Constants of the attestation protocol (docs/attestation.md), shared by the SDK and the verifier."""

from __future__ import annotations

import base64
import hashlib

import orjson

__all__ = ["COVERED_COMPONENTS", "ENROLL_PATH", "ENROLL_TAG", "LABEL", "SIGNALS_HEADER", "TAG", "VALIDITY_S", "api_key_digest",
           "b64url_decode", "b64url_encode", "decode_signals", "encode_signals", "enrollment_message"]

SIGNALS_HEADER = "DG-Client-Signals"
LABEL = "dg"
TAG = "distillguard-attest-v1"
VALIDITY_S = 300
COVERED_COMPONENTS = ("@method", "@target-uri", "content-digest", SIGNALS_HEADER.lower())
ENROLL_PATH = "/v1/distillguard/enroll"
ENROLL_TAG = "distillguard-enroll-v2"


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(value: str) -> bytes:
    """Padding optional; raises ``ValueError`` (binascii.Error) on bad input."""
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def encode_signals(signals: dict) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(signals, option=orjson.OPT_SORT_KEYS)).rstrip(b"=").decode()


def decode_signals(value: str) -> dict:
    """Raises ``ValueError`` on anything that is not base64url JSON of an object."""
    padded = value + "=" * (-len(value) % 4)
    try:
        data = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, orjson.JSONDecodeError, UnicodeEncodeError) as exc:
        raise ValueError(f"signals header is not base64url JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("signals header must encode a JSON object")
    return data


def enrollment_message(install_id: str, public_key: str, created: int, api_key_sha256: str) -> bytes:
    """What the install signs with the key it enrolls: proof that the caller holds that private key.

    The tag keeps the proof from being mistaken for (or made from) any other
    Ed25519 signature; ``created`` limits how long a captured proof can be
    reused; ``api_key_sha256`` (:func:`api_key_digest` of the API key the
    enrollment is sent with) binds it to that key, so a captured enrollment
    cannot be replayed with someone else's key. The strings are signed exactly
    as they appear in the enrollment body.
    """
    return f"{ENROLL_TAG}\n{install_id}\n{public_key}\n{created}\n{api_key_sha256}".encode()


def api_key_digest(api_key: str) -> str:
    """SHA-256 (hex) of an API key secret: what the gateway stores for the key, and what an enrollment proof binds."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()
