"""Online scoring: the gateway-side cost and the lag of `PolicyEngine` + `OnlineScorer` at a fixed event rate.

    .venv/bin/python bench/online_scoring.py [--rate 1000] [--duration 30] [--runs 3]

What is measured: a ``PolicyEngine(Settings())`` is started (its ``OnlineScorer``
spawns the scoring worker process, as in the gateway) and the calling thread
plays the gateway: events of the ``default`` scenario (``bench/out/default.jsonl.gz``,
generated if missing; the first ``rate × duration`` events, in time order) are
fed at ``--rate`` events/s for ``--duration`` s, one ``decide(account, key)``
and one ``observe(event)`` per event, each call timed on its own. Reported:

* the achieved feed rate, and how fast the worker scored (acknowledged events/s);
* queue depth over time (``scorer.backlog``: observed but not yet scored,
  sampled every 50 ms): median, p99, max, and at the end of the feed;
* lag from ``observe`` to "risk updated" — the moment the engine swapped in a
  report that includes that event (median, p99, max);
* µs per ``observe()`` / ``decide()`` on the calling thread (median, p99) —
  side by side with the baseline of a plain ``deque.append`` and ``dict.get``
  timed the same way in the same loop (the floor for any in-process hand-off).

A saturation run then submits the same events as fast as possible and measures
how fast the worker drains them: the max sustainable rate. If the paced run's
backlog grows, the rate is not sustainable and the report says so.
Medians over ``--runs`` runs. Writes the markdown to ``bench/out/online_scoring.md``.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import gzip
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from measure import percentile, scenario_events, src_digest, write_report

DISTILLGUARD = str(Path(sys.executable).with_name("distillguard"))







def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def load_events(n: int, seed: int) -> list[dict[str, Any]]:
    path = scenario_events("default", seed)
    events: list[dict[str, Any]] = []
    with gzip.open(path, "rb") as lines:
        for line in lines:
            events.append(orjson.loads(line))
            if len(events) >= n:
                break
    return events


class Recorder:
    """Wraps the scorer's report callback: when (monotonic) the risk table was swapped, and how many events it covered."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.inner = engine.scorer.on_report
        self.times: list[float] = []
        self.covered: list[int] = []
        engine.scorer.on_report = self

    def __call__(self, report: dict[str, Any]) -> None:
        covered = self.engine.scorer.scored_in_report
        self.inner(report)
        self.times.append(time.monotonic())
        self.covered.append(covered)

    def lag(self, submit_times: list[float]) -> tuple[list[float], int]:
        """Per event: seconds from observe() to the first report covering it; and how many were never covered."""
        lags, missing = [], 0
        for i, submitted in enumerate(submit_times):
            j = bisect.bisect_left(self.covered, i + 1)
            if j == len(self.covered):
                missing += 1
            else:
                lags.append(self.times[j] - submitted)
        return lags, missing


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process so far (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sampler(engine: Any, stop: threading.Event, out: list[tuple[float, int, int]]) -> None:
    scorer = engine.scorer
    while not stop.wait(0.05):
        out.append((time.monotonic(), scorer.backlog, scorer.acknowledged))


def paced_run(events: list[dict[str, Any]], rate: float, publish_every_s: float) -> dict[str, Any]:
    from distillguard.config import Settings
    from distillguard.policy import PolicyEngine

    engine = PolicyEngine(Settings(), publish_every_s=publish_every_s)
    recorder = Recorder(engine)
    engine.start()
    time.sleep(2.0)  # let the spawned worker import the detectors before the clock starts
    baseline_queue: collections.deque[dict[str, Any]] = collections.deque()
    baseline_table = {e["account_id"]: e for e in events[:2000] if e.get("account_id")}
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=sampler, args=(engine, stop, samples), daemon=True)
    observe_ns: list[int] = []
    decide_ns: list[int] = []
    append_ns: list[int] = []
    lookup_ns: list[int] = []
    submit_times: list[float] = []
    clock = time.perf_counter_ns
    interval = 1.0 / rate
    worker_pid = engine.scorer._process.pid
    watcher.start()
    acked_before, cpu_before = engine.scorer.acknowledged, cpu_seconds(worker_pid)
    started = time.monotonic()
    for i, event in enumerate(events):
        due = started + i * interval
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        account, key = event.get("account_id") or "anonymous", event.get("key_id")
        t0 = clock()
        engine.decide(account, key)
        t1 = clock()
        engine.observe(event)
        t2 = clock()
        submit_times.append(time.monotonic())
        baseline_table.get(account)
        t3 = clock()
        baseline_queue.append(event)
        t4 = clock()
        decide_ns.append(t1 - t0)
        observe_ns.append(t2 - t1)
        lookup_ns.append(t3 - t2)
        append_ns.append(t4 - t3)
        if len(baseline_queue) > 10_000:
            baseline_queue.clear()
    fed = time.monotonic()
    backlog_at_end = engine.scorer.backlog
    drained = engine.scorer.wait_idle(600)
    done = time.monotonic()
    worker_cpu = cpu_seconds(worker_pid) - cpu_before
    scored_total = engine.scorer.acknowledged - acked_before
    stop.set()
    watcher.join()
    # The same calls in a tight loop (warm caches, no sleeps in between), with the risk table now populated.
    hot: dict[str, list[int]] = {"observe_ns": [], "decide_ns": [], "append_ns": [], "lookup_ns": []}
    for event in events[:5000]:
        account, key = event.get("account_id") or "anonymous", event.get("key_id")
        t0 = clock()
        engine.decide(account, key)
        t1 = clock()
        engine.observe(event)
        t2 = clock()
        baseline_table.get(account)
        t3 = clock()
        baseline_queue.append(event)
        t4 = clock()
        hot["decide_ns"].append(t1 - t0)
        hot["observe_ns"].append(t2 - t1)
        hot["lookup_ns"].append(t3 - t2)
        hot["append_ns"].append(t4 - t3)
    engine.close()
    feed_s = fed - started
    lags, missing = recorder.lag(submit_times)
    depths = [b for t, b, _ in samples if t <= fed]
    # Worker throughput while being fed: acknowledged events per second over the feed window.
    during = [(t, a) for t, _, a in samples if t <= fed]
    scored_rate = (during[-1][1] - during[0][1]) / (during[-1][0] - during[0][0]) if len(during) >= 2 else float("nan")
    return {
        "events": len(events), "feed_s": feed_s, "achieved_rate": len(events) / feed_s, "scored_rate": scored_rate,
        "depth_median": median([float(d) for d in depths]), "depth_p99": percentile([float(d) for d in depths], 99),
        "depth_max": max(depths) if depths else 0, "depth_end": backlog_at_end, "worker_cpu_s": worker_cpu,
        "per_cpu_s": scored_total / worker_cpu if worker_cpu > 0 else float("nan"),
        "drain_s": done - fed, "drained": drained, "reports": len(recorder.times),
        "lag_median": median(lags), "lag_p99": percentile(lags, 99), "lag_max": max(lags) if lags else float("nan"),
        "lag_missing": missing,
        "observe_ns": observe_ns, "decide_ns": decide_ns, "append_ns": append_ns, "lookup_ns": lookup_ns, "hot": hot,
        "timeline": [(t - started, b) for t, b, _ in samples],
    }


