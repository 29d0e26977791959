"""The gateway's own Python cost per request, in process: two source trees side by side, rounds alternating.

    python bench/gateway_inprocess.py BEFORE_SRC AFTER_SRC [--requests 4000] [--rounds 5]

Each round runs one child process per tree (``PYTHONPATH=<tree>``): the child
builds a real ``Gateway`` with an in-memory upstream (a fake transport that
answers a fixed JSON body or SSE stream), an in-memory event sink and an
always-allow policy, then drives its ASGI entry directly for ``--requests``
authenticated chat requests and reports CPU µs per request
(``time.process_time``). No sockets, no HTTP server, no load generator: what
is left is the code a refactor of ``gateway/`` can make cheaper or dearer
(routing, auth, admission, relay, event building), so a machine shared with
other work disturbs it far less than ``gateway_overhead.py``'s wrk runs. The
children alternate (before, after, before, …) and the table gives medians.

The trees are any two checkouts of ``src/`` (e.g. ``git archive REV src | tar -x -C /tmp/rev``);
a tree whose ``Gateway`` has no ``transport=`` parameter gets the fake set as
its ``client`` after start-up instead.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

BODY = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "Say something about benchmarks."}],
                   "max_tokens": 64}).encode()
ANSWER = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "bench-model",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "benchmarks " * 40}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 8, "completion_tokens": 40, "total_tokens": 48}}).encode()
STREAM = [b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"bench-model","choices":[{"index":0,'
          b'"delta":{"content":"benchmarks "},"finish_reason":null}]}\n\n'] * 40 + [
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"bench-model","choices":[{"index":0,"delta":{},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":8,"completion_tokens":40,"total_tokens":48}}\n\n', b"data: [DONE]\n\n"]


class _Response:
    def __init__(self, stream: bool) -> None:
        self.status = 200
        self.headers = {"content-type": "text/event-stream" if stream else "application/json"}
        self._chunks = list(STREAM) if stream else [ANSWER]

    @property
    def at_eof(self) -> bool:
        return not self._chunks

    async def read(self) -> bytes:
        body = b"".join(self._chunks)
        self._chunks = []
        return body

    async def next_chunk(self) -> bytes | None:
        return self._chunks.pop(0) if self._chunks else None

    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Transport:
    async def request(self, origin: Any, method: bytes, path: bytes, headers: bytes, body: bytes, *,
                      connect_timeout: float | None, read_timeout: float | None) -> _Response:
        return _Response(b'"stream":true' in body)

    async def close(self) -> None:
        return None


class _Sink:
    def __init__(self) -> None:
        self.count = 0

    def submit(self, event: dict[str, Any]) -> None:
        self.count += 1

    @property
    def stats(self) -> None:
        return None

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None


class _AllowPolicy:
    online = False

    def __init__(self) -> None:
        from distillguard.policy.decision import ALLOW

        self.allow = ALLOW

    def decide(self, account_id: str, key_id: str | None, signals: Any = None) -> Any:
        return self.allow

    def observe(self, event: dict[str, Any]) -> None:
        return None

    def risk(self, account_id: str) -> None:
        return None

    def decisions(self) -> dict[str, Any]:
        return {}

    def scorer_status(self) -> None:
        return None

    def reload_overrides(self) -> None:
        return None

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None


async def _drive(requests: int, stream: bool, *, extra_settings: dict[str, Any] | None = None, request_body: bytes = BODY) -> float:
    """CPU µs per request for ``requests`` chat requests through one Gateway's ASGI entry.

    ``extra_settings`` are more configuration keys (e.g. ``canary``: bench/canary_cost.py); with ``canary.enabled`` the
    gateway gets its canary planter, as ``build_gateway`` would give it."""
    from distillguard.config import Settings
    from distillguard.gateway import Gateway
    from distillguard.store.registry import KeyRecord, hash_secret

    # Limits high enough never to refuse, but not off: every request still takes a slot and is admitted and settled.
    settings = Settings(upstreams=[{"name": "up", "base_url": "http://127.0.0.1:9/v1", "models": ["*"]}],
                        limits={"requests_per_min": 10**9, "tokens_per_min": 10**12, "concurrent_requests": 10**6,
                                "daily_tokens": 10**15}, **(extra_settings or {}))
    transport, sink = _Transport(), _Sink()
    kwargs: dict[str, Any] = {"sink": sink, "policy": _AllowPolicy()}
    if extra_settings and extra_settings.get("canary", {}).get("enabled"):
        from distillguard.canary import CanaryPlanter

        kwargs["canaries"] = CanaryPlanter(settings.canary)
    if "transport" in inspect.signature(Gateway.__init__).parameters:
        kwargs["transport"] = transport
    gateway = Gateway(settings, **kwargs)
    gateway.keys.load([KeyRecord("key_b", hash_secret("sk-bench"), "acct_b", None, False, "active")])
    await gateway.startup()
    if "transport" not in kwargs:
        gateway.client = transport  # type: ignore[assignment]  # the tree before the transport seam
    body = request_body.replace(b'"max_tokens"', b'"stream":true,"max_tokens"') if stream else request_body
    headers = [(b"host", b"gateway"), (b"authorization", b"Bearer sk-bench"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    def scope() -> dict[str, Any]:
        return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"", "headers": headers,
                "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080), "extensions": {"distillguard.on_disconnect": lambda cb: lambda: None}}

    for _ in range(200):  # warm-up: first-call imports and caches
        await gateway(scope(), receive, send)
    began = time.process_time()
    for _ in range(requests):
        await gateway(scope(), receive, send)
    spent = time.process_time() - began
    await gateway.shutdown()
    assert sink.count == requests + 200, f"{sink.count} events for {requests + 200} requests"
    assert statuses == [200] * (requests + 200), f"not every request was answered 200: {sorted(set(statuses))}"
    return spent / requests * 1e6


def _child(requests: int) -> None:
    result = {"json": asyncio.run(_drive(requests, stream=False)), "sse": asyncio.run(_drive(requests, stream=True))}
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", nargs="?")
    parser.add_argument("after", nargs="?")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.requests)
        return
    if not (args.before and args.after):
        parser.error("give two source trees: BEFORE_SRC AFTER_SRC")
    results: dict[str, dict[str, list[float]]] = {"before": {"json": [], "sse": []}, "after": {"json": [], "sse": []}}
    for _ in range(args.rounds):
        for name, tree in (("before", args.before), ("after", args.after)):
            out = subprocess.run([sys.executable, __file__, "--child", "--requests", str(args.requests)], check=True,
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": tree}).stdout
            for kind, value in json.loads(out.strip().splitlines()[-1]).items():
                results[name][kind].append(value)
    print(f"Gateway CPU per request in process ({args.requests} requests × {args.rounds} alternating rounds; "
          f"load average {os.getloadavg()[0]:.1f} at the end)\n")
    print("| request | before (µs CPU) | after (µs CPU) | after / before | rounds before | rounds after |")
    print("|---|---:|---:|---:|---|---|")
    for kind in ("json", "sse"):
        before, after = statistics.median(results["before"][kind]), statistics.median(results["after"][kind])
        print(f"| {kind} | {before:.1f} | {after:.1f} | {after / before:.3f} | "
              f"{', '.join(f'{v:.0f}' for v in results['before'][kind])} | {', '.join(f'{v:.0f}' for v in results['after'][kind])} |")


if __name__ == "__main__":
    main()
