"""API-shaped errors in the caller's own protocol (DESIGN §7).

A client written for OpenAI expects ``{"error": {"message", "type", "code"}}``;
one written for Anthropic expects ``{"type": "error", "error": {"type", "message"}}``.
Both SDKs turn these into typed exceptions, so getting the shape right is what
makes a refusal readable to the user.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from distillguard.exceptions import DistillguardError

__all__ = [
    "MASK",
    "GatewayError",
    "error_body",
    "error_type",
    "json_object",
    "mask_secrets",
    "upstream_error_body",
    "upstream_error_excerpt",
]

EXCERPT_CHARS = 200
_TAG = re.compile(r"<[^>]*>")
MASK = b"[masked]"
# Common credential shapes an upstream (or a proxy in front of it) may echo in an error body. Only error
# bodies are searched, never answers, so the hot path pays nothing for it.
_SECRET_SHAPES = re.compile(  # group 1: a prefix that stays (so JSON quoting is untouched); the rest is masked
    rb"()sk-ant-[A-Za-z0-9_\-]{8,}"                            # Anthropic keys
    rb"|()sk-[A-Za-z0-9_\-]{8,}"                               # OpenAI keys (sk-proj-…, sk-svcacct-…), and ours (sk-dg-…)
    rb"|((?i:bearer)\s+)[A-Za-z0-9._~+/\-]{8,}=*"              # any bearer token
    rb"|()(?:AKIA|ASIA)[0-9A-Z]{16}"                           # AWS access key ids
    rb"|((?i:aws_secret_access_key)[\"':= ]{1,4})[A-Za-z0-9/+=]{40}"  # AWS secret keys, when named
    rb"|()AIza[0-9A-Za-z_\-]{35}"                              # Google API keys
    rb"|()gh[pousr]_[A-Za-z0-9]{36,}"                          # GitHub tokens
)


def _keep_prefix(match: re.Match[bytes]) -> bytes:
    return next((g for g in match.groups() if g is not None), b"") + MASK

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
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
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
}


class GatewayError(DistillguardError):
    """A refusal or failure the gateway answers itself, with a status and a reason a user can act on.

    A plain class rather than a dataclass: mypyc compiles this module, and a compiled exception cannot be one.
    """

    def __init__(self, status: int, message: str, code: str, retry_after: float | None = None,
                 detail: str | None = None) -> None:
        super().__init__()
        self.status = status
        self.message = message
        self.code = code
        self.retry_after = retry_after
        self.detail = detail  # what the event records beyond the code (e.g. which upstream field broke)

    def __repr__(self) -> str:
        return (f"GatewayError(status={self.status!r}, message={self.message!r}, code={self.code!r}, "
                f"retry_after={self.retry_after!r}, detail={self.detail!r})")

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    @property
    def event_error(self) -> str:
        """The event's ``response.error``: the code, and the detail when there is one."""
        return self.code if self.detail is None else f"{self.code}: {self.detail}"


def error_type(protocol: str, status: int) -> str:
    """The protocol's error ``type`` for ``status``.

    A status missing from the tables still gets the right *class* of type: a
    4xx is the caller's mistake (``invalid_request_error``), never a server
    error, so SDKs and users do not retry or report a bug for it.
    """
    table = _ANTHROPIC_TYPES if protocol == "anthropic" else _OPENAI_TYPES
    known = table.get(status)
    if known is not None:
        return known
    if 400 <= status < 500:
        return "invalid_request_error"
    return "api_error" if protocol == "anthropic" else "server_error"


def error_body(protocol: str, status: int, message: str, code: str) -> bytes:
    if protocol == "anthropic":
        return orjson.dumps({"type": "error", "error": {"type": error_type(protocol, status), "message": message}})
    return orjson.dumps(
        {"error": {"message": message, "type": error_type(protocol, status), "param": None, "code": code}}
    )


def json_object(raw: bytes) -> dict[str, Any] | None:
    """``raw`` parsed when it is a JSON object, else None (HTML, plain text, a bare JSON value)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def mask_secrets(raw: bytes, known: tuple[bytes, ...] = ()) -> bytes:
    """``raw`` with credentials replaced by ``[masked]``: the ``known`` ones (the upstream's configured key) and common key shapes.

    An upstream that echoes the request's ``Authorization`` header in its
    error, or a proxy that prints its configuration, must not hand the
    operator's upstream key to a caller. JSON stays JSON: the mask has no
    quote or backslash, and a known key is also replaced in its JSON-escaped form.
    """
    for secret in known:
        if secret and secret in raw:
            raw = raw.replace(secret, MASK)
        escaped = secret.replace(b"/", b"\\/")
        if escaped != secret and escaped in raw:
            raw = raw.replace(escaped, MASK)
    return _SECRET_SHAPES.sub(_keep_prefix, raw)


def upstream_error_excerpt(raw: bytes, limit: int = EXCERPT_CHARS) -> str:
    """What an upstream error body says, in one short line a user can read.

    The upstream's own ``error.message`` when the body is an API error object;
    otherwise the start of the body with HTML tags and runs of whitespace
    removed, so a proxy's "502 Bad Gateway" page reads as exactly that. Only
    the first 4 KiB are looked at: an error page can be large.
    """
    parsed = json_object(raw)
    error = parsed.get("error") if parsed is not None else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message.strip():
        text = message
    elif parsed is not None:
        text = raw[:4096].decode("utf-8", "replace")
    else:
        text = _TAG.sub(" ", raw[:4096].decode("utf-8", "replace"))
    text = " ".join(text.split())
    if not text:
        return "(empty body)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def upstream_error_body(protocol: str, status: int, raw: bytes) -> bytes:
    """An upstream's error answer re-wrapped in the caller's error shape, keeping the upstream's status."""
    return error_body(protocol, status, f"Upstream error (HTTP {status}): {upstream_error_excerpt(raw)}", "upstream_error")
