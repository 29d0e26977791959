"""The gateway's own work per request, in process: JSON vs SSE, `state: memory` vs Redis, alternating in one run.

    python bench/request_cpu.py [--rounds 7] [--requests 2000] [--concurrency 1,64] [--profile sse-memory]

Why in process: on a machine shared with other work, wrk's throughput and even
CPU per request of a whole gateway move by ×2 from one run to the next
(bench/RESULTS.md), which hides differences of 10–20 %. Here one process holds
two real gateways (``build_gateway``: SQLite event log with its writer thread
and write-ahead log, key auth, limits, signals, the policy engine; online
detection off), one with ``state: memory`` and one with Redis (a
``redis-server`` it starts on loopback). Requests go straight into each
gateway's ASGI app (no client sockets: the same for every variant), and the
upstream is an in-memory transport answering the benchmark upstream's canned
JSON or SSE body (``bench/fast_upstream.py``). Variants take turns, round after
round; the table gives the median over rounds of CPU per request — of the
whole process (all threads: the event-log writer too), and of the event
loop's thread alone — and the median ratios to the memory/JSON baseline
within each round.

What it leaves out, by design: the HTTP server's parsing and the socket writes
to the client and to the upstream (identical across the variants; they are in
``bench/gateway_overhead.py``), and for Redis the real network round trip's
kernel time on the other side.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import shutil
import statistics
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from distillguard.config import Settings
from distillguard.gateway.server import build_gateway
from distillguard.gateway.types import UpstreamResponseProtocol, UpstreamTransportProtocol
from distillguard.gateway.upstream_http import Origin
from distillguard.store.registry import KeyRecord, hash_secret
from fast_upstream import BODY, STREAM
from gateway_overhead import free_port
from measure import scratch_dir, spawn_logged, src_digest, stop_sessions, write_report

SECRET = "sk-bench-in-process"
REQUEST = (b'{"model":"bench-model","messages":[{"role":"user","content":"Say something about benchmarks."}],'
           b'"max_tokens":256%s}')


class _Answer:
    """The canned answer as one whole read, as it arrives from the benchmark upstream on loopback."""

    def __init__(self, body: bytes, stream: bool) -> None:
        self.status = 200
        self.headers = {"content-type": "text/event-stream" if stream else "application/json"}
        self._body: bytes | None = body

    @property
    def at_eof(self) -> bool:
        return self._body is None

    async def read(self) -> bytes:
        body, self._body = self._body or b"", None
        return body

    async def next_chunk(self) -> bytes | None:
        body, self._body = self._body, None
        return body

    async def __aenter__(self) -> UpstreamResponseProtocol:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None


class _Upstream(UpstreamTransportProtocol):
    async def request(self, origin: Origin, method: bytes, path: bytes, headers: bytes, body: bytes, *,
                      connect_timeout: float | None, read_timeout: float | None) -> UpstreamResponseProtocol:
        stream = b'"stream":true' in body
        return _Answer(STREAM if stream else BODY, stream)

    async def close(self) -> None:
        return None


def _scope(n: int) -> dict[str, Any]:
    headers = [(b"host", b"gateway"), (b"content-type", b"application/json"), (b"authorization", b"Bearer " + SECRET.encode()),
               (b"user-agent", b"bench/1")]
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "server": ("127.0.0.1", 8080),
            "client": ("127.0.0.1", 40000 + n % 20000), "scheme": "http", "method": "POST", "root_path": "",
            "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"", "headers": headers,
            # as distillguard's server offers it: without it every request's disconnect watcher is a task, cancelled
            # at the end, whose CancelledError traceback cycle only the garbage collector frees (not what serve does)
            "extensions": {"distillguard.on_disconnect": _on_disconnect}}


def _on_disconnect(callback: Any) -> Any:
    """The ``distillguard.on_disconnect`` scope extension of a client that never leaves: register, get an unregister."""
    return _nothing


def _nothing() -> None:
    return None


async def _one(app: Any, n: int, body: bytes) -> None:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays: no disconnect
        return {"type": "http.disconnect"}

    status = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(_scope(n), receive, send)
    assert status == 200, status


async def _run(app: Any, stream: bool, requests: int, concurrency: int) -> tuple[float, float]:
    """CPU seconds per request: of the whole process (the event-log writer's threads included), and of the event loop's thread."""
    body = REQUEST % (b',"stream":true' if stream else b"")
    per = requests // concurrency

    async def worker(w: int) -> None:
        for i in range(per):
            await _one(app, w * per + i, body)

    started, loop_started = time.process_time(), time.thread_time()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    loop_cpu = time.thread_time() - loop_started
    await asyncio.sleep(0.06)  # the writer's next flush (50 ms): its work for these requests lands in this sample
    return (time.process_time() - started) / (per * concurrency), loop_cpu / (per * concurrency)


def _settings(work: Path, tag: str, state: str) -> Settings:
    return Settings(database=f"sqlite:///{work / f'{tag}.db'}", spill_dir=str(work / f"spill-{tag}"), state=state,
                    state_timeout_s=2.0, admin_token="bench-admin-token-0123456789", log_level="warning",
                    upstreams=[{"name": "fast", "base_url": "http://upstream.invalid:9/v1", "models": ["*"]}],
                    detection={"online": False},
                    limits={"requests_per_min": 10_000_000, "tokens_per_min": 10_000_000_000, "concurrent_requests": 1000})


async def _measure(args: argparse.Namespace, redis_url: str, work: Path) -> list[str]:
    gateways = {}
    for tag, state in (("memory", "memory"), ("Redis", redis_url)):
        gateway = build_gateway(_settings(work, tag, state))
        gateway.client = _Upstream()  # the upstream in memory (build_gateway wires the real client)
        relay = getattr(gateway, "relay", None)  # (a tree from before the gateway's split has no relay: --src of an older tree)
        if relay is not None:
            relay.client = gateway.client
        await gateway.startup()
        gateway.keys.load([KeyRecord("key_b", hash_secret(SECRET), "acct_b", None, False, "active")])
        gateways[tag] = gateway
    variants = [(f"{kind}, {tag}", tag, kind == "SSE") for kind in ("JSON", "SSE") for tag in gateways]
    lines = []
    try:
        for concurrency in args.concurrency:
            for _name, tag, stream in variants:  # warm-up
                await _run(gateways[tag], stream, min(500, args.requests), concurrency)
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
            for _ in range(args.rounds):
                for name, tag, stream in variants:
                    samples[name].append(await _run(gateways[tag], stream, args.requests, concurrency))
            base = samples[variants[0][0]]
            lines += [f"c={concurrency}:", "", "| variant | process CPU µs per request | × JSON, memory | event loop thread CPU µs "
                      "per request | × JSON, memory | loop thread ratio, round by round |", "|---|---:|---:|---:|---:|---|"]
            for name, _, _ in variants:
                got = samples[name]
                ratios = [[s[k] / b[k] for s, b in zip(got, base, strict=True)] for k in (0, 1)]
                lines.append(f"| {name} | {statistics.median(s[0] for s in got) * 1e6:.1f} | {statistics.median(ratios[0]):.3f} | "
                             f"{statistics.median(s[1] for s in got) * 1e6:.1f} | {statistics.median(ratios[1]):.3f} | "
                             + ", ".join(f"{r:.2f}" for r in ratios[1]) + " |")
            lines.append("")
            print("\n".join(lines[-len(variants) - 4:]), file=sys.stderr, flush=True)
        if args.profile:
            kind, tag = args.profile.split("-")
            profiler = cProfile.Profile(time.thread_time)  # the event loop's thread only
            profiler.enable()
            await _run(gateways["Redis" if tag == "redis" else "memory"], kind == "sse", args.requests, args.concurrency[-1])
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(35)
            if args.profile_out:
                profiler.dump_stats(args.profile_out)
    finally:
        for gateway in gateways.values():
            await gateway.shutdown()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000, help="requests per variant per round")
    parser.add_argument("--concurrency", default="1,64", type=lambda text: [int(c) for c in text.split(",")])
    parser.add_argument("--profile", choices=["json-memory", "sse-memory", "json-redis", "sse-redis"],
                        help="afterwards, one cProfile run (process CPU clock) of that variant, printed to stderr")
    parser.add_argument("--profile-out", metavar="FILE", help="also write that profile (pstats) to FILE")
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is needed: apt-get install redis-server")
    import uvloop

    work = scratch_dir("dg-request-cpu-")
    digest = src_digest()
    began = time.perf_counter()
    procs: list[Any] = []
    try:
        port = free_port()
        spawn_logged(procs, work, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                   "--dir", str(work)], "redis.log")
        time.sleep(0.5)
        lines = uvloop.run(_measure(args, f"redis://127.0.0.1:{port}/0", work))
        header = ["## The gateway's work per request, in process (`bench/request_cpu.py`)", "",
                  f"`python bench/request_cpu.py --rounds {args.rounds} --requests {args.requests} --concurrency "
                  f"{','.join(map(str, args.concurrency))}`: two gateways in one process (`state: memory` and Redis), "
                  "requests straight into their ASGI apps, the canned upstream answers in memory; process CPU per "
                  "request (the event-log writer thread included), variants alternating round by round.", ""]
        write_report("request_cpu.md", header + lines, began, digest)
        return 0
    finally:
        stop_sessions(procs)


if __name__ == "__main__":
    sys.exit(main())
