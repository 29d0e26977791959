"""`distillguard events import`: an event log into the store, idempotently, refusing what is not an event."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

from .test_detect import T0, ev


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "distillguard.cli", *args], capture_output=True, text=True, timeout=120)


def test_import_loads_every_event_once_and_stops_at_a_bad_line(tmp_path: Path) -> None:
    config = tmp_path / "dg.yaml"
    database = tmp_path / "dg.db"
    config.write_text(f'database: "sqlite:///{database}"\nspill_dir: "{tmp_path / "spill"}"\n')
    events = [ev(f"acct{i % 4}", T0 + i, f"prompt {i}") for i in range(12_000)]
    log = tmp_path / "events.jsonl.gz"
    with gzip.open(log, "wt") as handle:
        handle.writelines(json.dumps(e) + "\n" for e in events)
    first = _run("events", "import", str(log), "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert "imported 12000 new events of 12000 read" in first.stdout
    again = _run("events", "import", str(log), "--config", str(config))
    assert "imported 0 new events of 12000 read (12000 already stored)" in again.stdout
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*), count(DISTINCT request_id) FROM events")).one() == (12_000, 12_000)
        body = conn.execute(text("SELECT body FROM events WHERE request_id = :r"), {"r": events[7]["request_id"]}).scalar_one()
    assert json.loads(body) == events[7]
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps(ev("acct9", T0 + 99_999, "new")) + "\n" + "not json\n")
    bad = _run("events", "import", str(more), "--config", str(config))
    assert bad.returncode == 2 and f"{more}:2" in bad.stderr and "the 1 events before it are stored" in bad.stderr
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM events")).scalar_one() == 12_001
    export = _run("events", "export", "--config", str(config))
    assert len(export.stdout.splitlines()) == 12_001
