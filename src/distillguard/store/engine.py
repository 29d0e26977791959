"""Create SQLAlchemy engines with the settings each backend needs.

SQLite gets WAL journaling and ``synchronous=NORMAL`` so the event writer and
readers (export, admin API) do not block each other; PostgreSQL URLs are
rewritten to the psycopg 3 driver so users can write plain ``postgresql://``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from distillguard.exceptions import ConfigError

__all__ = ["make_engine"]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(database_url: str) -> Engine:
    """An engine for ``sqlite:///path`` or ``postgresql://user:pass@host/db``."""
    try:
        url = make_url(database_url)
    except Exception as exc:  # SQLAlchemy raises ArgumentError with a terse message
        raise ConfigError(f"database: not a database URL: {database_url!r} ({exc})") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 5})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if backend in ("postgresql", "postgres"):
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        return create_engine(url, pool_pre_ping=True, pool_size=4, connect_args={"connect_timeout": 5})
    raise ConfigError(f"database: unsupported backend {backend!r}; use sqlite:///FILE or postgresql://...")
