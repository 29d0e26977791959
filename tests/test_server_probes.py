"""The issue #12 edge probes against the real gateway (``distillguard serve``), on the wire.

One gateway for the module, started the way an operator would, except for
short deadlines (so the slow-client probes take seconds) and a soft open-file
limit of 1,024 inherited from the test process: the issue's 1,000 trickling
connections locked every client out at that limit; ``serve`` must raise it.
The probes themselves live in ``tests/wire_probes.py``, shared with
``bench/server_compare.py``, which runs them against uvicorn and granian too.
"""

from __future__ import annotations

import re
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.upstream_stub import UpstreamStub
from tests.wire_probes import PROBES, Target, chat_latency, connect, rss_mb, trailer_flooder

pytestmark = pytest.mark.timeout(120)

HEAD_S = BODY_S = 1.5
PER_IP = 64


@pytest.fixture(scope="module")
def edge_gateway(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub) -> Iterator[RunningGateway]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # the child inherits the common default
    try:
        gw = start_gateway(tmp_path_factory.mktemp("edge"), stub.base_url,
                           server={"head_timeout_s": HEAD_S, "body_timeout_s": BODY_S, "max_connections_per_ip": PER_IP},
                           limits={"requests_per_min": 100_000, "tokens_per_min": None, "concurrent_requests": 1000, "daily_tokens": None})
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def target(edge_gateway: RunningGateway) -> Target:
    key = edge_gateway.create_key("prober")
    return Target(edge_gateway.root_url, key["secret"], edge_gateway.admin_token, edge_gateway.proc.pid,
                  head_deadline_s=HEAD_S, body_deadline_s=BODY_S)


@pytest.mark.parametrize("name", list(PROBES))
def test_probe(name: str, target: Target) -> None:
    ok, seen = PROBES[name](target)
    assert ok, f"{name}: {seen}"


def _metric(root: str, name: str, label: str) -> float:
    text = httpx.get(root + "/metrics", timeout=5).text
    found = re.search(rf'^{re.escape(name)}{{[^}}]*"{re.escape(label)}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _gauge(root: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", httpx.get(root + "/metrics", timeout=5).text, re.M)
    return float(found.group(1)) if found else float("nan")


def test_open_file_limit_was_raised_and_connections_capped_below_it(edge_gateway: RunningGateway) -> None:
    soft = int(Path(f"/proc/{edge_gateway.proc.pid}/limits").read_text().split("Max open files")[1].split()[0])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert soft == hard
    cap = int(re.search(r"at most (\d+) connections", edge_gateway.log()).group(1))  # type: ignore[union-attr]
    assert cap < soft


def test_per_ip_cap_evicts_the_longest_waiting_connection_with_a_log_line_and_a_metric(edge_gateway: RunningGateway,
                                                                                       target: Target) -> None:
    deadline = time.time() + 10  # connections of earlier tests (trickling, flooding) gone first: they would be evicted first
    while _gauge(target.root, "distillguard_open_connections") > 1 and time.time() < deadline:  # (1: this scrape's own)
        time.sleep(0.1)
    before = _metric(target.root, "distillguard_connections_evicted_total", "max_connections_per_ip")
    socks = []
    try:
        for _ in range(PER_IP + 5):  # idle connections, all from 127.0.0.1
            socks.append(connect(target))
            time.sleep(0.002)
        time.sleep(0.3)
        closed = 0
        for sock in socks[:5]:  # the five oldest made room for the last five
            sock.settimeout(2)
            try:
                closed += sock.recv(1) == b""
            except ConnectionResetError:
                closed += 1
        assert closed == 5
        assert chat_latency(target) < 1.0  # and a new client still gets in
    finally:
        for sock in socks:
            sock.close()
    assert _metric(target.root, "distillguard_connections_evicted_total", "max_connections_per_ip") >= before + 5
    line = re.compile(r"connection limits: .*\d+ evicted \(max_connections_per_ip\)")
    deadline = time.time() + 12  # the summary line: at once, or within its 10 s interval
    while not line.search(edge_gateway.log()) and time.time() < deadline:
        time.sleep(0.2)
    assert line.search(edge_gateway.log())


def test_rejections_are_counted_on_metrics(target: Target) -> None:
    before = _metric(target.root, "distillguard_http_rejected_total", "bad_host")
    with connect(target) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
    assert _metric(target.root, "distillguard_http_rejected_total", "bad_host") == before + 1
    assert _gauge(target.root, "distillguard_open_connections") >= 1  # at least the scrape's own connection


def test_http10_without_host_is_still_served(target: Target) -> None:
    with socket.create_connection(target.address, timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")


def test_a_body_cut_by_its_deadline_is_an_event_with_499(edge_gateway: RunningGateway, target: Target) -> None:
    def cut() -> int:
        return sum(1 for e in edge_gateway.events() if e["response"]["status"] == 499 and e["response"].get("error") == "client_disconnected")

    before = cut()
    ok, seen = PROBES["4 body at one byte a second is cut (valid key)"](target)
    assert ok, seen
    deadline = time.time() + 5
    while cut() == before and time.time() < deadline:
        time.sleep(0.2)
    assert cut() == before + 1


def test_a_reconnecting_endless_trailer_flood_keeps_memory_bounded(target: Target) -> None:
    """Five connections at a time, each cut at the trailer limit and reopened at once: what each one's
    parser buffered must go with it (it used to wait for the cyclic collector: +680 MB in 10 s)."""
    import threading

    before = rss_mb(target.pid)
    stop = threading.Event()
    sent = [0]
    threads = [trailer_flooder(target, key, stop, sent) for key in (None, None, None, None, target.key)]
    peak = before
    for _ in range(12):
        time.sleep(0.25)
        peak = max(peak, rss_mb(target.pid))
    stop.set()
    for thread in threads:
        thread.join(5)
    assert sent[0] > 100 << 20  # the flood really flowed (hundreds of connections)
    assert peak - before < 60, f"RSS {before:.0f} → {peak:.0f} MB after {sent[0] >> 20} MiB of trailer"
