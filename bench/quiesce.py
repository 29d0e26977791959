"""Leave nothing of one measured target behind when the next is measured: stop its process tree, wait for it to exit,
then wait (bounded, logged) until the machine's CPU has settled.

Why: on this 2-core machine a target's leftovers land on whatever is measured next. LiteLLM's proxy, for one, goes on
answering the requests it still holds for 1–2 s after its load generator stops (its p99 at c=64 is several seconds),
and a gateway's event writer may still be storing the tail of a load; measured right after, a gateway round read
18.8 % of the direct rate where the round before read 26.6 % (bench/RESULTS.md, "Quiet-machine reruns at the end of
stop 16"). The machine-wide figure comes from ``/proc/stat`` (all cores, all processes): the others' work on a shared
machine shows up there too, so the wait is bounded and its outcome is printed with every measurement rather than
assumed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.wire_probes import process_tree  # noqa: E402  (the same /proc reading the edge probes use)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pids: Iterable[int]) -> float:
    """CPU seconds (user + system) used so far by the processes ``pids`` and their live descendants."""
    ticks = 0
    for root in pids:
        for current in process_tree(root):
            try:
                fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, ValueError, IndexError):
                continue
    return ticks / CLK_TCK


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from the first line of ``/proc/stat`` (idle and iowait not busy)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is already inside user)
    return total - fields[3] - fields[4], total


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has finished its work; its parent reaps it


def _wait_gone(pids: list[int], deadline: float) -> None:
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_tree(proc: subprocess.Popen[bytes], grace_s: float = 30, timeout_s: float = 60) -> float:
    """SIGTERM ``proc``'s session (it was started with ``start_new_session``), SIGKILL it after ``grace_s``, and wait
    until every process of its tree — recorded before the signal, so children re-parented on their parent's exit are
    still waited for — has exited. Returns the seconds it took."""
    began = time.monotonic()
    members = process_tree(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _wait_gone(members, began + grace_s)
    for pid in members:  # a descendant that left the session, or ignores SIGTERM
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    _wait_gone(members, began + timeout_s)
    return time.monotonic() - began


def settle(ours: Iterable[int], *, max_wait_s: float, window_s: float = 0.5, ours_max: float = 0.03,
           machine_max: float = 0.15, quiet_windows: int = 2) -> str:
    """Wait until our own processes ``ours`` (the targets still running, with their descendants) use < ``ours_max`` of
    one core and the whole machine is < ``machine_max`` busy (of all its cores), for ``quiet_windows`` consecutive
    windows of ``window_s``; give up after ``max_wait_s``. Returns a one-line account of how it went, for the log."""
    pids = list(ours)
    began = time.monotonic()
    quiet = 0
    while True:
        own_before, (busy_before, total_before) = tree_cpu_s(pids), machine_ticks()
        time.sleep(window_s)
        busy_after, total_after = machine_ticks()
        own = (tree_cpu_s(pids) - own_before) / window_s
        busy = (busy_after - busy_before) / max(1, total_after - total_before)
        quiet = quiet + 1 if own < ours_max and busy < machine_max else 0
        waited = time.monotonic() - began
        if quiet >= quiet_windows:
            return f"settled in {waited:.1f} s (machine {busy:.0%} busy, ours {own:.0%} of a core)"
        if waited >= max_wait_s:
            return (f"**not settled** after {waited:.1f} s (machine {busy:.0%} busy, ours {own:.0%} of a core): "
                    "measured anyway")


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
