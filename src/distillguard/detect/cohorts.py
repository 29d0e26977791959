"""Cohorts: the quiet accounts of one creation burst that share a trait far more often than chance would.

A campaign of hundreds of accounts at two or three requests each is loud, its
accounts are not: one or two requests give an account no recurring wrapper, no
synchronised activity and no habits, so pairwise attribution
(:mod:`distillguard.detect.clustering`, which needs ``MIN_REQUESTS`` of an
account) never sees them. What ties them is the campaign's shape: the operator
made them in one creation burst (the operator's records, ``scan --accounts``)
and drives them with one script, so a trait of that script — a client profile,
a request-parameter profile, a private prompt wrapper, a hosting /24 — is carried by far more of the burst's accounts than the
background's share of that trait would put there.

That is the test, a null model per (burst, trait): with ``n`` accounts of the
burst active and a share ``p`` of a fixed sample of the background (accounts
outside any burst that do not look like distillers on their own) carrying the
trait, the ``k`` burst accounts carrying it form a *cohort* when

- ``k ≥ COHORT_MIN``,
- the trait is ``COHORT_LIFT`` times over-represented (``k/n ≥ COHORT_LIFT × p``), and
- ``P(Binomial(n, p) ≥ k) ≤ 10^COHORT_LOG10_P`` (strict: a log holds thousands of
  (burst, trait) pairs).

So strangers who signed up in the same hours — early adopters before a model's
release, a class on its first day — are not a cohort: their clients,
parameters and wording are the background's. Unrelated legitimate accounts on
one popular ISP or behind one office address are no cohort either: an address,
a residential network and an e-mail domain are never a cohort's trait (an office
onboarded in one afternoon shares all three), and people's clients, parameters
and wording are the background's. Every account is tested
against the traits it shows at all (any single observation), so a cohort is
found from the first request of each member; its cost is the burst members'
traits plus a bounded background sample, never pairs of accounts.
"""

from __future__ import annotations

import datetime as dt
import heapq
import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain

from distillguard.detect.accounts import AccountMeta
from distillguard.detect.attribution import Item

__all__ = ["ARRIVAL_KINDS", "COHORT_KINDS", "Block", "Cohort", "burst_runs", "cohort_traits", "find_cohorts", "log10_binomial_tail"]

COHORT_MIN = 5
COHORT_LIFT = 4.0
COHORT_LOG10_P = -8.0
# A burst run: accounts of creation bursts (``clustering.creation_bursts``) whose creation times follow each other
# within this gap. Two fleets created the same afternoon may share one run; their traits then tell them apart.
RUN_GAP_S = 1800.0
# How many background accounts the null model reads (the first by a stable hash): its cost stays bounded however
# large the log, and the sample's share of a trait is what "by chance" means.
NULL_SAMPLE = 4000
# The traits a cohort may share, by the attribution kind they are (family, and so what a link made of them says).
# Left out: identity items (an install or card already links on its own), habits (need ten requests), rotation
# (needs eight) and creation slots (the burst itself is the block).
# Also left out: an exact address, a residential /24 and an e-mail domain — what an office's or a campus's people share
# when they are onboarded together (one burst, one egress address, one company domain), which is not one operator.
# A scaffold marker ("Input: …", "… ---": attribution's ``scaffold``) is a script's template as surely as a four-word
# wrapper, and often the only one a campaign of one-word labels has; two-word pieces are not traits (most are the first
# or last words of the task itself).
COHORT_KINDS = frozenset({"profile", "params", "hosting_net", "hosting_asn", "wrapper", "scaffold", "system_prompt"})
# An arrival surge (arrivals module) may also share rotation: a new network on most requests from the second on. Not a
# creation run's: a run chains bursts over hours, and on dev seed 9 two campaigns made in one run that both draw a
# proxy per request became one cohort by it.
ARRIVAL_KINDS = COHORT_KINDS | {"rotation"}
_SCRIPTED_KINDS = frozenset({"wrapper", "system_prompt"})
SCRIPTED_SHARE = 0.5
# How much a cohort says about its members being one actor, in [0, 1]: its binomial tail's −log10 over this.
COHORT_CERTAIN_LOG10_P = 20.0
# A carrier of a creation burst's run joins its cohort when fewer than this many of the run's strangers are expected to
# match it (``find_cohorts``, ``Block.admit_below``).
STRANGERS_MAX = 0.25


