"""The package stays ruff-clean and type-checks with mypy (the style contract in the README)."""

from __future__ import annotations

import subprocess

import pytest

from tests.background_checks import ROOT, BackgroundCheck, tool


def _tool(name: str) -> str:
    found = tool(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it comes with the dev extra)")
    return found


def test_ruff_is_clean() -> None:
    out = subprocess.run([_tool("ruff"), "check", "src", "tests"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_is_clean(background_mypy: BackgroundCheck) -> None:
    # Started when collection selected this test (tests/conftest.py): by now it has usually finished beside the others.
    out = background_mypy.result(timeout=290)
    assert out.returncode == 0, out.output
