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
version only, oldest change first, for the next report. The scanner says which
entries it rebuilt (``Scanner.rebuilt``); the others are unchanged, so finding
the changed ones costs one set lookup per account, and a rebuilt entry is
compared with the hash of the JSON last written for it (a rebuilt entry is
often equal). Only those hashes are kept, not the last report's entries: those
kept the old version of every rebuilt entry alive while the scanner built the
next report. A publish that fails (Redis down) keeps its entries waiting and is
logged once per outage.

Redis losing its data (restart without persistence, flush) empties the hash:
the scorer notices that the hash is gone (one ``EXISTS`` per report) and
publishes every entry again, bounded per report as above.

A bounded life for what the scorer no longer holds: each publisher takes a new
*generation* (``INCR`` :data:`GENERATION_KEY`) and every value it writes carries
that generation and the time of the report that wrote it (the reader returns
them as ``published``, with whether that generation is the current one). A
restarted scorer holds only what it replayed, so once its first publication is
complete (nothing waiting) it sweeps the hash (``HSCAN``, at most
``max_per_report`` fields a report) and deletes every field of an account it
does not hold: an entry outlives the scorer that wrote it by that first
publication and one sweep, not for ever. An account a running scorer stops
holding is deleted at the report that no longer has it.
"""

from __future__ import annotations

import datetime as dt
import logging
import struct
import time
import zlib
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis

from distillguard.state.types import StateUnavailable

__all__ = ["DICT_KEY", "GENERATION_KEY", "KEY", "EntryCodec", "MAX_PER_REPORT", "PublishStats", "PublishedRisk", "RedisRiskTable",
           "RiskTablePublisher"]

log = logging.getLogger("distillguard.state.risk_table")

KEY = "dg:risk:accounts"
DICT_KEY = "dg:risk:zdict"  # the preset dictionary the values are deflated against
GENERATION_KEY = "dg:risk:generation"  # a counter: each publisher (scorer process) takes the next value
DICT_BYTES = 16_384  # as long as the deflate window (WBITS): a longer dictionary would not be used
WBITS = 14  # a 16 KB window and memLevel 4: the state copied per entry is small, and entries compress as with 32 KB
MEM_LEVEL = 4
DICT_SAMPLE = 200  # entries of the first report the dictionary is taken from
_HEADER_V1 = struct.Struct("!BI")  # format 1, CRC-32 of the dictionary (written before generations; still read)
_HEADER = struct.Struct("!BIII")  # format 2, CRC-32 of the dictionary, the publisher's generation, the report's unix time
_FORMAT = 2
MAX_PER_REPORT = 20_000  # entries sent per report at most (a first report at 100,000 accounts takes five)
CHUNK = 1_000  # fields per HSET command


class PublishedRisk(Protocol):
    """What a replica's admin endpoint needs: the published entry of one account, or None (blocking: call it in a thread).

    ``get`` raises :class:`~distillguard.state.StateUnavailable` when the table cannot be read."""

    def get(self, account_id: str) -> dict[str, Any] | None: ...

    def get_many(self, account_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The published entries of those of ``account_ids`` that have one (one round trip)."""

    def close(self) -> None: ...


