"""``distillguard serve --workers N``: N gateway processes on one port, sharing their limits through Redis.

Why processes: one gateway process is one event loop on one core; a machine
with more cores serves more with more processes. Every worker binds the same
address with ``SO_REUSEPORT``, so the kernel spreads connections over them.
Their limits, concurrency and attestation nonces must be shared or each
worker would grant the whole limit again, so workers need ``state: redis://…``;
with ``state: memory`` the command refuses to start (exit 2).

The supervisor (this process) starts the workers, restarts one that dies, and
passes SIGTERM/SIGINT on; each worker then drains as a single gateway does.
Each worker spills events to its own ``spill_dir/worker-<i>`` so two workers
never replay the same spill file.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from distillguard.config import Settings, load_settings
from distillguard.exceptions import ConfigError

__all__ = ["check_workers", "serve_workers"]

log = logging.getLogger("distillguard.gateway")

RESTART_BACKOFF_S = 1.0


def check_workers(settings: Settings, workers: int) -> None:
    """Refuse a worker count the configuration cannot serve correctly (exit 2 with the reason)."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: give at least 1")
    if settings.state == "memory":
        raise ConfigError(f"--workers {workers} needs shared state: with state: memory every worker would keep its own limits "
                          "and nonce cache and grant each limit once per worker; set state: redis://host:port/db "
                          "(docs/deploy.md), or run without --workers")


def _worker(config: str | None, overrides: dict[str, Any], index: int) -> None:
    from distillguard.gateway.server import serve

    settings = load_settings(config, **overrides)
    serve(settings, worker=index)


def serve_workers(config: str | None, settings: Settings, workers: int) -> int:
    """Run ``workers`` gateway processes until SIGTERM/SIGINT; returns the exit code."""
    from distillguard.gateway.server import check_serving

    check_workers(settings, workers)
    check_serving(settings)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no event loop or threads inherited
    overrides = {"spill_dir": settings.spill_dir}
    stopping = False

    def start(index: int) -> BaseProcess:
        worker_overrides = {**overrides, "spill_dir": str(Path(settings.spill_dir) / f"worker-{index}")}
        process = context.Process(target=_worker, args=(config, worker_overrides, index), name=f"distillguard-worker-{index}")
        process.start()
        return process

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    processes = [start(i) for i in range(workers)]
    log.info("distillguard: %d workers on http://%s sharing state %s (pids %s)", workers, settings.listen, settings.state,
             ", ".join(str(p.pid) for p in processes))
    try:
        while not stopping:
            time.sleep(0.2)
            for index, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    log.error("worker %d (pid %s) exited with %s; starting it again", index, process.pid, process.exitcode)
                    time.sleep(RESTART_BACKOFF_S)
                    processes[index] = start(index)
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + settings.server.graceful_timeout_s + 10
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker pid %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join(5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
