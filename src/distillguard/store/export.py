"""Stream events out of the store in time order, for `events export` and the admin API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from sqlalchemy import select

from distillguard.events import format_ts, parse_ts
from distillguard.store import schema
from distillguard.store.engine import DEFAULT_TIMEOUT_S, deadline_of, make_engine

__all__ = ["iter_event_lines", "iter_events", "normalise_since"]


def normalise_since(since: str) -> str:
    """Any ISO-8601 timestamp (offset or not) as the stored form, so string order is time order.

    Stored ``ts`` values are UTC with milliseconds and ``Z``; comparing a
    ``+02:00`` timestamp to them as text would be wrong. Raises ``ValueError``.
    """
    return format_ts(parse_ts(since.strip()))


def iter_event_lines(database_url: str, since: str | None = None, *, chunk: int = 2000,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[bytes]:
    """Raw JSON lines (no trailing newline) in ``ts`` order, fetched in chunks (bounded memory).

    An export may rightly take minutes (a slow consumer), so the store
    deadline bounds each fetch of ``chunk`` rows, not the whole export.
    """
    engine = make_engine(database_url, timeout_s=timeout_s)
    deadline = deadline_of(engine)
    schema.create_tables(engine)
    try:
        query = select(schema.events.c.body).order_by(schema.events.c.ts, schema.events.c.seq)
        if since:
            query = query.where(schema.events.c.ts >= normalise_since(since))
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=chunk).execute(query)
            dbapi_connection = conn.connection.dbapi_connection
            for n, (body,) in enumerate(result, 1):
                if deadline is not None and (n - 1) % chunk == 0:
                    deadline.disarm(dbapi_connection)  # this chunk is fetched: a slow consumer is no store hang
                yield body.encode() if isinstance(body, str) else body
                if deadline is not None and n % chunk == 0:
                    deadline.arm(dbapi_connection)  # the next row fetches the next chunk
    finally:
        engine.dispose()


def iter_events(database_url: str, since: str | None = None) -> Iterator[dict[str, Any]]:
    """Events as dicts in time order; ``since`` is an ISO-8601 timestamp (inclusive)."""
    for line in iter_event_lines(database_url, since):
        yield orjson.loads(line)
