"""docs/deploy.md's local fleet and Compose file (issue #13, deliverable 8).

The launcher (``make fleet``) is run as an operator runs it: three replicas,
Redis, PostgreSQL, the demo model and haproxy from Debian packages; the
official ``openai`` SDK sends through every replica and through the balancer,
and one account's 12 requests/min hold across all of them. The replicas start
at the same moment on an empty database, so this is also the test that their
schema creation does not race (store/schema.py, create_tables). SIGTERM then stops
every process. Docker is not available here, so the Compose file is checked
by parsing it: the services of the documented layout, their images/builds and
ports, and that the gateway config it mounts passes distillguard's own config
validation and admin-exposure check.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from distillguard.config import load_settings
from distillguard.gateway.admin import check_admin_exposure

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_local_fleet_shares_one_limit_across_replicas_and_stops_cleanly(tmp_path: Path) -> None:
    missing = [b for b in ("redis-server", "haproxy") if shutil.which(b) is None]
    if missing or not (shutil.which("initdb") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))):
        pytest.skip(f"Debian packages missing ({', '.join(missing) or 'postgresql'}); .ci/run installs them")
    workdir = tmp_path / "fleet"
    out = open(tmp_path / "fleet.out", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "distillguard.demo.fleet", "--replicas", "3", "--port", "0",
                             "--workdir", str(workdir)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while not (workdir / "fleet.json").exists():
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "fleet.out").read_text()
            time.sleep(0.2)
        info = json.loads((workdir / "fleet.json").read_text())
        assert len(info["gateways"]) == 3 and info["balancer"] and info["postgresql"].startswith("postgresql://")
        assert "running until Ctrl-C" in (tmp_path / "fleet.out").read_text()
        admin = {"Authorization": f"Bearer {info['admin_token']}"}
        account = httpx.post(info["balancer"] + "/admin/v1/accounts", headers=admin,
                             json={"name": "shared", "limits": {"requests_per_min": 12}}).json()
        secret = httpx.post(info["balancer"] + f"/admin/v1/accounts/{account['account_id']}/keys", headers=admin,
                            json={}).json()["secret"]
        admitted = 0
        for root in info["gateways"]:  # each replica loads the new key from the shared database within a second
            while (status := httpx.get(root + "/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code) == 401:
                assert time.time() < deadline + 20, "a replica never loaded the key"
                time.sleep(0.1)
            admitted += status == 200  # a model list is a request too: it counts against the limit
        served = refused = 0
        for root in [*info["gateways"], info["balancer"]] * 5:
            client = openai.OpenAI(base_url=root + "/v1", api_key=secret, max_retries=0)
            try:
                client.chat.completions.create(model="demo-1", max_tokens=4, messages=[{"role": "user", "content": "hello"}])
                served += 1
            except openai.RateLimitError:
                refused += 1
        assert served + refused == 20 and served >= 1
        assert admitted + served == 12, (admitted, served)  # one limit for the fleet, not one per replica (3 x 12)
        chats: list[dict[str, object]] = []
        while len(chats) < served + refused:  # every replica's events reach the shared PostgreSQL, refusals too
            assert time.time() < deadline + 40, len(chats)
            time.sleep(0.2)
            lines = httpx.get(info["gateways"][0] + "/admin/v1/events", headers=admin).content.splitlines()
            chats = [e for e in map(json.loads, lines) if e.get("endpoint") == "openai.chat"]
        assert len(chats) == served + refused
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        out.close()
    assert code == 0, (tmp_path / "fleet.out").read_text()
    assert (tmp_path / "fleet.out").read_text().rstrip().endswith("stopped")
    assert not [name for name, pid in info["pids"].items() if _alive(pid)]
    with pytest.raises(httpx.HTTPError):
        httpx.get(info["balancer"] + "/healthz", timeout=1)


def test_compose_file_describes_the_documented_layout() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"balancer", "gateway", "redis", "postgres", "model", "scorer"}
    assert services["scorer"]["command"][0] == "scorer" and "deploy" not in services["scorer"]  # one scorer, never replicated
    assert services["scorer"]["volumes"] == services["gateway"]["volumes"]  # the replicas' configuration
    assert services["redis"]["image"].startswith("redis:7") and services["postgres"]["image"].startswith("postgres:")
    assert services["gateway"]["build"]["dockerfile"] == "deploy/Dockerfile" and services["model"]["build"] == services["gateway"]["build"]
    assert (DEPLOY / services["gateway"]["build"]["context"]).resolve() == DEPLOY.parent.resolve()  # the repository root
    assert "FROM python:3.11" in (DEPLOY / "Dockerfile").read_text()
    assert services["gateway"]["deploy"]["replicas"] >= 2 and "ports" not in services["gateway"]  # reached only through the balancer
    assert services["balancer"]["image"].startswith("haproxy:") and services["balancer"]["ports"] == ["8700:8700"]
    assert set(services["gateway"]["depends_on"]) == {"redis", "postgres", "model"}
    assert set(services["balancer"]["depends_on"]) == {"gateway"}
    # the gateway config the replicas mount passes distillguard's own validation, with the environment Compose gives it
    mount = next(v for v in services["gateway"]["volumes"] if v.endswith(":/etc/distillguard/gateway.yaml:ro"))
    config = DEPLOY / mount.split(":")[0]
    environment = services["gateway"]["environment"]
    assert environment["DG_ADMIN_SECRET"].startswith("${DG_ADMIN_SECRET:?")  # compose refuses to start without one
    old = {name: os.environ.get(name) for name in environment}
    os.environ.update({name: "x" * 40 for name in environment})  # what the operator's ${…} values become
    try:
        settings = load_settings(config)
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    assert settings.state == "redis://redis:6379/0" and settings.database.startswith("postgresql://")
    assert settings.detection.scorer == "central"
    assert settings.listen == "0.0.0.0:8700" and settings.upstreams[0].base_url == "http://model:8701/v1"
    assert check_admin_exposure(settings) is None  # a real token on a non-loopback listener: no refusal, no warning
    assert services["gateway"]["command"][:2] == ["serve", "--config"] and services["gateway"]["command"][2] == "/etc/distillguard/gateway.yaml"
    # the balancer's config is one haproxy accepts (checked with Debian's haproxy when installed)
    haproxy_cfg = DEPLOY / next(v for v in services["balancer"]["volumes"] if "haproxy.cfg" in v).split(":")[0]
    if shutil.which("haproxy"):
        check = subprocess.run(["haproxy", "-c", "-f", str(haproxy_cfg)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
