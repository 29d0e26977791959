"""Admin endpoints owned by the policy engine: risk, flagged, clusters, review queue, audit, manual actions.

A review item's subject is an account or a cluster (``cl_…``, one item per
hydra). Confirming with an ``action`` applies it to every member; dismissing
lifts what the detection caused: each member gets a manual ``allow`` (its
automatic throttle/degrade/block stop at once; ``unblock`` clears that again).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from distillguard.policy.engine import PolicyEngine

__all__ = ["MANUAL_ACTIONS", "handle", "review_members"]

log = logging.getLogger("distillguard.policy")

MANUAL_ACTIONS = ("allow", "flag", "throttle", "degrade", "block", "clear")


def _error(status: int, message: str) -> tuple[int, object]:
    return status, {"error": {"message": message, "type": "invalid_request_error", "code": None}}


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
        if entry is None:
            return _error(404, f"No risk yet for account {parts[1]!r}: it has sent no scored traffic.")
        return 200, entry
    if parts == ["flagged"] and method == "GET":
        return 200, engine.flagged()
    if parts == ["audit"] and method == "GET":
        return 200, {"data": await asyncio.to_thread(engine.audit_log, int(query.get("limit", "100")))}
    if parts == ["review"] and method == "GET":
        if registry is None:
            return _error(503, "The review queue needs the store.")
        return 200, {"data": await asyncio.to_thread(registry.list_reviews, query.get("status", "open") or None)}
    if len(parts) == 2 and parts[0] == "review" and method == "POST":
        if registry is None:
            return _error(503, "The review queue needs the store.")
        data: dict[str, Any] = orjson.loads(body or b"{}")
        status, action, actor = data.get("status", ""), data.get("action"), str(data.get("actor") or "admin")
        if status not in ("confirmed", "dismissed"):
            return _error(422, f"status: expected 'confirmed' or 'dismissed', got {status!r}")
        if action is not None and (status != "confirmed" or action not in MANUAL_ACTIONS):
            return _error(422, f"action: only with status 'confirmed', one of {list(MANUAL_ACTIONS)}; got {action!r}")
        reviews = await asyncio.to_thread(registry.list_reviews, None)
        review = next((r for r in reviews if r["review_id"] == parts[1]), None)
        if review is None:
            return _error(404, f"review {parts[1]!r} does not exist (see GET /admin/v1/review)")
        await asyncio.to_thread(registry.resolve_review, parts[1], status, actor, data.get("note"))
        members = review_members(engine, review)
        applied = action if status == "confirmed" else "allow"
        if applied:
            reason = f"review {parts[1]} {status}" + (f": {data['note']}" if data.get("note") else "")
            for member in members:
                failed = await _set_manual(engine, member, applied, reason, actor)
                if failed is not None:
                    return failed
        return 200, {"review_id": parts[1], "status": status, "subject": review["subject"], "accounts": members, "applied": applied}
    if parts == ["clusters"] and method == "GET":
        return 200, {"data": engine.clusters()}
    if len(parts) == 3 and parts[0] == "clusters" and parts[2] == "action" and method == "POST":
        data = orjson.loads(body or b"{}")
        action = data.get("action")
        if action not in MANUAL_ACTIONS:
            return _error(422, f"action: expected one of {list(MANUAL_ACTIONS)}, got {action!r}")
        members = engine.cluster_members(parts[1])
        if not members:
            return _error(404, f"cluster {parts[1]!r} is not in the latest report (see GET /admin/v1/clusters)")
        reason = str(data.get("reason") or "no reason given") + f" (cluster {parts[1]})"
        for member in members:
            failed = await _set_manual(engine, member, action, reason, data.get("actor", "admin"))
            if failed is not None:
                return failed
        return 200, {"cluster_id": parts[1], "action": action, "accounts": members}
    if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "action" and method == "POST":
        data = orjson.loads(body or b"{}")
        action = data.get("action")
        if action not in MANUAL_ACTIONS:
            return _error(422, f"action: expected one of {list(MANUAL_ACTIONS)}, got {action!r}")
        failed = await _set_manual(engine, parts[1], action, str(data.get("reason") or "no reason given"), data.get("actor", "admin"))
        if failed is not None:
            return failed
        return 200, {"account_id": parts[1], "action": action}
    return None
