"""The operators' console under ``/admin/ui/``: server-rendered pages over the gateway's own state.

An ASGI handler the gateway builds on the first ``/admin/ui`` request (so the
proxy's hot path never imports Jinja2). It reads the policy engine's risk
table and clusters in memory and the store through bounded, indexed queries
(:mod:`distillguard.console.queries`); every action goes through the admin
API's own code (:meth:`AdminAPI.call`), so the console can do nothing the API
cannot and leaves the same audit records, with the actor ``console``.

Pages are plain HTML forms: no JavaScript is needed, charts are inline SVG.
Sign-in exchanges the admin token (may act) or the viewer token (reads only)
for a session cookie; every POST carries the session's CSRF token.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode

import jinja2
import orjson

from distillguard.console import charts
from distillguard.console.queries import Store
from distillguard.console.session import COOKIE, LIFETIME_S, Session, SessionKeys
from distillguard.events import format_ts, parse_ts
from distillguard.exceptions import NotFoundError, UsageError
from distillguard.policy.engine import PolicyEngine
from distillguard.state.types import StateUnavailable
from distillguard.store.registry import Registry

if TYPE_CHECKING:
    from distillguard.gateway.admin import AdminAPI
    from distillguard.gateway.metrics import Metrics
    from distillguard.gateway.types import Receive, Scope, Send

__all__ = ["Console"]

log = logging.getLogger("distillguard.console")
ROOT = "/admin/ui"
HERE = Path(__file__).parent
PAGE = 50
MAX_FORM_BYTES = 1 << 20
STATUSES = ("active", "flagged", "throttled", "degraded", "blocked", "challenged", "suspended")
STATUS_OF_ACTION = {"flag": "flagged", "throttle": "throttled", "degrade": "degraded", "block": "blocked", "challenge": "challenged"}
ACCOUNT_ACTIONS = ("block", "throttle", "degrade", "flag", "allow", "clear")
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                                 b"frame-ancestors 'none'; base-uri 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
STATIC_TYPES = {".css": b"text/css; charset=utf-8", ".svg": b"image/svg+xml"}

Handler = Callable[["_Request"], Awaitable["_Response"]]


class _Request:
    def __init__(self, method: str, path: str, query: dict[str, str], form: dict[str, str], session: Session | None) -> None:
        self.method, self.path, self.query, self.form, self.session = method, path, query, form, session


class _Response:
    def __init__(self, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or []


def _redirect(location: str, message: str | None = None) -> _Response:
    if message:
        location += ("&" if "?" in location else "?") + urlencode({"msg": message})
    return _Response(303, headers=[(b"location", location.encode())])


def human_time(value: object) -> str:
    """A Unix time or an ISO timestamp as ``2026-12-07 00:14:02 UTC``."""
    if isinstance(value, str):
        text = value
        try:
            value = parse_ts(text)
        except ValueError:
            return text
    if not isinstance(value, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))


def ago(value: object) -> str:
    if isinstance(value, str):
        try:
            value = parse_ts(value)
        except ValueError:
            return ""
    if not isinstance(value, int | float):
        return ""
    seconds = max(0, int(time.time() - value))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def score_of(entry: dict[str, Any] | None) -> float:
    if not entry:
        return 0.0
    return max(float(entry.get("distillation_score") or 0), float(entry.get("reseller_score") or 0))


class Console:
    """The console over one gateway's admin API (its actions) and metrics (its traffic charts).

    The detection pages read the real :class:`PolicyEngine` and the account
    pages the real :class:`Registry`'s database; a gateway built with other
    implementations of those seams (tests' fakes) gets the pages that say so.
    """

    def __init__(self, admin: AdminAPI, metrics: Metrics) -> None:
        self.admin = admin
        self.metrics = metrics
        context = admin.context
        settings = context.settings
        self.settings = settings
        self.sink = context.sink
        self._engine = context.policy if isinstance(context.policy, PolicyEngine) else None
        self.keys = SessionKeys(settings.admin_token, settings.viewer_token)
        self.store = Store(context.registry.engine) if isinstance(context.registry, Registry) else None
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                      trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(when=human_time, ago=ago, score=score_of, quote=lambda s: quote(str(s), safe=""))
        self._sorted: tuple[int, dict[str, list[str]]] = (0, {})
        self.routes: list[tuple[str, str, Handler]] = [
            ("GET", "", self.overview), ("GET", "accounts", self.accounts), ("GET", "accounts/*", self.account),
            ("POST", "accounts/*/action", self.account_action), ("POST", "accounts/*/limits", self.account_limits),
            ("GET", "clusters", self.clusters), ("POST", "clusters/*/action", self.cluster_action),
            ("GET", "review", self.review), ("POST", "review/*", self.review_resolve), ("GET", "audit", self.audit),
            ("GET", "watermark", self.watermark), ("POST", "watermark", self.watermark), ("GET", "events", self.events),
        ]

    @property
    def engine(self) -> PolicyEngine | None:
        return self._engine

    # -- ASGI -----------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        path: str = scope["path"][len(ROOT):].strip("/")
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_FORM_BYTES:
                await self._send(send, _Response(413, b"Form too large.", [(b"content-type", b"text/plain")]))
                return
            if not message.get("more_body"):
                break
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)) if method == "POST" else {}
        cookies = _cookies(dict(scope["headers"]).get(b"cookie", b"").decode("latin-1"))
        session = self.keys.check(cookies.get(COOKIE))
        try:
            response = await self._route(method, path, query, form, session)
        except Exception:  # a bug must not leak a traceback to the browser; the log has it
            log.exception("console %s %s failed", method, path)
            response = self._page(500, "error.html", None, message="The console failed on this page; the gateway log has the details.")
        await self._send(send, response)

    async def _send(self, send: Send, response: _Response) -> None:
        headers = [*SECURITY_HEADERS, *response.headers]
        if not any(name == b"content-type" for name, _ in headers):
            headers.append((b"content-type", b"text/html; charset=utf-8"))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _route(self, method: str, path: str, query: dict[str, str], form: dict[str, str], session: Session | None) -> _Response:
        if path.startswith("static/") and method == "GET":
            return self._static(path[len("static/"):])
        if path == "login":
            return self._login(method, form, session)
        if path == "logout" and method == "POST":
            if session is None or not self.keys.csrf_ok(session, form.get("csrf")):
                return self._page(403, "error.html", session, message="Sign-out needs the form's CSRF token.")
            return _Response(303, headers=[(b"location", f"{ROOT}/login".encode()), (b"set-cookie", _cookie("", 0))])
        if session is None:
            return _redirect(f"{ROOT}/login")
        if method == "POST":
            if not self.keys.csrf_ok(session, form.get("csrf")):
                return self._page(403, "error.html", session, message="This form is stale or was not sent by the console (CSRF check failed); "
                                                                     "reload the page and try again.")
            if not session.can_act and path != "watermark":
                return self._page(403, "error.html", session, message="Signed in with the viewer token: the console is read-only. "
                                                                     "Sign in with the admin token to act.")
        parts = path.split("/") if path else []
        for route_method, pattern, handler in self.routes:
            pattern_parts = pattern.split("/") if pattern else []
            if route_method == method and len(parts) == len(pattern_parts) and all(
                    p == "*" or p == q for p, q in zip(pattern_parts, parts, strict=True)):
                return await handler(_Request(method, path, query, form, session))
        return self._page(404, "error.html", session, message=f"No console page at {ROOT}/{path}.")

    # -- rendering -------------------------------------------------------------------------------------
    def _page(self, http_status: int, template: str, session: Session | None, /, **context: Any) -> _Response:
        html = self.env.get_template(template).render(session=session, root=ROOT, msg=context.pop("msg", None), **context)
        return _Response(http_status, html.encode())

    def _static(self, name: str) -> _Response:
        path = (HERE / "static" / name).resolve()
        if path.parent != (HERE / "static").resolve() or not path.is_file() or path.suffix not in STATIC_TYPES:
            return _Response(404, b"not found", [(b"content-type", b"text/plain")])
        return _Response(200, path.read_bytes(), [(b"content-type", STATIC_TYPES[path.suffix]), (b"cache-control", b"max-age=3600")])

    def _login(self, method: str, form: dict[str, str], session: Session | None) -> _Response:
        if method == "POST":
            new = self.keys.sign_in(form.get("token", "").strip())
            if new is None:
                log.warning("console sign-in refused (wrong token)")
                return self._page(401, "login.html", None, error="That token is neither the admin nor the viewer token.")
            log.info("console sign-in as %s", new.role)
            return _Response(303, headers=[(b"location", f"{ROOT}/".encode()), (b"set-cookie", _cookie(new.cookie, LIFETIME_S))])
        return self._page(200, "login.html", session, error=None)

    async def _admin(self, method: str, path: str, body: dict[str, Any] | None = None, query: dict[str, str] | None = None) -> Any:
        """Call the admin API in-process; its error message is raised as :class:`UsageError` for the page to show."""
        try:
            result = await self.admin.call(method, f"/admin/v1/{path}", query or {}, orjson.dumps(body or {}))
        except NotFoundError as exc:
            raise UsageError(str(exc)) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"invalid request: {exc}") from None
        if result is None:
            raise UsageError(f"this gateway has no {method} /admin/v1/{path} (is online detection on?)")
        status, obj = result
        if status >= 400:
            message = obj.get("error", {}).get("message") if isinstance(obj, dict) else None
            raise UsageError(str(message or f"HTTP {status}"))
        return obj

    def _status_of(self, account: dict[str, Any] | None, account_id: str, decisions: dict[str, Any]) -> str:
        if account is not None and account.get("status") == "suspended":
            return "suspended"
        decision = decisions.get(account_id)
        return STATUS_OF_ACTION.get(decision.action, "active") if decision is not None else "active"

    # -- pages -------------------------------------------------------------------------------------------
    async def overview(self, request: _Request) -> _Response:
        engine = self.engine
        flagged = engine.flagged() if engine is not None and engine.online else {"accounts": [], "clusters": []}
        since = format_ts(time.time() - 3600)
        store = self.store
        counts = await asyncio.to_thread(lambda: (store.count_accounts(), store.count_events_since(since))) if store else (0, 0)
        reviews = await asyncio.to_thread(store.reviews, "open", 10) if store else []
        open_reviews = await asyncio.to_thread(store.count_reviews, "open") if store else 0
        names = await asyncio.to_thread(store.accounts_by_id, [a["account_id"] for a in flagged["accounts"][:15]]) if store else {}
        labels, traffic, actions = self._traffic()
        scorer = None
        if engine is not None and engine.online:
            scorer = {"backlog": engine.scorer.backlog, "reports": engine.scorer.reports, "scored": engine.scorer.scored_in_report}
        decisions = engine.decisions() if engine is not None else {}
        by_action = collections.Counter(d.action for d in decisions.values())
        return self._page(200, "overview.html", request.session, msg=request.query.get("msg"),
                          accounts_total=counts[0], events_last_hour=counts[1], flagged=flagged, names=names, reviews=reviews,
                          open_reviews=open_reviews,
                          traffic_svg=charts.stacked_bars(labels, traffic, title="requests per interval"),
                          actions_svg=charts.stacked_bars(labels, actions, title="policy actions per interval"),
                          scorer=scorer, sink=self.sink.stats if self.sink is not None else None, by_action=by_action,
                          scored=engine.scored_count() if engine is not None else 0, online=bool(engine and engine.online))

    def _traffic(self, bars: int = 48) -> tuple[list[str], dict[str, list[float]], dict[str, list[float]]]:
        history = list(self.metrics.history)
        history.append(self.metrics.snapshot())  # the interval still running too (not stored: page views must not add samples)
        if len(history) < 2:
            return [], {"allowed": [], "refused": []}, {}
        step = max(1, (len(history) - 1 + bars - 1) // bars)
        points = history[::-1][::step][::-1]
        if points[0] is not history[0]:
            points.insert(0, history[0])
        labels: list[str] = []
        allowed: list[float] = []
        refused: list[float] = []
        action_names = sorted({a for _t, _r, _f, acts in points for a in acts if a != "allow"})
        actions: dict[str, list[float]] = {a: [] for a in action_names}
        for before, after in zip(points, points[1:], strict=False):
            labels.append(time.strftime("%H:%M", time.gmtime(after[0])))
            refused_n = after[2] - before[2]
            refused.append(refused_n)
            allowed.append(after[1] - before[1] - refused_n)
            for name in action_names:
                actions[name].append(after[3].get(name, 0) - before[3].get(name, 0))
        return labels, {"requests": allowed, "refused": refused}, actions

    async def _with_published(self, table: dict[str, dict[str, Any]], account_ids: list[str]) -> tuple[dict[str, dict[str, Any]], str | None]:
        """``table`` plus, with the fleet's central scorer, its published entries of ``account_ids`` (the engine holds only
        the flagged accounts' then), and a note when that table cannot be read now."""
        engine = self.engine
        if engine is None or not engine.scores_elsewhere or not account_ids:
            return table, None
        try:
            found = await asyncio.to_thread(engine.published_entries, account_ids)
        except StateUnavailable as exc:
            log.warning("console: %s", exc)
            return table, ("The risk of accounts below the flag threshold comes from the central scorer's table in Redis, "
                           f"which cannot be read now ({exc}); only flagged accounts show a risk.")
        return ({**table, **found} if found else table), None

    def _risk_sorted(self, band: str = "") -> list[str]:
        """Scored account ids by risk, highest first (``band``: only that risk band); sorted once per scorer report."""
        engine = self.engine
        if engine is None:
            return []
        table = engine.risk_table()
        if self._sorted[0] != id(table):  # one sort per report, not per page view: pages only slice these lists
            ordered = sorted(table.values(), key=lambda e: (-score_of(e), e["account_id"]))
            lists: dict[str, list[str]] = {"": [e["account_id"] for e in ordered], "high": [], "medium": [], "low": []}
            for entry in ordered:
                lists.setdefault(entry.get("risk", "low"), []).append(entry["account_id"])
            self._sorted = (id(table), lists)
        return self._sorted[1].get(band, [])

    async def accounts(self, request: _Request) -> _Response:
        store = self.store
        if store is None:
            return self._page(503, "error.html", request.session, message="The console's account pages need the store.")
        query = request.query
        q, status, risk, sort = query.get("q", "").strip(), query.get("status", ""), query.get("risk", ""), query.get("sort", "risk")
        page = int(query["page"]) if query.get("page", "").isdigit() and int(query["page"]) > 0 else 1
        engine = self.engine
        decisions = engine.decisions() if engine is not None else {}
        table = engine.risk_table() if engine is not None else {}
        accounts: dict[str, dict[str, Any]] = {}
        note = None
        ids: list[str] | None = None  # None: page through the store by creation time instead
        risk_applied = False

        def by_risk(found: list[dict[str, Any]]) -> list[str]:
            accounts.update({a["account_id"]: a for a in found})
            return sorted((a["account_id"] for a in found), key=lambda a: (-score_of(table.get(a)), a))

        if q:  # at most MAX_SEARCH matches: every filter applies in memory
            ids = by_risk(await asyncio.to_thread(store.search_accounts, q))
            if status:
                ids = [a for a in ids if self._status_of(accounts.get(a), a, decisions) == status]
        elif status == "suspended":
            ids = by_risk(await asyncio.to_thread(store.accounts_with_status, "suspended"))
        elif status and status != "active":  # the accounts the policy acts on: a short list in memory
            ids = sorted((a for a, d in decisions.items() if STATUS_OF_ACTION.get(d.action) == status), key=lambda a: (-score_of(table.get(a)), a))
        elif sort == "risk":
            ids = self._risk_sorted(risk)  # the band asked for, already sorted: only sliced below
            risk_applied = True
            note = ("Sorted by risk: the flagged accounts of the fleet's central scorer (the risk snapshot); accounts below "
                    "the flag threshold are not listed here but show their risk on their own page and when sorted by newest."
                    if engine is not None and engine.scores_elsewhere else
                    "Sorted by risk: the accounts the online scorer has seen. Sort by newest to list every account.")
            if status == "active":
                suspended = {a["account_id"] for a in await asyncio.to_thread(store.accounts_with_status, "suspended")}
                ids = [a for a in ids if a not in decisions and a not in suspended]
        if ids is not None:
            if not risk_applied:  # a search or a status list (bounded): the central scorer's entries of all of them
                table, unreadable = await self._with_published(table, ids)
                note = unreadable or note
            if risk and not risk_applied:
                ids = [a for a in ids if (table.get(a) or {}).get("risk") == risk]
            total = len(ids)
            page_ids = ids[(page - 1) * PAGE: page * PAGE]
            accounts.update(await asyncio.to_thread(store.accounts_by_id, [a for a in page_ids if a not in accounts]))
        else:
            exclude = list(decisions) if status == "active" else []
            total = await asyncio.to_thread(store.count_accounts) - len(exclude)
            newest = await asyncio.to_thread(store.newest_accounts, (page - 1) * PAGE, PAGE, exclude)
            if status == "active":
                newest = [a for a in newest if a.get("status") != "suspended"]
            accounts = {a["account_id"]: a for a in newest}
            page_ids = [a["account_id"] for a in newest]
            table, unreadable = await self._with_published(table, page_ids)
            note = unreadable or note
            if risk:
                page_ids = [a for a in page_ids if (table.get(a) or {}).get("risk") == risk]
                note = f"Risk {risk} within this page of newest accounts; sort by risk to filter them all."
        rows = [{"account_id": a, "account": accounts.get(a), "risk": table.get(a), "status": self._status_of(accounts.get(a), a, decisions),
                 "rule": decisions[a].rule if a in decisions else None} for a in page_ids]
        return self._page(200, "accounts.html", request.session, msg=query.get("msg"), rows=rows, q=q, status=status,
                          risk=risk, sort=sort, page=page, pages=max(1, -(-total // PAGE)), total=total, statuses=STATUSES, note=note,
                          query_without_page=urlencode({k: v for k, v in query.items() if k not in ("page", "msg")}))

    async def account(self, request: _Request) -> _Response:
        account_id = request.path.split("/")[1]
        store = self.store
        engine = self.engine
        if store is None:
            return self._page(503, "error.html", request.session, message="The console's account pages need the store.")

        def read() -> tuple[Any, ...]:
            accounts = store.accounts_by_id([account_id])
            return (accounts.get(account_id), store.keys(account_id), store.account_events(account_id, 300),
                    store.audit(target=account_id, limit=30))

        account, keys, events, audit = await asyncio.to_thread(read)
        entry = engine.risk(account_id) if engine is not None else None
        unreadable = None
        if entry is None:
            found, unreadable = await self._with_published({}, [account_id])
            entry = found.get(account_id)
        if account is None and entry is None and not events:
            return self._page(404, "error.html", request.session, message=f"No account {account_id!r} in the store or the scorer.")
        decisions = engine.decisions() if engine is not None else {}
        manual = engine.manual_overrides().get(account_id) if engine is not None else None
        points = []
        networks: collections.Counter[str] = collections.Counter()
        countries: collections.Counter[str] = collections.Counter()
        asns: collections.Counter[str] = collections.Counter()
        installs: collections.Counter[str] = collections.Counter()
        for event in events:
            policy = event.get("policy") or {}
            try:
                points.append((parse_ts(event["ts"]), policy.get("risk"), policy.get("action", "allow")))
            except (KeyError, ValueError):
                continue
            client = event.get("client") or {}
            ip = str(client.get("ip") or "")
            networks[ip.rsplit(".", 1)[0] + ".0/24" if ip.count(".") == 3 else (ip or "unknown")] += 1
            geo = client.get("geo") or {}
            countries[str(geo.get("country") or "unknown")] += 1
            asns[f"AS{geo['asn']}" if geo.get("asn") else "unknown"] += 1
            attestation = event.get("attestation") or {}
            installs[str(attestation.get("install_id") or "none (no valid attestation)")] += 1
        prompts = []
        for event in events[:10]:
            messages = (event.get("request") or {}).get("messages") or []
            last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), None)
            prompts.append({"ts": event["ts"], "text": last, "endpoint": event.get("endpoint"), "status": (event.get("response") or {}).get("status")})
        defaults = self.settings.limits.model_dump()
        overrides = (account or {}).get("limits") or {}
        limits = [{"name": n, "value": overrides.get(n), "default": defaults.get(n), "overridden": n in overrides} for n in defaults]
        return self._page(200, "account.html", request.session, msg=request.query.get("msg"), account_id=account_id, account=account,
                          entry=entry, unreadable=unreadable, central=bool(engine and engine.scores_elsewhere),
                          status=self._status_of(account, account_id, decisions), decision=decisions.get(account_id),
                          manual=manual, keys=keys, events_shown=len(events), audit=audit, prompts=prompts,
                          prompt_mode=self.settings.privacy.prompt_mode, timeline_svg=charts.risk_line(points),
                          networks=networks.most_common(8), countries=countries.most_common(8), asns=asns.most_common(8),
                          installs=installs.most_common(8), limits=limits, actions=ACCOUNT_ACTIONS,
                          cluster=next((c for c in engine.clusters() if c["cluster_id"] == (entry or {}).get("cluster_id")), None)
                          if engine is not None else None)

    async def account_action(self, request: _Request) -> _Response:
        account_id = request.path.split("/")[1]
        return await self._override(request, "accounts", account_id, f"{ROOT}/accounts/{quote(account_id, safe='')}")

    async def _override(self, request: _Request, kind: str, target: str, back: str) -> _Response:
        """A manual override on an account or on every member of a cluster, from a form with an action and a note."""
        action, note = request.form.get("action", ""), request.form.get("note", "").strip()
        if not note:
            return _redirect(back, "A note is required: say why, for the audit trail.")
        try:
            result = await self._admin("POST", f"{kind}/{quote(target, safe='')}/action", {"action": action, "reason": note, "actor": "console"})
        except UsageError as exc:
            return _redirect(back, f"Not done: {exc}")
        if kind == "clusters":
            return _redirect(back, f"{action} applied to the {len(result['accounts'])} accounts of {target}.")
        return _redirect(back, f"{action} applied to {target}.")

    async def account_limits(self, request: _Request) -> _Response:
        account_id = request.path.split("/")[1]
        back = f"{ROOT}/accounts/{quote(account_id, safe='')}"
        limits: dict[str, int | None] = {}
        for name in self.settings.limits.model_dump():
            raw = request.form.get(name, "").strip()
            if raw == "":
                continue
            if not raw.isdigit():
                return _redirect(back, f"Not done: {name} must be a whole number ≥ 0 (or empty for the default), got {raw!r}.")
            limits[name] = int(raw)
        try:
            await self._admin("PUT", f"accounts/{quote(account_id, safe='')}/limits", limits)
        except UsageError as exc:
            return _redirect(back, f"Not done: {exc}")
        return _redirect(back, "Limits saved." + (f" Note: {request.form['note']}" if request.form.get("note") else ""))

    async def clusters(self, request: _Request) -> _Response:
        engine = self.engine
        clusters = engine.clusters() if engine is not None else []
        members = [m for c in clusters for m in c["accounts"]]
        accounts = await asyncio.to_thread(self.store.accounts_by_id, members) if self.store else {}
        decisions = engine.decisions() if engine is not None else {}
        table, unreadable = await self._with_published(engine.risk_table() if engine is not None else {}, members)
        shown = []
        for cluster in clusters:
            rows = [{"account_id": m, "name": (accounts.get(m) or {}).get("name", m), "org": (accounts.get(m) or {}).get("org_id"),
                     "risk": table.get(m), "status": self._status_of(accounts.get(m), m, decisions)} for m in cluster["accounts"]]
            graph = charts.cluster_graph([(r["account_id"], r["name"], (r["risk"] or {}).get("risk", "low")) for r in rows], cluster["shared"])
            shown.append({"cluster": cluster, "rows": rows, "graph": graph})
        return self._page(200, "clusters.html", request.session, msg=request.query.get("msg") or unreadable, clusters=shown,
                          threshold=self.settings.detection.flag_threshold, actions=ACCOUNT_ACTIONS)

    async def cluster_action(self, request: _Request) -> _Response:
        return await self._override(request, "clusters", request.path.split("/")[1], f"{ROOT}/clusters")

    async def review(self, request: _Request) -> _Response:
        status = request.query.get("status", "open")
        page = int(request.query["page"]) if request.query.get("page", "").isdigit() and int(request.query["page"]) > 0 else 1
        store = self.store
        wanted = status if status != "all" else None
        items = await asyncio.to_thread(store.reviews, wanted, PAGE, (page - 1) * PAGE) if store else []
        total = await asyncio.to_thread(store.count_reviews, wanted) if store else 0
        subjects = [str(i["subject"]) for i in items]
        members = [m for i in items if isinstance(i.get("evidence"), dict) for m in i["evidence"].get("accounts", [])]
        accounts = await asyncio.to_thread(store.accounts_by_id, [*subjects, *members]) if store else {}
        return self._page(200, "review.html", request.session, msg=request.query.get("msg"), items=items, status=status, accounts=accounts,
                          total=total, page=page, pages=max(1, -(-total // PAGE)))

    async def review_resolve(self, request: _Request) -> _Response:
        review_id = request.path.split("/")[1]
        decision, note, action = request.form.get("decision"), request.form.get("note", "").strip(), request.form.get("action") or None
        back = f"{ROOT}/review"
        if decision not in ("confirm", "dismiss"):
            return _redirect(back, "Not done: choose confirm or dismiss.")
        if not note:
            return _redirect(back, "A note is required: say why, for the audit trail.")
        body: dict[str, Any] = {"status": "confirmed" if decision == "confirm" else "dismissed", "note": note, "actor": "console"}
        if decision == "confirm" and action:
            body["action"] = action
        try:
            result = await self._admin("POST", f"review/{quote(review_id, safe='')}", body)
        except UsageError as exc:
            return _redirect(back, f"Not done: {exc}")
        applied = f"; {result['applied']} applied to {len(result['accounts'])} account(s)" if result.get("applied") else ""
        return _redirect(back, f"Review {review_id} {result['status']}{applied}.")

    async def audit(self, request: _Request) -> _Response:
        before = request.query.get("before", "")
        target = request.query.get("target") or None
        store = self.store
        rows = await asyncio.to_thread(lambda: store.audit(target=target, before_id=int(before) if before.isdigit() else None,
                                                           limit=PAGE)) if store else []
        return self._page(200, "audit.html", request.session, rows=rows, target=target, more=len(rows) == PAGE,
                          next_before=rows[-1]["id"] if rows else None)

    async def watermark(self, request: _Request) -> _Response:
        text = request.form.get("text", "")
        key_ids = [k.strip() for k in request.form.get("key_ids", "").replace(",", " ").split() if k.strip()]
        result, error = None, None
        if request.method == "POST":
            try:
                result = await self._admin("POST", "watermark/detect", {"text": text, "key_ids": key_ids or None})
            except UsageError as exc:
                error = str(exc)
        return self._page(200, "watermark.html", request.session, text=text, key_ids=" ".join(key_ids), result=result, error=error)

    async def events(self, request: _Request) -> _Response:
        q = request.query
        account_id, endpoint = q.get("account", "").strip() or None, q.get("endpoint", "").strip() or None
        since = until = None
        error = None
        try:
            since = format_ts(parse_ts(q["since"])) if q.get("since") else None
            until = format_ts(parse_ts(q["until"])) if q.get("until") else None
        except ValueError:
            error = "since/until: use an ISO-8601 time such as 2026-12-01T10:00:00Z."
        before = None
        ts, _, seq = q.get("before", "").partition("|")
        if ts and seq.isdigit():
            before = (ts, int(seq))
        rows: list[dict[str, Any]] = []
        store = self.store
        if store is not None and error is None:
            rows = await asyncio.to_thread(lambda: store.search_events(account_id=account_id, endpoint=endpoint, since=since,
                                                                       until=until, before=before, limit=PAGE))
        for row in rows:
            messages = (row.get("request") or {}).get("messages") or []
            row["_prompt"] = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), None)
        more = None
        if len(rows) == PAGE:
            more = urlencode({**{k: v for k, v in q.items() if k != "before"}, "before": f"{rows[-1]['ts']}|{rows[-1]['_seq']}"})
        return self._page(200, "events.html", request.session, rows=rows, account=account_id or "", endpoint=endpoint or "",
                          since=q.get("since", ""), until=q.get("until", ""), error=error, more=more,
                          prompt_mode=self.settings.privacy.prompt_mode)


def _cookies(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out[name] = value
    return out


def _cookie(value: str, max_age: int) -> bytes:
    return f"{COOKIE}={value}; Path={ROOT}; Max-Age={max_age}; HttpOnly; SameSite=Strict".encode()
