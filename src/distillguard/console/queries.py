"""The console's reads from the store: every query is indexed, bounded and paginated.

The console must stay fast with millions of events (LiteLLM's log page takes
40-60 s at that size), so no page ever loads "all events": an account's
timeline reads its newest rows through ``ix_events_account_ts``, the events
search walks ``ix_events_ts`` (or the account index) backwards with a keyset
cursor, the audit log pages by primary key, an account's trail uses
``ix_audit_target``. Synchronous (SQLAlchemy): call from a thread.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import orjson
from sqlalchemy import Engine, and_, func, or_, select, tuple_

from distillguard.store import schema

__all__ = ["Store"]

MAX_SEARCH = 2000  # accounts a search may match before it is cut (then sorted by risk in memory)


def _row(row: Any) -> dict[str, Any]:
    return {str(k): v for k, v in row.items()}


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- accounts -----------------------------------------------------------------------------------
    def accounts_by_id(self, ids: Collection[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        table = schema.accounts
        with self.engine.connect() as conn:
            rows = conn.execute(select(table).where(table.c.account_id.in_(list(ids)))).mappings().all()
        return {r["account_id"]: _row(r) for r in rows}

    def search_accounts(self, text: str) -> list[dict[str, Any]]:
        """Accounts whose id is ``text`` or whose name or org contains it (case-insensitive), at most ``MAX_SEARCH``."""
        table = schema.accounts
        pattern = f"%{text.lower()}%"
        query = (select(table).where(or_(table.c.account_id == text, func.lower(table.c.name).like(pattern),
                                         func.lower(table.c.org_id).like(pattern)))
                 .order_by(table.c.account_id).limit(MAX_SEARCH))
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings().all()]

    def newest_accounts(self, offset: int, limit: int, exclude: Collection[str] = ()) -> list[dict[str, Any]]:
        table = schema.accounts
        query = select(table).order_by(table.c.created_at.desc(), table.c.account_id).offset(offset).limit(limit)
        if exclude:
            query = query.where(table.c.account_id.not_in(list(exclude)))
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings().all()]

    def accounts_with_status(self, status: str) -> list[dict[str, Any]]:
        table = schema.accounts
        with self.engine.connect() as conn:
            rows = conn.execute(select(table).where(table.c.status == status).limit(MAX_SEARCH)).mappings().all()
        return [_row(r) for r in rows]

    def count_accounts(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(schema.accounts)).scalar() or 0)

    def keys(self, account_id: str) -> list[dict[str, Any]]:
        table = schema.api_keys
        query = (select(table.c.key_id, table.c.prefix, table.c.revoked, table.c.limits, table.c.created_at, table.c.revoked_at)
                 .where(table.c.account_id == account_id).order_by(table.c.created_at))
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings().all()]

    # -- events -------------------------------------------------------------------------------------
    def account_events(self, account_id: str, limit: int) -> list[dict[str, Any]]:
        """The account's newest ``limit`` events, newest first (``ix_events_account_ts``)."""
        table = schema.events
        query = (select(table.c.seq, table.c.body).where(table.c.account_id == account_id)
                 .order_by(table.c.ts.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [orjson.loads(body) | {"_seq": seq} for seq, body in conn.execute(query).all()]

    def search_events(self, *, account_id: str | None, endpoint: str | None, since: str | None, until: str | None,
                      before: tuple[str, int] | None, limit: int) -> list[dict[str, Any]]:
        """Events newest first, filtered, ``limit`` per page; ``before`` is the last row's ``(ts, seq)`` (keyset paging).

        The endpoint filter is applied while walking the time index, so a page of a rare endpoint may read more rows;
        the walk is capped at ``50 × limit`` rows per page to keep the worst case bounded.
        """
        table = schema.events
        conditions = []
        if account_id:
            conditions.append(table.c.account_id == account_id)
        if since:
            conditions.append(table.c.ts >= since)
        if until:
            conditions.append(table.c.ts < until)
        if before is not None:
            conditions.append(tuple_(table.c.ts, table.c.seq) < tuple_(before[0], before[1]))
        inner = select(table.c.seq, table.c.ts, table.c.endpoint, table.c.body)
        if conditions:
            inner = inner.where(and_(*conditions))
        inner = inner.order_by(table.c.ts.desc(), table.c.seq.desc())
        if endpoint:
            walked = inner.limit(limit * 50).subquery()
            query = select(walked).where(walked.c.endpoint == endpoint).order_by(walked.c.ts.desc(), walked.c.seq.desc()).limit(limit)
        else:
            query = inner.limit(limit)
        with self.engine.connect() as conn:
            return [orjson.loads(body) | {"_seq": seq} for seq, _ts, _endpoint, body in conn.execute(query).all()]

    def count_events_since(self, since: str) -> int:
        """Events stored at or after ``since`` (a range count on ``ix_events_ts``: bounded by recent traffic)."""
        table = schema.events
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table).where(table.c.ts >= since)).scalar() or 0)

    def count_reviews(self, status: str | None) -> int:
        table = schema.reviews
        query = select(func.count()).select_from(table)
        if status:
            query = query.where(table.c.status == status)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    # -- audit --------------------------------------------------------------------------------------
    def audit(self, *, target: str | None = None, before_id: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
        table = schema.audit_log
        query = select(table).order_by(table.c.id.desc()).limit(limit)
        if target is not None:
            query = query.where(table.c.target == target)
        if before_id is not None:
            query = query.where(table.c.id < before_id)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings().all()]

    def reviews(self, status: str | None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        table = schema.reviews
        query = select(table).order_by(table.c.ts.desc(), table.c.review_id).offset(offset).limit(limit)
        if status:
            query = query.where(table.c.status == status)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings().all()]
