"""The gateway's one send wrapper against the two near-identical closures it replaced, in one run.

    python bench/emission_wrapper.py [--rounds 9] [--requests 20000] [--chunks 20]

``Emitter.emitting_before_end`` wraps every request's ``send`` so that the
event goes to the sink with the response's last bytes: before them with the
event write-ahead log, after them without. It used to build one of two
closures (one per order); now one closure tests a boolean on the last body
message. This drives both, on the same fake requests (a start message,
``--chunks`` body messages with ``more_body``, and the last body message), in
alternating rounds, and prints the median CPU ns per request of each and the
median ratio within a round. Emitting itself is a no-op here, so the numbers
are the wrappers' own cost, the only thing that differs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from distillguard.gateway.emission import Emitter

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]


class _Baseline:
    """The two closures as they were before the fold (distillguard/gateway/emission.py at f982862)."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def emit_safely(self, ex: Any) -> None:
        pass

    def emitting_before_end(self, ex: Any, send: Send) -> Send:
        sink = self.sink
        if sink is not None and sink.durable_on_submit:
            async def send_emitting(message: Message) -> None:
                if not ex.emitted and message["type"] == "http.response.body" and not message.get("more_body"):
                    ex.emitted = True
                    if not ex.summarised:
                        self.emit_safely(ex)
                await send(message)

            return send_emitting

        async def send_then_emit(message: Message) -> None:
            await send(message)
            if not ex.emitted and message["type"] == "http.response.body" and not message.get("more_body"):
                ex.emitted = True
                if not ex.summarised:
                    self.emit_safely(ex)

        return send_then_emit


def _folded(sink: Any) -> Emitter:
    emitter = Emitter.__new__(Emitter)  # only .sink and .emit_safely are used by the wrapper
    emitter.sink = sink
    emitter.emit_safely = lambda ex: None  # type: ignore[method-assign]
    return emitter


async def _drive(wrapper: Any, requests: int, chunks: int) -> float:
    """CPU ns per request: wrap a send and push one response's messages through it."""
    start: Message = {"type": "http.response.start", "status": 200, "headers": []}
    chunk: Message = {"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True}
    last: Message = {"type": "http.response.body", "body": b"data: [DONE]\n\n"}

    async def send(message: Message) -> None:
        pass

    began = time.process_time_ns()
    for _ in range(requests):
        ex = SimpleNamespace(emitted=False, summarised=False)
        wrapped = wrapper.emitting_before_end(ex, send)
        await wrapped(start)
        for _ in range(chunks):
            await wrapped(chunk)
        await wrapped(last)
    return (time.process_time_ns() - began) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--chunks", type=int, default=20, help="body messages with more_body before the last one (1: a JSON answer)")
    args = parser.parse_args()
    rows = []
    for durable in (False, True):
        sink = SimpleNamespace(durable_on_submit=durable)
        variants = {"two closures (before)": _Baseline(sink), "one closure (now)": _folded(sink)}
        times: dict[str, list[float]] = {name: [] for name in variants}
        ratios = []
        for round_ in range(args.rounds):
            order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
            measured = {name: asyncio.run(_drive(variants[name], args.requests, args.chunks)) for name in order}
            for name, ns in measured.items():
                times[name].append(ns)
            ratios.append(measured["one closure (now)"] / measured["two closures (before)"])
        for name in variants:
            rows.append((f"write-ahead log {'on' if durable else 'off'}", name, statistics.median(times[name]),
                         statistics.median(ratios) if name.endswith("(now)") else 1.0))
    print(f"{args.requests} requests × {args.chunks + 2} messages per round, {args.rounds} rounds, alternating order")
    print("| sink | wrapper | CPU ns per request (median) | ratio to before (median within rounds) |")
    print("|---|---|---:|---:|")
    for sink_name, name, ns, ratio in rows:
        print(f"| {sink_name} | {name} | {ns:,.0f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
