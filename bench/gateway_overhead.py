"""Gateway overhead: the same load against the upstream directly, distillguard, and LiteLLM's proxy, in one run.

    python bench/gateway_overhead.py [--rounds 3] [--duration 6] [--settle 5] [--variants core,all] [--skip-litellm] [--before REV]
        [--distinct-prompts]

Needs ``wrk`` (Debian package) as the load generator, so the client is not the
bottleneck, and LiteLLM in its own venv (``bench/.venv-litellm``, created with
``python -m venv bench/.venv-litellm && bench/.venv-litellm/bin/pip install 'litellm[proxy]'``).
distillguard runs twice: with the features issue #2 names (key auth, per-key
and per-account limits, the SQLite event log; client signals and the policy
engine are always on) and online detection off, and again "all on": the same
plus online detection (the online scorer, a child process running the
detectors on every event; ``serve``'s default). Watermarking and canaries
stay off in both (they need keys and triggers of one's own). ``--variants``
picks which distillguard configurations run: ``core``
(the first), ``all`` (online detection too) and ``nowal`` (the first with the event
write-ahead log off, ``event_wal.enabled: false``: its cost is ``core`` minus
``nowal`` in the same run). ``--before REV`` adds the ``core`` set-up served by
the source tree of git revision ``REV`` (``git archive``), measured beside the
current tree's in the same rounds (with ``all`` among the variants, REV's
all-on set-up too).

Every request carries the same prompt by default (the figures since stop 10 are comparable). The online
detectors remember a prompt they have seen (stop 18: its elicitation verdict, capability and frame), so with
one fixed prompt "all on" measures their best case; ``--distinct-prompts`` appends a per-request counter
(``"… (t2-417)"``, from wrk's Lua ``request`` function, on both sides of each pair) so that no two prompts
are equal: their worst case.

How one round's accident is kept from deciding a figure (issue #12: a gateway
round measured right after LiteLLM's SSE run read 18.8 % of direct, the round
before 26.6 %):

- one target runs at a time: each round starts every distillguard target
  afresh (its own database), measures it, then stops its whole process tree
  and waits until every process of it has exited (``bench/quiesce.py``);
  LiteLLM, two orders of magnitude slower (one round decides its ratio), is
  measured once, after every distillguard round, so nothing follows it;
- before each measurement the run waits, up to ``--settle`` seconds, until
  the processes still up use < 3 % of a core and the whole machine (from
  ``/proc/stat``) is < 15 % busy; every measurement's line says how that went,
  and the report counts the measurements where it did not settle;
- the direct upstream is measured next to every target, load by load (odd
  rounds: the target first): each share of direct is the ratio within one
  adjacent pair, and the table shows the median of the rounds and every
  round's share. ``--rounds`` defaults to 3.

Cost: per distillguard target and round, 4 loads × 2 sides of ``--duration``
seconds at c=64 and half that at c=1 (plus 2 s of warm-up for the gateway
side and the settle waits), about 50 s on a quiet machine; ``--rounds 3
--variants core,all`` with LiteLLM took 648 s at load 17–20, where every
settle wait ran out (56 × 5 s); with ~1 s waits on a quiet machine that makes
about 7 minutes (an estimate: not yet timed on a quiet machine).

RSS is the sum of ``VmRSS`` over the process and its descendants (the gateway
and its online scorer child), read right after each load, the largest of the
rounds in the table; shared library pages count once per process, so it is an
upper bound. The progress lines on stderr also give the process's own share
("own"). The scratch directory is removed on exit, also on Ctrl-C and SIGTERM
(``DG_BENCH_KEEP=1`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from measure import scratch_dir, source_line, spawn_logged, src_digest, stop_sessions
from quiesce import log, settle, stop_tree, tree_cpu_s

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.wire_probes import rss_mb  # noqa: E402  (the same /proc readings the edge probes use)

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LITELLM = ROOT / "bench" / ".venv-litellm" / "bin" / "litellm"
BODY = {"model": "bench-model", "messages": [{"role": "user", "content": "Say something about benchmarks."}], "max_tokens": 256}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(url: str, timeout: float = 120, headers: dict[str, str] | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not come up")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants."""
    return tree_cpu_s([pid])


