"""A frozen PostgreSQL under load (issue #12, finding 16): what clients, /readyz, the event log and SIGTERM see.

One gateway on a real PostgreSQL (Debian's, started as in the tests), 8 clients
sending chat requests as fast as they are answered. Phase 1: the store is live
(the baseline). Phase 2: every PostgreSQL process is stopped with SIGSTOP —
the server keeps its sockets, so only deadlines can notice. During phase 2
the bench records request latency, when /readyz turns 503, and then sends
SIGTERM while the load is still running. Afterwards the server is thawed and
every acknowledged request id is looked for in the store and the spill files.

    .venv/bin/python bench/frozen_store.py [--seconds 8] [--timeout 5]
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.gateway_fixtures import start_gateway  # noqa: E402
from tests.pg_fixtures import PostgresServer  # noqa: E402
from tests.upstream_stub import UpstreamStub  # noqa: E402

from distillguard.store import iter_events  # noqa: E402
from measure import percentile, scratch_dir, src_digest, write_report  # noqa: E402

CLIENTS = 8
CHAT = {"model": "stub-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


class Load:
    """``CLIENTS`` closed-loop clients; every answer's status, latency and request id, tagged with the phase."""

    def __init__(self, url: str, secret: str) -> None:
        self.url, self.headers = url, {"Authorization": f"Bearer {secret}"}
        self.phase = "live"
        self.samples: list[tuple[str, int, float, str | None]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def _client(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    answer = client.post(self.url, headers=self.headers, json=CHAT)
                except httpx.HTTPError:
                    self.samples.append((self.phase, 0, time.perf_counter() - started, None))
                    continue
                self.samples.append((self.phase, answer.status_code, time.perf_counter() - started,
                                     answer.headers.get("x-request-id") if answer.status_code == 200 else None))

    def row(self, phase: str, seconds: float) -> str:
        mine = [s for s in self.samples if s[0] == phase]
        ok = [s for s in mine if s[1] == 200]
        ms = [s[2] * 1000 for s in ok]
        return (f"| {phase} | {len(ok) / seconds:,.0f} | {percentile(ms, 50):.1f} | {percentile(ms, 99):.1f} | "
                f"{len(mine) - len(ok)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    parser.add_argument("--timeout", type=float, default=5.0, help="database_timeout_s")
    args = parser.parse_args()
    began, digest = time.perf_counter(), src_digest()
    pg = PostgresServer()
    url = pg.start()
    stub = UpstreamStub().start()
    work = scratch_dir("dg-frozen-")
    gw = start_gateway(work, stub.base_url, database=url, database_timeout_s=args.timeout, log_level="warning",
                       limits={"requests_per_min": None, "tokens_per_min": None, "concurrent_requests": None, "daily_tokens": None})
    try:
        load = Load(gw.base_url + "/chat/completions", gw.create_key("bench")["secret"])
        for thread in load.threads:
            thread.start()
        time.sleep(args.seconds)
        load.phase = "frozen"
        frozen_at = time.perf_counter()
        pg.freeze()
        not_ready_after = None
        while time.perf_counter() - frozen_at < args.seconds:
            if not_ready_after is None and httpx.get(gw.root_url + "/readyz", timeout=10).status_code == 503:
                not_ready_after = time.perf_counter() - frozen_at
            time.sleep(0.1)
        load.phase = "shutdown"
        sigterm_at = time.perf_counter()
        gw.proc.send_signal(signal.SIGTERM)
        code = gw.proc.wait(120)
        exit_s = time.perf_counter() - sigterm_at
        load.stop.set()
        for thread in load.threads:
            thread.join(15)
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()
        pg.thaw()
        stub.stop()
    acknowledged = {s[3] for s in load.samples if s[3]}
    stored = {e["request_id"] for e in iter_events(url)}
    spilled = {orjson.loads(line)["request_id"] for path in gw.spill_dir.glob("spill-*.jsonl")
               for line in path.read_bytes().splitlines() if line.strip()}
    pg.cleanup()
    lost = acknowledged - stored - spilled
    lines = [
        "## A frozen PostgreSQL under load (`bench/frozen_store.py`)",
        "",
        f"{CLIENTS} closed-loop clients, chat requests to the upstream stub; phases of {args.seconds:g} s; "
        f"`database_timeout_s: {args.timeout:g}`; machine shared with other work.",
        "",
        "| phase | answered 200/s | p50 ms | p99 ms | not 200 |",
        "|---|---|---|---|---|",
        load.row("live", args.seconds),
        load.row("frozen", args.seconds),
        "",
        "| after the freeze | |",
        "|---|---|",
        f"| `/readyz` 503 after | {not_ready_after:.1f} s |" if not_ready_after is not None else "| `/readyz` 503 after | never |",
        f"| SIGTERM → exit (code {code}) | {exit_s:.1f} s |",
        f"| acknowledged requests | {len(acknowledged):,} |",
        f"| … stored / spilled | {len(acknowledged & stored):,} / {len(acknowledged & spilled - stored):,} |",
        f"| … without an event | {len(lost)} |",
    ]
    write_report("frozen_store.md", lines, began, digest)
    if lost or code != 0 or exit_s >= 30:
        sys.exit(1)


if __name__ == "__main__":
    main()
