"""Several processes creating the schema of one fresh SQLite file at once (a fleet's replicas and its scorer starting
together): none may fail with "table … already exists" (store/schema.py, create_tables)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

_CREATE = """
import sys, time
from sqlalchemy import create_engine
from distillguard.store.schema import create_tables
engine = create_engine("sqlite:///" + sys.argv[1], connect_args={"timeout": 30})
start = float(sys.argv[2])
while time.time() < start:
    pass
create_tables(engine)
"""


def test_processes_creating_one_fresh_sqlite_schema_at_once_all_succeed(tmp_path: Path) -> None:
    for round_ in range(3):
        database = tmp_path / f"race-{round_}.db"
        start = time.time() + 1.5  # every process is up and spinning before the go
        procs = [subprocess.Popen([sys.executable, "-c", _CREATE, str(database), str(start)], stderr=subprocess.PIPE)
                 for _ in range(6)]
        failures = []
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                failures.append(err.decode(errors="replace").strip().splitlines()[-1])
        assert not failures, f"round {round_}: {failures}"
