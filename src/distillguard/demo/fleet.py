"""`make fleet` / `python -m distillguard.demo.fleet`: a whole fleet on one machine from Debian packages.

Starts what docs/deploy.md describes — a load balancer (Debian's ``haproxy``,
when installed) in front of N gateway replicas that share their limits and
nonces through one ``redis-server`` and their accounts, keys and events through
one PostgreSQL, with one central scorer (``distillguard scorer``) scoring every
replica's traffic, all proxying to the demo model — so the layout can be tried
(and is tested, tests/test_deploy_fleet.py) without containers. Every piece is
a child process started the way an operator would start it; the launcher
prints where each one listens, writes the same as JSON to ``fleet.json`` in its
working directory, and on Ctrl-C or SIGTERM stops them in dependency order:
balancer, gateways (which drain their events into PostgreSQL), scorer, model, Redis,
PostgreSQL. The PostgreSQL data directory is temporary and removed at stop.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

from distillguard.demo.children import wait_until_answering
from distillguard.exceptions import DistillguardError

__all__ = ["Fleet", "main"]


class FleetError(DistillguardError, RuntimeError):
    """A piece of the fleet could not be started; the message says which and where its log is."""


class _Stop(Exception):
    """Raised from the SIGTERM/SIGINT handler so the main loop unwinds into the orderly stop."""


def _free_port(preferred: int = 0) -> int:
    """``preferred`` when it is free (0: any), else one the kernel picks."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise FleetError("no free TCP port on 127.0.0.1")


def _pg_binary(name: str) -> str | None:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else shutil.which(name)