def saturation_run(events: list[dict[str, Any]], publish_every_s: float) -> dict[str, float]:
    """Submit everything at once; how fast does the worker acknowledge (score) it, per wall and per CPU second?"""
    from distillguard.config import Settings
    from distillguard.policy import PolicyEngine

    # All events at once: the queue's bound (detection.scorer_backlog_max) must hold them, or the excess is shed.
    engine = PolicyEngine(Settings(detection={"scorer_backlog_max": len(events) + 1}), publish_every_s=publish_every_s)
    engine.start()
    time.sleep(2.0)
    scorer = engine.scorer
    pid = scorer._process.pid
    cpu_before = cpu_seconds(pid)
    started = time.monotonic()
    for event in events:
        engine.observe(event)
    deadline = started + 900
    while scorer.acknowledged < len(events) and time.monotonic() < deadline:
        time.sleep(0.01)
    acked = time.monotonic()
    worker_cpu = cpu_seconds(pid) - cpu_before
    scored = scorer.acknowledged
    reports = scorer.reports
    engine.close()
    return {"rate": scored / (acked - started), "per_cpu_s": scored / worker_cpu if worker_cpu > 0 else float("nan"),
            "total_s": acked - started, "reports": reports, "drained": float(scored >= len(events))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s fed to observe()")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of feed per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--publish-every", type=float, default=1.0, help="the scorer's report cadence (the gateway's default: 1 s)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    began = time.perf_counter()
    digest = src_digest()
    load = os.getloadavg()[0]
    events = load_events(int(args.rate * args.duration), args.seed)
    print(f"  {len(events):,} events loaded", file=sys.stderr)

    runs = []
    for r in range(args.runs):
        run = paced_run(events, args.rate, args.publish_every)
        runs.append(run)
        print(f"  paced run {r + 1}: {run['achieved_rate']:,.0f} ev/s fed, worker {run['scored_rate']:,.0f} ev/s, backlog max "
              f"{run['depth_max']:,}, lag p99 {run['lag_p99']:.2f}s", file=sys.stderr)
    saturation = []
    for r in range(args.runs):
        sat = saturation_run(events, args.publish_every)
        saturation.append(sat)
        print(f"  saturation run {r + 1}: {sat['rate']:,.0f} ev/s, {sat['per_cpu_s']:,.0f} ev/CPU-s", file=sys.stderr)

    def med(key: str) -> float:
        return median([float(run[key]) for run in runs])

    keys = ("observe_ns", "decide_ns", "append_ns", "lookup_ns")
    pooled = {k: [v / 1000 for run in runs for v in run[k]] for k in keys}
    pooled_hot = {k: [v / 1000 for run in runs for v in run["hot"][k]] for k in keys}
    sustainable = median([s["rate"] for s in saturation])
    keeps_up = (med("scored_rate") >= 0.95 * med("achieved_rate") and med("achieved_rate") >= 0.98 * args.rate
                and all(run["drained"] for run in runs))
    lines = [
        f"# Online scoring at {args.rate:,.0f} events/s",
        "",
        f"`PolicyEngine(Settings())` with its `OnlineScorer` worker (report every {args.publish_every:g} s); "
        f"{len(events):,} events of the `default` scenario fed at {args.rate:,.0f}/s for {args.duration:g} s per run, "
        f"medians over {args.runs} runs (per-call µs pooled over all runs). Load average at start: {load:.2f} on {os.cpu_count()} cores.",
        "",
        "## Rate, queue depth, lag",
        "",
        "| metric | median of runs | min–max of runs |",
        "|---|---:|---:|",
    ]

    def add(label: str, key: str, digits: int = 0, scale: float = 1.0) -> None:
        values = [float(run[key]) * scale for run in runs]
        lines.append(f"| {label} | **{median(values):,.{digits}f}** | {min(values):,.{digits}f}–{max(values):,.{digits}f} |")

    add("achieved feed rate (events/s)", "achieved_rate")
    add("worker scoring rate while fed (acknowledged events/s)", "scored_rate")
    add("queue depth (backlog) median", "depth_median")
    add("queue depth p99", "depth_p99")
    add("queue depth max", "depth_max")
    add("queue depth at end of feed", "depth_end")
    add("drain time after the feed (s)", "drain_s", 2)
    add("reports published", "reports")
    add("worker CPU s during the run", "worker_cpu_s", 1)
    add("worker events per CPU second", "per_cpu_s")
    add("lag observe → risk updated, median (s)", "lag_median", 2)
    add("lag p99 (s)", "lag_p99", 2)
    add("lag max (s)", "lag_max", 2)
    add("events never covered by a report", "lag_missing")
    sat_rates = [s["rate"] for s in saturation]
    sat_cpu = [s["per_cpu_s"] for s in saturation]
    capacity = median(sat_cpu)
    lines += [
        f"| max sustainable rate (saturation: all submitted at once, events/s acknowledged) | **{sustainable:,.0f}** | "
        f"{min(sat_rates):,.0f}–{max(sat_rates):,.0f} |",
        f"| saturation: worker events per CPU second (rate on an uncontended core) | **{capacity:,.0f}** | "
        f"{min(sat_cpu):,.0f}–{max(sat_cpu):,.0f} |",
        "",
        f"**{'Keeps up' if keeps_up else 'Does NOT keep up'} with {args.rate:,.0f} events/s** on this machine: the worker scored "
        f"{med('scored_rate'):,.0f} events/s while fed {med('achieved_rate'):,.0f}/s, backlog at the end of the feed "
        f"{med('depth_end'):,.0f}. Max sustainable ≈ {sustainable:,.0f} events/s wall here ({sustainable / args.rate:.2f}× the target), "
        f"≈ {capacity:,.0f} events per worker CPU second ({capacity / args.rate:.2f}×).",
        "",
        "## Cost on the calling (gateway) thread",
        "",
        "Paced = inside the 1,000 events/s feed (a sleep before every event, the scorer's threads and other processes run in "
        "between, so caches are cold); hot = the same calls back to back over 5,000 events after the feed, risk table populated.",
        "",
        "| call | loop | samples | µs median | µs p99 | µs max | vs baseline: median | p99 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for loop, data in (("paced", pooled), ("hot", pooled_hot)):
        for label, key, ref in (("**`engine.observe(event)`**", "observe_ns", "append_ns"),
                                ("baseline: `deque.append(event)`", "append_ns", None),
                                ("**`engine.decide(account, key)`**", "decide_ns", "lookup_ns"),
                                ("baseline: `dict.get(account)`", "lookup_ns", None)):
            v = data[key]
            m, p = median(v), percentile(v, 99)
            ratio = "1.0× | 1.0×" if ref is None else f"{m / median(data[ref]):.1f}× | {p / percentile(data[ref], 99):.1f}×"
            lines.append(f"| {label} | {loop} | {len(v):,} | {m:.2f} | {p:.2f} | {max(v):,.1f} | {ratio} |")
    timeline = runs[len(runs) // 2]["timeline"]
    step = max(1, len(timeline) // 14)
    lines += [
        "",
        f"## Queue depth over time (run {len(runs) // 2 + 1} of {len(runs)}, sampled every 50 ms)",
        "",
        "| t (s) | " + " | ".join(f"{t:.1f}" for t, _ in timeline[::step]) + " |",
        "|---|" + "---:|" * len(timeline[::step]),
        "| backlog | " + " | ".join(f"{b:,}" for _, b in timeline[::step]) + " |",
    ]
    write_report("online_scoring.md", lines, began, digest)


if __name__ == "__main__":
    main()
