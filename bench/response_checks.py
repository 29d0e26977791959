"""What the type checks of upstream answers cost on the hot path (issue #12, finding 15).

    python bench/response_checks.py [--before REV]

Reads the benchmark upstream's stream and JSON answer (``bench/fast_upstream.py``)
with the response readers of this tree and with those of ``REV`` (default
``45ab457``, before the checks), in one process, alternating, and prints the
median time per answer of each and their ratio. The old module is loaded from
``git show REV:src/distillguard/gateway/responses.py``; it needs only orjson.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import orjson

from distillguard.gateway import responses as after
from fast_upstream import BODY, STREAM
from measure import ROOT


def _load_before(rev: str) -> ModuleType:
    source = subprocess.run(["git", "show", f"{rev}:src/distillguard/gateway/responses.py"], cwd=ROOT, check=True,
                            capture_output=True).stdout
    path = Path(tempfile.mkdtemp()) / "responses_before.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("responses_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stream_whole(module: ModuleType) -> None:
    reader = module.OpenAIStreamReader()
    reader.feed(STREAM)
    reader.flush()


EVENTS = [event + b"\n\n" for event in STREAM.split(b"\n\n") if event]


def _stream_by_event(module: ModuleType) -> None:
    reader = module.OpenAIStreamReader()
    for event in EVENTS:
        reader.feed(event)
    reader.flush()


def _json_answer(module: ModuleType) -> None:
    module.summarise_openai(orjson.loads(BODY), module.ResponseSummary())


def _time(work: Callable[[ModuleType], None], module: ModuleType, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        work(module)
    return (time.perf_counter() - started) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="45ab457")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    before = _load_before(args.before)
    print(f"Response readers, µs per answer (median of {args.rounds} rounds × {args.n:,}, alternating); machine shared.\n")
    print(f"| answer | before (`{args.before}`) | after | after / before |")
    print("|---|---:|---:|---:|")
    for label, work in (("stream, one read (9 chunks)", _stream_whole), ("stream, one read per event", _stream_by_event),
                        ("JSON answer (incl. parse)", _json_answer)):
        timings: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            timings["before"].append(_time(work, before, args.n))
            timings["after"].append(_time(work, after, args.n))
        b, a = statistics.median(timings["before"]), statistics.median(timings["after"])
        print(f"| {label} | {b:.2f} | {a:.2f} | {a / b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
