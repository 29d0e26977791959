"""A *frozen* PostgreSQL server (SIGSTOP: sockets open, nothing answers), not a stopped one (issue #12, finding 16).

A stopped server refuses connections at once; a frozen one accepts them and
acknowledges every byte, so without deadlines every store call hangs for ever:
nothing spills, /readyz stays 200, SIGTERM never finishes. These tests freeze
the real server started by ``pg_fixtures`` and always thaw it again.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from distillguard.events import format_ts
from distillguard.store import EventSink, Registry, iter_events
from tests.gateway_fixtures import start_gateway
from tests.pg_fixtures import PostgresServer, postgres  # noqa: F401 - fixture
from tests.upstream_stub import UpstreamStub


@pytest.fixture
def pg(postgres: PostgresServer) -> Iterator[PostgresServer]:  # noqa: F811
    deadline = time.monotonic() + 20
    while True:  # another module's test may have just restarted the shared server
        try:
            registry = Registry(postgres.url)  # type: ignore[attr-defined]
            with registry.engine.begin() as conn:
                for table in ("events", "api_keys", "installs", "audit_log", "reviews", "manual_overrides", "accounts"):
                    conn.execute(text(f"DELETE FROM {table}"))
            registry.close()
            break
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    yield postgres
    postgres.thaw()  # whatever happened, the next test gets a live server


def _event(i: int) -> dict:
    return {"v": 1, "ts": format_ts(1_790_000_000 + i), "request_id": f"req_{i:06d}", "account_id": "acct_x",
            "endpoint": "openai.chat", "request": {"messages": []}, "response": {"status": 200}}


def _spilled_ids(spill_dir: Path) -> list[str]:
    return [orjson.loads(line)["request_id"] for path in spill_dir.glob("spill-*.jsonl")
            for line in path.read_bytes().splitlines() if line.strip()]


def test_every_registry_call_fails_within_its_deadline(pg: PostgresServer) -> None:
    registry = Registry(pg.url, timeout_s=1)  # type: ignore[attr-defined]
    assert registry.change_counter() >= 0
    pg.freeze()
    for call in (registry.change_counter, registry.key_snapshot, registry.list_accounts):
        started = time.monotonic()
        with pytest.raises(OperationalError):
            call()
        assert time.monotonic() - started < 5  # deadline 1 s + 1 s for the server's own statement_timeout first
    pg.thaw()
    assert registry.change_counter() >= 0  # the pool recovers by itself
    registry.close()


def test_frozen_store_spills_like_a_dead_one_and_close_loses_nothing(pg: PostgresServer, tmp_path: Path) -> None:
    url = pg.url  # type: ignore[attr-defined]
    spill = tmp_path / "spill"
    sink = EventSink(url, spill, timeout_s=1, stall_after_s=0.5, retry_interval_s=0.3)
    sink.start()
    for i in range(100):
        sink.submit(_event(i))
    deadline = time.time() + 10
    while sink.stats["written"] < 100 and time.time() < deadline:
        time.sleep(0.05)
    assert sink.stats["written"] == 100
    pg.freeze()
    for i in range(100, 300):
        sink.submit(_event(i))
    deadline = time.time() + 10
    while sink.stats["store_ok"] and time.time() < deadline:
        time.sleep(0.05)
    assert not sink.stats["store_ok"]
    assert "event store" in sink.stats["store_problem"]
    deadline = time.time() + 15
    while sink.stats["spilled"] < 200 and time.time() < deadline:
        time.sleep(0.1)
    assert sink.stats["spilled"] == 200  # while the store is frozen, not after it thaws
    for i in range(300, 400):  # still frozen at shutdown: these must reach the disk too, promptly
        sink.submit(_event(i))
    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < 10
    assert sorted(_spilled_ids(spill)) == [f"req_{i:06d}" for i in range(100, 400)]
    pg.thaw()
    replay = EventSink(url, spill, retry_interval_s=0.3)
    replay.start()
    replay.close()
    assert sorted(e["request_id"] for e in iter_events(url)) == [f"req_{i:06d}" for i in range(400)]
    assert not list(spill.glob("spill-*.jsonl"))


def test_gateway_with_a_frozen_store_says_not_ready_and_sigterm_exits_with_everything_spilled(
        pg: PostgresServer, tmp_path: Path, stub: UpstreamStub) -> None:
    url = pg.url  # type: ignore[attr-defined]
    gw = start_gateway(tmp_path, stub.base_url, database=url, database_timeout_s=1)
    try:
        key = gw.create_key("frozen")
        auth = {"Authorization": f"Bearer {key['secret']}"}
        chat = {"model": "stub-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        ids = [httpx.post(gw.base_url + "/chat/completions", headers=auth, json=chat, timeout=10).headers["x-request-id"]
               for _ in range(5)]
        gw.events(expect=5)
        assert httpx.get(gw.root_url + "/readyz", timeout=10).status_code == 200
        pg.freeze()
        for _ in range(20):  # the hot path never touches the store: still served while it is frozen
            answer = httpx.post(gw.base_url + "/chat/completions", headers=auth, json=chat, timeout=10)
            assert answer.status_code == 200
            ids.append(answer.headers["x-request-id"])
        deadline = time.time() + 15
        while time.time() < deadline:
            ready = httpx.get(gw.root_url + "/readyz", timeout=10)
            if ready.status_code == 503:
                break
            time.sleep(0.2)
        assert ready.status_code == 503
        assert any("event store" in problem for problem in ready.json()["problems"])
        started = time.monotonic()
        code = gw.stop(signal.SIGTERM, timeout=45)
        took = time.monotonic() - started
        assert code == 0, gw.log()[-3000:]
        print(f"SIGTERM with the store frozen: exited in {took:.1f}s")
        assert took < 30, f"SIGTERM took {took:.1f}s"
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()
        pg.thaw()
    stored = {e["request_id"] for e in iter_events(url)}
    spilled = set(_spilled_ids(gw.spill_dir))
    assert set(ids) <= stored | spilled, "an acknowledged request has no event"
    assert set(ids[5:]) - stored <= spilled


def test_a_live_but_blocked_store_spills_too(pg: PostgresServer, tmp_path: Path) -> None:
    """Slow, not frozen: a lock held elsewhere. The server's own statement_timeout ends the write, and the batch spills."""
    url = pg.url  # type: ignore[attr-defined]
    spill = tmp_path / "spill"
    holder = Registry(url, timeout_s=60)  # the lock holder itself must not hit a deadline
    sink = EventSink(url, spill, timeout_s=1, retry_interval_s=0.3)
    sink.start()
    with holder.engine.connect() as conn:
        conn.execute(text("BEGIN"))
        conn.execute(text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
        for i in range(50):
            sink.submit(_event(i))
        deadline = time.time() + 10
        while sink.stats["spilled"] < 50 and time.time() < deadline:
            time.sleep(0.1)
        assert sink.stats["spilled"] == 50 and not sink.stats["store_ok"]
        conn.execute(text("ROLLBACK"))
    deadline = time.time() + 10
    while sink.stats["replayed"] < 50 and time.time() < deadline:
        time.sleep(0.1)
    sink.close()
    holder.close()
    assert sorted(e["request_id"] for e in iter_events(url)) == [f"req_{i:06d}" for i in range(50)]


def test_sigterm_with_store_calls_blocked_exits_within_the_grace_period(pg: PostgresServer, tmp_path: Path,
                                                                       stub: UpstreamStub) -> None:
    """The finding's own scenario, with the default deadline (5 s): executor threads blocked in the store at SIGTERM."""
    url = pg.url  # type: ignore[attr-defined]
    gw = start_gateway(tmp_path, stub.base_url, database=url)
    admin_answers: list[httpx.Response] = []
    try:
        key = gw.create_key("in-flight")
        auth = {"Authorization": f"Bearer {key['secret']}"}
        chat = {"model": "stub-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        pg.freeze()
        ids = [httpx.post(gw.base_url + "/chat/completions", headers=auth, json=chat, timeout=10).headers["x-request-id"]
               for _ in range(20)]
        blocked = threading.Thread(target=lambda: admin_answers.append(gw.admin("GET", "/admin/v1/accounts")))
        blocked.start()

        def open_connections() -> float:  # this scrape's own connection is one of them
            text = httpx.get(gw.root_url + "/metrics", timeout=10).text
            return next(float(line.split()[1]) for line in text.splitlines() if line.startswith("distillguard_open_connections "))

        deadline = time.monotonic() + 60
        while open_connections() < 2:  # the gateway took the admin request's connection (a busy machine may take a while)
            assert time.monotonic() < deadline, "the admin request never reached the gateway"
            time.sleep(0.05)
        time.sleep(1.5)  # by now the admin request, the key poller (every second) and the event writer wait on the store
        started = time.monotonic()
        code = gw.stop(signal.SIGTERM, timeout=60)
        took = time.monotonic() - started
        blocked.join(30)
        print(f"SIGTERM with store calls blocked (database_timeout_s 5): exited in {took:.1f}s")
        assert code == 0, gw.log()[-3000:]
        assert took < 30, f"SIGTERM took {took:.1f}s"
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()
        pg.thaw()
    assert [a.status_code for a in admin_answers] == [503]
    assert admin_answers[0].json()["error"]["code"] == "store_unavailable"
    stored = {e["request_id"] for e in iter_events(url)}
    assert set(ids) <= stored | set(_spilled_ids(gw.spill_dir)), "an acknowledged request has no event"


def test_the_deadline_wakes_a_thread_blocked_on_the_connection_socket() -> None:
    """The mechanism alone, without a database: a read blocked on a silent peer returns once the deadline passes."""
    import socket
    from types import SimpleNamespace

    from distillguard.store.engine import Deadline

    ours, silent = socket.socketpair()
    connection = SimpleNamespace(pgconn=SimpleNamespace(socket=ours.fileno()))
    deadline = Deadline(0.3)
    deadline.arm(connection)
    started = time.monotonic()
    assert ours.recv(1) == b""  # blocks until the watchdog shuts the socket down
    assert 0.25 < time.monotonic() - started < 5
    assert deadline.fired == 1
    deadline.arm(connection)  # disarmed in time: nothing happens
    deadline.disarm(connection)
    time.sleep(0.5)
    assert deadline.fired == 1
    ours.close()
    silent.close()
