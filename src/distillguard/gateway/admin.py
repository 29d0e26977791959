"""The admin API under ``/admin/v1/`` (Bearer admin token): accounts, keys, events, status.

Registry calls are synchronous database work, so they run in a thread; they
are operator actions, never on the proxied hot path. Components that own their
own admin endpoints (policy, signals, watermark) are offered each request in
turn through ``handle_admin`` (see docs/architecture.md, "admin plugins").
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson

from distillguard.events import format_ts, parse_ts
from distillguard.exceptions import NotFoundError, UsageError
from distillguard.gateway.errors import error_body

if TYPE_CHECKING:
    from distillguard.gateway.app import Gateway, Receive, Scope, Send

__all__ = ["AdminAPI", "parse_since"]

log = logging.getLogger("distillguard.gateway.admin")
JSON = [(b"content-type", b"application/json")]
# "...T10:00:00 02:00": an unencoded "+" in a query string arrives as a space.
_SPACE_FOR_PLUS = re.compile(r"^(.*\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})$")


def parse_since(since: str) -> str:
    """``since`` as a stored ``ts`` string (UTC, milliseconds, ``Z``), so that text order is time order.

    Events are compared as strings in the store, so ``10:00:00+02:00`` must
    become ``08:00:00.000Z`` first. A ``+`` sent unencoded in the URL arrives
    as a space and is put back. Raises ``ValueError`` with a message for the
    caller when ``since`` is not an ISO-8601 timestamp.
    """
    text = _SPACE_FOR_PLUS.sub(r"\1+\2", since.strip())
    try:
        return format_ts(parse_ts(text))
    except (ValueError, OverflowError, OSError):
        raise ValueError(
            f"since: not an ISO-8601 timestamp: {since!r}; use e.g. 2026-11-20T10:00:00Z or 2026-11-20T10:00:00+02:00 "
            "(write '+' as %2B in a URL)"
        ) from None


class AdminAPI:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.token = gateway.settings.admin_token.encode()

    async def _send(self, send: Send, status: int, obj: Any) -> None:
        body = obj if isinstance(obj, bytes) else orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS)
        await send({"type": "http.response.start", "status": status, "headers": JSON})
        await send({"type": "http.response.body", "body": body})

    async def _error(self, send: Send, status: int, message: str, code: str) -> None:
        log.warning("admin → %d %s", status, message)
        await self._send(send, status, error_body("openai", status, message, code))

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        auth = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.token):
            await self._error(send, 401, "Admin endpoints need 'Authorization: Bearer <admin token>'.", "invalid_admin_token")
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method: str = scope["method"]
        path: str = scope["path"].rstrip("/")
        query = dict(parse_qsl(scope.get("query_string", b"").decode()))
        try:
            if path == "/admin/v1/events" and method == "GET":
                since = query.get("since")
                try:
                    since = parse_since(since) if since else None
                except ValueError as exc:  # checked before the 200 stream starts: afterwards no error can be sent
                    await self._error(send, 400, str(exc), "invalid_since")
                    return
                await self._stream_events(send, since)
                return
            result = await self._dispatch(method, path, query, body)
            if result is None:
                for plugin in self.gateway.admin_plugins:
                    result = await plugin.handle_admin(method, path, query, body)
                    if result is not None:
                        break
            if result is None:
                if path.endswith("/risk") or path == "/admin/v1/flagged":
                    await self._error(send, 503, "Online detection is not enabled on this gateway.", "detection_disabled")
                else:
                    await self._error(send, 404, f"No admin route for {method} {path}.", "unknown_route")
                return
            status, obj = result
            await self._send(send, status, obj)
        except NotFoundError as exc:
            await self._error(send, 404, str(exc), "not_found")
        except (UsageError, ValueError, KeyError, TypeError) as exc:
            await self._error(send, 422, f"Invalid admin request: {exc}", "invalid_request")

    async def _dispatch(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any] | None:
        gateway = self.gateway
        registry = gateway.registry
        parts = path.split("/")[3:]  # after /admin/v1
        if parts == ["status"] and method == "GET":
            return 200, {
                "keys_loaded": len(gateway.keys),
                "events": getattr(gateway.sink, "stats", None),
                "upstreams": [u.name for u in gateway.router.upstreams],
                "components": {
                    "signals": gateway.signals is not None,
                    "policy": gateway.policy is not None,
                    "online_detection": gateway.policy is not None and bool(getattr(gateway.policy, "online", False)),
                    "watermark": gateway.watermarker is not None,
                },
            }
        if registry is None:
            return None
        if parts == ["accounts"]:
            if method == "GET":
                return 200, {"data": await asyncio.to_thread(registry.list_accounts)}
            if method == "POST":
                data = orjson.loads(body or b"{}")
                account = await asyncio.to_thread(lambda: registry.create_account(data["name"], data.get("org"), data.get("limits"), actor="admin"))
                await gateway.reload_keys()
                return 201, account
        if len(parts) == 2 and parts[0] == "accounts" and method == "GET":
            account = await asyncio.to_thread(registry.get_account, parts[1])
            if account is None:
                raise NotFoundError(f"account {parts[1]!r} does not exist")
            account["keys"] = await asyncio.to_thread(registry.list_keys, parts[1])
            return 200, account
        if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "keys" and method == "POST":
            data = orjson.loads(body or b"{}")
            key = await asyncio.to_thread(lambda: registry.create_key(parts[1], data.get("limits"), actor="admin"))
            await gateway.reload_keys()
            return 201, key
        if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "limits" and method in ("PUT", "POST"):
            await asyncio.to_thread(lambda: registry.set_account_limits(parts[1], orjson.loads(body or b"{}"), actor="admin"))
            await gateway.reload_keys()
            return 200, {"account_id": parts[1], "limits": orjson.loads(body or b"{}")}
        if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "status" and method in ("PUT", "POST"):
            data = orjson.loads(body or b"{}")
            await asyncio.to_thread(lambda: registry.set_account_status(parts[1], str(data.get("status")), actor="admin", reason=data.get("reason")))
            await gateway.reload_keys()
            return 200, {"account_id": parts[1], "status": data.get("status")}
        if parts == ["keys"] and method == "GET":
            return 200, {"data": await asyncio.to_thread(registry.list_keys, query.get("account_id"))}
        if (len(parts) == 3 and parts[0] == "keys" and parts[2] == "revoke" and method == "POST") or (
            len(parts) == 2 and parts[0] == "keys" and method == "DELETE"
        ):
            result = await asyncio.to_thread(lambda: registry.revoke_key(parts[1], actor="admin"))
            await gateway.reload_keys()
            return 200, result
        return None

    async def _stream_events(self, send: Send, since: str | None) -> None:
        from distillguard.store.export import iter_event_lines

        lines = iter_event_lines(self.gateway.settings.database, since)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-ndjson")]})
        while True:
            batch = await asyncio.to_thread(lambda: list(itertools.islice(lines, 2000)))
            if not batch:
                break
            await send({"type": "http.response.body", "body": b"\n".join(batch) + b"\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
