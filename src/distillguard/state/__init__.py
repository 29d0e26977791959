"""Where the gateway's decisions about limits and nonces are kept: this process, or Redis for a fleet.

``state: memory`` (the default) keeps everything in the gateway process, with
no dependency; ``state: redis://host:port/db`` shares it between replicas
(docs/deploy.md). Both enforce the same exact limits (docs/gateway.md).
"""

from distillguard.state.memory import MemoryAdmission, MemoryState, NonceCache
from distillguard.state.types import (
    DAY_MS,
    WINDOW_MS,
    Admission,
    Quota,
    Refusal,
    StateBackend,
    StateUnavailable,
    retry_after_s,
)

__all__ = [
    "DAY_MS",
    "WINDOW_MS",
    "Admission",
    "MemoryAdmission",
    "MemoryState",
    "NonceCache",
    "Quota",
    "Refusal",
    "StateBackend",
    "StateUnavailable",
    "open_state",
    "retry_after_s",
]


def open_state(url: str, failure: str = "fail_open", timeout_s: float = 0.25, headroom_ms: int = 500) -> StateBackend:
    """The backend ``state`` names: ``memory``, or ``redis://…`` / ``rediss://…`` / ``unix://…`` (wrapped for ``failure``).

    ``headroom_ms`` (``state_headroom_ms``): how long a replica may admit from headroom it reserved (0: never).
    """
    if url == "memory":
        return MemoryState()
    from distillguard.state.redis_state import (
        RedisState,  # imports the Redis client: only a fleet pays for it
    )
    from distillguard.state.resilient import ResilientState

    return ResilientState(RedisState(url, timeout_s=timeout_s, headroom_ms=headroom_ms), "fail_closed" if failure == "fail_closed" else "fail_open")
