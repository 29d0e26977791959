"""Fleet: one replica with `state: memory` vs one and three replicas sharing Redis, on the same upstream, in one run.

    python bench/fleet.py [--duration 8] [--rounds 5] [--state-timeout 2.0] [--pin] [--no-unix]

Needs ``wrk`` and ``redis-server`` (Debian packages). For each set-up it runs
wrk against every replica at once (JSON, c=1 and c=64 in total) and reports
throughput, latency added over the upstream (p50/p99, the mean over the
replicas' wrk runs), CPU ms per request of the gateway processes, Redis' own
CPU ms per request, the two together (what a request costs the fleet), Redis
script calls per request (from ``INFO commandstats``: the round trips) and
the script's own time per call (``usec_per_call``). The set-ups take turns
round after round; CPU per request is the median of the rounds' figures, so
one round disturbed by other work on the machine does not move it; the
Redis-over-memory ratio is also given per round (each round measures the
set-ups one right after the other, in an order that alternates round by
round) and as the median of those paired ratios. One replica with Redis is
measured twice: over TCP, what a fleet has, and over a Unix socket (``state:
unix:///…``), what a Redis on the gateway's own host allows (``--no-unix``
leaves it out).

``--pin`` gives the gateway processes CPU 0 and runs everything else (wrk, the
upstream, Redis) on the other CPUs, as in a deployment where Redis runs on
its own host: without it, on a 2-core machine, the gateway's core runs Redis'
script or wrk while the gateway waits for Redis, and the gateway pays for
that in caches refilled after every round trip (a cost of sharing the
machine, not of the gateway).

With Redis, a replica far below a key's limits admits from headroom it
reserved in Redis (``state_headroom_ms``, docs/deploy.md) instead of making a
round trip per request; the set-up "1 replica, Redis, per request" turns that
off (``state_headroom_ms: 0``) to show the per-request path in the same run.

Then it measures limit overshoot: a key limited to 600 requests/min (headroom
slices of 6 requests) and one limited to 6,000 (slices of 60) hammered through
three replicas for a few seconds, with Redis state and — the baseline — with
per-process memory state; with the Redis calls made per admitted request.

Last, decision propagation (``--propagation-only``: this stage alone): how long
a decision made through replica 1 takes to be enforced by replicas 2 and 3 —
a manual block and clear, an account's new limits (lowered to 1 request/min
and raised back while the others serve the key from headroom grants) and a
scorer decision — with Redis notices, and by polling the database alone
(``memory``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from gateway_overhead import cpu_s, free_port, run_wrk, wait
from measure import scratch_dir, spawn_logged, src_digest, stop_sessions, write_report

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
UNLIMITED = {"requests_per_min": 10_000_000, "tokens_per_min": 10_000_000_000, "concurrent_requests": 1000, "daily_tokens": None}


def redis_calls(port: int) -> tuple[int, int]:
    """Script calls Redis has served so far (EVAL + EVALSHA: one per round trip the gateways made) and their microseconds."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"INFO commandstats\r\n")
        data = b""
        while b"\r\n" not in data:
            data += conn.recv(65536)
        length = int(data[1:data.index(b"\r\n")])  # a bulk reply: $<length>\r\n<text>\r\n, often more than one read
        while len(data) < data.index(b"\r\n") + 2 + length + 2:
            data += conn.recv(65536)
    calls = usec = 0
    for line in data.decode().splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            calls += int(line.split("calls=")[1].split(",")[0])
            usec += int(line.split("usec=")[1].split(",")[0])
    return calls, usec


