"""Hydra clusters: accounts linked by rare shared indicators from two families, joined, scored and explained.

The indicators and their rarity weights are in :mod:`distillguard.detect.attribution`.
Here, for each pair of accounts that share anything rare enough to matter,
each family's evidence is combined as a noisy-OR of its shared items,

    family(a, b) = 1 − ∏ (1 − weight(kind) × rarity(holders) × min(share_a, share_b)^½)

and the pair is **linked** when

- one identity item alone is near-certain (the same enrolled install, the
  same payment fingerprint: ≥ 0.8), or
- the operator's records agree twice over (a rare attribute such as a
  custom e-mail domain *and* a creation slot in a burst: meta ≥ 0.65 from
  two kinds of record), or
- a behavioural family (content or time) reaches 0.35, another family
  reaches 0.3, and the two, plus half of a third family, add up to at
  least 1.0 (between two ordinary-looking accounts, an e-mail domain is
  never that other family, and a creation slot only beside scripted
  content: ``SCRIPTED_CONTENT``), or
- the two accounts look driven by one configuration and share a *bank* of
  rare phrasings (:mod:`distillguard.detect.phrasebank`): content alone,
  weaker than any two-family link; any bank between accounts that both
  already look like harvesting on their own (outside the background), a
  large one (``BANK_ALONE`` phrasings) otherwise, or
- the two accounts look driven by one single-turn configuration and share a
  private system prompt and a private wrapper that many accounts carry
  together far beyond chance (:func:`_scripts`): one script's settings.

So a public wrapper (no weight), a shared office (infra and meta only) or two
evaluation jobs with the same stock parameters (content 0.3) never link on
their own, while a fleet that shares a wrapper and a hosting /24, or a
system prompt and a creation slot, does. Accounts of one organisation are
never linked: the organisation already says they are one customer.

Candidate pairs come from posting lists (accounts carrying an item worth at
least ``CANDIDATE_MIN``; every pair when at most 12 do, else each holder
against the 6 holders with the smallest stable hash — the cluster stays
connected through them) and from a
MinHash LSH index over active 5-minute buckets for synchronised activity, each
account checked against a bounded number of its likeliest matches
(:func:`_synchronised`), so the work grows with the number of accounts times
the items they carry, never with all pairs — whoever fires together. Linked accounts are grouped by weighted label propagation
(:func:`_communities`), so two fleets that a few links join stay apart; each
community admits only the accounts tied to it by private evidence (:func:`admitted`), and groups of three or more
admitted members are clusters. Each member also gets its *tie*
(:func:`member_ties`): how strongly its own links' *private* evidence — what
they share beyond the traits unrelated legitimate accounts share all the time
(``SURFACE_KINDS``), net of what chance explains (:mod:`distillguard.detect.chance`)
— ties it there; the scanner lifts a member only that far.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol

from distillguard.detect.accounts import AccountMeta
from distillguard.detect.arrivals import arrival_blocks
from distillguard.detect.attribution import (
    BEHAVIOURAL,
    KINDS,
    RARE_SHARE,
    RARE_SHARE_ATTRIBUTE,
    ROTATION_MIN_REQUESTS,
    AttributionCollector,
    Item,
    account_items,
    describe,
    rarity,
    rotation_item,
)
from distillguard.detect.base import logistic, typical
from distillguard.detect.chance import ChanceModel
from distillguard.detect.cohorts import ARRIVAL_KINDS, burst_runs, cohort_traits, find_cohorts
from distillguard.detect.minhash import LSHIndex, MinHasher, Signature
from distillguard.detect.phrasebank import BANK_ALONE, BANK_PHRASINGS, BankOverlap, PhraseBanks, phrasings

__all__ = ["Cluster", "ClusterCache", "FingerprintCollector", "TemplateSource", "admitted", "creation_bursts", "find_clusters", "member_ties",
           "rank_labels", "stable_cluster_id"]

FingerprintCollector = AttributionCollector  # the name the Scanner has always used

MIN_REQUESTS = 3
ALL_PAIRS_UP_TO = 12
HUBS = 6
IDENTITY_LINK = 0.8
# An item worth less than this (a client profile, a habit many accounts share) adds to a link but starts no candidate
# pair: a pair sharing only such items never reaches a link, and their long posting lists were a quarter of the pairs.
CANDIDATE_MIN = 0.15
RECORDS_LINK = 0.65
BACKGROUND_BELOW = 0.5
BEHAVIOUR_MIN, OTHER_MIN, LINK_SUM = 0.35, 0.3, 1.0
SYNC_JACCARD, SYNC_LIFT, SYNC_WEIGHT = 0.25, 2.0, 0.8
SYNC_MIN_BUCKETS = 10  # active 5-minute buckets an account needs before its timing is compared
SYNC_TRIES = 64  # LSH matches checked exactly per account (class of identical bucket sets), likeliest first
SYNC_CROWD = 96  # an LSH bucket larger than this is a crowd: each member counts only its 96 nearest in it
BURST_WINDOW_S, BURST_MIN, BURST_EXCESS, BURST_SLOT_S = 3600.0, 5, 8.0, 600.0


class TemplateSource(Protocol):
    """What clustering reads from the templates detector (:class:`distillguard.detect.templates.TemplatedPrompts`)."""

    def wrappers(self, account_id: str) -> tuple[int, dict[str, int]]: ...

    def systems(self, account_id: str) -> dict[str, int]: ...


def stable_cluster_id(members: list[str]) -> str:
    """A cluster id that survives re-scans: derived from a member, not from the cluster's rank.

    The ``cluster:<id>`` watermark key and review items refer to it, so it must
    not be renumbered when another cluster appears. It is derived from the
    smallest member account id, so it stays the same as long as that account
    stays in the cluster, whatever other accounts join or leave.
    """
    return "cl_" + hashlib.blake2b(min(members).encode(), digest_size=5).hexdigest()


def _stable_hash(account: str) -> bytes:
    return hashlib.blake2b(account.encode(), digest_size=8).digest()


@dataclass
class Cluster:
    cluster_id: str
    accounts: list[str]
    score: float
    shared: list[str]
    coordination: float = 0.0  # how strongly attribution alone ties the members (size × families), in [0, 1]
    families: list[str] = field(default_factory=list)
    # Per member, how far the cluster's evidence may speak for it, in [0, 1] (:func:`member_ties`); 1 when absent.
    ties: dict[str, float] = field(default_factory=dict)
    # The typical member's private link evidence (the upper median of :func:`_top_private`, in [0, 1]): how surely
    # what ties the members is theirs alone — a private wrapper, an install, a card, a creation slot — rather than
    # what strangers share. The scanner's pooled gate reads it beside ``coordination``.
    private: float = 0.0

    def tie(self, account: str) -> float:
        return self.ties.get(account, 1.0)

    def as_report(self) -> dict[str, Any]:
        return {"cluster_id": self.cluster_id, "accounts": self.accounts, "score": round(self.score, 4), "shared": self.shared}


_NUM_PERM = 64
_HASHER = MinHasher(num_perm=_NUM_PERM, seed=7)
# LSH candidates are verified by exact Jaccard below, so a false positive costs one set intersection
# while a false negative silently loses a link. 2/98 (19 bands x 1 row at 0.25) misses under 0.5 % of
# the pairs right at the threshold and almost none above it.
_LSH_WEIGHTS = (0.02, 0.98)


@dataclass
class ClusterCache:
    """What :func:`find_clusters` can reuse from one report to the next (the online scorer reports every second).

    Bucket sets only grow, so a set whose size has not changed is unchanged: its MinHash signature, and its
    overlap with another unchanged set, are still valid. Overlaps are kept for the latest report's candidate
    pairs only, so the cache stays the size of one report's work.
    """

    signatures: dict[tuple[str, str], tuple[int, Signature]] = field(default_factory=dict)
    overlaps: dict[tuple[str, str, str], tuple[int, int, int]] = field(default_factory=dict)
    candidate_pairs: int = 0  # pairs scored by the latest call (how much work it did; tests and benchmarks read it)
    sync_checks: int = 0  # exact bucket-set intersections made by the latest call (:func:`_synchronised`)
    phrasings: dict[str, tuple[tuple[int, int], dict[str, float]]] = field(default_factory=dict)

    def phrasings_of(self, account: str, templates: TemplateSource, collector: AttributionCollector) -> dict[str, float]:
        """An account's phrasings, recomputed only when it has sent a single-turn prompt or a short follow-up since
        the last report (its wrapper pieces and follow-up texts change only then)."""
        single_turn, pieces = templates.wrappers(account)
        follow_ups, texts = collector.follow_ups(account)
        cached = self.phrasings.get(account)
        if cached is not None and cached[0] == (single_turn, follow_ups):
            return cached[1]
        found = phrasings(single_turn, pieces, follow_ups, texts)
        self.phrasings[account] = ((single_turn, follow_ups), found)
        return found

    def signature(self, kind: str, account: str, values: AbstractSet[Any]) -> Signature:
        cached = self.signatures.get((kind, account))
        if cached is not None and cached[0] == len(values):
            return cached[1]
        signature = _HASHER.signature([str(v) for v in values])
        self.signatures[(kind, account)] = (len(values), signature)
        return signature


def rank_labels(counts: Mapping[str, float]) -> list[str]:
    """What a cluster's members share, most weight (summed over links) first; ties by label, so the report is the same under any hash seed."""
    return [label for label, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def creation_bursts(metadata: Mapping[str, AccountMeta]) -> dict[str, tuple[str, ...]]:
    """Accounts created in a burst → their creation slots (two 10-minute grids offset by 5 minutes).

    A burst: at least ``BURST_MIN`` accounts created within an hour of one another, at least ``BURST_EXCESS``
    times as many as the metadata's average rate of account creation would put in an hour. Within a burst,
    accounts created within about five minutes of each other share a slot; a burst that lasts hours is tied
    together by its other links, so two fleets created the same afternoon are not one burst.
    """
    times = sorted((m.created_at, a) for a, m in metadata.items() if m.created_at is not None)
    if len(times) < BURST_MIN:
        return {}
    span = max(86_400.0, times[-1][0] - times[0][0])
    expected = max(0.5, len(times) * BURST_WINDOW_S / span)
    half = BURST_WINDOW_S / 2
    slots: dict[str, tuple[str, ...]] = {}
    lo = hi = 0
    for t, account in times:
        while times[lo][0] < t - half:
            lo += 1
        while hi < len(times) and times[hi][0] <= t + half:
            hi += 1
        count = hi - lo
        if count >= BURST_MIN and count >= BURST_EXCESS * expected:
            slots[account] = tuple(
                dt.datetime.fromtimestamp((t + offset) // BURST_SLOT_S * BURST_SLOT_S - offset, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
                for offset in (0.0, BURST_SLOT_S / 2))
    return slots


@dataclass
class _Link:
    families: dict[str, float]
    items: list[tuple[Item, float]]
    strength: float
    # The link's *private* evidence (member_ties): what it shares that unrelated legitimate accounts rarely share —
    # a private wrapper or system prompt, a phrase bank, an install, a payment card, a creation slot, a data-centre
    # /24, rotation, synchronised activity, a cohort — each many-valued group discounted by how often chance alone
    # would share that much (:func:`_private`, :mod:`distillguard.detect.chance`).
    private: float = 0.0
    identity: bool = False  # made by one identity item (the same enrolled install or payment fingerprint)
    hub: bool = False  # made only by a cohort, member to hub (_cohort_links): weighed per account in _communities


def _rarity_of(kind: str, holders: int, population: int) -> float:
    if kind == "burst":
        return 1.0  # rare by construction (an excess over the creation rate), however many accounts it holds
    if kind == "rotation":
        # Rare by construction too: a new network on most requests is what few people's traffic does (VPN users
        # switch some of the time), but a large campaign rotating addresses made it common in the background it is
        # judged against — 690 of 2,100 accounts on dev seed 4 — so its rarity fell to 0.45 and the trait stopped
        # counting as a family exactly when a campaign was big enough to matter.
        return 1.0
    return rarity(holders, population, RARE_SHARE_ATTRIBUTE if kind == "attribute" else RARE_SHARE)


def _decide(families: dict[str, float], identity: float, records: float = 0.0) -> float:
    """The link's strength in [0, 2], or 0 when the pair is not linked (rules in the module docstring).

    ``records``: the meta family's score when at least two kinds of the operator's records agree (a rare
    attribute and a creation slot), else 0.
    """
    if identity >= IDENTITY_LINK:
        return 1.0 + identity
    if records >= RECORDS_LINK:
        return records
    best_behaviour = max(((families.get(f, 0.0), f) for f in BEHAVIOURAL), default=(0.0, ""))
    if best_behaviour[0] < BEHAVIOUR_MIN:
        return 0.0
    others = sorted((v for f, v in families.items() if f != best_behaviour[1]), reverse=True)
    if not others or others[0] < OTHER_MIN:
        return 0.0
    total = best_behaviour[0] + others[0] + (0.5 * others[1] if len(others) > 1 else 0.0)
    return total if total >= LINK_SUM else 0.0


CONFIG_TOLERANCE = 0.25
# Strangers brought together by one public event share its traces: sign-ups in the hours before a model's release
# (a creation slot) who then try the same release-day probes (prompt wrappers). Between two accounts that both look
# ordinary a creation slot is therefore a second family only beside *scripted* content — one shared item worth at
# least SCRIPTED_CONTENT, e.g. a private four-word wrapper on more than half of both accounts' prompts — not beside
# a few probes each used now and then.
SCRIPTED_CONTENT = 0.5
_IDENTITY_KINDS = frozenset({"install", "payment"})
# What unrelated legitimate accounts share all the time: a residential or office /24 or an exact address (an office, a
# campus, a carrier's NAT, a VPN's exit), a hosting ASN, stock request parameters, coarse habits, a client
# profile, an e-mail domain. These still make links (beside a behavioural family) and put accounts in clusters, but
# never tie a member to its cluster's evidence on their own (member_ties): issue #11's test split put two people, a
# learner, a coder and a night owl in a campaign that imitates people, tied by such traits as strongly as its members
# were tied by their weak phrase banks and records, and lifted them to `high` at tie 1.0.
SURFACE_KINDS = frozenset({"net", "ip", "hosting_asn", "params", "habits", "profile", "attribute"})
# Items an account carries many of (its wrapper pieces, system prompts, installs): the more it carries, the more it
# shares with anyone by chance (a relay's dozens of people; a heavy user's many openers).
_CHANCE_GROUPS = {"wrapper": "wrapper", "short_wrapper": "wrapper", "scaffold": "wrapper", "system_prompt": "system_prompt", "install": "install",
                  "hosting_net": "hosting_net"}


Configuration = tuple[float, float, float, bool]


def _configuration(state: Any, templates: TemplateSource, account: str) -> Configuration | None:
    """Shares of single-turn prompts, streamed requests and requests with a system prompt; whether addresses rotate."""
    if state is None:
        return None
    requests = max(1, state.requests)
    with_system = sum(templates.systems(account).values()) / requests
    rotating = requests >= 8 and state.net_switches / (requests - 1) >= 0.6
    return state.single_turn / requests, state.streamed / requests, with_system, rotating


def _same_configuration(x: Configuration | None, y: Configuration | None) -> bool:
    """Whether two accounts look driven by one configuration: the same shares (within ``CONFIG_TOLERANCE``) of
    single-turn prompts, streaming and system prompts, and both or neither rotating addresses.

    A phrase bank alone says "the same list of paraphrases"; one operator's accounts also share the script's
    settings, while another operator who happens to use similar phrasings (in the simulator, the same split's
    paraphrase list) has its own.
    """
    if x is None or y is None:
        return False
    return all(abs(p - q) <= CONFIG_TOLERANCE for p, q in zip(x[:3], y[:3], strict=True)) and x[3] == y[3]


def _private(a: str, b: str, shared: list[tuple[Item, float]], timing: float | None, bank: BankOverlap | None,
             chance: Mapping[str, ChanceModel], bank_chance: ChanceModel) -> float:
    """A link's private evidence in [0, 1]: noisy-OR of what it shares beyond ``SURFACE_KINDS`` — each many-valued
    group's items discounted by how surely chance would not share that many of them (:class:`ChanceModel`) —,
    synchronised activity (already judged against chance overlap) and a shared phrase bank (likewise discounted)."""
    counts: dict[str, int] = defaultdict(int)
    for item, _ in shared:
        group = _CHANCE_GROUPS.get(item.kind)
        if group is not None:
            counts[group] += 1
    free = {group: chance[group].free(a, b, n) for group, n in counts.items()}
    rest = 1.0
    for item, value in shared:
        if item.kind in SURFACE_KINDS:
            continue
        group = _CHANCE_GROUPS.get(item.kind)
        rest *= 1.0 - value * (free[group] if group is not None else 1.0)
    if timing:
        rest *= 1.0 - timing
    if bank is not None:
        rest *= 1.0 - min(1.0, bank.mass) * bank_chance.free(a, b, bank.phrasings)
    return 1.0 - rest


# One script's settings: a private system prompt and a private wrapper that many accounts carry *together*, far beyond
# what their holders' numbers explain (_scripts). Not two wrappers: the prefix and suffix pieces of one wrapper, or of
# one public list of probes that strangers copy, always come together. Each item must be a real part
# of the account's traffic (worth × √share ≥ SCRIPT_ITEM_MIN), an account carrying more than SCRIPT_MAX_ITEMS such items
# (a relay's many users) is left out, and the pair must be carried by at least SCRIPT_MIN_HOLDERS accounts, more than
# independent holders would share with probability SCRIPT_SURE (the hypergeometric tail, _overlap_tail).
SCRIPT_KINDS = frozenset({"wrapper", "short_wrapper", "system_prompt"})
SCRIPT_ITEM_MIN = 0.3
SCRIPT_MAX_ITEMS = 6
SCRIPT_MIN_HOLDERS = 5
SCRIPT_SURE = 1e-6
# ... and only between accounts whose prompts are almost all single-turn (configuration's first share): a script's
# wrapper around one task per request is the harvest itself, while an app's system prompt and step templates around
# multi-turn sessions (a coding agent) are shared by its unrelated users (dev seed 4: two agents' users, 15 accounts,
# clustered by the rule without this).
SCRIPT_SINGLE_TURN = 0.8


def _overlap_tail(together: int, holders_x: int, holders_y: int, population: int) -> float:
    """``P(X ≥ together)`` when ``holders_y`` accounts are drawn at random from ``population`` of which ``holders_x``
    carry the other item: how surely two items' holders overlap by chance alone (hypergeometric)."""
    def log_choose(n: int, k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)

    population = max(population, holders_x, holders_y)
    top = min(holders_x, holders_y)
    if together > top or holders_y - together > population - holders_x:
        return 0.0
    base = log_choose(population, holders_y)
    return min(1.0, sum(math.exp(log_choose(holders_x, i) + log_choose(population - holders_x, holders_y - i) - base)
                        for i in range(together, top + 1) if holders_y - i <= population - holders_x))


def _scripts(rated: Mapping[str, Mapping[int, tuple[Item, float, float, str]]], population: int) -> set[tuple[int, int]]:
    """Pairs (system prompt, wrapper) carried together by far more accounts than chance: one script's settings.

    Unrelated accounts that each use a private item (one app's system prompt, another's wrapper) carry both
    together about ``holders(x) × holders(y) ÷ N`` times; a fleet run by one script carries its system prompt *and*
    its wrapper on every account. The test is on the items' posting lists, not on any pair of accounts, so it
    holds for a fleet of any size, whatever its addresses, timing or sign-up records say.
    """
    holders: Counter[int] = Counter()
    together: Counter[tuple[int, int]] = Counter()
    for keyed in rated.values():
        mine = sorted(n for n, (item, worth, root, _) in keyed.items() if item.kind in SCRIPT_KINDS and worth * root >= SCRIPT_ITEM_MIN)
        if len(mine) > SCRIPT_MAX_ITEMS:
            continue
        holders.update(mine)
        systems = [n for n in mine if keyed[n][0].kind == "system_prompt"]
        together.update((min(x, y), max(x, y)) for x in systems for y in mine if keyed[y][0].kind != "system_prompt")
    return {pair for pair, count in together.items() if count >= SCRIPT_MIN_HOLDERS
            and _overlap_tail(count, holders[pair[0]], holders[pair[1]], population) < SCRIPT_SURE}


def _add_pairs(candidates: set[tuple[str, str]], members: list[str]) -> None:
    """Candidate pairs among the accounts carrying one item: all of them when few, else each against the hubs."""
    if len(members) <= ALL_PAIRS_UP_TO:
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                candidates.add((a, b) if a < b else (b, a))
    else:
        hubs = sorted(members, key=_stable_hash)[:HUBS]
        for a in members:
            for hub in hubs:
                if a != hub:
                    candidates.add((a, hub) if a < hub else (hub, a))


def find_clusters(
    collector: AttributionCollector,
    templates: TemplateSource,
    buckets: Mapping[str, AbstractSet[int]],
    own_scores: Mapping[str, float],
    metadata: Mapping[str, AccountMeta] | None = None,
    cache: ClusterCache | None = None,
) -> list[Cluster]:
    """Clusters of linked accounts, largest first; pass the same ``cache`` to successive calls on growing state."""
    if cache is None:
        cache = ClusterCache()
    metadata = metadata or {}
    accounts = sorted(a for a, p in collector.accounts.items() if p.requests >= MIN_REQUESTS)
    if len(accounts) < 3:
        return []
    org_of = {a: p.org for a, p in collector.accounts.items() if p.org}
    for account, known in metadata.items():
        if known.org_id:
            org_of[account] = known.org_id
    bursts = creation_bursts(metadata)
    empty: Mapping[str, str] = {}

    # 1. Every account's items, and how many accounts carry each.
    items: dict[str, dict[tuple[str, str], Item]] = {}
    holders: dict[tuple[str, str], list[str]] = defaultdict(list)
    for account in accounts:
        single_turn, wrappers = templates.wrappers(account)
        meta = metadata.get(account)
        found = account_items(collector.accounts.get(account), single_turn, wrappers, templates.systems(account),
                              meta.attributes if meta else empty, bursts.get(account, ()))
        keyed = {(i.kind, i.value): i for i in found}
        items[account] = keyed
        for key in keyed:
            holders[key].append(account)
    # Rarity is judged against the background: the accounts that do not look like distillers on their own. A trait
    # every campaign account shows (rotating addresses, a campaign's own domain) stays rare however large the
    # campaigns in a log are, while a trait common among ordinary users (a free-mail domain) is common.
    background = {a for a in accounts if own_scores.get(a, 0.0) < BACKGROUND_BELOW}
    population = max(1, len(background))
    banks = PhraseBanks({a: cache.phrasings_of(a, templates, collector) for a in accounts}, background)
    in_background = {key: sum(1 for m in members if m in background) for key, members in holders.items() if len(members) >= 2}
    worth = {key: KINDS[key[0]][1] * _rarity_of(key[0], count, population) for key, count in in_background.items()}

    # 2. Candidate pairs from the posting lists of items worth something.
    candidates: set[tuple[str, str]] = set()
    for key, value in worth.items():
        if value < CANDIDATE_MIN:
            continue
        _add_pairs(candidates, holders[key])

    for members in banks.posting_lists():
        _add_pairs(candidates, members)

    # 3. Synchronised activity: similar sets of active 5-minute buckets, checked exactly for every candidate pair so far
    # and for each account's likeliest matches in a MinHash LSH index (_synchronised).
    sync = _synchronised({a: buckets.get(a, set()) for a in accounts}, candidates, cache)
    candidates.update(sync)

    cache.candidate_pairs = len(candidates)

    # 4. Score every candidate pair; keep the links.
    configurations: dict[str, Configuration | None] = {}

    def configuration(account: str) -> Configuration | None:
        if account not in configurations:
            configurations[account] = _configuration(collector.accounts.get(account), templates, account)
        return configurations[account]

    # Only the items worth something can be shared: the rest (an account's own addresses, installs, nets) are skipped
    # once here rather than looked up for every candidate pair.
    # Each value carries its item, weight × rarity, √share and family, so a pair's shared items are one set
    # intersection (in C) and a few multiplications per shared item, not a lookup per item either account carries.
    # Keys are numbered: a tuple's hash is recomputed on every lookup, an int's is itself.
    number = {key: n for n, key in enumerate(k for k, v in worth.items() if v > 0.0)}
    rated = {a: {number[k]: (item, worth[k], math.sqrt(item.share), KINDS[k[0]][0]) for k, item in keyed.items() if k in number}
             for a, keyed in items.items()}
    # The null model of what unrelated accounts share by chance (detect/chance.py), per group of many-valued items and
    # for the rare phrasings of phrase banks: only what it does not explain ties a member to its cluster (member_ties).
    by_chance = {group: ChanceModel({a: [k for k in keyed if _CHANCE_GROUPS.get(k[0]) == group and k in number] for a, keyed in items.items()},
                                 in_background, background)
              for group in set(_CHANCE_GROUPS.values())}
    bank_chance = ChanceModel({a: [k for k in found if k in banks.weight] for a, found in banks.by_account.items()},
                              {k: sum(1 for m in banks.holders[k] if m in background) for k in banks.weight}, background)
    scripts = _scripts(rated, len(accounts))
    in_scripts = {n for pair in scripts for n in pair}
    links: dict[tuple[str, str], _Link] = {}
    for a, b in candidates:
        org_a = org_of.get(a)
        if org_a is not None and org_a == org_of.get(b):
            continue
        items_a, items_b = rated[a], rated[b]
        # Between two accounts that look ordinary, a shared e-mail domain is what classmates or colleagues share: it
        # counts only with a second kind of record (the records rule), never as the second family beside common
        # content (learners asking in the same words at one university); a creation slot counts only beside
        # scripted content (SCRIPTED_CONTENT).
        ordinary = a in background and b in background
        shared: list[tuple[Item, float]] = []
        identity = content_best = 0.0
        rest: dict[str, float] = {}
        meta_rest = slot_rest = 1.0
        meta_kinds: set[str] = set()
        for shared_key in items_a.keys() & items_b.keys():
            item, weight, root_a, family = items_a[shared_key]
            value = weight * min(root_a, items_b[shared_key][2])
            shared.append((item, value))
            kind = item.kind
            if kind in _IDENTITY_KINDS and value > identity:
                identity = value
            if family == "meta":
                meta_rest *= 1.0 - value
                if value >= 0.2:
                    meta_kinds.add(kind)
                if ordinary and kind == "attribute":
                    continue
                if ordinary and kind == "burst":
                    slot_rest *= 1.0 - value
                    continue
            elif family == "content" and value > content_best:
                content_best = value
            rest[family] = rest.get(family, 1.0) * (1.0 - value)
        if slot_rest < 1.0 and content_best >= SCRIPTED_CONTENT:
            rest["meta"] = rest.get("meta", 1.0) * slot_rest
        families = {family: 1.0 - remaining for family, remaining in rest.items()}
        timing = sync.get((a, b))
        if timing:
            families["time"] = 1.0 - (1.0 - families.get("time", 0.0)) * (1.0 - timing)
        records = 1.0 - meta_rest if len(meta_kinds) >= 2 else 0.0
        strength = _decide(families, identity, records)
        bank = None
        suspects = a not in background and b not in background
        if strength == 0.0 and banks.may_share(a, b, BANK_PHRASINGS if suspects else BANK_ALONE):
            # Content alone: a shared bank of rare phrasings and one configuration (phrasebank module docstring),
            # weaker than any two-family link. Between accounts that already look like harvesting any bank will do;
            # otherwise only a large one (BankOverlap.links), so attribution does not hang on per-account scores.
            bank = banks.overlap(a, b)
            if bank is not None and bank.links(suspects) and _same_configuration(configuration(a), configuration(b)):
                strength = min(1.0, bank.mass)
            else:
                bank = None
        if strength == 0.0 and in_scripts:
            # Content alone again: both accounts carry the same script's system prompt and wrapper (_scripts) and look
            # driven by one configuration, however unrelated their addresses, hours and sign-ups look.
            common = sorted(k for k in items_a.keys() & items_b.keys() if k in in_scripts)
            config_a, config_b = configuration(a), configuration(b)
            if any((x, y) in scripts for i, x in enumerate(common) for y in common[i + 1:]) and _same_configuration(config_a, config_b) \
                    and config_a is not None and config_b is not None and min(config_a[0], config_b[0]) >= SCRIPT_SINGLE_TURN:
                strength = min(1.0, families.get("content", 0.0))
        if strength > 0.0:
            used = [(item, value) for item, value in shared if value >= 0.1]
            if timing:
                used.append((Item("sync", "synchronised activity", 1.0), timing))
            if bank is None and banks.may_share(a, b, BANK_PHRASINGS):
                # Linked on other evidence: a shared bank still counts as private evidence (not as a link) when it is one.
                found_bank = banks.overlap(a, b)
                bank_evidence = found_bank if found_bank is not None and found_bank.shared_bank else None
            else:
                bank_evidence = bank
            if bank is not None:
                used.append((Item("bank", bank.describe(), 1.0), min(1.0, bank.mass)))
            links[(a, b)] = _Link(families, used, strength, _private(a, b, shared, timing, bank_evidence, by_chance, bank_chance),
                                  identity >= IDENTITY_LINK)

    # 5. Cohorts: the quiet accounts of one creation burst that share a trait far more often than chance (cohorts module).
    # They join the link graph from their first request, through hubs as a posting list does.
    certainty = _cohort_links(links, collector, templates, metadata, bursts, own_scores, org_of)
    if certainty:
        accounts = sorted(set(accounts) | certainty.keys())

    # 6. Communities of the link graph (weighted label propagation); clusters of three or more.
    community = _communities(accounts, links)
    groups: dict[str, list[str]] = defaultdict(list)
    for account in accounts:
        groups[community[account]].append(account)
    community_links: dict[str, list[tuple[str, str, _Link]]] = defaultdict(list)
    for (a, b), link in links.items():
        if community[a] == community[b] and len(groups[community[a]]) >= 3:
            community_links[community[a]].append((a, b, link))
    # 7. Admission (admitted): each community keeps the members tied to it by private evidence; the rest leave it.
    kept: list[tuple[list[str], list[tuple[str, str, _Link]]]] = []
    for label, group in groups.items():
        if len(group) < 3:
            continue
        members = admitted(group, community_links[label])
        if len(members) >= 3:
            inside = set(members)
            kept.append((members, [t for t in community_links[label] if t[0] in inside and t[1] in inside]))

    clusters: list[Cluster] = []
    texts: dict[Item, str] = {}  # each item's words, once: links repeat the same items many times
    for members, member_links in sorted(kept, key=lambda g: (-len(g[0]), g[0][0])):
        group_links = [link for _, _, link in member_links]
        # Per member, its two most private links inside its cluster (member_ties reads their mean): a member whose one
        # private link goes to another stray of the cluster, not to the fleet, is not tied as the fleet is.
        private = _top_private(set(members), member_links)
        kinds: dict[str, set[str]] = defaultdict(set)  # per member, the families (and "identity") of its links there
        for a, b, link in member_links:
            tying = {f for f, v in link.families.items() if v >= 0.3} | ({"identity"} if link.identity else set())
            kinds[a] |= tying
            kinds[b] |= tying
        shared_weight: dict[str, float] = defaultdict(float)
        families_seen: set[str] = set()
        for link in group_links:
            families_seen.update(f for f, v in link.families.items() if v >= 0.3)
            for item, value in link.items:
                text = texts.get(item)
                if text is None:
                    key = (item.kind, item.value)
                    text = texts[item] = item.value if item.kind in _SELF_DESCRIBED else describe(item, len(holders.get(key, ())))
                shared_weight[text] += value
        cluster = _score_cluster(members, group_links, families_seen, rank_labels(shared_weight)[:8], own_scores,
                                 sum(certainty.get(a, 0.0) for a in members) / len(members))
        cluster.ties = member_ties(members, private, kinds)
        cluster.private = typical(private.values())
        clusters.append(cluster)
    return clusters


def _synchronised(buckets: Mapping[str, AbstractSet[int]], candidates: AbstractSet[tuple[str, str]],
                  cache: ClusterCache) -> dict[tuple[str, str], float]:
    """Pairs of accounts active in the same 5-minute buckets → their synchronised-activity value (``time`` family).

    Which accounts fire together is the data's choice, and an attacker's: 400 accounts made to fire in the same
    minutes put each other in every LSH bucket, and checking every pair the index returns cost 79,946 exact checks
    (and as many candidate pairs to score) — the square of the fleet. So the work is bounded per account:

    - accounts with the same bucket set are one *class*, checked once: a pair's overlap is computed per pair of
      classes, never twice;
    - every candidate pair the items and phrase banks already proposed (already bounded per account) is checked
      exactly: a synchronised pair can link only beside another family of shared items, so these are the pairs
      where timing matters most, and a hydra hidden in a co-firing crowd is found through its own wrapper or network
      however large the crowd is;
    - each class's representative is checked against its ``SYNC_TRIES`` likeliest matches in the LSH index, those
      sharing the most bands (:meth:`LSHIndex.nearest`, which also bounds the index's own work in crowded buckets);
      on the robust dev split 99.9 % of the confirmed pairs are among an account's first 64, far fewer than 100
      partners confirmed per account;
    - members of a class take their representative's confirmed matches and ``SYNC_TRIES`` of their own class.

    So the exact checks and new candidate pairs grow with the number of accounts times ``SYNC_TRIES``, not with its
    square, whoever fires together. ``cache.sync_checks`` counts the exact set intersections made.
    """
    sets = {a: s for a, s in buckets.items() if len(s) >= SYNC_MIN_BUCKETS}
    sync: dict[tuple[str, str], float] = {}
    cache.sync_checks = 0
    if len(sets) < 2:
        cache.overlaps = {}
        return sync
    low = min(min(s) for s in sets.values())
    high = max(max(s) for s in sets.values())
    span = max(1, high - low + 1)
    signatures = {a: cache.signature("buckets", a, s) for a, s in sorted(sets.items())}
    # Classes of identical bucket sets: the same signature (cheap), then the same set as the first account with that
    # signature. Only the first: sets that differ where no permutation looks can share a signature, and comparing each
    # with every earlier one would be quadratic again; such an account is its own class (its tries are bounded).
    representative: dict[str, str] = {}
    members: dict[str, list[str]] = defaultdict(list)
    first: dict[bytes, str] = {}
    for account, signature in signatures.items():
        rep = first.setdefault(signature.tobytes(), account)
        if rep != account and sets[rep] != sets[account]:
            rep = account
        representative[account] = rep
        members[rep].append(account)

    overlaps: dict[tuple[str, str, str], tuple[int, int, int]] = {}
    values: dict[tuple[str, str], float] = {}  # per pair of classes (representatives, ordered)

    size = {a: len(s) for a, s in sets.items()}

    def value(x: str, y: str) -> float:
        a, b = representative[x], representative[y]
        if a > b:
            a, b = b, a
        key = (a, b)
        result = values.get(key)
        if result is not None:
            return result
        result = 0.0
        n_a, n_b = size[a], size[b]
        if min(n_a, n_b) >= SYNC_JACCARD * max(n_a, n_b):
            if a == b:
                common = n_a
            else:
                seen = cache.overlaps.get(("buckets", a, b))
                if seen is not None and seen[0] == n_a and seen[1] == n_b:
                    common = seen[2]
                else:
                    common = len(sets[a] & sets[b])
                    cache.sync_checks += 1
                overlaps[("buckets", a, b)] = (n_a, n_b, common)
            jaccard = common / (n_a + n_b - common)
            p, q = n_a / span, n_b / span
            chance = p * q / max(1e-9, p + q - p * q)
            if jaccard >= SYNC_JACCARD and jaccard >= SYNC_LIFT * chance:
                result = SYNC_WEIGHT * min(1.0, (jaccard - 0.15) / 0.3)
        values[key] = result
        return result

    def keep(x: str, y: str) -> None:
        pair = (x, y) if x < y else (y, x)
        if pair not in sync:
            found = value(*pair)
            if found > 0.0:
                sync[pair] = found

    for x, y in candidates:
        if x in sets and y in sets:
            keep(x, y)
    lsh: LSHIndex[str] = LSHIndex(SYNC_JACCARD, num_perm=_NUM_PERM, weights=_LSH_WEIGHTS)
    for rep in members:
        lsh.insert(rep, signatures[rep])
    for rep, near in lsh.nearest(SYNC_TRIES, SYNC_CROWD).items():
        confirmed = [other for other in near if value(rep, other) > 0.0]
        for account in members[rep]:
            for other in confirmed:
                keep(account, other)
    for rep, group in members.items():
        if len(group) > 1 and value(rep, rep) > 0.0:
            half = SYNC_TRIES // 2
            ordered = sorted(group, key=_stable_hash)
            for i, account in enumerate(ordered):
                for other in ordered[i + 1:i + 1 + half]:
                    keep(account, other)
    cache.overlaps = overlaps
    return sync


_SELF_DESCRIBED = frozenset({"sync", "bank", "cohort"})  # link items whose value is already their words
# A cohort link (cohorts module): as strong as a plain two-family link, and what made it is the cohort itself.
COHORT_STRENGTH = 1.0


def _cohort_links(links: dict[tuple[str, str], _Link], collector: AttributionCollector, templates: TemplateSource,
                  metadata: Mapping[str, AccountMeta], bursts: Mapping[str, tuple[str, ...]], own_scores: Mapping[str, float],
                  org_of: Mapping[str, str]) -> dict[str, float]:
    """Add each significant cohort's links (every member to the cohort's hubs) to ``links``; return each member's
    certainty (its most significant cohort's, :attr:`Cohort.certainty`).

    The link is two families — the block's (meta: a creation burst) and the trait's own — so a member tied by it
    counts as widely tied (``member_ties``); a pair already linked keeps its link with the cohort added to what it
    shares.
    """
    active = collector.accounts
    blocks = burst_runs(metadata, (a for a in bursts if a in active))
    blocks += arrival_blocks({a: (s.first_seen, s.requests) for a, s in active.items() if s.first_seen >= 0},
                             max((s.last_seen for s in active.values()), default=0.0), bursts.keys(), metadata)
    if not blocks:
        return {}
    empty: Mapping[str, str] = {}

    def traits(account: str, in_block: bool) -> set[Item]:
        single_turn, wrappers = templates.wrappers(account)
        meta = metadata.get(account)
        state = active.get(account)
        # Only the kinds a cohort may share (cohort_traits keeps no other): the rest of an account's items are what
        # cost most to make, and every account is in a block (arrival windows) at every clustering.
        found = account_items(state, single_turn, wrappers, templates.systems(account), meta.attributes if meta else empty, (),
                              minimum_count=1, kinds=ARRIVAL_KINDS)
        if state is not None and state.requests < ROTATION_MIN_REQUESTS:
            # Rotation from the second request on (as a link item it needs ROTATION_MIN_REQUESTS, already in `found`).
            rotating = rotation_item(state, min_requests=2)
            if rotating is not None:
                found.append(rotating)
        return cohort_traits(found, scripted_only=in_block and state is not None and state.requests >= MIN_REQUESTS)

    background = (a for a in active if own_scores.get(a, 0.0) < BACKGROUND_BELOW)
    members: dict[str, float] = {}
    for cohort in find_cohorts(traits, blocks, background):
        text = (f"{describe(cohort.trait, len(cohort.members))} on {len(cohort.members)} of the {cohort.n} accounts of one "
                f"{cohort.block.origin} ({cohort.block.label}; {cohort.expected:.1f} expected by chance)")
        item = (Item("cohort", text, 1.0), 1.0)
        families = {cohort.block.family: 0.6}
        trait_family = KINDS[cohort.trait.kind][0]
        families[trait_family] = max(families.get(trait_family, 0.0), 0.3, KINDS[cohort.trait.kind][1])
        hubs = sorted(cohort.members, key=_stable_hash)[:HUBS]
        for a in cohort.members:
            for hub in hubs:
                if a == hub or (org_of.get(a) is not None and org_of.get(a) == org_of.get(hub)):
                    continue
                pair = (a, hub) if a < hub else (hub, a)
                link = links.get(pair)
                if link is None:
                    links[pair] = _Link(dict(families), [item], COHORT_STRENGTH, private=COHORT_STRENGTH, hub=True)
                elif item not in link.items:
                    link.items.append(item)
                    link.private = max(link.private, COHORT_STRENGTH)  # a cohort is rare by construction (cohorts module)
        for a in cohort.members:
            members[a] = max(members.get(a, 0.0), cohort.certainty)
    return members


# A member's tie counts fully when its private link evidence reaches this share of its cluster's typical member's ...
TIE_TYPICAL_SHARE = 0.75
# ... and this much in absolute terms: a cluster whose members are tied only weakly by anything private lifts them
# only as far (PRIVATE_FULL).
PRIVATE_FULL = 0.3


def member_ties(members: list[str], private: Mapping[str, float], kinds: Mapping[str, AbstractSet[str]] | None = None) -> dict[str, float]:
    """How far a cluster's evidence may speak for each member, in [0, 1]: its own private tie against its cluster's.

    Label propagation puts an account in the community that carries most of its link weight, so an account linked
    to a fleet only by what strangers also share (a cloud provider's /24, an office's address, stock parameters,
    common habits, a free-mail domain) sits in the fleet's cluster beside members tied by the fleet's private
    wrapper, system prompt, phrase bank or payment card. Lifting it to the cluster's score made legitimate accounts
    ``high`` on their neighbours' evidence (issue #11's test split: at stop 13 an early adopter, a person and a
    learner, their own evidence 0.01–0.02; at stop 14 two people, a learner, a coder and a night owl in a campaign
    that imitates people, tied by such traits — content and meta — as strongly as the campaign's members were tied
    by their weak phrase banks and records). So a member is judged only by its *private* evidence (``private``:
    the most any of its links inside the cluster shares beyond ``SURFACE_KINDS``, net of what chance explains —
    :func:`_private`, :mod:`distillguard.detect.chance`), three times, and the weakest judgement counts:

    - against its cluster's median member: ``min(1, private ÷ (TIE_TYPICAL_SHARE × median))`` — a member unlike
      the rest of its cluster is not lifted as they are;
    - in absolute terms: ``min(1, private ÷ PRIVATE_FULL)`` — surface traits alone give a tie of 0, whatever the
      rest of the cluster is tied by, and a cluster tied by nothing private lifts no one;
    - by the *families* tying it (``kinds``: content, time, infra, meta at ≥ 0.3 in one of its links): a member tied
      by one family where the typical member is tied by several counts for ``1 ÷ typical``; two or more families,
      or one identity item (the same enrolled install or payment fingerprint), count fully.

    A quiet member tied by the fleet's own rare evidence has the typical tie and is lifted fully however little it
    sends.
    """
    if not members:
        return {}
    kinds = kinds or {}
    typical_tie = typical(private.get(a, 0.0) for a in members)
    typical_kinds = typical(len(kinds.get(a, ())) for a in members)
    out = {}
    for a in members:
        strong = _private_tie(private.get(a, 0.0), typical_tie)
        found = kinds.get(a, frozenset())
        wide = 1.0 if "identity" in found or len(found) >= 2 or not typical_kinds else min(1.0, len(found) / typical_kinds)
        out[a] = min(strong, wide)
    return out


def _private_tie(own: float, typical_tie: float) -> float:
    """A member's private evidence judged against its cluster's typical member's and in absolute terms (member_ties)."""
    return min(1.0, own / (TIE_TYPICAL_SHARE * typical_tie), own / PRIVATE_FULL) if typical_tie > 0.0 else 0.0


# A member is admitted to its community's cluster only when its private tie (_private_tie) reaches this: its two most
# private links there carry at least half what a typical member's do and at least 0.15 in absolute terms.
ADMIT_TIE = 0.5
ADMIT_ROUNDS = 4


def _top_private(members: AbstractSet[str], links: list[tuple[str, str, _Link]]) -> dict[str, float]:
    """Per member, the mean of its two most private links to other members (0 when it has none)."""
    best: dict[str, list[float]] = {a: [0.0, 0.0] for a in members}
    for a, b, link in links:
        if a in members and b in members:
            for end in (a, b):
                top = best[end]
                if link.private > top[1]:
                    top[1] = link.private
                    top.sort(reverse=True)
    return {a: sum(top) / 2 for a, top in best.items()}


def admitted(members: list[str], links: list[tuple[str, str, _Link]]) -> list[str]:
    """The members of one community that its cluster admits: those tied to the others by private evidence.

    Label propagation puts an account in the community holding most of its link weight, and a link can be made of
    what strangers share (``SURFACE_KINDS``: a campus /24, a popular client, stock parameters, daytime habits, a
    free-mail or university domain): an ordinary person sharing all of that with a few members of a campaign that
    imitates people sits in its community on one or two such links, while the members are tied to one another by
    their private bank of phrasings, wrappers, installs or cards. Issue #11's test split had such people in its
    `imitates_people` cluster, so the campaign counted as not clustered at all (purity below 0.95). So each member
    is admitted only when its private tie to the others — the mean of its two most private links inside the group,
    judged against the group's median member (``_private_tie``) — reaches ``ADMIT_TIE``; whoever is not admitted is
    removed, the rest are judged again without the links to them (a stray's link to another stray stops counting),
    until nothing changes (at most ``ADMIT_ROUNDS``). A group tied by nothing private admits no one: it was made of
    what strangers share. What is not admitted is left out of every cluster (never a cluster of the leftovers).
    """
    current = set(members)
    for _ in range(ADMIT_ROUNDS):
        private = _top_private(current, links)
        typical_tie = typical(private.values())
        keep = {a for a in current if _private_tie(private[a], typical_tie) >= ADMIT_TIE}
        if keep == current or len(keep) < 3:
            current = keep
            break
        current = keep
    return sorted(current)


HUB_WEIGHT = 0.1


def _communities(accounts: list[str], links: Mapping[tuple[str, str], _Link], rounds: int = 12) -> dict[str, str]:
    """Each account's community: weighted label propagation over the links, deterministic.

    Plain connected components would join two fleets as soon as a handful of their members happen to share
    something (the same public dataset's phrasing, a creation slot): one link is enough. Here every account
    takes, round after round, the label carrying the most link strength among its neighbours (ties: the
    smallest label), so two dense groups joined by a few links keep their own labels. Accounts are visited in
    sorted order and labels start as the accounts' own ids, so the result never depends on arrival order.
    """
    # A cohort links each of its members to the same few hubs, so a hub holds one link per member of the cohort; when
    # one cohort spans two fleets (both created in one burst run, sharing the trait tested), the hubs' hundreds of
    # cohort links carried them — and through them everyone — to one label, whatever the fleets' own pairwise ties
    # said (dev seed 11: a 101-account sleeper fleet and a 294-account campaign in one cluster). So an account's
    # cohort-only links together weigh as much as ``HUBS`` of them, each at ``HUB_WEIGHT`` of its strength: a member's
    # own few hub links count, a hub's hundreds are scaled down to that, and wherever an account has pairwise links
    # they decide its label — a cohort member with nothing else still takes its hubs' label. (Scaling alone was not
    # enough: in the first round the other fleet's labels are still scattered, and the hubs' links carried the first
    # fleet's label into the second; tests/test_cluster_admission.py.)
    hub_links: dict[str, int] = defaultdict(int)
    for (a, b), link in links.items():
        if link.hub:
            hub_links[a] += 1
            hub_links[b] += 1
    neighbours: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (a, b), link in links.items():
        for end, other in ((a, b), (b, a)):
            scale = HUB_WEIGHT * min(1.0, HUBS / hub_links[end]) if link.hub else 1.0
            neighbours[end].append((other, link.strength * scale))
    label = {a: a for a in accounts}
    linked = sorted(neighbours)
    for _ in range(rounds):
        changed = 0
        for account in linked:
            weights: dict[str, float] = defaultdict(float)
            for other, strength in neighbours[account]:
                weights[label[other]] += strength
            best = min(weights.items(), key=lambda kv: (-kv[1], kv[0]))[0]
            own = weights.get(label[account], 0.0)
            if best != label[account] and weights[best] > own:
                label[account] = best
                changed += 1
        if not changed:
            break
    return label


def _score_cluster(members: list[str], links: list[_Link], families: set[str], shared: list[str],
                   own_scores: Mapping[str, float], cohort: float = 0.0) -> Cluster:
    """A cluster's score: its members' own scores, lifted by how strongly attribution ties them.

    ``base = 0.5 × mean + 0.5 × mean of the top half`` of the members' own distillation scores;
    ``coordination = logistic(size; 5, 1.5) × min(1, families tying them ÷ 3) × mean link strength (≤ 1)``, or
    ``logistic(size; 5, 1.5) ×`` the members' mean cohort certainty (``cohort``, :attr:`Cohort.certainty`) when larger;
    ``score = base + (1 − base) × lift × coordination`` with ``lift`` 0.8 when ``base ≥ 0.4`` (members partly
    suspicious already) and 0.6 otherwise — so a large, tightly tied fleet of quiet accounts reaches the
    medium band on attribution alone, and only its members' own evidence takes it to high.
    """
    scores = sorted((own_scores.get(a, 0.0) for a in members), reverse=True)
    half = max(1, len(scores) // 2)
    base = 0.5 * sum(scores) / len(scores) + 0.5 * sum(scores[:half]) / half
    mean_strength = min(1.0, sum(link.strength for link in links) / max(1, len(links)))
    size = logistic(len(members), 5, 1.5)
    # A cohort (cohorts module) ties its members as one actor by a test against chance, not by pairs of accounts: its
    # certainty, over the members, is the coordination when it says more than the links' families do.
    coordination = max(size * min(1.0, len(families) / 3) * mean_strength, size * cohort)
    lift = 0.8 if base >= 0.4 else 0.6
    score = base + (1 - base) * lift * coordination
    return Cluster(stable_cluster_id(members), members, min(1.0, score), shared, coordination, sorted(families))