class Fleet:
    """The child processes of one local fleet and how to start and stop them in order."""

    def __init__(self, workdir: Path, replicas: int, port: int, admin_token: str) -> None:
        self.workdir = workdir
        self.replicas = replicas
        self.port = port
        self.admin_token = admin_token
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.pg_root: str | None = None
        self.pg_ctl = _pg_binary("pg_ctl")
        self.info: dict[str, Any] = {"workdir": str(workdir), "admin_token": admin_token}

    # -- starting ---------------------------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        proc = subprocess.Popen(command, stdout=open(log, "wb"),  # noqa: SIM115 - lives as long as the child
                                stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True)
        self.procs.append((name, proc))  # own session: a terminal's Ctrl-C reaches only us, and we stop them in order
        return proc

    def _wait_http(self, name: str, proc: subprocess.Popen[bytes], url: str, timeout: float = 60) -> None:
        problem = wait_until_answering(url, proc, timeout)
        if problem is not None:
            raise FleetError(f"{name} {problem}; see {self.workdir / (name + '.log')}")

    def _pg(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as Debian's postgres user
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, start_new_session=True)

    def start_postgres(self) -> str:
        initdb = _pg_binary("initdb")
        if not initdb or not self.pg_ctl:
            raise FleetError("PostgreSQL's initdb/pg_ctl not found: apt-get install postgresql")
        # Outside the working directory: the postgres user must be able to reach it, and it is thrown away at stop.
        self.pg_root = tempfile.mkdtemp(prefix="dg-fleet-pg-")
        if os.geteuid() == 0:
            shutil.chown(self.pg_root, "postgres", "postgres")
        os.chmod(self.pg_root, 0o755)
        data, port = os.path.join(self.pg_root, "data"), _free_port()
        out = self._pg(initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")  # thrown away: no fsync
        if out.returncode != 0:
            raise FleetError(f"initdb failed: {out.stderr.strip()[:500]}")
        options = f"-p {port} -k {self.pg_root} -c listen_addresses=127.0.0.1"
        out = self._pg(self.pg_ctl, "-D", data, "-o", options, "-l", os.path.join(self.pg_root, "postgresql.log"), "-w", "start")
        if out.returncode != 0:
            raise FleetError(f"pg_ctl start failed: {out.stderr.strip()[:500]} (log: {self.pg_root}/postgresql.log)")
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self.info["postgresql"] = url
        return url

    def start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FleetError("redis-server not found: apt-get install redis-server")
        port = _free_port()
        proc = self._spawn("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                     "--dir", str(self.workdir)])
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise FleetError(f"redis-server did not start; see {self.workdir / 'redis.log'}")
            time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}/0"
        self.info["redis"] = url
        return url

    def start_model(self) -> str:
        port = _free_port()
        proc = self._spawn("demo-model", [sys.executable, "-m", "distillguard.cli", "demo-model", "--port", str(port)])
        base = f"http://127.0.0.1:{port}/v1"
        self._wait_http("demo-model", proc, base + "/models")
        self.info["upstream"] = base
        return base

    def gateway_config(self, index: int, port: int, database: str, state: str, upstream: str) -> dict[str, Any]:
        return {
            "listen": f"127.0.0.1:{port}",
            "admin_token": self.admin_token,
            "database": database,
            "state": state,
            "state_failure": "fail_open",
            "spill_dir": str(self.workdir / f"spill-{index}"),
            "upstreams": [{"name": "demo", "base_url": upstream, "protocol": "openai", "models": ["*"]}],
            "network": {"trusted_proxies": ["127.0.0.1/32"]},  # the balancer's X-Forwarded-For is believed
            "detection": {"scorer": "central"},  # one `distillguard scorer` for the fleet (start_scorer)
        }

    def start_gateways(self, database: str, state: str, upstream: str) -> list[str]:
        started = [self._spawn_gateway(index, database, state, upstream) for index in range(self.replicas)]
        roots = []
        for index, (port, proc) in enumerate(started):  # started together, awaited together: they boot in parallel
            name = f"gateway-{index}"
            for _ in range(3):
                problem = wait_until_answering(f"http://127.0.0.1:{port}/healthz", proc)
                # The free port can be taken before the replica binds it (another listener, or any outgoing connection's
                # local port, which the kernel takes from the same range): that replica starts again on a new one.
                if problem is None or "already in use" not in (self.workdir / f"{name}.log").read_text(errors="replace"):
                    break
                self.procs.remove((name, proc))  # (it exited: not a child that died while the fleet ran)
                port, proc = self._spawn_gateway(index, database, state, upstream)
            if problem is not None:
                raise FleetError(f"{name} {problem}; see {self.workdir / (name + '.log')}")
            roots.append(f"http://127.0.0.1:{port}")
        self.info["gateways"] = roots
        return roots

    def _spawn_gateway(self, index: int, database: str, state: str, upstream: str) -> tuple[int, subprocess.Popen[bytes]]:
        port = _free_port()
        config = self.workdir / f"gateway-{index}.yaml"
        config.write_text(json.dumps(self.gateway_config(index, port, database, state, upstream), indent=2))  # JSON is YAML
        return port, self._spawn(f"gateway-{index}", [sys.executable, "-m", "distillguard.cli", "serve", "--config", str(config)])

    def start_scorer(self, roots: list[str]) -> None:
        """The fleet's one scorer, with a replica's configuration; started after the replicas made the schema."""
        proc = self._spawn("scorer", [sys.executable, "-m", "distillguard.cli", "scorer", "--config", str(self.workdir / "gateway-0.yaml")])
        deadline = time.monotonic() + 60
        while True:  # until a replica hears its heartbeat
            if proc.poll() is not None:
                raise FleetError(f"scorer exited with {proc.returncode}; see {self.workdir / 'scorer.log'}")
            try:
                with urllib.request.urlopen(roots[0] + "/readyz", timeout=2) as answer:
                    if json.loads(answer.read())["scorer"]["status"] == "ok":
                        break
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise FleetError(f"the replicas never heard the scorer within 60 s; see {self.workdir / 'scorer.log'}")
            time.sleep(0.2)
        self.info["scorer"] = {"pid": proc.pid, "log": str(self.workdir / "scorer.log")}

    def start_balancer(self, roots: list[str]) -> str | None:
        binary = shutil.which("haproxy")
        if binary is None:
            self.info["balancer"] = None
            return None
        port = _free_port(self.port)
        servers = "\n".join(f"    server gw{i} {root.removeprefix('http://')} check inter 1s" for i, root in enumerate(roots))
        config = self.workdir / "haproxy.cfg"
        config.write_text(f"""global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    option forwardfor
frontend fleet
    bind 127.0.0.1:{port}
    default_backend gateways
backend gateways
    balance roundrobin
    option httpchk GET /healthz
{servers}
""")
        proc = self._spawn("haproxy", [binary, "-db", "-f", str(config)])
        root = f"http://127.0.0.1:{port}"
        self._wait_http("haproxy", proc, root + "/healthz")
        self.info["balancer"] = root
        return root

    def start(self) -> dict[str, Any]:
        database = self.start_postgres()
        state = self.start_redis()
        upstream = self.start_model()
        roots = self.start_gateways(database, state, upstream)
        self.start_scorer(roots)
        self.start_balancer(roots)
        self.info["pids"] = {name: proc.pid for name, proc in self.procs}
        (self.workdir / "fleet.json").write_text(json.dumps(self.info, indent=2))
        return self.info

    # -- running and stopping ----------------------------------------------------------------------------

    def dead(self) -> list[str]:
        return [f"{name} (exit {proc.returncode})" for name, proc in self.procs if proc.poll() is not None]

    def stop(self) -> bool:
        """Stop everything, dependents first; True when every child exited by itself on SIGTERM."""
        clean = True
        groups = [[p for p in self.procs if p[0] == "haproxy"], [p for p in self.procs if p[0].startswith("gateway-")],
                  [p for p in self.procs if p[0] == "scorer"], [p for p in self.procs if p[0] in ("demo-model", "redis")]]
        for group in groups:  # the balancer first, the gateways (draining events into PostgreSQL) next, what they use last
            for _, proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for name, proc in group:
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    print(f"  {name} did not stop within 60 s of SIGTERM; killed", file=sys.stderr)
                    proc.kill()
                    proc.wait(5)
                    clean = False
        if self.pg_root is not None and self.pg_ctl:
            out = self._pg(self.pg_ctl, "-D", os.path.join(self.pg_root, "data"), "-m", "fast", "-w", "stop")
            clean = clean and (out.returncode == 0 or not os.path.exists(os.path.join(self.pg_root, "data", "postmaster.pid")))
            shutil.rmtree(self.pg_root, ignore_errors=True)
            self.pg_root = None
        return clean


def _print_summary(info: dict[str, Any]) -> None:
    token = info["admin_token"]
    front = info["balancer"] or info["gateways"][0]
    print(f"distillguard fleet — {len(info['gateways'])} gateway replicas, working directory {info['workdir']}")
    if info["balancer"]:
        print(f"  load balancer (haproxy):  {info['balancer']}/v1   (round robin over the replicas)")
    else:
        print("  load balancer: none (haproxy is not installed: apt-get install haproxy); put the replicas below behind yours")
    for index, root in enumerate(info["gateways"]):
        print(f"  gateway replica {index}:        {root}/v1   log: {info['workdir']}/gateway-{index}.log")
    print(f"  shared state (Redis):      {info['redis']}")
    print(f"  central scorer:            pid {info['scorer']['pid']}   log: {info['scorer']['log']}")
    print(f"  database (PostgreSQL):     {info['postgresql']}   (temporary: removed at stop)")
    print(f"  upstream (demo model):     {info['upstream']}   models demo-1, demo-2")
    print(f"  admin API: {front}/admin/v1/   console: {front}/admin/ui/   admin token: {token}")
    print(f"  try: curl -s -H 'Authorization: Bearer {token}' -d '{{\"name\": \"me\"}}' {front}/admin/v1/accounts")
    print("  running until Ctrl-C or SIGTERM …", flush=True)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distillguard.demo.fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3, help="gateway replicas (default 3)")
    parser.add_argument("--port", type=int, default=8700, help="the load balancer's port (default 8700; another free one if taken)")
    parser.add_argument("--workdir", default=os.environ.get("DG_FLEET_DIR", ".fleet"),
                        help="configs, logs and fleet.json go here (default .fleet, or $DG_FLEET_DIR)")
    parser.add_argument("--admin-token", default=None, help="the replicas' admin token (default: a random one, printed)")
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "fleet.json").unlink(missing_ok=True)
    fleet = Fleet(workdir, args.replicas, args.port, args.admin_token or secrets.token_hex(16))
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    code = 0
    try:
        _print_summary(fleet.start())
        while not (dead := fleet.dead()):
            time.sleep(0.5)
        print(f"  stopping: {', '.join(dead)} exited on its own", file=sys.stderr)
        code = 1
    except FleetError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        code = 1
    except _Stop:
        print("  stopping …", flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the orderly stop short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        clean = fleet.stop()
    print("  stopped" + ("" if clean else " (some parts had to be killed)"), flush=True)
    return code if clean else 1


if __name__ == "__main__":
    sys.exit(main())
