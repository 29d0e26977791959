"""The event model v1 and its JSONL reader/writer (DESIGN §4, a contract).

Every package speaks this one vocabulary: the gateway writes events, the store
keeps them, `scan` and the online scorer read them. Events are plain ``dict``
objects rather than model instances because the gateway builds one per proxied
request and `scan` reads millions: a dict costs nothing to build or serialise
with ``orjson``. The ``TypedDict`` classes below document the shape for readers
and for ``mypy``; :func:`validate_event` checks an untrusted event.

Readers ignore unknown fields and accept missing optional ones; writers always
write ``v``, ``ts``, ``request_id``, ``account_id``, ``endpoint``, ``request``
and ``response``.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import itertools
import os
import secrets
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, NotRequired, TypedDict

import orjson

from distillguard.exceptions import DistillguardError

__all__ = [
    "EVENT_VERSION",
    "REQUIRED_FIELDS",
    "ATTESTATION_STATUSES",
    "Event",
    "EventFormatError",
    "EventReadProblem",
    "EventWriter",
    "format_ts",
    "new_event",
    "new_request_id",
    "parse_ts",
    "read_events",
    "validate_event",
]

EVENT_VERSION = 1
REQUIRED_FIELDS = ("v", "ts", "request_id", "account_id", "endpoint", "request", "response")
ATTESTATION_STATUSES = frozenset({"valid", "invalid", "expired", "replayed", "missing_key"})


class Geo(TypedDict, total=False):
    country: str | None
    asn: int | None
    hosting: bool | None


class ClientInfo(TypedDict, total=False):
    ip: str | None
    user_agent: str | None
    header_fp: str | None
    geo: Geo


class Attestation(TypedDict, total=False):
    status: str
    install_id: str | None
    tz: str | None
    utc_offset_min: int | None
    locale: str | None
    proxy: bool | None
    os: str | None
    sdk: str | None


class Message(TypedDict):
    role: str
    content: str


class RequestParams(TypedDict, total=False):
    temperature: float | None
    max_tokens: int | None
    n: int | None
    logprobs: bool | None
    top_logprobs: int | None
    stream: bool | None
    tools: int


class RequestPart(TypedDict, total=False):
    system: str | None
    messages: list[Message]
    params: RequestParams


class ResponsePart(TypedDict, total=False):
    status: int
    text: str | None
    reasoning_chars: int
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    latency_ms: float | None
    error: str | None


class Event(TypedDict):
    v: int
    ts: str
    request_id: str
    account_id: str | None
    endpoint: str
    request: RequestPart
    response: ResponsePart
    key_id: NotRequired[str | None]
    org_id: NotRequired[str | None]
    model: NotRequired[str | None]
    client: NotRequired[ClientInfo]
    attestation: NotRequired[Attestation | None]
    policy: NotRequired[dict[str, Any]]
    watermark: NotRequired[dict[str, Any]]


_REQUEST_ID_PREFIX = secrets.token_hex(6)
_request_counter = itertools.count()


def new_request_id() -> str:
    """A short, unique, URL-safe request id: ``req_`` + 24 hex digits.

    48 random bits chosen once per process and a 48-bit counter: unique
    without a system call per request (request ids need not be secret).
    """
    return f"req_{_REQUEST_ID_PREFIX}{next(_request_counter) & 0xFFFFFFFFFFFF:012x}"


_second_cache: list[Any] = [-1, ""]


def _now_ts() -> str:
    now = time.time()
    second = int(now)
    cache = _second_cache
    if cache[0] != second:  # strftime once per second, not per request
        cache[0], cache[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
    return f"{cache[1]}{int((now - second) * 1000):03d}Z"


def format_ts(when: dt.datetime | float | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z`` suffix, as DESIGN §4 shows."""
    if when is None:
        return _now_ts()
    elif isinstance(when, int | float):
        when = dt.datetime.fromtimestamp(when, dt.UTC)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    when = when.astimezone(dt.UTC)  # the year by hand: strftime's %Y is not zero-padded before 1000 on glibc
    return f"{when.year:04d}-" + when.strftime("%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


_EPOCH_DAY = dt.date(1970, 1, 1).toordinal()


@lru_cache(maxsize=16)
def _day_start(date: str) -> int:
    """POSIX seconds at 00:00 UTC of an ISO date (events arrive in time order: a handful of dates at once)."""
    return (dt.date.fromisoformat(date).toordinal() - _EPOCH_DAY) * 86400


def parse_ts(ts: str) -> float:
    """Parse an event timestamp to POSIX seconds; raises ``ValueError`` on garbage.

    Fast path for the form every writer uses ("2026-10-04T23:27:23.591Z"; ``scan`` parses one per event):
    ``datetime.fromisoformat(...).timestamp()`` costs ~1 µs, so for that form the result is built the way
    ``timestamp()`` builds it — whole microseconds since the epoch divided by 10**6, a correctly rounded
    integer division — which is the same float; anything else (or out of range) takes the general path.
    """
    if (len(ts) == 24 and ts[23] == "Z" and ts[10] == "T" and ts[4] == ts[7] == "-" and ts[13] == ts[16] == ":"
            and ts[19] == "."):
        digits = ts[:4] + ts[5:7] + ts[8:10] + ts[11:13] + ts[14:16] + ts[17:19] + ts[20:23]
        if digits.isascii() and digits.isdigit():
            hour, minute, second = int(ts[11:13]), int(ts[14:16]), int(ts[17:19])
            if hour < 24 and minute < 60 and second < 60:
                try:
                    day = _day_start(ts[:10])
                except ValueError:
                    return _parse_iso_ts(ts)
                return ((day + hour * 3600 + minute * 60 + second) * 1000 + int(ts[20:23])) * 1000 / 1_000_000
    return _parse_iso_ts(ts)


def _parse_iso_ts(ts: str) -> float:
    """Any ISO-8601 timestamp (``Z`` or an offset; none means UTC) to POSIX seconds."""
    if ts.endswith("Z"):
        ts = ts[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(ts)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def new_event(
    *,
    endpoint: str,
    account_id: str | None,
    request: RequestPart,
    response: ResponsePart,
    ts: str | None = None,
    request_id: str | None = None,
    **extra: Any,
) -> Event:
    """Build an event with every field a writer must write."""
    event: dict[str, Any] = {
        "v": EVENT_VERSION,
        "ts": ts or format_ts(),
        "request_id": request_id or new_request_id(),
        "account_id": account_id,
        "endpoint": endpoint,
        "request": request,
        "response": response,
    }
    event.update(extra)
    return event  # type: ignore[return-value]


class EventFormatError(DistillguardError, ValueError):
    """An event that breaks the v1 contract; ``location`` names the field, pydantic-style."""

    def __init__(self, location: str, problem: str) -> None:
        super().__init__(f"{location}: {problem}")
        self.location = location
        self.problem = problem


def validate_event(obj: Any) -> Event:
    """Check the fields that readers rely on and return ``obj`` typed as an event.

    Only what detection needs is checked; unknown fields pass through untouched.
    """
    if not isinstance(obj, dict):
        raise EventFormatError("(event)", f"expected a JSON object, got {type(obj).__name__}")
    for name in ("ts", "endpoint"):
        if not isinstance(obj.get(name), str):
            raise EventFormatError(name, "missing or not a string")
    try:
        parse_ts(obj["ts"])
    except ValueError:
        raise EventFormatError("ts", f"not an ISO-8601 timestamp: {obj['ts']!r}") from None
    account = obj.get("account_id")
    if account is not None and not isinstance(account, str):
        raise EventFormatError("account_id", "must be a string or null")
    for name in ("request", "response"):
        part = obj.get(name)
        if part is None:
            obj[name] = {}
        elif not isinstance(part, dict):
            raise EventFormatError(name, "must be an object")
    messages = obj["request"].get("messages")
    if messages is not None and not isinstance(messages, list):
        raise EventFormatError("request.messages", "must be a list")
    return obj  # type: ignore[return-value]


@dataclass(frozen=True)
class EventReadProblem:
    """One line that could not be read: where it is and what is wrong with it."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


def _open_text(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]  # GzipFile is a binary IO
    return open(path, "rb")  # noqa: SIM115 - closed by the caller


def read_events(
    paths: Iterable[str | os.PathLike[str]],
    *,
    strict: bool = False,
    on_problem: Callable[[EventReadProblem], None] | None = None,
) -> Iterator[Event]:
    """Stream events from JSONL files (``.jsonl``, ``.jsonl.gz`` or ``-`` for stdin).

    Memory stays bounded whatever the file size. A malformed line is reported
    through ``on_problem`` with its file and line number and skipped, unless
    ``strict`` is set, in which case :class:`EventFormatError` is raised. A
    truncated gzip stream is reported with the number of lines read before it.
    """
    for raw_path in paths:
        path = os.fspath(raw_path)
        lineno = 0
        handle = _open_text(path)
        try:
            for lineno, line in enumerate(handle, start=1):  # noqa: B007 - used after the loop
                if not line.strip():
                    continue
                try:
                    event = validate_event(orjson.loads(line))
                except (orjson.JSONDecodeError, EventFormatError) as bad:
                    message = str(bad) if isinstance(bad, EventFormatError) else f"malformed JSON ({bad})"
                    problem = EventReadProblem(path, lineno, message)
                    if strict:
                        raise EventFormatError(f"{path}:{lineno}", message) from None
                    if on_problem is not None:
                        on_problem(problem)
                    continue
                yield event
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
            if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
                raise
            problem = EventReadProblem(path, lineno + 1, f"compressed stream ends early or is corrupt after {lineno} lines ({exc})")
            if strict:
                raise EventFormatError(f"{path}:{lineno + 1}", problem.message) from None
            if on_problem is not None:
                on_problem(problem)
        finally:
            if handle is not sys.stdin.buffer:
                handle.close()


class EventWriter:
    """Append events to a JSONL file, gzip-compressed when the name ends in ``.gz``."""

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False) -> None:
        self.path = Path(path)
        mode = "ab" if append else "wb"
        self._handle: IO[bytes]
        if self.path.name.endswith(".gz"):
            self._handle = gzip.open(self.path, mode, compresslevel=5)  # type: ignore[assignment]  # noqa: SIM115 - closed in close()
        elif str(path) == "-":
            self._handle = sys.stdout.buffer
        else:
            self._handle = io.BufferedWriter(open(self.path, mode), buffer_size=1 << 20)  # noqa: SIM115
        self.count = 0

    def write(self, event: Event | dict[str, Any]) -> None:
        self._handle.write(orjson.dumps(event) + b"\n")
        self.count += 1

    def write_many(self, events: Iterable[Event | dict[str, Any]]) -> None:
        for event in events:
            self.write(event)

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        if self._handle is sys.stdout.buffer:
            self._handle.flush()
        else:
            self._handle.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
