"""Bulk account files: read ``accounts import`` JSONL, create it batch by batch, print each account with its secret once.

Shared by ``distillguard accounts import`` (straight into the store) and
``distillguard admin accounts import`` (through ``POST /admin/v1/accounts/bulk``),
so a file means the same thing both ways: each line is exactly one item of the
bulk endpoint (:class:`distillguard.gateway.admin.BulkAccount`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import ValidationError

from distillguard.exceptions import UsageError

if TYPE_CHECKING:
    from distillguard.gateway.admin import BulkAccount

__all__ = ["create_in_batches", "read_accounts_file"]

T = TypeVar("T")


def read_accounts_file(path: str) -> list[BulkAccount]:
    """Every line of ``path`` (``-``: stdin) checked; a bad line or a name on two lines is a :class:`UsageError` naming it."""
    from distillguard.gateway.admin import BulkAccount, describe_validation_error

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it ({exc})") from None
    accounts: list[BulkAccount] = []
    first_at: dict[str, int] = {}
    external_at: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            account = BulkAccount.model_validate_json(line)
        except ValidationError as exc:
            raise UsageError(f"{path}, line {number}: {describe_validation_error(exc)}; nothing was created") from None
        name = account.name.strip()
        if name in first_at:
            raise UsageError(f"{path}, line {number}: account {name!r} is also on line {first_at[name]}; "
                             "list each account once; nothing was created")
        first_at[name] = number
        if account.external_id is not None:
            if account.external_id in external_at:
                raise UsageError(f"{path}, line {number}: external_id {account.external_id!r} is also on line "
                                 f"{external_at[account.external_id]}; each account has its own; nothing was created")
            external_at[account.external_id] = number
        accounts.append(account)
    if not accounts:
        raise UsageError(f"{path}: no accounts in it (one JSON object a line)")
    return accounts


def create_in_batches(items: Sequence[T], batch: int, create: Callable[[Sequence[T]], list[dict[str, Any]]], command: str) -> int:
    """Create ``items`` ``batch`` at a time, each created account a JSON line on stdout as soon as its batch is done.

    Returns 0; on a failure after the first batch, says on stderr how many
    were created (and printed) before re-raising.
    """
    if batch < 1:
        raise UsageError(f"--batch: expected a positive number of accounts, got {batch}")
    keys = existing = 0
    for start in range(0, len(items), batch):
        try:
            created = create(items[start:start + batch])
        except Exception:
            if start:
                print(f"{command}: the first {start} accounts were created (printed above); the rest were not", file=sys.stderr)
            raise
        sys.stdout.write("".join(orjson.dumps(c).decode() + "\n" for c in created))
        sys.stdout.flush()
        keys += sum(1 for c in created if c["key_id"])
        existing += sum(1 for c in created if c.get("status") == "exists")
    again = (f"; {existing} already existed (their external_id was stored by an earlier run: not created again, no secret shown)"
             if existing else "")
    print(f"created {len(items) - existing} accounts and {keys} keys; the secrets above are shown once and stored only as hashes"
          f"{again}", file=sys.stderr)
    return 0
