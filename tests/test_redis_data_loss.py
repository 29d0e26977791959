"""Redis losing its data under load (issue #13, deliverables 4 and 7): nothing goes unscored, limits come back.

A Redis restarted without persistence (or flushed, or failed over to an empty
replica) forgets the central scorer's stream with the events it held, the
scripts, the limit windows and the nonce cache. The scorer must notice and
score from the store's event log what the lost stream held or never got
(events shed while Redis was down), each event exactly once; the replicas'
admissions must work again at once (the script is sent again in full).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis as redis_client

from distillguard.events import format_ts
from distillguard.policy.central import CentralScorer
from distillguard.state import Quota, Refusal
from distillguard.state.redis_state import RedisState
from distillguard.state.scorer_stream import STREAM, StreamFeed, encode_event
from distillguard.store.sink import EventSink
from tests.redis_fixtures import RedisServer


def _event(i: int) -> dict[str, Any]:
    return {"v": 1, "ts": format_ts(), "request_id": f"req_loss_{i}", "account_id": f"acct_loss_{i % 7}", "key_id": "key_loss",
            "endpoint": "openai.chat", "request": {"messages": [{"role": "user", "content": f"question {i}"}]}}


def _until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_the_central_scorer_scores_what_a_redis_restart_lost_from_the_store_exactly_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    database = f"sqlite:///{tmp_path / 'events.db'}"
    sink = EventSink(database, tmp_path / "spill")
    sink.start()
    reports: list[dict[str, Any]] = []
    scorer = CentralScorer(reports.append, redis.url, publish_every_s=0.2)
    scorer.database = database
    feed = StreamFeed(lambda report: None, redis.url)  # a replica's hand-off to the scorer
    served = 0

    def serve(n: int, stream: bool = True) -> list[dict[str, Any]]:
        """``n`` events served by the replica: stored (always) and handed to the scorer's stream."""
        nonlocal served
        events = [_event(served + i) for i in range(n)]
        served += n
        for event in events:
            sink.submit(event)
            if stream:
                feed.submit(event)
        return events

    try:
        scorer.start(None)
        feed.start()
        serve(60)
        _until(lambda: scorer.consumed == 60, "the scorer never consumed the first 60 events")

        # Events in the stream when Redis dies (appended, then Redis shut down without saving in the same write).
        client = redis_client.Redis.from_url(redis.url)
        pipe = client.pipeline(transaction=False)
        for event in serve(20, stream=False):
            pipe.xadd(STREAM, {"e": encode_event(event)})
        pipe.execute_command("SHUTDOWN", "NOSAVE")
        with pytest.raises(redis_client.RedisError):
            pipe.execute()
        assert redis.proc is not None and redis.proc.wait(10) is not None
        serve(40)  # served while Redis is down: the replica sheds them from scoring (they are stored)
        _until(lambda: feed.shed_by_reason.get("redis_unavailable", 0) == 40, "the replica did not shed during the outage")

        redis.start()  # the same port, no persistence: empty
        serve(30)  # served after the restart: in the new stream and in the store
        with caplog.at_level("WARNING", logger="distillguard.scorer"):
            _until(lambda: scorer.rebuilt > 0 and scorer.consumed + scorer.rebuilt >= 150,
                   f"not every event was scored: {scorer.consumed} from the stream, {scorer.rebuilt} from the store")
            time.sleep(1.0)  # anything scored twice would show by now
        _until(lambda: bool(reports) and reports[-1]["events"] >= 150, "no report counted every event")
        assert scorer.stream_losses == 1
        assert reports[-1]["events"] == 150  # 60 + 20 + 40 + 30: every event once, none twice
        assert scorer.consumed + scorer.rebuilt == 150
        messages = [r.getMessage() for r in caplog.records]
        assert any("were gone" in m and "store's events since" in m for m in messages), messages
        assert any(f"scored {scorer.rebuilt} events from the store" in m for m in messages), messages
    finally:
        feed.close()
        scorer.close()
        sink.close()
        redis.stop()


def test_admission_works_again_at_once_after_redis_lost_its_data(tmp_path: Path) -> None:
    """Scripts, windows and leases are gone after the restart: the script is sent again and limits count from zero."""
    import asyncio

    redis = RedisServer(tmp_path / "redis").start()

    async def scenario() -> None:
        state = RedisState(redis.url, timeout_s=5.0)
        await state.start()
        quota = (Quota("key:lost", 3, None, None, None),)
        assert [isinstance(await state.admit(quota, 1, f"a{i}"), Refusal) for i in range(4)] == [False] * 3 + [True]
        client = redis_client.Redis.from_url(redis.url)
        client.flushall()  # as a restart without persistence, or a failover to an empty replica, leaves it
        client.script_flush()
        # the same connection: NOSCRIPT, then the script in full; the window starts empty (documented: docs/deploy.md)
        assert [isinstance(await state.admit(quota, 1, f"b{i}"), Refusal) for i in range(4)] == [False] * 3 + [True]
        await state.close()

    try:
        asyncio.run(scenario())
    finally:
        redis.stop()
