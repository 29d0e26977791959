"""The fleet's central scorer (`distillguard scorer`): events/s, backlog and RSS at 1k, 10k and 100k accounts.

    .venv/bin/python bench/central_scorer.py [--events 300000] [--accounts 1000,10000,100000] [--rate 5000] [--duration 30]

What is measured, per account count K, against a real Debian ``redis-server``
and a real ``distillguard scorer`` process (SQLite store, no replay):

* **drain**: ``--events`` events of the ``default`` scenario (``bench/out/default.jsonl.gz``,
  generated if missing, cycled), spread over exactly K accounts (:func:`spread`: hydras and
  resellers whole, every other account's events dealt to clones so that all K accounts have
  events), are put in the stream with the replicas' own encoding and append script
  (``StreamFeed``'s, batches of 500) before the scorer starts; then the scorer is started and the stream length sampled
  every 0.2 s. Events/s = events / (time from the first to the last consumed
  batch), i.e. the scorer's whole path (XREADGROUP, JSON decode, Scanner
  update, XACK + XTRIM, and the reports it publishes meanwhile: scanner,
  policy engine, risk-snapshot merge). Scorer CPU seconds and peak RSS (VmHWM)
  from /proc when the stream is empty — before the report that covers the last
  events, which at 100,000 accounts is the largest — and again once that report
  is made (the heartbeat's ``events`` covers every event). The CPU figure at the
  empty stream depends on whether a large report fell inside the drain; the one
  through the report covering the last events does not.
* **paced** (at the largest K only): the first of the same events appended at ``--rate``
  events/s for ``--duration`` s while the scorer runs; the backlog (stream
  length) sampled every 0.2 s: median, p90, p99, max during the feed, at the end of the feed,
  and its largest sample per 5 s window until it drained.
  The feeder runs in this process on the same machine, so it competes with
  the scorer for the two cores.

Baseline in the same run: the Scanner alone (``update`` only, no stream, no
reports) over the same events in this process, events per CPU second — the
ceiling the scorer's plumbing and reports are measured against.
Writes the markdown to ``bench/out/central_scorer.md``.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import redis
import yaml

from distillguard.state.scorer_stream import encode_event
from measure import OUT, percentile, proc_stats, scenario_events, src_digest, write_report

DISTILLGUARD = str(Path(sys.executable).with_name("distillguard"))


def load_events(n: int) -> tuple[list[bytes], dict[str, str]]:
    """``n`` events of the ``default`` scenario (cycled when more are asked for than it has) and each account's label."""
    path = scenario_events("default", 7)
    labels_path = OUT / "default.labels.json"
    with gzip.open(path, "rb") as f:
        lines = [line for line in f if line.strip()]
    labels = {account: str(entry["label"]) for account, entry in orjson.loads(labels_path.read_bytes())["accounts"].items()}
    return [lines[i % len(lines)] for i in range(n)], labels


KEPT = ("distiller", "reseller")  # labels whose accounts keep their identity: hydras and resellers stay whole


