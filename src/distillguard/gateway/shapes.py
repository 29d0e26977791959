"""Type checks for what an upstream answers: every field the gateway reads, checked before it is used.

Why: an upstream that sends ``"content": 5`` or ``"choices": "x"`` must end
as an API-shaped 502 and one event that names the field, not as an
``AttributeError`` in the middle of a relay (a response with no status line,
or a stream with no event). Each check is an ``is`` comparison on the happy
path; the error message is only built when a check fails.
"""

from __future__ import annotations

from typing import Any

from distillguard.gateway.upstream_http import UpstreamProtocolError

__all__ = ["check_tool_calls", "expect_dict", "expect_list", "opt_count", "opt_dict", "opt_str"]


def opt_str(value: Any, where: str) -> str | None:
    """``value`` when it is a string or null."""
    if value is None or type(value) is str:
        return value
    raise UpstreamProtocolError(where, "a string", value)


def opt_count(value: Any, where: str) -> int | None:
    """A token count: a non-negative integer or null."""
    if value is None or (type(value) is int and value >= 0):
        return value
    raise UpstreamProtocolError(where, "a non-negative integer", value)


def opt_dict(value: Any, where: str) -> dict[str, Any] | None:
    if value is None or type(value) is dict:
        return value
    raise UpstreamProtocolError(where, "an object", value)


def expect_dict(value: Any, where: str) -> dict[str, Any]:
    if type(value) is dict:
        return value
    raise UpstreamProtocolError(where, "an object", value)


def expect_list(value: Any, where: str) -> list[Any]:
    if type(value) is list:
        return value
    raise UpstreamProtocolError(where, "a list", value)


def check_tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI ``tool_calls`` (whole in a message, or pieces in a stream's delta)."""
    expect_list(calls, where)
    for j, call in enumerate(calls):
        expect_dict(call, f"{where}.{j}")
        opt_str(call.get("id"), f"{where}.{j}.id")
        index = call.get("index")
        if index is not None and type(index) is not int:
            raise UpstreamProtocolError(f"{where}.{j}.index", "an integer", index)
        function = opt_dict(call.get("function"), f"{where}.{j}.function")
        if function is not None:
            opt_str(function.get("name"), f"{where}.{j}.function.name")
            arguments = function.get("arguments")
            if arguments is not None and type(arguments) is not str and type(arguments) is not dict:
                raise UpstreamProtocolError(f"{where}.{j}.function.arguments", "a string (JSON text)", arguments)
    return calls
