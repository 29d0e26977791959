"""`make demo` end to end: the tour's own processes, the official SDKs, detection, policy and provenance in its output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(600)
def test_demo_tour_finds_the_hydra_and_the_reseller_and_proves_provenance(tmp_path: Path) -> None:
    env = {**os.environ, "DG_DEMO_DIR": str(tmp_path / "demo"), "DG_CACHE_DIR": os.environ.get("DG_CACHE_DIR", str(Path.home() / ".cache" / "distillguard"))}
    out = subprocess.run([sys.executable, "-m", "distillguard.cli", "demo"], capture_output=True, text=True, timeout=540, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    names = {}
    for line in text.splitlines():
        match = re.match(r"\s+(acct_[0-9a-f]+)\s+(\S+)\s+[\d.]+\s+[\d.]+\s+(high|medium|low)", line)
        if match:
            names[match.group(1)] = (match.group(2), match.group(3))
    hydra = [a for a, (name, _) in names.items() if name.startswith("research-lab")]
    benign = [a for a, (name, _) in names.items() if name.startswith("benign-user")]
    assert len(hydra) == 8 and len(benign) == 6
    assert all(names[a][1] == "high" for a in hydra)
    assert all(names[a][1] == "low" for a in benign)
    assert any(name == "cheap-api-reseller" and risk == "high" for name, risk in names.values())
    assert report["clusters"] and set(hydra) <= set(report["clusters"][0]["accounts"])
    # Provenance: the largest set of harvested responses is detected with the key that marked it, and not with another key.
    lines = [line for line in text.splitlines() if "tested with" in line]
    assert len(lines) >= 2
    own, other = lines[0], lines[1]
    assert "watermarked" in own and "org:someone-else" in other and "not_detected" in other
