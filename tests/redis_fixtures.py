"""A real ``redis-server`` (Debian's ``redis-server`` package) for tests: own port, own directory, no persistence.

``RedisServer.start()`` skips the calling test with a visible reason when the
binary is missing or will not start; ``stop()`` and ``start()`` again on the
same port simulate an outage and a recovery.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.upstream_stub import free_port


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.chosen_port = port is not None  # a restart on the same port must not move
        self.port = port or free_port()
        self.extra_args = extra_args  # e.g. ("--requirepass", "…") for a server that wants AUTH
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
        self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(5):
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log"), *self.extra_args],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )
            deadline = time.time() + 30  # a start at load 20 is slow; 10 s skipped every Redis test once it ran out
            while time.time() < deadline and self.proc.poll() is None:
                if self.ping():
                    return self
                time.sleep(0.05)
            # The free port may have been taken before the server bound it (by another listener or an outgoing
            # connection's local port, which the kernel takes from the same range): a new port, not a skipped test.
            if self.proc.poll() is None or self.chosen_port or "already in use" not in self._log() or attempt == 4:
                break
            self.port = free_port()
        self.stop()
        pytest.skip(f"redis-server did not start on port {self.port}: {self._log()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # up, whether or not it wants a password
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def _log(self) -> str:
        log = self.directory / "redis.log"
        return log.read_text(errors="replace")[-500:] if log.exists() else "(no log)"
