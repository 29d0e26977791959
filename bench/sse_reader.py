"""What reading a stream costs the gateway: the SSE reader with the learnt text-delta template, without it, and another tree.

    python bench/sse_reader.py [--before-src DIR] [--rounds 7]

CPU microseconds per whole stream fed to ``OpenAIStreamReader`` (one ``feed`` of
the stream as one chunk, as the benchmark upstream's answer arrives, then
``flush``), for two streams: the benchmark upstream's (``bench/fast_upstream.py``:
8 text deltas of 113 characters, a finish chunk, ``[DONE]``) and a token-sized
one (300 deltas of a word each, as models stream). "learning" is this tree's
reader; "parsing each" is the same reader told not to learn
(``_learning = False``: every event parsed whole, the same code otherwise);
``--before-src`` adds the reader of another built ``src/`` (e.g. a compiled copy
of main before the change), measured in a child process in the same rounds.
Medians over rounds, process CPU time (not wall time: the machine may be shared).
Run it with the tree compiled (``setup.py build_ext --inplace``), or it measures
pure Python.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

from fast_upstream import STREAM
from measure import ROOT

WORDS = ["lorem", " ipsum", " dolor", " sit", " amet", ",", " consectetur", " adipiscing", " elit", "."]
TOKENS = b"".join(
    b"data: " + orjson.dumps({"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1, "model": "m",
                              "choices": [{"index": 0, "delta": {"content": WORDS[i % len(WORDS)]}, "finish_reason": None}]})
    + b"\n\n" for i in range(300)
) + b'data: {"id":"chatcmpl-t","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
STREAMS = {"bench upstream (8 deltas)": STREAM, "token-sized (300 deltas)": TOKENS}


def measure(learning: bool, repeat: int) -> dict[str, float]:
    """CPU µs per stream for each stream, with this interpreter's ``distillguard`` (the best of three passes)."""
    from distillguard.gateway.responses import OpenAIStreamReader

    out = {}
    for name, body in STREAMS.items():
        n = max(1, repeat * len(STREAM) // len(body))
        best = float("inf")
        for _ in range(3):
            began = time.process_time()
            for _ in range(n):
                reader = OpenAIStreamReader()
                if not learning:
                    reader._learning = False
                reader.feed(body)
                reader.flush()
            best = min(best, (time.process_time() - began) / n * 1e6)
        out[name] = best
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before-src", type=Path, help="another built src/ directory, measured in a child process")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3000, help="streams per pass (the benchmark upstream's size)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(True, args.repeat)))
        return 0
    import distillguard._compiled as compiled
    import distillguard.gateway.responses  # noqa: F401  (so that compiled_in_use() can see it)

    state = "compiled" if compiled.compiled_in_use() and not compiled.stale_modules() else "pure Python"
    rows: dict[str, dict[str, list[float]]] = {name: {"learning": [], "parsing each": [], "before": []} for name in STREAMS}
    for _ in range(args.rounds):
        if args.before_src is not None:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(args.before_src.resolve()), str(ROOT / "bench")])}
            child = subprocess.run([sys.executable, __file__, "--child", "--repeat", str(args.repeat)], env=env, check=True,
                                   capture_output=True, text=True)
            for name, value in json.loads(child.stdout).items():
                rows[name]["before"].append(value)
        for learning, column in ((True, "learning"), (False, "parsing each")):
            for name, value in measure(learning, args.repeat).items():
                rows[name][column].append(value)
    print(f"This tree: {state}. Medians of {args.rounds} rounds, CPU µs per stream (load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}).\n")
    before = args.before_src is not None
    print("| stream | learning | parsing each | learning / parsing each |" + (" before-src | learning / before |" if before else ""))
    print("|---|---:|---:|---:|" + ("---:|---:|" if before else ""))
    for name, columns in rows.items():
        learn, each = statistics.median(columns["learning"]), statistics.median(columns["parsing each"])
        line = f"| {name} | {learn:.2f} | {each:.2f} | {learn / each:.2f} |"
        if before:
            old = statistics.median(columns["before"])
            line += f" {old:.2f} | {learn / old:.2f} |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
