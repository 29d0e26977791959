"""The ``distillguard`` command (DESIGN §3, a contract).

This module only parses arguments. Each command names its handler as
``"module:function"`` and the module is imported when that command runs, so
``distillguard keys create`` never pays for scikit-learn and ``serve`` never
imports the analytics stack. A handler takes the parsed ``argparse.Namespace``
and returns the exit code.

Exit codes: 0 success, 2 usage or input errors (one line naming the problem),
1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from distillguard.exceptions import DistillguardError, UsageError
from distillguard.logs import configure as configure_logging

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]


def _command(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    handler: str,
    help_text: str,
    *,
    reads_settings: bool = True,
    opens_store: bool | None = None,
) -> argparse.ArgumentParser:
    """A subcommand. Every command takes ``--config`` (DESIGN §7); ``reads_settings=False`` marks one that needs
    no setting from it: the file is still checked, and the user is told it changes nothing (never silently ignored).

    ``opens_store`` (default: any handler in ``distillguard.store``) marks a command that opens the database:
    when that would create a new SQLite file, the user is told which configuration and file (on stderr)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help_text, description=help_text)
    config_help = "YAML configuration file (default: $DG_CONFIG)"
    if not reads_settings:
        config_help += "; checked, but this command reads no settings from it"
    parser.add_argument("--config", metavar="FILE", help=config_help)
    if opens_store is None:
        opens_store = handler.startswith("distillguard.store.")
    parser.set_defaults(handler=handler, reads_settings=reads_settings, opens_store=opens_store)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillguard",
        description="Defend an LLM API against distillation and reselling.",
    )
    parser.add_argument("--version", action="version", version="distillguard 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = _command(sub, "serve", "distillguard.gateway.server:serve_command", "run the gateway", opens_store=True)
    serve.add_argument("--workers", type=int, metavar="N",
                       help="run N gateway processes on the same port (needs state: redis://…; docs/deploy.md)")

    _command(sub, "scorer", "distillguard.policy.central:scorer_command",
             "the central online scorer for a fleet (state: redis://…, detection.scorer: central; docs/deploy.md)", opens_store=True)

    demo = _command(sub, "demo", "distillguard.demo.tour:demo_command", "the one-command tour", reads_settings=False)
    demo.add_argument("--serve", action="store_true", help="keep the demo model and gateway running after the summary (Ctrl-C stops)")
    demo.add_argument("--no-wait", action="store_true", help=argparse.SUPPRESS)  # the old default-off flag; exiting is now the default

    demo_model = _command(
        sub, "demo-model", "distillguard.demo.server:demo_model_command", "serve the small CPU demo model", reads_settings=False
    )
    demo_model.add_argument("--host", default="127.0.0.1")
    demo_model.add_argument("--port", type=int, default=8701)

    accounts = sub.add_parser("accounts", help="manage accounts").add_subparsers(dest="action", metavar="ACTION")
    accounts.required = True
    create_account = _command(accounts, "create", "distillguard.store.commands:accounts_create", "create an account")
    create_account.add_argument("name")
    create_account.add_argument("--org", help="organisation id or name")
    create_account.add_argument("--attr", action="append", metavar="NAME=VALUE",
                                help="operator attribute, stored only as a keyed hash (e.g. email_domain=acme.com, payment_fp=…); repeatable")
    create_account.add_argument("--json", action="store_true", help="print JSON")
    import_accounts = _command(accounts, "import", "distillguard.store.commands:accounts_import",
                               "create many accounts (and keys) from JSONL; prints each with its secret, once")
    import_accounts.add_argument("file", metavar="FILE.jsonl",
                                 help='one account a line: {"name": …, "org": …, "limits": {…}, "key": true}; - for stdin')
    import_accounts.add_argument("--batch", type=int, default=5000, metavar="N",
                                 help="accounts per transaction (default 5000)")
    set_attr = _command(accounts, "set-attr", "distillguard.store.commands:accounts_set_attr",
                        "set or remove an account's attributes (stored only as keyed hashes)")
    set_attr.add_argument("account_id", metavar="ACCOUNT_ID")
    set_attr.add_argument("assignments", nargs="*", metavar="NAME=VALUE")
    set_attr.add_argument("--unset", action="append", metavar="NAME", help="remove this attribute (repeatable)")
    set_attr.add_argument("--json", action="store_true", help="print JSON")
    _command(accounts, "export", "distillguard.store.commands:accounts_export",
             "account metadata as JSONL (id, name, org, created_at, status, hashed attributes) for `scan --accounts`")
    list_accounts = _command(accounts, "list", "distillguard.store.commands:accounts_list", "list accounts")
    list_accounts.add_argument("--json", action="store_true", help="print JSON")
    for action, help_text in (("suspend", "suspend an account: its keys get 403 until activated"), ("activate", "re-activate a suspended account")):
        status = _command(accounts, action, f"distillguard.store.commands:accounts_{action}", help_text)
        status.add_argument("account_id", metavar="ACCOUNT_ID")
        if action == "suspend":
            status.add_argument("--reason", help="recorded in the audit trail")
        status.add_argument("--json", action="store_true", help="print JSON")

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", metavar="ACTION")
    keys.required = True
    create_key = _command(keys, "create", "distillguard.store.commands:keys_create", "issue a key (secret shown once)")
    create_key.add_argument("account_id")
    create_key.add_argument("--json", action="store_true", help="print JSON")
    revoke_key = _command(keys, "revoke", "distillguard.store.commands:keys_revoke", "revoke a key")
    revoke_key.add_argument("key_id")
    revoke_key.add_argument("--json", action="store_true", help="print JSON")

    events = sub.add_parser("events", help="the event log").add_subparsers(dest="action", metavar="ACTION")
    events.required = True
    export = _command(events, "export", "distillguard.store.commands:events_export", "export events as JSONL")
    export.add_argument("--since", metavar="TS", help="only events at or after this ISO-8601 timestamp")
    importer = _command(events, "import", "distillguard.store.commands:events_import", "load event logs into the store")
    importer.add_argument("files", nargs="+", metavar="FILE", help=".jsonl, .jsonl.gz or - for stdin")

    scan = _command(sub, "scan", "distillguard.detect.scan:scan_command", "offline detection over event logs", reads_settings=False)
    scan.add_argument("files", nargs="+", metavar="FILE", help=".jsonl, .jsonl.gz or - for stdin")
    scan.add_argument("--out", metavar="REPORT.json", help="write the JSON report here (must not be one of the inputs)")
    scan.add_argument("--format", choices=("table", "json"), default=None,
                      help="what stdout gets: a ranked table or the JSON report (default: table on a terminal, else json)")
    scan.add_argument("--fail-on", choices=("medium", "high"), default=None,
                      help="exit 3 when an account at this risk level or above is found (cron, CI)")
    scan.add_argument("--strict", action="store_true", help="stop at the first malformed line")
    scan.add_argument("--indicators", action="append", metavar="BUNDLE.json",
                      help="STIX 2.1 indicators shared by other providers: matches become `shared_indicators` evidence (repeatable)")
    scan.add_argument("--accounts", metavar="ACCOUNTS.jsonl",
                      help="account metadata from `distillguard accounts export` (creation times, orgs, hashed attributes) for attribution")

    simulate = _command(sub, "simulate", "distillguard.sim.commands:simulate_command", "labelled synthetic traffic", reads_settings=False)
    simulate.add_argument("--scenario", required=True, help="a named scenario or a YAML file")
    simulate.add_argument("--seed", type=int, required=True)
    simulate.add_argument("--out", required=True, metavar="EVENTS.jsonl.gz")
    simulate.add_argument("--labels", required=True, metavar="LABELS.json")
    simulate.add_argument("--split", choices=("dev", "test", "holdout"), default="dev",
                          help="dev (tune on it), test (report it) or holdout (robust only; never tune on it); default dev")
    simulate.add_argument("--accounts-out", metavar="ACCOUNTS.jsonl",
                          help="account metadata as `accounts export` writes it (default: beside LABELS, *.accounts.jsonl)")

    evaluate = _command(sub, "eval", "distillguard.sim.commands:eval_command", "detection metrics vs a baseline", reads_settings=False)
    evaluate.add_argument("--events", required=True, nargs="+", metavar="EVENTS")
    evaluate.add_argument("--labels", required=True, metavar="LABELS")
    evaluate.add_argument("--accounts", metavar="ACCOUNTS.jsonl", help="account metadata for the scanner (as `scan --accounts`)")
    evaluate.add_argument("--json", action="store_true", help="print JSON for machines")

    watermark = sub.add_parser("watermark", help="provenance watermarks").add_subparsers(dest="action", metavar="ACTION")
    watermark.required = True
    detect = _command(watermark, "detect", "distillguard.watermark.commands:detect_command", "test text for watermarks")
    detect.add_argument("--text-file", required=True, metavar="F", help="a text file, or - for stdin")
    detect.add_argument("--key-id", action="append", dest="key_ids", metavar="ID", help="key to test (repeatable)")
    detect.add_argument("--scheme", choices=("unigram", "kgw"), default="unigram", help="watermark scheme (default: unigram)")
    detect.add_argument("--tokenizer", metavar="tokenizer.json", help="the marking model's tokenizer (default: the demo model's)")

    canary = sub.add_parser("canary", help="keyed canaries (docs/watermark.md)").add_subparsers(dest="action", metavar="ACTION")
    canary.required = True
    probe = _command(canary, "probe", "distillguard.canary.probe:probe_command",
                     "black-box canary test of a suspect model: JSON with per-key hits and p-values (docs/watermark.md)")
    probe.add_argument("--base-url", required=True, metavar="URL", help="the suspect's OpenAI-compatible API, e.g. http://host:8000/v1")
    probe.add_argument("--model", required=True, metavar="M", help="the model name to ask")
    probe.add_argument("--api-key", metavar="KEY", help="sent as a Bearer token, if the suspect's API needs one")
    probe.add_argument("--key-id", action="append", dest="key_ids", metavar="ID",
                       help="canary key to test (repeatable; default: canary.key_id of --config)")
    probe.add_argument("--max-tokens", type=int, default=256, help="per answer (default: 256)")
    probe.add_argument("--timeout", type=float, default=120.0, help="seconds per question (default: 120)")

    indicators = sub.add_parser("indicators", help="STIX 2.1 indicator bundles shared between providers").add_subparsers(
        dest="action", metavar="ACTION")
    indicators.required = True
    ind_export = _command(indicators, "export", "distillguard.indicators.commands:export_command",
                          "flagged accounts' shareable indicators as a STIX 2.1 bundle (docs/indicators.md)", opens_store=False)
    ind_export.add_argument("--report", metavar="REPORT.json",
                            help="take the flagged accounts from this scan report (default: the online scorer's, in the store)")
    ind_export.add_argument("--events", nargs="+", metavar="FILE", help="read events from these logs (default: the store's)")
    ind_export.add_argument("--min-risk", choices=("medium", "high"), default="high", help="which accounts count as flagged (default: high)")
    ind_export.add_argument("--canary-key", action="append", metavar="KEY_ID", help="also share this canary key id (repeatable)")
    ind_export.add_argument("--producer", default="distillguard", help="the identity named in the bundle (your organisation)")
    ind_export.add_argument("--out", metavar="BUNDLE.json", help="write the bundle here (default: stdout)")
    ind_import = _command(indicators, "import", "distillguard.indicators.commands:import_command",
                          "load another provider's STIX 2.1 bundle into the store (docs/indicators.md)", opens_store=True)
    ind_import.add_argument("file", metavar="FILE", help="a STIX 2.1 bundle (JSON), or - for stdin")
    ind_import.add_argument("--source", metavar="NAME", help="who sent it (default: the bundle's identity name)")
    _command(indicators, "list", "distillguard.indicators.commands:list_command", "the imported indicators, as JSON", opens_store=True)

    client = sub.add_parser("client", help="the attesting client SDK").add_subparsers(dest="action", metavar="ACTION")
    client.required = True
    show = _command(client, "show", "distillguard.client.commands:show_command", "print exactly what the SDK sends", reads_settings=False)
    show.add_argument("--url", default="http://127.0.0.1:8700/v1/chat/completions")
    show.add_argument("--body", default='{"model": "demo-1", "messages": []}')
    proxy = _command(client, "proxy", "distillguard.client.commands:proxy_command",
                     "a local attesting sidecar for unmodified clients (docs/attestation.md)", reads_settings=False)
    proxy.add_argument("--listen", default="127.0.0.1:8710", metavar="ADDR", help="HOST:PORT to listen on (default: 127.0.0.1:8710)")
    proxy.add_argument("--to", required=True, metavar="URL", help="the gateway, e.g. http://127.0.0.1:8700")
    from distillguard.admin_cli import add_admin_parser

    add_admin_parser(sub, _command)
    return parser


def _resolve(handler: str) -> Handler:
    module_name, _, function_name = handler.partition(":")
    module = importlib.import_module(module_name)
    function: Handler = getattr(module, function_name)
    return function


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging("info", "text")  # control characters escaped, long fields cut (distillguard/logs.py)
    for chatty in ("httpx", "httpx2", "httpcore"):  # one line per HTTP call drowns the output people came for
        logging.getLogger(chatty).setLevel(logging.WARNING)
    name = " ".join(filter(None, (args.command, getattr(args, "action", None))))
    try:
        if not args.reads_settings and args.config:
            from distillguard.config import load_settings

            load_settings(args.config)  # a typo'd or broken file is an error here too
            print(f"distillguard {name}: note: --config {args.config} is valid; this command reads no settings from it",
                  file=sys.stderr)
        if getattr(args, "opens_store", False):
            from distillguard.config import load_settings, new_database_notice

            notice = new_database_notice(load_settings(args.config), args.config or os.environ.get("DG_CONFIG"))
            if notice:
                print(f"distillguard {name}: note: {notice}", file=sys.stderr)
        return _resolve(args.handler)(args)
    except UsageError as exc:
        print(f"distillguard {name}: error: {exc}", file=sys.stderr)
        return 2
    except DistillguardError as exc:
        print(f"distillguard {name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if os.environ.get("DG_DEBUG"):
            raise
        print(f"distillguard {name}: internal error: {type(exc).__name__}: {exc} (set DG_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
