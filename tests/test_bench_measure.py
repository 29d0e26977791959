"""bench/measure.py: the source digest a benchmark prints names the package its children really ran."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_the_digest_is_of_the_package_the_children_import(tmp_path: Path) -> None:
    """With PYTHONPATH naming another checkout, the footer names that checkout, and its digest follows its code."""
    package = tmp_path / "distillguard"
    package.mkdir()
    (package / "__init__.py").write_text("VERSION = 1\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    script = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import measure; print(measure.source_line(measure.src_digest()))"

    def footer() -> str:
        return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout

    first = footer()
    assert f"`{package}` digest" in first and "unchanged" in first, first
    (package / "__init__.py").write_text("VERSION = 2\n")
    assert re.findall(r"digest `(\w+)`", footer()) != re.findall(r"digest `(\w+)`", first)


def _bench_child(code: str) -> subprocess.Popen[str]:
    script = f"import sys; sys.path.insert(0, {str(BENCH)!r})\n" + code
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)


def test_a_benchmark_scratch_directory_is_removed_on_sigterm_and_on_a_normal_exit(tmp_path: Path) -> None:
    """Interrupted benchmarks once left 55 GB of /tmp/dg-bench-* behind: ``measure.scratch_dir`` removes its directory
    on SIGTERM (after the caller's ``finally``) as on a normal exit."""
    env_keep = os.environ.pop("DG_BENCH_KEEP", None)
    try:
        waiting = _bench_child("import measure, time\nd = measure.scratch_dir('dg-test-scratch-')\n(d / 'db').write_bytes(b'x' * 1000)\n"
                               "try:\n    print(d, flush=True)\n    time.sleep(120)\nfinally:\n    (d.parent / (d.name + '.finally')).touch()\n")
        assert waiting.stdout is not None
        kept = Path(waiting.stdout.readline().strip())
        assert kept.is_dir()
        os.killpg(waiting.pid, signal.SIGTERM)
        assert waiting.wait(60) == 128 + signal.SIGTERM
        assert not kept.exists()
        marker = kept.parent / (kept.name + ".finally")
        assert marker.exists(), "the caller's finally block did not run"
        marker.unlink()
        done = _bench_child("import measure\nprint(measure.scratch_dir('dg-test-scratch-'))\n")
        out, _ = done.communicate(timeout=60)
        assert done.returncode == 0 and out.strip() and not Path(out.strip()).exists()
    finally:
        if env_keep is not None:
            os.environ["DG_BENCH_KEEP"] = env_keep


def test_stop_tree_waits_until_every_process_of_the_target_is_gone() -> None:
    """bench/quiesce.py: the next target is measured only once the previous one's whole tree has exited, including a
    child that ignores SIGTERM."""
    sys.path.insert(0, str(BENCH))
    from quiesce import process_tree, settle, stop_tree

    proc = subprocess.Popen(["sh", "-c", "sh -c 'trap \"\" TERM; while :; do sleep 0.05; done' & sleep 300"], start_new_session=True)
    for _ in range(200):
        if len(process_tree(proc.pid)) >= 3:
            break
        time.sleep(0.05)
    members = process_tree(proc.pid)
    assert len(members) >= 3, members
    stop_tree(proc, grace_s=1, timeout_s=30)
    for pid in members:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(f"/proc/{pid}/stat").exists() else "gone"
        assert state in ("gone", "Z", "X"), (pid, state)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:  # a process of ours that keeps computing is never called settled; the wait is bounded
        note = settle([spinner.pid], max_wait_s=1.0)
        assert note.startswith("**not settled**"), note
    finally:
        spinner.kill()
        spinner.wait()
