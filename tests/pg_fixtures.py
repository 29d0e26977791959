"""A real PostgreSQL server for the test session, started from Debian's packages.

PostgreSQL refuses to run as root, so under root the server runs as the
``postgres`` user (created by the Debian package) through ``runuser``. When no
server can be started the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.upstream_stub import free_port


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found and "/usr/lib/postgresql" in os.path.realpath(found):
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else found


class PostgresServer:
    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _binary("initdb"), _binary("pg_ctl")
        self.root = tempfile.mkdtemp(prefix="dg-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def start(self) -> str:
        if not self.initdb or not self.pg_ctl:
            raise RuntimeError("initdb/pg_ctl not found (install Debian's postgresql package)")
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o755)
        # --no-sync: a throwaway server need not fsync its fresh cluster. The sync cost 3.7 of initdb's 5.3 s at load 20,
        # and files that reached the disk then took 3.5 s (against 0.15 s) to delete at the session's end.
        out = self._run(self.initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stderr.strip()[:500]}")
        for attempt in range(5):
            options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            out = self._run(self.pg_ctl, "-D", self.data, "-o", options, "-l", os.path.join(self.root, "log"), "-w", "start")
            if out.returncode == 0:
                break
            # The free port may have been taken before the server bound it (another listener, or an outgoing
            # connection's local port from the same range): a new port rather than every PostgreSQL test skipped.
            if "already in use" not in Path(self.root, "log").read_text(errors="replace") or attempt == 4:
                raise RuntimeError(f"pg_ctl start failed: {out.stderr.strip()[:500]}")
            self.port = free_port()
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if self.pg_ctl and os.path.exists(self.data):
            self._run(self.pg_ctl, "-D", self.data, "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(self.pg_ctl, "-D", self.data, "-o", options, "-l", os.path.join(self.root, "log"), "-w", "start")
        time.sleep(0.2)

    def pids(self) -> list[int]:
        """The postmaster and every process it started (backends, writers), from ``postmaster.pid`` and /proc."""
        with open(os.path.join(self.data, "postmaster.pid")) as handle:
            postmaster = int(handle.readline())
        found = [postmaster]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as handle:
                        parent = int(handle.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if parent == postmaster:
                    found.append(int(entry))
        return found

    def freeze(self) -> None:
        """SIGSTOP the whole server: it keeps its sockets (the kernel still accepts and acknowledges) but never answers."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):  # a backend that exited since it was listed
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.url = server.start()  # type: ignore[attr-defined]
    except (RuntimeError, OSError, subprocess.SubprocessError, LookupError) as exc:
        server.cleanup()
        pytest.skip(f"no PostgreSQL server could be started here: {exc}")
    yield server
    server.cleanup()


def emptied_database_url(request: pytest.FixtureRequest, sqlite_path: Path, table: str) -> str:
    """For a fixture parametrised ``sqlite`` / ``postgresql``: a new SQLite file, or the session's server with ``table`` emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{sqlite_path}"
    from sqlalchemy import text

    from distillguard.store.registry import Registry

    server: PostgresServer = request.getfixturevalue("postgres")
    url = str(server.url)
    registry = Registry(url)  # one server for the session: start from an empty table
    with registry.engine.begin() as conn:
        conn.execute(text(f"DELETE FROM {table}"))
    registry.close()
    return url


def fresh_database(server: PostgresServer) -> str:
    """A new, empty database of its own on the session's server, for a test that starts several processes on it
    (its tables start empty; other tests' tables are untouched). Its URL."""
    import uuid

    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    url = str(server.url)  # type: ignore[attr-defined]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name