class EntryCodec:
    """An entry ↔ its stored value: JSON without ``account_id``, raw deflate against the preset dictionary ``zdict``."""

    def __init__(self, zdict: bytes, generation: int = 0) -> None:
        self.zdict = zdict
        self.crc = zlib.crc32(zdict)
        self.generation = generation
        # Copied per entry: the dictionary is hashed once, not for every entry (52 → ~16 µs per entry).
        self._base = zlib.compressobj(6, zlib.DEFLATED, -WBITS, MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY, zdict)
        self.stamp(time.time())

    def stamp(self, when: float) -> None:
        """Values encoded from now on say they were written by the report of ``when`` (unix seconds)."""
        self._header = _HEADER.pack(_FORMAT, self.crc, self.generation, int(when))

    @classmethod
    def sampled(cls, entries: Sequence[Mapping[str, Any]]) -> EntryCodec:
        """A dictionary from ``DICT_SAMPLE`` entries spread over a report (the last ``DICT_BYTES`` of their JSON)."""
        step = max(1, len(entries) // DICT_SAMPLE)
        sample = b"".join(_json(entry) for entry in entries[::step][:DICT_SAMPLE])
        return cls(sample[-DICT_BYTES:])

    def encode(self, entry: Mapping[str, Any]) -> bytes:
        return self.encode_json(_json(entry))

    def encode_json(self, data: bytes) -> bytes:
        """The stored value of an entry already serialised by :func:`_json`."""
        deflate = self._base.copy()
        return self._header + deflate.compress(data) + deflate.flush()

    def decode(self, account_id: str, value: bytes) -> dict[str, Any]:
        inflate = zlib.decompressobj(-WBITS, zdict=self.zdict)
        body = value[_HEADER.size if value[0] == _FORMAT else _HEADER_V1.size:]
        entry: dict[str, Any] = {"account_id": account_id, **orjson.loads(inflate.decompress(body) + inflate.flush())}
        return entry


def _json(entry: Mapping[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in entry.items() if k != "account_id"})


def _as_bytes(value: bytes | str) -> bytes:
    """A reply as bytes (a client made with ``decode_responses`` would give str, which cannot hold deflate data)."""
    if isinstance(value, str):
        raise TypeError("the risk table needs a Redis client without decode_responses (its values are binary)")
    return value


def _header_of(value: bytes) -> tuple[int, int | None, int | None]:
    """(CRC-32 of the dictionary, generation, unix time written) of a stored value; format 1 has neither of the last two.

    ValueError: not a value of a known format."""
    if not value or value[0] not in (1, _FORMAT):
        raise ValueError(f"format {value[0] if value else 'missing'}, expected 1 or {_FORMAT}")
    if value[0] == 1:
        if len(value) < _HEADER_V1.size:
            raise ValueError("too short")
        return int(_HEADER_V1.unpack_from(value)[1]), None, None
    if len(value) < _HEADER.size:
        raise ValueError("too short")
    _, crc, generation, written = _HEADER.unpack_from(value)
    return int(crc), int(generation), int(written)


class RedisRiskTable:
    """A replica's reader of :data:`KEY`."""

    def __init__(self, url: str, *, timeout_s: float = 1.0) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._codec: EntryCodec | None = None  # the dictionary, read once (again only if the scorer's changes)

    def get(self, account_id: str) -> dict[str, Any] | None:
        """The entry as the scorer's report has it, plus ``published``: ``generation`` (of the scorer process that wrote
        it), ``at`` (ISO 8601 UTC time of the report that last changed it) and ``current`` (written by the latest
        scorer; false for an entry a restarted scorer has not yet rewritten or swept away). One round trip."""
        return self.get_many([account_id]).get(account_id)

    def get_many(self, account_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """:meth:`get` for several accounts in one round trip (``HMGET``): those that have an entry."""
        if not account_ids:
            return {}
        account_id = account_ids[0]
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.hmget(KEY, list(account_ids))
            pipe.get(GENERATION_KEY)
            values, latest = pipe.execute()
            found: dict[str, dict[str, Any]] = {}
            for account_id, value in zip(account_ids, values, strict=True):
                if value is not None:
                    found[account_id] = self._decode(account_id, _as_bytes(value), None if latest is None else int(latest))
            return found
        except redis.RedisError as exc:
            raise StateUnavailable(f"the central scorer's risk table in Redis ({KEY}) cannot be read: {exc}") from exc
        except (ValueError, zlib.error, orjson.JSONDecodeError) as exc:
            raise StateUnavailable(f"the risk table's entry for {account_id!r} in Redis ({KEY}) is not readable ({exc}); "
                                   "the central scorer rewrites it when the account's risk next changes") from exc

    def _decode(self, account_id: str, raw: bytes, latest: int | None) -> dict[str, Any]:
        crc, generation, written = _header_of(raw)
        if self._codec is None or self._codec.crc != crc:
            stored = self._client.get(DICT_KEY)
            zdict = None if stored is None else _as_bytes(stored)
            if zdict is None or zlib.crc32(zdict) != crc:
                raise StateUnavailable(f"the risk table's dictionary ({DICT_KEY}) is missing or not the one {account_id!r}'s "
                                       "entry was written with; the central scorer writes it again with its next report")
            self._codec = EntryCodec(zdict)
        entry = self._codec.decode(account_id, raw)
        entry["published"] = {"generation": generation,
                              "at": None if written is None else dt.datetime.fromtimestamp(written, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                              "current": generation is not None and generation == latest}
        return entry

    def close(self) -> None:
        self._client.close()


@dataclass
class PublishStats:
    """What one :meth:`RiskTablePublisher.publish` did (the scorer logs and counts them)."""

    changed: int = 0  # entries of this report that differ from the last report's
    sent: int = 0  # entries written to Redis now
    waiting: int = 0  # changed entries not yet written (over the bound, or Redis failed)
    bytes: int = 0  # value bytes written now (compressed)
    removed: int = 0  # fields deleted now: accounts this scorer does not hold (left by an earlier scorer, or dropped)


class RiskTablePublisher:
    """The central scorer's writer of :data:`KEY`; see the module docstring. Not thread-safe: the scoring thread calls it."""

    def __init__(self, client: redis.Redis, *, max_per_report: int = MAX_PER_REPORT) -> None:
        self._client = client
        self.max_per_report = max_per_report
        # Every account of the last report → hash of its entry's JSON as last written (None: not written yet). Digests,
        # not the entries: holding the last report's entries kept the old version of every rebuilt entry alive while
        # the scanner built the next report (bench/RESULTS.md, "The central scorer's memory").
        self._known: dict[str, int | None] = {}
        self._waiting: dict[str, Mapping[str, Any]] = {}  # changed, not yet written: latest version, oldest change first
        self._failing = False
        self._codec: EntryCodec | None = None  # Redis's dictionary if it has one, else made from the first report
        self._sweep_cursor: int | None = 0  # HSCAN position of the sweep for fields this scorer does not hold; None: done
        self.generation = 0  # this publisher's, taken from GENERATION_KEY at the first publish
        self.published = 0  # entries written since start
        self.swept = 0  # fields of accounts this scorer does not hold, deleted since start

    def publish(self, entries: Iterable[Mapping[str, Any]], rebuilt: Container[str] | None = None) -> PublishStats:
        """Write the entries that changed since the last report (bounded), delete the accounts no longer held.

        ``rebuilt``: the accounts whose entry the report built anew (``Scanner.rebuilt``); any other account already
        known is taken as unchanged without looking at it. ``None``: every entry is compared (by its JSON's hash)."""
        stats = PublishStats()
        known, waiting = self._known, self._waiting
        current: dict[str, Mapping[str, Any]] = {}
        seen, before = 0, len(known)  # accounts of the last report found in this one, and how many it had
        for entry in entries:
            account = str(entry["account_id"])
            current[account] = entry
            if account in waiting:
                waiting[account] = entry  # keeps its place in the queue, with its latest version
                seen += account in known
                continue
            if account in known:
                seen += 1
                if rebuilt is not None and account not in rebuilt:
                    continue
                if hash(_json(entry)) == known[account]:
                    continue
            else:
                known[account] = None
            stats.changed += 1
            waiting[account] = entry
        # Accounts of the last report missing from this one (the scanner dropped them): their entries go too.
        dropped = [a for a in known if a not in current] if seen < before else []
        for account in dropped:
            del known[account]
            waiting.pop(account, None)
        try:
            if self._codec is None:
                if not current:
                    return stats
                self._codec = self._dictionary(list(current.values()))
            elif self._client.exists(KEY, DICT_KEY) < 2 and self.published:  # Redis lost the table: everything again
                log.warning("risk table: %s is gone from Redis (restarted without persistence or flushed); publishing all "
                            "%d entries again, at most %d per report", KEY, len(current), self.max_per_report)
                self._client.set(DICT_KEY, self._codec.zdict)
                self._client.set(GENERATION_KEY, self.generation, nx=True)
                waiting.update((a, e) for a, e in current.items() if a not in waiting)
            self._codec.stamp(time.time())
            if dropped:
                for start in range(0, len(dropped), CHUNK):
                    self._client.hdel(KEY, *dropped[start:start + CHUNK])
                stats.removed += len(dropped)
            stats.sent, stats.bytes = self._send(waiting, self._codec)
            if not waiting and self._sweep_cursor is not None:  # the first publication is complete: what is left is not ours
                stats.removed += self._sweep(current)
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
        """Redis's dictionary (a restarted scorer keeps the one its entries were written with), or a new one, stored;
        and this publisher's generation."""
        stored = self._client.get(DICT_KEY)
        self.generation = int(self._client.incr(GENERATION_KEY))
        if stored:
            return EntryCodec(_as_bytes(stored), self.generation)
        codec = EntryCodec.sampled(entries)
        self._client.set(DICT_KEY, codec.zdict)
        return EntryCodec(codec.zdict, self.generation)

    def _sweep(self, held: Mapping[str, Any]) -> int:
        """Delete fields of accounts not in ``held`` (an earlier scorer's), scanning at most ``max_per_report`` fields now."""
        assert self._sweep_cursor is not None
        cursor, scanned, removed = self._sweep_cursor, 0, 0
        while scanned < self.max_per_report:
            cursor, fields = self._client.hscan(KEY, cursor, count=min(CHUNK, self.max_per_report - scanned))
            scanned += max(1, len(fields))
            stale = [field for field in fields if _as_bytes(field).decode() not in held]
            if stale:
                self._client.hdel(KEY, *stale)
                removed += len(stale)
            if cursor == 0:
                break
        self.swept += removed
        if cursor == 0:
            self._sweep_cursor = None
            log.info("risk table: swept %s of the entries this scorer does not hold (%d deleted: accounts an earlier "
                     "scorer published and this one did not replay)", KEY, self.swept)
        else:
            self._sweep_cursor = cursor
        return removed

    def _send(self, waiting: dict[str, Mapping[str, Any]], codec: EntryCodec) -> tuple[int, int]:
        """Write the oldest ``max_per_report`` waiting entries; each leaves the queue once its chunk is written."""
        sent = size = 0
        known = self._known
        while waiting and sent < self.max_per_report:
            accounts = []
            digests = []
            mapping: dict[str, bytes] = {}
            for account, entry in waiting.items():
                data = _json(entry)
                mapping[account] = value = codec.encode_json(data)
                digests.append(hash(data))
                size += len(value)
                accounts.append(account)
                if len(accounts) >= min(CHUNK, self.max_per_report - sent):
                    break
            self._client.hset(KEY, mapping=mapping)  # type: ignore[arg-type]  # redis-py's hints want a mapping of str | bytes | int | float
            for account, digest in zip(accounts, digests, strict=True):
                del waiting[account]
                known[account] = digest
            sent += len(accounts)
            self.published += len(accounts)
        return sent, size
