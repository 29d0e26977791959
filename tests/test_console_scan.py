"""Readable scans: the ranked table on a terminal, --format, --fail-on, and the inputs scan refuses."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from distillguard.detect.report_table import format_report_table

from .test_detect import T0, ev

PYTHON = [sys.executable, "-m", "distillguard.cli"]


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two harvesters asking for step-by-step reasoning over 40 hours (a one-off burst stays medium), and one person chatting."""
    path = tmp_path_factory.mktemp("scan") / "events.jsonl"
    lines = []
    for i in range(80):
        for account in ("harvester", "harvester2"):
            lines.append(ev(account, T0 + i * 1800, f"Task {i}: solve x+{i}=7. Write out your full reasoning step by step.",
                            completion=900, max_tokens=4096))
        lines.append(ev("person", T0 + i * 1800 + 5, f"Thanks! And what about part {i}?", history=2, completion=150,
                        install="i1", tz="Europe/Berlin", offset=60))
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PYTHON, *args], capture_output=True, text=True, timeout=120)


def test_table_ranks_flagged_accounts_first_and_json_goes_to_out(log: Path, tmp_path: Path) -> None:
    out = _run("scan", str(log), "--format", "table", "--out", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    rows = [line for line in out.stdout.splitlines() if line[:5].strip().isdigit()]
    assert len(rows) == 3
    assert "harvester" in rows[0] and "person" in rows[2]
    assert "high" in rows[0] and "cot_elicitation" in rows[0] and "step-by-step" in rows[0]
    high = sum(1 for a in report["accounts"] if a["risk"] == "high")
    assert out.stdout.startswith(f"240 events, 3 accounts: {high} high")


def test_table_names_accounts_from_an_accounts_export(log: Path, tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.jsonl"
    accounts.write_text("".join(json.dumps({"account_id": a, "name": n, "org_id": None, "created_at": "2026-10-01T00:00:00.000Z",
                                            "status": "active", "attributes": {}}) + "\n"
                                for a, n in (("harvester", "Mallory"), ("harvester2", "Trudy"), ("person", "Alice"))))
    out = _run("scan", str(log), "--format", "table", "--accounts", str(accounts))
    assert out.returncode == 0, out.stderr
    assert "Mallory (harvester)" in out.stdout and "Alice (person)" in out.stdout


def test_stdout_is_json_when_piped_and_a_table_on_a_terminal(log: Path) -> None:
    piped = _run("scan", str(log))
    assert piped.returncode == 0 and json.loads(piped.stdout)["v"] == 1
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run([*PYTHON, "scan", str(log)], stdout=secondary, stderr=subprocess.PIPE, timeout=120)
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
    shown = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert "top evidence" in shown and not shown.lstrip().startswith("{")


def test_fail_on_exits_3_only_when_such_an_account_is_found(log: Path, tmp_path: Path) -> None:
    found = _run("scan", str(log), "--fail-on", "high", "--out", str(tmp_path / "r.json"))
    assert found.returncode == 3 and "--fail-on high" in found.stderr
    calm = tmp_path / "calm.jsonl"
    calm.write_text("".join(json.dumps(ev("person", T0 + i * 600, f"what about part {i}?", history=2, install="i1",
                                          tz="Europe/Berlin", offset=60)) + "\n" for i in range(20)))
    assert _run("scan", str(calm), "--fail-on", "medium", "--format", "json").returncode == 0


def test_refuses_a_file_that_is_not_an_event_log_naming_its_first_bad_line(log: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("\n\nshopping list\n" + log.read_text())
    out = _run("scan", str(log), str(notes))
    assert out.returncode == 2
    assert f"{notes}:3" in out.stderr and "not an event log" in out.stderr
    assert out.stderr.count("\n") == 1


def test_refuses_an_out_that_is_one_of_the_inputs(log: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(log.read_bytes())
    os.symlink(copy, tmp_path / "link.jsonl")
    for out_path in (str(copy), str(tmp_path / "link.jsonl"), str(tmp_path / "." / "copy.jsonl")):
        out = _run("scan", str(copy), "--out", out_path)
        assert out.returncode == 2 and "is also an input" in out.stderr
    assert copy.read_bytes() == log.read_bytes()


def test_table_shows_names_clusters_and_what_was_left_out() -> None:
    report = {"v": 1, "events": 10, "accounts_seen": 40,
              "accounts": [{"account_id": "a1", "name": "Mallory", "distillation_score": 0.9, "reseller_score": 0.1, "risk": "high",
                            "cluster_id": "cl_1", "evidence": [{"detector": "cot_elicitation", "score": 0.9, "detail": "9 of 10"}]}]
              + [{"account_id": f"b{i}", "distillation_score": 0.01, "reseller_score": 0.0, "risk": "low", "cluster_id": None,
                  "evidence": []} for i in range(39)],
              "clusters": [{"cluster_id": "cl_1", "accounts": ["a1", "b1"], "score": 0.93, "shared": ["ASN 14061 /24"]}]}
    text = format_report_table(report, max_rows=5)
    assert "Mallory (a1)" in text and "35 more low-risk" in text
    assert "cl_1  score 0.93  2 accounts: a1, b1" in text and "shared: ASN 14061 /24" in text
