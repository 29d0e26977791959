"""The online scorer's worker process: a plain subprocess (no resource tracker), reaped on close, gone with its parent;
and the scorer's counters (backlog, wait_idle) never claim work is done while it is not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from distillguard.events import read_events
from distillguard.policy.online import OnlineScorer
from distillguard.sim.scenarios import load_scenario, simulate

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    path = tmp_path_factory.mktemp("online") / "e.jsonl"
    simulate(load_scenario("small"), 3, path)
    return list(read_events([path]))


def _state(pid: int) -> str | None:
    """The process state letter from /proc (``Z`` for a zombie), or None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


_CHILDREN = """
def children():
    import os
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                stat = open(f'/proc/{entry}/stat').read()
                cmdline = open(f'/proc/{entry}/cmdline', 'rb').read().replace(b'\\0', b' ').decode()
            except OSError:
                continue
            if int(stat.rsplit(')', 1)[1].split()[1]) == os.getpid():
                found.append(cmdline)
    return found
"""


def test_worker_is_a_plain_subprocess_and_is_reaped_on_close(tmp_path: Path) -> None:
    simulate(load_scenario("small"), 1, tmp_path / "e.jsonl")
    code = _CHILDREN + f"""
import json, os, sys
from distillguard.events import read_events
from distillguard.policy.online import OnlineScorer
reports = []
scorer = OnlineScorer(reports.append, publish_every_s=0.2)
scorer.start()
for event in read_events([{str(tmp_path / 'e.jsonl')!r}]):
    scorer.submit(event)
idle = scorer.wait_idle(60)
running = children()
pid = scorer._process.pid
scorer.close()
try:
    os.waitpid(pid, os.WNOHANG)
    reaped = False
except ChildProcessError:
    reaped = True
print(json.dumps({{"idle": idle, "running": running, "after": children(), "reaped": reaped,
                  "events": reports[-1]["events"], "acknowledged": scorer.acknowledged,
                  "modules": [m for m in ("numpy", "distillguard.detect", "multiprocessing") if m in sys.modules]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["idle"]
    assert len(result["running"]) == 1 and "distillguard.scorer_worker" in result["running"][0], result["running"]
    assert not any("resource_tracker" in c for c in result["running"])
    assert result["after"] == [] and result["reaped"]
    assert result["events"] == result["acknowledged"] > 0
    assert result["modules"] == []  # the gateway side imports neither numpy, the detectors nor multiprocessing


def test_worker_exits_when_its_parent_dies() -> None:
    code = """
