"""Several processes creating the schema of one fresh SQLite file at once (a fleet's replicas and its scorer starting
together): none may fail with "table … already exists" (store/schema.py, create_tables)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Each process imports first, says so, then blocks on its stdin until the test sends every process the round's
# database at once: all of them start creating tables together however long their start-up took. (A start time
# 1.5 s ahead, spun on, was missed by processes still importing on a loaded machine, which then raced nobody, and
# the spinning took the CPU the others needed to get there.) The same six processes race in every round, each on a
# new file with a new engine (create_tables keeps nothing between calls): importing SQLAlchemy in 18 processes was
# most of the test's time.
_CREATE = """
import sys
from sqlalchemy import create_engine
from distillguard.store.schema import create_tables
print("ready", flush=True)
for line in sys.stdin:
    engine = create_engine("sqlite:///" + line.strip(), connect_args={"timeout": 30})
    try:
        create_tables(engine)
    except Exception as exc:
        print("failed:", type(exc).__name__, str(exc).splitlines()[0], flush=True)
    else:
        print("done", flush=True)
    engine.dispose()
"""


def test_processes_creating_one_fresh_sqlite_schema_at_once_all_succeed(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _CREATE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(6)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.readline() == b"ready\n", proc.stderr.read()  # (the readline returns at EOF if it died)
        for round_ in range(3):
            database = tmp_path / f"race-{round_}.db"
            for proc in procs:  # the go: every process's read returns
                assert proc.stdin is not None
                proc.stdin.write(f"{database}\n".encode())
                proc.stdin.flush()
            answers = [proc.stdout.readline().decode(errors="replace").strip() for proc in procs if proc.stdout]
            assert answers == ["done"] * 6, f"round {round_}: {answers}"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
