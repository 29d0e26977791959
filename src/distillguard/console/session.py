"""Console sign-in: a token → a signed session cookie, and a CSRF token bound to that session.

Sessions are stateless: the cookie is ``role.expiry.nonce.signature`` with an
HMAC-SHA256 keyed by the token that signed the user in, so every gateway process
on the same configuration accepts it, changing the admin (or viewer) token
signs everyone out, and nothing is stored. The cookie is HttpOnly and
SameSite=Strict; the CSRF token (an HMAC of the session under another label)
goes into every form and is checked on every POST, so a forged cross-site form
fails even in a browser that ignores SameSite.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

__all__ = ["COOKIE", "Session", "SessionKeys"]

COOKIE = "dg_console"
LIFETIME_S = 12 * 3600
ROLES = ("admin", "viewer")


@dataclass(frozen=True)
class Session:
    role: str  # "admin" may act; "viewer" only reads
    cookie: str
    csrf: str

    @property
    def can_act(self) -> bool:
        return self.role == "admin"


class SessionKeys:
    def __init__(self, admin_token: str, viewer_token: str | None) -> None:
        self._tokens = {"admin": admin_token, "viewer": viewer_token}

    def _key(self, role: str) -> bytes:
        return hashlib.sha256(b"distillguard-console-v1\0" + role.encode() + b"\0" + (self._tokens[role] or "").encode()).digest()

    def sign_in(self, token: str) -> Session | None:
        """A new session for whoever holds ``token`` (admin first), or ``None`` for a wrong token."""
        for role in ROLES:
            expected = self._tokens[role]
            if expected and hmac.compare_digest(token.encode(), expected.encode()):
                payload = f"{role}.{int(time.time()) + LIFETIME_S}.{secrets.token_hex(8)}"
                return self._session(role, payload)
        return None

    def _session(self, role: str, payload: str) -> Session:
        key = self._key(role)
        signature = hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()
        csrf = hmac.new(key, b"csrf\0" + payload.encode(), hashlib.sha256).hexdigest()[:32]
        return Session(role, f"{payload}.{signature}", csrf)

    def check(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, if it is genuine, unexpired and its role still has a token."""
        if not cookie or cookie.count(".") != 3:
            return None
        role, expiry, nonce, signature = cookie.split(".")
        if role not in ROLES or not self._tokens[role] or not expiry.isdigit() or int(expiry) < time.time():
            return None
        session = self._session(role, f"{role}.{expiry}.{nonce}")
        if not hmac.compare_digest(session.cookie, cookie):
            return None
        return session

    @staticmethod
    def csrf_ok(session: Session, submitted: str | None) -> bool:
        return bool(submitted) and hmac.compare_digest(session.csrf, submitted or "")
