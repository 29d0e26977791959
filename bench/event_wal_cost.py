"""What the event write-ahead log adds to ``EventSink.submit``, the gateway's per-request call: CPU µs and memory per event.

    PYTHONPATH=src .venv/bin/python bench/event_wal_cost.py [--events 20000] [--rounds 7]

The sink's writer is not started, so only ``submit`` runs: without the log an
append to a deque; with it, encoding the event's JSON line (which the writer
thread would otherwise do later, so that part moves rather than adds) and one
``os.write`` to the segment. Rounds alternate between the two so a busy
machine disturbs both alike; CPU time of this thread (``time.thread_time``),
not wall time. Then the memory one queued event takes, with and without the
log (tracemalloc). The whole-gateway figure is ``bench/gateway_overhead.py
--variants core,nowal``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from distillguard.events import format_ts, new_request_id  # noqa: E402
from distillguard.store import EventSink, WriteAheadLog  # noqa: E402
from measure import src_digest, write_report  # noqa: E402


def _event() -> dict:
    """A chat event as the gateway writes it (~1.3 KB of JSON)."""
    return {
        "v": 1, "ts": format_ts(), "request_id": new_request_id(), "account_id": "acct_0123456789abcdef",
        "key_id": "key_0123456789abcdef", "org_id": "acme", "endpoint": "openai.chat", "model": "gpt-4o-mini",
        "client": {"ip": "198.51.100.7", "user_agent": "OpenAI/Python 1.54.0", "header_fp": "hf1:3b9c0d1e2f3a4b5c",
                   "geo": {"country": "DE", "asn": 3320, "hosting": False}},
        "attestation": None,
        "request": {"system": "You are a helpful assistant.", "messages": [
            {"role": "user", "content": "Explain the difference between a process and a thread in two paragraphs."}],
            "params": {"temperature": 0.7, "max_tokens": 512}},
        "response": {"status": 200, "text": "A process is an instance of a program with its own address space... " * 6,
                     "reasoning_chars": 0, "prompt_tokens": 31, "completion_tokens": 212, "finish_reason": "stop",
                     "latency_ms": 412.5, "error": None},
        "policy": {"action": "allow", "rule": None}, "watermark": {"key_id": None},
    }


def _round(work: Path, wal: bool, events: list[dict]) -> float:
    """CPU µs per submit for one sink."""
    sink = EventSink(f"sqlite:///{work / 'db.sqlite'}", work / "spill", high_water=len(events) + 2,
                     wal=WriteAheadLog(work / "wal") if wal else None)
    started = time.thread_time()
    for event in events:
        sink.submit(event)
    used = time.thread_time() - started
    if sink.wal is not None:
        sink.wal.close()
    sink.engine.dispose()
    return used * 1e6 / len(events)


def _encode_only(events: list[dict]) -> float:
    """CPU µs per event for the JSON line alone (what the writer thread did per event before the log)."""
    started = time.thread_time()
    for event in events:
        orjson.dumps(event)
    return (time.thread_time() - started) * 1e6 / len(events)


def _queued_bytes(work: Path, wal: bool, count: int) -> float:
    """Bytes of memory per event waiting in the sink's queue: events built and submitted under tracemalloc, the caller
    keeping no reference (as the gateway does), so what stays allocated is what the queue holds."""
    work.mkdir()
    sink = EventSink(f"sqlite:///{work / 'db.sqlite'}", work / "spill", high_water=count + 2,
                     wal=WriteAheadLog(work / "wal") if wal else None)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(count):
        sink.submit(_event())
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    if sink.wal is not None:
        sink.wal.close()
    sink.engine.dispose()
    return used / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    began, digest = time.perf_counter(), src_digest()
    results: dict[bool, list[float]] = {False: [], True: []}
    encoding: list[float] = []
    with tempfile.TemporaryDirectory(prefix="dg-walcost-") as tmp:
        for i in range(args.rounds):
            for wal in (False, True) if i % 2 == 0 else (True, False):
                work = Path(tmp) / f"r{i}-{int(wal)}"
                work.mkdir()
                results[wal].append(_round(work, wal, [_event() for _ in range(args.events)]))
            encoding.append(_encode_only([_event() for _ in range(args.events)]))
        memory = {wal: _queued_bytes(Path(tmp) / f"m{int(wal)}", wal, args.events) for wal in (False, True)}
    off, on = statistics.median(results[False]), statistics.median(results[True])
    lines = [
        "## Event write-ahead log: CPU per `submit` (`bench/event_wal_cost.py`)",
        "",
        f"{args.events:,} events of ~1.3 KB per round, {args.rounds} alternating rounds, median; machine shared (2 cores).",
        "",
        "| sink | CPU µs per submit (median) | all rounds |",
        "|---|---:|---|",
        f"| write-ahead log off | {off:.2f} | {', '.join(f'{x:.2f}' for x in results[False])} |",
        f"| write-ahead log on | {on:.2f} | {', '.join(f'{x:.2f}' for x in results[True])} |",
        f"| the event's JSON alone (`orjson.dumps`) | {statistics.median(encoding):.2f} | "
        f"{', '.join(f'{x:.2f}' for x in encoding)} |",
        "",
        f"Added to the event loop by the log: {on - off:.2f} µs per event; of that, {statistics.median(encoding):.2f} µs is "
        "the JSON encoding, which the writer thread no longer does (it stores the line as encoded), so the process's "
        f"total grows by about {on - off - statistics.median(encoding):.2f} µs per event (the write system call and "
        "bookkeeping).",
        "",
        f"Memory per event waiting in the sink's queue (tracemalloc; events built and submitted with no other reference): "
        f"{memory[False]:,.0f} bytes without the log (the event itself), {memory[True]:,.0f} bytes with it (its JSON "
        "line plus the four fields of its row; the event itself can be freed).",
    ]
    write_report("event_wal_cost.md", lines, began, digest)


if __name__ == "__main__":
    main()
