"""The central scorer's published risk table (state/risk_table.py) against a real ``redis-server``.

Every scored account reaches Redis, below the flag threshold too; only changed entries are written; a report
writes at most its bound and the rest follow; a flushed Redis gets everything again; a Redis outage keeps the
changes waiting. The replicas' side (the admin risk endpoint reading it) is in tests/test_central_scorer.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_client

from distillguard.state import StateUnavailable
from distillguard.state.risk_table import DICT_KEY, KEY, RedisRiskTable, RiskTablePublisher
from tests.redis_fixtures import RedisServer


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def _entry(account: str, score: float, requests: int = 3) -> dict[str, Any]:
    return {"account_id": account, "distillation_score": score, "reseller_score": 0.0, "risk": "low" if score < 0.5 else "high",
            "cluster_id": None, "requests": requests,
            "evidence": [{"detector": "timing", "score": score, "detail": f"{requests} requests", "numbers": {}}]}


def _read(reader: RedisRiskTable, account: str) -> dict[str, Any] | None:
    """The entry as the scorer's report had it (without the ``published`` stamp the reader adds)."""
    entry = reader.get(account)
    if entry is not None:
        entry.pop("published")
    return entry


class CountingRedis(redis_client.Redis):
    """A client that counts the fields it writes with HSET (what the publisher sent)."""

    written: list[str]

    def hset(self, name: Any, key: Any = None, value: Any = None, mapping: Any = None, items: Any = None) -> Any:
        self.written.extend(mapping or {})
        return super().hset(name, key, value, mapping=mapping, items=items)


def test_every_scored_account_is_published_incrementally_and_bounded_per_report(redis: RedisServer) -> None:
    client = CountingRedis.from_url(redis.url)
    client.written = []
    client.flushdb()
    publisher = RiskTablePublisher(client, max_per_report=4)
    reader = RedisRiskTable(redis.url)
    report = [_entry(f"acct_{i}", 0.1 * i) for i in range(10)]  # scores 0.0 … 0.9: most below any flag threshold
    first = publisher.publish(report)
    assert (first.changed, first.sent, first.waiting) == (10, 4, 6)  # the bound holds; the rest wait
    assert client.hlen(KEY) == 4
    again = publisher.publish(report)  # the same entries (same objects): nothing changed, the waiting ones go
    assert (again.changed, again.sent, again.waiting) == (0, 4, 2)
    publisher.publish(list(report))
    assert client.hlen(KEY) == 10 and len(client.written) == 10  # each entry written once
    assert _read(reader, "acct_3") == report[3]  # the whole entry, as the scorer's report has it
    assert _read(reader, "acct_unknown") is None

    client.written.clear()
    changed = [dict(e) for e in report]  # rebuilt objects, equal values: not written again
    changed[7] = _entry("acct_7", 0.35, requests=4)  # this one changed
    stats = publisher.publish(changed)
    assert (stats.changed, stats.sent) == (1, 1) and client.written == ["acct_7"]
    assert _read(reader, "acct_7") == changed[7]

    values = client.hvals(KEY)  # compact: deflated against the dictionary taken from the first report
    assert sum(map(len, values)) < 0.5 * sum(len(orjson.dumps(e)) for e in changed), values[:2]

    zdict = client.get(DICT_KEY)
    restarted = RiskTablePublisher(client)  # a restarted scorer keeps the dictionary the stored entries were written with
    restarted.publish([_entry("acct_2", 0.45), *report[3:]])
    assert client.get(DICT_KEY) == zdict
    assert _read(reader, "acct_2") == _entry("acct_2", 0.45) and _read(reader, "acct_3") == report[3]

    client.flushdb()  # Redis lost its data: the scorer notices and publishes everything again (bounded)
    client.written.clear()
    for _ in range(3):
        publisher.publish(changed)
    assert client.hlen(KEY) == 10 and sorted(client.written) == sorted(e["account_id"] for e in changed)
    reader.close()
    client.close()


