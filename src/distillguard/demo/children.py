"""Waiting for a child server the demo commands start (`demo`, `make fleet`) to answer HTTP.

One loop for both: the child may die while we wait (say so at once, not after
the timeout), and any answer below 500 means it is serving.
"""

from __future__ import annotations

import subprocess
import time

import httpx

__all__ = ["wait_until_answering"]


def wait_until_answering(url: str, proc: subprocess.Popen[bytes], timeout: float = 60, poll_s: float = 0.1) -> str | None:
    """``None`` once ``url`` answers below 500; otherwise what went wrong, as the end of a sentence."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with code {proc.returncode}"
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return None
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    return f"did not answer {url} within {timeout:.0f}s"
