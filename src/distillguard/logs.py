"""Log lines that a client cannot forge: control characters escaped, long fields cut, optional JSON.

Why at the formatter: paths, model names, install ids, user agents and
upstream messages reach log lines through many call sites; escaping them at
each one would miss the next one written. Here every argument of a log call
is turned into text, cut to :data:`FIELD_CHARS` characters, and the whole
message has its control characters (CR, LF, ESC, NUL, DEL, C1 controls,
Unicode line and paragraph separators) written as escapes (``\\n``, ``\\x1b``,
``\\u2028``), so one log call is always one line that says who wrote it.
Tracebacks (ours, not the client's) are appended as they are.

``log_format: json`` writes one JSON object per line instead
(``{"ts", "level", "logger", "message"}``, plus ``"exc"`` with a traceback);
JSON escaping makes those lines unforgeable too, and the same field cut applies.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

__all__ = ["FIELD_CHARS", "JsonFormatter", "SafeFormatter", "configure", "escape_controls", "safe_field"]

FIELD_CHARS = 200
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (one line, no terminal escapes)."""
    return _CONTROLS.sub(_escape, text) if _CONTROLS.search(text) else text


def safe_field(value: object, limit: int = FIELD_CHARS) -> object:
    """A log argument made safe: numbers as they are; anything else as text, cut to ``limit`` characters (with ``…``)."""
    if value is None or isinstance(value, int | float):
        return value
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "backslashreplace")
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text)} chars)"
    return text


def _message(record: logging.LogRecord) -> str:
    args = record.args
    if args:
        if isinstance(args, dict):
            record.args = {k: safe_field(v) for k, v in args.items()}
        else:
            record.args = tuple(safe_field(v) for v in args)
    try:
        return record.getMessage()
    finally:
        record.args = args


class SafeFormatter(logging.Formatter):
    """The text format, with fields cut and control characters escaped (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(_message(record))
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = line + "\n" + record.exc_text
        if record.stack_info:
            line = line + "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, and ``exc`` with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str = "info", fmt: str = "text") -> None:
    """Install the formatter on the root logger's handler (one stderr handler, created if there is none)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else SafeFormatter(TEXT_FORMAT)
    for handler in root.handlers:
        handler.setFormatter(formatter)
    root.setLevel(level.upper())
