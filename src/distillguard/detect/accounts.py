"""Account metadata for detection: the `accounts export` file that `scan --accounts` reads.

One JSON object per line (docs/store.md):
``{"account_id", "name", "org_id", "created_at", "status", "attributes": {NAME: "h1:<32 hex>"}}``.
Attribution (:mod:`distillguard.detect.attribution`) uses the creation time
(creation bursts), the organisation (one customer, not a hydra) and the hashed
attributes (shared payment fingerprints, rare e-mail domains). Only
``account_id`` is required; a line that breaks the format stops the scan with
``file:line: field: problem`` (exit 2), because a silently half-read metadata
file would change clusters without anyone knowing.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import orjson

from distillguard.events import parse_ts
from distillguard.exceptions import InputError

__all__ = ["AccountMeta", "read_accounts"]

_HASH_PREFIX = "h1:"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class AccountMeta:
    """What the operator knows about one account, as detection sees it."""

    account_id: str
    org_id: str | None = None
    created_at: float | None = None  # POSIX seconds
    status: str | None = None
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def _valid_hash(value: object) -> bool:
    return (isinstance(value, str) and len(value) == 35 and value.startswith(_HASH_PREFIX)
            and all(c in _HEX for c in value[3:]))


def _parse_line(obj: Any) -> AccountMeta:
    """One line's object as :class:`AccountMeta`, or ``ValueError("field: problem")``."""
    if not isinstance(obj, dict):
        raise ValueError("line: expected a JSON object")
    account = obj.get("account_id")
    if not isinstance(account, str) or not account:
        raise ValueError("account_id: missing or not a non-empty string")
    org = obj.get("org_id")
    if org is not None and not isinstance(org, str):
        raise ValueError(f"org_id: expected a string or null, got {org!r}")
    created: float | None = None
    raw_created = obj.get("created_at")
    if raw_created is not None:
        if not isinstance(raw_created, str):
            raise ValueError(f"created_at: expected an ISO-8601 string such as 2026-11-01T09:00:00Z, got {raw_created!r}")
        try:
            created = parse_ts(raw_created)
        except ValueError:
            raise ValueError(f"created_at: not an ISO-8601 timestamp: {raw_created!r}") from None
    status = obj.get("status")
    if status is not None and not isinstance(status, str):
        raise ValueError(f"status: expected a string, got {status!r}")
    attributes = obj.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ValueError("attributes: expected an object of NAME: \"h1:<32 hex>\"")
    for name, value in attributes.items():
        if not _valid_hash(value):
            raise ValueError(f"attributes.{name}: expected a hashed value \"h1:\" + 32 lower-case hex digits "
                             "(`distillguard accounts export` writes them; raw values are never read)")
    return AccountMeta(account, org or None, created, status, MappingProxyType(dict(attributes)))


def _open(path: str) -> IO[bytes]:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]  # GzipFile is a binary IO
    return open(path, "rb")  # noqa: SIM115 - closed by the caller's with-block


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    try:
        with _open(path) as handle:
            yield from enumerate(handle, start=1)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise InputError(f"{exc.filename}: {exc.strerror}") from None
    except (OSError, EOFError) as exc:  # a corrupt or truncated gzip file
        raise InputError(f"{path}: cannot be read ({exc})") from None


def read_accounts(path: str | Path) -> dict[str, AccountMeta]:
    """Every account of an `accounts export` file by id; :class:`InputError` names ``file:line: field: problem``."""
    path = str(path)
    found: dict[str, AccountMeta] = {}
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: malformed JSON ({exc})") from None
        try:
            meta = _parse_line(obj)
        except ValueError as exc:
            raise InputError(f"{path}:{number}: {exc}") from None
        if meta.account_id in found:
            raise InputError(f"{path}:{number}: account_id: {meta.account_id!r} appears twice")
        found[meta.account_id] = meta
    return found
