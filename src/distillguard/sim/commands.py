"""CLI handlers: `distillguard simulate` and `distillguard eval`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from distillguard.exceptions import InputError

__all__ = ["accounts_beside", "eval_command", "simulate_command"]


def accounts_beside(labels: str) -> str:
    """Where `simulate` puts account metadata by default: ``labels.json`` → ``labels.accounts.jsonl``."""
    path = Path(labels)
    return str(path.with_name(path.name.removesuffix(".json") + ".accounts.jsonl"))


def simulate_command(args: argparse.Namespace) -> int:
    from distillguard.sim.scenarios import load_scenario, simulate

    scenario = load_scenario(args.scenario)
    accounts_out = args.accounts_out or accounts_beside(args.labels)
    started = time.perf_counter()
    count, labels = simulate(scenario, args.seed, args.out, split=args.split, accounts_out=accounts_out)
    Path(args.labels).write_text(json.dumps(labels, indent=1))
    elapsed = time.perf_counter() - started
    print(f"simulated {count} events for {len(labels['accounts'])} accounts ({scenario.name}, {args.split} split, seed {args.seed}) "
          f"in {elapsed:.1f}s → {args.out}, labels → {args.labels}, accounts → {accounts_out}", file=sys.stderr)
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from distillguard.sim.evaluate import evaluate, format_table

    try:
        labels = json.loads(Path(args.labels).read_text())
    except FileNotFoundError:
        raise InputError(f"{args.labels}: labels file not found") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{args.labels}: not valid JSON ({exc})") from None
    if not isinstance(labels, dict) or not isinstance(labels.get("accounts"), dict):
        raise InputError(f"{args.labels}: expected an object with an 'accounts' mapping")
    for path in args.events:
        if path != "-" and not Path(path).exists():
            raise InputError(f"{path}: events file not found")
    scanner = None
    if args.accounts:
        from distillguard.detect.accounts import read_accounts
        from distillguard.detect.scanner import Scanner

        if not Path(args.accounts).exists():
            raise InputError(f"{args.accounts}: accounts file not found (write one with `simulate --accounts-out` or `accounts export`)")
        scanner = Scanner(accounts=read_accounts(args.accounts))
    result = evaluate(args.events, labels, scanner=scanner)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0
