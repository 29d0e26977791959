"""Events lost per 10,000 acknowledged requests: SIGTERM, SIGKILL, and a store outage (issue #13, deliverable 5).

One real gateway (``distillguard serve``) on SQLite, in front of the fast upstream
(bench/fast_upstream.py), under closed-loop load from ``--concurrency`` aiohttp
clients. Each scenario runs on a fresh database and spill directory:

- ``sigterm``: load for ``--seconds``, then SIGTERM under load;
- ``sigkill``: load for ``--seconds``, then SIGKILL under load;
- ``outage+sigterm`` / ``outage+sigkill``: load for ``--seconds``, then the store
  is made unavailable for ``--seconds`` (another connection holds SQLite's
  ``BEGIN EXCLUSIVE`` lock: the gateway's inserts fail with "database is locked"
  after their deadline, as with a stopped server; chmod would not do, the bench
  runs as root), then the signal while the store is still locked.

``--store postgresql`` runs the same scenarios on a PostgreSQL server started
from Debian's packages (tests/pg_fixtures.py), one new database per scenario;
its outage is the server stopped (``pg_ctl stop -m fast``: connections refused,
as in issue #13's "30 s PostgreSQL stop"), started again after the signal.

Acknowledged = a 2xx the client received (its ``x-request-id``). Afterwards the
lock is released, the gateway is started once more on the same database and
spill directory and stopped with SIGTERM (it turns a killed process's
write-ahead segments into a spill file and its writer replays spill files at
start), and lost = acknowledged ids absent from the store and from any spill file.

Each scenario runs with the event write-ahead log on (the default) and off
(``event_wal.enabled: false``) in the same run, unless ``--wal`` picks one.

    .venv/bin/python bench/event_durability.py [--seconds 6] [--concurrency 32] [--timeout 2] [--wal both|on|off]
                                               [--store sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.gateway_fixtures import RunningGateway, start_gateway  # noqa: E402
from tests.pg_fixtures import PostgresServer, fresh_database  # noqa: E402

from distillguard.store import iter_events  # noqa: E402
from gateway_overhead import free_port, wait  # noqa: E402
from measure import ROOT, ClosedLoop, scratch_dir, spawn_logged, src_digest, stop_sessions, write_report  # noqa: E402

CHAT = {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
NO_LIMITS = {"requests_per_min": None, "tokens_per_min": None, "concurrent_requests": None, "daily_tokens": None}
SCENARIOS = ["sigterm", "sigkill", "outage+sigterm", "outage+sigkill"]


def _spilled_ids(spill_dir: Path) -> list[str]:
    return [orjson.loads(line)["request_id"] for path in spill_dir.glob("spill-*.jsonl")
            for line in path.read_bytes().splitlines() if line.strip()]


def _wal_lines(spill_dir: Path) -> int:
    """Event lines in write-ahead segments (what a killed process left for the next start)."""
    return sum(path.read_bytes().count(b"\n") for path in (spill_dir / "wal").glob("*.wal"))


def run_scenario(name: str, upstream: str, seconds: float, concurrency: int, timeout: float, wal: bool,
                 pg: PostgresServer | None = None) -> dict[str, float]:
    work = scratch_dir(f"dg-durable-{name.replace('+', '-')}-")
    settings = {"log_level": "warning", "limits": NO_LIMITS, "database_timeout_s": timeout, "event_wal": {"enabled": wal}}
    if pg is not None:
        settings["database"] = fresh_database(pg)
    gw: RunningGateway = start_gateway(work, upstream, **settings)
    load = ClosedLoop(gw.base_url + "/chat/completions", gw.create_key("bench")["secret"], CHAT, concurrency)
    load.thread.start()
    time.sleep(seconds)
    lock: sqlite3.Connection | None = None
    outage = name.startswith("outage")
    if outage and pg is not None:
        pg.stop()
        time.sleep(seconds)
    elif outage:
        lock = sqlite3.connect(gw.database.removeprefix("sqlite:///"), isolation_level=None, timeout=30)
        lock.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
    failed_before_signal = load.failed  # after it, every attempt fails (connection refused): not interesting
    signalled = time.perf_counter()
    gw.proc.send_signal(signal.SIGKILL if name.endswith("sigkill") else signal.SIGTERM)
    code = gw.proc.wait(120)
    exit_s = time.perf_counter() - signalled
    load.stop.set()
    load.thread.join(15)
    if lock is not None:
        lock.rollback()
        lock.close()
    if outage and pg is not None:
        pg.restart()
    queued_at_death = len(_spilled_ids(gw.spill_dir))
    in_wal_at_death = _wal_lines(gw.spill_dir)
    again = start_gateway(work, upstream, **settings)  # replays the spill files at start, drains them at SIGTERM
    again.proc.send_signal(signal.SIGTERM)
    again.proc.wait(120)
    acknowledged = set(load.acknowledged)
    stored = {e["request_id"] for e in iter_events(gw.database)}
    spilled = set(_spilled_ids(gw.spill_dir))
    lost = acknowledged - stored - spilled
    return {"acknowledged": len(acknowledged), "rate": len(acknowledged) / (seconds * (2 if outage else 1)),
            "failed": failed_before_signal, "spilled_at_death": queued_at_death, "wal_at_death": in_wal_at_death, "lost": len(lost), "code": code or 0,
            "exit_s": exit_s, "per_10k": 10_000 * len(lost) / max(1, len(acknowledged))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="load before the signal (and length of the outage)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients")
    parser.add_argument("--timeout", type=float, default=2.0, help="database_timeout_s of the gateway")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of " + ", ".join(SCENARIOS))
    parser.add_argument("--wal", choices=["both", "on", "off"], default="both", help="the event write-ahead log in each scenario")
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite",
                        help="the event store; postgresql: a server from Debian's packages, its outage a stop")
    args = parser.parse_args()
    began, digest = time.perf_counter(), src_digest()
    procs: list = []
    pg = PostgresServer() if args.store == "postgresql" else None
    if pg is not None:
        pg.url = pg.start()  # type: ignore[attr-defined]
    work = scratch_dir("dg-durable-up-")
    up_port = free_port()
    spawn_logged(procs, work, [sys.executable, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(up_port)], "upstream.log")
    upstream = f"http://127.0.0.1:{up_port}/v1"
    wait(upstream + "/models")
    rows = []
    try:
        modes = {"both": [True, False], "on": [True], "off": [False]}[args.wal]
        for name, wal in [(name, wal) for name in args.scenarios.split(",") for wal in modes]:
            r = run_scenario(name, upstream, args.seconds, args.concurrency, args.timeout, wal, pg)
            rows.append(f"| {name} | {'on' if wal else 'off'} | {r['acknowledged']:,} | {r['rate']:,.0f} | {r['failed']:,} | "
                        f"{r['spilled_at_death']:,} | {r['wal_at_death']:,} | "
                        f"{int(r['code'])} in {r['exit_s']:.1f} s | {r['lost']:,} | {r['per_10k']:.1f} | "
                        f"{1000 * r['lost'] / max(1.0, r['rate']):.0f} |")
            print(rows[-1], flush=True)
    finally:
        stop_sessions(procs)
        if pg is not None:
            pg.cleanup()
    outage = (f"outages stop the PostgreSQL server (`pg_ctl stop -m fast`) for another {args.seconds:g} s and signal while it "
              "is down" if pg is not None else
              f"outages hold SQLite's exclusive lock for another {args.seconds:g} s and signal while it is held")
    lines = [
        "## Events lost per 10,000 acknowledged requests (`bench/event_durability.py`)",
        "",
        f"One gateway on {'PostgreSQL' if pg is not None else 'SQLite'}, fast upstream, {args.concurrency} closed-loop aiohttp "
        f"clients on the same machine; {args.seconds:g} s of load before the signal; {outage}; `database_timeout_s: {args.timeout:g}`. "
        "Machine shared with other engineers' work (2 cores): rates are low and noisy, the loss ratio is the figure.",
        "",
        "| scenario | write-ahead log | acknowledged (2xx) | ack/s | not 2xx before the signal | events in spill files at exit | "
        "event lines in write-ahead segments at exit | exit | lost | lost per 10k | lost as ms of traffic |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    write_report(f"event_durability{'_postgresql' if pg is not None else ''}.md", lines, began, digest)


if __name__ == "__main__":
    main()
