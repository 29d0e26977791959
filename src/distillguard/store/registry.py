"""Accounts (and their hashed attributes), organisations, API keys, enrolled installs, manual policy overrides, audit log and review queue.

The registry is the slow, durable side of authentication. The gateway never
queries it per request: it loads :meth:`Registry.key_snapshot` into memory and
polls :meth:`Registry.change_counter` (one primary-key read) to notice changes
made by other processes, such as ``distillguard keys revoke``. The policy
engine does the same with :meth:`Registry.manual_overrides`.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from distillguard.events import format_ts
from distillguard.exceptions import NotFoundError, UsageError
from distillguard.store import schema
from distillguard.store.attributes import ATTRIBUTE_HASH, ATTRIBUTE_NAME
from distillguard.store.engine import DEFAULT_TIMEOUT_S, make_engine

__all__ = ["InstallKey", "KeyRecord", "Registry", "hash_secret", "new_secret"]

SECRET_PREFIX = "sk-dg-"
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


@dataclass(frozen=True)
class KeyRecord:
    """What the gateway's in-memory auth table holds for one key."""

    key_id: str
    secret_hash: str
    account_id: str
    org_id: str | None
    revoked: bool
    account_status: str
    key_limits: dict[str, int | None] = field(default_factory=dict)
    account_limits: dict[str, int | None] = field(default_factory=dict)


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

    def close(self) -> None:
        self.engine.dispose()

    # -- change tracking ---------------------------------------------------
    def _bump(self, conn: Any) -> None:
        conn.execute(
            update(schema.counters).where(schema.counters.c.name == "changes").values(value=schema.counters.c.value + 1)
        )

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
            self._bump(conn)
        return row

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
            self._bump(conn)

    def set_account_status(self, account_id: str, status: str, *, actor: str = "cli", reason: str | None = None) -> None:
        """Suspend or re-activate an account: its keys get a 403 ``account_suspended`` from the next request on."""
        if status not in ("active", "suspended"):
            raise UsageError(f"status: expected 'active' or 'suspended', got {status!r}")
        with self.engine.begin() as conn:
            self._require_account(conn, account_id)
            conn.execute(update(schema.accounts).where(schema.accounts.c.account_id == account_id).values(status=status))
            self._audit(conn, actor, f"account.{'suspend' if status == 'suspended' else 'activate'}", account_id, {"reason": reason})
            self._bump(conn)

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
            self._bump(conn)
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
            self._bump(conn)
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

    def key_snapshot(self) -> list[KeyRecord]:
        query = select(
            schema.api_keys.c.key_id,
            schema.api_keys.c.secret_hash,
            schema.api_keys.c.account_id,
            schema.api_keys.c.revoked,
            schema.api_keys.c.limits.label("key_limits"),
            schema.accounts.c.org_id,
            schema.accounts.c.status,
            schema.accounts.c.limits.label("account_limits"),
        ).join(schema.accounts, schema.accounts.c.account_id == schema.api_keys.c.account_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            KeyRecord(
                key_id=r["key_id"],
                secret_hash=r["secret_hash"],
                account_id=r["account_id"],
                org_id=r["org_id"],
                revoked=bool(r["revoked"]),
                account_status=r["status"],
                key_limits=dict(r["key_limits"] or {}),
                account_limits=dict(r["account_limits"] or {}),
            )
            for r in rows
        ]

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
