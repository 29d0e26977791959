"""`distillguard scan`: offline detection over event logs, streamed with bounded memory."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from distillguard.detect.scanner import Scanner
from distillguard.events import EventFormatError, EventReadProblem, read_events
from distillguard.exceptions import InputError

__all__ = ["scan_command", "scan_files"]

MAX_WARNINGS = 20


def scan_files(paths: list[str], *, strict: bool = False, progress: bool = False) -> tuple[dict[str, Any], list[EventReadProblem]]:
    problems: list[EventReadProblem] = []

    def warn(problem: EventReadProblem) -> None:
        problems.append(problem)
        if len(problems) <= MAX_WARNINGS:
            print(f"warning: {problem} (skipped)", file=sys.stderr)

    scanner = Scanner()
    started = time.monotonic()
    last = started
    try:
        for event in read_events(paths, strict=strict, on_problem=warn):
            scanner.update(event)
            if progress and scanner.events % 20_000 == 0:
                now = time.monotonic()
                if now - last > 0.5:
                    last = now
                    rate = scanner.events / max(1e-9, now - started)
                    print(f"\r  {scanner.events:,} events, {len(scanner.accounts):,} accounts, {rate:,.0f} events/s", end="", file=sys.stderr)
    except EventFormatError as exc:
        raise InputError(str(exc)) from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise InputError(f"{exc.filename}: {exc.strerror}") from None
    if progress:
        print(file=sys.stderr)
    report = scanner.report()
    if problems:
        report["problems"] = {"skipped_lines": len(problems), "first": [str(p) for p in problems[:MAX_WARNINGS]]}
    return report, problems


def scan_command(args: argparse.Namespace) -> int:
    report, problems = scan_files(args.files, strict=args.strict, progress=sys.stderr.isatty())
    text = json.dumps(report, indent=1, ensure_ascii=False)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    high = sum(1 for a in report["accounts"] if a["risk"] == "high")
    summary = f"scanned {report['events']} events, {report['accounts_seen']} accounts: {high} high risk, {len(report['clusters'])} clusters"
    if problems:
        summary += f"; {len(problems)} malformed line(s) skipped"
    print(summary, file=sys.stderr)
    return 0
