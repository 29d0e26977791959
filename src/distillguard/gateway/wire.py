"""The ASGI moves every gateway endpoint makes: read a header, read a bounded request body, send a whole answer.

Shared by the model endpoints, enrollment and the side endpoints, so the body
limit (a 413 naming it) and the one-call answer are written once.
"""

from __future__ import annotations

from distillguard.exceptions import DistillguardError
from distillguard.gateway.errors import GatewayError
from distillguard.gateway.types import Receive, Scope, Send

__all__ = ["JSON_HEADERS", "SSE_HEADERS", "ClientDisconnected", "header", "read_body", "respond"]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


class ClientDisconnected(DistillguardError):
    """The client went away before the request was read or the response was complete (the event records 499)."""


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case, as ASGI gives them), or ``None``."""
    for key, value in headers:
        if key == name:
            return value
    return None


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = JSON_HEADERS) -> None:
    """A complete answer: status line and headers, then the whole body."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(scope: Scope, receive: Receive, max_body: int) -> bytes:
    """The request body; a 413 :class:`GatewayError` past ``max_body`` bytes, :class:`ClientDisconnected` if the client left."""
    declared = header(scope["headers"], b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise GatewayError(413, f"Request body of {int(declared)} bytes exceeds the limit of {max_body} bytes.", "body_too_large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > max_body:
                raise GatewayError(413, f"Request body exceeds the limit of {max_body} bytes.", "body_too_large")
            chunks.append(chunk)
        if not message.get("more_body"):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
