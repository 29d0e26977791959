"""What admission costs the gateway's own CPU, in process: `state: memory` vs Redis at 1 and 64 concurrent requests;
and what it costs Redis: the admission script of today against the one before (``bench/admit_before.lua``).

    python bench/state_cost.py [--rounds 5] [--per-round 4000]

Runs on uvloop as the gateway does, against a ``redis-server`` it starts on
loopback. The whole-gateway figures (bench/fleet.py) move with whatever else
the machine does; these isolate the limiter's share of a request: for
`memory`, the concurrency slot, the prompt count, the admission and the
settlement; for Redis, one admission and its settlement (which rides along
with the next admission), every request asking Redis (``headroom_ms=0``) and
with headroom (most requests admitted in process from a reserved slice).

Redis' side: the same admissions (each carrying the previous one's
settlement, as in a steady stream) with today's script through
:class:`RedisState`, and with the script before this stop's rewrite called
with its own argument layout over the same connection code; rounds
alternate, and each reports Redis' CPU per admission (``INFO cpu``, user +
system, the whole server: the script, parsing, the socket) and the script's
own time (``INFO commandstats``, ``usec_per_call`` of ``EVALSHA``). The
median over rounds is shown, and the baseline's. Within one run the
windows do not fill for a minute, so no entry leaves a window here; in a
steady stream about one entry per request does (two more calls).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from distillguard.config import LimitSettings
from distillguard.gateway.limits import Limiter
from distillguard.gateway.prompt_tokens import PromptCounter
from distillguard.state import Quota
from distillguard.state.redis_state import HEADROOM_MS, RedisState
from distillguard.state.redis_wire import RedisWire, command
from distillguard.store.registry import KeyRecord
from gateway_overhead import free_port
from measure import scratch_dir, spawn_logged, src_digest, stop_sessions, write_report

PAYLOAD = {"model": "m", "messages": [{"role": "system", "content": "You are helpful."},
                                      {"role": "user", "content": "Say something about benchmarks."}], "max_tokens": 256}
BIG = {"model": "m", "messages": [{"role": "user", "content": "lorem ipsum dolor sit amet " * 4_000}] * 3}  # ~320 KB of text
QUOTAS = (Quota("key:bench", 10**9, 10**12, 1000, None), Quota("acct:bench", 10**9, 10**12, 1000, 10**15))
BEFORE_LUA = (Path(__file__).resolve().parent / "admit_before.lua").read_text()


def _limits(quotas: tuple[Quota, ...]) -> list[int]:
    return [-1 if v is None else v for q in quotas for v in (q.requests_per_min, q.tokens_per_min, q.concurrent_requests,
                                                             q.daily_tokens)]


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


async def redis_us(url: str, concurrency: int, per_task: int, headroom_ms: int = 0) -> tuple[float, float]:
    """Gateway CPU µs and Redis calls per admit + settle; ``headroom_ms`` 0: every request asks Redis."""
    state = RedisState(url, timeout_s=5.0, headroom_ms=headroom_ms)
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
    sha = await client.script_load(BEFORE_LUA)  # the script of its time: the layout below is its own
    keys = [f"dg:{kind}:{quota.subject}-py" for quota in QUOTAS for kind in "wtcd"]
    limits = _limits(QUOTAS)

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


def _redis_cpu(client: Any) -> tuple[float, int, int]:
    """Redis' CPU seconds so far, and EVALSHA's calls and microseconds (``INFO``)."""
    cpu = client.info("cpu")
    stats = client.info("commandstats").get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"], int(stats["calls"]), int(stats["usec"])


async def before_script(url: str, concurrency: int, n: int, tag: str) -> None:
    """``n`` admissions with the script before this stop's rewrite, its own argument layout, over our connection."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    sha = await client.script_load(BEFORE_LUA)
    conn = await RedisWire.open(client.connection_pool.make_connection(), 5.0)
    quotas = tuple(Quota(q.subject + "-before", q.requests_per_min, q.tokens_per_min, q.concurrent_requests, q.daily_tokens)
                   for q in QUOTAS)
    keys = [f"dg:{kind}:{quota.subject}" for quota in quotas for kind in "wtcd"]
    limits = _limits(quotas)
    previous: list[tuple[str, int]] = []  # the last batch's request ids and days: each settles with one of this batch
    done = 0
    while done < n:
        batch = []
        for i in range(concurrency):  # one pipelined write
            rid = f"{tag}-{done + i}"
            settle: list[Any] = [1, previous[i][0], 12, 10, previous[i][1], len(quotas)] if previous else [0]
            batch.append(command("EVALSHA", sha, len(keys) * (2 if previous else 1), *keys, *(keys if previous else []),
                                 len(quotas), 10, rid, 30_000, 0, *limits, *settle))
        replies = [await future for future in conn.send(b"".join(batch), len(batch))]
        assert all(not isinstance(reply, Exception) and reply[0] == 0 for reply in replies), replies[:1]
        previous = [(f"{tag}-{done + i}", int(reply[2])) for i, reply in enumerate(replies)]
        done += concurrency
    conn.close()
    await client.aclose()


