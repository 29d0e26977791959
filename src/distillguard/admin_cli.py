"""`distillguard admin`: the admin API (``/admin/v1``) from the command line, over HTTP.

A thin client on purpose: every command is one API call (a cluster action is
one call too), prints the API's object with ``--json`` exactly as the API sent
it, and otherwise a small human table. The gateway stays the only place that
decides anything. ``--url`` and ``--token`` default to the configuration's
``listen`` and ``admin_token`` (``--config`` / ``DG_CONFIG`` / ``DG_*``).

Errors are one line: the API's own message, ``HTTP <status>`` and the route.
A 4xx answer (unknown account, bad limit, wrong token) exits 2 like any other
usage error; a gateway that cannot be reached or answers 5xx exits 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from distillguard.exceptions import DistillguardError, UsageError

if TYPE_CHECKING:
    import httpx

__all__ = ["add_admin_parser", "admin_command", "format_table"]

ACTIONS = {"block": "block", "unblock": "clear", "throttle": "throttle", "degrade": "degrade"}
LIMIT_FLAGS = ("requests_per_min", "tokens_per_min", "concurrent_requests", "daily_tokens")


def add_admin_parser(sub: Any, command: Any) -> None:
    """Register ``admin`` and its subcommands; ``command`` is cli.py's ``_command`` (adds ``--config``)."""
    admin = sub.add_parser("admin", help="the admin API from the command line", description=__doc__.splitlines()[0])
    # DESIGN §3 writes `distillguard admin [--url URL --token T] COMMAND`: accepted before the command as well as after it.
    admin.add_argument("--url", help="gateway base URL (default: http://<listen> from the configuration)")
    admin.add_argument("--token", help="admin token (default: admin_token from the configuration)")
    actions = admin.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    handler = "distillguard.admin_cli:admin_command"

    def leaf(parent: Any, name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = command(parent, name, handler, help_text)
        # SUPPRESS: when not given here, a value given before the command (`admin --url U risk …`) is kept
        parser.add_argument("--url", default=argparse.SUPPRESS, help="gateway base URL (default: http://<listen> from the configuration)")
        parser.add_argument("--token", default=argparse.SUPPRESS, help="admin token (default: admin_token from the configuration)")
        parser.add_argument("--json", action="store_true", help="print the API's JSON")
        parser.set_defaults(admin_action=name)
        return parser

    leaf(actions, "risk", "an account's risk, evidence and cluster").add_argument("account_id", metavar="ACCOUNT")
    leaf(actions, "flagged", "accounts and clusters at or above the flag threshold")
    review = actions.add_parser("review", help="the review queue").add_subparsers(dest="review_action", metavar="ACTION")
    review.required = True
    review_list = leaf(review, "list", "review items")
    review_list.add_argument("--status", default="open", choices=("open", "confirmed", "dismissed", "merged", "all"))
    review_list.set_defaults(admin_action="review list")
    for name, help_text in (("confirm", "confirm an item, optionally acting on every account it names"),
                            ("dismiss", "dismiss an item: lifts what the detection caused (manual allow)")):
        item = leaf(review, name, help_text)
        item.add_argument("review_id", metavar="REVIEW_ID")
        item.add_argument("--note", help="why (kept in the audit trail)")
        if name == "confirm":
            item.add_argument("--action", choices=("block", "throttle", "degrade", "flag"), help="apply to the account or cluster")
        item.set_defaults(admin_action=f"review {name}")
    for name in ACTIONS:
        act = leaf(actions, name, f"{name} an account or (cl_…) every account of a cluster")
        act.add_argument("target", metavar="ACCOUNT|CLUSTER")
        act.add_argument("--reason", help="why (kept in the audit trail)")
    keys = actions.add_parser("keys", help="API keys").add_subparsers(dest="keys_action", metavar="ACTION")
    keys.required = True
    keys_list = leaf(keys, "list", "keys (prefix, account, revoked)")
    keys_list.add_argument("--account", metavar="ACCOUNT", help="only this account's keys")
    keys_list.set_defaults(admin_action="keys list")
    accounts = actions.add_parser("accounts", help="accounts").add_subparsers(dest="accounts_action", metavar="ACTION")
    accounts.required = True
    show = leaf(accounts, "show", "an account with its keys and limits")
    show.add_argument("account_id", metavar="ACCOUNT")
    show.set_defaults(admin_action="accounts show")
    bulk = leaf(accounts, "import", "create accounts (and keys) from JSONL through POST /admin/v1/accounts/bulk; "
                                    "prints each with its secret, once (always JSON lines)")
    bulk.add_argument("file", metavar="FILE.jsonl", help='one account a line: {"name": …, "org": …, "limits": {…}, "key": true}; - for stdin')
    bulk.add_argument("--batch", type=int, default=10_000, metavar="N", help="accounts per request (default and most: 10000)")
    bulk.set_defaults(admin_action="accounts import")
    limits = actions.add_parser("limits", help="account limits").add_subparsers(dest="limits_action", metavar="ACTION")
    limits.required = True
    limits_set = leaf(limits, "set", "replace an account's limits (unset ones fall back to the defaults)")
    limits_set.add_argument("account_id", metavar="ACCOUNT")
    for flag in LIMIT_FLAGS:
        limits_set.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=int, metavar="N")
    limits_set.set_defaults(admin_action="limits set")


