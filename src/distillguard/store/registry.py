"""Accounts (and their hashed attributes), organisations, API keys, enrolled installs, manual policy overrides, audit log and review queue.

The registry is the slow, durable side of authentication. The gateway never
queries it per request: it loads :meth:`Registry.key_snapshot` into memory once
and polls :meth:`Registry.change_counter` (one primary-key read) to notice
changes made by other processes, such as ``distillguard keys revoke``; then
:meth:`Registry.key_changes_since` returns only the keys those changes touched
(every change records them in ``key_changes``), so a change costs one key, not
a reload of 100,000. The policy engine reloads :meth:`Registry.manual_overrides`
on the same counter.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from distillguard.events import format_ts
from distillguard.exceptions import NotFoundError, UsageError
from distillguard.store import schema
from distillguard.store.attributes import ATTRIBUTE_HASH, ATTRIBUTE_NAME
from distillguard.store.bulk_insert import insert_rows
from distillguard.store.engine import DEFAULT_TIMEOUT_S, make_engine

__all__ = ["InstallKey", "KeyDelta", "KeyRecord", "NewAccount", "Registry", "hash_secret", "new_secret"]

SECRET_PREFIX = "sk-dg-"
KEY_CHANGES_RETENTION_S = 3600.0  # key_changes rows kept this long; a gateway further behind reloads everything
PRUNE_EVERY = 256  # registry changes between prunes of key_changes
_NO_LIMITS: Mapping[str, int | None] = MappingProxyType({})  # shared by every key without overrides
MANUAL_OVERRIDE_ACTIONS = ("allow", "flag", "throttle", "degrade", "block")


def hash_secret(secret: str) -> str:
    """SHA-256 of a key secret.

    A fast hash is right here, unlike for passwords: secrets carry 256 bits of
    randomness, so brute force is hopeless, and the gateway can look a key up
    by its hash in a dict without a slow KDF on the hot path.
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _plain(row: Any) -> dict[str, Any]:
    """A row as a dict with plain ``str`` keys (SQLAlchemy's keys are a str subclass JSON encoders reject)."""
    return {str(k): v for k, v in row.items()}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _checked_attributes(attributes: Mapping[str, str | None]) -> dict[str, str | None]:
    checked: dict[str, str | None] = {}
    for name, value in attributes.items():
        if not isinstance(name, str) or not ATTRIBUTE_NAME.fullmatch(name):
            raise UsageError(f"attributes: invalid name {name!r} (lower-case letters, digits and _, at most 64)")
        if value is not None and (not isinstance(value, str) or not ATTRIBUTE_HASH.fullmatch(value)):
            raise UsageError(f"attributes.{name}: expected a hashed value 'h1:' + 32 hex digits (store/attributes.py hashes raw values)")
        checked[name] = value
    return checked


LIMIT_NAMES = ("requests_per_min", "tokens_per_min", "concurrent_requests", "daily_tokens")


def _clean_limits(limits: dict[str, Any] | None) -> dict[str, int | None]:
    if not limits:
        return {}
    unknown = set(limits) - set(LIMIT_NAMES)
    if unknown:
        raise UsageError(f"limits: unknown limit(s) {sorted(unknown)}; known: {list(LIMIT_NAMES)}")
    cleaned: dict[str, int | None] = {}
    for name, value in limits.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise UsageError(f"limits.{name}: expected a non-negative integer or null, got {value!r}")
        cleaned[name] = value
    return cleaned


