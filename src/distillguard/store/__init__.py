"""Durable state: accounts, keys, installs, audit, review queue and the event log.

SQLite (WAL) is the default; PostgreSQL is used by giving a ``postgresql://`` URL.
"""

from distillguard.store.export import iter_event_lines, iter_events, normalise_since
from distillguard.store.registry import KeyRecord, Registry, hash_secret
from distillguard.store.sink import EventSink
from distillguard.store.wal import WriteAheadLog

__all__ = ["EventSink", "KeyRecord", "Registry", "hash_secret", "iter_event_lines", "iter_events", "normalise_since",
           "WriteAheadLog"]
