"""Shared indicators imported from other providers (table ``shared_indicators``, docs/indicators.md).

Upsert on (kind, value, source): importing the same or a newer bundle from a
provider again refreshes its rows instead of duplicating them. Every import
also bumps the ``indicators`` row of table ``counters`` in the same
transaction, so running scorers notice a change with one primary-key read
(:class:`IndicatorWatch`) instead of reloading the table on a timer.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from distillguard.indicators.model import KINDS, Indicator, IndicatorSet
from distillguard.store import schema

__all__ = ["CHECK_EVERY_S", "IndicatorStore", "IndicatorWatch"]

CHECK_EVERY_S = 5.0  # how often a running scorer reads the change counter: an import takes effect within this
_COUNTER = "indicators"


class IndicatorStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        schema.create_tables(engine)
        counters = schema.counters
        with engine.connect() as conn:
            exists = conn.execute(select(counters.c.value).where(counters.c.name == _COUNTER)).first()
        if exists is None:  # another process may create the row first: its IntegrityError rolls back only this
            with contextlib.suppress(IntegrityError), engine.begin() as conn:
                conn.execute(insert(counters).values(name=_COUNTER, value=0))

    def add(self, indicators: Iterable[Indicator], source: str) -> int:
        """Store ``indicators`` under ``source`` (replacing equal rows); returns how many distinct rows were written."""
        table = schema.shared_indicators
        rows = {(i.kind, i.value): i.stix_id for i in indicators}
        now = time.time()
        with self.engine.begin() as conn:
            for (kind, value), stix_id in rows.items():
                conn.execute(delete(table).where(table.c.kind == kind, table.c.value == value, table.c.source == source))
                conn.execute(insert(table).values(kind=kind, value=value, source=source, stix_id=stix_id, imported_at=now))
            counters = schema.counters
            conn.execute(update(counters).where(counters.c.name == _COUNTER).values(value=counters.c.value + 1))
        return len(rows)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(schema.shared_indicators)).scalar_one())

    def version(self) -> int:
        """The change counter: bumped by every import (0 before the first)."""
        counters = schema.counters
        with self.engine.connect() as conn:
            value = conn.execute(select(counters.c.value).where(counters.c.name == _COUNTER)).scalar()
        return int(value or 0)

    def load(self) -> list[Indicator]:
        table = schema.shared_indicators
        with self.engine.connect() as conn:
            rows = conn.execute(select(table.c.kind, table.c.value, table.c.source, table.c.stix_id)
                                .order_by(table.c.source, table.c.kind, table.c.value)).all()
        return [Indicator(kind, value, source=source, stix_id=stix_id) for kind, value, source, stix_id in rows if kind in KINDS]


class IndicatorWatch:
    """A running scorer's view of the store's imported indicators: loaded at start, reloaded when an import changes them.

    The one place that decides whether a scorer matches indicators: the
    gateways' child scorers (scorer_worker.py) and the fleet's central scorer
    (policy/central.py) each hold one. The first load happens in the
    constructor, before scoring starts; after that a daemon thread reads the
    change counter every ``check_every_s`` and the whole table only when the
    counter moved, and :meth:`poll` hands over what it loaded. The scoring loop
    therefore never waits for the store (a frozen database only delays new
    indicators). Store errors are reported through ``complain`` and leave the
    current indicators in force.
    """

    def __init__(self, database_url: str, *, check_every_s: float = CHECK_EVERY_S,
                 complain: Callable[[str], None] = print) -> None:
        from distillguard.store.engine import make_engine

        self.check_every_s = check_every_s
        self.complain = complain
        self.engine = make_engine(database_url)
        self.store: IndicatorStore | None = None
        self.version = -1
        self.current: IndicatorSet | None = None
        self._ready: IndicatorSet | None = None  # loaded by the thread, not yet handed over
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._check()
        self._thread = threading.Thread(target=self._loop, name="distillguard-indicator-watch", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        try:
            store = self.store = self.store or IndicatorStore(self.engine)
            version = store.version()
            if version == self.version:
                return
            loaded = IndicatorSet(store.load())
        except Exception as exc:  # scoring with the indicators we have beats not scoring
            self.complain(f"shared indicators not (re)loaded ({exc}); scoring with the {len(self.current or ())} loaded before")
            return
        first = self.version < 0
        self.version = version
        if first and not len(loaded):
            return  # none imported yet: the scanner keeps no detector for them
        with self._lock:
            self._ready = loaded

    def _loop(self) -> None:
        while not self._stop.wait(self.check_every_s):
            self._check()

    def poll(self) -> IndicatorSet | None:
        """The new indicator set when it changed since the last call (an empty one when all are gone), else None; never blocks."""
        if self._ready is None:
            return None
        with self._lock:
            ready, self._ready = self._ready, None
        self.current = ready
        return ready

    def close(self) -> None:
        """Stop watching; the thread, if a store call holds it, ends with the process (it is a daemon)."""
        self._stop.set()
        self._thread.join(0.5)
        if not self._thread.is_alive():
            self.engine.dispose()