async def after_script(url: str, concurrency: int, n: int, tag: str) -> None:
    """``n`` admissions through :class:`RedisState` (today's script, every one asking Redis), each settled as the next goes."""
    state = RedisState(url, timeout_s=5.0, headroom_ms=0)
    await state.start()
    quotas = tuple(Quota(q.subject + "-after", q.requests_per_min, q.tokens_per_min, q.concurrent_requests, q.daily_tokens)
                   for q in QUOTAS)

    async def worker(w: int) -> None:
        for i in range(n // concurrency):
            admission = await state.admit(quotas, 10, f"{tag}-{w}-{i}")
            await asyncio.sleep(0)
            state.settle(admission, 12)  # type: ignore[arg-type]

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    await state.close()


def redis_side(url: str, rounds: int, per_round: int) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """Per (script, concurrency): each round's Redis CPU µs per admission and EVALSHA µs per call; rounds alternate.

    And per (script, 0): the bytes its keys hold per admission still in the window, at the end.
    """
    import redis
    import uvloop

    client = redis.Redis.from_url(url)
    out: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in range(rounds):
        for concurrency in (1, 64):
            for name, run in (("before", before_script), ("after", after_script)):
                cpu0, calls0, usec0 = _redis_cpu(client)
                uvloop.run(run(url, concurrency, per_round, f"{name}{concurrency}-{r}"))
                cpu1, calls1, usec1 = _redis_cpu(client)
                out.setdefault((name, concurrency), []).append(
                    ((cpu1 - cpu0) / per_round * 1e6, (usec1 - usec0) / max(1, calls1 - calls0)))
    for name, kinds in (("before", "wtcd"), ("after", "sac")):  # what the windows hold now, every admission still in them
        keys = [f"dg:{kind}:{q.subject}-{name}" for q in QUOTAS for kind in kinds]
        size = sum(client.memory_usage(key, samples=0) or 0 for key in keys)
        out[(name, 0)] = [(size / (2 * rounds * per_round), float(size))]
    client.close()
    return out


def main() -> int:
    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the Redis-side comparison (medians)")
    parser.add_argument("--per-round", type=int, default=4000, help="admissions per script, concurrency and round")
    args = parser.parse_args()

    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is needed: apt-get install redis-server")
    work = scratch_dir("dg-state-cost-")
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
        one_h = uvloop.run(redis_us(url, 1, 3_000, HEADROOM_MS))
        many_h = uvloop.run(redis_us(url, 64, 100, HEADROOM_MS))
        base_one = uvloop.run(redis_py_us(url, 1, 3_000))
        base_many = uvloop.run(redis_py_us(url, 64, 100))
        side = redis_side(url, args.rounds, args.per_round)
        lines = ["## What admission costs the gateway, in process (`bench/state_cost.py`)", "",
                 "| path | gateway CPU µs per request | Redis calls per request |", "|---|---:|---:|",
                 f"| `memory`: slot + prompt count + admit + settle (small chat body) | {memory:.1f} | — |",
                 f"| prompt count alone, ~320 KB of ASCII text | {count_us():.1f} | — |",
                 f"| Redis: admit + settle, 1 at a time | {one[0]:.1f} | {one[1]:.2f} |",
                 f"| Redis: admit + settle, 64 concurrent | {many[0]:.1f} | {many[1]:.2f} |",
                 f"| Redis with headroom ({HEADROOM_MS} ms): admit + settle, 1 at a time | {one_h[0]:.1f} | {one_h[1]:.3f} |",
                 f"| Redis with headroom ({HEADROOM_MS} ms): admit + settle, 64 concurrent | {many_h[0]:.1f} | {many_h[1]:.3f} |",
                 f"| baseline: the same script through redis-py's `evalsha`, 1 at a time | {base_one:.1f} | 1.00 |",
                 f"| baseline: the same through redis-py's `evalsha`, 64 concurrent | {base_many:.1f} | 1.00 |",
                 "", "The redis-py baseline calls the script before this stop's rewrite (`bench/admit_before.lua`).", "",
                 f"Redis' own cost per admission (with the previous one's settlement), median of {args.rounds} alternating "
                 f"rounds of {args.per_round:,} admissions each; today's script vs the one before:", "",
                 "| concurrency | Redis CPU µs / admission: before | today | today / before | EVALSHA µs / call: before | today "
                 "| Redis CPU µs, each round (today) |", "|---|---:|---:|---:|---:|---:|---|"]
        for concurrency in (1, 64):
            before, after = side[("before", concurrency)], side[("after", concurrency)]
            b_cpu, a_cpu = statistics.median(x[0] for x in before), statistics.median(x[0] for x in after)
            lines.append(f"| {concurrency} | {b_cpu:.1f} | {a_cpu:.1f} | {a_cpu / b_cpu:.2f} | "
                         f"{statistics.median(x[1] for x in before):.1f} | {statistics.median(x[1] for x in after):.1f} | "
                         + ", ".join(f"{x[0]:.1f}" for x in after) + " |")
        admissions = 2 * args.rounds * args.per_round
        lines += ["", f"Memory of the two subjects' keys at the end (`MEMORY USAGE`), with all {admissions:,} admissions still in "
                      f"the window: before {side[('before', 0)][0][1]:,.0f} bytes ({side[('before', 0)][0][0]:.0f} per admission), "
                      f"today {side[('after', 0)][0][1]:,.0f} bytes (it grows with the window's 0.1 s slots, at most 600 per "
                      "subject, not with its requests)."]
        write_report("state_cost.md", lines, began, digest)
        return 0
    finally:
        stop_sessions(procs)


if __name__ == "__main__":
    sys.exit(main())
