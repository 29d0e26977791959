"""`distillguard indicators export|import|list`: STIX 2.1 indicator bundles (docs/indicators.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from distillguard.config import Settings, load_settings
from distillguard.events import read_events
from distillguard.exceptions import InputError, UsageError
from distillguard.indicators.collect import collect_indicators
from distillguard.indicators.model import Indicator

__all__ = ["export_command", "import_command", "list_command", "read_bundle_file"]

LEVELS = {"medium": ("medium", "high"), "high": ("high",)}


def _json_file(path: str) -> Any:
    try:
        data = Path(path).read_bytes() if path != "-" else sys.stdin.buffer.read()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None


def read_bundle_file(path: str) -> list[Indicator]:
    """The indicators of a STIX 2.1 bundle file (for `scan --indicators`); :class:`InputError` names file and field."""
    from distillguard.indicators.stix import parse_bundle

    return parse_bundle(_json_file(path), path).indicators


def _flagged_from_report(path: str, levels: tuple[str, ...]) -> set[str]:
    report = _json_file(path)
    accounts = report.get("accounts") if isinstance(report, dict) else None
    if not isinstance(accounts, list):
        raise InputError(f"{path}: accounts: expected a scan report (DESIGN §5) with an \"accounts\" list")
    flagged = set()
    for i, entry in enumerate(accounts):
        if not isinstance(entry, dict) or not isinstance(entry.get("account_id"), str):
            raise InputError(f"{path}: accounts[{i}].account_id: missing or not a string")
        if entry.get("risk") in levels:
            flagged.add(entry["account_id"])
    return flagged


def _flagged_from_store(settings: Settings, levels: tuple[str, ...]) -> set[str]:
    from distillguard.store.engine import make_engine
    from distillguard.store.risk import RiskStore

    engine = make_engine(settings.database, timeout_s=settings.database_timeout_s)
    try:
        document = RiskStore(engine).load()
    finally:
        engine.dispose()
    return {account for account, entry in document["accounts"].items() if entry.get("risk") in levels}


def _events(args: argparse.Namespace, settings: Settings) -> Iterator[Any]:
    if args.events:
        def complain(problem: Any) -> None:
            raise InputError(str(problem))
        try:
            yield from read_events(args.events, on_problem=complain)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise InputError(f"{exc.filename}: {exc.strerror}") from None
    else:
        from distillguard.store.export import iter_events

        yield from iter_events(settings.database)


def export_command(args: argparse.Namespace) -> int:
    """Flagged accounts (a scan report's, or the online scorer's in the store) → their shareable observables → a bundle."""
    from distillguard.indicators.stix import build_bundle

    settings = load_settings(args.config)
    levels = LEVELS[args.min_risk]
    flagged = _flagged_from_report(args.report, levels) if args.report else _flagged_from_store(settings, levels)
    collected = collect_indicators(_events(args, settings), flagged) if flagged else None
    indicators = collected.indicators if collected else []
    canaries = [Indicator("canary_key", key, accounts=len(flagged)) for key in args.canary_key or []]
    bundle = build_bundle(indicators + canaries, producer=args.producer)
    text = bundle.serialize(pretty=True) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    by_kind: dict[str, int] = {}
    for ind in indicators + canaries:
        by_kind[ind.kind] = by_kind.get(ind.kind, 0) + 1
    source = args.report or "the store's risk snapshot"
    summary = ", ".join(f"{kind} {n}" for kind, n in sorted(by_kind.items())) or "none"
    print(f"distillguard indicators export: {len(flagged)} account(s) at risk {'/'.join(levels)} in {source}; "
          f"{len(indicators) + len(canaries)} indicator(s): {summary}", file=sys.stderr)
    for why, n in sorted((collected.withheld if collected else {}).items()):
        print(f"  withheld {n}: {why}", file=sys.stderr)
    return 0


def import_command(args: argparse.Namespace) -> int:
    """Validate a bundle and store its indicators under the producer's name (or ``--source``)."""
    from distillguard.indicators.stix import parse_bundle
    from distillguard.store.engine import make_engine
    from distillguard.store.indicators import IndicatorStore

    settings = load_settings(args.config)
    parsed = parse_bundle(_json_file(args.file), args.file)
    source = args.source or parsed.producer
    if not source:
        raise UsageError(f"{args.file}: the bundle names no single producer (identity object); say who sent it with --source NAME")
    engine = make_engine(settings.database, timeout_s=settings.database_timeout_s)
    try:
        stored = IndicatorStore(engine).add(parsed.indicators, source)
    finally:
        engine.dispose()
    by_kind: dict[str, int] = {}
    for ind in parsed.indicators:
        by_kind[ind.kind] = by_kind.get(ind.kind, 0) + 1
    sys.stdout.write(orjson.dumps({"file": args.file, "source": source, "imported": stored, "by_kind": by_kind,
                                   "skipped": parsed.skipped}, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def list_command(args: argparse.Namespace) -> int:
    from distillguard.store.engine import make_engine
    from distillguard.store.indicators import IndicatorStore

    settings = load_settings(args.config)
    engine = make_engine(settings.database, timeout_s=settings.database_timeout_s)
    try:
        rows = IndicatorStore(engine).load()
    finally:
        engine.dispose()
    sys.stdout.write(orjson.dumps([{"kind": i.kind, "value": i.value, "source": i.source, "stix_id": i.stix_id} for i in rows],
                                  option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
