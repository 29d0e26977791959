"""The online scorer's durable side: its published decisions, and the recent events it rebuilds itself from.

Every gateway process scores in memory (``policy.online``); without this a
restart forgot every flag, throttle and cluster. Two things make them survive:

- a **snapshot** (table ``risk_snapshot``, one row holding a JSON document) of
  the accounts at or above the flag threshold and the flagged clusters. Each
  gateway process merges its own view into it off the hot path and reads it
  back, so it is loaded before the first request after a restart, and other
  gateway processes on the same database see each other's decisions;
- a **replay** of the most recent events of the event log into a fresh
  scorer (bounded in age and count), so the detectors' state is rebuilt rather
  than starting empty.

Merge rule, per account and per cluster: an entry is replaced by one with an
equal or higher score from any writer, or by any entry from the writer that
wrote it (its scorer changed its mind); a writer removes only its own
entries. So with several gateways the strongest view wins, and an entry left
by a process that is gone stays until some scorer reaches it again or an
operator overrides the account (docs/policy.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, TypedDict

import orjson
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from distillguard.events import format_ts
from distillguard.store import schema

__all__ = ["RiskDocument", "RiskStore", "recent_events"]

_ROW = "latest"


class RiskDocument(TypedDict):
    """The snapshot: entries are the scan report's (DESIGN §5) plus ``writer``, the gateway process that wrote them."""

    ts: float
    accounts: dict[str, dict[str, Any]]
    clusters: dict[str, dict[str, Any]]


def _score(entry: dict[str, Any]) -> float:
    return float(max(entry.get("distillation_score", 0.0), entry.get("reseller_score", 0.0))) if "distillation_score" in entry \
        else float(entry.get("score", 0.0))


def _merge(stored: dict[str, dict[str, Any]], mine: dict[str, dict[str, Any]], writer: str) -> dict[str, dict[str, Any]]:
    merged = {k: e for k, e in stored.items() if e.get("writer") != writer or k in mine}  # my entries I no longer hold go
    for key, entry in mine.items():
        old = merged.get(key)
        if old is None or old.get("writer") == writer or _score(entry) >= _score(old):
            merged[key] = {**entry, "writer": writer}
    return merged


class RiskStore:
    """Read and merge the snapshot; synchronous (the policy engine calls it from its writer thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load(self) -> RiskDocument:
        table = schema.risk_snapshot
        with self.engine.connect() as conn:
            row = conn.execute(select(table.c.document).where(table.c.name == _ROW)).first()
        document = row[0] if row is not None else None
        if isinstance(document, (bytes, str)):
            document = orjson.loads(document)
        if not isinstance(document, dict):
            return {"ts": 0.0, "accounts": {}, "clusters": {}}
        return {"ts": float(document.get("ts", 0.0)), "accounts": dict(document.get("accounts") or {}),
                "clusters": dict(document.get("clusters") or {})}

    def stamp(self) -> float | None:
        """The stored snapshot's time (None without one): one small read, so a process that polls the snapshot
        decodes the whole document only when another writer changed it (a document of thousands of flagged entries
        is megabytes of JSON, and every gateway process and the central scorer poll every ``snapshot_every_s``)."""
        table = schema.risk_snapshot
        with self.engine.connect() as conn:
            value = conn.execute(select(table.c.ts).where(table.c.name == _ROW)).scalar()
        return None if value is None else float(value)

    def merge(self, writer: str, accounts: Iterable[dict[str, Any]], clusters: Iterable[dict[str, Any]]) -> RiskDocument:
        """Merge one writer's flagged accounts and clusters (its whole current view) and return the stored result.

        Read-modify-write in one transaction. Two writers racing may lose one
        merge; each writer merges its whole view again with its next report,
        so the snapshot converges (it is not the event log).
        """
        table = schema.risk_snapshot
        mine_accounts = {e["account_id"]: e for e in accounts}
        mine_clusters = {c["cluster_id"]: c for c in clusters}
        for attempt in range(2):
            try:
                with self.engine.begin() as conn:
                    row = conn.execute(select(table.c.document).where(table.c.name == _ROW).with_for_update()).first()
                    stored = row[0] if row is not None else {}
                    if isinstance(stored, (bytes, str)):
                        stored = orjson.loads(stored)
                    document: RiskDocument = {
                        "ts": time.time(),
                        "accounts": _merge(dict(stored.get("accounts") or {}), mine_accounts, writer),
                        "clusters": _merge(dict(stored.get("clusters") or {}), mine_clusters, writer),
                    }
                    if row is None:
                        conn.execute(table.insert().values(name=_ROW, ts=document["ts"], document=document))
                    else:
                        conn.execute(update(table).where(table.c.name == _ROW).values(ts=document["ts"], document=document))
                return document
            except IntegrityError:  # another process inserted the row first: merge into it
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def clear(self) -> None:
        """Forget every stored decision (tests, and an operator starting over)."""
        with self.engine.begin() as conn:
            conn.execute(delete(schema.risk_snapshot))

    def last_event_seq(self) -> int:
        """The newest event's sequence number (0 without events): the replay stops there, live events follow it."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(schema.events.c.seq))).scalar() or 0)


def recent_events(engine: Engine, *, upto_seq: int, max_events: int, max_age_s: float, chunk: int = 2000) -> Iterator[bytes]:
    """The last ``max_events`` events up to ``upto_seq`` and at most ``max_age_s`` old, oldest first, as JSON lines.

    Sequence order is the order the sink wrote them (time order to within a
    batch). Fetched in chunks by sequence number, so memory stays bounded.
    """
    table = schema.events
    if max_events <= 0 or upto_seq <= 0:
        return
    since = format_ts(time.time() - max_age_s)
    with engine.connect() as conn:
        lower = conn.execute(select(table.c.seq).where(table.c.seq <= upto_seq).order_by(table.c.seq.desc())
                             .offset(max_events).limit(1)).scalar() or 0
    while lower < upto_seq:
        with engine.connect() as conn:
            rows = conn.execute(select(table.c.seq, table.c.body)
                                .where(table.c.seq > lower, table.c.seq <= upto_seq, table.c.ts >= since)
                                .order_by(table.c.seq).limit(chunk)).all()
        if not rows:
            return
        for _, body in rows:
            yield body.encode() if isinstance(body, str) else body
        lower = rows[-1][0]
