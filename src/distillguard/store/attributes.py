"""Operator-supplied account attributes, kept only as keyed hashes.

Providers link hydra accounts on what they know about the customer: the
signup e-mail domain, a payment fingerprint, the signup address. Detection
only needs to know whether two accounts share a value, never the value, so
the store never holds it: ``accounts create --attr email_domain=acme.com``
hashes the value here, before anything is written, as

    "h1:" + HMAC-SHA256(key=salt, msg=name + "\\x00" + value).hexdigest()[:32]

with the deployment's ``privacy.hash_key`` as the salt (the key that already
hashes client IPs when ``privacy.ip_mode: hash``). The name is in the message
so equal values of different attributes do not look alike. The same value
gives the same hash on every account of one deployment; another deployment
(another key) gives unrelated hashes, and without the key a hash cannot be
reversed by trying likely values.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable

from distillguard.exceptions import UsageError

__all__ = ["ATTRIBUTE_HASH", "ATTRIBUTE_NAME", "hash_attribute", "parse_assignments"]

ATTRIBUTE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
ATTRIBUTE_HASH = re.compile(r"h1:[0-9a-f]{32}")
MAX_VALUE_CHARS = 1024
# Values compared without regard to case: a domain or an address is the same whatever its case.
_CASE_INSENSITIVE = frozenset({"email_domain", "signup_ip", "domain"})


def _normalise(name: str, value: str) -> str:
    value = unicodedata.normalize("NFC", value.strip())
    return value.lower() if name in _CASE_INSENSITIVE else value


def hash_attribute(name: str, value: str, salt: str) -> str:
    """The stored form of one attribute value (see the module docstring)."""
    if not ATTRIBUTE_NAME.fullmatch(name):
        raise UsageError(f"attribute name {name!r}: use lower-case letters, digits and _ (e.g. email_domain), at most 64")
    value = _normalise(name, value)
    if not value or len(value) > MAX_VALUE_CHARS:
        raise UsageError(f"attribute {name}: the value must be 1 to {MAX_VALUE_CHARS} characters")
    digest = hmac.new(salt.encode(), f"{name}\x00{value}".encode(), hashlib.sha256).hexdigest()
    return "h1:" + digest[:32]


def parse_assignments(items: Iterable[str], salt: str) -> dict[str, str]:
    """``["email_domain=acme.com", …]`` → ``{"email_domain": "h1:…"}``; a name given twice is an error."""
    hashed: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise UsageError(f"--attr {item!r}: expected NAME=VALUE, e.g. email_domain=acme.com")
        if name in hashed:
            raise UsageError(f"--attr {name}: given twice")
        hashed[name] = hash_attribute(name, value, salt)
    return hashed
