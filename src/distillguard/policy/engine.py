"""The policy engine: in-memory decisions per request, fed by the online scorer.

``decide`` is a few dictionary lookups: the risk table, and the action each
account's risk calls for, are replaced whole by the scorer's reader thread;
manual overrides are a dict; thresholds are numbers from the settings. Audit records and review items are written by a
background thread when an account's action *changes*, so a blocked account
sending a thousand requests makes one audit line, not a thousand DB writes.

Manual overrides are durable when there is a registry: ``set_manual`` writes
them to the store synchronously (it is an admin action, not the hot path: call
it from a thread), together with their audit record and a change-counter bump;
``start`` loads them, and the gateway calls ``reload_overrides`` whenever the
registry's change counter moves, so a restart keeps them and other gateway
processes on the same database apply them within their poll interval. A lock
serialises a write (store, then memory) with a reload (store read, then
memory), so a reload that raced with a write cannot put the old state back.
Without a registry they live in memory only.

Risk decisions are durable too (docs/policy.md, "Restarts and several
gateways"): the writer thread merges this process's flagged accounts and
clusters into the store's risk snapshot every ``detection.snapshot_every_s``
and reads back the other processes' (:mod:`distillguard.store.risk`);
``start`` loads the snapshot before serving, so a restarted gateway enforces
its throttles and blocks from the first request, and the scorer replays the
store's most recent events to rebuild its detectors. What this process
enforces is the merged view: per account the higher score of its own scorer's
and another process's entry.

The engine runs whether or not online detection does (``detection.online``):
manual overrides and the attestation requirement are not risk-based and must
hold either way; without online detection there is simply no risk to act on.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from distillguard.config import Settings
from distillguard.policy.alerts import Alerter, cluster_band
from distillguard.policy.decision import ALLOW, Decision
from distillguard.policy.link import ScorerFactory, ScorerLink
from distillguard.policy.online import OnlineScorer
from distillguard.store.registry import Registry
from distillguard.store.risk import RiskDocument, RiskStore

if TYPE_CHECKING:
    from distillguard.state.notify import ChangeNotifier
    from distillguard.state.risk_table import PublishedRisk

__all__ = ["PolicyEngine"]

log = logging.getLogger("distillguard.policy")
REASONING_EVIDENCE = 0.7
LOGPROBS_CAP = 0
STALE_AFTER_S = 30.0  # events waiting and no report for this long: the scorer's decisions are stale (scorer_status)


_RANK = {"allow": 0, "evidence": 0, "flag": 1, "challenge": 1, "degrade": 2, "throttle": 3, "block": 4}


def _score(entry: dict[str, Any]) -> float:
    return float(max(entry["distillation_score"], entry["reseller_score"]))


class PolicyEngine:
    def __init__(self, settings: Settings, registry: Any = None, *, publish_every_s: float = 1.0,
                 risk_store: RiskStore | None = None, notifier: ChangeNotifier | None = None,
                 scorer: ScorerFactory | None = None, published_risk: PublishedRisk | None = None,
                 hold_unflagged: bool = True) -> None:
        """``scorer`` makes the link to the scorer from the report callback; default: a child process (``detection.scorer: local``).

        ``published_risk``: the central scorer's table of every account it scored (state/risk_table.py), which the
        risk endpoint reads for accounts this process holds no entry for (below the flag threshold).
        ``hold_unflagged=False`` (the fleet's central scorer, which serves no requests): of each report only the entries
        that go to the risk snapshot are kept (at or above the threshold, or acted on for shared indicators)."""
        self.settings = settings.detection
        self.online = settings.detection.online
        self.attestation_required = frozenset(settings.attestation.required_for_accounts)
        self.attestation_require_all = settings.attestation.require_all
        self.registry = registry
        self.scorer: ScorerLink = scorer(self._on_report) if scorer is not None else OnlineScorer(
            self._on_report, publish_every_s=publish_every_s, max_backlog=settings.detection.scorer_backlog_max)
        self.alerter = Alerter(settings.alerts)
        self.risk_store = risk_store if risk_store is not None else RiskStore(registry.engine) if isinstance(registry, Registry) else None
        # This process, in the risk snapshot and its notices (a notifier's sender is the same id: it skips its own notices).
        self.writer_id = notifier.sender if notifier is not None else self.new_writer_id()
        self._own_risk: dict[str, dict[str, Any]] = {}  # this process's scorer's latest report
        self._own_clusters: list[dict[str, Any]] = []
        self._shared: RiskDocument = {"ts": 0.0, "accounts": {}, "clusters": {}}  # the store's snapshot, as last read
        self._shared_stamp: float | None = None  # the stored snapshot's time when it was last read or written here
        self.notifier = notifier  # Redis pub/sub with state: redis (state/notify.py): other processes reload at once
        self.published_risk = published_risk
        self.hold_unflagged = hold_unflagged
        self._sync_now = threading.Event()  # set by a new report: merge it into the snapshot without waiting for the tick
        self._view_lock = threading.Lock()  # the reader thread and the writer thread both rebuild the view
        self._report_seq = self._synced_seq = 0
        self._next_sync = 0.0
        self._risk: dict[str, dict[str, Any]] = {}
        self._risk_decisions: dict[str, Decision] = {}
        self._clusters: list[dict[str, Any]] = []
        self._manual: dict[str, tuple[str, str]] = {}  # replaced whole, never mutated: decide() reads it unlocked
        self._manual_lock = threading.Lock()
        self._last_action: dict[str, str] = {}
        self._audit: collections.deque[tuple[str, str, str, dict[str, Any]]] = collections.deque()
        self._reviews_opened: set[str] = set()
        self._memory_audit: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._started = False

    @staticmethod
    def new_writer_id() -> str:
        """An id for this process that a restart does not reuse (host, pid and a random part)."""
        return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        if self.registry is not None:  # before serving anything: a restart must not lift a manual block even once
            self.reload_overrides()
        replay = None
        if self.online and self.risk_store is not None:  # nor a throttle or a risk block
            self._load_snapshot()
            upto_seq = self.risk_store.last_event_seq() if self.settings.replay_max_events > 0 else 0
            if upto_seq > 0:  # live events get higher sequence numbers: none is scored twice
                replay = {"database": self.registry.database_url, "upto_seq": upto_seq,
                          "max_events": self.settings.replay_max_events, "max_age_s": self.settings.replay_max_age_h * 3600.0}
        self._started = True
        self.alerter.start()
        if self.online:  # the scorer is a separate process: only spawned when its scores are wanted
            # The scorer loads the store's shared indicators and reloads them after an import (store/indicators.py).
            self.scorer.start(replay, self.registry.database_url if isinstance(self.registry, Registry) else None)
        self._writer = threading.Thread(target=self._write_loop, name="distillguard-audit", daemon=True)
        self._writer.start()
        if self.notifier is not None:
            self.notifier.start(self._on_notice)

    def close(self) -> None:
        if not self._started:
            return
        self.scorer.close()
        self._stop.set()
        self._sync_now.set()
        self._writer.join(10)
        self._flush_audit()
        self._sync_snapshot(force=True)
        if self.notifier is not None:
            self.notifier.close()
        if self.published_risk is not None:
            self.published_risk.close()
        self.alerter.close()

    # -- hot path ------------------------------------------------------------------------------
    def observe(self, event: dict[str, Any]) -> None:
        if self.online:
            self.scorer.submit(event)

    def decide(self, account_id: str, key_id: str | None, signals: Any = None) -> Decision:
        decision = self._decide(account_id, signals)
        previous = self._last_action.get(account_id, "allow")
        if decision.action != previous:
            self._last_action[account_id] = decision.action
            self._audit.append(("policy", f"policy.{decision.action}", account_id,
                                {"rule": decision.rule, "risk": decision.risk, "previous": previous}))
        return decision

    def _decide(self, account_id: str, signals: Any) -> Decision:
        manual = self._manual.get(account_id)
        if manual is not None:
            action, reason = manual
            if action == "block":
                return Decision("block", "manual", f"This account is blocked: {reason}")
            if action == "throttle":
                return Decision("throttle", "manual", throttle_rpm=self.settings.throttle_requests_per_min)
            if action == "allow":
                return ALLOW
            if action == "degrade":
                return Decision("degrade", "manual", reasoning=self.settings.degrade_reasoning, max_top_logprobs=LOGPROBS_CAP)
            return Decision(action, "manual")
        challenge = self._attestation_challenge(account_id, signals)
        if challenge is not None:
            return challenge
        return self._risk_decisions.get(account_id, ALLOW)

    def _risk_decision(self, entry: dict[str, Any]) -> Decision:
        """The action an account's risk entry calls for (computed once per report, not per request).

        The score's rule, raised to ``detection.indicator_action`` when the
        account matches imported shared indicators (:meth:`_indicated`).
        """
        decision = self._score_decision(entry)
        if not self._indicated(entry):
            return decision
        action = self.settings.indicator_action
        if _RANK[action] <= _RANK[decision.action]:
            return decision
        score = max(entry["distillation_score"], entry["reseller_score"])
        if action == "block":
            return Decision("block", "shared_indicators", "This account is blocked pending review: its traffic matches threat "
                                                          "indicators shared by other providers.", risk=score)
        if action == "throttle":  # a degrade's reasoning rule is kept under the throttle
            return Decision("throttle", "shared_indicators", throttle_rpm=self.settings.throttle_requests_per_min, risk=score,
                            reasoning=decision.reasoning, max_top_logprobs=decision.max_top_logprobs)
        return Decision("flag", "shared_indicators", risk=score)

    def _indicated(self, entry: dict[str, Any]) -> bool:
        """Whether ``detection.indicator_action`` applies: shared-indicator evidence at or above ``indicator_min_score``."""
        if self.settings.indicator_action == "evidence":
            return False
        return any(e["detector"] == "shared_indicators" and e["score"] >= self.settings.indicator_min_score for e in entry["evidence"])

    def _score_decision(self, entry: dict[str, Any]) -> Decision:
        score = max(entry["distillation_score"], entry["reseller_score"])
        s = self.settings
        reasoning = next((e["score"] for e in entry["evidence"] if e["detector"] == "cot_elicitation"), 0.0)
        degrade = reasoning >= REASONING_EVIDENCE and entry["distillation_score"] >= s.flag_threshold
        if s.block_enabled and score >= s.block_threshold:
            return Decision("block", "risk>=block_threshold", "This account is blocked pending review of suspected automated harvesting.",
                            risk=score)
        if score >= s.throttle_threshold:
            return Decision("throttle", "risk>=throttle_threshold", throttle_rpm=s.throttle_requests_per_min, risk=score,
                            reasoning=s.degrade_reasoning if degrade else "keep", max_top_logprobs=LOGPROBS_CAP if degrade else None)
        if degrade:  # reasoning stripped or summarised, as detection.degrade_reasoning says
            return Decision("degrade", "reasoning_elicitation", risk=score, reasoning=s.degrade_reasoning, max_top_logprobs=LOGPROBS_CAP)
        if score >= s.flag_threshold:
            return Decision("flag", "risk>=flag_threshold", risk=score)
        return ALLOW

    def _attestation_challenge(self, account_id: str, signals: Any) -> Decision | None:
        """Rule 2: an account that must attest is served only with a *valid* attestation.

        An invalid, expired, replayed or unknown-key attestation is refused like
        a missing one: otherwise any made-up signature header would satisfy the
        requirement. The message names the status so the user knows what to fix.
        """
        if not (self.attestation_require_all or account_id in self.attestation_required):
            return None
        attestation = getattr(signals, "attestation", None) or {}
        status = attestation.get("status")
        if status == "valid":
            return None
        if status is None:
            problem = "the request carried no attestation"
        else:
            reason = attestation.get("reason")
            problem = f"the request's attestation is {status}" + (f" ({reason})" if reason else "")
        return Decision("challenge", "attestation_required",
                        f"This account must use an attesting client (see docs/attestation.md); {problem}.")

    # -- scorer feed -----------------------------------------------------------------------------
    def _on_report(self, report: dict[str, Any]) -> None:
        with self._view_lock:
            threshold = self.settings.flag_threshold
            self._own_risk = {entry["account_id"]: entry for entry in report["accounts"]
                              if self.hold_unflagged or _score(entry) >= threshold or self._indicated(entry)}
            self._own_clusters = report["clusters"]
            self._report_seq += 1
            self._rebuild_view()
        self._sync_now.set()
        cluster_of = {member: cluster for cluster in self._clusters if cluster["score"] >= threshold for member in cluster["accounts"]}
        self._alert(report)
        for entry in report["accounts"]:
            score = max(entry["distillation_score"], entry["reseller_score"])
            indicated = self._indicated(entry)
            if score < threshold and not indicated:
                continue
            cluster = cluster_of.get(entry["account_id"])
            subject = cluster["cluster_id"] if cluster is not None else entry["account_id"]
            if subject in self._reviews_opened:
                continue
            self._reviews_opened.add(subject)
            if cluster is not None:  # one review item for a hydra, not one per head
                detail = {"score": cluster["score"], "accounts": list(cluster["accounts"]), "shared": list(cluster["shared"]),
                          "evidence": entry["evidence"][:3],
                          "reason": f"cluster of {len(cluster['accounts'])} accounts, score {cluster['score']:.2f}: "
                                    f"shared {', '.join(cluster['shared'][:4]) or 'indicators'}"}
            elif score < threshold:  # below the flag threshold: here for the shared indicators alone
                shared = next(e for e in entry["evidence"] if e["detector"] == "shared_indicators")
                detail = {"score": score, "evidence": entry["evidence"][:3],
                          "reason": f"shared indicators ({self.settings.indicator_action}): {shared['detail']}"}
            else:
                top = entry["evidence"][0]["detail"] if entry["evidence"] else ""
                detail = {"score": score, "evidence": entry["evidence"][:3], "reason": f"risk {score:.2f}: {top}"}
            self._audit.append(("detector", "review.open", subject, detail))

    def _rebuild_view(self) -> None:
        """The risk this process enforces: its own scorer's, raised by other processes' higher entries (hold ``_view_lock``).

        The dicts are built aside and swapped in whole: ``decide`` reads them unlocked.
        """
        me = self.writer_id
        risk = dict(self._own_risk)
        for account, entry in self._shared["accounts"].items():
            if entry.get("writer") == me:
                continue  # my own entries: my scorer's latest report is the authority
            own = risk.get(account)
            if own is None or _score(entry) > _score(own):
                risk[account] = {k: v for k, v in entry.items() if k != "writer"}
        own_ids = {c["cluster_id"] for c in self._own_clusters}
        clusters = list(self._own_clusters) + [{k: v for k, v in c.items() if k != "writer"} for cid, c in self._shared["clusters"].items()
                                               if cid not in own_ids and c.get("writer") != me]
        decisions = {account: self._risk_decision(entry) for account, entry in risk.items()}
        self._risk_decisions = {account: d for account, d in decisions.items() if d is not ALLOW}
        self._risk = risk
        self._clusters = clusters

    def _load_snapshot(self) -> None:
        """Before serving: the stored decisions become the view, and their reviews and actions count as already taken."""
        assert self.risk_store is not None
        document = self.risk_store.load()
        with self._view_lock:
            self._shared = document
            self._rebuild_view()
        self._reviews_opened.update(document["accounts"])
        self._reviews_opened.update(document["clusters"])
        for account, decision in self._risk_decisions.items():
            self._last_action[account] = decision.action
        if document["accounts"] or document["clusters"]:
            log.info("risk snapshot loaded: %d flagged accounts, %d flagged clusters", len(document["accounts"]), len(document["clusters"]))

    def _sync_snapshot(self, *, force: bool = False) -> None:
        """Merge this process's flagged accounts and clusters into the store's snapshot (when its scorer reported since), or read it.

        Runs on the writer thread, every ``detection.snapshot_every_s``: never on the hot path.
        """
        if self.risk_store is None or not self.online or (not force and time.monotonic() < self._next_sync):
            return
        self._next_sync = time.monotonic() + self.settings.snapshot_every_s
        threshold = self.settings.flag_threshold
        merged = False
        try:
            seq = self._report_seq
            if seq != self._synced_seq:
                # below the threshold, an account acted on for its shared indicators goes too: other processes enforce it
                accounts = [e for e in self._own_risk.values() if _score(e) >= threshold or self._indicated(e)]
                clusters = [c for c in self._own_clusters if c["score"] >= threshold]
                document = self.risk_store.merge(self.writer_id, accounts, clusters)
                self._synced_seq = seq
                self._shared_stamp = document["ts"]
                merged = True
            else:
                stamp = self.risk_store.stamp()
                if stamp == self._shared_stamp:
                    return  # nobody merged since it was last read here: nothing to decode
                document = self.risk_store.load()
                self._shared_stamp = stamp
        except Exception as exc:  # the store is down: keep enforcing what we have, try again next time
            log.error("risk snapshot: store unavailable (%s); keeping the current decisions, retrying", exc)
            return
        if merged and self.notifier is not None:
            self.notifier.publish("risk")
        self._adopt(document)

    def _reload_snapshot(self) -> None:
        """Another process merged into the snapshot (its notice): read it now rather than at the next tick."""
        if self.risk_store is not None and self.online:
            self._adopt(self.risk_store.load())

    def _adopt(self, document: RiskDocument) -> None:
        if document["ts"] != self._shared["ts"]:
            with self._view_lock:
                self._shared = document
                self._rebuild_view()

    def _alert(self, report: dict[str, Any]) -> None:
        """Accounts and clusters at the alert level (the alerter de-duplicates; nothing happens without webhooks)."""
        if not self.alerter.enabled:
            return
        for entry in report["accounts"]:
            top = entry["evidence"][0]["detail"] if entry["evidence"] else "no evidence"
            self.alerter.risk_reached("account", entry["account_id"], entry["risk"],
                                      f"account {entry['account_id']} is {entry['risk']} risk: {top}",
                                      {"distillation_score": entry["distillation_score"], "reseller_score": entry["reseller_score"],
                                       "cluster_id": entry["cluster_id"], "evidence": entry["evidence"][:3]})
        for cluster in report["clusters"]:
            band = cluster_band(cluster["score"])
            self.alerter.risk_reached("cluster", cluster["cluster_id"], band,
                                      f"cluster {cluster['cluster_id']} of {len(cluster['accounts'])} accounts is {band} risk "
                                      f"(score {cluster['score']:.2f}): shared {', '.join(cluster['shared'][:4])}",
                                      {"accounts": cluster["accounts"], "score": cluster["score"], "shared": cluster["shared"]})

    def scorer_status(self) -> dict[str, Any]:
        """Whether risk decisions are current, for ``/readyz`` and ``/metrics``.

        ``off`` (no online detection), ``down`` (the worker is gone: the last
        decisions stay in force, new events are not scored), ``stale`` (events
        are waiting and no report came for ``STALE_AFTER_S``, or the worker has
        not reported since it started), else ``ok``. A gateway whose scorer is
        down still serves correctly with the last decisions, so this does not
        make ``/readyz`` fail: it says so beside ``status``.
        """
        if not self.online:
            return {"status": "off", "last_report_age_s": None, "backlog": 0}
        scorer = self.scorer
        at = scorer.last_report_at
        age = None if at is None else round(time.monotonic() - at, 1)
        backlog = scorer.backlog
        if scorer.failed:
            status = "down"
        elif backlog > 0 and (age is None or age > STALE_AFTER_S):
            status = "stale"
        else:
            status = "ok"
        return {"status": status, "last_report_age_s": age, "backlog": backlog}

    # -- reads -------------------------------------------------------------------------------------
    def risk(self, account_id: str) -> dict[str, Any] | None:
        return self._risk.get(account_id)

    def flagged(self) -> dict[str, Any]:
        threshold = self.settings.flag_threshold
        accounts = [e for e in self._risk.values() if max(e["distillation_score"], e["reseller_score"]) >= threshold or self._indicated(e)]
        accounts.sort(key=lambda e: -max(e["distillation_score"], e["reseller_score"]))
        return {"accounts": accounts, "clusters": [c for c in self._clusters if c["score"] >= threshold]}

    def flagged_counts(self) -> tuple[dict[str, int], int]:
        """The accounts :meth:`flagged` lists, by source, and the flagged clusters (for /metrics: no lists built).

        Source ``score``: at or above the flag threshold; ``shared_indicators``: below it, listed because the account
        matches imported shared indicators and ``detection.indicator_action`` acts on them. Each account counts once
        (under ``score`` when both hold), so the two add up to the length of :meth:`flagged`'s accounts.
        """
        threshold = self.settings.flag_threshold
        by_score = indicated = 0
        for e in self._risk.values():
            if max(e["distillation_score"], e["reseller_score"]) >= threshold:
                by_score += 1
            elif self._indicated(e):
                indicated += 1
        return {"score": by_score, "shared_indicators": indicated}, sum(1 for c in self._clusters if c["score"] >= threshold)

    def risk_table(self) -> dict[str, dict[str, Any]]:
        """Every scored account's latest entry (replaced whole by each report: do not mutate; its identity says when it changed).

        With the fleet's central scorer (:attr:`scores_elsewhere`) only the flagged accounts, from the risk snapshot:
        the others' entries are in its published table (:meth:`published_entries`)."""
        return self._risk

    @property
    def scores_elsewhere(self) -> bool:
        """The fleet's central scorer scores this process's traffic: :meth:`risk_table` holds only flagged accounts."""
        return self.published_risk is not None

    def scored_count(self) -> int:
        """Accounts the online scorer scored: those of its latest report here, or the central scorer's count (its heartbeat)."""
        counted = self.scorer.scored_accounts if self.online else None
        return counted if counted is not None else len(self._risk)

    def published_entries(self, account_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The central scorer's published entries of those of ``account_ids`` this process holds none for (blocking: one
        round trip; call it in a thread). Empty without a central scorer; raises ``StateUnavailable`` when Redis cannot be read."""
        if self.published_risk is None:
            return {}
        missing = [a for a in dict.fromkeys(account_ids) if a not in self._risk]
        return self.published_risk.get_many(missing) if missing else {}

    def decisions(self) -> dict[str, Decision]:
        """The accounts whose requests are not simply allowed now (manual overrides, then risk), without auditing anything."""
        acting = {account: d for account, d in self._risk_decisions.items()}
        for account in self._manual:
            acting[account] = self._decide(account, None)
        return {account: d for account, d in acting.items() if d.action != "allow"}

    def clusters(self) -> list[dict[str, Any]]:
        """Every cluster of the latest report (flagged or not), highest score first."""
        return sorted(self._clusters, key=lambda c: -c["score"])

    def cluster_members(self, cluster_id: str) -> list[str]:
        """The accounts of a cluster in the latest report; empty when it is not there (any more)."""
        return next((list(c["accounts"]) for c in self._clusters if c["cluster_id"] == cluster_id), [])

    def set_manual(self, account_id: str, action: str, reason: str, actor: str = "admin") -> None:
        """Set or ``clear`` an account's manual override.

        With a registry this writes to the store first (blocking: call it off
        the event loop) and raises if the store fails, in which case nothing
        changes; the audit record is written in the same transaction.
        """
        with self._manual_lock:
            if self.registry is not None:
                self.registry.set_manual_override(account_id, action, reason, actor=actor)
            else:
                self._audit.append((actor, f"manual.{action}", account_id, {"reason": reason}))
            manual = dict(self._manual)
            if action == "clear":
                manual.pop(account_id, None)
            else:
                manual[account_id] = (action, reason)
            self._manual = manual
        if self.notifier is not None:
            self.notifier.publish("overrides")

    def reload_overrides(self) -> None:
        """Replace the manual overrides with the store's (blocking; the gateway calls it when the change counter moves)."""
        if self.registry is None:
            return
        with self._manual_lock:
            self._manual = self.registry.manual_overrides()

    def manual_overrides(self) -> dict[str, tuple[str, str]]:
        """The manual overrides this engine applies: account → ``(action, reason)``."""
        return dict(self._manual)

    # -- audit writer --------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while not self._stop.is_set():
            self._sync_now.wait(min(0.5, self.settings.snapshot_every_s))
            report_waiting = self._sync_now.is_set()
            self._sync_now.clear()
            if self._stop.is_set():
                return
            self._flush_audit()
            self._sync_snapshot(force=report_waiting)

    def _on_notice(self, kind: str) -> None:
        """Another gateway process changed something (``state.notify``): reload it from the store now."""
        if kind == "overrides":
            self.reload_overrides()
        elif kind == "risk":
            self._reload_snapshot()

    def _flush_audit(self) -> None:
        while self._audit:
            actor, action, target, detail = self._audit.popleft()
            if actor == "policy" and action.startswith("policy."):  # the policy acted (a change of action for the account)
                self.alerter.policy_acted(target, action.partition(".")[2], detail.get("rule"), detail.get("risk"))
            try:
                if self.registry is not None:
                    if action == "review.open":
                        evidence = {k: detail[k] for k in ("accounts", "shared", "evidence")} if "accounts" in detail else detail["evidence"]
                        review = self.registry.add_review(target, detail["reason"], evidence)
                        if "accounts" in detail:
                            self._merge_member_reviews(review["review_id"], target, set(detail["accounts"]))
                    self.registry.record_audit(actor, action, target, detail)
                else:
                    self._memory_audit.append({"ts": time.time(), "actor": actor, "action": action, "target": target, "detail": detail})
            except Exception as exc:  # the audit must not take the gateway down; it is retried
                log.error("audit write failed (%s); will retry", exc)
                self._audit.appendleft((actor, action, target, detail))
                return

    def _merge_member_reviews(self, review_id: str, cluster_id: str, members: set[str]) -> None:
        """Fold the open items of a new cluster's members into the cluster's item: one item per hydra, even for heads
        flagged on their own before the cluster was found (their items are kept, with status ``merged`` and a note)."""
        try:
            for item in self.registry.list_reviews("open"):
                if item["subject"] in members:
                    self.registry.resolve_review(item["review_id"], "merged", "detector", f"merged into {review_id} (cluster {cluster_id})")
        except Exception as exc:  # the cluster's item is stored: retrying the whole record would open it twice
            log.error("could not merge the open items of %s's members into %s: %s", cluster_id, review_id, exc)

    def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        if self.registry is not None:
            return list(self.registry.list_audit(limit))
        return list(reversed(self._memory_audit[-limit:]))

    # -- admin plugin -----------------------------------------------------------------------------------
    async def handle_admin(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, object] | None:
        from distillguard.policy.admin import handle

        if not self.online and (path.endswith("/risk") or path == "/admin/v1/flagged"):
            return None  # the gateway answers 503 detection_disabled: there is no risk without online scoring
        return await handle(self, method, path, query, body)
