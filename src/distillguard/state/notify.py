"""Change notices between gateway processes through Redis pub/sub, so a decision reaches every replica at once.

The decisions themselves stay in the database (manual overrides, the risk
snapshot: docs/policy.md; keys, accounts and their limits: the registry);
without notices each process finds a change at its next poll (about a
second). With ``state: redis://…`` the process that made a change publishes
one small message on the channel ``dg:policy`` and every other process,
subscribed on a background thread, reloads that part at once. Kinds:
``overrides`` and ``risk`` (the policy engine's), ``keys`` (the key table's:
a key created, with its limits, or revoked; an account created, or its
status or limits changed).
A notice is only a wake-up: a lost one (Redis down, a process reconnecting)
costs the poll interval, never a decision. Nothing here runs on the request
path; the synchronous client is used because the callers are threads.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Protocol

import redis

__all__ = ["CHANNEL", "ChangeNotifier", "RedisNotifier"]

log = logging.getLogger("distillguard.state.notify")
CHANNEL = "dg:policy"


class ChangeNotifier(Protocol):
    """What the policy engine needs: tell the others what changed, hear what they changed."""

    sender: str  # this process's id in the notices (its own are not delivered back to it)

    def publish(self, kind: str) -> None: ...

    def start(self, on_notice: Callable[[str], None]) -> None:
        """Call ``on_notice(kind)`` for each notice another process sends (on a background thread); may be called
        once per listener (the policy engine's, the gateway's key table's)."""

    def close(self) -> None: ...


class RedisNotifier:
    """Publish and receive ``{"kind", "from"}`` notices on :data:`CHANNEL`; a process ignores its own."""

    def __init__(self, url: str, sender: str, *, timeout_s: float = 0.25) -> None:
        self.url = url
        self.sender = sender
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pubsub: redis.client.PubSub | None = None
        self._failing = False
        self._listeners: list[Callable[[str], None]] = []

    def publish(self, kind: str) -> None:
        """Send a notice (blocking, bounded by the timeout); a failure is logged once per outage, not raised."""
        try:
            self._client.publish(CHANNEL, json.dumps({"kind": kind, "from": self.sender}))
        except redis.RedisError as exc:
            if not self._failing:
                self._failing = True
                log.warning("policy notices: cannot publish to Redis (%s); other gateways see changes at their next poll", exc)
            return
        self._failing = False

    def start(self, on_notice: Callable[[str], None]) -> None:
        """Add a listener; the first one starts the subscription's thread (every listener hears every notice)."""
        self._listeners = [*self._listeners, on_notice]  # replaced, not appended to: the thread reads it unlocked
        if self._thread is None:
            self._thread = threading.Thread(target=self._listen, name="distillguard-policy-notices", daemon=True)
            self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                # Its own connection without a read timeout: a quiet channel is no error.
                client = redis.Redis.from_url(self.url, socket_connect_timeout=1.0, health_check_interval=30)
                self._pubsub = pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    self._handle(message["data"])
            except (redis.RedisError, OSError) as exc:
                if self._stop.is_set():
                    return
                log.warning("policy notices: subscription to Redis lost (%s); retrying in 1 s", exc)
                self._stop.wait(1.0)

    def _handle(self, data: bytes) -> None:
        try:
            notice = json.loads(data)
        except ValueError:  # a malformed notice must not end the subscription
            log.exception("policy notices: a notice that is not JSON: %r", data[:100])
            return
        if not isinstance(notice, dict) or notice.get("from") == self.sender:
            return
        for on_notice in self._listeners:
            try:
                on_notice(str(notice.get("kind")))
            except Exception:  # a failing reload must not end the subscription, nor keep the notice from the others
                log.exception("policy notices: handling a notice failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self._client.close()