def test_a_redis_outage_keeps_the_changes_waiting_and_the_reader_says_it_cannot_read(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    client = redis_client.Redis.from_url(server.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    publisher = RiskTablePublisher(client)
    reader = RedisRiskTable(server.url)
    publisher.publish([_entry("acct_a", 0.2)])
    server.stop()
    down = publisher.publish([_entry("acct_a", 0.3), _entry("acct_b", 0.1)])
    assert (down.changed, down.sent, down.waiting) == (2, 0, 2)
    with pytest.raises(StateUnavailable, match="dg:risk:accounts"):
        reader.get("acct_a")
    server.start()  # empty again (no persistence): both waiting entries, and then the rest of the table, go
    back = publisher.publish([_entry("acct_a", 0.3), _entry("acct_b", 0.1)])
    assert back.sent == 2 and back.waiting == 0
    assert _read(reader, "acct_a") == _entry("acct_a", 0.3)
    reader.close()
    client.close()
    server.stop()


def test_a_restarted_scorer_stamps_its_generation_and_sweeps_what_it_does_not_hold(redis: RedisServer) -> None:
    client = redis_client.Redis.from_url(redis.url)
    client.flushdb()
    reader = RedisRiskTable(redis.url)
    first = RiskTablePublisher(client, max_per_report=400)
    report = [_entry(f"acct_{i}", 0.001 * i) for i in range(1000)]  # more than a listpack holds (512): HSCAN pages it
    for _ in range(3):
        first.publish(report)
    assert client.hlen(KEY) == 1000
    stamp = reader.get("acct_3")["published"]  # type: ignore[index]
    assert stamp["generation"] == first.generation and stamp["current"] is True and stamp["at"].endswith("Z")

    # A restart: the new scorer replayed only three of the accounts, and scores one new one.
    second = RiskTablePublisher(client, max_per_report=100)
    held = [report[2], _entry("acct_5", 0.3), report[7], _entry("acct_new", 0.2)]
    stats = second.publish(held)
    assert second.generation == first.generation + 1
    assert (stats.sent, stats.waiting) == (4, 0)  # its whole first publication: every entry it holds is new to it
    assert 0 < stats.removed < 997 and client.hlen(KEY) > 4  # the sweep began, bounded per report
    left = next(a for a in (f"acct_{i}" for i in range(1000)) if client.hexists(KEY, a) and a not in ("acct_2", "acct_5", "acct_7"))
    old = reader.get(left)  # not yet swept: an entry of the old generation says so
    assert old is not None and old["published"]["generation"] == first.generation and old["published"]["current"] is False
    assert reader.get("acct_5")["published"]["current"] is True  # type: ignore[index]
    removed = stats.removed
    for _ in range(12):
        removed += second.publish(held).removed
    assert sorted(k.decode() for k in client.hkeys(KEY)) == ["acct_2", "acct_5", "acct_7", "acct_new"]
    assert removed == 997 and second.swept == 997
    assert reader.get("acct_3") is None and _read(reader, "acct_5") == _entry("acct_5", 0.3)

    # An account the running scorer no longer holds goes at once, not at the next restart.
    dropped = second.publish(held[:3])
    assert dropped.removed == 1 and not client.hexists(KEY, "acct_new")
    reader.close()
    client.close()


def test_the_scanner_names_the_entries_it_rebuilt_and_the_publisher_trusts_it(redis: RedisServer) -> None:
    """``Scanner.rebuilt`` is exactly the accounts whose entry object is new; the publisher looks only at those, and keeps
    hashes, not the entries (the old version of a rebuilt entry is free as soon as the scanner drops it)."""
    from distillguard.detect.scanner import Scanner
    from tests.test_scorer_heap import _event

    scanner = Scanner()
    for account in range(3):
        for i in range(4):
            scanner.update(_event(account, i))
    first = {e["account_id"]: e for e in scanner.report()["accounts"]}
    assert scanner.rebuilt == set(first)
    scanner.update(_event(1, 9))
    second = {e["account_id"]: e for e in scanner.report(recluster=False)["accounts"]}
    assert scanner.rebuilt == {"acct_1"}
    assert second["acct_0"] is first["acct_0"] and second["acct_1"] is not first["acct_1"] and second["acct_1"]["requests"] == 5

    client = CountingRedis.from_url(redis.url)
    client.written = []
    client.flushdb()
    publisher = RiskTablePublisher(client)
    publisher.publish(list(first.values()), set(first))
    assert sorted(client.written) == ["acct_0", "acct_1", "acct_2"]
    client.written.clear()
    publisher.publish(list(second.values()), scanner.rebuilt)
    assert client.written == ["acct_1"]
    client.written.clear()
    tampered = {**second["acct_2"], "requests": 99}  # not rebuilt by the scanner's account: taken as unchanged
    publisher.publish([second["acct_0"], second["acct_1"], tampered], {"acct_1"})
    assert client.written == []
    client.close()
