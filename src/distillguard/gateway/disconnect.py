"""Noticing that the client went away, so the upstream request is cancelled and the model stops generating.

Under distillguard's own server a callback registered through the
``distillguard.on_disconnect`` scope extension costs nothing per chunk; under
any other ASGI server a task waits for ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from distillguard.gateway.types import Receive, Scope

__all__ = ["DisconnectWatcher"]


class DisconnectWatcher:
    """Cancels ``task`` when the client disconnects.

    Under distillguard's own server, a callback registered through the
    ``distillguard.on_disconnect`` scope extension; under any other ASGI
    server, a task waiting for ``http.disconnect``.
    """

    __slots__ = ("fired", "_task", "_watch", "_unregister")

    def __init__(self, scope: Scope, receive: Receive, task: asyncio.Task[Any]) -> None:
        self.fired = False
        self._task = task
        self._watch: asyncio.Task[None] | None = None
        self._unregister: Callable[[], None] | None = None
        register = (scope.get("extensions") or {}).get("distillguard.on_disconnect")
        if register is not None:
            self._unregister = register(self._fire)
        else:
            self._watch = asyncio.get_running_loop().create_task(self._run(receive))

    def _fire(self) -> None:
        self.fired = True
        self._task.cancel()

    async def _run(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._fire()
                return

    def stop(self) -> None:
        if self._unregister is not None:
            self._unregister()
        elif self._watch is not None and not self._watch.done():
            self._watch.cancel()