class _Client:
    def __init__(self, url: str, token: str) -> None:
        import httpx  # here, not at module level: building the CLI parser must not pay for it

        self.url = url.rstrip("/")
        self.http: httpx.Client = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {token}"}, timeout=30.0)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise DistillguardError(f"cannot reach the gateway at {self.url} ({type(exc).__name__}: {exc}); is it running? (--url)") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            message = _error_message(data) or response.text.strip()[:200] or response.reason_phrase
            line = f"{message} (HTTP {response.status_code} from {method} {path})"
            raise (UsageError if response.status_code < 500 else DistillguardError)(line)
        return data


def _error_message(data: Any) -> str | None:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message"))
    return None


def _settings_defaults(args: argparse.Namespace) -> tuple[str, str]:
    url, token = args.url, args.token
    if url is None or token is None:
        from distillguard.config import load_settings

        settings = load_settings(args.config)
        url = url or f"http://{settings.listen}"
        token = token or settings.admin_token
    return url, token


def admin_command(args: argparse.Namespace) -> int:
    url, token = _settings_defaults(args)
    client = _Client(url, token)
    action: str = args.admin_action
    if action == "accounts import":  # JSON lines as each batch is created, however many batches
        return _import_accounts(client, args)
    data = _call(client, action, args)
    if args.json:
        sys.stdout.write(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(_human(action, data))
    return 0


def _import_accounts(client: _Client, args: argparse.Namespace) -> int:
    from distillguard.store.accounts_file import create_in_batches, read_accounts_file

    items = [account.model_dump(exclude_unset=True) for account in read_accounts_file(args.file)]

    def create(chunk: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        created: list[dict[str, Any]] = client.call("POST", "/admin/v1/accounts/bulk", {"accounts": list(chunk)})["data"]
        return created

    return create_in_batches(items, args.batch, create, "admin accounts import")


def _q(part: str) -> str:
    return quote(part, safe="")


def _call(client: _Client, action: str, args: argparse.Namespace) -> Any:
    if action == "risk":
        return client.call("GET", f"/admin/v1/accounts/{_q(args.account_id)}/risk")
    if action == "flagged":
        return client.call("GET", "/admin/v1/flagged")
    if action == "review list":
        status = "" if args.status == "all" else args.status
        return client.call("GET", "/admin/v1/review?" + urlencode({"status": status}))
    if action in ("review confirm", "review dismiss"):
        body: dict[str, Any] = {"status": "confirmed" if action == "review confirm" else "dismissed", "note": args.note, "actor": "admin-cli"}
        if action == "review confirm" and args.action:
            body["action"] = args.action
        return client.call("POST", f"/admin/v1/review/{_q(args.review_id)}", body)
    if action in ACTIONS:
        kind = "clusters" if args.target.startswith("cl_") else "accounts"
        body = {"action": ACTIONS[action], "reason": args.reason or f"{action} from the admin CLI", "actor": "admin-cli"}
        return client.call("POST", f"/admin/v1/{kind}/{_q(args.target)}/action", body)
    if action == "keys list":
        query = f"?{urlencode({'account_id': args.account})}" if args.account else ""
        return client.call("GET", f"/admin/v1/keys{query}")
    if action == "accounts show":
        return client.call("GET", f"/admin/v1/accounts/{_q(args.account_id)}")
    if action == "limits set":
        limits = {name: getattr(args, name) for name in LIMIT_FLAGS if getattr(args, name) is not None}
        if not limits:
            raise UsageError(f"limits set: give at least one of {', '.join('--' + f.replace('_', '-') for f in LIMIT_FLAGS)}")
        return client.call("PUT", f"/admin/v1/accounts/{_q(args.account_id)}/limits", limits)
    raise UsageError(f"unknown admin command {action!r}")


# -- human output -------------------------------------------------------------------------------------

def format_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """Left-aligned columns, two spaces apart; ``(none)`` for no rows."""
    if not rows:
        return "(none)\n"
    cells = [[str(h) for h in headers], *[["-" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _when(ts: object) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _score(entry: dict[str, Any]) -> str:
    return f"{max(entry.get('distillation_score', 0), entry.get('reseller_score', 0)):.2f}"


def _risk_text(entry: dict[str, Any]) -> str:
    head = (f"{entry['account_id']}: {entry['risk']} risk (distillation {entry['distillation_score']:.2f}, "
            f"reseller {entry['reseller_score']:.2f}, cluster {entry.get('cluster_id') or '-'})\n")
    rows = [(e["detector"], f"{e['score']:.2f}", e["detail"]) for e in entry.get("evidence", [])]
    return head + format_table(rows, ("detector", "score", "evidence"))


def _human(action: str, data: Any) -> str:
    if action == "risk":
        return _risk_text(data)
    if action == "flagged":
        accounts = [(a["account_id"], a["risk"], _score(a), a.get("cluster_id"), (a.get("evidence") or [{}])[0].get("detail", ""))
                    for a in data["accounts"]]
        clusters = [(c["cluster_id"], f"{c['score']:.2f}", len(c["accounts"]), ", ".join(c.get("shared", []))) for c in data["clusters"]]
        return (f"{len(accounts)} flagged account(s)\n" + format_table(accounts, ("account", "risk", "score", "cluster", "top evidence"))
                + f"\n{len(clusters)} cluster(s)\n" + format_table(clusters, ("cluster", "score", "accounts", "shared")))
    if action == "review list":
        rows = [(r["review_id"], _when(r["ts"]), r["subject"], r["status"], r["reason"]) for r in data["data"]]
        return format_table(rows, ("review", "opened", "subject", "status", "reason"))
    if action in ("review confirm", "review dismiss"):
        applied = f"; {data['applied']} applied to {', '.join(data['accounts'])}" if data.get("applied") else ""
        return f"review {data['review_id']} {data['status']} ({data['subject']}){applied}\n"
    if action in ACTIONS:
        targets = data.get("accounts") or [data.get("account_id")]
        return f"{action}: {data['action']} applied to {', '.join(str(t) for t in targets)}\n"
    if action == "keys list":
        rows = [(k["key_id"], k["account_id"], k["prefix"] + "…", "revoked" if k["revoked"] else "active", _when(k["created_at"]))
                for k in data["data"]]
        return format_table(rows, ("key", "account", "prefix", "state", "created"))
    if action == "accounts show":
        limits = ", ".join(f"{k}={v}" for k, v in (data.get("limits") or {}).items()) or "defaults"
        policy = data.get("policy") or {}
        enforced = f"{policy.get('action', 'allow')}" + (f" (rule {policy['rule']})" if policy.get("rule") else "")
        head = (f"{data['account_id']}  {data['name']}  org {data.get('org_id') or '-'}  status {data['status']}  "
                f"policy {enforced}  created {_when(data.get('created_at'))}\nlimits: {limits}\n")
        keys = [(k["key_id"], k["prefix"] + "…", "revoked" if k["revoked"] else "active") for k in data.get("keys", [])]
        return head + format_table(keys, ("key", "prefix", "state"))
    if action == "limits set":
        return f"{data['account_id']}: limits " + ", ".join(f"{k}={v}" for k, v in data["limits"].items()) + "\n"
    return json.dumps(data, indent=1) + "\n"
