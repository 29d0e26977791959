"""Cross-account clustering of hydra networks over shared fingerprints.

Accounts are linked when they share enough rare fingerprints: enrolled install
ids, data-centre /24 networks, header fingerprints, system prompts, prompt
templates (exact frames, or similar frame sets found with MinHash LSH), and
synchronised activity (similar sets of active 5-minute buckets, again through
MinHash LSH so large logs avoid all-pairs work). A fingerprint value shared by
a large part of the population (a popular client library, a default system
prompt) carries no information and is ignored. Linked accounts are joined
with union-find; each cluster gets a score and the list of what its members
share, and lifts members that look light on their own.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distillguard.detect.base import logistic
from distillguard.detect.minhash import LSHIndex, MinHasher, Signature

__all__ = ["Cluster", "ClusterCache", "FingerprintCollector", "find_clusters", "rank_labels"]

WEIGHTS = {"install": 1.0, "system_prompt": 0.8, "template": 0.8, "similar_templates": 0.6, "hosting_net": 0.6,
           "sync_timing": 0.7, "org": 0.5, "header_fp": 0.2}
LINK_THRESHOLD = 1.0
_CAP = 64


@dataclass
class _Prints:
    values: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    requests: int = 0


class FingerprintCollector:
    """Collects each account's fingerprint values (bounded per kind)."""

    def __init__(self) -> None:
        self.accounts: dict[str, _Prints] = {}

    def update(self, event: Mapping[str, Any]) -> None:
        account = event.get("account_id")
        if account is None:
            return
        prints = self.accounts.get(account)
        if prints is None:
            prints = self.accounts[account] = _Prints()
        prints.requests += 1
        client = event.get("client") or {}
        geo = client.get("geo") or {}
        attestation = event.get("attestation") or {}

        def add(kind: str, value: Any) -> None:
            bucket = prints.values[kind]
            if value and len(bucket) < _CAP:
                bucket.add(str(value))

        add("install", attestation.get("install_id"))
        if geo.get("hosting"):
            ip = client.get("ip") or ""
            add("hosting_net", f"AS{geo.get('asn')} {ip.rsplit('.', 1)[0]}.0/24" if "." in ip else None)
        add("header_fp", client.get("header_fp"))
        add("org", event.get("org_id"))


def stable_cluster_id(members: list[str]) -> str:
    """A cluster id that survives re-scans: derived from a member, not from the cluster's rank.

    The ``cluster:<id>`` watermark key and review items refer to it, so it must
    not be renumbered when another cluster appears. It is derived from the
    smallest member account id, so it stays the same as long as that account
    stays in the cluster, whatever other accounts join or leave.
    """
    return "cl_" + hashlib.blake2b(min(members).encode(), digest_size=5).hexdigest()


@dataclass
class Cluster:
    cluster_id: str
    accounts: list[str]
    score: float
    shared: list[str]

    def as_report(self) -> dict[str, Any]:
        return {"cluster_id": self.cluster_id, "accounts": self.accounts, "score": round(self.score, 4), "shared": self.shared}


_NUM_PERM = 64
_HASHER = MinHasher(num_perm=_NUM_PERM, seed=7)
# LSH candidates are verified by exact Jaccard below, so a false positive costs one set intersection
# while a false negative silently loses a link. datasketch's default 50/50 weighting (used here before)
# catches only about a third of the pairs at exactly the threshold, and missed about half the pairs of
# repeated-frame sets at Jaccard >= 0.4 in the simulated scenarios. 2/98 (bands x rows 27x2 at 0.4,
# 32x2 at 0.3) misses ~1-5 % of pairs right at the threshold and ~0.04 % at Jaccard 0.5, for a few
# thousand extra set intersections per report.
_LSH_WEIGHTS = (0.02, 0.98)


@dataclass
class ClusterCache:
    """What :func:`find_clusters` can reuse from one report to the next (the online scorer reports every second).

    The frame and bucket sets it compares only ever grow (frames and buckets are never removed, and a frame once
    repeated stays repeated), so a set whose size has not changed is unchanged: its MinHash signature, and its
    overlap with another unchanged set, are still valid. Overlaps are kept for the latest report's candidate
    pairs only, so the cache stays the size of one report's work.
    """

    signatures: dict[tuple[str, str], tuple[int, Signature]] = field(default_factory=dict)
    overlaps: dict[tuple[str, str, str], tuple[int, int, int]] = field(default_factory=dict)

    def signature(self, kind: str, account: str, values: set[Any]) -> Signature:
        cached = self.signatures.get((kind, account))
        if cached is not None and cached[0] == len(values):
            return cached[1]
        signature = _HASHER.signature([str(v) for v in values])
        self.signatures[(kind, account)] = (len(values), signature)
        return signature


