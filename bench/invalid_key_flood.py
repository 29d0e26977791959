"""Invalid-key flood: the gateway's memory and disk while 90 % of requests carry a wrong API key.

    python bench/invalid_key_flood.py [--duration 120] [--after 30] [--connections 64] [--invalid 0.9] [--close]

A loopback flood with ``wrk`` (bounded: ``--connections`` at a time for
``--duration`` seconds) against ``distillguard serve`` in front of
``bench/fast_upstream.py``; every tenth request (by default) carries the one
valid key, the others a different random wrong key each. The gateway's RSS is
sampled every second during the flood and for ``--after`` seconds after it;
at the end the event store is counted and measured. Issue #12's target: RSS
≤ 200 MB throughout and back near its start afterwards; unauthenticated
refusals cost bounded disk (aggregated events, docs/events.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from gateway_overhead import BODY, PYTHON, ROOT, free_port, rss_mb, wait
from measure import scratch_dir, source_line, src_digest, stop_sessions

LUA = """
local valid = "%(key)s"
local body = %(body)s
local share = %(invalid)f
math.randomseed(os.time())
request = function()
  local key = valid
  if math.random() < share then
    key = "sk-dg-" .. string.format("%%08x%%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  end
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}
  if %(close)s then headers["Connection"] = "close" end
  return wrk.format("POST", nil, headers, body)
end
"""


def _events_stored(db: Path) -> tuple[int, int]:
    """(rows in the events table, sum of their ``aggregate.count`` or 1) — requests accounted for."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT body FROM events").fetchall() if _has_body(conn) else []
    accounted = 0
    for (body,) in rows:
        event = json.loads(body)
        accounted += int((event.get("aggregate") or {}).get("count", 1))
    return len(rows), accounted


def _has_body(conn: sqlite3.Connection) -> bool:
    return any(column[1] == "body" for column in conn.execute("PRAGMA table_info(events)"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=120)
    parser.add_argument("--after", type=int, default=30)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--invalid", type=float, default=0.9)
    parser.add_argument("--close", action="store_true", help="a new connection per request (Connection: close)")
    args = parser.parse_args()
    work = scratch_dir("dg-flood-")
    digest = src_digest()
    began = time.perf_counter()
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(work / log, "wb") as handle:
            proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=work, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        up_port = free_port()
        spawn([PYTHON, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(up_port)], "upstream.log")
        upstream = f"http://127.0.0.1:{up_port}/v1"
        wait(upstream + "/models")
        port = free_port()
        db = work / "dg.db"
        config = {"listen": f"127.0.0.1:{port}", "database": f"sqlite:///{db}", "admin_token": "bench-flood-token",
                  "spill_dir": str(work / "spill"), "log_level": "info",
                  "upstreams": [{"name": "fast", "base_url": upstream, "models": ["*"]}],
                  "limits": {"requests_per_min": 10_000_000, "tokens_per_min": 10_000_000_000, "concurrent_requests": 1000,
                             "daily_tokens": None}}
        (work / "dg.yaml").write_text(json.dumps(config))
        gateway = spawn([PYTHON, "-m", "distillguard.cli", "serve", "--config", str(work / "dg.yaml")], "gateway.log")
        root = f"http://127.0.0.1:{port}"
        wait(root + "/healthz")
        admin = {"Authorization": "Bearer bench-flood-token"}
        account = httpx.post(root + "/admin/v1/accounts", json={"name": "flood"}, headers=admin).json()
        key = httpx.post(root + f"/admin/v1/accounts/{account['account_id']}/keys", json={}, headers=admin).json()["secret"]
        for _ in range(50):  # warm: the first requests import and allocate what every later one reuses
            httpx.post(root + "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"})
        time.sleep(2)
        start_rss = rss_mb(gateway.pid)
        db_before = db.stat().st_size + sum(p.stat().st_size for p in work.glob("dg.db-*"))

        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.is_set():
                samples.append((time.monotonic() - t0, rss_mb(gateway.pid)))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(LUA % {"key": key, "body": json.dumps(json.dumps(BODY)), "invalid": args.invalid,
                                  "close": "true" if args.close else "false"})
        out = subprocess.run(["wrk", "-t", "2", "-c", str(args.connections), "-d", f"{args.duration}s", "--timeout", "10s",
                              "-s", script.name, root + "/v1/chat/completions"], capture_output=True, text=True,
                             timeout=args.duration + 120)
        os.unlink(script.name)
        flood_end = samples[-1][0] if samples else 0.0
        time.sleep(args.after)
        stop.set()
        sampler.join()
        requests = int(re.search(r"(\d+) requests in", out.stdout).group(1))  # type: ignore[union-attr]
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout).group(1))  # type: ignore[union-attr]
        gateway.send_signal(signal.SIGTERM)  # drain the writer, then count what was stored
        gateway.wait(60)
        rows, accounted = _events_stored(db)
        db_after = db.stat().st_size + sum(p.stat().st_size for p in work.glob("dg.db-*"))
        during = [rss for t, rss in samples if t <= flood_end]
        after = [rss for t, rss in samples if t > flood_end]
        warnings = sum(1 for line in (work / "gateway.log").read_text(errors="replace").splitlines() if " WARNING " in line)
        lines = [
            f"Invalid-key flood: {args.duration} s at {args.invalid:.0%} invalid keys, {args.connections} connections (wrk"
            f"{', a new connection per request' if args.close else ''}), "
            f"then {args.after} s idle. Machine shared with other work; load average now "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| requests sent (wrk) | {requests:,} ({rps:,.0f}/s) |",
            f"| gateway RSS at start (MB) | {start_rss:.0f} |",
            f"| gateway RSS peak during the flood (MB) | {max(during, default=float('nan')):.0f} |",
            f"| gateway RSS at the end of the flood (MB) | {during[-1] if during else float('nan'):.0f} |",
            f"| gateway RSS {args.after} s after the flood (MB) | {after[-1] if after else float('nan'):.0f} |",
            f"| event rows stored | {rows:,} |",
            f"| requests accounted for by those rows (sum of `aggregate.count`, else 1) | {accounted:,} |",
            f"| database growth (MB) | {(db_after - db_before) / 1e6:.1f} |",
            f"| bytes stored per request | {(db_after - db_before) / max(1, requests):.0f} |",
            f"| WARNING log lines | {warnings:,} |",
            "",
            "RSS every 10 s (MB): " + ", ".join(f"{rss:.0f}" for t, rss in samples[::10]),
        ]
        print("\n".join([*lines, "", f"Total benchmark runtime: {time.perf_counter() - began:.0f} s. {source_line(digest)}"]))
        return 0
    finally:
        stop_sessions(procs)


if __name__ == "__main__":
    sys.exit(main())
