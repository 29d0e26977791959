"""Wire-level probes of the gateway's HTTP edge (issue #12), runnable against any server.

Each probe talks raw HTTP/1.1 over a loopback socket to a running gateway and
returns ``(passed, what_was_seen)``. ``tests/test_server_probes.py`` asserts
them against ``distillguard serve``; ``bench/server_compare.py`` runs the same
probes against the gateway under uvicorn and granian for the record. They
need the gateway's root URL, an API key for the fast upstream's models, the
admin token (to read the event of a request back) and the server's pid (to
watch its memory).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson

__all__ = ["PROBES", "Response", "Target", "chat_latency", "connect", "process_tree", "read_response", "rss_mb", "run_all", "trailer_flooder", "trickling_connections"]

CHAT = orjson.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
Result = tuple[bool, str]


@dataclass
class Target:
    root: str  # http://127.0.0.1:PORT
    key: str  # an API key the gateway accepts
    admin_token: str
    pid: int  # the server process (its children count too)
    head_deadline_s: float = 10.0  # what the server under test was configured with
    body_deadline_s: float = 30.0

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.root)
        return parts.hostname or "127.0.0.1", parts.port or 80


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def connect(target: Target, timeout: float = 5.0, source: str | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if source:
        sock.bind((source, 0))
    sock.connect(target.address)
    return sock


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the server")
        self.buf += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self.fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def read_response(reader: _Reader | socket.socket) -> Response:
    """One response (content-length, chunked, or no body); raises ConnectionError if the server closed first."""
    r = reader if isinstance(reader, _Reader) else _Reader(reader)
    status_line = r.line()
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = r.line()
        if not line:
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = r.exactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(r.line().split(b";")[0], 16)
            body += r.exactly(size + 2)[:size]
            if size == 0:
                break
    return Response(status, headers, body)


def _request(method: str, path: str, *headers: str, body: bytes = b"", host: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(["Host: gw.test"] if host else []), *headers]
    if body and not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _answer(target: Target, raw: bytes, timeout: float = 5.0) -> str:
    """Send ``raw`` on a new connection; the status it got, or how the connection ended."""
    with connect(target, timeout) as sock:
        try:
            sock.sendall(raw)
            return str(read_response(sock).status)
        except (ConnectionError, OSError) as exc:
            return f"closed without a response ({type(exc).__name__})"


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (Linux ``/proc``)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            pending.extend(int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split())
        except (OSError, ValueError):
            continue
    return found


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    total = 0
    for current in process_tree(pid):
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total / 1024


def chat_latency(target: Target, source: str | None = None) -> float:
    """Seconds for one ordinary chat completion on a fresh connection (inf if it failed)."""
    started = time.perf_counter()
    try:
        with connect(target, 5.0, source) as sock:
            sock.sendall(_request("POST", "/v1/chat/completions", f"Authorization: Bearer {target.key}", "Content-Type: application/json",
                                  body=CHAT))
            if read_response(sock).status != 200:
                return float("inf")
    except OSError:
        return float("inf")
    return time.perf_counter() - started


# -- the probes ----------------------------------------------------------------------------------------


def probe_endless_trailer(target: Target) -> Result:
    """An endless chunked trailer value must be cut off (bounded memory), not buffered."""
    before = rss_mb(target.pid)
    sent = 0
    limit = 64 << 20
    with connect(target, 2.0) as sock:
        sock.sendall(_request("POST", "/healthz", "Transfer-Encoding: chunked") + b"0\r\nX-Pad: ")
        block = b"a" * 65536
        started = time.monotonic()
        outcome = f"still reading after {limit >> 20} MiB"
        while sent < limit and time.monotonic() - started < 20:
            try:
                sock.sendall(block)
                sent += len(block)
            except TimeoutError:
                outcome = "stopped reading"
                break
            except OSError:
                outcome = "closed"
                break
    grew = rss_mb(target.pid) - before
    ok = outcome != f"still reading after {limit >> 20} MiB" and grew < 50
    return ok, f"{outcome} after {sent >> 10} KiB; RSS +{grew:.0f} MB"


def probe_trailers_not_merged(target: Target) -> Result:
    """A trailer field (here User-Agent) must not be taken as a request header."""
    body = CHAT
    raw = _request("POST", "/v1/chat/completions", f"Authorization: Bearer {target.key}", "Content-Type: application/json",
                   "Transfer-Encoding: chunked")
    raw += b"%x\r\n%s\r\n0\r\nUser-Agent: trailer-probe/1\r\n\r\n" % (len(body), body)
    with connect(target) as sock:
        sock.sendall(raw)
        try:
            response = read_response(sock)
        except (ConnectionError, OSError) as exc:
            return False, f"closed without a response ({type(exc).__name__})"
    request_id = response.headers.get("x-request-id")
    if response.status != 200 or not request_id:
        return response.status == 400, f"status {response.status}"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = httpx.get(target.root + "/admin/v1/events", headers={"Authorization": f"Bearer {target.admin_token}"}, timeout=10)
        for line in events.content.splitlines():
            if line.strip():
                event = orjson.loads(line)
                if event.get("request_id") == request_id:
                    ua = (event.get("client") or {}).get("user_agent")
                    return ua != "trailer-probe/1", f"200; event user_agent {ua!r}"
        time.sleep(0.2)
    return False, "200 but no event found"


def probe_missing_host(target: Target) -> Result:
    seen = _answer(target, _request("GET", "/healthz", host=False))
    return seen == "400", seen


def probe_duplicate_host(target: Target) -> Result:
    seen = _answer(target, _request("GET", "/healthz", "Host: other.test"))
    return seen == "400", seen


def probe_transfer_coding(target: Target) -> Result:
    body = CHAT
    raw = _request("POST", "/v1/chat/completions", f"Authorization: Bearer {target.key}", "Content-Type: application/json",
                   "Transfer-Encoding: gzip, chunked") + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    seen = _answer(target, raw)
    return seen == "501", seen


def probe_malformed_chunk_size(target: Target) -> Result:
    raw = _request("POST", "/v1/chat/completions", f"Authorization: Bearer {target.key}", "Content-Type: application/json",
                   "Transfer-Encoding: chunked") + b"zz\r\n{}\r\n0\r\n\r\n"
    seen = _answer(target, raw)
    return seen == "400", seen


def probe_split_head_with_body(target: Target) -> Result:
    """A 100 KiB body arriving in the same read as the end of a head split over two reads is no 431."""
    body = orjson.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "x" * 100_000}], "max_tokens": 8})
    raw = _request("POST", "/v1/chat/completions", f"Authorization: Bearer {target.key}", "Content-Type: application/json", body=body)
    with connect(target) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(raw[:40])
        time.sleep(0.05)
        sock.sendall(raw[40:])
        try:
            seen = str(read_response(sock).status)
        except (ConnectionError, OSError) as exc:
            seen = f"closed without a response ({type(exc).__name__})"
    return seen == "200", seen


def probe_pipelined(target: Target, count: int = 10_000) -> Result:
    """``count`` pipelined requests on one connection are all answered."""
    raw = _request("GET", "/healthz") * count
    answered = 0
    error: list[str] = []
    with connect(target, 10.0) as sock:
        def writer() -> None:
            try:
                sock.sendall(raw)
            except OSError as exc:
                error.append(type(exc).__name__)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        reader = _Reader(sock)
        try:
            while answered < count:
                if read_response(reader).status != 200:
                    break
                answered += 1
        except (ConnectionError, OSError) as exc:
            error.append(type(exc).__name__)
        thread.join(5)
    return answered == count, f"{answered} of {count} answered" + (f" ({', '.join(error)})" if error else "")


def _trickle(target: Target, first: bytes, trickled: bytes, limit: float) -> Result:
    """Send ``first``, then ``trickled`` one byte a second; passes if the server cuts the connection (or answers 408) in ``limit`` s."""
    started = time.monotonic()
    with connect(target, 1.0) as sock:
        sock.sendall(first)
        for byte in trickled:
            if time.monotonic() - started > limit:
                return False, f"still open after {limit:.0f} s of one byte a second"
            try:
                sock.sendall(bytes([byte]))
                data = sock.recv(4096)  # waits up to 1 s: the trickle rate
            except TimeoutError:
                continue
            except OSError:
                return True, f"closed after {time.monotonic() - started:.1f} s"
            if not data:
                return True, f"closed after {time.monotonic() - started:.1f} s"
            return data.startswith(b"HTTP/1.1 408"), f"{data[:12].decode(errors='replace')} after {time.monotonic() - started:.1f} s"
    return False, "sent everything"


def probe_slow_head(target: Target) -> Result:
    """One byte a second must not keep a connection: the head has a total deadline."""
    return _trickle(target, b"", _request("GET", "/healthz")[:-4] * 100, target.head_deadline_s + 3)


def probe_slow_body(target: Target) -> Result:
    """A request body trickling in with a valid key must be cut off by a body deadline."""
    body = CHAT + b" " * 4000
    raw = _request("POST", "/v1/chat/completions", f"Authorization: Bearer {target.key}", "Content-Type: application/json", body=body)
    return _trickle(target, raw[: len(raw) - len(body)], body, target.body_deadline_s + 3)


def probe_websocket(target: Target) -> Result:
    raw = _request("GET", "/v1/realtime", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
    seen = _answer(target, raw)
    return seen == "501", seen


def trickling_connections(target: Target, count: int, stop: threading.Event, source: str = "127.0.0.1") -> threading.Thread:
    """``count`` connections sending a request head one byte a second each, until ``stop`` (a thread; reconnects when cut)."""

    def run() -> None:
        socks: list[socket.socket | None] = [None] * count
        raw = _request("GET", "/healthz")
        sent = [0] * count
        while not stop.is_set():
            for i in range(count):
                sock = socks[i]
                try:
                    if sock is None:
                        sock = socket.socket()
                        sock.setblocking(False)
                        sock.bind((source, 0))
                        with contextlib.suppress(BlockingIOError):  # connecting; the next round sends
                            sock.connect(target.address)
                        socks[i], sent[i] = sock, 0
                        continue
                    sock.send(raw[sent[i] % (len(raw) - 4): sent[i] % (len(raw) - 4) + 1])
                    sent[i] += 1
                except OSError:
                    if sock is not None:
                        sock.close()
                    socks[i] = None
            stop.wait(1.0)
        for sock in socks:
            if sock is not None:
                sock.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def trailer_flooder(target: Target, key: str | None, stop: threading.Event, sent: list[int]) -> threading.Thread:
    """A thread: one connection after another, each a chunked POST whose trailer never ends (to ``/healthz``, or
    with ``key`` to the chat endpoint), reconnecting as soon as one is cut; adds the bytes sent to ``sent[0]``."""
    path, auth = ("/v1/chat/completions", f"Authorization: Bearer {key}") if key else ("/healthz", "X-Flood: 1")
    head = _request("POST", path, auth, "Content-Type: application/json", "Transfer-Encoding: chunked") + b"0\r\nX-Pad: "
    block = b"a" * 65536

    def run() -> None:
        while not stop.is_set():
            try:
                with connect(target, 1.0) as sock:
                    sock.sendall(head)
                    while not stop.is_set():
                        sock.sendall(block)
                        sent[0] += len(block)
            except OSError:
                time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def probe_slow_clients(target: Target, count: int = 1000, samples: int = 20) -> Result:
    """``count`` trickling connections must not lock out a normal client (p99 < 1 s)."""
    stop = threading.Event()
    thread = trickling_connections(target, count, stop)
    try:
        time.sleep(3)
        latencies = sorted(chat_latency(target) for _ in range(samples))
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(10)
    worst = latencies[-1]
    return worst < 1.0, f"normal client p99 {worst * 1000:.0f} ms over {samples} requests beside {count} trickling connections"


PROBES: dict[str, Callable[[Target], Result]] = {
    "1 endless chunked trailer (POST /healthz)": probe_endless_trailer,
    "9 trailer fields not merged into headers": probe_trailers_not_merged,
    "9 missing Host → 400": probe_missing_host,
    "9 duplicate Host → 400": probe_duplicate_host,
    "9 Transfer-Encoding: gzip, chunked → 501": probe_transfer_coding,
    "9 malformed chunk size → 400": probe_malformed_chunk_size,
    "5 100 KiB body after a split head: no 431": probe_split_head_with_body,
    "5 10,000 pipelined requests": probe_pipelined,
    "4 head at one byte a second is cut": probe_slow_head,
    "4 body at one byte a second is cut (valid key)": probe_slow_body,
    "4 1,000 trickling connections: normal client p99 < 1 s": probe_slow_clients,
    "docs: WebSocket upgrade → 501": probe_websocket,
}


def run_all(target: Target, only: list[str] | None = None) -> list[tuple[str, bool, str]]:
    """Every probe (or those whose name contains one of ``only``), in order; a probe that raises counts as failed."""
    results = []
    for name, probe in PROBES.items():
        if only and not any(part in name for part in only):
            continue
        try:
            ok, seen = probe(target)
        except Exception as exc:  # a crash of the probe is a finding too; record it and go on
            ok, seen = False, f"probe error: {type(exc).__name__}: {exc}"
        results.append((name, ok, seen))
    return results
