"""Admin endpoints owned by the policy engine: risk, flagged, clusters, review queue, audit, manual actions.

A review item's subject is an account or a cluster (``cl_…``, one item per
hydra). Confirming with an ``action`` applies it to every member; dismissing
lifts what the detection caused: each member gets a manual ``allow`` (its
automatic throttle/degrade/block stop at once; ``unblock`` clears that again).

Bodies are validated by the pydantic models below; the gateway's admin API
turns their ``ValidationError`` into a 422 naming the field.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError

from distillguard.state.types import StateUnavailable

if TYPE_CHECKING:
    from distillguard.policy.engine import PolicyEngine

__all__ = ["MANUAL_ACTIONS", "ManualAction", "ReviewResolution", "handle", "review_members"]

log = logging.getLogger("distillguard.policy")

MANUAL_ACTIONS = ("allow", "flag", "throttle", "degrade", "block", "clear")
ManualActionName = Literal["allow", "flag", "throttle", "degrade", "block", "clear"]


class ManualAction(BaseModel):
    """``POST /admin/v1/accounts/{id}/action`` and ``/clusters/{id}/action``: a manual override (docs/policy.md)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    action: ManualActionName
    reason: str | None = Field(default=None, max_length=2000)
    actor: str = Field(default="admin", min_length=1, max_length=200)


class ReviewResolution(BaseModel):
    """``POST /admin/v1/review/{id}``: confirm (optionally applying ``action``) or dismiss a review item."""

    model_config = ConfigDict(extra="forbid", strict=True)
    status: Literal["confirmed", "dismissed"]
    actor: str = Field(default="admin", min_length=1, max_length=200)
    note: str | None = Field(default=None, max_length=2000)
    action: ManualActionName | None = None


def _error(status: int, message: str, error_type: str = "invalid_request_error") -> tuple[int, object]:
    return status, {"error": {"message": message, "type": error_type, "code": None}}


async def _set_manual(engine: PolicyEngine, account_id: str, action: str, reason: str, actor: Any) -> tuple[int, object] | None:
    """Apply a manual override; with a registry it is written to the store first, off the event loop.

    If the store fails the override is applied nowhere (not even in this
    process): the answer is 503 and the admin can retry.
    """
    try:
        await asyncio.to_thread(engine.set_manual, account_id, action, reason, str(actor))
    except SQLAlchemyError as exc:
        log.error("manual override for %s not saved: %s", account_id, exc)
        return _error(503, f"The override was not applied: the store failed ({type(exc).__name__}); retry.")
    return None


async def _missing_account(engine: PolicyEngine, account_id: str) -> tuple[int, object] | None:
    """A 404 when the store knows no such account (a typo'd id would otherwise "block" nobody and answer 200).

    Without a store there is nothing to check against; ``clear`` is never
    checked, so an override left on a since-deleted account can be lifted.
    """
    if engine.registry is None:
        return None
    try:
        found = await asyncio.to_thread(engine.registry.get_account, account_id)
    except SQLAlchemyError as exc:
        log.error("manual override for %s not saved: %s", account_id, exc)
        return _error(503, f"The override was not applied: the store failed ({type(exc).__name__}); retry.")
    if found is None:
        return _error(404, f"account {account_id!r} does not exist (see GET /admin/v1/accounts)", "not_found_error")
    return None


def _not_scored(engine: PolicyEngine, account_id: str) -> tuple[int, object]:
    """The 404 for an existing account that this process holds no risk entry for, saying why in words.

    DESIGN §7: a 200 from this endpoint is a report's account entry, so an
    account with no entry cannot get a 200 (a client polling until 200 and
    then reading ``distillation_score`` must keep working). The code
    ``account_not_scored`` tells it from an unknown account
    (whose 404 carries no code). Why there may be no entry: with the fleet's
    central scorer, every account it scored is in its published risk table
    (state/risk_table.py), so "no entry" means no scored traffic yet (or not
    reported yet: reports come every second or so). Otherwise a scorer keeps
    every account it scored, but a process learns other gateways' scorers'
    results only from the risk snapshot, which holds the accounts at or above
    ``flag_threshold`` (docs/policy.md): "no entry" means below that threshold
    wherever it was scored, or no scored traffic yet.
    """
    if engine.published_risk is not None:
        message = (f"Account {account_id!r} exists but has no risk entry: the fleet's central scorer has published none "
                   "for it, so it has sent no scored traffic yet (or the scorer has not reported since its first request: "
                   "reports come every second or so; the scorer may be down, see /readyz).")
    else:
        threshold = engine.settings.flag_threshold
        where = ("the fleet's central scorer publishes" if engine.settings.scorer == "central"
                 else "this process's scorer has not scored it, and other gateways' scorers publish")
        message = (f"Account {account_id!r} exists but has no risk entry here: {where} only accounts at or above "
                   f"flag_threshold {threshold:g} to the risk snapshot, so it is below {threshold:g} wherever it was "
                   f"scored, or has sent no scored traffic yet.")
    return 404, {"error": {"message": message, "type": "not_found_error", "code": "account_not_scored"}}


