"""The Scanner: every detector fed the same events, combined into calibrated scores and a report.

Combination (docs/detection.md): each detector's score is already on a fixed
[0, 1] scale; the distillation score is a logistic function of their weighted
sum, with weights and bias fixed in code (``DISTILL_WEIGHTS``) and each
independent family's part capped (``DISTILL_FAMILIES``, ``FAMILY_CAP``: one
family alone stays below high, two reach it), so the same
behaviour always yields the same score whatever else is in the log. It is
then scaled by how *sustained* the account's extraction is
(``burst_factor``): a one-off burst — a benchmark evaluation — cannot reach the
high band however it is worded, because distillation is extraction sustained
over days. Cluster membership then lifts accounts that look light alone: to
0.9 × the cluster's score, or to the members' evidence pooled as one actor
(``campaign_pooled``) when attribution ties them tightly — each scaled by how
strongly that member is tied to its cluster (``Cluster.tie``), so an account
placed beside a fleet by traits strangers share is not scored as the fleet. The
reseller score is the same construction over the sharing, relay, consistency
and timing evidence.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from distillguard.detect.accounts import AccountMeta
from distillguard.detect.base import Detector, Evidence, logistic, typical
from distillguard.detect.clustering import Cluster, ClusterCache, FingerprintCollector, find_clusters
from distillguard.detect.consistency import Consistency
from distillguard.detect.context import ContextReader, EventContext
from distillguard.detect.coverage import CoverageSweep
from distillguard.detect.economics import TokenEconomics
from distillguard.detect.pivot import ModelPivot
from distillguard.detect.reasoning import ReasoningElicitation
from distillguard.detect.relay import RelaySharing
from distillguard.detect.rotation import NetworkRotation
from distillguard.detect.shared_indicators import SharedIndicators
from distillguard.detect.sharing import KeySharing
from distillguard.detect.sustained import SustainedExtraction, burst_factor
from distillguard.detect.templates import TemplatedPrompts
from distillguard.detect.timing import Timing
from distillguard.events import parse_ts
from distillguard.indicators.model import IndicatorSet

__all__ = ["DISTILL_BIAS", "DISTILL_FAMILIES", "DISTILL_WEIGHTS", "FAMILY_CAP", "POOL_PRIVATE_FULL", "RESELLER_BIAS", "RESELLER_WEIGHTS",
           "SECOND_FAMILY", "Scanner", "attributed", "burst_factor", "distill_logit", "risk_band"]

DISTILL_BIAS = -5.0
DISTILL_WEIGHTS = {"cot_elicitation": 7.0, "coverage_sweep": 3.0, "token_economics": 2.0, "templated_prompts": 1.0,
                   "timing": 1.5, "model_pivot": 3.0, "network_rotation": 4.0, "consistency": 1.0, "sustained_extraction": 1.5,
                   "shared_indicators": 2.5}  # present only with indicators supplied (detect/shared_indicators.py)
# The independent families of distillation evidence, and the most any one of them adds inside σ: 6.0, so one family
# alone — a learner's step-by-step wording, however often; a sweep's shape; rotating networks — reaches at most
# σ(−5 + 6) ≈ 0.73 (medium), and only a second family takes an account to high (≥ 0.8, σ⁻¹(0.8) + 5 ≈ 6.39).
# Only the wording family's weights (7 + 1) exceed the cap; every other family's sum is below it.
DISTILL_FAMILIES = {"cot_elicitation": "wording", "templated_prompts": "wording", "coverage_sweep": "shape",
                    "token_economics": "shape", "timing": "volume over time", "sustained_extraction": "volume over time",
                    "network_rotation": "network", "consistency": "network", "model_pivot": "release",
                    "shared_indicators": "indicators"}
FAMILY_CAP = 6.0
# What the other families together must add before they count as a second family: below it, an account whose
# strongest family is at the cap stays at the cap, σ(−5 + 6) ≈ 0.73. Without it, crumbs of other families — a
# learner's round-the-clock hours (timing 0.38 → 0.58), single-turn share (coverage 0.05 → 0.15), answer lengths —
# took a learner asking for reasoning in every prompt from 0.73 to 0.86 (`high`). One family with a third of its
# strength (a sweep's shape at 0.33: 1.0) is a second family.
SECOND_FAMILY = 1.0
RESELLER_BIAS = -4.0
RESELLER_WEIGHTS = {"key_sharing": 8.0, "relay_sharing": 6.0, "consistency": 1.5, "timing": 1.0}
HIGH, MEDIUM = 0.8, 0.5
SHOWN_AT_ZERO = ("cot_elicitation", "key_sharing")  # evidence an entry lists even at score 0; others only above it
# How strongly a cluster's members must be tied (its coordination) before their pooled evidence counts for each of
# them: logistic(coordination; midpoint, width).
POOL_GATE = (0.5, 0.08)
# What the gate reads: the cluster's coordination, or — when its typical member is tied to the others by private
# evidence — its size × how private that evidence is, counted fully from POOL_PRIVATE_FULL (attributed()).
POOL_PRIVATE_FULL = 0.5
# In a cluster's pooled score, how strongly attribution ties the members (its coordination, in [0, 1]) is one more
# family of evidence beside the detectors', weighted as the sweep's shape is: a tight fleet alone stays low
# (σ(−5 + 3) ≈ 0.12), a tight fleet sending a sweep is medium, and with a sweep's volume sustained it is high —
# three independent families, none of them the wording.
POOL_TIED_WEIGHT = 3.0


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _rank(entry: Mapping[str, Any]) -> float:
    """Where an entry goes in the report: highest score first (as a sort key, its negation)."""
    return -max(float(entry["distillation_score"]), float(entry["reseller_score"]))


def _shown(evidence: list[Evidence]) -> list[Evidence]:
    """The evidence an entry lists: above zero, or one of ``SHOWN_AT_ZERO``."""
    return [e for e in evidence if e.score > 0.0 or e.detector in SHOWN_AT_ZERO]


def attributed(cluster: Cluster) -> float:
    """How surely a cluster's members are one actor, in [0, 1]: what the pooled gate (``POOL_GATE``) reads.

    Coordination counts the link families tying the members against three (content, time, infra, meta), so a fleet
    tied by two — a private system prompt and the operator's payment card, say — had coordination about 0.65 and its
    gate, σ((0.65 − 0.5) / 0.08) = 0.87, held its pooled score below 0.87 however strong the evidence pooled was
    (below high at 0.6). Two families are what every link needs already; what says the members are one actor is that
    those ties are *private* — shared by them and by almost no stranger (``Cluster.private``: its typical member's
    private link evidence, net of chance). So the gate reads the larger of the coordination and the cluster's size ×
    ``min(1, private ÷ POOL_PRIVATE_FULL)``. Strangers tied only by what strangers share have private evidence near
    0 (they are not even admitted to a cluster, ``clustering.admitted``), so nothing changes for them.
    """
    size = logistic(len(cluster.accounts), 5, 1.5)
    return max(cluster.coordination, size * min(1.0, cluster.private / POOL_PRIVATE_FULL))


def distill_logit(by_name: Mapping[str, float]) -> float:
    """The distillation score's argument to σ: the bias plus each family's weighted evidence, capped (``FAMILY_CAP``);
    while the families other than the strongest add less than ``SECOND_FAMILY`` together, at most the bias plus the cap."""
    families: dict[str, float] = {}
    for name, weight in DISTILL_WEIGHTS.items():
        family = DISTILL_FAMILIES[name]
        families[family] = families.get(family, 0.0) + weight * by_name.get(name, 0.0)
    capped = sorted((min(FAMILY_CAP, v) for v in families.values()), reverse=True)
    total = sum(capped)
    if total - capped[0] < SECOND_FAMILY:
        total = min(total, FAMILY_CAP)
    return DISTILL_BIAS + total


def risk_band(score: float) -> str:
    return "high" if score >= HIGH else "medium" if score >= MEDIUM else "low"


class Scanner:
    """Incremental detection over events v1; ``report()`` gives the scan report v1 (DESIGN §5)."""

    def __init__(self, accounts: Mapping[str, AccountMeta] | None = None, indicators: IndicatorSet | None = None) -> None:
        """``accounts``: the operator's account metadata (`scan --accounts`, :func:`distillguard.detect.accounts.read_accounts`);
        ``indicators``: other providers' shared indicators (`scan --indicators`), matched by :class:`SharedIndicators`."""
        self.metadata: Mapping[str, AccountMeta] = accounts or {}
        self.reasoning = ReasoningElicitation()
        self.coverage = CoverageSweep()
        self.templates = TemplatedPrompts()
        self.timing = Timing()
        self.sustained = SustainedExtraction()
        self.pivot = ModelPivot()
        self.economics = TokenEconomics()
        self.relay = RelaySharing()
        self.rotation = NetworkRotation()
        self.detectors: list[Detector] = [self.reasoning, self.coverage, self.economics, self.templates, self.timing,
                                          self.pivot, KeySharing(), self.rotation, Consistency(), self.relay,
                                          self.sustained]
        if indicators is not None and len(indicators):
            self.detectors.append(SharedIndicators(indicators))
        # The detectors that read the prompt get it worked out once per event (an EventContext) rather than once each.
        self._context_readers: tuple[ContextReader, ...] = (self.reasoning, self.coverage, self.templates, self.sustained, self.relay)
        self._others = tuple(d for d in self.detectors if d not in self._context_readers)
        self.fingerprints = FingerprintCollector()
        self.events = 0
        self.accounts: dict[str, int] = {}
        self.skipped = 0
        # Reused by report() while an account's frame or bucket set is unchanged: the online scorer reports every
        # second, and most accounts' sets do not change from one report to the next. Made on the second report,
        # so a one-report scan does not hold signatures and overlaps it will never reuse.
        self._cluster_cache: ClusterCache | None = None
        self._reports = 0
        # Incremental reports: an account's evidence depends on its own events only — except model_pivot's, which
        # also depends on when each model first appeared — so report() recomputes only the accounts updated since
        # the last one (all of them when a model first appears) and reuses the rest's evidence and report entry.
        # At 100,000 accounts a full report cost ~15 CPU-s; the online scorer reports every second or so.
        self._dirty: set[str] = set()
        # Per account: its combined scores and the report (generation) that computed them. The evidence itself is
        # kept only for the report that computed it (``_fresh``) and recomputed when an unchanged account's entry
        # must be rebuilt (its cluster changed) or a cluster pools it: ~11 Evidence objects per account held across
        # reports cost ~1.5 KB each of 100,000 accounts, and recomputing them from unchanged state gives the same.
        self._evidence_cache: dict[str, tuple[tuple[float, float, float, float], int]] = {}
        self._fresh: dict[str, list[Evidence]] = {}
        self._entry_cache: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._releases_seen: dict[str, float] = {}
        self._last_clusters: list[Cluster] | None = None
        # The last report's order, (−score, account) per account, and the members of its clusters: a report re-ranks
        # only the entries it rebuilds and merges them into the rest, which keep their order (``report``). Not the
        # entries themselves: an updated account's old entry must go before its new evidence is made (``_refresh``).
        self._ranked: list[tuple[float, str]] | None = None
        self._members_before: set[str] = set()
        self.cluster_cost_s = 0.0  # CPU seconds the last report spent clustering (this thread's)
        # ... and re-scoring the accounts updated since the one before, their evidence and entries (what a later report
        # would pay as well: scorer_worker.ReportCadence budgets only the rest of a report under steady load)
        self.rescore_cost_s = 0.0
        # The accounts whose entry the last report built anew; every other entry is the very object of the report before
        # (the central scorer's risk table publishes only these, state/risk_table.py).
        self.rebuilt: set[str] = set()

    def set_indicators(self, indicators: IndicatorSet) -> None:
        """Match ``indicators`` from now on (a running scorer's store had new ones imported, store/indicators.py).

        With indicators already loaded the detector keeps its counts, and later
        events are matched against the new set; otherwise the detector starts
        now, so its share of matching requests counts the events from here on.
        """
        current = next((d for d in self.detectors if isinstance(d, SharedIndicators)), None)
        if current is not None:
            current.indicators = indicators
            return
        if not len(indicators):
            return
        self.detectors.append(SharedIndicators(indicators))
        self._others = tuple(d for d in self.detectors if d not in self._context_readers)

    def update(self, event: Mapping[str, Any]) -> None:
        account = event.get("account_id")
        if account is None:
            self.events += 1
            self.skipped += 1  # refused before authentication: no account to score
            return
        if "_t" not in event:
            try:
                # A shallow copy: the caller's event may be on its way to the store too.
                event = {**event, "_t": parse_ts(event["ts"])}
            except (KeyError, ValueError, TypeError):
                self.skipped += 1
                return
        self.events += 1
        self.accounts[account] = self.accounts.get(account, 0) + 1
        self._dirty.add(account)
        context = EventContext(event)
        for reader in self._context_readers:
            reader.update_with(context)
        for detector in self._others:
            detector.update(event)
        self.fingerprints.update(event)

    # -- scoring ------------------------------------------------------------------------------------
    def _evidence(self, account: str) -> list[Evidence]:
        found = []
        for detector in self.detectors:
            evidence = detector.evidence(account)
            if evidence is not None:
                found.append(evidence)
        return found

    def _combine(self, account: str, evidence: list[Evidence]) -> tuple[float, float, float, float]:
        """(distillation before the burst factor, how much the account is a one-off burst, reseller, and how much the
        account looks like a distiller before the burst factor — the distillation score with its eliciting share read at
        ``reasoning.INTENT_SCALE``, what attribution's background reads: ``_clusters``)."""
        by_name = {e.detector: e.score for e in evidence}
        distill = _sigmoid(distill_logit(by_name))
        resell = _sigmoid(RESELLER_BIAS + sum(w * by_name.get(n, 0.0) for n, w in RESELLER_WEIGHTS.items()))
        looks = distill
        intent = self.reasoning.intent(account)
        if intent is not None and intent != by_name.get(self.reasoning.name, 0.0):
            looks = _sigmoid(distill_logit({**by_name, self.reasoning.name: intent}))
        return distill, self.sustained.burst(account), resell, looks

    def scores(self) -> dict[str, tuple[float, float]]:
        """Per-account (distillation, reseller) before cluster lift: cheap, for checkpoints."""
        out = {}
        for account in self.accounts:
            distill, burst, resell, _ = self._combine(account, self._evidence(account))
            out[account] = (distill * burst_factor(burst), resell)
        return out

    def _clusters(self, own: dict[str, float]) -> list[Cluster]:
        self._reports += 1
        if self._cluster_cache is None and self._reports > 1:
            self._cluster_cache = ClusterCache()
        started = time.thread_time()
        clusters = find_clusters(self.fingerprints, self.templates, {a: self.timing.buckets(a) for a in self.accounts}, own,
                                 self.metadata, self._cluster_cache)
        self.cluster_cost_s = time.thread_time() - started
        self._last_clusters = clusters
        return clusters

    def _refresh(self) -> set[str]:
        """Recompute the evidence of the accounts updated since the last report (of all, when a model's first sight moved);
        which accounts those were."""
        releases = dict(self.pivot.first_seen)  # a handful of models: compared whole (a late event may move one earlier)
        if releases != self._releases_seen:
            self._releases_seen = releases
            self._dirty = set(self.accounts)
        cache = self._evidence_cache
        entries = self._entry_cache
        generation = self._reports
        fresh = self._fresh = {}
        started = time.thread_time()
        for account in self._dirty:
            # Its entry is rebuilt in this report whatever happens (its generation changes): let the old one go before
            # the new evidence is made, not after, so that a report over many updated accounts does not hold both.
            entries.pop(account, None)
            found = self._evidence(account)
            cache[account] = (self._combine(account, found), generation)
            fresh[account] = _shown(found)
        refreshed, self._dirty = self._dirty, set()
        self.rescore_cost_s = time.thread_time() - started
        return refreshed

    def _evidence_of(self, account: str) -> list[Evidence]:
        """An account's evidence as of the last refresh, as far as its entry or a cluster's pooled score reads it (a zero
        score reads as absent): this report's, or recomputed from its unchanged state."""
        found = self._fresh.get(account)
        if found is None:
            found = self._fresh[account] = _shown(self._evidence(account))
        return found

    def _pooled(self, cluster: Cluster) -> Evidence | None:
        """A cluster's members scored together, as the one actor attribution says they are (``campaign_pooled``).

        Distillation is extraction sustained across days *and accounts*: a fleet of 120 accounts sending a few
        requests a day each has, per account, too little to score, but together it sends a sweep's volume with a
        sweep's shape. The six detectors whose evidence is counts (elicitation share, coverage and single-turn
        share, answer lengths and sampling parameters, volume and persistence of what was extracted, fresh
        networks beyond a day's third: :meth:`NetworkRotation.pooled`, the share of a release's first day on the new
        model: :meth:`ModelPivot.pooled`) are recomputed over the members' pooled
        counts — persistence across accounts counting as persistence across
        days, as far as coordination ties them (:meth:`SustainedExtraction.pooled`); the other detectors enter at
        the members' median, and the cluster's coordination is one more family (``POOL_TIED_WEIGHT``): a fleet's
        attribution, a sweep's shape and its sustained volume are three independent families that together reach
        high, where any one of them alone does not. The result is scaled like an account's — by the pooled
        burst, which coordination relieves as in :meth:`report` unless the typical member is itself a one-off batch
        job — and then by how strongly attribution ties the
        members (``POOL_GATE``: a loosely tied group is not taken to be one actor). Every member gets at least it.
        """
        members = cluster.accounts
        gate = logistic(attributed(cluster), POOL_GATE[0], POOL_GATE[1])
        if gate < 0.05:
            return None
        pooled = (self.reasoning.pooled(members), self.coverage.pooled(members), self.economics.pooled(members),
                  self.sustained.pooled(members, across=cluster.coordination), self.rotation.pooled(members),
                  self.pivot.pooled(members))
        together = [e for e in pooled if e is not None]
        by_name = {e.detector: e.score for e in together}
        for name in DISTILL_WEIGHTS:
            if name not in by_name:
                by_name[name] = typical(next((e.score for e in self._evidence_of(a) if e.detector == name), 0.0)
                                        for a in members if a in self._evidence_cache)
        distill = _sigmoid(distill_logit(by_name) + POOL_TIED_WEIGHT * cluster.coordination)
        # Coordination relieves the pooled burst (a fleet's first day is not a one-off batch) — unless the members
        # are each a one-off batch job themselves: several evaluation runs tied together are still one-off runs.
        typical_burst = typical(self.sustained.burst(a) for a in members)
        distill *= burst_factor(max(min(self.sustained.pooled_burst(members), 1.0 - cluster.coordination), typical_burst))
        score = distill * gate
        parts = "; ".join(f"{e.detector}: {e.detail}" for e in together)
        return Evidence("campaign_pooled", score,
                        f"the {len(members)} accounts of {cluster.cluster_id} together: {parts} — scored as one actor "
                        f"{distill:.2f} with how strongly they are tied as one more family of evidence, × {gate:.2f} for it "
                        f"(coordination {cluster.coordination:.2f}, private ties {cluster.private:.2f})",
                        numbers={"pooled_score": round(distill, 4), "gate": round(gate, 3), "members": len(members),
                                 **{f"pooled_{e.detector}": round(e.score, 4) for e in together}})

    def report(self, *, recluster: bool = True) -> dict[str, Any]:
        """The scan report v1. ``recluster=False`` (the online scorer, between clusterings) reuses the clusters found
        by the last report that clustered — clustering is the part whose cost grows with the accounts linked — and
        sets ``cluster_cost_s`` to 0; accounts' own scores are always current."""
        refreshed = self._refresh()
        cached = self._evidence_cache
        if recluster or self._last_clusters is None:
            # Attribution reads how much each account looks like a distiller on its own (``_combine``): its background
            # is the accounts that do not, and a cluster's score starts from its members'.
            clusters = self._clusters({a: looks * burst_factor(b) for a, ((_, b, _, looks), _) in cached.items()})
        else:
            self._reports += 1
            self.cluster_cost_s = 0.0
            clusters = self._last_clusters
        membership = {a: c for c in clusters for a in c.accounts}
        pooled = {c.cluster_id: self._pooled(c) for c in clusters}
        entry_cache = self._entry_cache
        rebuilt = self.rebuilt = set()
        fresh = self._fresh
        clock = time.thread_time
        building = 0.0
        # An entry can change only when its account's evidence was refreshed or its cluster changed: so only the
        # refreshed accounts and the members of this report's and the last one's clusters are looked at, while most
        # accounts' entries (at 100,000 accounts, all but a few thousand) are the last report's, in the same order.
        # When those are many, every account is looked at and the entries sorted whole.
        ranked = self._ranked
        candidates: Iterable[str] = self.accounts
        if ranked is not None and 2 * (len(refreshed) + len(membership) + len(self._members_before)) < len(self.accounts):
            candidates = [a for a in refreshed | membership.keys() | self._members_before if a in cached]
        else:
            ranked = None
        entries: list[dict[str, Any]] = []
        for account in candidates:
            combined, generation = cached[account]
            cluster = membership.get(account)
            # The entry is rebuilt only when what it is made of changed: this account's evidence (recomputed in
            # report number `generation`) or its cluster.
            together = pooled.get(cluster.cluster_id) if cluster is not None else None
            key = (generation, cluster.cluster_id, cluster.score, cluster.coordination, len(cluster.accounts), cluster.tie(account),
                   tuple(cluster.shared[:3]), together.score if together else None,
                   together.detail if together else None) if cluster is not None else (generation,)
            hit = entry_cache.get(account)
            if hit is not None and hit[0] == key:
                entries.append(hit[1])
                continue
            started = clock()
            entry = self._entry(account, self._evidence_of(account), combined, cluster, together)
            building += clock() - started
            fresh.pop(account, None)  # in the entry now: its Evidence objects go as the loop goes, not at its end
            entry_cache[account] = (key, entry)
            rebuilt.add(account)
            entries.append(entry)
        self._fresh = {}  # what this report computed is in its entries now
        self.rescore_cost_s += building
        self._members_before = set(membership)
        if ranked is not None and all(type(a) is str for a in rebuilt):
            # The last report's order without the rebuilt entries, and the rebuilt ones sorted: two sorted runs, which
            # one sort merges in a single pass. The same order as sorting every entry (account ids are unique).
            merged = [r for r in ranked if r[1] not in rebuilt]
            merged += sorted((_rank(entry_cache[account][1]), account) for account in rebuilt)
            merged.sort()
            self._ranked = merged
            entries = [entry_cache[a][1] for _, a in merged]
        else:
            entries = [hit[1] for hit in map(entry_cache.__getitem__, self.accounts)] if ranked is not None else entries
            entries.sort(key=lambda e: (_rank(e), str(e["account_id"])))
            self._ranked = [(_rank(e), e["account_id"]) for e in entries] if all(type(a) is str for a in self.accounts) else None
        return {"v": 1, "events": self.events, "accounts_seen": len(self.accounts), "accounts": entries,
                "clusters": [c.as_report() for c in clusters]}

    def _entry(self, account: str, evidence: list[Evidence], combined: tuple[float, float, float, float],
               cluster: Cluster | None, together: Evidence | None = None) -> dict[str, Any]:
        """One account's entry of the report (DESIGN §5)."""
        distill, burst, resell, _ = combined
        items = _shown(evidence)
        tie = cluster.tie(account) if cluster is not None else 0.0
        # Sustained across days, or across accounts: a tightly tied cluster is no one-off job.
        distill *= burst_factor(min(burst, 1.0 - tie * cluster.coordination) if cluster is not None else burst)
        if cluster is not None:
            lifted = 0.9 * cluster.score * tie
            detail = (f"member of {cluster.cluster_id}: {len(cluster.accounts)} accounts sharing "
                      f"{', '.join(cluster.shared[:3]) or 'fingerprints'}")
            if tie < 1.0:
                detail += f"; tied to it {tie:.2f} × as strongly as its members typically are"
            if lifted > distill:
                detail += (f"; its own evidence scores {distill:.2f}, the cluster {cluster.score:.2f} — "
                           f"scored as the cluster it belongs to" + (f", × {tie:.2f} for how strongly it is tied" if tie < 1.0 else ""))
                distill = lifted
            items.append(Evidence("hydra_cluster", cluster.score, detail))
            if together is not None:
                if together.score * tie > distill:
                    together = Evidence(together.detector, together.score * tie,
                                        together.detail + (f"; × {tie:.2f} for how strongly this account is tied" if tie < 1.0 else "")
                                        + f"; its own evidence scores {distill:.2f}", numbers=together.numbers)
                    distill = together.score
                items.append(together)
        items.sort(key=lambda e: -e.score)
        return {
            "account_id": account,
            "distillation_score": round(distill, 4),
            "reseller_score": round(resell, 4),
            "risk": risk_band(max(distill, resell)),
            "cluster_id": cluster.cluster_id if cluster else None,
            "requests": self.accounts[account],
            "evidence": [e.as_report() for e in items],
        }
