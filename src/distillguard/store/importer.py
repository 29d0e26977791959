"""`distillguard events import`: load an event log (JSONL, gzip, stdin) into the store.

For migrations (a log exported from another database) and for the console's
scale benchmark. Rows are the event sink's own (:func:`event_row`), written in
batches with the request id as the idempotency key: an event already stored is
skipped, so an import that stopped half-way can simply be run again. The read
is strict: the first line that is not an event stops the import with its file
and line number, after the batches before it are committed (say so, fix it,
run again).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from distillguard.events import EventFormatError, read_events
from distillguard.exceptions import InputError
from distillguard.store import schema
from distillguard.store.engine import make_engine
from distillguard.store.registry import Registry
from distillguard.store.sink import event_row

__all__ = ["ImportResult", "import_events"]

BATCH = 5000


@dataclass(frozen=True)
class ImportResult:
    read: int  # events read from the files
    stored: int  # rows new in the store (read minus those already there)


def import_events(database_url: str, paths: Iterable[str], *, batch: int = BATCH) -> ImportResult:
    Registry(database_url).close()  # creates or migrates the schema, as every other entry point does
    engine = make_engine(database_url)
    insert = sqlite_insert if engine.dialect.name == "sqlite" else pg_insert
    statement = insert(schema.events).on_conflict_do_nothing(index_elements=["request_id"])
    read = 0
    try:
        with engine.connect() as conn:
            before = int(conn.execute(select(func.count()).select_from(schema.events)).scalar() or 0)
        rows: list[dict[str, object]] = []
        try:
            for event in read_events(list(paths), strict=True):
                rows.append(event_row(dict(event)))
                read += 1
                if len(rows) >= batch:
                    with engine.begin() as conn:
                        conn.execute(statement, rows)
                    rows = []
        except EventFormatError as exc:
            if rows:
                with engine.begin() as conn:
                    conn.execute(statement, rows)
            raise InputError(f"{exc}; the {read} events before it are stored — fix the line and run the import again "
                             "(stored events are skipped)") from None
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise InputError(f"{exc.filename}: {exc.strerror}") from None
        if rows:
            with engine.begin() as conn:
                conn.execute(statement, rows)
        with engine.connect() as conn:
            after = int(conn.execute(select(func.count()).select_from(schema.events)).scalar() or 0)
    finally:
        engine.dispose()
    return ImportResult(read=read, stored=after - before)
