"""Demo model speed: generated tokens/s on one core, through the Python API and over HTTP.

    .venv/bin/python bench/demo_model.py [--runs 7] [--http-requests 24] [--cpu N]

What is measured (medians over ``--runs`` rounds, every round on one pinned core):

* **Python API** — ``DemoModel.load().generate(...)`` and ``.stream(...)`` for
  several ``max_tokens``, with ``min_tokens = max_tokens`` so every call yields
  exactly ``max_tokens`` tokens (the rate is per generated token, not diluted by
  early end-of-text); plus "natural" generations that stop at end-of-text, where
  the per-call set-up (prompt bias, rng) weighs more.
* **HTTP** — ``distillguard demo-model --port P`` started as a subprocess pinned
  to one core, the client (httpx) on another: ``/v1/chat/completions``
  non-streaming and streaming (SSE, usage chunk), one request at a time and 4 at a
  time. Tokens are the server's own ``completion_tokens``. For streaming the
  time to first byte is reported too.
* **Load time** — ``DemoModel.load()`` in a fresh interpreter with
  ``DG_CACHE_DIR`` pointing at an empty temp dir (cold: trains and writes the
  cache) and again at the filled dir (warm: reads the ``.npz``).

Baselines measured in the same run: the issue's target line (2,000 generated
tokens/s on one core) and a naive pure-Python sampler over the *same*
probabilities (``random.choices(range(V), weights=next_token_probs(ctx).tolist())``),
i.e. what the model would cost without the vectorised inverse-CDF sampling.

Writes the markdown to ``bench/out/demo_model.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from measure import percentile, src_digest, write_report

DISTILLGUARD = str(Path(sys.executable).with_name("distillguard"))
TARGET_TPS = 2000.0
PROMPTS = [
    "Tell me about the history of the printing press in Europe.",
    "Write a short note about gardening in a small apartment.",
    "What are good habits for writing clean Python code?",
    "Describe a pleasant walk along the river at sunset.",
    "Give me some ideas for a birthday party for a ten year old.",
    "What is the capital of France and what is it famous for?",
]
# Keeps numpy single-threaded wherever it could use threads; set before numpy is imported (lazily, below).
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}





def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")




def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


# -- Python API -----------------------------------------------------------------------------------------
def api_rates(runs: int, max_tokens_list: list[int], tokens_per_round: int) -> list[dict[str, Any]]:
    from distillguard.demo.model import DemoModel

    model = DemoModel.load()
    prompts = [model.tokenizer.encode(p) for p in PROMPTS]
    model.generate(prompts[0], max_tokens=32, seed=0)  # warm-up
    rows: list[dict[str, Any]] = []
    for max_tokens in max_tokens_list:
        calls = max(1, tokens_per_round // max_tokens)
        for mode in ("generate", "stream", "natural"):
            if mode == "stream" and max_tokens not in (max_tokens_list[0], max_tokens_list[-1]):
                continue
            rates: list[float] = []
            cpu_rates: list[float] = []
            per_call_ms: list[float] = []
            for r in range(runs):
                produced = 0
                cpu_started = time.thread_time()
                started = time.perf_counter()
                for c in range(calls):
                    ids = prompts[c % len(prompts)]
                    seed = r * 1000 + c
                    if mode == "generate":
                        produced += len(model.generate(ids, max_tokens=max_tokens, min_tokens=max_tokens, seed=seed).ids)
                    elif mode == "stream":
                        produced += sum(1 for _ in model.stream(ids, max_tokens=max_tokens, min_tokens=max_tokens, seed=seed))
                    else:
                        produced += len(model.generate(ids, max_tokens=max_tokens, seed=seed).ids)
                elapsed = time.perf_counter() - started
                cpu_rates.append(produced / (time.thread_time() - cpu_started))
                rates.append(produced / elapsed)
                per_call_ms.append(elapsed / calls * 1000)
            rows.append({"max_tokens": max_tokens, "mode": mode, "calls": calls, "tps": median(rates), "cpu_tps": median(cpu_rates),
                         "tps_min": min(rates), "tps_max": max(rates), "ms_per_call": median(per_call_ms)})
    return rows


def naive_rate(runs: int, tokens: int) -> dict[str, float]:
    """Baseline: a pure-Python sampler over the same distribution, one random.choices per token."""
    from distillguard.demo.model import DemoModel

    model = DemoModel.load()
    population = range(model.vocab_size)
    eos, bos, unk = model.tokenizer.eos_id, model.tokenizer.bos_id, model.tokenizer.unk_id
    rates, cpu_rates = [], []
    for r in range(runs):
        rng = random.Random(r)
        context = [bos, bos]
        cpu_started = time.thread_time()
        started = time.perf_counter()
        for _ in range(tokens):
            weights = model.next_token_probs(context).tolist()
            weights[bos] = weights[unk] = weights[eos] = 0.0
            context.append(rng.choices(population, weights=weights)[0])
        rates.append(tokens / (time.perf_counter() - started))
        cpu_rates.append(tokens / (time.thread_time() - cpu_started))
    return {"tps": median(rates), "tps_min": min(rates), "tps_max": max(rates), "cpu_tps": median(cpu_rates)}


# -- load time --------------------------------------------------------------------------------------------
LOAD_SNIPPET = """
import json, time
t0 = time.perf_counter()
from distillguard.demo.model import DemoModel
t1 = time.perf_counter()
DemoModel.load()
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""