import os, signal, sys, time
from distillguard.policy.online import OnlineScorer
scorer = OnlineScorer(lambda report: None)
scorer.start()
time.sleep(1.0)
print(scorer._process.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    parent.wait(30)
    assert parent.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 15
    while _state(worker) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    state = _state(worker)
    if state not in (None, "Z"):
        os.kill(worker, signal.SIGKILL)
    assert state in (None, "Z"), f"worker {worker} still running ({state}) after its parent died"


def test_backlog_counts_batches_in_flight(events: list[dict[str, Any]]) -> None:
    """``backlog == 0`` must mean every submitted event was scored — also while a batch is between queue and pipe.

    Events arrive a batch at a time, so the pump keeps emptying the queue while everything before is already
    acknowledged: exactly when a batch in flight used to be counted nowhere.
    """
    scorer = OnlineScorer(lambda report: None, publish_every_s=0.05, batch_size=200)
    scorer.start()
    stop = threading.Event()
    wrong: list[tuple[int, int, int]] = []
    total = 0

    def watch() -> None:
        while not stop.is_set():
            submitted = total
            backlog = scorer.backlog
            acknowledged = scorer.acknowledged
            if backlog < 0 or (backlog == 0 and acknowledged < submitted):
                wrong.append((backlog, acknowledged, submitted))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for start in range(0, 20 * 200, 200):
            chunk = [events[i % len(events)] for i in range(start, start + 200)]
            for event in chunk:
                scorer.submit(event)
            total += len(chunk)
            assert scorer.wait_idle(60)
            assert scorer.acknowledged == total  # wait_idle returned because the work was done, not during a send
    finally:
        stop.set()
        watcher.join()
        scorer.close()
    assert not wrong, wrong[:5]


def test_wait_idle_returns_only_after_the_covering_report_is_applied(events: list[dict[str, Any]]) -> None:
    applied: list[int] = []

    def slow_apply(report: dict[str, Any]) -> None:
        time.sleep(0.3)
        applied.append(report["events"])

    scorer = OnlineScorer(slow_apply, publish_every_s=0.1)
    scorer.start()
    try:
        for event in events:
            scorer.submit(event)
        assert scorer.wait_idle(60)
        assert applied and applied[-1] == len(events) == scorer.acknowledged
    finally:
        scorer.close()
    assert scorer._process is not None and scorer._process.returncode == 0


def test_close_without_start_and_twice() -> None:
    OnlineScorer(lambda report: None).close()
    scorer = OnlineScorer(lambda report: None)
    scorer.start()
    scorer.close()
    scorer.close()
    assert scorer._process is not None and scorer._process.returncode == 0


# What the worker must not load: the gateway's configuration (pydantic), attestation (cryptography), the policy engine,
# the store (SQLAlchemy) when it neither replays nor watches indicators. Each is megabytes of resident memory in a process
# that runs beside every gateway (bench/RESULTS.md, "All-on RSS").
_NOT_IN_THE_WORKER = ("pydantic", "pydantic_settings", "cryptography", "http_message_signatures", "yaml", "sqlalchemy",
                      "distillguard.config", "distillguard.signals.collector", "distillguard.signals.attestation",
                      "distillguard.policy", "distillguard.gateway")


def test_the_worker_loads_only_what_scoring_needs(tmp_path: Path) -> None:
    """The worker's own loop (``scorer_worker.serve``) scores a scenario in a fresh interpreter; then its modules are listed."""
    simulate(load_scenario("small"), 1, tmp_path / "e.jsonl")
    code = f"""
import json, os, sys, threading
from distillguard import scorer_worker
from distillguard.events import read_events
events = list(read_events([{str(tmp_path / 'e.jsonl')!r}]))
inbox_r, inbox_w = os.pipe()
outbox_r, outbox_w = os.pipe()
kinds = []
def feed():
    scorer_worker.send(inbox_w, events)
    scorer_worker.send(inbox_w, None)
def drain():
    while True:
        kind, _ = scorer_worker.recv(outbox_r)
        kinds.append(kind)
        if kind == "stopped":
            return
threads = [threading.Thread(target=feed), threading.Thread(target=drain)]
for thread in threads:
    thread.start()
scorer_worker.serve(inbox_r, outbox_w, 0.1)
for thread in threads:
    thread.join()
print(json.dumps({{"kinds": kinds, "numpy": "numpy" in sys.modules,
                  "unwanted": sorted(m for m in sys.modules if m.split(".")[0] in {_NOT_IN_THE_WORKER!r}
                                     or m.startswith({tuple(m for m in _NOT_IN_THE_WORKER if "." in m)!r}))}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_SCORER_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["kinds"][-2:] == ["report", "stopped"] and "ack" in result["kinds"]  # it did score the events
    assert result["numpy"]  # the detectors were loaded, so the check below means something
    assert result["unwanted"] == []


def _bench_like_event(i: int) -> dict[str, Any]:
    """An event like bench/gateway_overhead.py's: one short user turn and a ~1 KB answer (a fresh object each time)."""
    return {"v": 1, "ts": "2026-12-07T09:17:13.593Z", "request_id": f"req_{i:024x}", "account_id": "acct_69e87ed4213977a1",
            "key_id": "key_d09c0edfd310fd75", "org_id": None, "endpoint": "openai.chat", "model": "bench-model",
            "client": {"ip": "127.0.0.1", "user_agent": None, "header_fp": "846b3a9229ce9875",
                       "geo": {"country": None, "asn": None, "hosting": None}},
            "attestation": None,
            "request": {"system": None, "messages": [{"role": "user", "content": "Say something about benchmarks."}],
                        "params": {"temperature": None, "max_tokens": 256, "n": None, "logprobs": False, "top_logprobs": None,
                                   "stream": False, "tools": 0}},
            "response": {"status": 200, "text": f"{i} " + "benchmarks measure " * 55, "reasoning_chars": 0, "prompt_tokens": 8,
                         "completion_tokens": 256, "finish_reason": "length", "latency_ms": 0.4},
            "policy": {"action": "allow", "rule": None}, "watermark": {"key_id": None}}


def test_a_backlog_waits_as_compact_frames_not_event_dicts() -> None:
    """While the worker is behind, each waiting event costs the gateway its pickled scoring view (~380 B here), not the
    event dict (~4 KB): a backlog of 50,000 held ~200 MB before (bench/RESULTS.md, "All-on RSS")."""
    scorer = OnlineScorer(lambda report: None, publish_every_s=0.2)
    scorer.start()
    assert scorer._process is not None
    os.kill(scorer._process.pid, signal.SIGSTOP)  # the worker falls behind: nothing leaves the pipe
    n = 20_000
    try:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            scorer.submit(_bench_like_event(i))
        deadline = time.monotonic() + 30
        while scorer._queue and time.monotonic() < deadline:  # the pump frames what is queued within linger_s
            time.sleep(0.05)
        held = tracemalloc.get_traced_memory()[0] - before
        backlog = scorer.backlog
    finally:
        tracemalloc.stop()
        os.kill(scorer._process.pid, signal.SIGCONT)
    assert scorer.wait_idle(60)
    scorer.close()
    assert backlog == n and not scorer.shedding.total
    assert held / n < 1_000, f"{held / n:.0f} bytes per waiting event"


def test_close_frames_what_is_queued_at_once_however_long_the_linger() -> None:
    """Closing does not wait out the pump's ``linger_s`` (SIGTERM has a grace period): what is queued is framed, sent
    and scored at once; before, the pump slept the rest of its linger first."""
    scorer = OnlineScorer(lambda report: None, publish_every_s=0.2, linger_s=10.0)
    scorer.start()
    try:
        time.sleep(0.5)  # the pump is in its wait
        for i in range(300):
            scorer.submit(_bench_like_event(i))
        closing = time.monotonic()
        scorer.close()
        took = time.monotonic() - closing
    finally:
        scorer.close()
    assert scorer.sent == 300 and scorer.acknowledged == 300
    assert took < 5, f"close took {took:.1f} s"
