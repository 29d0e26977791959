"""Several processes creating the schema of one fresh SQLite file at once (a fleet's replicas and its scorer starting
together): none may fail with "table … already exists" (store/schema.py, create_tables)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Each process imports first, says so, then blocks on its stdin until the test closes every stdin at once: all of them
# start creating tables together however long their start-up took. (A start time 1.5 s ahead, spun on, was missed by
# processes still importing on a loaded machine, which then raced nobody, and the spinning took the CPU the others
# needed to get there.)
_CREATE = """
import sys
from sqlalchemy import create_engine
from distillguard.store.schema import create_tables
engine = create_engine("sqlite:///" + sys.argv[1], connect_args={"timeout": 30})
print("ready", flush=True)
sys.stdin.read()
create_tables(engine)
"""


def test_processes_creating_one_fresh_sqlite_schema_at_once_all_succeed(tmp_path: Path) -> None:
    for round_ in range(3):
        database = tmp_path / f"race-{round_}.db"
        procs = [subprocess.Popen([sys.executable, "-c", _CREATE, str(database)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)]
        pipes = [(proc.stdin, proc.stdout, proc.stderr) for proc in procs]
        for _, out, err in pipes:
            assert out is not None and err is not None
            assert out.readline() == b"ready\n", err.read()  # (the readline returns at EOF if the process died)
        for stdin, _, _ in pipes:  # the go: every process's read returns
            assert stdin is not None
            stdin.close()
        failures = []
        for proc, (_, out, err) in zip(procs, pipes, strict=True):
            assert out is not None and err is not None
            if proc.wait(timeout=60) != 0:
                failures.append(err.read().decode(errors="replace").strip().splitlines()[-1])
            out.close()
            err.close()
        assert not failures, f"round {round_}: {failures}"
