"""The event sink's writer thread: CPU per event by SQLite page size and events per transaction, in process.

    python bench/event_writer.py [--rounds 3] [--events 12000] [--batches 25,75,300] [--pages 4096,16384]

Why: the writer thread's CPU is the gateway process's CPU (about an eighth of
it under SSE load; bench/RESULTS.md, "Less CPU per event, and an overhead
measurement one round cannot decide"), and an event (~2 KB of JSON) fills
half a default 4 KiB SQLite page. Each cell
writes ``--events`` events shaped like the overhead benchmark's SSE events
through a real :class:`EventSink` with its write-ahead log, in transactions
of the given size (the writer's round, driven from this thread so that only
its work is timed), into a fresh SQLite database created with the given page
size; the figure is this thread's CPU time (``time.thread_time``) per event.
Cells are interleaved round by round, so the machine's load falls on all of
them alike; the table shows the median and every round.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from measure import scratch_dir, src_digest, write_report


def _event(i: int) -> dict[str, Any]:
    from distillguard.events import format_ts, new_request_id

    return {"v": 1, "ts": format_ts(time.time()), "request_id": new_request_id(), "account_id": "acct_0123456789ab",
            "key_id": "key_0123456789ab", "org_id": None, "endpoint": "openai.chat", "model": "bench-model",
            "request": {"messages": [{"role": "user", "content": "Say something about benchmarks."}],
                        "params": {"max_tokens": 256, "stream": True}, "prompt_chars": 31},
            "response": {"status": 200, "text": f"{i} " + "lorem ipsum dolor sit amet " * 33, "reasoning_chars": 0,
                         "prompt_tokens": 12, "completion_tokens": 200, "finish_reason": "stop", "latency_ms": 1.2,
                         "ttft_ms": 0.8, "streamed": True},
            "client": {"ip": "127.0.0.1", "ua": "wrk", "sdk": None, "install_id": None},
            "policy": {"action": "allow", "reasons": []}}


def writer_us_per_event(work: Path, page_size: int, batch: int, events: int) -> float:
    from distillguard.store.sink import EventSink
    from distillguard.store.wal import WriteAheadLog

    db = work / f"events-{page_size}-{batch}-{time.monotonic_ns()}.db"
    with sqlite3.connect(db) as conn:  # the file created with this page size; the sink's own pragma is then a no-op
        conn.execute(f"PRAGMA page_size={page_size}")
        conn.execute("PRAGMA journal_mode=WAL")
    sink = EventSink(f"sqlite:///{db}", work / f"spill-{db.stem}", wal=WriteAheadLog(work / f"wal-{db.stem}"))
    cpu = 0.0
    for _ in range(max(1, events // batch)):
        for i in range(batch):
            sink.submit(_event(i))
        began = time.thread_time()
        sink._drain_all(final=False, at_most=batch)  # one writer round: the batch in one transaction
        cpu += time.thread_time() - began
    with sqlite3.connect(db) as conn:
        got = conn.execute("PRAGMA page_size").fetchone()[0]
    sink.close()
    if got != page_size:
        raise SystemExit(f"event_writer: the database has {got}-byte pages, not {page_size}")
    return cpu / (max(1, events // batch) * batch) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=12000, help="events per cell")
    parser.add_argument("--batches", default="25,75,300", help="events per transaction, comma-separated")
    parser.add_argument("--pages", default="4096,16384", help="SQLite page sizes, comma-separated")
    args = parser.parse_args()
    began = time.perf_counter()
    digest = src_digest()
    work = scratch_dir("dg-bench-writer-")
    cells = [(page, batch) for batch in map(int, args.batches.split(",")) for page in map(int, args.pages.split(","))]
    samples: dict[tuple[int, int], list[float]] = {cell: [] for cell in cells}
    for _ in range(args.rounds):
        for page, batch in cells:
            samples[(page, batch)].append(writer_us_per_event(work, page, batch, args.events))
            print(f"  page {page:>5}  {batch:>4} events/transaction  {samples[(page, batch)][-1]:6.1f} µs/event",
                  file=sys.stderr, flush=True)
    lines = [f"Writer thread CPU per event (µs, `time.thread_time`), {args.events} events per cell, {args.rounds} interleaved "
             "rounds; the event sink with its write-ahead log, SQLite in WAL mode.", "",
             "| events per transaction | page size | µs/event (median) | rounds |", "|---:|---:|---:|---|"]
    for page, batch in cells:
        values = samples[(page, batch)]
        lines.append(f"| {batch} | {page} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    write_report("event_writer.md", lines, began, digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
