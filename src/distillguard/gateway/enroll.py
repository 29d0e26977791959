"""``POST /v1/distillguard/enroll``: a client install registers its attestation key under an API key.

Kept apart from the model endpoints because it is not one: no limits, no
event (its refusals are summarised in the log only, ``LOGGED_ONLY``), and the
work is the signal collector's (a registry write, run in a thread). Without
a signal collector the endpoint answers 404 ``attestation_disabled``.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from distillguard.exceptions import EnrollmentError
from distillguard.gateway.auth import KeyTable
from distillguard.gateway.errors import GatewayError, error_body
from distillguard.gateway.refusals import RefusalWindows, source_of
from distillguard.gateway.types import Receive, Scope, Send, SignalCollectorProtocol
from distillguard.gateway.wire import ClientDisconnected, read_body, respond
from distillguard.store.registry import KeyRecord

__all__ = ["Enrollment"]

log = logging.getLogger("distillguard.gateway")


class Enrollment:
    """Answers the enrollment endpoint; see the module docstring."""

    def __init__(self, keys: KeyTable, signals: SignalCollectorProtocol | None, refusals: RefusalWindows, max_body: int) -> None:
        self.keys = keys
        self.signals = signals
        self.refusals = refusals
        self.max_body = max_body

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        key: KeyRecord | None = None
        try:
            key = self.keys.authenticate_request(scope["headers"])
            body = await read_body(scope, receive, self.max_body)
            if self.signals is None:
                raise GatewayError(404, "Client attestation is not enabled on this gateway.", "attestation_disabled")
            try:
                result = await asyncio.to_thread(self.signals.enroll, key.key_id, key.account_id, body, api_key_sha256=key.secret_hash)
            except EnrollmentError as exc:
                raise GatewayError(exc.status, exc.message, "enrollment_failed") from None
            await respond(send, 200, orjson.dumps(result))
        except GatewayError as exc:
            client = scope.get("client")
            who = key.key_id if key is not None else source_of(client[0] if client else None)
            if self.refusals.note(who, "distillguard.enroll", exc.status, exc.code, authenticated=key is not None):
                log.warning("enroll → %d %s", exc.status, exc.message)
            await respond(send, exc.status, error_body("openai", exc.status, exc.message, exc.code))
        except ClientDisconnected:
            return