def rank_labels(counts: dict[str, int]) -> list[str]:
    """What a cluster's members share, most links first; ties by label, so the report is the same under any hash seed."""
    return [label for label, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def find_clusters(
    fingerprints: FingerprintCollector,
    systems: dict[str, dict[str, int]],
    frames: dict[str, list[str]],
    buckets: dict[str, set[int]],
    own_scores: dict[str, float],
    cache: ClusterCache | None = None,
) -> list[Cluster]:
    """Clusters of linked accounts, largest first; pass the same ``cache`` to successive calls on growing state."""
    if cache is None:
        cache = ClusterCache()
    overlaps: dict[tuple[str, str, str], tuple[int, int, int]] = {}
    accounts = [a for a, p in fingerprints.accounts.items() if p.requests >= 3]
    if not accounts:
        return []
    common_cutoff = max(30, int(0.1 * len(fingerprints.accounts)))
    edges: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    reasons: dict[tuple[str, str], set[str]] = defaultdict(set)

    def link_groups(kind: str, owners: dict[str, list[str]], label: str) -> None:
        for value, members in owners.items():
            if 2 <= len(members) <= common_cutoff:
                members = sorted(members)
                anchor = members[0]
                for other in members[1:]:
                    pair = (anchor, other)
                    edges[pair][kind] = WEIGHTS[kind]
                    reasons[pair].add(label.format(value=value))

    for kind, label in (("install", "install id {value}"), ("hosting_net", "{value}"), ("header_fp", "header fingerprint {value}"),
                        ("org", "org {value}")):
        owners: dict[str, list[str]] = defaultdict(list)
        for account in accounts:
            for value in fingerprints.accounts[account].values.get(kind, ()):
                owners[value].append(account)
        link_groups(kind, owners, label)
    owners = defaultdict(list)
    for account in accounts:
        for system, count in systems.get(account, {}).items():
            if count >= 2:
                owners[system].append(account)
    link_groups("system_prompt", owners, "system prompt template")
    owners = defaultdict(list)
    for account in accounts:
        for frame in frames.get(account, []):
            owners[frame].append(account)
    link_groups("template", owners, "prompt template")

    # Similar template sets and synchronised timing via MinHash LSH.
    for kind, sets, threshold, label in (
        ("similar_templates", {a: set(frames.get(a, [])) for a in accounts if len(frames.get(a, [])) >= 2}, 0.4, "paraphrased templates"),
        ("sync_timing", {a: buckets.get(a, set()) for a in accounts if len(buckets.get(a, set())) >= 10}, 0.3, "synchronised timing"),
    ):
        if len(sets) < 2:
            continue
        lsh: LSHIndex[str] = LSHIndex(threshold, num_perm=_NUM_PERM, weights=_LSH_WEIGHTS)
        signatures = {a: cache.signature(kind, a, s) for a, s in sets.items()}
        for a, sig in signatures.items():
            lsh.insert(a, sig)
        for a, sig in signatures.items():
            set_a = sets[a]
            for b in lsh.query(sig):
                if b <= a:
                    continue
                set_b = sets[b]
                # Verification was most of a report's cost (the LSH weights favour false positives): sets whose
                # sizes alone bound the Jaccard below the threshold are skipped (intersection <= the smaller size,
                # union >= the larger, and float division is monotonic, so the computed ratio would be below it
                # too), and the union's size is counted instead of building the union set.
                small, large = sorted((len(set_a), len(set_b)))
                if small / max(1, large) < threshold:
                    continue
                known = cache.overlaps.get((kind, a, b))
                if known is not None and known[0] == len(set_a) and known[1] == len(set_b):
                    common = known[2]
                else:
                    common = len(set_a & set_b)
                overlaps[(kind, a, b)] = (len(set_a), len(set_b), common)
                jaccard = common / max(1, len(set_a) + len(set_b) - common)
                if jaccard >= threshold:
                    pair = (a, b)
                    edges[pair][kind] = WEIGHTS[kind]
                    reasons[pair].add(label)

    cache.overlaps = overlaps

    parent = {a: a for a in accounts}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for pair, kinds in edges.items():
        if sum(kinds.values()) >= LINK_THRESHOLD:
            ra, rb = find(pair[0]), find(pair[1])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = defaultdict(list)
    for account in accounts:
        groups[find(account)].append(account)
    clusters: list[Cluster] = []
    for members in sorted((sorted(g) for g in groups.values() if len(g) >= 3), key=lambda g: (-len(g), g[0])):
        member_set = set(members)
        shared: dict[str, int] = defaultdict(int)
        link_kinds: set[str] = set()
        for pair, labels in reasons.items():
            if pair[0] in member_set and pair[1] in member_set and sum(edges[pair].values()) >= LINK_THRESHOLD:
                link_kinds.update(edges[pair])
                for label in labels:
                    shared[label] += 1
        scores = sorted((own_scores.get(a, 0.0) for a in members), reverse=True)
        mean = sum(scores) / len(scores)
        top_half = sum(scores[: max(1, len(scores) // 2)]) / max(1, len(scores) // 2)
        strength = logistic(len(members), 4, 1.0) * min(1.0, len(link_kinds - {"header_fp"}) / 2)
        base = 0.5 * mean + 0.5 * top_half
        score = base + (1 - base) * 0.5 * strength if base >= 0.4 else base
        ranked = rank_labels(shared)
        clusters.append(Cluster(stable_cluster_id(members), members, min(1.0, score), ranked[:8]))
    return clusters
