"""Whole-tree checks that run beside the rest of the suite instead of in line with it.

``mypy`` over the package is the single slowest test when it has no cache (as in CI's fresh clone): 28 s of CPU on a
quiet machine, most of it reading the ``openai`` and ``anthropic`` SDKs that the demo tour calls. It needs nothing
the other tests make, and the suite leaves the second core of a two-core machine idle most of the time, so
``tests/conftest.py`` starts it as soon as collection has found ``test_mypy_is_clean`` among the tests to run and
moves that test to the end, which then only collects the result. Run alone (``-k mypy``), the test waits as long as it always did.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tool(name: str) -> str | None:
    """The dev extra's ``name`` beside this interpreter, else on ``PATH``; None when it is not installed."""
    path = BIN / name
    if path.exists():
        return str(path)
    return shutil.which(name)


@dataclass
class Finished:
    returncode: int
    output: str


class BackgroundCheck:
    """One command started now in the repository root; :meth:`result` waits for it and returns its exit code and output."""

    def __init__(self, command: list[str]) -> None:
        self._output = tempfile.TemporaryFile()  # noqa: SIM115 - closed in result() / stop()
        self._proc = subprocess.Popen(command, cwd=ROOT, stdout=self._output, stderr=subprocess.STDOUT)

    def result(self, timeout: float) -> Finished:
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        self._output.seek(0)
        text = self._output.read().decode(errors="replace")
        self._output.close()
        return Finished(self._proc.returncode, text)

    def stop(self) -> None:
        """Ends the check if it still runs (a session stopped before reaching its test)."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._output.close()
