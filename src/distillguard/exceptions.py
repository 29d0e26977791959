"""One exception hierarchy for the whole package, so callers can catch by meaning.

The CLI maps :class:`UsageError` (and its subclasses) to exit code 2 with a
one-line message, and any other :class:`DistillguardError` to exit code 1.

Every error distillguard raises on purpose derives from :class:`DistillguardError`.
The general ones live here; a subsystem's own family is defined beside the
code that raises it and rooted here::

    DistillguardError
    ├── UsageError                      exit 2: the user asked for something malformed
    │   ├── ConfigError                 settings file or environment (names file and key)
    │   └── InputError                  an input file (names file, line and field)
    ├── NotFoundError                   a named account, key … does not exist
    ├── EnrollmentError                 a client install's enrollment refused (carries the HTTP status)
    ├── events.EventFormatError         an event breaking the v1 contract (also a ValueError)
    ├── gateway.errors.GatewayError     a refusal the gateway answers itself (status, code, Retry-After)
    ├── gateway.wire.ClientDisconnected the client went away mid-request (the event records 499)
    ├── gateway.upstream_http.UpstreamError   the upstream transport failed
    │   ├── UpstreamUnreachable → UpstreamBusy
    │   ├── UpstreamDisconnected
    │   └── UpstreamBadResponse → UpstreamProtocolError
    ├── state.StateUnavailable          the shared state backend (Redis) did not answer
    ├── state.redis_wire.WireClosed     the Redis connection closed or broke (also a ConnectionError)
    └── demo.fleet.FleetError           a piece of ``make fleet`` could not start (also a RuntimeError)

Private exceptions used only as control flow inside one module (an HTTP
server's rejected request, a signal handler's stop) are not part of it.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DistillguardError",
    "EnrollmentError",
    "InputError",
    "NotFoundError",
    "UsageError",
]


class DistillguardError(Exception):
    """Base class for every error distillguard raises on purpose."""


class UsageError(DistillguardError):
    """The user asked for something malformed: exit code 2."""


class ConfigError(UsageError):
    """The configuration file or environment is invalid; the message names file and key."""


class InputError(UsageError):
    """An input file is unreadable or malformed; the message names file, line and field."""


class NotFoundError(DistillguardError):
    """A named account, key or other object does not exist."""


class EnrollmentError(DistillguardError):
    """A client install's enrollment was refused; ``status`` is the HTTP status the gateway answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
