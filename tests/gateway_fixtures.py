"""Start a real gateway (``distillguard serve`` in a subprocess) for end-to-end tests.

Used by the gateway's own tests and by every other package that needs traffic
through the real thing: ``start_gateway(tmp_path, upstream_base_url)`` returns a
:class:`RunningGateway` with helpers to create keys and read back events.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from tests.upstream_stub import free_port

ADMIN_TOKEN = "test-admin-token"


@dataclass
class RunningGateway:
    base_url: str
    root_url: str
    admin_token: str
    proc: subprocess.Popen[bytes]
    config_path: Path
    database: str
    spill_dir: Path
    log_path: Path
    keys: list[dict[str, Any]] = field(default_factory=list)

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        return httpx.request(method, self.root_url + path, headers=headers, timeout=30, **kwargs)

    def create_key(self, name: str = "tester", org: str | None = None, limits: dict[str, Any] | None = None) -> dict[str, Any]:
        account = self.admin("POST", "/admin/v1/accounts", json={"name": name, "org": org, "limits": limits}).json()
        key = self.admin("POST", f"/admin/v1/accounts/{account['account_id']}/keys", json={}).json()
        self.keys.append(key)
        return key

    def events(self, *, expect: int | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Events stored so far; with ``expect``, wait until at least that many are stored."""
        deadline = time.time() + timeout
        while True:
            response = self.admin("GET", "/admin/v1/events")
            events = [orjson.loads(line) for line in response.content.splitlines() if line.strip()]
            if expect is None or len(events) >= expect or time.time() > deadline:
                return events
            time.sleep(0.1)

    def event(self, request_id: str, *, timeout: float = 5.0) -> dict[str, Any]:
        """The stored event of one request, waiting up to ``timeout`` for the writer to store it."""
        deadline = time.time() + timeout
        while True:
            found = [e for e in self.events() if e["request_id"] == request_id]
            if found or time.time() > deadline:
                assert found, f"no event for {request_id}"
                return found[0]
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def write_config(tmp_path: Path, upstreams: list[dict[str, Any]], **extra: Any) -> tuple[Path, dict[str, Any]]:
    port = free_port()
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "database": f"sqlite:///{tmp_path / 'gateway.db'}",
        "admin_token": ADMIN_TOKEN,
        "spill_dir": str(tmp_path / "spill"),
        "upstreams": upstreams,
        "log_level": "info",
    }
    config.update(extra)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def on_every_worker(root: str, check: Any, what: str, timeout: float = 60.0) -> None:
    """Wait until ``check(metrics text)`` holds on 20 scrapes in a row, each on a new connection.

    ``serve --workers`` binds one port in every worker and the kernel hashes
    each new connection to one of them: which worker answers cannot be
    chosen, but 20 in a row all from one of two workers happens once in
    half a million, so 20 that agree mean every worker does.
    """
    deadline = time.time() + timeout
    agreeing = 0
    while agreeing < 20:
        assert time.time() < deadline, what
        text = httpx.get(root + "/metrics", headers={"Connection": "close"}, timeout=10).text
        agreeing = agreeing + 1 if check(text) else 0
        if not agreeing:
            time.sleep(0.1)


def keys_loaded(text: str) -> float:
    """``distillguard_keys_loaded`` in a ``/metrics`` text: the keys in that gateway process's table."""
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith("distillguard_keys_loaded "))


def start_gateway(
    tmp_path: Path,
    upstream_base_url: str | None = None,
    *,
    upstreams: list[dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    **extra: Any,
) -> RunningGateway:
    """Start ``distillguard serve`` on a free port and wait until it answers."""
    if upstreams is None:
        upstreams = [{"name": "stub", "base_url": upstream_base_url, "protocol": "openai", "models": ["*"], "timeout_s": 3}]
    log_path = tmp_path / "gateway.log"
    for attempt in range(5):
        config_path, config = write_config(tmp_path, upstreams, **extra)
        proc = subprocess.Popen(
            [sys.executable, "-m", "distillguard.cli", "serve", "--config", str(config_path)],
            stdout=open(log_path, "wb"),  # noqa: SIM115 - lives as long as the process
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        root = f"http://{config['listen']}"
        if _answers_healthz(proc, root, log_path):
            break
        # The free port was taken before the gateway bound it: by another process's listener or by any outgoing
        # connection's local port, which the kernel takes from the same range (seen with make fleet's gateways on a
        # machine running several suites). A new port, unless the test chose its own.
        if "listen" in extra or "already in use" not in log_path.read_text(errors="replace") or attempt == 4:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{log_path.read_text()}")
    return RunningGateway(
        base_url=root + "/v1", root_url=root, admin_token=ADMIN_TOKEN, proc=proc, config_path=config_path,
        database=config["database"], spill_dir=Path(config["spill_dir"]), log_path=log_path,
    )


def _answers_healthz(proc: subprocess.Popen[bytes], root: str, log_path: Path) -> bool:
    """Waits until the gateway answers ``/healthz`` (True) or exits (False); raises if it does neither in 60 s."""
    deadline = time.time() + 60  # a start-up at load 20+ took over 30 s (test_fleet_restart)
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(root + "/healthz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"gateway did not start:\n{log_path.read_text()}")
