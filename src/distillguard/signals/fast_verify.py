"""A fast path for the one signature profile our SDK produces; everything else goes to the library.

``http-message-signatures`` parses ``Signature-Input`` and ``Signature`` with a
general, pure-Python Structured Fields parser and re-serialises the
parameters: ~75 % of a verification's time (bench/attestation_verify.py). Our
SDK always sends one label, ``dg``, four covered components in a fixed order
and string or integer parameters. For exactly that shape the serialised
``@signature-params`` is the header's own text, so the signature base can be
built without parsing.

The fast path can only *accept*: it answers ``valid`` parameters when the
header has the canonical shape, the tag, algorithm and time window are right,
the body matches a ``sha-256`` Content-Digest, and the Ed25519 signature
verifies over a base whose component values come from the library's own
component resolver. In every other case it returns None and the caller runs
the full library verification, which produces the precise status and reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from http_message_signatures.resolvers import HTTPSignatureComponentResolver
from http_sf.compat import Item

from distillguard.signals.protocol import COVERED_COMPONENTS, LABEL, TAG

__all__ = ["fast_verify"]

_COMPONENTS = " ".join(f'"{c}"' for c in COVERED_COMPONENTS)
_INPUT = re.compile(rf'{LABEL}=(\({re.escape(_COMPONENTS)}\)(?:;[a-z]+=(?:[0-9]{{1,15}}|"[ !#-\[\]-~]*"))+)')
_PARAM = re.compile(r';([a-z]+)=(?:([0-9]+)|"([^"]*)")')
_SIGNATURE = re.compile(rf"{LABEL}=:([A-Za-z0-9+/]+={{0,2}}):")
_DIGEST = re.compile(r"sha-256=:([A-Za-z0-9+/]+={0,2}):")
_ALLOWED = {"created", "expires", "nonce", "keyid", "alg", "tag"}
_ITEMS = [Item(c) for c in COVERED_COMPONENTS]


def _now() -> float:
    return time.time()


def fast_verify(method: str, url: str, headers: Mapping[str, str], body: bytes, *, max_skew_s: float,
                public_key_for: Callable[[str], Any], request: Any) -> dict[str, Any] | None:
    """The signature parameters when the canonical signature verifies, else None (use the library)."""
    raw_input = headers.get("signature-input", "")
    match = _INPUT.fullmatch(raw_input)
    signature_match = _SIGNATURE.fullmatch(headers.get("signature", ""))
    digest_match = _DIGEST.fullmatch(headers.get("content-digest", ""))
    if match is None or signature_match is None or digest_match is None:
        return None
    params: dict[str, Any] = {}
    for name, number, text in _PARAM.findall(raw_input[raw_input.index(")") + 1 :]):
        if name in params or name not in _ALLOWED:
            return None
        params[name] = int(number) if number else text
    if params.get("tag") != TAG or params.get("alg", "ed25519") != "ed25519":
        return None
    created, expires, keyid = params.get("created"), params.get("expires"), params.get("keyid")
    if type(created) is not int or not isinstance(keyid, str) or ("expires" in params and type(expires) is not int):
        return None
    now = _now()
    # The library's window: created no later than now + skew, expires no earlier than now - skew, age ≤ 2 × skew.
    if created > now + max_skew_s or created + 2 * max_skew_s < now or (expires is not None and expires < now - max_skew_s):
        return None
    try:
        digest = base64.b64decode(digest_match.group(1), validate=True)
        signature = base64.b64decode(signature_match.group(1), validate=True)
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(digest, hashlib.sha256(body).digest()):
        return None
    public_key = public_key_for(keyid)
    if public_key is None:
        return None
    try:
        resolver = HTTPSignatureComponentResolver(request)
        values = [resolver.resolve(item) for item in _ITEMS]
    except Exception:
        return None
    if any(not isinstance(v, str) or "\n" in v or "\r" in v for v in values):
        return None
    base = "\n".join(f'"{c}": {v}' for c, v in zip(COVERED_COMPONENTS, values, strict=True))
    base += f'\n"@signature-params": {match.group(1)}'
    if not base.isascii():
        return None
    try:
        public_key.verify(signature, base.encode())
    except InvalidSignature:
        return None
    return params