def spread(lines: list[bytes], accounts: int, labels: dict[str, str]) -> list[bytes]:
    """The events spread over ``accounts`` distinct accounts, every one of them with at least one event.

    The distillers' and resellers' accounts keep their events (the hydra campaigns and resellers stay whole, so
    detection has what it had to find); the other accounts' events are dealt round-robin to clones of their account,
    each account getting clones in proportion to its events so that the total is ``accounts``. A clone has its own
    key, /24, install and header fingerprint; it keeps its account's habits and wording (people with the same
    habits). At 100,000 accounts and 300,000 events most clones have one to three events: the many light accounts
    of a large provider, each of which costs the scorer a new state.
    """
    events = [orjson.loads(line) for line in lines]
    counts: dict[str, int] = {}
    for event in events:
        counts[str(event.get("account_id"))] = counts.get(str(event.get("account_id")), 0) + 1
    kept = {a for a in counts if labels.get(a) in KEPT}
    spread_over = sorted(a for a in counts if a not in kept)
    total = sum(counts[a] for a in spread_over)
    room = accounts - len(kept)
    if room > total:
        sys.exit(f"{total:,} events of spreadable accounts cannot give {room:,} accounts one each: raise --events")
    clones = {a: max(1, counts[a] * room // total) for a in spread_over}
    short = room - sum(clones.values())
    for a in sorted(spread_over, key=lambda a: -counts[a]):  # rounding: the busiest accounts take the rest, or give
        if short == 0:                                          # back what the one-clone minimum took too many
            break
        change = min(short, counts[a] - clones[a]) if short > 0 else max(short, 1 - clones[a])
        clones[a] += change
        short -= change
    dealt: dict[str, int] = {}
    out = []
    for i, event in enumerate(events):
        original = str(event.get("account_id"))
        event["request_id"] = f"req_{i}"
        if original in clones:
            j = dealt.get(original, 0) % clones[original]
            dealt[original] = dealt.get(original, 0) + 1
            if j:
                _clone(event, original, j)
        out.append(encode_event(event))  # what a replica appends: the event's scoring view
    return out


def _clone(event: dict[str, Any], original: str, j: int) -> None:
    event["account_id"] = f"{original}~{j}"
    event["key_id"] = f"{event.get('key_id')}~{j}"
    client = event.get("client") or {}
    if isinstance(client.get("ip"), str) and client["ip"].count(".") == 3:
        a, b, c, d = client["ip"].split(".")
        client["ip"] = f"{a}.{(int(b) + j // 256) % 256}.{(int(c) + j) % 256}.{d}"
    if client.get("header_fp"):
        client["header_fp"] = f"{client['header_fp']}{j:x}"
    attestation = event.get("attestation") or {}
    if attestation.get("install_id"):
        attestation["install_id"] = f"{attestation['install_id']}~{j}"


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (Debian package redis-server)")
    port = 6390 + os.getpid() % 500
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(directory)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            return proc, url
        except redis.RedisError:
            time.sleep(0.05)
    sys.exit("redis-server did not start")


def append(client: redis.Redis, script: Any, lines: list[bytes], bound: int) -> None:
    from distillguard.state.scorer_stream import STREAM

    for start in range(0, len(lines), 500):
        script(keys=[STREAM], args=[bound, *lines[start:start + 500]], client=client)


def start_scorer(directory: Path, url: str, bound: int) -> subprocess.Popen[bytes]:
    config = {"database": f"sqlite:///{directory / 'store.db'}", "state": url, "log_level": "warning",
              "detection": {"scorer": "central", "scorer_backlog_max": bound}}
    path = directory / "scorer.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.Popen([DISTILLGUARD, "scorer", "--config", str(path)], stdout=open(directory / "scorer.log", "ab"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)


def wait_heartbeat(client: redis.Redis, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    from distillguard.state.scorer_stream import HEARTBEAT

    deadline = time.monotonic() + timeout
    while client.get(HEARTBEAT) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("the scorer did not start (see its log)")
        time.sleep(0.1)


def stop_scorer(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def peak_after_last_report(client: redis.Redis, proc: subprocess.Popen[bytes], events: int, timeout: float = 900) -> tuple[float, float]:
    """The scorer's CPU seconds and peak RSS (VmHWM, MB) once a report covers all ``events`` (its heartbeat's ``events``): the report after
    the drain, the largest at 100,000 accounts. Not ``wait4``'s ``ru_maxrss``: a child spawned with vfork + exec
    starts with its parent's high-water mark, and this process holds every event."""
    from distillguard.state.scorer_stream import HEARTBEAT

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        beat = orjson.loads(client.get(HEARTBEAT) or b"{}")
        if int(beat.get("events") or 0) >= events:
            break
        time.sleep(0.5)
    return proc_stats(proc.pid)


def drain_run(work: Path, url: str, events: list[bytes], accounts: int) -> dict[str, Any]:
    from distillguard.state.scorer_stream import APPEND_LUA, STREAM

    client = redis.Redis.from_url(url)
    client.flushdb()
    script = client.register_script(APPEND_LUA)
    append(client, script, events, len(events) + 1)
    directory = Path(tempfile.mkdtemp(dir=work))
    proc = start_scorer(directory, url, len(events) + 1)
    samples: list[tuple[float, int]] = []
    first = last = None
    while True:
        length = int(client.xlen(STREAM))
        now = time.monotonic()
        samples.append((now, length))
        if first is None and length < len(events):
            first = now
        if length == 0:
            last = now
            break
        if proc.poll() is not None:
            sys.exit(f"the scorer exited: {(directory / 'scorer.log').read_text()[-2000:]}")
        time.sleep(0.2)
    cpu, rss = proc_stats(proc.pid)
    cpu_reported, peak = peak_after_last_report(client, proc, len(events))
    time.sleep(3.0)  # its snapshot merge
    beat = orjson.loads(client.get("dg:scorer:heartbeat") or b"{}")
    stop_scorer(proc)
    assert first is not None and last is not None
    distinct = len({orjson.loads(line)["account_id"] for line in events})
    return {"accounts": accounts, "distinct": distinct, "events": len(events), "seconds": last - first, "rate": len(events) / max(last - first, 1e-9),
            "cpu_s": cpu, "per_cpu_s": len(events) / cpu if cpu > 0 else float("nan"), "rss_mb": rss, "reports": beat.get("reports", 0),
            "per_cpu_s_reported": len(events) / cpu_reported if cpu_reported > 0 else float("nan"),
            "peak_mb": peak}


def paced_run(work: Path, url: str, spread_events: list[bytes], accounts: int, rate: float, duration: float) -> dict[str, Any]:
    from distillguard.state.scorer_stream import APPEND_LUA, STREAM

    client = redis.Redis.from_url(url)
    client.flushdb()
    script = client.register_script(APPEND_LUA)
    events = spread_events[: int(rate * duration)]
    directory = Path(tempfile.mkdtemp(dir=work))
    bound = 10 * len(events)
    proc = start_scorer(directory, url, bound)
    wait_heartbeat(client, proc)
    cpu0, _ = proc_stats(proc.pid)
    samples: list[int] = []
    series: list[tuple[float, int]] = []  # (seconds since the feed began, stream length)
    stop = threading.Event()

    def sample() -> None:
        sampler_client = redis.Redis.from_url(url)
        while not stop.wait(0.2):
            length = int(sampler_client.xlen(STREAM))
            series.append((time.monotonic() - started, length))
            if not fed_at:
                samples.append(length)

    fed_at: list[float] = []  # set once the feed is over: the backlog percentiles are of the feed only
    started = time.monotonic()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    batch = max(1, int(rate / 20))  # every 50 ms, as a replica's shipping thread does
    for i in range(0, len(events), batch):
        due = started + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        append(client, script, events[i:i + batch], bound)
    fed = time.monotonic()
    fed_at.append(fed)
    at_end = int(client.xlen(STREAM))
    while int(client.xlen(STREAM)) > 0 and time.monotonic() < fed + 600:
        time.sleep(0.2)
    drained = time.monotonic()
    stop.set()
    watcher.join()
    cpu, rss = proc_stats(proc.pid)
    stop_scorer(proc)
    return {"accounts": accounts, "events": len(events), "achieved_rate": len(events) / (fed - started),
            "backlog_median": statistics.median(samples) if samples else 0, "backlog_p99": percentile([float(s) for s in samples], 99),
            "backlog_p90": percentile([float(s) for s in samples], 90), "windows": windows(series, 5.0),
            "backlog_max": max(samples) if samples else 0, "backlog_end": at_end, "drain_s": drained - fed,
            "per_cpu_s": len(events) / (cpu - cpu0) if cpu > cpu0 else float("nan"), "rss_mb": rss,
            "distinct": len({orjson.loads(line)["account_id"] for line in events})}


def windows(series: list[tuple[float, int]], width: float) -> list[tuple[float, int]]:
    """The backlog's largest sample in each ``width``-second window since the feed began: (window start, max)."""
    out: dict[int, int] = {}
    for at, length in series:
        out[int(at // width)] = max(out.get(int(at // width), 0), length)
    return [(k * width, v) for k, v in sorted(out.items())]


def scanner_baseline(lines: list[bytes]) -> float:
    """``Scanner.update`` alone over the events the scorer drained (decoded beforehand), events per CPU second."""
    from distillguard.detect.scanner import Scanner

    events = [orjson.loads(line) for line in lines]
    scanner = Scanner()
    started = time.process_time()
    for event in events:
        scanner.update(event)
    return len(events) / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--accounts", default="1000,10000,100000")
    parser.add_argument("--rate", type=float, default=5000.0, help="paced run: events/s appended (at the largest account count)")
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()
    began = time.perf_counter()
    digest = src_digest()
    load = os.getloadavg()[0]
    counts = [int(k) for k in args.accounts.split(",")]
    lines, labels = load_events(max(args.events, int(args.rate * args.duration)))
    work = Path(tempfile.mkdtemp(prefix="dg-central-"))
    redis_proc, url = start_redis(work)
    try:
        drains = []
        events: list[bytes] = []
        for accounts in counts:
            events = spread(lines[: args.events], accounts, labels)
            run = drain_run(work, url, events, accounts)
            run["baseline"] = scanner_baseline(events)
            drains.append(run)
            print(f"  {accounts:,} accounts: {run['rate']:,.0f} ev/s, {run['per_cpu_s']:,.0f} ev/CPU-s, RSS {run['rss_mb']:,.0f} MB",
                  file=sys.stderr)
        if len(events) < args.rate * args.duration:
            events = spread(lines, counts[-1], labels)
        paced = paced_run(work, url, events, counts[-1], args.rate, args.duration)
        print(f"  paced {paced['achieved_rate']:,.0f} ev/s at {counts[-1]:,} accounts: backlog max {paced['backlog_max']:,}",
              file=sys.stderr)
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    lines_out = [
        "# Central scorer (`distillguard scorer`)",
        "",
        f"Real `redis-server` and `distillguard scorer` processes on one machine ({os.cpu_count()} cores, load average "
        f"{load:.2f} at start, shared with other work). Events of the `default` scenario, spread over the account count "
        "(`spread` in the script: distillers and resellers keep their accounts, every other account's events are dealt "
        "round-robin to clones with their own address, install and key, so every account has events), appended as the "
        "replicas append them (`encode_event`).",
        "",
        "## Drain: the stream filled first, then consumed",
        "",
        "| accounts asked | accounts in the events | events | events/s (wall) | events per scorer CPU-s | events per scorer CPU-s through the report covering the last events "
        "| Scanner.update alone, events per CPU-s (baseline) "
        "| scorer share of baseline | reports | scorer peak RSS at the end of the drain (MB) | scorer peak RSS after the report covering the last events (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in drains:
        lines_out.append(f"| {run['accounts']:,} | {run['distinct']:,} | {run['events']:,} | **{run['rate']:,.0f}** | {run['per_cpu_s']:,.0f} | "
                         f"{run['per_cpu_s_reported']:,.0f} | "
                         f"{run['baseline']:,.0f} | {run['per_cpu_s'] / run['baseline']:.0%} | {run['reports']} | {run['rss_mb']:,.0f} | "
                         f"{run['peak_mb']:,.0f} |")
    lines_out += [
        "",
        f"## Paced: {args.rate:,.0f} events/s appended for {args.duration:g} s ({paced['distinct']:,} distinct accounts of the "
        f"{paced['accounts']:,}-account spread)",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| achieved append rate (events/s) | {paced['achieved_rate']:,.0f} |",
        f"| backlog (stream length) median | {paced['backlog_median']:,.0f} |",
        f"| backlog p90 | {paced['backlog_p90']:,.0f} |",
        f"| backlog p99 | {paced['backlog_p99']:,.0f} |",
        f"| backlog max | {paced['backlog_max']:,} |",
        f"| backlog at the end of the feed | {paced['backlog_end']:,} |",
        f"| drain time after the feed (s) | {paced['drain_s']:.1f} |",
        f"| events per scorer CPU-s | {paced['per_cpu_s']:,.0f} |",
        f"| scorer peak RSS (MB) | {paced['rss_mb']:,.0f} |",
        "",
        "Backlog, largest sample per 5 s since the feed began (the feed ends at "
        f"{args.duration:g} s): " + ", ".join(f"{at:g}–{at + 5:g} s {length:,}" for at, length in paced["windows"]),
        "",
        "Command: `.venv/bin/python bench/central_scorer.py " + " ".join(sys.argv[1:]) + "`",
    ]
    write_report("central_scorer.md", lines_out, began, digest)


if __name__ == "__main__":
    main()