@dataclass(frozen=True)
class Block:
    """Accounts that came together by one record: a creation burst's run (family ``meta``, the operator's records).
    A cohort is a block's carriers of one trait."""

    label: str
    family: str
    members: tuple[str, ...]
    strangers: float  # how many of the members the block's time span alone would bring: the background's rate × its span
    # A carrier is admitted to a cohort when fewer than this many of the block's strangers are expected to carry what it
    # carries (``find_cohorts``); arrival surges ask for less (arrivals module: a public event brings strangers together).
    admit_below: float = STRANGERS_MAX
    kinds: frozenset[str] = COHORT_KINDS  # the traits its cohorts may share
    # How a carrier's match is counted (``find_cohorts``): per trait (a creation burst's run), or per kind of trait,
    # by the background's share carrying any of the block's significant values of that kind (an arrival surge).
    by_kind: bool = False
    # What brought the members together, in the cluster's ``shared`` text ("… of one creation burst").
    origin: str = "creation burst"
    # Whether the members leave the background sample. A burst or a surge is an excess, so its members are not what
    # "by chance" means; an arrival window (arrivals module) is any few hours' arrivals — a random part of the
    # background under the null model, and together the windows hold every account, which would empty the sample.
    exclusive: bool = True
    # A carrier is admitted only when one kind it matches is this rare in the background (``by_kind`` blocks). An
    # arrival window is one of ~100 in a week's log, each with a few strangers: on dev seed 1 a person on a campaign's
    # popular client profile and a common parameter set passed 0.01 strangers beside 86 of its accounts in a 4-hour
    # window just after its surge. Popular traits together tie a surge's excess, not a window's few strangers.
    rare_below: float = 1.0


@dataclass(frozen=True)
class Cohort:
    """The ``members`` of one ``block`` that carry ``trait``, where the background's share ``p`` of it would put
    ``n × p`` of the block's ``n``; ``log10_p`` is the binomial tail of seeing that many."""

    block: Block
    trait: Item
    members: tuple[str, ...]
    p: float
    log10_p: float

    @property
    def n(self) -> int:
        return len(self.block.members)

    @property
    def expected(self) -> float:
        return self.n * self.p

    @property
    def certainty(self) -> float:
        """How surely the members are one actor, in [0, 1]: ``−log10_p / COHORT_CERTAIN_LOG10_P``, at most 1."""
        return min(1.0, -self.log10_p / COHORT_CERTAIN_LOG10_P)


def burst_runs(metadata: Mapping[str, AccountMeta], in_burst: Iterable[str]) -> list[Block]:
    """The burst accounts grouped into runs of creation times at most ``RUN_GAP_S`` apart; a run's strangers are what
    the metadata's average creation rate puts in its span (plus an hour)."""
    created = [t for m in metadata.values() if (t := m.created_at) is not None]
    if not created:
        return []
    rate = len(created) / max(86_400.0, max(created) - min(created))
    times = sorted((t, a) for a in in_burst if (m := metadata.get(a)) is not None and (t := m.created_at) is not None)
    runs: list[Block] = []
    current: list[tuple[float, str]] = []
    for t, account in times:
        if current and t - current[-1][0] > RUN_GAP_S:
            runs.append(_run(current, rate))
            current = []
        current.append((t, account))
    if current:
        runs.append(_run(current, rate))
    return runs


def _run(members: list[tuple[float, str]], rate: float) -> Block:
    first, last = members[0][0], members[-1][0]
    return Block(f"{len(members)} accounts created {_when(first)}–{_when(last)[-9:]}", "meta", tuple(a for _, a in members),
                 rate * (last - first + 3600.0))


def _when(ts: float) -> str:
    return f"{dt.datetime.fromtimestamp(ts, dt.UTC):%Y-%m-%d %H:%M} UTC"


