"""The database schema, one SQLAlchemy Core ``MetaData`` for SQLite and PostgreSQL.

Core rather than the ORM: the event sink inserts thousands of rows per batch and
the registry's queries are simple, so mapped classes would add cost and nothing
else. ``create_all`` is idempotent and creates missing tables (and their
indexes); it never alters an existing table, so there is no schema version and
no migration step: a change to an existing table needs one written for it.
Use :func:`create_tables` rather than ``create_all``: several gateways started
at once on an empty PostgreSQL database would otherwise race to create the
same tables and all but one fail to start.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.exc import OperationalError

__all__ = ["create_tables", "metadata", "accounts", "api_keys", "installs", "events", "audit_log", "reviews", "counters",
           "manual_overrides", "account_attributes", "account_external_ids", "risk_snapshot", "key_changes", "shared_indicators"]

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("org_id", String(200), nullable=True, index=True),
    Column("status", String(20), nullable=False, default="active"),
    Column("limits", JSON, nullable=True),
    Column("created_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("account_id", String(64), ForeignKey("accounts.account_id"), nullable=False, index=True),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(20), nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("limits", JSON, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

installs = Table(
    "installs",
    metadata,
    Column("install_id", String(128), primary_key=True),
    Column("key_id", String(64), nullable=False, index=True),
    Column("account_id", String(64), nullable=False),
    Column("public_key", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, unique=True),
    Column("ts", String(32), nullable=False),
    Column("account_id", String(64), nullable=True),
    Column("endpoint", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Index("ix_events_ts", "ts"),
    Index("ix_events_account_ts", "account_id", "ts"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False, index=True),
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(200), nullable=False),
    Column("detail", JSON, nullable=True),
    Index("ix_audit_target", "target", "id"),  # an account's trail in the console without reading the whole log
)

reviews = Table(
    "reviews",
    metadata,
    Column("review_id", String(64), primary_key=True),
    Column("ts", Float, nullable=False),
    Column("subject", String(200), nullable=False, index=True),
    Column("reason", Text, nullable=False),
    Column("evidence", JSON, nullable=True),
    Column("status", String(20), nullable=False, default="open"),
    Column("resolved_by", String(200), nullable=True),
    Column("note", Text, nullable=True),
    Column("resolved_at", Float, nullable=True),
)

counters = Table(
    "counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# Which keys and accounts each registry change touched (Registry.key_changes_since), so a gateway applies a change to
# its key table by reloading those few keys instead of all of them. ``seq`` is the ``changes`` counter value of the
# transaction (one bulk import writes one value on many rows); rows older than an hour are pruned and the highest pruned
# ``seq`` is kept in ``counters`` (``key_changes_pruned``): a gateway that fell further behind reloads its whole table.
key_changes = Table(
    "key_changes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("seq", BigInteger, nullable=False, index=True),
    Column("key_id", String(64), nullable=True),
    Column("account_id", String(64), nullable=True),
    Column("ts", Float, nullable=False),
)

# The manual policy overrides in force (docs/policy.md), one row per account; ``clear`` deletes the row.
# The audit log keeps their history; this table is the current state (see Registry.manual_overrides).
# No foreign key: an override may name an account the registry does not know (yet).
manual_overrides = Table(
    "manual_overrides",
    metadata,
    Column("account_id", String(200), primary_key=True),
    Column("action", String(20), nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("ts", Float, nullable=False),
)

# The caller's own id for an account created in bulk (``external_id`` of ``POST /admin/v1/accounts/bulk`` and of
# ``accounts import`` lines): unique, so a retried batch (a timeout, a re-run import) finds its accounts instead of
# creating them twice. A table of its own rather than a column: ``create_all`` adds missing tables to an existing
# database, never columns.
account_external_ids = Table(
    "account_external_ids",
    metadata,
    Column("external_id", String(200), primary_key=True),
    Column("account_id", String(64), ForeignKey("accounts.account_id"), nullable=False, index=True),
    Column("created_at", Float, nullable=False),
)

# Operator-supplied account attributes (signup e-mail domain, payment fingerprint, …), stored only as keyed hashes
# ("h1:" + 32 hex, store/attributes.py): detection needs to know which accounts share a value, never the value.
account_attributes = Table(
    "account_attributes",
    metadata,
    Column("account_id", String(64), ForeignKey("accounts.account_id"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("value_hash", String(40), nullable=False, index=True),
    Column("updated_at", Float, nullable=False),
)

# The online scorer's latest published decisions (docs/policy.md, "Restarts and several gateways"): one row, a JSON
# document of the accounts at or above the flag threshold and the flagged clusters, merged by every gateway process
# off the hot path and loaded at start, so a restart keeps flags, throttles, blocks and clusters.
risk_snapshot = Table(
    "risk_snapshot",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("ts", Float, nullable=False),
    Column("document", JSON, nullable=False),
)

# Indicators imported from other providers' STIX 2.1 bundles (`distillguard indicators import`, docs/indicators.md):
# one row per (kind, value, source); a re-import of the same bundle updates rather than duplicates.
shared_indicators = Table(
    "shared_indicators",
    metadata,
    Column("kind", String(20), primary_key=True),
    Column("value", String(200), primary_key=True),
    Column("source", String(200), primary_key=True),
    Column("stix_id", String(100), nullable=True),
    Column("imported_at", Float, nullable=False),
)


_SCHEMA_LOCK = 0x64670001  # an arbitrary advisory-lock id ("dg" + 1) that only schema creation takes


def create_tables(engine: Engine) -> None:
    """Create missing tables and indexes; safe when several processes do it at once.

    On PostgreSQL the check-then-create runs in one transaction under an
    advisory lock, so a process that waited finds the tables another created
    (PostgreSQL's DDL is transactional) instead of failing on a duplicate
    type. SQLite has no such lock and ``create_all`` checks before it creates,
    so two processes starting on a fresh file can both decide to create a
    table: the loser's "already exists" is retried, and the retry's check then
    finds the winner's table.
    """
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _SCHEMA_LOCK})
                metadata.create_all(conn)
            return
        except OperationalError as exc:
            if engine.dialect.name != "sqlite" or "already exists" not in str(exc) or attempt == 4:
                raise
