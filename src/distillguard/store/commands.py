"""CLI handlers: `accounts create|import|list|set-attr|export`, `keys create|revoke`, `events export`.

A change to the key table (a key created or revoked, an account created,
suspended or activated) is written to the store, then, with ``state:
redis://…``, announced on the gateways' change notices (state/notify.py), so
every replica applies it at once rather than at its next poll of the store.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from distillguard.config import Settings, load_settings
from distillguard.exceptions import NotFoundError, UsageError
from distillguard.store.attributes import parse_assignments
from distillguard.store.export import iter_event_lines, normalise_since
from distillguard.store.registry import NewAccount, Registry

__all__ = ["accounts_create", "accounts_export", "accounts_import", "accounts_list", "accounts_set_attr", "events_export", "keys_create", "keys_revoke"]


def _registry(args: argparse.Namespace, settings: Settings | None = None) -> Registry:
    settings = settings or load_settings(args.config)
    return Registry(settings.database, timeout_s=settings.database_timeout_s)


def _announce(settings: Settings) -> None:
    """Tell running gateways that the key table changed (with ``state: redis://…``; a failure leaves them their poll)."""
    if settings.state == "memory":
        return
    from distillguard.state.notify import RedisNotifier

    notifier = RedisNotifier(settings.state, f"cli:{os.getpid()}", timeout_s=max(1.0, settings.state_timeout_s))
    try:
        notifier.publish("keys")
    finally:
        notifier.close()


def _print_json(obj: object) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")


def accounts_create(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    attributes = parse_assignments(args.attr or [], settings.privacy.hash_key)
    account = _registry(args, settings).create_account(args.name, org=args.org, attributes=attributes)
    _announce(settings)
    if args.json:
        _print_json({"account_id": account["account_id"], "name": account["name"], "org_id": account["org_id"],
                     **({"attributes": attributes} if attributes else {})})
    else:
        print(account["account_id"])
    return 0


def accounts_import(args: argparse.Namespace) -> int:
    """``accounts import FILE.jsonl``: every line checked first (nothing is created from a file with a bad line), then
    created ``--batch`` accounts per transaction; each account goes to stdout as JSON with its key's secret, once."""
    from distillguard.store.accounts_file import create_in_batches, read_accounts_file

    items = [account.new_account() for account in read_accounts_file(args.file)]
    settings = load_settings(args.config)
    registry = _registry(args, settings)

    def create(chunk: Sequence[NewAccount]) -> list[dict[str, Any]]:
        created = registry.create_accounts(chunk, actor="cli")
        _announce(settings)  # each batch is committed on its own: the gateways may serve its keys at once
        return created

    return create_in_batches(items, args.batch, create, "accounts import")


def accounts_list(args: argparse.Namespace) -> int:
    accounts = _registry(args).list_accounts()
    if args.json:
        _print_json(accounts)
        return 0
    print(f"{'ACCOUNT':<22} {'NAME':<24} {'ORG':<16} {'STATUS':<10} CREATED")
    for a in accounts:
        created = dt.datetime.fromtimestamp(a["created_at"], dt.UTC).strftime("%Y-%m-%d %H:%M")
        print(f"{a['account_id']:<22} {a['name'][:24]:<24} {(a['org_id'] or '-')[:16]:<16} {a['status']:<10} {created}")
    return 0


def accounts_set_attr(args: argparse.Namespace) -> int:
    """``accounts set-attr ACCOUNT NAME=VALUE… [--unset NAME…]``: values are hashed before they reach the store."""
    settings = load_settings(args.config)
    changes: dict[str, str | None] = dict(parse_assignments(args.assignments or [], settings.privacy.hash_key))
    for name in args.unset or []:
        if name in changes:
            raise UsageError(f"--unset {name}: also given a value")
        changes[name] = None
    if not changes:
        raise UsageError("nothing to change: give NAME=VALUE and/or --unset NAME")
    try:
        attributes = _registry(args, settings).set_account_attributes(args.account_id, changes)
    except NotFoundError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        _print_json({"account_id": args.account_id, "attributes": attributes})
    else:
        print(f"{args.account_id}: " + (", ".join(f"{n}={v}" for n, v in attributes.items()) or "no attributes"))
    return 0


def accounts_export(args: argparse.Namespace) -> int:
    """One JSON object per account and line (docs/store.md), the input of `scan --accounts`."""
    out = sys.stdout.buffer
    for line in _registry(args).export_accounts():
        out.write(orjson.dumps(line) + b"\n")
    out.flush()
    return 0


def accounts_suspend(args: argparse.Namespace) -> int:
    return _set_status(args, "suspended")


def accounts_activate(args: argparse.Namespace) -> int:
    return _set_status(args, "active")


def _set_status(args: argparse.Namespace, status: str) -> int:
    settings = load_settings(args.config)
    try:
        _registry(args, settings).set_account_status(args.account_id, status, actor="cli", reason=getattr(args, "reason", None))
    except NotFoundError as exc:
        raise UsageError(str(exc)) from None
    _announce(settings)
    if args.json:
        _print_json({"account_id": args.account_id, "status": status})
    else:
        print(f"{args.account_id} {status}")
    return 0


def keys_create(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    try:
        key = _registry(args, settings).create_key(args.account_id)
    except NotFoundError as exc:
        raise UsageError(str(exc)) from None
    _announce(settings)
    if args.json:
        _print_json(key)
    else:
        print(f"key_id:  {key['key_id']}\naccount: {key['account_id']}\nsecret:  {key['secret']}")
        print("The secret is shown once and stored only as a hash: keep it now.", file=sys.stderr)
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    try:
        result = _registry(args, settings).revoke_key(args.key_id)
    except NotFoundError as exc:
        raise UsageError(str(exc)) from None
    _announce(settings)
    if args.json:
        _print_json(result)
    else:
        print(f"revoked {args.key_id}")
    return 0


def events_export(args: argparse.Namespace) -> int:
    since = args.since
    if since:
        try:
            since = normalise_since(since)
        except ValueError:
            raise UsageError(f"--since: not an ISO-8601 timestamp (e.g. 2026-11-20T10:00:00Z): {since!r}") from None
    out = sys.stdout.buffer
    settings = load_settings(args.config)
    for line in iter_event_lines(settings.database, since, timeout_s=settings.database_timeout_s):
        out.write(line + b"\n")
    out.flush()
    return 0


def events_import(args: argparse.Namespace) -> int:
    """`events import FILE...`: load event logs into the configured store (docs/store.md)."""
    from distillguard.store.importer import import_events

    settings = load_settings(args.config)
    result = import_events(settings.database, args.files)
    print(f"imported {result.stored} new events of {result.read} read ({result.read - result.stored} already stored)")
    return 0
