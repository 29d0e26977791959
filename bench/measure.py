"""What every benchmark here shares: percentiles, measured child processes, a source digest, the report writer.

The digest tells a reader whether the code changed while a long benchmark ran
(rows would then mix versions); `wait4` gives one child's own CPU time, and the
child's own ``VmHWM`` (read from /proc while it runs) its peak RSS — not
``wait4``'s ``ru_maxrss``, which on Linux starts an exec'd child at its
launcher's high-water mark.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"

# The measured children run in scratch directories: a relative ``PYTHONPATH=src:bench`` would name no tree there
# and they would silently run the venv's editable install instead of the tree the report names.
if os.environ.get("PYTHONPATH"):
    os.environ["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p)


def scenario_events(scenario: str, seed: int) -> Path:
    """``bench/out/<scenario>.jsonl.gz`` and its labels, simulated (``distillguard simulate``) when either is missing.

    Several benchmarks read the same file (``default``, seed 7) so that their numbers describe the same traffic; the
    first one to need it writes it.
    """
    path = OUT / f"{scenario}.jsonl.gz"
    labels = OUT / f"{scenario}.labels.json"
    if not path.exists() or not labels.exists():
        print(f"  generating {path} (distillguard simulate --scenario {scenario} --seed {seed})", file=sys.stderr)
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "distillguard.cli", "simulate", "--scenario", scenario, "--seed", str(seed),
                        "--out", str(path), "--labels", str(labels)], check=True)
    return path


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@functools.cache
def measured_package() -> Path:
    """The ``distillguard`` package the measured children run: what ``sys.executable`` imports with this environment.

    Not the tree this script sits in: the venv's editable install points at one
    checkout and ``PYTHONPATH`` may name another, and a digest of the wrong
    one would say "unchanged" about code that was never measured. Asked of a
    child so that the benchmark process itself need not import the package.
    """
    found = subprocess.run([sys.executable, "-c", "import distillguard, os; print(os.path.dirname(os.path.abspath(distillguard.__file__)))"],
                           capture_output=True, text=True, check=True)
    return Path(found.stdout.strip())


def src_digest() -> str:
    """A short hash of the measured package's sources, to tell whether the code changed while the benchmark ran."""
    package = measured_package()
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package.parent).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def source_line(start: str) -> str:
    end = src_digest()
    where = f"`{measured_package()}`"
    if end == start:
        return f"Source: {where} digest `{start}`, unchanged during the run."
    return f"Source: {where} **changed during the run** (digest `{start}` → `{end}`): rows may mix code versions."


def write_report(name: str, lines: list[str], began: float, digest: str) -> None:
    """Append the runtime/source footer to ``lines``, write them to ``bench/out/<name>`` and print them."""
    text = "\n".join([*lines, "", f"Total benchmark runtime: {time.perf_counter() - began:.0f} s. {source_line(digest)}", ""])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(text)
    print(text)


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MB) of a live process so far; NaN once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
        return cpu, hwm / 1024
    except (OSError, StopIteration):
        return float("nan"), float("nan")


def run_measured(cmd: list[str], env: dict[str, str] | None = None, poll_s: float = 0.05) -> dict[str, Any]:
    """Run one child; its own wall time, CPU time (wait4) and peak RSS.

    The peak is the child's own ``VmHWM``, polled every ``poll_s`` while it runs (the high-water mark only grows, so
    the last read misses at most what the child added in its final ``poll_s``). ``wait4``'s ``ru_maxrss`` is not
    used: a child started with vfork + exec (Python's subprocess does) inherits its launcher's high-water mark
    there, so a launcher holding data would be reported as the child's peak."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        peak = [0.0]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                rss = proc_stats(proc.pid)[1]
                if rss == rss:  # not NaN: still running
                    peak[0] = max(peak[0], rss)
                done.wait(poll_s)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        watcher.join()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": peak[0], "stdout": stdout, "stderr": stderr}


def stop_sessions(procs: list[subprocess.Popen[bytes]], grace_s: float = 30) -> None:
    """SIGTERM each child's process group (started with ``start_new_session``), then SIGKILL what is left after ``grace_s``."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


_SCRATCH: list[Path] = []


def _remove_scratch() -> None:
    for path in _SCRATCH:
        shutil.rmtree(path, ignore_errors=True)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the caller's ``finally`` (children stopped), then atexit


def scratch_dir(prefix: str) -> Path:
    """A fresh ``/tmp/<prefix>*`` directory for one benchmark run, removed when the benchmark exits — normally, by an
    exception, Ctrl-C, SIGTERM or SIGHUP (turned into ``SystemExit`` so that the caller's ``finally`` stops its children
    first). Only SIGKILL leaves it behind. Why: interrupted runs left their databases and spill directories in /tmp,
    once 55 GB of them. ``DG_BENCH_KEEP=1`` keeps it (its path is printed) for a post-mortem."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.environ.get("DG_BENCH_KEEP") == "1":
        print(f"  scratch directory kept (DG_BENCH_KEEP=1): {path}", file=sys.stderr)
        return path
    if not _SCRATCH:
        atexit.register(_remove_scratch)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) in (signal.SIG_DFL, None) and threading.current_thread() is threading.main_thread():
                signal.signal(signum, _exit_on_signal)
    _SCRATCH.append(path)
    return path


def spawn_logged(procs: list[subprocess.Popen[bytes]], work: Path, cmd: list[str], log: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child in ``work`` with its output in ``work/<log>``, in its own session, and add it to ``procs`` for :func:`stop_sessions`.

    ``env``: variables set for the child on top of this process's environment."""
    with open(work / log, "wb") as handle:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=work, env={**os.environ, **(env or {})},
                                start_new_session=True)
    procs.append(proc)
    return proc


class ClosedLoop:
    """``concurrency`` aiohttp clients on one asyncio loop in a thread, each posting ``body`` again as soon as its
    answer is read, until :attr:`stop` is set. Every answer is kept as (sent at, status, seconds, ``x-request-id``);
    connection errors are counted (the gateway going away under a signal is one)."""

    def __init__(self, url: str, secret: str, body: dict[str, Any], concurrency: int) -> None:
        self.url, self.headers, self.body, self.concurrency = url, {"Authorization": f"Bearer {secret}"}, body, concurrency
        self.answers: list[tuple[float, int, float, str]] = []
        self.errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    @property
    def acknowledged(self) -> list[str]:
        """The request ids of the 2xx answers: what the clients were told was done."""
        return [rid for _, status, _, rid in self.answers if 200 <= status < 300 and rid]

    @property
    def failed(self) -> int:
        return self.errors + sum(1 for _, status, _, rid in self.answers if not (200 <= status < 300 and rid))

    async def _client(self, session: Any) -> None:
        import aiohttp

        while not self.stop.is_set():
            sent = time.time()
            try:
                async with session.post(self.url, headers=self.headers, json=self.body) as answer:
                    await answer.read()
                    self.answers.append((sent, answer.status, time.time() - sent, answer.headers.get("x-request-id", "")))
            except (TimeoutError, aiohttp.ClientError):
                self.errors += 1
                await asyncio.sleep(0.01)

    async def _run(self) -> None:
        import aiohttp  # only the benchmarks that drive load need it

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.concurrency)))
