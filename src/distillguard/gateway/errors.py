"""API-shaped errors in the caller's own protocol (DESIGN §7).

A client written for OpenAI expects ``{"error": {"message", "type", "code"}}``;
one written for Anthropic expects ``{"type": "error", "error": {"type", "message"}}``.
Both SDKs turn these into typed exceptions, so getting the shape right is what
makes a refusal readable to the user.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

__all__ = ["GatewayError", "error_body"]

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
}


@dataclass
class GatewayError(Exception):
    """A refusal or failure the gateway answers itself, with a status and a reason a user can act on."""

    status: int
    message: str
    code: str
    retry_after: float | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def error_body(protocol: str, status: int, message: str, code: str) -> bytes:
    if protocol == "anthropic":
        return orjson.dumps(
            {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
        )
    return orjson.dumps(
        {"error": {"message": message, "type": _OPENAI_TYPES.get(status, "server_error"), "param": None, "code": code}}
    )
