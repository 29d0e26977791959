"""`distillguard scan`: offline detection over event logs, streamed with bounded memory.

Output (DESIGN §3): the JSON report goes to ``--out``, or to stdout when stdout
is not a terminal; on a terminal stdout gets a ranked table instead
(``--format`` overrides). ``--fail-on`` turns a finding into exit code 3 for
cron and CI. A file whose first line is not an event is refused (it is not an
event log: a report of zero events would hide the mistake), and so is an
``--out`` that names one of the inputs (it would be truncated before it is read).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from distillguard.detect.accounts import AccountMeta, read_accounts
from distillguard.detect.report_table import format_report_table
from distillguard.detect.scanner import Scanner
from distillguard.events import EventFormatError, EventReadProblem, read_events
from distillguard.exceptions import InputError
from distillguard.indicators.model import IndicatorSet

__all__ = ["ScanOptions", "run_scan", "scan_command", "scan_files"]

MAX_WARNINGS = 20
EXIT_FOUND = 3  # --fail-on: an account at that level was found
FAIL_LEVELS = {"medium": ("medium", "high"), "high": ("high",)}


def scan_files(paths: list[str], *, strict: bool = False, progress: bool = False,
               accounts: Mapping[str, AccountMeta] | None = None,
               indicators: IndicatorSet | None = None) -> tuple[dict[str, Any], list[EventReadProblem]]:
    """Scan event logs; ``accounts`` is the operator's account metadata (`--accounts`, :func:`read_accounts`),
    ``indicators`` other providers' shared indicators (`--indicators`)."""
    problems: list[EventReadProblem] = []

    def warn(problem: EventReadProblem) -> None:
        problems.append(problem)
        if len(problems) <= MAX_WARNINGS:
            print(f"warning: {problem} (skipped)", file=sys.stderr)

    scanner = Scanner(accounts=accounts, indicators=indicators)
    started = time.monotonic()
    last = started
    for path in paths:
        before = scanner.events

        def check(problem: EventReadProblem, before: int = before) -> None:
            if scanner.events == before:  # nothing of this file was an event: it is not an event log
                raise InputError(f"{problem}; {problem.file} is not an event log (JSONL of events v1, docs/events.md)")
            warn(problem)

        try:
            for event in read_events([path], strict=strict, on_problem=check):
                scanner.update(event)
                if progress and scanner.events % 20_000 == 0:
                    now = time.monotonic()
                    if now - last > 0.5:
                        last = now
                        rate = scanner.events / max(1e-9, now - started)
                        print(f"\r  {scanner.events:,} events, {len(scanner.accounts):,} accounts, {rate:,.0f} events/s", end="",
                              file=sys.stderr)
        except EventFormatError as exc:
            if scanner.events == before:
                raise InputError(f"{exc}; {path} is not an event log (JSONL of events v1, docs/events.md)") from None
            raise InputError(str(exc)) from None
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise InputError(f"{exc.filename}: {exc.strerror}") from None
    if progress:
        print(file=sys.stderr)
    report = scanner.report()
    if problems:
        report["problems"] = {"skipped_lines": len(problems), "first": [str(p) for p in problems[:MAX_WARNINGS]]}
    return report, problems


def _refuse_out_among_inputs(out: str | None, paths: list[str]) -> None:
    """Refuse ``--out`` naming an input: opening it for writing would empty the log before it is read."""
    if not out:
        return
    target = os.path.realpath(out)
    for path in paths:
        if path == "-":
            continue
        same = os.path.realpath(path) == target
        if not same and os.path.exists(out) and os.path.exists(path):
            same = os.path.samefile(path, out)
        if same:
            raise InputError(f"--out {out}: is also an input file; writing the report there would destroy the events (choose another path)")


@dataclass(frozen=True)
class ScanOptions:
    """What ``distillguard scan`` was asked, typed (the parser is in cli.py; every field is one of its options)."""

    files: list[str]
    out: str | None = None
    format: Literal["table", "json"] | None = None
    fail_on: Literal["medium", "high"] | None = None
    strict: bool = False
    indicators: list[str] = field(default_factory=list)
    accounts: str | None = None

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> ScanOptions:
        """Read the parsed command line once, by name: a renamed option fails here, not deep inside the scan."""
        return cls(files=list(args.files), out=args.out, format=args.format, fail_on=args.fail_on, strict=bool(args.strict),
                   indicators=list(args.indicators or ()), accounts=args.accounts)


def scan_command(args: argparse.Namespace) -> int:
    return run_scan(ScanOptions.from_namespace(args))


def run_scan(options: ScanOptions) -> int:
    """The command: scan, write the report and/or the table, summarise on stderr; exit 3 with ``fail_on`` and a finding."""
    _refuse_out_among_inputs(options.out, options.files)
    accounts = read_accounts(options.accounts) if options.accounts else None
    indicators = None
    if options.indicators:
        from distillguard.indicators.commands import read_bundle_file

        indicators = IndicatorSet(i for path in options.indicators for i in read_bundle_file(path))
    report, problems = scan_files(options.files, strict=options.strict, progress=sys.stderr.isatty(), accounts=accounts,
                                  indicators=indicators)
    output_format = options.format or ("table" if sys.stdout.isatty() else "json")
    text = json.dumps(report, indent=1, ensure_ascii=False)
    if options.out:
        with open(options.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    if output_format == "table":
        names = _account_names(options.accounts) if options.accounts else {}
        sys.stdout.write(format_report_table(report, names=names, width=_terminal_width()))
    elif not options.out:
        sys.stdout.write(text + "\n")
    high = sum(1 for a in report["accounts"] if a["risk"] == "high")
    summary = f"scanned {report['events']} events, {report['accounts_seen']} accounts: {high} high risk, {len(report['clusters'])} clusters"
    if problems:
        summary += f"; {len(problems)} malformed line(s) skipped"
    if options.out:
        summary += f"; report written to {options.out}"
    print(summary, file=sys.stderr)
    if options.fail_on:
        levels = FAIL_LEVELS[options.fail_on]
        found = sum(1 for a in report["accounts"] if a["risk"] in levels)
        if found:
            print(f"--fail-on {options.fail_on}: {found} account(s) at {' or '.join(levels)} risk; exit {EXIT_FOUND}", file=sys.stderr)
            return EXIT_FOUND
    return 0


def _account_names(path: str) -> dict[str, str]:
    """Account id → name from an `accounts export` file (already checked by ``read_accounts``), for the table."""
    import orjson

    names: dict[str, str] = {}
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                obj = orjson.loads(raw)
                if isinstance(obj.get("name"), str):
                    names[str(obj["account_id"])] = obj["name"]
    return names


def _terminal_width() -> int:
    try:
        return max(80, os.get_terminal_size().columns)
    except OSError:
        return 120