def own_rss_mb(pid: int) -> float:
    """Resident memory of the process alone (``rss_mb`` adds its descendants: for distillguard, the online scorer)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, connections: int, duration: int, stream: bool, key: str | None, *,
            distinct: bool = False) -> dict[str, float]:
    body = dict(BODY, stream=stream)
    lua = f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\nwrk.headers["Content-Type"] = "application/json"\n'
    if key:
        lua += f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    if distinct:  # every prompt different: each wrk thread numbers its requests, prefixed by the thread's id
        content = BODY["messages"][0]["content"]  # type: ignore[index]
        marked = dict(body, messages=[{"role": "user", "content": f"{content} (@@N@@)"}])
        head, tail = json.dumps(marked).split("@@N@@")
        lua += (f"local head, tail = {json.dumps(head)}, {json.dumps(tail)}\nlocal threads = 0\n"
                "function setup(thread) threads = threads + 1; thread:set(\"tid\", threads) end\n"
                "function init(args) n = 0 end\n"
                "function request() n = n + 1; return wrk.format(nil, nil, nil, head .. \"t\" .. tid .. \"-\" .. n .. tail) end\n")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    threads = 1 if connections == 1 else 2
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--timeout", "10s", "--latency", "-s", script.name, url],
                         capture_output=True, text=True, timeout=duration + 60)
    os.unlink(script.name)
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    latencies = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        latencies[pct] = float(value) * _UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {"rps": rps, "p50_ms": latencies.get("50", float("nan")), "p99_ms": latencies.get("99", float("nan")),
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sum(int(n) for n in socket_errors.groups()) if socket_errors else 0}


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    """One row from several rounds: medians, errors summed."""
    return {key: sum(r[key] for r in runs) if key in ("non_2xx", "socket_errors") else statistics.median(r[key] for r in runs)
            for key in runs[0]}


Spawn = Callable[[list[str], str, "dict[str, str] | None"], "subprocess.Popen[bytes]"]


def checkout_src(rev: str, into: Path) -> Path:
    """``src/`` of git revision ``rev`` extracted under ``into`` (``git archive``); returns ``into / "src"``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def start_gateway(work: Path, tag: str, upstream: str, spawn: Spawn, *, online: bool = False, wal: bool = True,
                  src: Path | None = None) -> tuple[str, str, subprocess.Popen[bytes]]:
    """``distillguard serve`` with the benchmark's configuration (``src``: another source tree first on the path), an
    account and a key; returns its root URL, the key and the process."""
    port = free_port()
    config = {"listen": f"127.0.0.1:{port}", "database": f"sqlite:///{work / f'dg-{tag}.db'}", "admin_token": "bench",
              "spill_dir": str(work / f"spill-{tag}"), "log_level": "warning",
              "upstreams": [{"name": "fast", "base_url": upstream, "models": ["*"]}], "detection": {"online": online},
              "event_wal": {"enabled": wal},
              "limits": {"requests_per_min": 10_000_000, "tokens_per_min": 10_000_000_000, "concurrent_requests": 1000, "daily_tokens": None}}
    (work / f"dg-{tag}.yaml").write_text(json.dumps(config))
    tree = {"PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])} if src is not None else None
    proc = spawn([PYTHON, "-m", "distillguard.cli", "serve", "--config", str(work / f"dg-{tag}.yaml")], f"distillguard-{tag}.log", tree)
    root = f"http://127.0.0.1:{port}"
    wait(root + "/healthz")
    admin = {"Authorization": "Bearer bench"}
    account = httpx.post(root + "/admin/v1/accounts", json={"name": "bench"}, headers=admin).json()
    key = httpx.post(root + f"/admin/v1/accounts/{account['account_id']}/keys", json={}, headers=admin).json()["secret"]
    return root, key, proc


LOADS = [(False, 1), (False, 64), (True, 1), (True, 64)]  # (stream, connections)


def label_of(stream: bool, conns: int) -> str:
    return f"{'stream' if stream else 'json'} c={conns}"


Target = tuple[str, str, "str | None", "subprocess.Popen[bytes]"]  # name, URL, key, process


class Bench:
    """One run's processes, load settings and samples; :meth:`pair` measures the direct upstream and a target side by
    side, the settle wait before each measurement."""

    def __init__(self, work: Path, duration: int, settle_s: float, *, distinct: bool = False) -> None:
        self.work, self.duration, self.settle_s, self.distinct = work, duration, settle_s, distinct
        self.procs: list[subprocess.Popen[bytes]] = []
        self.samples: dict[str, dict[str, list[dict[str, float]]]] = {}
        self.settle_lines: list[str] = []

    def spawn(self, cmd: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return spawn_logged(self.procs, self.work, cmd, log, env)

    def stop(self, proc: subprocess.Popen[bytes], name: str) -> None:
        """Stop a target's whole process tree and wait for it to be gone: nothing of it runs while the next is measured."""
        took = stop_tree(proc)
        self.procs.remove(proc)
        log(f"  {name}: stopped, its processes gone in {took:.1f} s")

    def measure(self, name: str, url: str, auth: str | None, proc: subprocess.Popen[bytes], stream: bool, conns: int,
                *, warm_s: int, direct: subprocess.Popen[bytes]) -> dict[str, float]:
        label = label_of(stream, conns)
        note = settle([direct.pid, proc.pid], max_wait_s=self.settle_s)
        self.settle_lines.append(note)
        if warm_s:
            run_wrk(url, conns, warm_s, stream, auth, distinct=self.distinct)
        duration = self.duration if conns > 1 else max(3, self.duration // 2)
        cpu_before = cpu_s(proc.pid)
        result = run_wrk(url, conns, duration, stream, auth, distinct=self.distinct)
        # CPU per request of the process under test (for "direct", the upstream itself): the figure least disturbed by
        # whatever else the machine is doing.
        result["cpu_ms_per_req"] = (cpu_s(proc.pid) - cpu_before) * 1000 / max(1.0, result["rps"] * duration)
        result["rss_mb"] = rss_mb(proc.pid)
        result["rss_own_mb"] = own_rss_mb(proc.pid)  # without its children (the online scorer)
        self.samples.setdefault(name, {}).setdefault(label, []).append(result)
        log(f"  {name:<18} {label:<14} {result['rps']:>9.0f} req/s  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms"
            f"  cpu {result['cpu_ms_per_req']:.3f} ms/req  rss {result['rss_mb']:.0f} MB ({result['rss_own_mb']:.0f} own)"
            + (f"  non-2xx {result['non_2xx']}" if result["non_2xx"] else "")
            + (f"  socket errors {result['socket_errors']}" if result["socket_errors"] else "") + f"  [{note}]")
        return result

    def pairs(self, name: str, url: str, auth: str | None, proc: subprocess.Popen[bytes], direct: Target, *,
              direct_first: bool, warm_s: int) -> None:
        """Every load on the direct upstream and on the target, adjacent; the target's share of direct per pair."""
        for stream, conns in LOADS:
            sides = [(*direct, 0), (name, url, auth, proc, warm_s)]
            got = {}
            for side_name, side_url, side_auth, side_proc, warm in (sides if direct_first else sides[::-1]):
                got[side_name] = self.measure(side_name, side_url, side_auth, side_proc, stream, conns, warm_s=warm,
                                              direct=direct[3])
            mine, theirs = got[name], got[direct[0]]
            mine["share"] = mine["rps"] / theirs["rps"]
            mine["added_p50_ms"] = mine["p50_ms"] - theirs["p50_ms"]
            mine["added_p99_ms"] = mine["p99_ms"] - theirs["p99_ms"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=6, help="seconds per measurement at c=64 (half, at least 3, at c=1)")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every distillguard target, a fresh process each, "
                        "in alternating order; the table shows medians and every round's share of direct")
    parser.add_argument("--settle", type=float, default=5.0, metavar="S", help="longest wait, before each measurement, for "
                        "the machine's CPU to settle (logged with each measurement)")
    parser.add_argument("--variants", default="core,all", help="distillguard configurations, comma-separated: core, all, nowal")
    parser.add_argument("--before", metavar="REV", help="also serve the core set-up from git revision REV's source, in the same rounds")
    parser.add_argument("--distinct-prompts", action="store_true", help="no two requests carry the same prompt "
                        "(a counter appended): the online detectors' prompt memos never hit")
    args = parser.parse_args()
    began = time.perf_counter()
    variants = {"core": ("distillguard", False, True), "all": ("distillguard, all on", True, True),
                "nowal": ("distillguard, WAL off", False, False)}
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    work = scratch_dir("dg-bench-")
    digest = src_digest()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    bench = Bench(work, args.duration, args.settle, distinct=args.distinct_prompts)
    try:
        up_port = free_port()
        up = bench.spawn([PYTHON, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(up_port)], "upstream.log")
        upstream = f"http://127.0.0.1:{up_port}/v1"
        wait(upstream + "/models")
        direct: Target = ("upstream (direct)", upstream + "/chat/completions", None, up)
        tags = args.variants.split(",")
        if args.before:
            checkout_src(args.before, work / "before")
            variants["before"] = (f"distillguard before ({args.before})", False, True)
            tags.append("before")
            if "all" in tags:  # everything on, also from REV: what the change did to the all-on RSS and CPU
                variants["before_all"] = (f"distillguard, all on, before ({args.before})", True, True)
                tags.append("before_all")
        for stream, conns in LOADS:  # the direct upstream warmed once; it stays up for the whole run
            run_wrk(direct[1], conns, 1, stream, None)
        # One target at a time: a fresh gateway (its own database) per round, every load paired with the direct
        # upstream, then the gateway stopped and gone before the next starts. Odd rounds reverse the target order
        # and measure the gateway before direct in each pair.
        for round_no in range(args.rounds):
            for tag in (tags if round_no % 2 == 0 else tags[::-1]):
                name, online, wal = variants[tag]
                root, key, dg = start_gateway(work, f"{tag}-r{round_no}", upstream, bench.spawn, online=online, wal=wal,
                                              src=work / "before" / "src" if tag.startswith("before") else None)
                bench.pairs(name, root + "/v1/chat/completions", key, dg, direct, direct_first=round_no % 2 == 0, warm_s=2)
                bench.stop(dg, name)
        if not args.skip_litellm and LITELLM.exists():
            # Once, last: its throughput is two orders of magnitude below ours (one round decides the ratio), and
            # nothing is measured after it.
            ll_port = free_port()
            (work / "litellm.yaml").write_text(
                "model_list:\n  - model_name: bench-model\n    litellm_params:\n      model: openai/bench-model\n"
                f"      api_base: {upstream}\n      api_key: unused\n")
            # LiteLLM refuses to start without a master key; with one and no database it checks only that key.
            ll_key = "sk-bench-" + "0" * 32
            ll = bench.spawn([str(LITELLM), "--config", str(work / "litellm.yaml"), "--port", str(ll_port), "--host", "127.0.0.1"],
                             "litellm.log", env={"LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": ll_key})
            wait(f"http://127.0.0.1:{ll_port}/health/liveliness", timeout=240)
            bench.pairs("litellm proxy", f"http://127.0.0.1:{ll_port}/v1/chat/completions", ll_key, ll, direct,
                        direct_first=True, warm_s=2)
            bench.stop(ll, "litellm proxy")
        elif not args.skip_litellm:
            log(f"note: {LITELLM} not found; LiteLLM column skipped (see the docstring to create it)")
    finally:
        stop_sessions(bench.procs)
    report(bench, args, load_before, digest, variants, began)
    return 0


def report(bench: Bench, args: argparse.Namespace, load_before: str, digest: str, variants: dict[str, tuple[str, bool, bool]],
           began: float) -> None:
    samples = bench.samples
    results = {name: {label: _median(runs) for label, runs in by_label.items()} for name, by_label in samples.items()}
    unsettled = sum("not settled" in line for line in bench.settle_lines)
    print(f"\nLoad average before the run: {load_before}; after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}. "
          f"{args.rounds} round(s), {args.duration} s per measurement at c=64; CPU settled before {len(bench.settle_lines) - unsettled} "
          f"of {len(bench.settle_lines)} measurements (wait ≤ {args.settle:.0f} s). Runtime {time.perf_counter() - began:.0f} s. "
          f"{source_line(digest)}")
    print("\nShares of direct, added latencies: per pair (the target and the direct upstream measured back to back), median "
          "over rounds; req/s and CPU: medians; RSS: the largest of the rounds.")
    print("\n| load | target | req/s | vs upstream | rounds: vs upstream | added p50 (ms) | added p99 (ms) | CPU ms/request | RSS (MB) | errors |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for stream, conns in LOADS:
        label = label_of(stream, conns)
        for name, by_label in samples.items():
            runs = by_label[label]
            r = results[name][label]
            errs = sum(int(x["non_2xx"] + x["socket_errors"]) for x in runs)
            if name.startswith("upstream"):
                print(f"| {label} | {name} | {r['rps']:.0f} | 100% | — | — | — | {r['cpu_ms_per_req']:.3f} | — | {errs} |")
                continue
            shares = ", ".join(f"{x['share']:.1%}" for x in runs)
            print(f"| {label} | {name} | {r['rps']:.0f} | {r['share']:.1%} | {shares} | {r['added_p50_ms']:.2f} | "
                  f"{r['added_p99_ms']:.2f} | {r['cpu_ms_per_req']:.3f} | {max(x['rss_mb'] for x in runs):.0f} | {errs} |")
    if "litellm proxy" in results and {"distillguard", "distillguard, all on"} <= results.keys():
        print("\n| load | distillguard / LiteLLM throughput |")
        print("|---|---:|")
        for stream, conns in LOADS:
            label = label_of(stream, conns)
            ours = results["distillguard"][label]["rps"], results["distillguard, all on"][label]["rps"]
            theirs = max(1e-9, results["litellm proxy"][label]["rps"])
            print(f"| {label} | {ours[0] / theirs:.1f}× ({ours[1] / theirs:.1f}× all on) |")
    before_name = variants["before"][0] if args.before else None
    if before_name in results and "distillguard" in results:
        print(f"\n| load | CPU ms/request, {before_name} | now | now / before | req/s now / before |")
        print("|---|---:|---:|---:|---:|")
        for stream, conns in LOADS:
            label = label_of(stream, conns)
            b, n = results[before_name][label], results["distillguard"][label]
            print(f"| {label} | {b['cpu_ms_per_req']:.3f} | {n['cpu_ms_per_req']:.3f} | {n['cpu_ms_per_req'] / b['cpu_ms_per_req']:.2f} | "
                  f"{n['rps'] / b['rps']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": results, "samples": samples}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