def load_times(runs: int, cpu: int) -> dict[str, dict[str, float]]:
    results: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="dg-bench-cache-") as cache:
            env = {**os.environ, **SINGLE_THREAD_ENV, "DG_CACHE_DIR": cache}
            for kind in ("cold", "warm"):
                if kind == "warm" and not any(Path(cache).glob("demo-model-*.npz")):
                    raise SystemExit("the cold run did not write a cache file")
                started = time.perf_counter()
                out = subprocess.run(["taskset", "-c", str(cpu), sys.executable, "-c", LOAD_SNIPPET], env=env, check=True,
                                     capture_output=True, text=True).stdout
                wall = time.perf_counter() - started
                results[kind].append({**json.loads(out.strip().splitlines()[-1]), "wall_s": wall})
    return {kind: {k: median([r[k] for r in rows]) for k in ("import_s", "load_s", "wall_s")} for kind, rows in results.items()}


# -- HTTP ---------------------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def one_request(client: httpx.Client, url: str, max_tokens: int, stream: bool, i: int) -> tuple[int, float, float]:
    """(completion tokens, latency s, time to first byte s)."""
    body = {"model": "demo-1", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": max_tokens,
            "min_tokens": max_tokens, "seed": i, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    started = time.perf_counter()
    if not stream:
        response = client.post(url, json=body)
        response.raise_for_status()
        return int(response.json()["usage"]["completion_tokens"]), time.perf_counter() - started, float("nan")
    tokens, first = 0, float("nan")
    with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first != first:  # nan: first line not seen yet
                first = time.perf_counter() - started
            if line.startswith("data: {") and '"usage"' in line:
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    tokens = int(usage["completion_tokens"])
    return tokens, time.perf_counter() - started, first


def http_round(url: str, max_tokens: int, stream: bool, concurrency: int, seeds: range) -> tuple[float, list[float], list[float]]:
    """Send ``len(seeds)`` requests from ``concurrency`` threads; (tokens/s, latencies, first-byte times)."""
    lock = threading.Lock()
    pending = iter(seeds)
    produced = 0
    latencies: list[float] = []
    firsts: list[float] = []

    def worker() -> None:
        nonlocal produced
        with httpx.Client(timeout=300) as client:
            while True:
                with lock:
                    i = next(pending, None)
                if i is None:
                    return
                tokens, latency, first = one_request(client, url, max_tokens, stream, i)
                with lock:
                    produced += tokens
                    latencies.append(latency)
                    firsts.append(first)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return produced / (time.perf_counter() - started), latencies, firsts


def http_rates(port: int, pid: int, runs: int, requests_per_round: int, max_tokens_list: list[int]) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    with httpx.Client(timeout=60) as warm:
        one_request(warm, url, 16, True, 0)  # warm-up
    rows: list[dict[str, Any]] = []
    for max_tokens in max_tokens_list:
        n = max(4, requests_per_round * 256 // max_tokens)  # about the same number of tokens per round at every length
        for stream in (False, True):
            for concurrency in (1, 4):
                rates: list[float] = []
                cpu_rates: list[float] = []
                latencies: list[float] = []
                firsts: list[float] = []
                for r in range(runs):
                    cpu_before = cpu_seconds(pid)
                    started = time.perf_counter()
                    rate, lat, first = http_round(url, max_tokens, stream, concurrency, range(r * 10_000, r * 10_000 + n))
                    tokens = rate * (time.perf_counter() - started)
                    cpu_rates.append(tokens / max(1e-9, cpu_seconds(pid) - cpu_before))
                    rates.append(rate)
                    latencies += lat
                    firsts += first
                rows.append({"max_tokens": max_tokens, "stream": stream, "concurrency": concurrency, "requests": n * runs,
                             "tps": median(rates), "tps_min": min(rates), "cpu_tps": median(cpu_rates), "latency_ms": median(latencies) * 1000,
                             "latency_p99_ms": percentile(latencies, 99) * 1000,
                             "ttfb_ms": median(firsts) * 1000 if stream else float("nan")})
    return rows


def start_server(cpu: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, **SINGLE_THREAD_ENV}
    proc = subprocess.Popen(["taskset", "-c", str(cpu), DISTILLGUARD, "demo-model", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_up(f"http://127.0.0.1:{port}/v1/models")
    return proc, port


# -- report ---------------------------------------------------------------------------------------------------
def fmt(x: float, digits: int = 0) -> str:
    return "–" if x != x else f"{x:,.{digits}f}"


def timed(label: str, fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = fn()
    print(f"  {label}: {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="rounds per measurement (medians are reported)")
    parser.add_argument("--tokens-per-round", type=int, default=4096)
    parser.add_argument("--http-requests", type=int, default=24, help="requests per HTTP round at max_tokens=256 (scaled for others)")
    parser.add_argument("--http-runs", type=int, default=5, help="rounds per HTTP measurement")
    parser.add_argument("--load-runs", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=None, help="core to pin the model to (default: the first allowed)")
    args = parser.parse_args()
    os.environ.update(SINGLE_THREAD_ENV)
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    cpu = args.cpu if args.cpu is not None else allowed[0]
    client_cpu = next((c for c in allowed if c != cpu), cpu)
    began = time.perf_counter()
    digest = src_digest()
    max_tokens_list = [16, 64, 256, 1024]

    pin(cpu)
    api = timed("python API", lambda: api_rates(args.runs, max_tokens_list, args.tokens_per_round))
    naive = timed("naive baseline", lambda: naive_rate(args.runs, 256))
    loads = timed("load times", lambda: load_times(args.load_runs, cpu))
    pin(client_cpu)
    server, port = start_server(cpu)
    try:
        http = timed("HTTP", lambda: http_rates(port, server.pid, args.http_runs, args.http_requests, [64, 256, 1024]))
    finally:
        server.terminate()
        server.wait(10)

    full = [r for r in api if r["mode"] == "generate"]
    lines = [
        "# Demo model: generated tokens/s on one core",
        "",
        f"Model pinned to CPU {cpu} (HTTP client on CPU {client_cpu}); numpy single-threaded; medians over {args.runs} rounds "
        f"(HTTP: {args.http_runs}). Load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores.",
        "",
        "## Python API vs baselines",
        "",
        "| path | max_tokens | calls/round | tokens/s (median) | min–max | tokens/CPU-s | ms/call | vs target 2,000 | vs naive sampler |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in api:
        name = {"generate": "`generate` (min_tokens=max)", "stream": "`stream` (min_tokens=max)",
                "natural": "`generate` (stops at EOS)"}[r["mode"]]
        lines.append(f"| {name} | {r['max_tokens']} | {r['calls']} | **{fmt(r['tps'])}** | {fmt(r['tps_min'])}–{fmt(r['tps_max'])} | "
                     f"{fmt(r['cpu_tps'])} | {fmt(r['ms_per_call'], 2)} | {r['tps'] / TARGET_TPS:.2f}× | {r['tps'] / naive['tps']:.1f}× |")
    lines += [
        f"| baseline: naive `random.choices` over `next_token_probs` | 256 | 1 | {fmt(naive['tps'])} | "
        f"{fmt(naive['tps_min'])}–{fmt(naive['tps_max'])} | {fmt(naive['cpu_tps'])} | {256 / naive['tps'] * 1000:.2f} | {naive['tps'] / TARGET_TPS:.2f}× | 1.0× |",
        f"| baseline: target from the issue | – | – | {fmt(TARGET_TPS)} | – | – | – | 1.00× | – |",
        "",
        f"Worst full-length API rate: **{fmt(min(r['tps'] for r in full))} tokens/s** "
        f"({'meets' if min(r['tps'] for r in full) >= TARGET_TPS else 'MISSES'} the 2,000 tokens/s target).",
        "",
        "## HTTP (`distillguard demo-model`, `/v1/chat/completions`, min_tokens=max_tokens)",
        "",
        "| max_tokens | stream | concurrency | requests | tokens/s (median) | min | tokens/server-CPU-s | latency ms (median) | p99 | "
        "first byte ms | vs API | vs target |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    api_by_len = {r["max_tokens"]: r["tps"] for r in full}
    for r in http:
        ref = api_by_len.get(r["max_tokens"], float("nan"))
        lines.append(f"| {r['max_tokens']} | {'yes' if r['stream'] else 'no'} | {r['concurrency']} | {r['requests']} | **{fmt(r['tps'])}** | "
                     f"{fmt(r['tps_min'])} | {fmt(r['cpu_tps'])} | {fmt(r['latency_ms'], 1)} | {fmt(r['latency_p99_ms'], 1)} | {fmt(r['ttfb_ms'], 1)} | "
                     f"{r['tps'] / ref:.2f}× | {r['tps'] / TARGET_TPS:.2f}× |")
    lines += [
        "",
        "## Load time (`DemoModel.load()` in a fresh interpreter)",
        "",
        "| cache | load s (median) | import s | process wall s | ratio to warm |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in ("cold", "warm"):
        r = loads[kind]
        lines.append(f"| {kind} ({'trains, writes .npz' if kind == 'cold' else 'reads .npz'}) | **{r['load_s']:.3f}** | "
                     f"{r['import_s']:.3f} | {r['wall_s']:.3f} | {r['load_s'] / loads['warm']['load_s']:.1f}× |")
    write_report("demo_model.md", lines, began, digest)


if __name__ == "__main__":
    main()