def review_members(engine: PolicyEngine, review: dict[str, Any]) -> list[str]:
    """The accounts a review item is about: the account itself, or a cluster's members then and now."""
    subject = str(review["subject"])
    if not subject.startswith("cl_"):
        return [subject]
    evidence = review.get("evidence")
    then = list(evidence.get("accounts", [])) if isinstance(evidence, dict) else []
    return sorted(set(then) | set(engine.cluster_members(subject)))


async def handle(engine: PolicyEngine, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, object] | None:
    parts = path.split("/")[3:]
    registry = engine.registry
    if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "risk" and method == "GET":
        entry = engine.risk(parts[1])
        if entry is None and engine.published_risk is not None:  # the fleet's central scorer: every account it scored
            try:
                entry = await asyncio.to_thread(engine.published_risk.get, parts[1])
            except StateUnavailable as exc:
                log.error("risk of %s: %s", parts[1], exc)
                return _error(503, f"The risk of {parts[1]!r} cannot be read now: {exc}. Retry; accounts at or above "
                                   "flag_threshold are still answered from the risk snapshot.")
        if entry is not None:
            return 200, {**entry, "scored": True}
        if registry is None:  # nothing to tell an unknown account from an unscored one
            return _error(404, f"No risk yet for account {parts[1]!r}: it has sent no scored traffic.")
        missing = await _missing_account(engine, parts[1])
        return missing if missing is not None else _not_scored(engine, parts[1])
    if parts == ["flagged"] and method == "GET":
        return 200, engine.flagged()
    if parts == ["audit"] and method == "GET":
        limit = query.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= 10_000:
            return _error(422, f"limit: expected an integer from 1 to 10000, got {limit!r}")
        return 200, {"data": await asyncio.to_thread(engine.audit_log, int(limit))}
    if parts == ["review"] and method == "GET":
        if registry is None:
            return _error(503, "The review queue needs the store.")
        return 200, {"data": await asyncio.to_thread(registry.list_reviews, query.get("status", "open") or None)}
    if len(parts) == 2 and parts[0] == "review" and method == "POST":
        if registry is None:
            return _error(503, "The review queue needs the store.")
        resolution = ReviewResolution.model_validate_json(body or b"{}")
        status, action, actor, note = resolution.status, resolution.action, resolution.actor, resolution.note
        if action is not None and status != "confirmed":
            return _error(422, f"action: only with status 'confirmed'; got {action!r} with {status!r}")
        reviews = await asyncio.to_thread(registry.list_reviews, None)
        review = next((r for r in reviews if r["review_id"] == parts[1]), None)
        if review is None:
            return _error(404, f"review {parts[1]!r} does not exist (see GET /admin/v1/review)")
        await asyncio.to_thread(registry.resolve_review, parts[1], status, actor, note)
        members = review_members(engine, review)
        applied = action if status == "confirmed" else "allow"
        if applied:
            reason = f"review {parts[1]} {status}" + (f": {note}" if note else "")
            for member in members:
                failed = await _set_manual(engine, member, applied, reason, actor)
                if failed is not None:
                    return failed
        return 200, {"review_id": parts[1], "status": status, "subject": review["subject"], "accounts": members, "applied": applied}
    if parts == ["clusters"] and method == "GET":
        return 200, {"data": engine.clusters()}
    if len(parts) == 3 and parts[0] == "clusters" and parts[2] == "action" and method == "POST":
        manual = ManualAction.model_validate_json(body or b"{}")
        members = engine.cluster_members(parts[1])
        if not members:
            return _error(404, f"cluster {parts[1]!r} is not in the latest report (see GET /admin/v1/clusters)")
        reason = (manual.reason or "no reason given") + f" (cluster {parts[1]})"
        for member in members:
            failed = await _set_manual(engine, member, manual.action, reason, manual.actor)
            if failed is not None:
                return failed
        return 200, {"cluster_id": parts[1], "action": manual.action, "accounts": members}
    if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "action" and method == "POST":
        manual = ManualAction.model_validate_json(body or b"{}")
        if manual.action != "clear":
            missing = await _missing_account(engine, parts[1])
            if missing is not None:
                return missing
        failed = await _set_manual(engine, parts[1], manual.action, manual.reason or "no reason given", manual.actor)
        if failed is not None:
            return failed
        return 200, {"account_id": parts[1], "action": manual.action}
    return None
