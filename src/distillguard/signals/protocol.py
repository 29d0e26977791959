"""Constants of the attestation protocol (docs/attestation.md), shared by the SDK and the verifier."""

from __future__ import annotations

import base64

import orjson

__all__ = ["COVERED_COMPONENTS", "LABEL", "SIGNALS_HEADER", "TAG", "VALIDITY_S", "decode_signals", "encode_signals"]

SIGNALS_HEADER = "DG-Client-Signals"
LABEL = "dg"
TAG = "distillguard-attest-v1"
VALIDITY_S = 300
COVERED_COMPONENTS = ("@method", "@target-uri", "content-digest", SIGNALS_HEADER.lower())


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
