"""Shared indicators imported from other providers (table ``shared_indicators``, docs/indicators.md).

Upsert on (kind, value, source): importing the same or a newer bundle from a
provider again refreshes its rows instead of duplicating them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import Engine, delete, func, insert, select

from distillguard.indicators.model import KINDS, Indicator
from distillguard.store import schema

__all__ = ["IndicatorStore"]


class IndicatorStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        schema.create_tables(engine)

    def add(self, indicators: Iterable[Indicator], source: str) -> int:
        """Store ``indicators`` under ``source`` (replacing equal rows); returns how many distinct rows were written."""
        table = schema.shared_indicators
        rows = {(i.kind, i.value): i.stix_id for i in indicators}
        now = time.time()
        with self.engine.begin() as conn:
            for (kind, value), stix_id in rows.items():
                conn.execute(delete(table).where(table.c.kind == kind, table.c.value == value, table.c.source == source))
                conn.execute(insert(table).values(kind=kind, value=value, source=source, stix_id=stix_id, imported_at=now))
        return len(rows)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(schema.shared_indicators)).scalar_one())

    def load(self) -> list[Indicator]:
        table = schema.shared_indicators
        with self.engine.connect() as conn:
            rows = conn.execute(select(table.c.kind, table.c.value, table.c.source, table.c.stix_id)
                                .order_by(table.c.source, table.c.kind, table.c.value)).all()
        return [Indicator(kind, value, source=source, stix_id=stix_id) for kind, value, source, stix_id in rows if kind in KINDS]