def cohort_traits(items: Iterable[Item], scripted_only: bool = False) -> set[Item]:
    """The traits a cohort may share among an account's items (``account_items(..., minimum_count=1)``: every value it
    shows at all), shares dropped: carrying a trait is what the null model counts.

    ``scripted_only`` (a block member with a history of its own): a wrapper or system prompt counts only when it frames
    at least ``SCRIPTED_SHARE`` of the account's prompts — a script's template, not probes tried now and then:
    strangers who signed up before a model's release and each try the same public release-day probes share a burst
    and those wrappers because of one public event. The background sample is never filtered so, or a phrase common in
    people's prompts would look rare beside quiet accounts, whose one or two prompts all carry it."""
    return {Item(i.kind, i.value, 1.0) for i in items
            if i.kind in ARRIVAL_KINDS and not (scripted_only and i.kind in _SCRIPTED_KINDS and i.share < SCRIPTED_SHARE)}


def _stable(account: str) -> int:
    return zlib.crc32(account.encode())  # any stable order will do: the sample only has to be the same on every run


def log10_binomial_tail(k: int, n: int, p: float, stop_above: float = math.inf) -> float:
    """log10 P(Binomial(n, p) ≥ k), summed in log space from ``k`` (the terms fall fast once k > n·p).

    ``stop_above``: when the first term alone (a lower bound of the tail) already exceeds it, that bound is returned
    without the sum: :func:`find_cohorts` needs the tail only where it is at most ``COHORT_LOG10_P``."""
    if k <= 0:
        return 0.0
    if k > n:
        return -math.inf
    p = min(max(p, 1e-12), 1 - 1e-12)
    lp, lq = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    first = base - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq
    if first / math.log(10) > stop_above:
        return first / math.log(10)
    terms = [first] + [base - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
                       for i in range(k + 1, min(n, k + 400) + 1)]
    top = max(terms)
    return (top + math.log(sum(math.exp(t - top) for t in terms))) / math.log(10)