def answered(root: str) -> Counter[int]:
    """Chat completions a replica has answered so far, by status (``distillguard_requests_total``)."""
    counts: Counter[int] = Counter()
    for line in httpx.get(root + "/metrics").text.splitlines():
        if line.startswith('distillguard_requests_total{endpoint="openai.chat"'):
            status = int(line.split('status="')[1].split('"')[0])
            counts[status] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def _served(root: str, secret: str) -> bool:
    answer = httpx.post(root + "/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    return answer.status_code == 200


def _until_all(check: Callable[[str], bool], roots: list[str], timeout: float = 10.0) -> float:
    start = time.perf_counter()
    pending = list(roots)
    while pending and time.perf_counter() - start < timeout:
        pending = [root for root in pending if not check(root)]
    return time.perf_counter() - start


def decision_propagation(roots: list[str], secret: str, account: str, rounds: int) -> list[float]:
    """Seconds until replicas 2.. enforce a manual block (and then a clear) set through replica 1, ``rounds`` times each."""
    admin = {"Authorization": "Bearer bench"}
    delays = []
    for _ in range(rounds):
        for action, served in (("block", False), ("clear", True)):
            httpx.post(roots[0] + f"/admin/v1/accounts/{account}/action", json={"action": action}, headers=admin).raise_for_status()
            delays.append(_until_all(lambda root, want=served: _served(root, secret) == want, roots[1:]))
    return delays


def limits_propagation(roots: list[str], secret: str, account: str, rounds: int) -> list[float]:
    """Seconds until replicas 2.. apply an account's new limits set through replica 1, ``rounds`` times each way.

    Lowered to 1 request/min (until a chat request to each other replica is refused), then raised back to
    :data:`UNLIMITED` (until each serves it again). Before each change the other replicas serve the key from a
    headroom grant taken under the limits in force (a few requests each first), so the time includes ending that
    grant, not only the key table's reload.
    """
    admin = {"Authorization": "Bearer bench"}
    delays = []
    for _ in range(rounds):
        for limits, served in (({"requests_per_min": 1}, False), (UNLIMITED, True)):
            for root in roots[1:]:
                for _ in range(3):  # busy on every replica: a grant is held
                    _served(root, secret)
            httpx.put(roots[0] + f"/admin/v1/accounts/{account}/limits", json=limits, headers=admin).raise_for_status()
            delays.append(_until_all(lambda root, want=served: _served(root, secret) == want, roots[1:]))
    return delays


def scorer_propagation(roots: list[str], secret: str, account: str) -> list[float]:
    """Seconds from replica 1's scorer flagging a harvester until the other replicas report it (empty: never flagged)."""
    admin = {"Authorization": "Bearer bench"}

    def flagged(root: str) -> bool:
        risk = httpx.get(root + f"/admin/v1/accounts/{account}/risk", headers=admin)
        return risk.status_code == 200 and max(risk.json()["distillation_score"], risk.json()["reseller_score"]) >= 0.5

    for i in range(200):
        httpx.post(roots[0] + "/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"}, timeout=10,
                   json={"model": "m", "messages": [{"role": "user", "content":
                         f"Problem {i}: compute {i} * 17. Write out your internal reasoning step by step."}]})
        if flagged(roots[0]):
            return [_until_all(flagged, roots[1:])]
    return []


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating measurements of every set-up (CPU per request, p50 and p99: the median of the rounds)")
    parser.add_argument("--state-timeout", type=float, default=2.0,
                        help="state_timeout_s of the replicas (default 2 s: on a machine this loaded, 0.25 s trips fail_open)")
    parser.add_argument("--pin", action="store_true",
                        help="gateways on CPU 0, wrk, the upstream and Redis on the other CPUs (see the module docstring)")
    parser.add_argument("--no-unix", action="store_true", help="leave out the set-up with Redis over a Unix socket")
    parser.add_argument("--propagation-only", action="store_true",
                        help="only the decision propagation stage (written to bench/out/fleet_propagation.md)")
    args = parser.parse_args()
    for tool in ("wrk", "redis-server", *(("taskset",) if args.pin else ())):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed: apt-get install {tool}")
    work = scratch_dir("dg-fleet-")
    digest = src_digest()
    began = time.perf_counter()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    procs: list[subprocess.Popen[bytes]] = []
    pin_gateway: list[str] = []
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs at least 2 CPUs")
        os.sched_setaffinity(0, cpus[1:])  # this process and its children: wrk, the upstream, Redis
        pin_gateway = ["taskset", "-c", str(cpus[0])]
    account_of: dict[str, str] = {}  # benchmark key → its account

    def spawn(cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        return spawn_logged(procs, work, cmd, log)

    def gateways(tag: str, n: int, state: str, limits: dict[str, Any], detection: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> list[tuple[str, subprocess.Popen[bytes]]]:
        out = []
        for i in range(n):
            port = free_port()
            config = {"listen": f"127.0.0.1:{port}", "database": f"sqlite:///{work / f'{tag}.db'}", "admin_token": "bench",
                      "spill_dir": str(work / f"spill-{tag}-{i}"), "log_level": "warning", "state": state,
                      "state_timeout_s": args.state_timeout,
                      "upstreams": [{"name": "fast", "base_url": upstream, "models": ["*"]}], "detection": detection or {"online": False},
                      "limits": limits, **(extra or {})}
            (work / f"{tag}-{i}.yaml").write_text(json.dumps(config))
            proc = spawn([*pin_gateway, PYTHON, "-m", "distillguard.cli", "serve", "--config", str(work / f"{tag}-{i}.yaml")], f"{tag}-{i}.log")
            wait(f"http://127.0.0.1:{port}/healthz")
            out.append((f"http://127.0.0.1:{port}", proc))
        return out

    def make_key(roots: list[str], limits: dict[str, Any] | None = None) -> str:
        admin = {"Authorization": "Bearer bench"}
        account = httpx.post(roots[0] + "/admin/v1/accounts", json={"name": "bench", "limits": limits}, headers=admin).json()
        secret: str = httpx.post(roots[0] + f"/admin/v1/accounts/{account['account_id']}/keys", json={}, headers=admin).json()["secret"]
        account_of[secret] = account["account_id"]
        deadline = time.time() + 20
        for root in roots:  # the other replicas load it from the shared database within a second
            while httpx.get(root + "/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 401:
                if time.time() > deadline:
                    raise SystemExit(f"{root} never loaded the benchmark key")
                time.sleep(0.2)
        return secret

    def load(targets: list[tuple[str, subprocess.Popen[bytes]]], key: str, connections: int, duration: int,
             stream: bool = False) -> list[dict[str, float]]:
        per = max(1, connections // len(targets))
        results: list[dict[str, float]] = [{} for _ in targets]

        def one(index: int) -> None:
            results[index] = run_wrk(targets[index][0] + "/v1/chat/completions", per, duration, stream, key)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(targets))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    try:
        up_port = free_port()
        spawn([PYTHON, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(up_port)], "upstream.log")
        upstream = f"http://127.0.0.1:{up_port}/v1"
        wait(upstream + "/models")
        redis_port = free_port()
        redis_socket = work / "redis.sock"
        redis_proc = spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                            "--dir", str(work), "--unixsocket", str(redis_socket), "--unixsocketperm", "700"], "redis.log")
        time.sleep(0.5)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"

        rows: list[tuple[str, str, dict[str, Any]]] = []
        direct: dict[str, dict[str, float]] = {}
        for conns in (() if args.propagation_only else (1, 64)):
            run_wrk(upstream + "/chat/completions", conns, 2, False, None)
            direct[f"c={conns}"] = run_wrk(upstream + "/chat/completions", conns, max(4, args.duration // 2), False, None)
        per_request = {"state_headroom_ms": 0}
        setups: list[tuple[str, str, int, str, dict[str, Any]]] = [
            ("1 replica, memory", "mem1", 1, "memory", {}), ("1 replica, Redis", "redis1", 1, redis_url, {}),
            ("1 replica, Redis, per request", "redis1p", 1, redis_url, per_request),
            *([] if args.no_unix else [("1 replica, Redis (Unix socket)", "redis1u", 1, f"unix://{redis_socket}", {})]),
            ("3 replicas, Redis", "redis3", 3, redis_url, {})][:0 if args.propagation_only else None]
        # Every set-up runs at once and the measurements alternate between them, round after round, so a
        # change in the machine's load (other work on the shared cores) falls on all of them alike.
        started = [(name, n, targets, key) for name, tag, n, state, extra in setups
                   for targets in [gateways(tag, n, state, UNLIMITED, extra=extra)]
                   for key in [make_key([root for root, _ in targets])]]
        for conns in (1, 64):
            samples: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in started}
            for round_ in range(args.rounds):
                for name, n, targets, key in (started if round_ % 2 == 0 else started[::-1]):  # no set-up always first
                    load(targets, key, conns if conns >= n else n, 2)  # warm-up
                    duration = args.duration
                    cpu_before = sum(cpu_s(p.pid) for _, p in targets)
                    redis_cpu_before = cpu_s(redis_proc.pid)
                    calls_before = redis_calls(redis_port)
                    results = load(targets, key, conns if conns >= n else n, duration)
                    samples[name].append({
                        "requests": sum(r["rps"] for r in results) * duration, "seconds": duration,
                        "p50_ms": sum(r["p50_ms"] for r in results) / len(results),
                        "p99_ms": sum(r["p99_ms"] for r in results) / len(results),
                        "cpu_s": sum(cpu_s(p.pid) for _, p in targets) - cpu_before,
                        "redis_cpu_s": cpu_s(redis_proc.pid) - redis_cpu_before,
                        "calls": redis_calls(redis_port)[0] - calls_before[0],
                        "script_us": redis_calls(redis_port)[1] - calls_before[1],
                        "errors": sum(r["non_2xx"] + r["socket_errors"] for r in results)})
            for name, n, _, _ in started:
                got = samples[name]
                requests = max(1.0, sum(s["requests"] for s in got))
                label = f"c={conns}" if n == 1 else f"c={max(conns, n)} ({max(1, conns // n)} per replica)"
                row = {
                    "rps": requests / sum(s["seconds"] for s in got),
                    "p50_ms": statistics.median(s["p50_ms"] for s in got),
                    "p99_ms": statistics.median(s["p99_ms"] for s in got),
                    "cpu_ms_per_req": statistics.median(s["cpu_s"] * 1000 / max(1.0, s["requests"]) for s in got),
                    "redis_cpu_ms_per_req": statistics.median(s["redis_cpu_s"] * 1000 / max(1.0, s["requests"]) for s in got),
                    "whole_ms_per_req": statistics.median((s["cpu_s"] + s["redis_cpu_s"]) * 1000 / max(1.0, s["requests"])
                                                          for s in got),
                    "calls_per_req": sum(s["calls"] for s in got) / requests,
                    "script_us_per_call": sum(s["script_us"] for s in got) / max(1.0, sum(s["calls"] for s in got)),
                    "errors": sum(s["errors"] for s in got),
                    "base": f"c={conns}",
                    # the same ratio within each round: how much the rounds disagree
                    "cpu_ms_rounds": [s["cpu_s"] * 1000 / max(1.0, s["requests"]) for s in got],
                    "whole_ms_rounds": [(s["cpu_s"] + s["redis_cpu_s"]) * 1000 / max(1.0, s["requests"]) for s in got],
                }
                rows.append((name, label, row))
                print(f"  {name:<20} {label:<22} {row['rps']:>8.0f} req/s  p50 {row['p50_ms']:.2f}  p99 {row['p99_ms']:.2f}  "
                      f"cpu {row['cpu_ms_per_req']:.3f} ms/req  redis {row['redis_cpu_ms_per_req']:.3f}  whole "
                      f"{row['whole_ms_per_req']:.3f}  calls {row['calls_per_req']:.4f}",
                      file=sys.stderr, flush=True)
        for _, _, targets, _ in started:
            for _, proc in targets:
                proc.terminate()
                proc.wait(30)

        overshoot: list[tuple[str, int, int, int, int, float]] = []
        over_setups = [(f"3 replicas, {what}", f"over-{tag}-{limit}", state, limit) for limit in (600, 6_000)
                       for what, tag, state in (("Redis", "redis", redis_url), ("memory (baseline)", "mem", "memory"))]
        for name, tag, state, limit in over_setups[:0 if args.propagation_only else None]:
            targets = gateways(tag, 3, state, UNLIMITED)
            key = make_key([root for root, _ in targets], limits={"requests_per_min": limit, "tokens_per_min": None})
            before = [answered(root) for root, _ in targets]
            calls_before = redis_calls(redis_port)[0]
            results = load(targets, key, 48, 5)
            counts = [answered(root) for root, _ in targets]  # exact, from each replica's /metrics
            calls = redis_calls(redis_port)[0] - calls_before if state != "memory" else 0
            admitted = sum(c[200] for c in counts) - sum(b[200] for b in before)
            attempted = sum(sum(c.values()) for c in counts) - sum(sum(b.values()) for b in before)
            trips = sum((work / f"{tag}-{i}.log").read_text().count("until it answers again") for i in range(3))
            # calls per admitted request: the refused ones (each decided in Redis) are left out by subtracting them
            per_admitted = max(0, calls - (attempted - admitted)) / max(1, admitted)
            overshoot.append((name, limit, admitted, attempted, trips, per_admitted))
            print(f"  overshoot {name} {limit}/min: {admitted} admitted of {attempted}; {calls} Redis calls", file=sys.stderr, flush=True)
            for _, proc in targets:
                proc.terminate()
                proc.wait(30)

        propagation: list[tuple[str, list[float], list[float], list[float]]] = []
        for name, tag, state in (("3 replicas, Redis", "prop-redis", redis_url), ("3 replicas, memory (no notices)", "prop-mem", "memory")):
            targets = gateways(tag, 3, state, UNLIMITED, detection={"online": True, "flag_threshold": 0.5})
            roots = [root for root, _ in targets]
            person, harvester, limited = make_key(roots), make_key(roots), make_key(roots)
            manual = decision_propagation(roots, person, account_of[person], rounds=5)
            limits = limits_propagation(roots, limited, account_of[limited], rounds=5)
            scored = scorer_propagation(roots, harvester, account_of[harvester])
            propagation.append((name, manual, limits, scored))
            print(f"  propagation {name}: manual {manual}, new limits {limits}, scorer {scored}", file=sys.stderr, flush=True)
            for _, proc in targets:
                proc.terminate()
                proc.wait(30)

        propagation_lines = [
            "", "Decision propagation: seconds from a decision on replica 1 until replicas 2 and 3 both enforce it. "
            "A manual block or clear set through replica 1's admin API (5 blocks and 5 clears; until a chat request to each "
            "other replica is refused / served); an account's new limits set through replica 1's admin API (5 times lowered "
            "to 1 request/min and raised back, each while the other replicas serve the key from a headroom grant; until a "
            "chat request to each is refused / served); and a scorer decision (a reasoning harvester sent to replica 1 "
            "only; from replica 1's `/admin/v1/accounts/{id}/risk` reaching `flag_threshold` until the others' does). "
            "With Redis, decisions and key-table changes are announced on pub/sub; the `memory` baseline finds them by "
            "polling the database every second.", "",
            "| set-up | manual: median (s) | manual: max (s) | new limits: median (s) | new limits: max (s) | scorer decision (s) |",
            "|---|---:|---:|---:|---:|---:|"]
        for name, manual, limits, scored in propagation:
            propagation_lines.append(f"| {name} | {statistics.median(manual):.3f} | {max(manual):.3f} | "
                                     f"{statistics.median(limits):.3f} | {max(limits):.3f} | "
                                     f"{f'{scored[0]:.3f}' if scored else 'not flagged'} |")
        propagation_lines.append("")
        propagation_lines.append("Every round (s): " + "; ".join(
            f"{name}: manual {', '.join(f'{d:.3f}' for d in manual)}; new limits {', '.join(f'{d:.3f}' for d in limits)}"
            for name, manual, limits, _ in propagation))
        if args.propagation_only:
            write_report("fleet_propagation.md", [f"`python bench/fleet.py --propagation-only`; load average before: {load_before}, "
                                                  f"after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
                                                  "(2 cores shared with other sessions' work).", *propagation_lines], began, digest)
            return 0
        lines = ["## Fleet: shared state in Redis (`bench/fleet.py`, issue #13)", "",
                 f"`python bench/fleet.py --duration {args.duration} --rounds {args.rounds}{' --pin' if args.pin else ''}"
                 f"{' --no-unix' if args.no_unix else ''}`; load average before: {load_before}, after: "
                 f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores shared with other sessions' work). Upstream: "
                 "`bench/fast_upstream.py`; load: wrk, JSON chat completions, spread evenly over the replicas; detection off. "
                 f"The set-ups take turns, {args.rounds} round(s) of {args.duration} s each: req/s over all rounds; CPU per "
                 "request, p50 and p99 the median of the rounds. Whole = gateway processes + Redis, per request. "
                 + ("Pinned: the gateways on CPU 0, wrk, the upstream and Redis on the others." if args.pin else
                    "Not pinned: every process on any CPU."),
                 "", "| set-up | load | req/s | added p50 (ms) | added p99 (ms) | gateway CPU ms/request | Redis CPU ms/request "
                 "| whole CPU ms/request | Redis calls/request | script µs/call | errors |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, label, row in rows:
            base = direct[row["base"]]
            lines.append(f"| {name} | {label} | {row['rps']:.0f} | {row['p50_ms'] - base['p50_ms']:.2f} | {row['p99_ms'] - base['p99_ms']:.2f} | "
                         f"{row['cpu_ms_per_req']:.3f} | {row['redis_cpu_ms_per_req']:.3f} | {row['whole_ms_per_req']:.3f} | "
                         f"{row['calls_per_req']:.4f} | {row['script_us_per_call']:.1f} | {int(row['errors'])} |")
        memory = {row["base"]: row for name, _, row in rows if name == "1 replica, memory"}
        summary: list[str] = []
        for title, setup in (("Redis over memory, 1 replica", "1 replica, Redis"),
                             ("Redis per request (`state_headroom_ms: 0`) over memory, 1 replica", "1 replica, Redis, per request"),
                             ("Redis over a Unix socket over memory, 1 replica", "1 replica, Redis (Unix socket)")):
            one_redis = {row["base"]: row for name, _, row in rows if name == setup}
            if not one_redis:
                continue
            lines += ["", f"| {title} | c=1 | c=64 |", "|---|---:|---:|"]
            for what, field in (("gateway", "cpu"), ("whole (gateway + Redis)", "whole")):
                paired = {c: [r / m - 1 for r, m in zip(one_redis[c][field + "_ms_rounds"], memory[c]["cpu_ms_rounds"], strict=True)]
                          for c in ("c=1", "c=64")}
                lines.append(f"| {what} CPU per request, median of the rounds | " + " | ".join(
                    f"{one_redis[c][field + '_ms_per_req'] / memory[c]['cpu_ms_per_req'] - 1:+.0%}" for c in ("c=1", "c=64")) + " |")
                lines.append("| the same, round by round | " + " | ".join(", ".join(f"{r:+.0%}" for r in paired[c])
                                                                         for c in ("c=1", "c=64")) + " |")
                lines.append("| median of those paired ratios | " + " | ".join(f"{statistics.median(paired[c]):+.0%}"
                                                                             for c in ("c=1", "c=64")) + " |")
            lines.append("| added p50 (ms) | " + " | ".join(f"{one_redis[c]['p50_ms'] - memory[c]['p50_ms']:+.2f}"
                                                         for c in ("c=1", "c=64")) + " |")
            summary.append(f"{title} at c=1: gateway CPU per request {one_redis['c=1']['cpu_ms_per_req'] / memory['c=1']['cpu_ms_per_req'] - 1:+.0%}, "
                           f"whole (gateway + Redis) {one_redis['c=1']['whole_ms_per_req'] / memory['c=1']['cpu_ms_per_req'] - 1:+.0%}, "
                           f"added p50 {one_redis['c=1']['p50_ms'] - memory['c=1']['p50_ms']:+.2f} ms; Redis calls per request "
                           f"{one_redis['c=1']['calls_per_req']:.3f}")
        for line in summary:
            print("  " + line, file=sys.stderr, flush=True)
        lines += ["", "Limit overshoot: one key limited to 600 (headroom slices of 6) or 6,000 requests/min (slices of 60), "
                  "48 connections spread over three replicas for 5 s. Calls per admitted request: Redis script calls during "
                  "the run less one per refused request (each refusal is decided in Redis), over the requests admitted:", "",
                  "| set-up | limit/min | admitted | attempted | admitted / limit | Redis calls per admitted request "
                  "| fail_open trips during the run |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, limit, admitted, attempted, trips, per_admitted in overshoot:
            redis_row = "Redis" in name
            lines.append(f"| {name} | {limit} | {admitted} | {attempted} | {admitted / limit:.3f} | "
                         f"{f'{per_admitted:.3f}' if redis_row else '—'} | {trips if redis_row else '—'} |")
        lines += propagation_lines
        write_report("fleet.md", lines, began, digest)
        return 0
    finally:
        stop_sessions(procs)


if __name__ == "__main__":
    sys.exit(main())
