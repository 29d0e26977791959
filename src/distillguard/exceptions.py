"""One exception hierarchy for the whole package, so callers can catch by meaning.

The CLI maps :class:`UsageError` (and its subclasses) to exit code 2 with a
one-line message, and any other :class:`DistillguardError` to exit code 1.
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