def _clean_limits_at(limits: Mapping[str, Any] | None, where: str) -> dict[str, int | None]:
    """:func:`_clean_limits` for one item of a batch: the error names the item (``accounts.3.limits.…``)."""
    try:
        return _clean_limits(dict(limits) if limits else None)
    except UsageError as exc:
        raise UsageError(where + str(exc)) from None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the gateway's in-memory auth table holds for one key.

    Slotted, with the empty limits shared and an account's limits shared by its
    keys (:meth:`Registry.key_snapshot`): one idle key costs a few hundred bytes
    in the gateway, measured in bench/accounts_scale.py.
    """

    key_id: str
    secret_hash: str
    account_id: str
    org_id: str | None
    revoked: bool
    account_status: str
    key_limits: Mapping[str, int | None] = field(default_factory=lambda: _NO_LIMITS)
    account_limits: Mapping[str, int | None] = field(default_factory=lambda: _NO_LIMITS)


@dataclass(frozen=True, slots=True)
class KeyDelta:
    """What changed in the key table since a change-counter value: the current records of the keys touched."""

    counter: int
    records: list[KeyRecord]


@dataclass(frozen=True, slots=True)
class NewAccount:
    """One account of a bulk creation (:meth:`Registry.create_accounts`), with a key when ``key`` is true."""

    name: str
    org: str | None = None
    limits: Mapping[str, Any] | None = None
    key: bool = False
    key_limits: Mapping[str, Any] | None = None
    external_id: str | None = None  # the caller's id: a batch sent again finds the account instead of creating it twice


class InstallKey(str):
    """An enrolled install's public key (base64url) that also names the account it is bound to.

    A ``str`` so that callers that only want the key (``{install_id: public_key}``)
    keep working; the attestation verifier reads ``account_id`` to refuse the
    install on another account's keys.
    """

    account_id: str

    def __new__(cls, public_key: str, account_id: str) -> InstallKey:
        key = super().__new__(cls, public_key)
        key.account_id = account_id
        return key


class Registry:
    """Durable accounts and keys; synchronous (call it from a thread in async code)."""

    def __init__(self, database_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.database_url = database_url
        self.engine = make_engine(database_url, timeout_s=timeout_s)  # every call fails after ~timeout_s, never hangs
        schema.create_tables(self.engine)
        with self.engine.connect() as conn:
            exists = conn.execute(select(schema.counters.c.value).where(schema.counters.c.name == "changes")).first()
        if exists is None:
            # Another process may create the row first; its IntegrityError rolls back only this transaction.
            with contextlib.suppress(IntegrityError), self.engine.begin() as conn:
                conn.execute(schema.counters.insert().values(name="changes", value=0))
        with self.engine.connect() as conn:
            exists = conn.execute(select(schema.counters.c.value).where(schema.counters.c.name == "key_changes_pruned")).first()
        if exists is None:
            with contextlib.suppress(IntegrityError), self.engine.begin() as conn:
                conn.execute(schema.counters.insert().values(name="key_changes_pruned", value=0))

    def close(self) -> None:
        self.engine.dispose()

    # -- change tracking ---------------------------------------------------
    def _bump(self, conn: Any, *, keys: Collection[str] = (), accounts: Collection[str] = ()) -> None:
        """Count a change, recording the keys and accounts it touched for :meth:`key_changes_since`.

        Call it last in the transaction: the counter row stays locked until
        the commit (PostgreSQL) or the whole database does (SQLite), so change
        rows are numbered in commit order and a reader that has seen counter
        value N also sees every change row up to N.
        """
        counters = schema.counters
        conn.execute(update(counters).where(counters.c.name == "changes").values(value=counters.c.value + 1))
        if not keys and not accounts:
            return
        seq = int(conn.execute(select(counters.c.value).where(counters.c.name == "changes")).scalar_one())
        now = time.time()
        rows = [{"seq": seq, "key_id": k, "account_id": None, "ts": now} for k in keys]
        rows += [{"seq": seq, "key_id": None, "account_id": a, "ts": now} for a in accounts]
        insert_rows(conn, schema.key_changes, rows)
        if seq % PRUNE_EVERY == 0:
            self._prune_key_changes(conn, now - KEY_CHANGES_RETENTION_S)

    @staticmethod
    def _prune_key_changes(conn: Any, cutoff: float) -> None:
        changes, counters = schema.key_changes, schema.counters
        top = conn.execute(select(func.max(changes.c.seq)).where(changes.c.ts < cutoff)).scalar()
        if top is None:
            return
        conn.execute(delete(changes).where(changes.c.seq <= top))
        conn.execute(update(counters).where(counters.c.name == "key_changes_pruned", counters.c.value < top).values(value=top))

    def change_counter(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(select(schema.counters.c.value).where(schema.counters.c.name == "changes")).scalar()
        return int(value or 0)

    # -- accounts ----------------------------------------------------------
    @staticmethod
    def _audit(conn: Any, actor: str, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
        """An audit row in the same transaction as the change it records: neither exists without the other."""
        conn.execute(schema.audit_log.insert().values(ts=time.time(), actor=actor, action=action, target=target, detail=detail or {}))

    def create_account(self, name: str, org: str | None = None, limits: dict[str, Any] | None = None, *,
                       actor: str = "cli", attributes: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Create an account; ``attributes`` are already hashed (:func:`distillguard.store.attributes.hash_attribute`)."""
        if not name or not name.strip():
            raise UsageError("name: must not be empty")
        hashed = _checked_attributes(attributes or {})
        row = {
            "account_id": _new_id("acct"),
            "name": name.strip(),
            "org_id": org,
            "status": "active",
            "limits": _clean_limits(limits),
            "created_at": time.time(),
        }
        with self.engine.begin() as conn:
            conn.execute(schema.accounts.insert().values(**row))
            self._write_attributes(conn, str(row["account_id"]), hashed)
            self._audit(conn, actor, "account.create", str(row["account_id"]), {"name": row["name"], "org_id": org, "limits": row["limits"],
                                                                               **({"attributes": sorted(hashed)} if hashed else {})})
            self._bump(conn)  # a new account has no keys yet: nothing for the key table
        return row

    def create_accounts(self, items: Sequence[NewAccount], *, actor: str = "cli") -> list[dict[str, Any]]:
        """Create many accounts, each with a key when asked, in one transaction; the secrets are returned once.

        All or nothing: an invalid item (empty name, bad limits, a name or an
        ``external_id`` twice in the batch) raises :class:`UsageError` naming
        ``accounts.<index>`` before anything is written. Rows go in with one
        multi-row insert per table (``COPY`` on PostgreSQL, one executemany on
        SQLite: store/bulk_insert.py), with the same audit rows as one-by-one
        creation and one change-counter bump, so gateways pick the new keys up
        incrementally. 10,000 accounts with keys take about a second
        (bench/accounts_scale.py).

        Retries are safe for items with an ``external_id``: one the store
        already holds is not created again but answered with the stored
        account and ``"status": "exists"`` (its key's secret is not shown
        again; it was shown once); new ones get ``"status": "created"``. Two
        retries racing each other: with ids, the transaction takes the change
        counter's row lock before it looks them up, so the second waits for the
        first to commit and then finds its accounts; should one still collide
        on the unique id, its transaction is run again.
        """
        if not items:
            raise UsageError("accounts: give at least one account")
        checked: list[tuple[NewAccount, str, dict[str, Any] | None, dict[str, Any] | None]] = []
        first_at: dict[str, int] = {}
        external_at: dict[str, int] = {}
        for i, item in enumerate(items):
            name = item.name.strip() if isinstance(item.name, str) else ""
            if not name:
                raise UsageError(f"accounts.{i}.name: must not be empty")
            if name in first_at:
                raise UsageError(f"accounts.{i}.name: {name!r} is also accounts.{first_at[name]}.name; "
                                 "list each account once (names need not be unique across batches)")
            first_at[name] = i
            if item.external_id is not None:
                if item.external_id in external_at:
                    raise UsageError(f"accounts.{i}.external_id: {item.external_id!r} is also accounts.{external_at[item.external_id]}"
                                     ".external_id; each account has its own")
                external_at[item.external_id] = i
            checked.append((item, name, _clean_limits_at(item.limits, f"accounts.{i}."), _clean_limits_at(item.key_limits, f"accounts.{i}.key.")))
        for attempt in range(3):
            try:
                return self._create_checked(checked, list(external_at), actor)
            except IntegrityError:  # a concurrent retry stored one of these external ids first: look again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _create_checked(self, checked: Sequence[tuple[NewAccount, str, dict[str, Any] | None, dict[str, Any] | None]],
                        external_ids: list[str], actor: str) -> list[dict[str, Any]]:
        now = time.time()
        accounts: list[dict[str, Any]] = []
        keys: list[dict[str, Any]] = []
        audit: list[dict[str, Any]] = []
        external: list[dict[str, Any]] = []
        created: list[dict[str, Any]] = []
        with self.engine.begin() as conn:
            if external_ids:  # take the change counter's lock first: a concurrent retry waits here, then sees our ids
                counters = schema.counters
                conn.execute(update(counters).where(counters.c.name == "changes").values(value=counters.c.value))
            existing = self._existing_external(conn, external_ids)
            for item, name, limits, key_limits in checked:
                found = existing.get(item.external_id) if item.external_id is not None else None
                if found is not None:
                    created.append({**found, "external_id": item.external_id, "key_id": None, "secret": None, "status": "exists"})
                    continue
                account_id = _new_id("acct")
                accounts.append({"account_id": account_id, "name": name, "org_id": item.org, "status": "active", "limits": limits,
                                 "created_at": now})
                audit.append({"ts": now, "actor": actor, "action": "account.create", "target": account_id,
                              "detail": {"name": name, "org_id": item.org, "limits": limits, "external_id": item.external_id}})
                if item.external_id is not None:
                    external.append({"external_id": item.external_id, "account_id": account_id, "created_at": now})
                entry: dict[str, Any] = {"account_id": account_id, "name": name, "org_id": item.org, "external_id": item.external_id,
                                         "key_id": None, "secret": None, "status": "created"}
                if item.key:
                    secret = new_secret()
                    key_id = _new_id("key")
                    prefix = secret[: len(SECRET_PREFIX) + 4]
                    keys.append({"key_id": key_id, "account_id": account_id, "secret_hash": hash_secret(secret), "prefix": prefix,
                                 "revoked": False, "limits": key_limits, "created_at": now})
                    audit.append({"ts": now, "actor": actor, "action": "key.create", "target": key_id,
                                  "detail": {"account_id": account_id, "prefix": prefix}})
                    entry["key_id"], entry["secret"] = key_id, secret
                created.append(entry)
            insert_rows(conn, schema.accounts, accounts)
            if external:  # through SQLAlchemy, so that a duplicate id is an IntegrityError on every driver
                conn.execute(insert(schema.account_external_ids), external)
            insert_rows(conn, schema.api_keys, keys)
            insert_rows(conn, schema.audit_log, audit)
            if accounts:
                self._bump(conn, keys=[k["key_id"] for k in keys])
        return created

    @staticmethod
    def _existing_external(conn: Any, external_ids: list[str]) -> dict[str, dict[str, Any]]:
        """external id → the stored account's ``account_id``, ``name``, ``org_id``, for those of ``external_ids`` already held."""
        found: dict[str, dict[str, Any]] = {}
        ext, acc = schema.account_external_ids, schema.accounts
        for start in range(0, len(external_ids), 500):  # SQLite bounds the parameters of one statement
            rows = conn.execute(select(ext.c.external_id, acc.c.account_id, acc.c.name, acc.c.org_id)
                                .join(acc, acc.c.account_id == ext.c.account_id)
                                .where(ext.c.external_id.in_(external_ids[start:start + 500]))).all()
            found.update({row.external_id: {"account_id": row.account_id, "name": row.name, "org_id": row.org_id} for row in rows})
        return found

    def get_account(self, account_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(schema.accounts).where(schema.accounts.c.account_id == account_id)).mappings().first()
        return _plain(row) if row else None

    def list_accounts(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(schema.accounts).order_by(schema.accounts.c.created_at)).mappings().all()
        return [_plain(r) for r in rows]

    def _require_account(self, conn: Any, account_id: str) -> None:
        found = conn.execute(select(schema.accounts.c.account_id).where(schema.accounts.c.account_id == account_id)).first()
        if found is None:
            raise NotFoundError(f"account {account_id!r} does not exist (see `distillguard accounts list`)")

    def set_account_limits(self, account_id: str, limits: dict[str, Any], *, actor: str = "cli") -> None:
        cleaned = _clean_limits(limits)
        with self.engine.begin() as conn:
            self._require_account(conn, account_id)
            conn.execute(update(schema.accounts).where(schema.accounts.c.account_id == account_id).values(limits=cleaned))
            self._audit(conn, actor, "account.limits", account_id, {"limits": cleaned})
            self._bump(conn, accounts=[account_id])

    def set_account_status(self, account_id: str, status: str, *, actor: str = "cli", reason: str | None = None) -> None:
        """Suspend or re-activate an account: its keys get a 403 ``account_suspended`` from the next request on."""
        if status not in ("active", "suspended"):
            raise UsageError(f"status: expected 'active' or 'suspended', got {status!r}")
        with self.engine.begin() as conn:
            self._require_account(conn, account_id)
            conn.execute(update(schema.accounts).where(schema.accounts.c.account_id == account_id).values(status=status))
            self._audit(conn, actor, f"account.{'suspend' if status == 'suspended' else 'activate'}", account_id, {"reason": reason})
            self._bump(conn, accounts=[account_id])

    # -- account attributes (hashed; store/attributes.py) --------------------
    @staticmethod
    def _write_attributes(conn: Any, account_id: str, hashed: Mapping[str, str | None]) -> None:
        table = schema.account_attributes
        now = time.time()
        for name, value in hashed.items():
            conn.execute(delete(table).where(table.c.account_id == account_id, table.c.name == name))
            if value is not None:
                conn.execute(table.insert().values(account_id=account_id, name=name, value_hash=value, updated_at=now))

    def set_account_attributes(self, account_id: str, attributes: Mapping[str, str | None], *, actor: str = "cli") -> dict[str, str]:
        """Set hashed attribute values (``None`` removes one); returns the account's attributes afterwards.

        Values must already be hashed (``h1:`` + 32 hex): the registry refuses
        anything else, so a raw e-mail domain or card fingerprint cannot reach
        the database by mistake. The audit row names the attributes, not values.
        """
        hashed = _checked_attributes(attributes)
        with self.engine.begin() as conn:
            self._require_account(conn, account_id)
            self._write_attributes(conn, account_id, hashed)
            self._audit(conn, actor, "account.attributes", account_id,
                        {"set": sorted(n for n, v in hashed.items() if v is not None), "removed": sorted(n for n, v in hashed.items() if v is None)})
            self._bump(conn)
        return self.account_attributes([account_id]).get(account_id, {})

    def account_attributes(self, account_ids: Collection[str] | None = None) -> dict[str, dict[str, str]]:
        """Account → {attribute name → hash}; all accounts, or only ``account_ids``."""
        table = schema.account_attributes
        query = select(table.c.account_id, table.c.name, table.c.value_hash).order_by(table.c.account_id, table.c.name)
        if account_ids is not None:
            if not account_ids:
                return {}
            query = query.where(table.c.account_id.in_(list(account_ids)))
        found: dict[str, dict[str, str]] = {}
        with self.engine.connect() as conn:
            for account_id, name, value_hash in conn.execute(query):
                found.setdefault(account_id, {})[name] = value_hash
        return found

    def export_accounts(self) -> Iterator[dict[str, Any]]:
        """Every account as a line of `accounts export` (docs/store.md): id, name, org, created_at, status, hashed attributes."""
        attributes = self.account_attributes()
        for account in self.list_accounts():
            yield {"account_id": account["account_id"], "name": account["name"], "org_id": account["org_id"],
                   "created_at": format_ts(float(account["created_at"])), "status": account["status"],
                   "attributes": attributes.get(account["account_id"], {})}

    # -- keys --------------------------------------------------------------
    def create_key(self, account_id: str, limits: dict[str, Any] | None = None, *, actor: str = "cli") -> dict[str, Any]:
        """Issue a key. The secret is in the returned dict and nowhere else, ever."""
        secret = new_secret()
        row = {
            "key_id": _new_id("key"),
            "account_id": account_id,
            "secret_hash": hash_secret(secret),
            "prefix": secret[: len(SECRET_PREFIX) + 4],
            "revoked": False,
            "limits": _clean_limits(limits),
            "created_at": time.time(),
        }
        with self.engine.begin() as conn:
            self._require_account(conn, account_id)
            conn.execute(schema.api_keys.insert().values(**row))
            self._audit(conn, actor, "key.create", str(row["key_id"]), {"account_id": account_id, "prefix": row["prefix"]})
            self._bump(conn, keys=[str(row["key_id"])])
        return {"key_id": row["key_id"], "account_id": account_id, "secret": secret}

    def revoke_key(self, key_id: str, *, actor: str = "cli") -> dict[str, Any]:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(schema.api_keys)
                .where(schema.api_keys.c.key_id == key_id)
                .values(revoked=True, revoked_at=time.time())
            )
            if result.rowcount == 0:
                raise NotFoundError(f"key {key_id!r} does not exist")
            self._audit(conn, actor, "key.revoke", key_id)
            self._bump(conn, keys=[key_id])
        return {"key_id": key_id, "revoked": True}

    def list_keys(self, account_id: str | None = None) -> list[dict[str, Any]]:
        query = select(
            schema.api_keys.c.key_id,
            schema.api_keys.c.account_id,
            schema.api_keys.c.prefix,
            schema.api_keys.c.revoked,
            schema.api_keys.c.limits,
            schema.api_keys.c.created_at,
        ).order_by(schema.api_keys.c.created_at)
        if account_id is not None:
            query = query.where(schema.api_keys.c.account_id == account_id)
        with self.engine.connect() as conn:
            return [_plain(r) for r in conn.execute(query).mappings().all()]

    @staticmethod
    def _key_query() -> Any:
        return select(
            schema.api_keys.c.key_id,
            schema.api_keys.c.secret_hash,
            schema.api_keys.c.account_id,
            schema.api_keys.c.revoked,
            schema.api_keys.c.limits.label("key_limits"),
            schema.accounts.c.org_id,
            schema.accounts.c.status,
            schema.accounts.c.limits.label("account_limits"),
        ).join(schema.accounts, schema.accounts.c.account_id == schema.api_keys.c.account_id)

    @staticmethod
    def _records(rows: Any) -> list[KeyRecord]:
        """Compact records: one status string per value, one limits mapping per account, none for keys without limits."""
        statuses: dict[str, str] = {}
        account_limits: dict[str, Mapping[str, int | None]] = {}
        records = []
        for key_id, secret_hash, account_id, revoked, key_limits, org_id, status, limits in rows:
            shared = account_limits.get(account_id)
            if shared is None:
                shared = account_limits[account_id] = MappingProxyType(dict(limits)) if limits else _NO_LIMITS
            records.append(KeyRecord(
                key_id=key_id,
                secret_hash=secret_hash,
                account_id=account_id,
                org_id=org_id,
                revoked=bool(revoked),
                account_status=statuses.setdefault(status, status),
                key_limits=MappingProxyType(dict(key_limits)) if key_limits else _NO_LIMITS,
                account_limits=shared,
            ))
        return records

    def key_snapshot(self) -> list[KeyRecord]:
        """Every key, for a gateway's first load (and when it fell behind the pruned change log)."""
        with self.engine.connect() as conn:
            return self._records(conn.execute(self._key_query()))

    def key_changes_since(self, counter: int) -> KeyDelta | None:
        """The keys changed after change-counter value ``counter``, as they are now; ``None``: reload everything.

        ``None`` when ``counter`` is older than the pruned part of the change
        log (``key_changes``, kept :data:`KEY_CHANGES_RETENTION_S`) or negative
        (nothing loaded yet). The counter is read first, so every change up to
        the returned ``counter`` is in ``records`` (later ones may be too: the
        next call returns them again, which is harmless).
        """
        counters, changes, keys = schema.counters, schema.key_changes, schema.api_keys
        with self.engine.connect() as conn:
            values = dict(conn.execute(select(counters.c.name, counters.c.value)
                                       .where(counters.c.name.in_(["changes", "key_changes_pruned"]))).all())
            now = int(values.get("changes") or 0)
            if counter < 0 or counter < int(values.get("key_changes_pruned") or 0):
                return None
            if now == counter:
                return KeyDelta(now, [])
            touched_keys = select(changes.c.key_id).where(changes.c.seq > counter, changes.c.key_id.is_not(None))
            touched_accounts = select(changes.c.account_id).where(changes.c.seq > counter, changes.c.account_id.is_not(None))
            query = self._key_query().where(or_(keys.c.key_id.in_(touched_keys), keys.c.account_id.in_(touched_accounts)))
            return KeyDelta(now, self._records(conn.execute(query)))

    # -- installs (attestation enrollment) -----------------------------------
    def enroll_install(self, key_id: str, install_id: str, public_key: str, *, account_id: str,
                       max_per_key: int | None = None) -> bool:
        """Bind an install's public key to ``account_id``; True if new, False if already so enrolled.

        An install belongs to the account that enrolled it first: enrolling it
        again with a key of the same account is a no-op, with another account
        or another public key a :class:`UsageError`. Two processes racing to
        enroll the same install resolve through the primary key. With
        ``max_per_key``, a key that already enrolled that many installs gets a
        :class:`UsageError` starting ``install_limit_reached`` for a new one
        (counted in the same transaction; two racing enrollments of different
        installs may both pass the last free place).
        """
        if not account_id:
            raise UsageError("account_id: an install must be enrolled for an account")
        try:
            with self.engine.begin() as conn:
                if self._check_enrolled(conn, install_id, public_key, account_id):
                    return False
                if max_per_key is not None:
                    enrolled = conn.execute(
                        select(func.count()).select_from(schema.installs).where(schema.installs.c.key_id == key_id)).scalar_one()
                    if enrolled >= max_per_key:
                        raise UsageError(f"install_limit_reached: key {key_id} has enrolled {enrolled} installs, "
                                         f"the most one key may (attestation.max_installs_per_key)")
                conn.execute(
                    schema.installs.insert().values(
                        install_id=install_id, key_id=key_id, account_id=account_id, public_key=public_key, created_at=time.time()
                    )
                )
        except IntegrityError:
            with self.engine.connect() as conn:
                if self._check_enrolled(conn, install_id, public_key, account_id):
                    return False
            raise
        return True

    @staticmethod
    def _check_enrolled(conn: Any, install_id: str, public_key: str, account_id: str) -> bool:
        """True if the install is enrolled with this key for this account, False if not enrolled; raises on a conflict."""
        existing = conn.execute(
            select(schema.installs.c.public_key, schema.installs.c.account_id).where(schema.installs.c.install_id == install_id)
        ).first()
        if existing is None:
            return False
        if existing[0] != public_key:
            raise UsageError(f"install {install_id!r} is already enrolled with another public key")
        if existing[1] != account_id:
            raise UsageError(f"install_enrolled_for_other_account: install {install_id!r} is enrolled for another account")
        return True

    def install_keys(self, install_ids: Collection[str] | None = None) -> dict[str, str]:
        """Enrolled installs → public key (an :class:`InstallKey`, carrying the account); all, or only ``install_ids``."""
        query = select(schema.installs.c.install_id, schema.installs.c.public_key, schema.installs.c.account_id)
        if install_ids is not None:
            if not install_ids:
                return {}
            query = query.where(schema.installs.c.install_id.in_(list(install_ids)))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {install_id: InstallKey(public_key, account_id) for install_id, public_key, account_id in rows}

    # -- manual policy overrides ---------------------------------------------
    def manual_overrides(self) -> dict[str, tuple[str, str]]:
        """The manual overrides in force: account → ``(action, reason)``.

        They live in their own small table (``manual_overrides``, one row per
        account, ``clear`` deletes the row) rather than being derived from the
        ``manual.*`` rows of the audit log, because:

        - the gateway reloads them whenever the change counter moves, so the
          read must stay cheap: this table holds one row per overridden account,
          while the audit log grows without bound (``policy.*``, ``review.*``,
          key changes…) and has no index on ``action``, which ``create_all``
          could not add to existing databases anyway;
        - the state does not hinge on the audit log being complete or kept
          forever (pruning old audit rows must not lift a block);
        - ``manual.*`` rows written before overrides were persisted (when a
          restart dropped them) do not come back to life on upgrade.

        Each change still writes its ``manual.<action>`` audit row, in the same
        transaction (:meth:`set_manual_override`).
        """
        table = schema.manual_overrides
        with self.engine.connect() as conn:
            rows = conn.execute(select(table.c.account_id, table.c.action, table.c.reason)).all()
        return {account_id: (action, reason) for account_id, action, reason in rows}

    def set_manual_override(self, account_id: str, action: str, reason: str, *, actor: str = "admin") -> None:
        """Set (``allow``, ``flag``, ``throttle``, ``degrade``, ``block``) or remove (``clear``) an account's manual override.

        The row, its ``manual.<action>`` audit record and a change-counter bump
        are one transaction, so other gateway processes reload it within their
        poll interval (about a second). The latest write wins.
        """
        if action not in (*MANUAL_OVERRIDE_ACTIONS, "clear"):
            raise UsageError(f"action: expected one of {[*MANUAL_OVERRIDE_ACTIONS, 'clear']}, got {action!r}")
        if not account_id or len(account_id) > 200:
            raise UsageError("account_id: must be 1 to 200 characters")
        table = schema.manual_overrides
        for attempt in range(2):
            try:
                with self.engine.begin() as conn:
                    if action == "clear":
                        conn.execute(delete(table).where(table.c.account_id == account_id))
                    else:
                        values = {"action": action, "reason": reason, "actor": actor, "ts": time.time()}
                        updated = conn.execute(update(table).where(table.c.account_id == account_id).values(**values))
                        if updated.rowcount == 0:
                            conn.execute(table.insert().values(account_id=account_id, **values))
                    self._audit(conn, actor, f"manual.{action}", account_id, {"reason": reason})
                    self._bump(conn)
                return
            except IntegrityError:  # another process inserted the same account first: its row is there now, update it
                if attempt:
                    raise

    # -- audit and review ---------------------------------------------------
    def record_audit(self, actor: str, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
        with self.engine.begin() as conn:
            self._audit(conn, actor, action, target, detail)

    def list_audit(self, limit: int = 100) -> list[dict[str, Any]]:
        query = select(schema.audit_log).order_by(schema.audit_log.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_plain(r) for r in conn.execute(query).mappings().all()]

    def add_review(self, subject: str, reason: str, evidence: Any = None) -> dict[str, Any]:
        row = {
            "review_id": _new_id("rev"),
            "ts": time.time(),
            "subject": subject,
            "reason": reason,
            "evidence": evidence,
            "status": "open",
        }
        with self.engine.begin() as conn:
            conn.execute(schema.reviews.insert().values(**row))
        return row

    def list_reviews(self, status: str | None = "open") -> list[dict[str, Any]]:
        query = select(schema.reviews).order_by(schema.reviews.c.ts)
        if status is not None:
            query = query.where(schema.reviews.c.status == status)
        with self.engine.connect() as conn:
            return [_plain(r) for r in conn.execute(query).mappings().all()]

    def resolve_review(self, review_id: str, status: str, actor: str, note: str | None = None) -> None:
        if status not in ("confirmed", "dismissed", "merged"):  # merged: folded into its cluster's item (policy engine)
            raise UsageError(f"status: expected 'confirmed' or 'dismissed', got {status!r}")
        with self.engine.begin() as conn:
            result = conn.execute(
                update(schema.reviews)
                .where(schema.reviews.c.review_id == review_id)
                .values(status=status, resolved_by=actor, note=note, resolved_at=time.time())
            )
            if result.rowcount == 0:
                raise NotFoundError(f"review {review_id!r} does not exist")
        self.record_audit(actor, f"review.{status}", review_id, {"note": note})
