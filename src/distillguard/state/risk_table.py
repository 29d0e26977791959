"""Every account the fleet's central scorer scored, in Redis, so any replica can answer ``GET /admin/v1/accounts/{id}/risk``.

The risk snapshot in the database (store/risk.py) holds only the accounts at or
above ``detection.flag_threshold``: that is what replicas *enforce*, and what a
restart must keep. An analyst also asks about the accounts below it ("why is
this one at 0.3?"), which a single gateway answers from its own scorer's
report. With ``detection.scorer: central`` the replicas have no scorer of their
own, so the central scorer publishes its report's account entries to the Redis
hash :data:`KEY` (field: account id; value: the entry without the
``account_id`` it is filed under, compressed), and a replica's risk endpoint
reads the one field it is asked about — one ``HGET`` per admin request,
nothing on the request path, nothing held in the replica's memory.

Compact: an entry is ~2.3 KB of JSON, most of it the same keys and evidence
wording in every entry, which per-entry zlib barely shrinks (~1 KB). So entries
are deflated against a preset dictionary (``zlib``'s ``zdict``: 16 KB of JSON
from the scorer's first report, stored once at :data:`DICT_KEY` and kept
across scorer restarts): ~150 bytes per entry (bench/RESULTS.md, "The central
scorer's risk table"). Each value names its dictionary by CRC-32, so a reader
never decodes with the wrong one.

Incremental and bounded: :class:`RiskTablePublisher` sends only the entries
that changed since the last report (any field: score, level, cluster, evidence,
request count), at most ``max_per_report`` per report; the rest wait, latest
version only, oldest change first, for the next report. An entry the scanner
did not rebuild is the same object as in the last report, so finding the
changed ones costs one identity test per account; rebuilt entries are compared
by value (a rebuilt entry is often equal). The previous report's entries are
the ones the policy engine holds anyway. A publish that fails (Redis down)
keeps its entries waiting and is logged once per outage.

Redis losing its data (restart without persistence, flush) empties the hash:
the scorer notices that the hash is gone (one ``EXISTS`` per report) and
publishes every entry again, bounded per report as above.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis

from distillguard.state.types import StateUnavailable

__all__ = ["DICT_KEY", "KEY", "EntryCodec", "MAX_PER_REPORT", "PublishStats", "PublishedRisk", "RedisRiskTable", "RiskTablePublisher"]

log = logging.getLogger("distillguard.state.risk_table")

KEY = "dg:risk:accounts"
DICT_KEY = "dg:risk:zdict"  # the preset dictionary the values are deflated against
DICT_BYTES = 16_384  # as long as the deflate window (WBITS): a longer dictionary would not be used
WBITS = 14  # a 16 KB window and memLevel 4: the state copied per entry is small, and entries compress as with 32 KB
MEM_LEVEL = 4
DICT_SAMPLE = 200  # entries of the first report the dictionary is taken from
_HEADER = struct.Struct("!BI")  # format 1, CRC-32 of the dictionary
_FORMAT = 1
MAX_PER_REPORT = 20_000  # entries sent per report at most (a first report at 100,000 accounts takes five)
CHUNK = 1_000  # fields per HSET command


class PublishedRisk(Protocol):
    """What a replica's admin endpoint needs: the published entry of one account, or None (blocking: call it in a thread).

    ``get`` raises :class:`~distillguard.state.StateUnavailable` when the table cannot be read."""

    def get(self, account_id: str) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


class EntryCodec:
    """An entry ↔ its stored value: JSON without ``account_id``, raw deflate against the preset dictionary ``zdict``."""

    def __init__(self, zdict: bytes) -> None:
        self.zdict = zdict
        self.crc = zlib.crc32(zdict)
        # Copied per entry: the dictionary is hashed once, not for every entry (52 → ~16 µs per entry).
        self._base = zlib.compressobj(6, zlib.DEFLATED, -WBITS, MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY, zdict)
        self._header = _HEADER.pack(_FORMAT, self.crc)

    @classmethod
    def sampled(cls, entries: Sequence[Mapping[str, Any]]) -> EntryCodec:
        """A dictionary from ``DICT_SAMPLE`` entries spread over a report (the last ``DICT_BYTES`` of their JSON)."""
        step = max(1, len(entries) // DICT_SAMPLE)
        sample = b"".join(_json(entry) for entry in entries[::step][:DICT_SAMPLE])
        return cls(sample[-DICT_BYTES:])

    def encode(self, entry: Mapping[str, Any]) -> bytes:
        deflate = self._base.copy()
        return self._header + deflate.compress(_json(entry)) + deflate.flush()

    def decode(self, account_id: str, value: bytes) -> dict[str, Any]:
        inflate = zlib.decompressobj(-WBITS, zdict=self.zdict)
        entry: dict[str, Any] = {"account_id": account_id, **orjson.loads(inflate.decompress(value[_HEADER.size:]) + inflate.flush())}
        return entry


def _json(entry: Mapping[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in entry.items() if k != "account_id"})


def _as_bytes(value: bytes | str) -> bytes:
    """A reply as bytes (a client made with ``decode_responses`` would give str, which cannot hold deflate data)."""
    if isinstance(value, str):
        raise TypeError("the risk table needs a Redis client without decode_responses (its values are binary)")
    return value


def _dictionary_of(value: bytes) -> int:
    """The CRC-32 of the dictionary a stored value was deflated against (ValueError: not a value of this format)."""
    if len(value) < _HEADER.size:
        raise ValueError("too short")
    version, crc = _HEADER.unpack_from(value)
    if version != _FORMAT:
        raise ValueError(f"format {version}, expected {_FORMAT}")
    return int(crc)


class RedisRiskTable:
    """A replica's reader of :data:`KEY`."""

    def __init__(self, url: str, *, timeout_s: float = 1.0) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._codec: EntryCodec | None = None  # the dictionary, read once (again only if the scorer's changes)

    def get(self, account_id: str) -> dict[str, Any] | None:
        try:
            found = self._client.hget(KEY, account_id)
            if found is None:
                return None
            raw = _as_bytes(found)
            crc = _dictionary_of(raw)
            if self._codec is None or self._codec.crc != crc:
                stored = self._client.get(DICT_KEY)
                zdict = None if stored is None else _as_bytes(stored)
                if zdict is None or zlib.crc32(zdict) != crc:
                    raise StateUnavailable(f"the risk table's dictionary ({DICT_KEY}) is missing or not the one {account_id!r}'s "
                                           "entry was written with; the central scorer writes it again with its next report")
                self._codec = EntryCodec(zdict)
            return self._codec.decode(account_id, raw)
        except redis.RedisError as exc:
            raise StateUnavailable(f"the central scorer's risk table in Redis ({KEY}) cannot be read: {exc}") from exc
        except (ValueError, zlib.error, orjson.JSONDecodeError) as exc:
            raise StateUnavailable(f"the risk table's entry for {account_id!r} in Redis ({KEY}) is not readable ({exc}); "
                                   "the central scorer rewrites it when the account's risk next changes") from exc

    def close(self) -> None:
        self._client.close()


