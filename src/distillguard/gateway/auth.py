"""The in-memory key table: API key → account, with no database round trip per request.

The table is loaded whole from :meth:`Registry.key_snapshot` once, at start;
afterwards, when the registry's change counter moves (polled off the hot path)
or the admin API changes a key, only the keys the change touched are replaced
(:meth:`KeyTable.update` with :meth:`Registry.key_changes_since`), so creating
or revoking one key costs one entry however many keys there are, and a
revocation takes effect on the next request after the poll interval.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from distillguard.gateway.errors import GatewayError
from distillguard.gateway.wire import header
from distillguard.store.registry import KeyRecord

__all__ = ["KeyTable", "extract_secret"]


def extract_secret(authorization: bytes | None, x_api_key: bytes | None) -> str | None:
    """The secret from ``x-api-key`` or ``Authorization: Bearer``; ``None`` when absent."""
    if x_api_key:
        return x_api_key.decode("latin-1").strip()
    if authorization:
        scheme, _, value = authorization.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


class KeyTable:
    """Secret-hash → :class:`KeyRecord`; swapped whole on a full load, entry by entry on a change."""

    def __init__(self, records: Iterable[KeyRecord] = ()) -> None:
        self._by_hash: dict[str, KeyRecord] = {}
        self.load(records)

    def load(self, records: Iterable[KeyRecord]) -> None:
        """Replace the whole table (start-up, or a gateway that fell behind the change log)."""
        self._by_hash = {r.secret_hash: r for r in records}

    def update(self, records: Iterable[KeyRecord]) -> None:
        """Replace or add these keys' entries; the others stay as they are (keys are revoked, never deleted)."""
        by_hash = self._by_hash
        for record in records:
            by_hash[record.secret_hash] = record

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, secret: str | None) -> KeyRecord:
        if not secret:
            raise GatewayError(401, "No API key provided. Send it as 'Authorization: Bearer <key>' or 'x-api-key'.", "missing_api_key")
        record = self._by_hash.get(hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest())
        if record is None:
            raise GatewayError(401, "Incorrect API key provided.", "invalid_api_key")
        if record.revoked:
            raise GatewayError(401, f"API key {record.key_id} has been revoked.", "revoked_api_key")
        if record.account_status != "active":
            raise GatewayError(403, f"Account {record.account_id} is {record.account_status}.", "account_suspended")
        return record

    def authenticate_request(self, headers: list[tuple[bytes, bytes]]) -> KeyRecord:
        """:meth:`authenticate` the key a request carries (``x-api-key`` or ``Authorization: Bearer``)."""
        return self.authenticate(extract_secret(header(headers, b"authorization"), header(headers, b"x-api-key")))