def find_cohorts(traits: Callable[[str, bool], set[Item]], blocks: Sequence[Block], background: Iterable[str]) -> list[Cohort]:
    """Every significant (block, trait) cohort, largest first (module docstring).

    ``traits(account, in_block)``: an account's traits (:func:`cohort_traits`), as a block member or as part of the
    background sample; ``blocks``: :func:`burst_runs` of the accounts with at
    least one request; ``background``: accounts that do not look like distillers on their own.
    Blocks are judged against a sample of the background outside every block.

    Cost: arrival windows put every account in about four blocks, so at 100,000 accounts the per-(block, member,
    trait) work is millions of steps at every clustering. Each distinct trait is numbered once per call (an
    :class:`Item`'s hash is computed in Python, an int's is itself), and the background's share carrying any of a
    kind's values, or a combination of kinds, is counted with set operations over each trait's carriers in the sample
    rather than by a pass over the sample per block: the same counts.
    """
    tested: list[tuple[Block, dict[int, list[str]]]] = []
    wanted: set[int] = set()
    number: dict[tuple[str, str, float], int] = {}  # each distinct trait → its number in this call
    item_of: list[Item] = []
    known: dict[str, tuple[int, ...]] = {}  # an account's traits as a block member: arrival windows overlap, so it is in several

    def numbered(found: Iterable[Item]) -> tuple[int, ...]:
        out = []
        for trait in found:
            key = (trait.kind, trait.value, trait.share)  # what an Item's equality compares, hashed in C
            i = number.get(key)
            if i is None:
                i = number[key] = len(item_of)
                item_of.append(trait)
            out.append(i)
        return tuple(out)

    for block in blocks:
        in_block = block.members
        if len(in_block) < COHORT_MIN:
            continue
        for account in in_block:
            if account not in known:
                known[account] = numbered(traits(account, True))
        # How many members carry each trait (first carried first, as the members and their traits come), then the
        # carriers of the traits carried often enough, in the members' order.
        counts = Counter(chain.from_iterable(map(known.__getitem__, in_block)))
        often = {t for t, count in counts.items() if count >= COHORT_MIN and item_of[t].kind in block.kinds}
        if not often:
            continue
        carriers: dict[int, list[str]] = {t: [] for t in counts if t in often}
        for account in in_block:
            for trait in often.intersection(known[account]):
                carriers[trait].append(account)
        wanted.update(carriers)
        tested.append((block, carriers))
    in_blocks = {a for block in blocks if block.exclusive for a in block.members}
    sample = heapq.nsmallest(NULL_SAMPLE, (a for a in background if a not in in_blocks), key=_stable)
    if not wanted or not sample:
        return []
    holders: dict[int, set[str]] = defaultdict(set)  # each wanted trait → the sample accounts carrying it
    carried: dict[str, frozenset[int]] = {}  # each sample account's wanted traits
    for account in sample:
        mine = frozenset(t for t in numbered(traits(account, False)) if t in wanted)
        for trait in mine:
            holders[trait].add(account)
        if mine:
            carried[account] = mine
    in_sample = set(sample)
    cohorts = []
    for block, carriers in tested:
        n = len(block.members)
        # A block that stays in the sample (an arrival window) is judged against the rest of it: the trait's share
        # among the accounts that arrived at other times, not a share its own carriers raise.
        own: dict[int, int] = defaultdict(int)
        inside: set[str] = set()
        if not block.exclusive:
            inside = {a for a in block.members if a in in_sample}
            for a in inside:
                for trait in carried.get(a, ()):
                    own[trait] += 1
        size = len(sample) - len(inside)
        significant: list[tuple[int, list[str], float, float]] = []
        for trait, members in carriers.items():
            k = len(members)
            p = (len(holders.get(trait, ())) - own.get(trait, 0) + 1) / (size + 2)
            if k / n < COHORT_LIFT * p:
                continue
            tail = log10_binomial_tail(k, n, p, COHORT_LOG10_P)
            if tail <= COHORT_LOG10_P:
                significant.append((trait, members, p, tail))
        if not significant:
            continue
        # Which carriers are the operator's: the block also holds strangers (those who signed up or first came in the
        # same hours), and a stranger carries a trait at the background's rate. Their number is the larger of what the
        # block's span brings at the background's rate and the block's accounts outside its largest cohort; an account
        # is admitted when the strangers expected to match it stay below the block's ``admit_below``: the product of
        # the shares of the significant traits it carries, or, ``by_kind``, of the background's share carrying *any*
        # of the block's significant values of each kind it matches (client profile, parameters, wrapper, ...) — a
        # script's accounts spread over several common parameter sets, and a stranger needs to hit only one of them.
        _, top, top_p, _ = max(significant, key=lambda s: (len(s[1]), -s[2]))
        strangers = max(1.0, block.strangers, n - len(top)) / (1.0 - top_p)
        chance = dict.fromkeys(block.members, strangers)
        if block.by_kind:
            kinds_of: dict[str, set[int]] = defaultdict(set)
            for trait, _, _, _ in significant:
                kinds_of[item_of[trait].kind].add(trait)
            # the sample's accounts outside the block carrying any of each kind's significant values
            cover = {kind: set().union(*(holders.get(t, ()) for t in values)) - inside for kind, values in kinds_of.items()}
            union = {kind: (len(cover[kind]) + 1) / (size + 2) for kind in kinds_of}
            matched: dict[str, set[str]] = defaultdict(set)
            for trait, members, _, _ in significant:
                kind = item_of[trait].kind
                for a in members:
                    matched[a].add(kind)
            joint: dict[frozenset[str], float] = {}
            for a, found_kinds in matched.items():
                combination = frozenset(found_kinds)
                if combination not in joint:
                    joint[combination] = math.prod(union[kind] for kind in found_kinds)
                    if not block.exclusive:
                        # An arrival window's strangers are any hours' people, and people's traits go together (coders
                        # on the popular SDK ask a public dataset's coding tasks): the background's own share carrying
                        # the whole combination when it is more than the product (dev seed 1: a person on a campaign's
                        # client profile, with its dataset's opening, was admitted by the product).
                        both = len(set.intersection(*(cover[kind] for kind in combination)))
                        joint[combination] = max(joint[combination], both / max(1, size))
                chance[a] *= joint[combination]
                if min(union[kind] for kind in found_kinds) > block.rare_below:
                    chance[a] = math.inf  # nothing rare: popular traits together (a window's admission, ``Block``)
        else:
            for _, members, p, _ in significant:
                for a in members:
                    chance[a] *= p
        for trait, members, p, tail in significant:
            admitted = tuple(sorted(a for a in members if chance[a] <= block.admit_below))
            if len(admitted) >= COHORT_MIN:
                cohorts.append(Cohort(block, item_of[trait], admitted, p, tail))
    cohorts.sort(key=lambda c: (-len(c.members), c.block.label, c.trait.kind, c.trait.value))
    return cohorts
