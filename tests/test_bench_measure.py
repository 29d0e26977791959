"""bench/measure.py: the source digest a benchmark prints names the package its children really ran."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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
