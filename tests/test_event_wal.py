"""The event write-ahead log (store/wal.py): what a killed process leaves is replayed exactly once (issue #13, item 5).

Unit tests drive a real sink on real files (SQLite and PostgreSQL); the
end-to-end tests SIGKILL a real ``distillguard serve`` under load and count
every acknowledged request id in the store after a restart.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from distillguard.exceptions import ConfigError
from distillguard.store import EventSink, Registry, iter_events
from distillguard.store.sink import _row_params, event_row
from distillguard.store.wal import WriteAheadLog
from tests.gateway_fixtures import keys_loaded, on_every_worker, start_gateway, write_config
from tests.pg_fixtures import PostgresServer, fresh_database, postgres  # noqa: F401 - fixture
from tests.redis_fixtures import RedisServer
from tests.upstream_stub import UpstreamStub


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    url = str(server.url)  # type: ignore[attr-defined]
    registry = Registry(url)  # one server for the session: start from empty tables
    with registry.engine.begin() as conn:
        for table in ("events", "api_keys", "installs", "audit_log", "reviews", "manual_overrides", "account_attributes",
                      "risk_snapshot", "accounts"):
            conn.execute(text(f"DELETE FROM {table}"))
    registry.close()
    return url


def _event(i: int) -> dict:
    return {"v": 1, "ts": f"2026-12-07T03:00:{i % 60:02d}.000Z", "request_id": f"req_{i:06d}", "account_id": "acct_x",
            "endpoint": "openai.chat", "request": {"messages": [{"role": "user", "content": f"q{i}"}]},
            "response": {"status": 200}}


def _die(sink: EventSink) -> None:
    """What SIGKILL does to a sink: its threads stop, its descriptors close (releasing the lock), nothing is cleaned up."""
    wal = sink.wal
    assert wal is not None
    for segment in list(wal._segments):
        if segment.fd >= 0:
            os.close(segment.fd)
            segment.fd = -1
    os.close(wal._lock_fd)
    sink.engine.dispose()


def _ids(url: str) -> list[str]:
    return [e["request_id"] for e in iter_events(url)]


def test_a_killed_sinks_events_are_replayed_once_with_a_torn_last_line_skipped(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spill, wal_dir = tmp_path / "spill", tmp_path / "wal"
    first = EventSink(database_url, spill, wal=WriteAheadLog(wal_dir))
    for i in range(40):  # the writer never ran: every event is only in memory and in the write-ahead file
        first.submit(_event(i))
    first._write_rows([_row_params(event_row(_event(i))) for i in range(10)])  # 10 of them were stored before the kill
    (segment,) = wal_dir.glob("*.wal")
    with open(segment, "r+b") as handle:  # a line that looks whole but is not JSON (a disk's garbage): skipped too
        data = handle.read().split(b"\n")
        data[5] = b"{" + b"\x00" * (len(data[5]) - 2) + b"}"
        handle.seek(0)
        handle.write(b"\n".join(data))
        handle.write(b'{"v": 1, "request_id": "req_torn", "ts": "2026-12')  # the write a kill cut short
    _die(first)

    caplog.set_level(logging.WARNING, logger="distillguard.store")
    second = EventSink(database_url, spill, wal=WriteAheadLog(wal_dir))
    second.start()
    deadline = time.time() + 10
    while len(_ids(database_url)) < 40 and time.time() < deadline:
        time.sleep(0.05)
    second.close()
    ids = _ids(database_url)
    assert sorted(ids) == [f"req_{i:06d}" for i in range(40)]  # every event once: the 10 stored ones not twice
    assert "ends in a torn write" in caplog.text and str(segment) in caplog.text
    assert f"{segment} line 6 is torn" in caplog.text  # req_000005 was stored before: nothing lost by skipping it
    assert "recovered 39 events of stopped process" in caplog.text and "2 torn line(s) skipped" in caplog.text
    assert not list(wal_dir.iterdir()) and not list(spill.glob("spill-*"))  # replayed, and nothing left behind


def test_segments_rotate_and_go_once_stored_while_a_live_owners_are_left_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    wal_dir = tmp_path / "wal"
    other = WriteAheadLog(wal_dir)  # another live process's log in the same directory (a worker)
    other.append(b'{"request_id": "req_other"}\n')
    sink = EventSink(url, tmp_path / "spill", wal=WriteAheadLog(wal_dir, segment_bytes=4096), flush_interval_s=0.01)
    sink.start()
    for i in range(300):  # ~40 KB of events: about ten segments
        sink.submit(_event(i))
    deadline = time.time() + 10
    while sink.stats["written"] < 300 and time.time() < deadline:
        time.sleep(0.02)
    assert sink.stats["wal_appended"] == 300 and sink.stats["wal_segments"] == 1  # the ones behind it are gone
    assert len(list(wal_dir.glob(f"{other.owner}.*.wal"))) == 1  # alive (its lock is held): not adopted
    sink.close()
    assert sorted(p.name for p in wal_dir.iterdir()) == sorted(p.name for p in wal_dir.iterdir() if p.name.startswith(other.owner))
    other.close()


def test_an_unwritable_wal_directory_is_a_startup_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"event_wal.dir: cannot write the event write-ahead log in /dev/null/wal .*event_wal.enabled"):
        WriteAheadLog("/dev/null/wal")


def test_a_full_disk_degrades_the_wal_logged_and_counted_and_it_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ENOSPC from the kernel (the segment's descriptor pointed at /dev/full): events are still stored, counted as
    unprotected, one log line; a fresh segment is tried after retry_interval_s."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    wal = WriteAheadLog(tmp_path / "wal", retry_interval_s=0.3)
    sink = EventSink(url, tmp_path / "spill", wal=wal, flush_interval_s=0.01)
    sink.start()
    caplog.set_level(logging.WARNING, logger="distillguard.store.wal")
    sink.submit(_event(0))
    full = os.open("/dev/full", os.O_WRONLY)
    current = wal._current
    assert current is not None
    os.dup2(full, current.fd)
    os.close(full)
    for i in range(1, 6):
        sink.submit(_event(i))
    assert sink.stats["wal_degraded"] is True and sink.stats["wal_failed"] == 5
    time.sleep(0.35)  # the retry opens a new segment; the disk is still full: degraded still, and no new log lines
    real_open = os.open

    def new_segment_on_a_full_disk(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        return real_open("/dev/full", os.O_WRONLY) if str(path).endswith(".wal") else real_open(path, flags, mode)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "open", new_segment_on_a_full_disk)
        sink.submit(_event(6))
    assert sink.stats["wal_degraded"] is True and sink.stats["wal_failed"] == 6
    assert sum("cannot be written" in r.message and "No space left on device" in r.message for r in caplog.records) == 1
    assert not any("writable again" in r.message for r in caplog.records)
    time.sleep(0.35)
    sink.submit(_event(7))
    assert sink.stats["wal_degraded"] is False and sink.stats["wal_appended"] == 2
    assert any("writable again" in r.message for r in caplog.records)
    sink.close()
    assert sorted(_ids(url)) == [f"req_{i:06d}" for i in range(8)]  # degraded: stored all the same
    assert not list((tmp_path / "wal").iterdir())


def test_sync_interval_fdatasyncs_the_current_segment_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr("distillguard.store.wal.os.fdatasync", counting)
    wal = WriteAheadLog(tmp_path / "wal", sync_interval_s=0.02)
    segment = wal.append(b'{"request_id": "req_1"}\n')
    assert segment is not None
    time.sleep(0.2)
    assert len(synced) >= 3 and set(synced) == {segment.fd}
    wal.close()
    count = len(synced)
    time.sleep(0.1)
    assert len(synced) == count  # the thread stopped with the log

    rare = WriteAheadLog(tmp_path / "wal2", sync_interval_s=3600, segment_bytes=4096)  # the thread will not fire here
    first = rare.append(b'{"request_id": "req_1"}\n' + b" " * 4096)
    assert first is not None and not synced[count:]
    inode = os.fstat(first.fd).st_ino
    inodes: list[int] = []
    monkeypatch.setattr("distillguard.store.wal.os.fdatasync", lambda fd: inodes.append(os.fstat(fd).st_ino))
    rare.append(b'{"request_id": "req_2"}\n')  # rotates: the finished, uncommitted segment is synced before it closes
    assert inodes == [inode]
    rare.close()


# -- a real gateway, killed under load -----------------------------------------------------------------------------------


def _acknowledged_under_load(base_url: str, secret: str, seconds: float, clients: int = 8,
                             at_least: int = 300, cap_s: float = 30.0) -> tuple[list[str], threading.Event]:
    """Closed-loop clients until the returned event is set; the request id of every complete 200 goes in the list.

    Returns after ``seconds`` once ``at_least`` requests were acknowledged (at most ``cap_s``): on a loaded
    machine two seconds gave six requests, too few for a kill to land mid-traffic.
    """
    acknowledged: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {secret}"}, timeout=5) as http:
            while not stop.is_set():
                try:
                    answer = http.post(base_url + "/chat/completions",
                                       json={"model": "stub-1", "messages": [{"role": "user", "content": "hi"}],
                                             "stream": len(acknowledged) % 2 == 1})
                    answer.read()
                except httpx.HTTPError:
                    continue  # the kill: no complete answer, nothing acknowledged
                if answer.status_code == 200:
                    acknowledged.append(answer.headers["x-request-id"])

    for _ in range(clients):
        threading.Thread(target=client, daemon=True).start()
    time.sleep(seconds)
    deadline = time.monotonic() + cap_s
    while len(acknowledged) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
    return acknowledged, stop


def test_sigkill_under_load_loses_no_acknowledged_event(database_url: str, tmp_path: Path, stub: UpstreamStub) -> None:
    unlimited = {"requests_per_min": None, "tokens_per_min": None, "concurrent_requests": None, "daily_tokens": None}
    gateway = start_gateway(tmp_path, stub.base_url, database=database_url, limits=unlimited)
    try:
        secret = gateway.create_key("kill-me")["secret"]
        acknowledged, stop = _acknowledged_under_load(gateway.base_url, secret, 2.0)
        gateway.proc.send_signal(signal.SIGKILL)  # while the clients keep sending
        gateway.proc.wait(10)
        stop.set()
        time.sleep(0.2)
        acked = list(acknowledged)
        assert len(acked) > 100, "too little load to mean anything"
        assert list((tmp_path / "spill" / "wal").glob("*.wal")), "the killed process left no write-ahead segment"
        restarted = start_gateway(tmp_path, stub.base_url, database=database_url, limits=unlimited)
        assert "write-ahead log: recovered" in restarted.log()
        deadline = time.time() + 20
        while list(restarted.spill_dir.glob("spill-*.jsonl")) and time.time() < deadline:
            time.sleep(0.1)  # the writer replays the recovered events at start
        assert restarted.stop() == 0
    finally:
        gateway.stop()
    stored = _ids(database_url)
    assert len(stored) == len(set(stored))  # exactly once
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged requests have no stored event"
    assert not list((tmp_path / "spill" / "wal").glob("*.wal"))


def _worker_pid(wal_dir: Path) -> int | None:
    """The pid of the worker writing ``wal_dir`` (its lock file is ``<pid>-<ns>.lock``)."""
    locks = list(wal_dir.glob("*.lock"))
    return int(locks[0].name.split("-", 1)[0]) if len(locks) == 1 else None


def test_a_killed_worker_is_replaced_and_its_events_replayed(tmp_path: Path, stub: UpstreamStub,
                                                             postgres: PostgresServer) -> None:  # noqa: F811 - the fixture
    """serve --workers 2: each worker logs to spill_dir/worker-<i>/wal; SIGKILL one under load, the supervisor starts
    its replacement, which replays what it left; every acknowledged request is stored once."""
    database = fresh_database(postgres)
    redis = RedisServer(tmp_path / "redis").start()
    config_path, config = write_config(tmp_path, [{"name": "stub", "base_url": stub.base_url, "models": ["*"]}],
                                       database=database, state=redis.url, limits={"requests_per_min": None,
                                       "tokens_per_min": None, "concurrent_requests": None, "daily_tokens": None})
    log_path = tmp_path / "workers.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "distillguard.cli", "serve", "--workers", "2", "--config", str(config_path)],
                                stdout=log, stderr=subprocess.STDOUT)
    root = f"http://{config['listen']}"
    wal_dirs = [tmp_path / "spill" / f"worker-{i}" / "wal" for i in range(2)]
    stop: threading.Event | None = None
    try:
        deadline = time.time() + 60
        while not all(_worker_pid(d) for d in wal_dirs) or _status(root + "/healthz") != 200:
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()
            time.sleep(0.2)
        admin = {"Authorization": "Bearer test-admin-token"}
        account = httpx.post(root + "/admin/v1/accounts", headers=admin, json={"name": "w"}).json()
        secret = httpx.post(root + f"/admin/v1/accounts/{account['account_id']}/keys", headers=admin, json={}).json()["secret"]
        on_every_worker(root, lambda text: keys_loaded(text) >= 1, "a worker never loaded the key")
        acknowledged, stop = _acknowledged_under_load(root + "/v1", secret, 2.0)
        victim = _worker_pid(wal_dirs[0])
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        deadline = time.time() + 30
        while _worker_pid(wal_dirs[0]) in (None, victim) or "write-ahead log: recovered" not in log_path.read_text():
            assert time.time() < deadline, "no replacement worker replayed the killed one's log:\n" + log_path.read_text()
            time.sleep(0.2)
        time.sleep(1.0)  # traffic on the replacement too
        stop.set()
        time.sleep(0.3)
        acked = list(acknowledged)
    finally:
        if stop is not None:
            stop.set()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        redis.stop()
    assert code == 0
    assert len(acked) > 100, "too little load to mean anything"
    engine = create_engine(database.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        stored = [row[0] for row in conn.execute(text("SELECT request_id FROM events"))]
    engine.dispose()
    assert len(stored) == len(set(stored))
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged requests have no stored event"
    assert not [p for d in wal_dirs for p in d.glob("*.wal")]  # everything committed and cleaned up at SIGTERM


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return 0