@dataclass
class PublishStats:
    """What one :meth:`RiskTablePublisher.publish` did (the scorer logs and counts them)."""

    changed: int = 0  # entries of this report that differ from the last report's
    sent: int = 0  # entries written to Redis now
    waiting: int = 0  # changed entries not yet written (over the bound, or Redis failed)
    bytes: int = 0  # value bytes written now (compressed)


class RiskTablePublisher:
    """The central scorer's writer of :data:`KEY`; see the module docstring. Not thread-safe: the scoring thread calls it."""

    def __init__(self, client: redis.Redis, *, max_per_report: int = MAX_PER_REPORT) -> None:
        self._client = client
        self.max_per_report = max_per_report
        self._previous: dict[str, Mapping[str, Any]] = {}  # the last report's entries, by account (identity tells "unchanged")
        self._waiting: dict[str, Mapping[str, Any]] = {}  # changed, not yet written: latest version, oldest change first
        self._failing = False
        self._codec: EntryCodec | None = None  # Redis's dictionary if it has one, else made from the first report
        self.published = 0  # entries written since start

    def publish(self, entries: Iterable[Mapping[str, Any]]) -> PublishStats:
        stats = PublishStats()
        previous, waiting = self._previous, self._waiting
        current: dict[str, Mapping[str, Any]] = {}
        for entry in entries:
            account = str(entry["account_id"])
            current[account] = entry
            last = previous.get(account)
            if entry is last:
                continue
            if last is not None and entry == last:
                continue
            stats.changed += 1
            waiting[account] = entry  # an account already waiting keeps its place with its newer entry
        self._previous = current
        try:
            if self._codec is None:
                if not current:
                    return stats
                self._codec = self._dictionary(list(current.values()))
            elif self._client.exists(KEY, DICT_KEY) < 2 and self.published:  # Redis lost the table: everything again
                log.warning("risk table: %s is gone from Redis (restarted without persistence or flushed); publishing all "
                            "%d entries again, at most %d per report", KEY, len(current), self.max_per_report)
                self._client.set(DICT_KEY, self._codec.zdict)
                waiting.update((a, e) for a, e in current.items() if a not in waiting)
            stats.sent, stats.bytes = self._send(waiting, self._codec)
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("risk table: cannot write to Redis (%s); %d changed entries wait for the next report", exc, len(waiting))
            self._failing = True
        else:
            if self._failing:
                log.info("risk table: Redis answers again; publishing resumes")
            self._failing = False
        stats.waiting = len(waiting)
        return stats

    def _dictionary(self, entries: Sequence[Mapping[str, Any]]) -> EntryCodec:
        """Redis's dictionary (a restarted scorer keeps the one its entries were written with), or a new one, stored."""
        stored = self._client.get(DICT_KEY)
        if stored:
            return EntryCodec(_as_bytes(stored))
        codec = EntryCodec.sampled(entries)
        self._client.set(DICT_KEY, codec.zdict)
        return codec

    def _send(self, waiting: dict[str, Mapping[str, Any]], codec: EntryCodec) -> tuple[int, int]:
        """Write the oldest ``max_per_report`` waiting entries; each leaves the queue once its chunk is written."""
        sent = size = 0
        while waiting and sent < self.max_per_report:
            accounts = []
            mapping: dict[str, bytes] = {}
            for account, entry in waiting.items():
                mapping[account] = value = codec.encode(entry)
                size += len(value)
                accounts.append(account)
                if len(accounts) >= min(CHUNK, self.max_per_report - sent):
                    break
            self._client.hset(KEY, mapping=mapping)  # type: ignore[arg-type]  # redis-py's hints want a mapping of str | bytes | int | float
            for account in accounts:
                del waiting[account]
            sent += len(accounts)
            self.published += len(accounts)
        return sent, size
