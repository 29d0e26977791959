"""What admission costs the gateway's own CPU, in process: `state: memory` vs Redis at 1 and 64 concurrent requests.

    python bench/state_cost.py

Runs on uvloop as the gateway does, against a ``redis-server`` it starts on
loopback. The whole-gateway figures (bench/fleet.py) move with whatever else
the machine does; these isolate the limiter's share of a request: for
`memory`, the concurrency slot, the prompt count, the admission and the
settlement; for Redis, one admission and its settlement (which rides along
with the next admission).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from distillguard.config import LimitSettings
from distillguard.gateway.limits import Limiter
from distillguard.gateway.prompt_tokens import PromptCounter
from distillguard.state import Quota
from distillguard.state.redis_state import ADMIT_LUA, RedisState
from distillguard.store.registry import KeyRecord
from gateway_overhead import free_port
from measure import spawn_logged, src_digest, stop_sessions, write_report

PAYLOAD = {"model": "m", "messages": [{"role": "system", "content": "You are helpful."},
                                      {"role": "user", "content": "Say something about benchmarks."}], "max_tokens": 256}
BIG = {"model": "m", "messages": [{"role": "user", "content": "lorem ipsum dolor sit amet " * 4_000}] * 3}  # ~320 KB of text
QUOTAS = (Quota("key:bench", 10**9, 10**12, 1000, None), Quota("acct:bench", 10**9, 10**12, 1000, 10**15))


async def memory_us(n: int = 20_000) -> float:
    limiter = Limiter(LimitSettings(requests_per_min=10**9, tokens_per_min=10**12))
    counter = PromptCounter()
    key = KeyRecord("key_b", "h", "acct_b", None, False, "active", {}, {})
    started = time.process_time()
    for i in range(n):
        slot = limiter.enter(key)
        tokens = counter.count(PAYLOAD)
        admission = await limiter.admit(key, tokens, f"r{i}")
        slot.release()
        assert admission is not None
        limiter.settle(admission, tokens + 200)
    return (time.process_time() - started) / n * 1e6


def count_us(n: int = 500) -> float:
    counter = PromptCounter()
    started = time.process_time()
    for _ in range(n):
        counter.count(BIG)
    return (time.process_time() - started) / n * 1e6


async def redis_us(url: str, concurrency: int, per_task: int) -> tuple[float, float]:
    state = RedisState(url, timeout_s=5.0)
    await state.start()

    async def worker(w: int) -> None:
        for i in range(per_task):
            admission = await state.admit(QUOTAS, 10, f"b{concurrency}-{w}-{i}")
            await asyncio.sleep(0)  # the request's own work would go here
            state.settle(admission, 12)  # type: ignore[arg-type]

    started = time.process_time()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    n = concurrency * per_task
    cpu = (time.process_time() - started) / n * 1e6
    calls = state.calls / n
    await state.close()
    return cpu, calls


async def redis_py_us(url: str, concurrency: int, per_task: int) -> float:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, max_connections=concurrency + 1)
    sha = await client.script_load(ADMIT_LUA)
    keys = [f"dg:{kind}:{quota.subject}" for quota in QUOTAS for kind in "wtcd"]
    limits = [-1 if v is None else v for q in QUOTAS for v in (q.requests_per_min, q.tokens_per_min, q.concurrent_requests,
                                                                 q.daily_tokens)]

    async def worker(w: int) -> None:
        settle: list[Any] = [0]  # the previous request's settlement rides along, as in RedisState
        settle_keys: list[str] = []
        for i in range(per_task):
            rid = f"p{concurrency}-{w}-{i}"
            reply = await client.evalsha(sha, len(keys) + len(settle_keys), *keys, *settle_keys, len(QUOTAS), 10, rid, 30_000, 0,
                                         *limits, *settle)
            assert reply[0] == 0, reply
            await asyncio.sleep(0)
            settle, settle_keys = [1, rid, 12, 10, reply[2], len(QUOTAS)], keys

    started = time.process_time()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    cpu = (time.process_time() - started) / (concurrency * per_task) * 1e6
    await client.aclose()
    return cpu


def main() -> int:
    import uvloop

    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is needed: apt-get install redis-server")
    work = Path(tempfile.mkdtemp(prefix="dg-state-cost-"))
    digest = src_digest()
    began = time.perf_counter()
    procs: list = []
    try:
        port = free_port()
        spawn_logged(procs, work, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                   "--dir", str(work)], "redis.log")
        time.sleep(0.5)
        url = f"redis://127.0.0.1:{port}/0"
        memory = uvloop.run(memory_us())
        one = uvloop.run(redis_us(url, 1, 3_000))
        many = uvloop.run(redis_us(url, 64, 100))
        base_one = uvloop.run(redis_py_us(url, 1, 3_000))
        base_many = uvloop.run(redis_py_us(url, 64, 100))
        lines = ["## What admission costs the gateway, in process (`bench/state_cost.py`)", "",
                 "| path | gateway CPU µs per request | Redis calls per request |", "|---|---:|---:|",
                 f"| `memory`: slot + prompt count + admit + settle (small chat body) | {memory:.1f} | — |",
                 f"| prompt count alone, ~320 KB of ASCII text | {count_us():.1f} | — |",
                 f"| Redis: admit + settle, 1 at a time | {one[0]:.1f} | {one[1]:.2f} |",
                 f"| Redis: admit + settle, 64 concurrent | {many[0]:.1f} | {many[1]:.2f} |",
                 f"| baseline: the same script through redis-py's `evalsha`, 1 at a time | {base_one:.1f} | 1.00 |",
                 f"| baseline: the same through redis-py's `evalsha`, 64 concurrent | {base_many:.1f} | 1.00 |"]
        write_report("state_cost.md", lines, began, digest)
        return 0
    finally:
        stop_sessions(procs)


if __name__ == "__main__":
    sys.exit(main())
