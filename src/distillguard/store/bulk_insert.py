"""Many rows into one table inside an open transaction: ``COPY`` on PostgreSQL, one ``executemany`` on SQLite.

SQLAlchemy's Core insert spends more time building each row's parameters
than the database spends storing it (about half of a 10,000-account bulk
creation, measured), and on PostgreSQL its executemany sends one statement per
row. Bulk account creation (:meth:`Registry.create_accounts`) writes tens of
thousands of rows at a time, so it hands prepared tuples to the driver
directly: ``COPY … FROM STDIN`` through psycopg, or the sqlite3 module's
``executemany``. JSON columns are serialised here, as SQLAlchemy would have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import JSON, Connection, Table

__all__ = ["insert_rows"]


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys, column names of ``table``) in ``conn``'s transaction."""
    if not rows:
        return
    columns = list(rows[0])
    unknown = [c for c in columns if c not in table.c]
    if unknown:
        raise ValueError(f"insert_rows: {table.name} has no column(s) {unknown}")
    json_columns = {c for c in columns if isinstance(table.c[c].type, JSON)}
    data = [tuple(orjson.dumps(row[c]).decode() if c in json_columns else row[c] for c in columns) for row in rows]
    names = ", ".join(columns)
    if conn.dialect.name == "postgresql":
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
            for row in data:
                copy.write_row(row)
        return
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' * len(columns))})", data)
