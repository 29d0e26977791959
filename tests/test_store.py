"""The store against real SQLite and a real PostgreSQL server: registry, lossless sink, export, CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from distillguard.events import format_ts
from distillguard.exceptions import NotFoundError, UsageError
from distillguard.store import EventSink, Registry, hash_secret, iter_events
from tests.pg_fixtures import PostgresServer, postgres  # noqa: F401 - fixture

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.url  # type: ignore[attr-defined]
    registry = Registry(url)  # wipe between tests: one server for the session
    with registry.engine.begin() as conn:
        for table in ("events", "api_keys", "installs", "audit_log", "reviews", "manual_overrides", "account_attributes", "accounts"):
            conn.execute(text(f"DELETE FROM {table}"))
    registry.close()
    return str(url)


def _event(i: int, account: str = "acct_x") -> dict:
    return {"v": 1, "ts": format_ts(1_790_000_000 + i), "request_id": f"req_{i:06d}", "account_id": account, "endpoint": "openai.chat",
            "request": {"messages": [{"role": "user", "content": f"q{i}"}]}, "response": {"status": 200}}


def test_accounts_and_keys_with_hashed_secrets(database_url: str) -> None:
    registry = Registry(database_url)
    account = registry.create_account("alice", org="acme")
    key = registry.create_key(account["account_id"])
    assert key["secret"].startswith("sk-dg-") and len(key["secret"]) > 40
    snapshot = registry.key_snapshot()
    assert [k.secret_hash for k in snapshot] == [hash_secret(key["secret"])]
    assert snapshot[0].org_id == "acme" and not snapshot[0].revoked
    with registry.engine.connect() as conn:
        dumped = " ".join(str(row) for row in conn.execute(text("SELECT * FROM api_keys")))
    assert key["secret"] not in dumped
    before = registry.change_counter()
    registry.revoke_key(key["key_id"])
    assert registry.change_counter() > before
    assert registry.key_snapshot()[0].revoked
    with pytest.raises(NotFoundError):
        registry.create_key("acct_missing")
    with pytest.raises(NotFoundError):
        registry.revoke_key("key_missing")
    registry.set_account_limits(account["account_id"], {"requests_per_min": 5}, actor="admin")
    trail = [(a["actor"], a["action"], a["target"]) for a in reversed(registry.list_audit())]
    assert trail == [("cli", "account.create", account["account_id"]), ("cli", "key.create", key["key_id"]),
                     ("cli", "key.revoke", key["key_id"]), ("admin", "account.limits", account["account_id"])]


def test_installs_audit_and_review_queue(database_url: str) -> None:
    registry = Registry(database_url)
    registry.enroll_install("key_1", "inst_1", "pk-1", account_id="acct_1")
    registry.enroll_install("key_1", "inst_1", "pk-1", account_id="acct_1")  # idempotent
    assert registry.install_keys() == {"inst_1": "pk-1"}
    review = registry.add_review("acct_9", "distillation score 0.97", {"score": 0.97})
    assert [r["review_id"] for r in registry.list_reviews()] == [review["review_id"]]
    registry.resolve_review(review["review_id"], "confirmed", "oncall", "obvious hydra")
    assert registry.list_reviews() == []
    assert registry.list_audit()[0]["action"] == "review.confirmed"


def test_sink_writes_batches_without_loss_or_duplicates(database_url: str, tmp_path: Path) -> None:
    sink = EventSink(database_url, tmp_path / "spill", batch_size=100)
    sink.start()
    for i in range(1234):
        sink.submit(_event(i))
    sink.submit(_event(5))  # a replayed duplicate request id must not be stored twice
    sink.close()
    stored = list(iter_events(database_url))
    assert len(stored) == 1234
    assert [e["request_id"] for e in stored] == [f"req_{i:06d}" for i in range(1234)]
    assert sink.stats["written"] == 1235 and sink.stats["spilled"] == 0


class _CountingSink(EventSink):
    """An EventSink that records the size of every transaction it writes (the writer thread's only store call)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.transactions: list[int] = []

    def _write_rows(self, rows: list[tuple]) -> None:
        super()._write_rows(rows)
        if rows:
            self.transactions.append(len(rows))


N_TRICKLE = 8000


def test_the_writer_writes_one_transaction_per_flush_interval_while_events_keep_coming(tmp_path: Path) -> None:
    """A steady trickle of events goes to the store in one transaction per flush interval, not one per few events.

    Draining back to back wrote a transaction every few events at thousands of events/s, and each one rewrote the same
    table and index pages into SQLite's log (bench/RESULTS.md, "SSE at c=64"). Nothing is lost or delayed beyond the
    interval: every event is stored once the trickle stops, and at close.
    """
    sink = _CountingSink(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "spill", flush_interval_s=0.1, batch_size=20_000)
    sink.start()
    began = time.monotonic()
    for i in range(N_TRICKLE):  # ~1 s at 8,000 events/s, as a busy gateway submits them: the queue is never empty for long
        sink.submit(_event(i))
        while time.monotonic() < began + i / N_TRICKLE:
            time.sleep(0)  # (lets the writer thread run)
    elapsed = time.monotonic() - began
    deadline = time.monotonic() + 5
    while sink.stats["written"] < N_TRICKLE and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.stats["written"] == N_TRICKLE  # stored within the interval once the trickle stops, before close
    # One per 0.1 s interval, plus the rounds at the edges (a round began before the first event, one after the last).
    assert len(sink.transactions) <= elapsed / 0.1 + 3, (elapsed, sink.transactions)
    sink.close()
    assert [e["request_id"] for e in iter_events(sink.database_url)] == [f"req_{i:06d}" for i in range(N_TRICKLE)]


def test_a_backlog_is_written_in_one_round_in_whole_batches_and_close_writes_the_rest(tmp_path: Path) -> None:
    """What is queued when a round begins is written then, in batches of ``batch_size``; what arrives later waits for
    the next round (at most one flush interval), and ``close`` writes it at once."""
    sink = _CountingSink(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "spill", batch_size=1000, flush_interval_s=30)
    for i in range(2500):  # queued before the writer starts: its first round finds them all
        sink.submit(_event(i))
    sink.start()
    deadline = time.monotonic() + 10
    while sink.stats["written"] < 2500 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.transactions == [1000, 1000, 500]  # one round, three transactions, no pause between them
    sink.submit(_event(2500))
    time.sleep(0.3)
    assert sink.stats["written"] == 2500  # the next round is up to 30 s away ...
    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < 5  # ... but close does not wait for it: it writes what is left
    assert sink.transactions == [1000, 1000, 500, 1]
    assert len(list(iter_events(sink.database_url))) == 2501


def test_export_since(database_url: str, tmp_path: Path) -> None:
    sink = EventSink(database_url, tmp_path / "spill")
    for i in range(10):
        sink.submit(_event(i * 100))
    sink.close()
    since = format_ts(1_790_000_000 + 500)
    assert [e["request_id"] for e in iter_events(database_url, since)] == [f"req_{i * 100:06d}" for i in range(5, 10)]
    # The same instant written with a UTC offset and without milliseconds selects the same events.
    shifted = dt.datetime.fromtimestamp(1_790_000_000 + 500, dt.timezone(dt.timedelta(hours=2))).isoformat()
    assert "+02:00" in shifted
    assert [e["request_id"] for e in iter_events(database_url, shifted)] == [f"req_{i * 100:06d}" for i in range(5, 10)]
    with pytest.raises(ValueError):
        list(iter_events(database_url, "yesterday"))


def test_postgres_down_spills_then_replays(postgres: PostgresServer, tmp_path: Path) -> None:  # noqa: F811
    url = postgres.url  # type: ignore[attr-defined]
    registry = Registry(url)
    with registry.engine.begin() as conn:
        conn.execute(text("DELETE FROM events"))
    registry.close()
    sink = EventSink(url, tmp_path / "spill", retry_interval_s=0.3)
    sink.start()
    for i in range(100):
        sink.submit(_event(i, "before"))
    deadline = time.time() + 10
    while sink.stats["written"] < 100 and time.time() < deadline:
        time.sleep(0.05)
    postgres.stop()
    for i in range(100, 300):
        sink.submit(_event(i, "during"))
    deadline = time.time() + 15
    while sink.stats["spilled"] < 200 and time.time() < deadline:
        time.sleep(0.1)
    assert sink.stats["spilled"] == 200 and not sink.stats["store_ok"]
    assert list((tmp_path / "spill").glob("spill-*.jsonl"))
    postgres.restart()
    deadline = time.time() + 20
    while sink.stats["replayed"] < 200 and time.time() < deadline:
        time.sleep(0.2)
    sink.close()
    stored = [e["request_id"] for e in iter_events(url)]
    assert sorted(stored) == [f"req_{i:06d}" for i in range(300)]
    assert not list((tmp_path / "spill").glob("spill-*.jsonl"))


def test_leftover_spill_files_are_replayed_on_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spill = tmp_path / "spill"
    spill.mkdir()
    (spill / "spill-1-1-0.jsonl").write_text("\n".join(json.dumps(_event(i)) for i in range(7)) + "\n")
    sink = EventSink(url, spill)
    sink.start()
    deadline = time.time() + 5
    while sink.stats["replayed"] < 7 and time.time() < deadline:
        time.sleep(0.05)
    sink.close()
    assert len(list(iter_events(url))) == 7 and not list(spill.glob("spill-*"))


def test_a_spill_line_that_is_not_an_event_is_quarantined_and_the_rest_replayed(tmp_path: Path,
                                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A torn or hand-edited line must not stop every later replay (the store stayed 'down' for good) nor vanish."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spill = tmp_path / "spill"
    spill.mkdir()
    bad = [b'{"request_id": "req_torn", "ts": "2026-', b"[1, 2, 3]", b'{"no_request_id": true}']
    good = [json.dumps(_event(i)).encode() for i in range(5)]
    (spill / "spill-1-1-0.jsonl").write_bytes(b"\n".join(good[:2] + bad + good[2:]) + b"\n")
    (spill / "spill-2-1-0.jsonl").write_bytes(json.dumps(_event(5)).encode() + b"\n")  # a later file still replays
    sink = EventSink(url, spill)
    with caplog.at_level("ERROR", logger="distillguard"):
        sink.start()
        deadline = time.time() + 5
        while sink.stats["replayed"] < 6 and time.time() < deadline:
            time.sleep(0.05)
        sink.close()
    assert len(list(iter_events(url))) == 6 and sink.stats["quarantined"] == 3 and sink.stats["store_ok"]
    assert (spill / "spill-1-1-0.jsonl.bad").read_bytes() == b"".join(line + b"\n" for line in bad)
    assert not list(spill.glob("spill-*.jsonl"))
    assert "spill-1-1-0.jsonl line 3 is not an event" in caplog.text


def test_unwritable_spill_dir_holds_events_in_memory_and_says_so(tmp_path: Path) -> None:
    """Store down and spill impossible (a path under /dev/null): events stay queued, never dropped silently."""
    sink = EventSink(f"sqlite:///{tmp_path / 'db.sqlite'}", "/dev/null/spill", retry_interval_s=60)
    sink.store_ok = False
    sink._next_retry = time.monotonic() + 60
    for i in range(50):
        sink.submit(_event(i))
    sink._drain_all(final=False)
    assert sink.stats["held_in_memory"] == 50 and sink.stats["errors"] >= 1
    sink._next_retry = 0.0  # the store answers again: held events go in
    sink._drain_all(final=False)
    assert sink.stats["held_in_memory"] == 0 and sink.stats["written"] == 50


def _cli(*args: str, database: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "distillguard.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DG_DATABASE": database})


def test_cli_accounts_keys_export(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'cli.db'}"
    created = _cli("accounts", "create", "bob", "--org", "acme", "--json", database=database)
    assert created.returncode == 0, created.stderr
    account_id = json.loads(created.stdout)["account_id"]
    key = json.loads(_cli("keys", "create", account_id, "--json", database=database).stdout)
    assert set(key) == {"key_id", "account_id", "secret"} and key["account_id"] == account_id
    listed = json.loads(_cli("accounts", "list", "--json", database=database).stdout)
    assert [a["name"] for a in listed] == ["bob"]
    assert "bob" in _cli("accounts", "list", database=database).stdout
    missing = _cli("keys", "create", "acct_nope", database=database)
    assert missing.returncode == 2 and "acct_nope" in missing.stderr and "Traceback" not in missing.stderr
    assert _cli("keys", "revoke", key["key_id"], database=database).returncode == 0
    sink = EventSink(database, tmp_path / "spill")
    for i in range(3):
        sink.submit(_event(i))
    sink.close()
    exported = _cli("events", "export", database=database)
    assert [json.loads(line)["request_id"] for line in exported.stdout.splitlines()] == ["req_000000", "req_000001", "req_000002"]
    bad = _cli("events", "export", "--since", "yesterday", database=database)
    assert bad.returncode == 2 and "--since" in bad.stderr


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 4 MiB tmpfs; skipped (with the reason) where mounting is not permitted."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up here: {out.stderr.strip() or out.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_full_disk_holds_events_in_memory_then_delivers_them(tiny_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Store and spill on a disk that fills up: events are held (and logged), then all written once space returns."""
    url = f"sqlite:///{tiny_disk / 'db.sqlite'}"
    sink = EventSink(url, tiny_disk / "spill", retry_interval_s=0.2, batch_size=50)
    sink.start()
    filler = _fill(tiny_disk)
    big = "x" * 2000
    for i in range(200):
        event = _event(i)
        event["request"]["messages"][0]["content"] = big
        sink.submit(event)
    deadline = time.time() + 10
    while sink.stats["held_in_memory"] == 0 and time.time() < deadline:
        time.sleep(0.05)
    stats = sink.stats
    assert stats["held_in_memory"] > 0 and stats["errors"] >= 1, stats
    assert any("in memory and retrying" in r.getMessage() for r in caplog.records)
    filler.unlink()  # space comes back
    deadline = time.time() + 20
    while sink.stats["held_in_memory"] + sink.stats["queued"] and time.time() < deadline:
        time.sleep(0.1)
    sink.close()
    assert sink.stats["held_in_memory"] == 0
    stored = sorted(e["request_id"] for e in iter_events(url))
    assert stored == [f"req_{i:06d}" for i in range(200)]


def test_retention_purges_old_events_only(database_url: str, tmp_path: Path) -> None:
    sink = EventSink(database_url, tmp_path / "spill", retention_days=30)
    day = 86400
    now = 1_790_000_000 + 100 * day
    for i, age_days in enumerate([200, 31, 29.9, 1, 0]):
        event = _event(i)
        event["ts"] = format_ts(now - age_days * day)
        sink.submit(event)
    sink._drain_all(final=True)
    assert sink.purge_expired(now=now) == 2
    assert sorted(e["request_id"] for e in iter_events(database_url)) == ["req_000002", "req_000003", "req_000004"]
    assert sink.stats["purged"] == 2
    sink.close()


def test_account_attributes_are_stored_hashed_and_exported(database_url: str) -> None:
    from distillguard.store.attributes import hash_attribute

    registry = Registry(database_url)
    domain = hash_attribute("email_domain", "Acme.COM ", "salt-1")
    assert domain == hash_attribute("email_domain", "acme.com", "salt-1")  # domains compare without case
    assert domain != hash_attribute("email_domain", "acme.com", "salt-2")  # another deployment's key: unrelated
    assert domain != hash_attribute("signup_ip", "acme.com", "salt-1")  # the name is part of the message
    account = registry.create_account("carol", org="acme", attributes={"email_domain": domain})
    other = registry.create_account("dave")
    payment = hash_attribute("payment_fp", "card-4242", "salt-1")
    assert registry.set_account_attributes(other["account_id"], {"payment_fp": payment}) == {"payment_fp": payment}
    with pytest.raises(UsageError):  # a raw value never reaches the table
        registry.set_account_attributes(other["account_id"], {"email_domain": "acme.com"})
    with pytest.raises(NotFoundError):
        registry.set_account_attributes("acct_missing", {"payment_fp": payment})
    exported = {line["account_id"]: line for line in registry.export_accounts()}
    assert exported[account["account_id"]]["attributes"] == {"email_domain": domain}
    assert exported[account["account_id"]]["org_id"] == "acme" and exported[account["account_id"]]["status"] == "active"
    assert exported[other["account_id"]]["created_at"].endswith("Z")
    registry.set_account_attributes(other["account_id"], {"payment_fp": None})
    assert registry.account_attributes([other["account_id"]]) == {}
    with registry.engine.connect() as conn:
        dumped = " ".join(str(row) for row in conn.execute(text("SELECT * FROM account_attributes")))
        audit = " ".join(str(row) for row in conn.execute(text("SELECT * FROM audit_log")))
    assert "acme.com" not in dumped and "card-4242" not in dumped and "card-4242" not in audit


class _SlowFlakyStore(EventSink):
    """A store that takes 30 ms per insert and fails every 25th; records the queue's length at every submit."""

    calls = 0
    max_queued = 0

    def _write_rows(self, rows: list[tuple]) -> None:
        self.calls += 1
        time.sleep(0.03)
        if self.calls % 25 == 0:
            raise OSError("store flaked (test)")
        super()._write_rows(rows)

    def submit(self, event: dict) -> None:
        super().submit(event)
        self.max_queued = max(self.max_queued, len(self._queue))


def test_queue_stays_under_high_water_with_slow_store_and_spill_backlog(tmp_path: Path) -> None:
    """Issue #13: replays of a spill backlog into a slow store let the queue reach 5x its high-water mark.

    40 leftover spill files (20,000 events) must be replayed while 12,000 new events arrive at ~10,000/s into a store
    that is slow and sometimes fails: the queue must never pass its high-water mark, and afterwards every
    event id must be in the store or a spill file exactly once.
    """
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spill = tmp_path / "spill"
    spill.mkdir()
    for f in range(40):
        (spill / f"spill-1-1-{f:03d}.jsonl").write_text(
            "\n".join(json.dumps(_event(900_000 + f * 500 + i)) for i in range(500)) + "\n")
    sink = _SlowFlakyStore(url, spill, batch_size=500, high_water=3000, retry_interval_s=0.1)
    sink.start()
    for chunk in range(120):
        for i in range(100):
            sink.submit(_event(chunk * 100 + i))
        time.sleep(0.01)
    sink.close()
    assert sink.max_queued <= 3000, f"queue reached {sink.max_queued} against a high-water mark of 3000"
    ids = [e["request_id"] for e in iter_events(url)]
    ids += [json.loads(line)["request_id"] for path in spill.glob("spill-*.jsonl") for line in path.read_text().splitlines()]
    expected = {f"req_{i:06d}" for i in range(12_000)} | {f"req_{900_000 + i:06d}" for i in range(20_000)}
    assert len(ids) == len(set(ids)), "an event is both stored and spilled, or spilled twice"
    assert set(ids) == expected
    assert sink.calls >= 25 and sink.stats["spilled"] > 0  # the store failed at least once and events were spilled


class _HangingStore(EventSink):
    """A store whose every insert hangs for 3 s and then fails."""

    def _write_rows(self, rows: list[tuple]) -> None:
        self._write_started = time.monotonic()
        time.sleep(3)
        raise OSError("store hung (test)")


def test_queue_goes_to_disk_while_a_store_write_hangs(tmp_path: Path) -> None:
    """While the writer is stuck in an insert, what arrives is spilled within a flush interval, not after the
    insert's deadline: a SIGKILL during an outage then loses only the last interval (issue #13)."""
    sink = _HangingStore(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "spill", stall_after_s=0.2, retry_interval_s=60)
    sink.start()
    sink.submit(_event(0))  # the writer takes it and hangs
    time.sleep(0.5)
    for i in range(1, 301):
        sink.submit(_event(i))
    deadline = time.monotonic() + 1.5  # well before the hanging insert gives up
    while sink.stats["spilled"] < 300 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.stats["queued"] == 0 and sink.stats["spilled"] == 300 and sink.stats["store_problem"], sink.stats
    sink.close()
    ids = sorted(json.loads(line)["request_id"] for p in (tmp_path / "spill").glob("spill-*.jsonl") for line in p.read_text().splitlines())
    assert ids == [f"req_{i:06d}" for i in range(301)]


_SPILL_REPLAYER = r"""
import json, logging, sys, time
from pathlib import Path
from distillguard.store import EventSink
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
database, spill, go, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
sink = EventSink(database, spill, flush_interval_s=0.01)
ready.touch()
while not go.exists():
    time.sleep(0.005)
sink.start()  # the writer replays the directory at once
deadline = time.time() + 60
while list(spill.glob("spill-*.jsonl")) and time.time() < deadline:
    time.sleep(0.02)
alive = sink._thread is not None and sink._thread.is_alive()
sink.close()
print(json.dumps({"replayed": sink.replayed, "store_ok": sink.store_ok, "writer_alive": alive}))
"""


def test_two_processes_sharing_a_spill_dir_replay_each_file_once(tmp_path: Path) -> None:
    """Each spill file is replayed by exactly one of two gateways started on one directory (a flock claim each)."""
    database, spill, go = f"sqlite:///{tmp_path / 'shared.db'}", tmp_path / "spill", tmp_path / "go"
    spill.mkdir()
    files, per_file = 80, 150
    for f in range(files):
        lines = b"".join(json.dumps(_event(f * per_file + i)).encode() + b"\n" for i in range(per_file))
        (spill / f"spill-{1_000_000 + f}-1-{f}.jsonl").write_bytes(lines)
    EventSink(database, tmp_path / "unused").close()  # the schema, before two processes race to create it
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", _SPILL_REPLAYER, database, str(spill), str(go), str(ready[i])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 120
    while not all(path.exists() for path in ready):  # both imported and waiting, however long a busy machine takes
        assert time.monotonic() < deadline and all(proc.poll() is None for proc in procs), [proc.poll() for proc in procs]
        time.sleep(0.02)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "deferred" not in err, err
        results.append(json.loads(out))
    assert all(r["store_ok"] and r["writer_alive"] for r in results), results
    assert sum(r["replayed"] for r in results) == files * per_file, results  # none replayed twice
    assert not list(spill.glob("spill-*")) and len(list(iter_events(database))) == files * per_file


def test_a_new_sqlite_database_gets_16k_pages_and_an_existing_one_keeps_its_own(tmp_path: Path) -> None:
    """The event writer's CPU per event depends on SQLite's page size (one write-ahead frame per page); a database the
    gateway creates gets 16 KiB pages, one created before keeps its page size and its events (SQLite cannot change it
    in WAL mode, and must not be asked to rewrite a user's file)."""
    import sqlite3

    from distillguard.store.engine import SQLITE_PAGE_SIZE

    fresh = EventSink(f"sqlite:///{tmp_path / 'fresh.db'}", tmp_path / "spill-fresh")
    fresh.start()
    fresh.submit(_event(1))
    fresh.close()
    with sqlite3.connect(tmp_path / "fresh.db") as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == SQLITE_PAGE_SIZE == 16384
    old_path = tmp_path / "old.db"
    with sqlite3.connect(old_path) as conn:  # an earlier version's database: SQLite's default pages, WAL mode
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=WAL")
    first = EventSink(f"sqlite:///{old_path}", tmp_path / "spill-old")
    first.start()
    first.submit(_event(2))
    first.close()
    again = EventSink(f"sqlite:///{old_path}", tmp_path / "spill-old")
    again.start()
    again.submit(_event(3))
    again.close()
    with sqlite3.connect(old_path) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2


@pytest.mark.parametrize("count", [1, 129, 300])
def test_every_event_of_a_batch_is_stored_exactly_once_with_its_own_body(tmp_path: Path, count: int) -> None:
    """The writer's insert parameters come straight from the queued items (no row dicts): every event lands once, with
    its own body, and an event submitted twice inside one batch (a replay overlapping live traffic) gives one row."""
    sink = EventSink(f"sqlite:///{tmp_path / 'e.db'}", tmp_path / "spill")
    for i in range(count):
        sink.submit(_event(i))
    sink.submit(_event(0))  # the same request id again, in the same batch
    sink.start()
    sink.close()
    with sink.engine.connect() as conn:
        rows = conn.execute(text("SELECT request_id, body FROM events ORDER BY seq")).all()
    assert sorted(r[0] for r in rows) == sorted(f"req_{i:06d}" for i in range(count))
    assert all(json.loads(body)["request_id"] == rid for rid, body in rows)
