"""Gateway overhead: the same load against the upstream directly, distillguard, and LiteLLM's proxy, in one run.

    python bench/gateway_overhead.py [--duration 8] [--skip-litellm] [--variants core,all] [--rounds 1] [--before REV]

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
``nowal`` in the same run). Every load is measured on all targets back to
back; ``--rounds N`` repeats that N times, reversing the target order on odd
rounds, and the table shows medians (a busy moment on a shared machine then
cannot fall on one target's whole series). ``--before REV`` adds the ``core``
set-up served by the source tree of git revision ``REV`` (``git archive``),
measured beside the current tree's in the same rounds: the change's effect as a
ratio taken under the same load (with ``all`` among the variants, REV's all-on
set-up too).

RSS is the sum of ``VmRSS`` over the process and its descendants (the gateway
and its online scorer child), read right after each load; shared library pages
count once per process, so it is an upper bound. The progress lines on stderr
also give the process's own share ("own").
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

from measure import source_line, src_digest, stop_sessions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.wire_probes import process_tree, rss_mb  # noqa: E402  (the same /proc readings the edge probes use)

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
    ticks = 0
    for current in process_tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


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


def run_wrk(url: str, connections: int, duration: int, stream: bool, key: str | None) -> dict[str, float]:
    body = dict(BODY, stream=stream)
    lua = f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\nwrk.headers["Content-Type"] = "application/json"\n'
    if key:
        lua += f'wrk.headers["Authorization"] = "Bearer {key}"\n'
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--rounds", type=int, default=1, help="measure every load this many times, alternating the target "
                        "order; the table shows medians")
    parser.add_argument("--variants", default="core,all", help="distillguard configurations, comma-separated: core, all, nowal")
    parser.add_argument("--before", metavar="REV", help="also serve the core set-up from git revision REV's source, in the same rounds")
    args = parser.parse_args()
    variants = {"core": ("distillguard", False, True), "all": ("distillguard, all on", True, True),
                "nowal": ("distillguard, WAL off", False, False)}
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="dg-bench-"))
    digest = src_digest()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(cmd: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(work / log, "wb") as handle:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=work, env={**os.environ, **(env or {})},
                                    start_new_session=True)
        procs.append(proc)
        return proc

    try:
        up_port = free_port()
        up = spawn([PYTHON, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(up_port)], "upstream.log")
        upstream = f"http://127.0.0.1:{up_port}/v1"
        wait(upstream + "/models")
        targets = [("upstream (direct)", upstream + "/chat/completions", None, up)]
        tags = args.variants.split(",")
        if args.before:
            checkout_src(args.before, work / "before")
            variants["before"] = (f"distillguard before ({args.before})", False, True)
            tags.append("before")
            if "all" in tags:  # everything on, also from REV: what the change did to the all-on RSS and CPU
                variants["before_all"] = (f"distillguard, all on, before ({args.before})", True, True)
                tags.append("before_all")
        for tag in tags:
            name, online, wal = variants[tag]
            root, key, dg = start_gateway(work, tag, upstream, spawn, online=online, wal=wal,
                                          src=work / "before" / "src" if tag.startswith("before") else None)
            targets.append((name, root + "/v1/chat/completions", key, dg))
        if not args.skip_litellm and LITELLM.exists():
            ll_port = free_port()
            (work / "litellm.yaml").write_text(
                "model_list:\n  - model_name: bench-model\n    litellm_params:\n      model: openai/bench-model\n"
                f"      api_base: {upstream}\n      api_key: unused\n")
            # LiteLLM refuses to start without a master key; with one and no database it checks only that key.
            ll_key = "sk-bench-" + "0" * 32
            ll = spawn([str(LITELLM), "--config", str(work / "litellm.yaml"), "--port", str(ll_port), "--host", "127.0.0.1"], "litellm.log",
                       env={"LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": ll_key})
            wait(f"http://127.0.0.1:{ll_port}/health/liveliness", timeout=240)
            targets.append(("litellm proxy", f"http://127.0.0.1:{ll_port}/v1/chat/completions", ll_key, ll))
        elif not args.skip_litellm:
            print(f"note: {LITELLM} not found; LiteLLM column skipped (see the docstring to create it)", file=sys.stderr)
        samples: dict[str, dict[str, list[dict[str, float]]]] = {}
        # Each load is measured on every target back to back (and, with --rounds, again in reverse target order), so a
        # busy moment on the shared machine does not land on one target's whole series.
        for round_no in range(args.rounds):
            for stream in (False, True):
                for conns in (1, 64):
                    for name, url, auth, proc in (targets if round_no % 2 == 0 else targets[::-1]):
                        label = f"{'stream' if stream else 'json'} c={conns}"
                        run_wrk(url, conns, 2, stream, auth)  # warm-up
                        duration = args.duration if conns > 1 else max(4, args.duration // 2)
                        cpu_before = cpu_s(proc.pid)
                        result = run_wrk(url, conns, duration, stream, auth)
                        # CPU per request of the process under test (for "direct", the upstream itself):
                        # the figure least disturbed by whatever else the machine is doing.
                        result["cpu_ms_per_req"] = (cpu_s(proc.pid) - cpu_before) * 1000 / max(1.0, result["rps"] * duration)
                        result["rss_mb"] = rss_mb(proc.pid)
                        result["rss_own_mb"] = own_rss_mb(proc.pid)  # without its children (the online scorer)
                        samples.setdefault(name, {}).setdefault(label, []).append(result)
                        print(f"  {name:<18} {label:<14} {result['rps']:>9.0f} req/s  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms"
                              f"  cpu {result['cpu_ms_per_req']:.3f} ms/req  rss {result['rss_mb']:.0f} MB ({result['rss_own_mb']:.0f} own)"
                              + (f"  non-2xx {result['non_2xx']}" if result["non_2xx"] else "")
                              + (f"  socket errors {result['socket_errors']}" if result["socket_errors"] else ""), file=sys.stderr, flush=True)
        results = {name: {label: _median(runs) for label, runs in by_label.items()} for name, by_label in samples.items()}
        direct = results["upstream (direct)"]
        print(f"\nLoad average before the run: {load_before}; after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}. {source_line(digest)}")
        print("\n| load | target | req/s | vs upstream | added p50 (ms) | added p99 (ms) | CPU ms/request | RSS (MB) | errors |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for label in direct:
            for name in results:
                r = results[name][label]
                d = direct[label]
                ratio = r["rps"] / d["rps"]
                added50 = "—" if name.startswith("upstream") else f"{r['p50_ms'] - d['p50_ms']:.2f}"
                added99 = "—" if name.startswith("upstream") else f"{r['p99_ms'] - d['p99_ms']:.2f}"
                rss = "—" if name.startswith("upstream") else f"{r['rss_mb']:.0f}"
                errs = int(r["non_2xx"] + r["socket_errors"])
                print(f"| {label} | {name} | {r['rps']:.0f} | {ratio:.0%} | {added50} | {added99} | {r['cpu_ms_per_req']:.3f} | {rss} | {errs} |")
        if "litellm proxy" in results and {"distillguard", "distillguard, all on"} <= results.keys():
            print("\n| load | distillguard / LiteLLM throughput |")
            print("|---|---:|")
            for label in direct:
                ours = results["distillguard"][label]["rps"], results["distillguard, all on"][label]["rps"]
                theirs = max(1e-9, results["litellm proxy"][label]["rps"])
                print(f"| {label} | {ours[0] / theirs:.1f}× ({ours[1] / theirs:.1f}× all on) |")
        before_name = variants["before"][0] if args.before else None
        if before_name in results and "distillguard" in results:
            print(f"\n| load | CPU ms/request, {before_name} | now | now / before | req/s now / before |")
            print("|---|---:|---:|---:|---:|")
            for label in direct:
                b, n = results[before_name][label], results["distillguard"][label]
                print(f"| {label} | {b['cpu_ms_per_req']:.3f} | {n['cpu_ms_per_req']:.3f} | {n['cpu_ms_per_req'] / b['cpu_ms_per_req']:.2f} | "
                      f"{n['rps'] / b['rps']:.2f} |")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return 0
    finally:
        stop_sessions(procs)


if __name__ == "__main__":
    sys.exit(main())
