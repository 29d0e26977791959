"""The admin API under ``/admin/v1/`` (Bearer admin token): accounts, keys, events, status.

Registry calls are synchronous database work, so they run in a thread; they
are operator actions, never on the proxied hot path. Components that own their
own admin endpoints (policy, watermark) are offered each request in turn
through ``handle_admin`` (see docs/architecture.md, "admin plugins").

Every body is read up to :data:`MAX_ADMIN_BODY` (:data:`MAX_WATERMARK_BODY` for a
watermark test, which carries a whole harvest, :data:`MAX_BULK_BODY` for a bulk
account creation; 413 past it) and validated by
a pydantic model (``extra="forbid"``); a ``pydantic.ValidationError`` raised
here or by a plugin becomes a 422 in the API's error shape naming the field.
Whatever else goes wrong answers a JSON 500, never a bare server error page.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import itertools
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from distillguard.config import DEFAULT_ADMIN_TOKEN, MAX_LIMIT, Settings, parse_listen
from distillguard.events import format_ts, parse_ts
from distillguard.exceptions import ConfigError, NotFoundError, UsageError
from distillguard.gateway.errors import error_body
from distillguard.gateway.types import (
    AdminPluginProtocol,
    EventSinkProtocol,
    KeyRegistryProtocol,
    PolicyEngineProtocol,
    Receive,
    Scope,
    Send,
)
from distillguard.store.registry import NewAccount

__all__ = [
    "MAX_ADMIN_BODY",
    "MAX_BULK_ACCOUNTS",
    "MAX_BULK_BODY",
    "MAX_WATERMARK_BODY",
    "AccountCreate",
    "AccountStatus",
    "AdminAPI",
    "AdminContext",
    "BulkAccount",
    "BulkAccounts",
    "KeyCreate",
    "Limits",
    "check_admin_exposure",
    "describe_validation_error",
    "parse_since",
]

log = logging.getLogger("distillguard.gateway.admin")
JSON = [(b"content-type", b"application/json")]
MAX_ADMIN_BODY = 64 * 1024  # every admin body but a watermark test is a few fields
MAX_WATERMARK_BODY = 4 * 1024 * 1024  # a harvest to test for provenance: many responses joined, a few MiB at most
MAX_BULK_ACCOUNTS = 10_000  # per bulk request: about a second of database work, a few MB of answer
MAX_BULK_BODY = 8 * 1024 * 1024  # 10,000 accounts with every field at its longest
_WATERMARK_PATH = "/admin/v1/watermark/detect"
_BULK_PATH = "/admin/v1/accounts/bulk"
_BODY_LIMITS = {_WATERMARK_PATH: MAX_WATERMARK_BODY, _BULK_PATH: MAX_BULK_BODY}
_LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


class _Body(BaseModel):
    # strict: "5" is not a limit of 5, and true is not 1; the caller learns what it sent wrong
    model_config = ConfigDict(extra="forbid", strict=True)


class Limits(_Body):
    """Per-account or per-key limits; a key that is left out is not changed, ``null`` means unlimited."""

    requests_per_min: int | None = Field(default=None, ge=0, le=MAX_LIMIT)
    tokens_per_min: int | None = Field(default=None, ge=0, le=MAX_LIMIT)
    concurrent_requests: int | None = Field(default=None, ge=0, le=MAX_LIMIT)
    daily_tokens: int | None = Field(default=None, ge=0, le=MAX_LIMIT)


class AccountCreate(_Body):
    name: str = Field(min_length=1, max_length=200, pattern=r"\S")
    org: str | None = Field(default=None, max_length=200)
    limits: Limits | None = None


class KeyCreate(_Body):
    limits: Limits | None = None


class BulkAccount(AccountCreate):
    """One account of ``POST /admin/v1/accounts/bulk`` (and a line of ``accounts import``): ``key`` true, or its limits, issues a key."""

    key: bool | KeyCreate = False
    external_id: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
                                    description="your own id for the account (printable ASCII, no spaces): a batch sent again "
                                                "answers status 'exists' for it instead of creating it twice")

    def new_account(self) -> NewAccount:
        key_limits = self.key.limits if isinstance(self.key, KeyCreate) else None
        return NewAccount(self.name, self.org, self.limits.model_dump(exclude_unset=True) if self.limits else None,
                          key=self.key is not False, key_limits=key_limits.model_dump(exclude_unset=True) if key_limits else None,
                          external_id=self.external_id)


class BulkAccounts(_Body):
    accounts: list[BulkAccount] = Field(min_length=1, max_length=MAX_BULK_ACCOUNTS)


class AccountStatus(_Body):
    status: Literal["active", "suspended"]
    reason: str | None = Field(default=None, max_length=2000)


def describe_validation_error(exc: ValidationError) -> str:
    """``field.path: problem`` for each error, in one line (the body is the caller's, so no input is echoed)."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_admin_exposure(settings: Settings) -> str | None:
    """Refuse an admin token anyone could guess; returns a warning for the default token on loopback.

    Raises :class:`ConfigError` (exit 2) for an empty token anywhere, and for
    the default ``change-me`` where the admin API listens on a non-loopback
    address: either lets a stranger mint API keys.
    """
    admin_listen = settings.admin_listen or settings.listen
    host = parse_listen(admin_listen)[0]
    key = "admin_listen" if settings.admin_listen else "listen"
    if not settings.admin_token.strip():
        raise ConfigError("admin_token: empty; an empty token would let any caller use the admin API. "
                          "Set a long random one (e.g. DG_ADMIN_TOKEN=$(openssl rand -hex 32))")
    if settings.admin_token == DEFAULT_ADMIN_TOKEN:
        if not _is_loopback(host):
            raise ConfigError(f"admin_token: still the default {DEFAULT_ADMIN_TOKEN!r} while the admin API listens on "
                              f"{admin_listen} ({key}), which is not a loopback address; set a long random token "
                              "(e.g. DG_ADMIN_TOKEN=$(openssl rand -hex 32)) or serve the admin API on 127.0.0.1 (admin_listen)")
        return (f"admin_token is the default {DEFAULT_ADMIN_TOKEN!r}: anyone on this machine can use the admin API "
                f"on {admin_listen}; set a long random token before exposing it")
    return None
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


@dataclass(frozen=True, slots=True)
class AdminContext:
    """What the admin API (and, through it, the console) may use of the gateway: not the whole ``Gateway``.

    The gateway builds one at start; ``keys_loaded`` and ``refresh_keys`` are its
    own key table's, so an admin change is live on this replica at once
    (``refresh_keys`` applies only the keys the change touched, then, with
    ``state: redis``, tells the other replicas to do the same: state/notify.py).
    """

    settings: Settings
    registry: KeyRegistryProtocol | None
    sink: EventSinkProtocol | None
    policy: PolicyEngineProtocol | None
    plugins: Sequence[AdminPluginProtocol]
    upstream_names: Sequence[str]
    has_signals: bool
    has_watermark: bool
    keys_loaded: Callable[[], int]
    refresh_keys: Callable[[], Awaitable[None]]


class AdminAPI:
    def __init__(self, context: AdminContext) -> None:
        self.context = context
        self.token = context.settings.admin_token.encode()

    async def _send(self, send: Send, status: int, obj: Any, headers: list[tuple[bytes, bytes]] = JSON) -> None:
        body = obj if isinstance(obj, bytes) else orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _error(self, send: Send, status: int, message: str, code: str, headers: list[tuple[bytes, bytes]] = JSON) -> None:
        log.warning("admin → %d %s", status, message)
        await self._send(send, status, error_body("openai", status, message, code), headers)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        auth = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        # Constant-time comparison; an empty configured token never matches (serve refuses to start with one).
        if scheme.lower() != b"bearer" or not self.token or not hmac.compare_digest(token.strip(), self.token):
            await self._error(send, 401, "Admin endpoints need 'Authorization: Bearer <admin token>'.", "invalid_admin_token")
            return
        limit = _BODY_LIMITS.get(scope["path"].rstrip("/"), MAX_ADMIN_BODY)
        body = await self._read_body(scope, receive, limit)
        if body is None:
            await self._error(send, 413, f"This admin request body is limited to {limit} bytes.", "body_too_large")
            return
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
            result = await self.call(method, path, query, body)
            if result is None:
                from distillguard.gateway.openapi import (
                    allowed_methods,  # imports this module: not at load time
                )

                allowed = allowed_methods(path)
                if allowed and method not in allowed:
                    await self._error(send, 405, f"{method} {path} is not supported; use {', '.join(allowed)}.", "method_not_allowed",
                                      [*JSON, (b"allow", ", ".join(allowed).encode())])
                elif path.endswith("/risk") or path == "/admin/v1/flagged":
                    await self._error(send, 503, "Online detection is not enabled on this gateway.", "detection_disabled")
                else:
                    await self._error(send, 404, f"No admin route for {method} {path}.", "unknown_route")
                return
            status, obj = result
            await self._send(send, status, obj)
        except NotFoundError as exc:
            await self._error(send, 404, str(exc), "not_found")
        except ValidationError as exc:
            await self._error(send, 422, f"Invalid admin request: {describe_validation_error(exc)}", "invalid_request")
        except (UsageError, ValueError) as exc:
            await self._error(send, 422, f"Invalid admin request: {exc}", "invalid_request")
        except SQLAlchemyError as exc:  # down, or past its deadline (store/engine.py): the admin may retry
            log.error("admin %s %s: the store failed: %s", method, path, exc)
            await self._error(send, 503, f"The store failed ({type(exc).__name__}); retry.", "store_unavailable")
        except Exception:  # a bug, or a store failure: still a JSON answer the admin tooling can read
            log.exception("admin %s %s failed", method, path)
            await self._error(send, 500, "The admin request failed inside the gateway; see its log.", "internal_error")

    @staticmethod
    async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
        """The request body, or ``None`` when it is larger than ``limit``."""
        for name, value in scope["headers"]:
            if name == b"content-length" and value.strip().isdigit() and int(value) > limit:
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body") or message["type"] == "http.disconnect":
                return b"".join(chunks)

    async def call(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any] | None:
        """An admin request already authenticated, as ``(status, object)``; ``None`` when no route takes it.

        The console's actions come through here too, so they are the admin API's
        actions: same checks, same audit records, same answers.
        """
        result = await self._dispatch(method, path, query, body)
        if result is None:
            for plugin in self.context.plugins:
                result = await plugin.handle_admin(method, path, query, body)
                if result is not None:
                    break
        return result

    async def _dispatch(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any] | None:
        ctx = self.context
        registry = ctx.registry
        parts = path.split("/")[3:]  # after /admin/v1
        if parts == ["status"] and method == "GET":
            return 200, {
                "keys_loaded": ctx.keys_loaded(),
                "events": ctx.sink.stats if ctx.sink is not None else None,
                "upstreams": list(ctx.upstream_names),
                "components": {
                    "signals": ctx.has_signals,
                    "policy": ctx.policy is not None,
                    "online_detection": ctx.policy is not None and ctx.policy.online,
                    "watermark": ctx.has_watermark,
                },
            }
        if registry is None:
            return None
        if parts == ["accounts"]:
            if method == "GET":
                return 200, {"data": await asyncio.to_thread(registry.list_accounts)}
            if method == "POST":
                new = AccountCreate.model_validate_json(body or b"{}")
                limits = new.limits.model_dump(exclude_unset=True) if new.limits else None
                account = await asyncio.to_thread(lambda: registry.create_account(new.name, new.org, limits, actor="admin"))
                await ctx.refresh_keys()
                return 201, account
        if parts == ["accounts", "bulk"] and method == "POST":
            batch = BulkAccounts.model_validate_json(body or b"{}")
            items = [a.new_account() for a in batch.accounts]
            created = await asyncio.to_thread(lambda: registry.create_accounts(items, actor="admin"))
            await ctx.refresh_keys()  # the new keys only, however many the table holds
            fresh = [c for c in created if c["status"] == "created"]
            return 201, {"data": created, "created": {"accounts": len(fresh), "keys": sum(1 for c in fresh if c["key_id"])},
                         "existing": len(created) - len(fresh)}
        if len(parts) == 2 and parts[0] == "accounts" and method == "GET":
            found = await asyncio.to_thread(registry.get_account, parts[1])
            if found is None:
                raise NotFoundError(f"account {parts[1]!r} does not exist")
            found["keys"] = await asyncio.to_thread(registry.list_keys, parts[1])
            # What the gateway does with its requests now (manual override, then risk): "status" alone says active when blocked.
            decision = ctx.policy.decisions().get(parts[1]) if ctx.policy is not None else None
            found["policy"] = {"action": decision.action if decision is not None else "allow",
                               "rule": decision.rule if decision is not None else None}
            return 200, found
        if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "keys" and method == "POST":
            key_limits = KeyCreate.model_validate_json(body or b"{}").limits
            key_limit_values = key_limits.model_dump(exclude_unset=True) if key_limits else None
            key = await asyncio.to_thread(lambda: registry.create_key(parts[1], key_limit_values, actor="admin"))
            await ctx.refresh_keys()
            return 201, key
        if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "limits" and method in ("PUT", "POST"):
            limits = Limits.model_validate_json(body or b"{}").model_dump(exclude_unset=True)
            await asyncio.to_thread(lambda: registry.set_account_limits(parts[1], limits, actor="admin"))
            await ctx.refresh_keys()
            return 200, {"account_id": parts[1], "limits": limits}
        if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "status" and method in ("PUT", "POST"):
            change = AccountStatus.model_validate_json(body or b"{}")
            await asyncio.to_thread(lambda: registry.set_account_status(parts[1], change.status, actor="admin", reason=change.reason))
            await ctx.refresh_keys()
            return 200, {"account_id": parts[1], "status": change.status}
        if parts == ["keys"] and method == "GET":
            return 200, {"data": await asyncio.to_thread(registry.list_keys, query.get("account_id"))}
        if (len(parts) == 3 and parts[0] == "keys" and parts[2] == "revoke" and method == "POST") or (
            len(parts) == 2 and parts[0] == "keys" and method == "DELETE"
        ):
            result = await asyncio.to_thread(lambda: registry.revoke_key(parts[1], actor="admin"))
            await ctx.refresh_keys()
            return 200, result
        return None

    async def _stream_events(self, send: Send, since: str | None) -> None:
        from distillguard.store.export import iter_event_lines

        settings = self.context.settings
        lines = iter_event_lines(settings.database, since, timeout_s=settings.database_timeout_s)
        # The first batch is read before the 200 is sent: a store that fails (or hangs past its deadline)
        # gets an API-shaped 503 instead of a 200 that breaks off.
        try:
            batch = await asyncio.to_thread(lambda: list(itertools.islice(lines, 2000)))
        except SQLAlchemyError as exc:
            log.error("event export failed: %s", exc)
            await self._error(send, 503, f"The event store failed ({type(exc).__name__}); retry.", "store_unavailable")
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-ndjson")]})
        while batch:
            await send({"type": "http.response.body", "body": b"\n".join(batch) + b"\n", "more_body": True})
            batch = await asyncio.to_thread(lambda: list(itertools.islice(lines, 2000)))
        await send({"type": "http.response.body", "body": b"", "more_body": False})
