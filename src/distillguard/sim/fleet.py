"""Distillation campaigns drawn from a parameter space, and the actor that plays one.

``CampaignParams`` is one point of the space (docs/evaluation.md lists every
axis and its range); ``sample_campaign`` draws one, either anywhere in the
space (``archetype="sampled"``) or around a named design seen in the wild:

* ``quiet_sweep`` — single-turn, no reasoning phrasing, ordinary parameters,
  a new residential address for every request;
* ``sleeper_fleet`` — ~120 accounts × 4–12 requests a day, created within
  hours of each other, on a few hosting networks, two short wrappers;
* ``imitates_people`` — streams, attests one enrolled install per account,
  2–3-turn conversations with generic follow-ups, reasoning requests in
  paraphrases and several languages, local daytime on its own home address;
* ``grader`` — grader / reward-model prompts on rotating residential addresses;
* ``corner`` (the hold-out split's sampled campaigns) — drawn as ``sampled`` was when the
  hold-out split was made (``CORNER_BASE``), then pushed into the corners of the space
  (``_corners``); dev's and test's ``sampled`` draws (``SPACE``) now reach those regions
  by their own U-shaped draws, without the corners' fixed values.

A campaign's expected size is capped (``budget`` requests) by shortening its
lifetime first and then its rate, so one seed of the family stays quick to
scan; the cap is recorded in the labels.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from distillguard.sim.corpora import SWEEP_POOLS
from distillguard.sim.people import benign_params
from distillguard.sim.populations import DAY, Actor, Client, TimedEvent, excerpt
from distillguard.sim.splits import Wording
from distillguard.sim.world import (
    CAMPAIGN_HOSTING_ASNS,
    PLACE_OF_ASN,
    PLACES,
    RESIDENTIAL_PROXY_ASNS,
    Network,
    header_fp,
    user_agent,
)

__all__ = ["ARCHETYPES", "MIN_REQUESTS", "STRESS_CORNERS", "CampaignParams", "Fleet", "sample_campaign"]

_DIGITS = re.compile(r"(?<![\w.])\d{1,4}(?![\w.])")
ARCHETYPES = ("quiet_sweep", "sleeper_fleet", "imitates_people", "grader", "sampled", "corner", "stress_<corner>")
TIMINGS = ("synchronised", "balanced", "uniform", "daytime", "per_account_daytime")
NETWORKS = ("per_request", "per_account", "hosting", "mixed")


@dataclass
class CampaignParams:
    """One campaign: a point in the space of campaign designs."""

    archetype: str = "sampled"
    accounts: int = 40
    rate: float = 40.0  # requests per account-day (mean over accounts)
    start_day: float = 0.0
    lifetime_days: float = 7.0
    timing: str = "uniform"
    stream: float = 0.0
    attest: bool = False
    tz_consistent: bool = True
    multi_turn: float = 0.0
    system: str = "none"  # none | shared | per_account
    wrappers: str = "few"  # none | few | paraphrased | short
    elicit: float = 0.3
    languages: tuple[str, ...] = ("en",)
    grader: float = 0.0
    network: str = "hosting"
    hosting_asns: int = 1
    creation: str = "spread"  # burst | waves | spread | staggered (aged reserves replacing accounts one at a time)
    benign_mix: float = 0.0
    ban_replace: bool = False
    ban_day: float | None = None
    pivot: bool = False
    params: str = "benign"  # benign | pinned
    pools: tuple[str, ...] = SWEEP_POOLS
    payments: str = "unique"  # unique | pooled | shared | none
    email: str = "webmail"  # webmail | custom | mixed
    ua: str = "shared"  # shared | varied
    public_wrappers: float = 0.0  # share of prompts in a public chain-of-thought wrapper instead of the campaign's own
    public_system: float = 0.0  # share of accounts sending a stock public system prompt instead of the campaign's own
    capped: bool = False

    def expected_requests(self) -> float:
        return self.accounts * self.rate * self.lifetime_days * (1 + 1.5 * self.multi_turn)

    def as_label(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["languages"], data["pools"] = list(self.languages), list(self.pools)
        return data


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _uniform(rng: random.Random, low: float, high: float) -> float:
    return rng.uniform(low, high)


def _u_shaped(rng: random.Random, low: float, high: float) -> float:
    """A draw over [low, high] with real mass near both ends: Beta(½, ½), the arcsine law.

    It still covers the interior (40 % of draws fall in the middle half), but a fifth land in each tenth at the
    ends — where a uniform draw puts a tenth, and a log-uniform draw of two axes puts 1 % in a joint corner.
    """
    return low + (high - low) * rng.betavariate(0.5, 0.5)


def _log_u_shaped(rng: random.Random, low: float, high: float) -> float:
    return math.exp(_u_shaped(rng, math.log(low), math.log(high)))


@dataclass(frozen=True)
class SpaceDraws:
    """How ``_draw_space`` draws the continuous axes: sizes and rates (``size``), lifetimes and shares (``share``)."""

    size: Callable[[random.Random, float, float], float]
    share: Callable[[random.Random, float, float], float]
    synchronised_up_to: int | None = None  # larger campaigns draw another timing (``SYNCHRONISED_UP_TO``)


# Dev's and test's ``sampled`` campaigns: every continuous axis U-shaped (log-scale for accounts and rates), so a
# world's campaigns reach 5 and 500 accounts, 2 and 300 requests/account-day, one-day and whole-week lifetimes, 0 and
# 80 % elicitation — the whole of the space, not mostly its middle.
SPACE = SpaceDraws(size=_log_u_shaped, share=_u_shaped, synchronised_up_to=300)
# The draws ``sampled`` had up to stop 13, kept as the base of the hold-out's ``corner`` campaigns (random stream unchanged).
CORNER_BASE = SpaceDraws(size=_log_uniform, share=_uniform)


def _draw_space(rng: random.Random, p: CampaignParams, draws: SpaceDraws, *, days: int, release_day: float | None,
                languages: Callable[[int], tuple[str, ...]]) -> None:
    """Draw every axis of the space independently (docs/evaluation.md, "The `robust` family")."""
    size, share = draws.size, draws.share
    p.accounts = int(size(rng, 5, 500))
    p.rate = size(rng, 2, 300)
    p.start_day = rng.uniform(0, days * 0.5)
    p.lifetime_days = share(rng, 1, days - p.start_day)
    p.timing = rng.choice(TIMINGS)
    if draws.synchronised_up_to is not None and p.timing == "synchronised" and p.accounts > draws.synchronised_up_to:
        # Every account within 3 s of the others, 300+ at a time, is the loudest design there is, and it makes eval's
        # clustering compare every pair of them at each of its 40 re-clusterings (dev seed 2's 495 synchronised accounts:
        # eval 263 CPU-s against 60-76 for the other seeds); such a campaign draws one of the other timings.
        p.timing = rng.choice([t for t in TIMINGS if t != "synchronised"])
    p.stream = rng.choice((0.0, 0.0, 0.5, 0.9))
    p.attest = rng.random() < 0.3
    p.tz_consistent = rng.random() < 0.6
    p.multi_turn = rng.choice((0.0, 0.0, 0.2, 0.5))
    p.system = rng.choice(("none", "shared", "per_account"))
    p.wrappers = rng.choice(("none", "few", "paraphrased", "short"))
    p.elicit = rng.choice((0.0, share(rng, 0, 0.8), share(rng, 0, 0.8)))
    p.languages = languages(rng.choice((1, 1, 2, 3, 5, 8)))
    p.grader = rng.choice((0.0, 0.0, 0.0, share(rng, 0.05, 0.5)))
    p.network = rng.choice(NETWORKS)
    p.hosting_asns = rng.randint(1, 3)
    p.creation = rng.choice(("burst", "waves", "spread"))
    p.benign_mix = rng.choice((0.0, 0.0, share(rng, 0.05, 0.5)))
    p.ban_replace = rng.random() < 0.25
    p.pivot = release_day is not None and rng.random() < 0.3
    p.params = rng.choice(("benign", "benign", "pinned"))
    p.pools = tuple(rng.sample(SWEEP_POOLS, rng.randint(1, len(SWEEP_POOLS))))
    p.payments = rng.choice(("unique", "pooled", "pooled", "shared", "none"))
    p.email = rng.choice(("webmail", "webmail", "mixed", "custom"))
    p.ua = rng.choice(("shared", "varied"))
    p.public_wrappers = rng.choice((0.0, 0.0, share(rng, 0.05, 0.5)))
    p.public_system = rng.choice((0.0, 0.0, share(rng, 0.2, 1.0)))


def _stress_corner(rng: random.Random, p: CampaignParams, corner: str, languages: Callable[[int], tuple[str, ...]], *, days: int,
                   release_day: float | None) -> bool:
    """Push a dev-drawn campaign (``_draw_space`` with ``SPACE``) into one joint corner of the space (``STRESS_CORNERS``).

    ``sampled`` draws every axis independently, so a *combination* of extremes — 500 accounts at two requests a day
    all week, each request from a new residential address, no creation burst, nothing in the wording — is a draw
    in hundreds. These set the axes that make a corner and leave the rest as drawn. Dev split only
    (``robust_stress``). Returns whether the size rule should lower the rate before the lifetime.
    """
    if corner == "wide_slow":  # hundreds of accounts, 2-3 requests a day all week, nothing shared but the task pools
        p.accounts, p.rate = rng.randint(300, 500), rng.uniform(2, 3)
        p.start_day = rng.uniform(0, 0.5)
        p.lifetime_days = days - p.start_day
        p.timing, p.network, p.creation, p.ua = rng.choice(("uniform", "per_account_daytime")), "per_request", "spread", "varied"
        p.system, p.wrappers, p.elicit, p.grader, p.multi_turn = "none", "none", rng.uniform(0, 0.1), 0.0, 0.0
        p.payments, p.email, p.params, p.ban_replace, p.pivot = rng.choice(("unique", "none")), "webmail", "benign", False, False
        p.public_wrappers = p.public_system = p.benign_mix = 0.0
        return True
    if corner == "silent_systems":  # one system prompt per account, no elicitation, no wrapper
        p.system, p.wrappers, p.elicit, p.grader, p.public_wrappers = "per_account", "none", 0.0, 0.0, 0.0
        p.network, p.creation = rng.choice(("per_account", "per_request")), "spread"
    elif corner == "replace_staggered":  # ban-and-replace from aged reserves, each account replaced at its own time
        p.ban_replace, p.creation, p.network = True, "staggered", rng.choice(("per_account", "per_request"))
        p.payments, p.email = rng.choice(("unique", "none")), "webmail"
    elif corner == "benign_heavy":  # most requests are ordinary conversations
        p.benign_mix, p.elicit = rng.uniform(0.6, 0.8), rng.uniform(0, 0.2)
        p.wrappers, p.network, p.creation = rng.choice(("none", "paraphrased")), "per_account", rng.choice(("spread", "waves"))
    elif corner == "people_like":  # streams, attests, follows up, per-account daytime, many languages
        p.stream, p.attest, p.tz_consistent, p.timing = 1.0, True, True, "per_account_daytime"
        p.multi_turn, p.wrappers, p.languages = rng.uniform(0.7, 0.9), "paraphrased", languages(8)
        p.elicit, p.network, p.creation, p.ua = rng.uniform(0.2, 0.8), "per_account", "spread", "varied"
        p.public_system, p.benign_mix, p.params, p.grader = rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.4), "benign", 0.0
    elif corner == "polyglot_elicit":  # 70-80 % elicitation, paraphrased per request in eight languages
        p.elicit, p.wrappers, p.languages = rng.uniform(0.7, 0.8), "paraphrased", languages(8)
        p.network, p.grader = rng.choice(("per_request", "per_account")), 0.0
    elif corner == "grader_rotating":  # mostly grader / reward-model prompts, a new address per request
        p.grader, p.network, p.elicit, p.wrappers = rng.uniform(0.6, 0.9), "per_request", rng.uniform(0, 0.2), "none"
    elif corner == "release_newcomers":  # accounts made hours before a release, on the new model from its first hour
        if release_day is not None:
            p.pivot, p.start_day = True, release_day
            p.lifetime_days = rng.uniform(1, days - release_day)
        p.creation, p.elicit, p.network = "burst", rng.uniform(0.1, 0.5), rng.choice(("per_account", "per_request"))
    else:
        raise ValueError(f"unknown stress corner {corner!r}; one of {STRESS_CORNERS}")
    return rng.random() < 0.5


# The joint corners ``robust_stress`` (dev only) draws, one campaign each (docs/evaluation.md, "Stress: the space's corners").
STRESS_CORNERS = ("wide_slow", "silent_systems", "replace_staggered", "benign_heavy", "people_like", "polyglot_elicit",
                  "grader_rotating", "release_newcomers")


MIN_REQUESTS = 1_500
CORNER_SHARE = 0.35  # each axis of a ``corner`` campaign goes to an extreme with this probability


def _corners(rng: random.Random, p: CampaignParams, languages: Callable[[int], tuple[str, ...]], release_day: float | None) -> None:
    """Push a campaign into corners of the space dev's ``sampled`` draws rarely reached when the hold-out was made (hold-out only).

    Sizes go to one corner more often than not: 5 accounts, 500 accounts at 2 requests a day, or 2 or 300
    requests per account-day (the size rule below may still raise a small campaign's rate to the floor).
    Every other axis goes to an extreme with probability ``CORNER_SHARE``: 0 % or 80 % elicitation, wrappers
    paraphrased per request, a new residential address per request, one enrolled install per account, 90 %
    streamed, half benign openers, ban-and-replace, model pivot, half multi-turn, a system prompt per account,
    eight languages, public wording on every account and half the prompts.
    """
    size = rng.choice(("few", "mass", "slow", "fast", "none"))
    if size == "few":
        p.accounts = 5
    elif size == "mass":
        p.accounts, p.rate = 500, 2.0
    elif size == "slow":
        p.rate = 2.0
    elif size == "fast":
        p.rate = 300.0
    extremes: list[tuple[str, Any]] = [
        ("elicit", rng.choice((0.0, 0.8))), ("wrappers", "paraphrased"), ("network", "per_request"), ("attest", True),
        ("stream", 0.9), ("benign_mix", 0.5), ("ban_replace", True), ("multi_turn", 0.5), ("system", "per_account"),
        ("languages", languages(8)), ("public_system", 1.0), ("public_wrappers", 0.5)]
    if release_day is not None:
        extremes.append(("pivot", True))
    for axis, value in extremes:
        if rng.random() < CORNER_SHARE:
            setattr(p, axis, value)


def sample_campaign(rng: random.Random, archetype: str, wording: Wording, *, days: int, release_day: float | None,
                    budget: float = 8_000) -> CampaignParams:
    """Draw one campaign: anywhere in the space, or near a named design (``ARCHETYPES``).

    Its expected requests end up between ``MIN_REQUESTS`` (fewer answers are not worth distilling from;
    staying that small is the attacker's cost, measured separately) and ``budget``: the rate is raised
    (up to 300 a day) to reach the floor, the lifetime then the rate lowered to meet the cap.
    """
    langs = wording.languages

    def languages(k: int) -> tuple[str, ...]:
        others = [lang for lang in langs if lang != "en"]
        picked = rng.sample(others, min(k, len(others)))
        return tuple(["en", *picked][:k]) if rng.random() < 0.7 else tuple(picked or ["en"])

    p = CampaignParams(archetype=archetype)
    slow_first = False
    if archetype in ("sampled", "corner"):
        # Dev and test draw every continuous axis with real mass at both ends (``SPACE``); the hold-out's corners
        # keep the draws they were made with (``CORNER_BASE``), so its worlds are what they were when first run.
        _draw_space(rng, p, SPACE if archetype == "sampled" else CORNER_BASE, days=days, release_day=release_day, languages=languages)
        if archetype == "corner":
            _corners(rng, p, languages, release_day)
        else:
            slow_first = rng.random() < 0.5
    elif archetype.startswith("stress_"):
        _draw_space(rng, p, SPACE, days=days, release_day=release_day, languages=languages)
        slow_first = _stress_corner(rng, p, archetype.removeprefix("stress_"), languages, days=days, release_day=release_day)
    elif archetype == "quiet_sweep":
        p.accounts, p.rate = rng.randint(20, 60), rng.uniform(20, 60)
        p.start_day, p.lifetime_days = rng.uniform(0, 1), days
        p.timing, p.stream, p.multi_turn, p.system, p.wrappers = "uniform", 0.5, 0.0, "none", "none"
        p.elicit, p.grader, p.network, p.params = 0.0, 0.0, "per_request", "benign"
        p.creation, p.payments, p.email, p.ua = rng.choice(("spread", "waves")), "unique", "webmail", "varied"
    elif archetype == "sleeper_fleet":
        p.accounts, p.rate = rng.randint(100, 140), rng.uniform(4, 12)
        p.start_day, p.lifetime_days = rng.uniform(0, 1), days
        p.timing, p.stream, p.multi_turn, p.system, p.wrappers = "daytime", 0.0, 0.0, "none", "short"
        p.elicit, p.grader, p.network, p.hosting_asns = rng.uniform(0.0, 0.25), 0.0, "hosting", rng.randint(2, 3)
        p.creation, p.payments, p.email, p.ua, p.params = "burst", "pooled", "webmail", "shared", "benign"
        p.languages = languages(rng.randint(1, 2))
        p.public_wrappers = rng.choice((0.0, rng.uniform(0.05, 0.3)))  # beside its two short wrappers
    elif archetype == "imitates_people":
        p.accounts, p.rate = rng.randint(20, 80), rng.uniform(10, 40)
        p.start_day, p.lifetime_days = rng.uniform(0, 1.5), days
        p.timing, p.stream, p.attest, p.tz_consistent = "per_account_daytime", 0.9, True, True
        p.multi_turn, p.system, p.wrappers = rng.uniform(0.5, 0.8), rng.choice(("none", "per_account")), "paraphrased"
        p.elicit, p.network, p.params = rng.uniform(0.3, 0.6), "per_account", "benign"
        p.languages = languages(rng.randint(4, 8))
        p.creation, p.payments, p.email, p.ua = "spread", "unique", "webmail", "varied"
        p.benign_mix = rng.uniform(0.1, 0.3)
        p.public_system = rng.choice((0.0, rng.uniform(0.2, 0.6)))  # as people's chat clients send a default one
    elif archetype == "grader":
        p.accounts, p.rate = rng.randint(10, 40), rng.uniform(20, 100)
        p.start_day, p.lifetime_days = rng.uniform(0, 2), days
        p.timing, p.network, p.grader, p.elicit = "uniform", "per_request", rng.uniform(0.6, 0.9), rng.uniform(0.0, 0.2)
        p.wrappers, p.system, p.params = "none", rng.choice(("none", "shared")), "benign"
        p.creation, p.payments, p.email, p.ua = rng.choice(("burst", "spread")), "pooled", "mixed", "shared"
    else:
        raise ValueError(f"unknown campaign archetype {archetype!r}; one of {ARCHETYPES}")
    p.lifetime_days = max(1.0, min(p.lifetime_days, days - p.start_day))
    if p.ban_replace:
        p.ban_day = p.start_day + rng.uniform(0.3, 0.7) * p.lifetime_days
    if p.pivot and release_day is not None:
        p.start_day = min(p.start_day, release_day)
        p.lifetime_days = max(p.lifetime_days, min(days - p.start_day, release_day - p.start_day + 2))
    if p.expected_requests() < MIN_REQUESTS:
        p.rate = min(300.0, p.rate * MIN_REQUESTS / p.expected_requests())
        if p.expected_requests() < MIN_REQUESTS:
            p.lifetime_days = min(days - p.start_day, p.lifetime_days * MIN_REQUESTS / p.expected_requests())
    if p.expected_requests() > budget:
        p.capped = True
        if slow_first:  # a slow, long campaign: the rate goes down first (how 500 accounts end up at 2-3 a day all week)
            p.rate = max(2.0, budget / (p.accounts * p.lifetime_days * (1 + 1.5 * p.multi_turn)))
        if p.expected_requests() > budget:  # a burst: the lifetime shortened first, then the rate
            p.lifetime_days = max(1.0, budget / (p.accounts * p.rate * (1 + 1.5 * p.multi_turn)))
        if p.expected_requests() > budget:
            p.rate = max(2.0, budget / (p.accounts * p.lifetime_days * (1 + 1.5 * p.multi_turn)))
    return p


@dataclass
class _Member:
    account: str
    key: str
    client: Client
    weight: float
    offset_min: int
    language: str
    system: str | None
    rotating: bool


@dataclass
class Fleet(Actor):
    """Plays one ``CampaignParams``: many accounts harvesting answers, as configured."""

    wording: Wording | None = None
    params: CampaignParams = field(default_factory=CampaignParams)
    models: tuple[str, ...] = ("demo-1",)
    replacement_accounts: list[str] = field(default_factory=list)
    _queue: list[str] = field(default_factory=list, init=False)
    _passes: int = field(default=0, init=False)

    def _next_task(self) -> str:
        """The next task of the sweep: each task once, in a shuffled order, before any is asked again.

        A campaign pays per answer, so it does not ask one question twice while it has new ones; once its
        pools are used up it asks them again with the numbers changed (as synthetic-data pipelines do).
        """
        rng, pools = self.rng, self.pools
        assert pools is not None
        if not self._queue:
            self._queue = [t for name in self.params.pools for t in pools.sweeps[name]]
            rng.shuffle(self._queue)
            self._passes += 1
        task = self._queue.pop()
        return _DIGITS.sub(lambda m: str(rng.randint(2, 9 * 10 ** (len(m.group()) - 1) + 1)), task) if self._passes > 1 else task

    # -- set-up ---------------------------------------------------------------------------------------
    def _members(self, accounts: list[str]) -> list[_Member]:
        rng, p, wording = self.rng, self.params, self.wording
        assert wording is not None
        hosting = rng.sample(CAMPAIGN_HOSTING_ASNS, min(p.hosting_asns, len(CAMPAIGN_HOSTING_ASNS)))
        subnets = [(asn, country, rng.randrange(256)) for asn, country in hosting for _ in range(rng.randint(1, 3))]
        home = rng.choice(PLACES)
        shared_ua = user_agent(rng)
        shared_system = self._system() if p.system == "shared" else None
        members = []
        for account in accounts:
            ua, family = shared_ua if p.ua == "shared" else user_agent(rng)
            on_hosting = p.network == "hosting" or (p.network == "mixed" and rng.random() < 0.5)
            if on_hosting:
                asn, country, subnet = rng.choice(subnets)
                client = Client(Network.ip_in(asn, rng, subnet), asn, country, True, ua, header_fp(family), False, "", home.tz,
                                home.utc_offset_min, home.locale, subnet=subnet)
                place = home
            else:
                asn = rng.choice(RESIDENTIAL_PROXY_ASNS)
                place = PLACE_OF_ASN[asn]
                client = Client(Network.ip_in(asn, rng), asn, place.country, False, ua, header_fp(family), False, "", place.tz,
                                place.utc_offset_min, place.locale)
            clock = place if p.tz_consistent else home
            client.tz, client.utc_offset_min, client.locale = clock.tz, clock.utc_offset_min, clock.locale
            if p.attest:
                client.attested, client.install_id = True, f"inst_{rng.getrandbits(64):016x}"
            weight = rng.lognormvariate(0, 0.5) if p.archetype != "sleeper_fleet" else rng.uniform(4, 12) / max(p.rate, 1e-9)
            language = p.languages[0] if rng.random() < 0.6 else rng.choice(p.languages)
            system = shared_system if p.system == "shared" else self._system() if p.system == "per_account" else None
            if p.public_system and rng.random() < p.public_system:
                system = rng.choice(wording.public_systems)
            members.append(_Member(account, f"key_{rng.getrandbits(64):016x}", client, weight,
                                   clock.utc_offset_min if p.timing == "per_account_daytime" else home.utc_offset_min, language, system,
                                   rotating=not on_hosting and p.network in ("per_request", "mixed")))
        return members

    def _system(self) -> str:
        rng, wording = self.rng, self.wording
        assert wording is not None
        text = rng.choice(wording.campaign_systems)
        return text + (" " + rng.choice(wording.system_suffixes) if rng.random() < 0.7 else "")

    # -- the run ----------------------------------------------------------------------------------------
    def events(self) -> Iterator[TimedEvent]:
        rng, p, wording = self.rng, self.params, self.wording
        assert wording is not None and self.pools is not None
        first = self._members(list(self.accounts))
        second = self._members(self.replacement_accounts) if self.replacement_accounts else []
        frames = self._frames()
        begin = self.start + p.start_day * DAY
        end = min(self.start + self.days * DAY, begin + p.lifetime_days * DAY)
        ban = self.start + p.ban_day * DAY if p.ban_day is not None and second else None
        daytime = p.timing in ("daytime", "per_account_daytime")
        thin = 24 / 15 if daytime else 1.0
        ts, index = begin, 0
        # ``staggered``: each account is banned at its own moment over the lifetime and its replacement takes its place.
        handover = sorted(begin + rng.uniform(0.2, 0.8) * (end - begin) for _ in first) if p.creation == "staggered" and ban else []
        while ts < end:
            if handover:
                replaced = bisect.bisect_right(handover, ts)  # the accounts whose moment has come (handover is sorted)
                members = second[:replaced] + first[replaced:]
            else:
                members = second if ban is not None and ts >= ban else first
            weights = [m.weight for m in members]
            total = sum(weights) * p.rate / DAY
            if p.timing == "synchronised":
                ts += rng.expovariate(total / len(members))
                burst = members
            else:
                ts += rng.expovariate(total * thin)
                if p.timing == "balanced":
                    burst = [members[index % len(members)]]
                    index += 1
                else:
                    burst = rng.choices(members, weights)
            if ts >= end:
                break
            for member in burst:
                if daytime:
                    local_hour = ((ts + member.offset_min * 60) % DAY) / 3600
                    if not 8 <= local_hour < 23:
                        continue
                yield from self._request(ts + (rng.uniform(0, 3) if p.timing == "synchronised" else 0.0), member, frames)

    def _frames(self) -> list[tuple[str, str]]:
        rng, p, wording = self.rng, self.params, self.wording
        assert wording is not None
        if p.wrappers == "short":
            return [("en", w) for w in rng.sample(wording.short_wrappers, 2)]
        if p.wrappers == "few":
            out = []
            for _ in range(rng.randint(1, 3)):
                lang = rng.choice(p.languages)
                out.append((lang, rng.choice(wording.in_language(wording.frames, lang))))
            return out
        return [("en", "{task}")]

    def _prompt(self, member: _Member, frames: list[tuple[str, str]]) -> tuple[str, bool, str]:
        rng, p, wording, pools = self.rng, self.params, self.wording, self.pools
        assert wording is not None and pools is not None
        language = member.language if rng.random() < 0.7 else rng.choice(p.languages)
        task = self._next_task()
        if p.grader and rng.random() < p.grader:
            template = rng.choice(wording.graders)
            return template.format(task=task, answer=excerpt(pools, rng, 120)), True, language
        if p.public_wrappers and rng.random() < p.public_wrappers:  # the wrapper evaluation harnesses publish
            return rng.choice(wording.public_cot_wrappers).format(task=task), True, language
        if p.wrappers == "paraphrased":
            opener = rng.choice(wording.in_language(wording.openers, language))
            closer = rng.choice(wording.in_language(wording.closers, language))
            prompt = " ".join(x for x in (opener, "\n" + task + "\n", closer) if x).strip() if rng.random() < 0.8 else task
        else:
            lang, frame = rng.choice(frames)
            language = lang if p.wrappers == "few" else language
            prompt = frame.format(task=task)
        elicit = p.elicit > 0 and rng.random() < p.elicit
        if elicit:
            phrase = rng.choice(wording.in_language(wording.elicitation, language))
            prompt = f"{phrase}\n\n{prompt}" if rng.random() < 0.35 else f"{prompt}\n\n{phrase}"
        return prompt, elicit, language

    def _request(self, ts: float, member: _Member, frames: list[tuple[str, str]]) -> Iterator[TimedEvent]:
        rng, p, wording, pools = self.rng, self.params, self.wording, self.pools
        assert wording is not None and pools is not None
        client = member.client
        if member.rotating:
            asn = rng.choice(RESIDENTIAL_PROXY_ASNS)
            client.ip, client.asn, client.country = Network.ip_in(asn, rng), asn, PLACE_OF_ASN[asn].country
        elif client.hosting:
            client.ip = Network.ip_in(client.asn, rng, client.subnet)
        elif p.network == "per_account" and rng.random() < 0.02:  # the residential lease changes now and then
            client.ip = Network.ip_in(client.asn, rng)
        model = self.models[0]
        day = (ts - self.start) / DAY
        if p.pivot and len(self.models) > 1 and self.release_ts is not None and ts >= self.release_ts:
            model = self.models[-1] if rng.random() < 0.85 else self.models[0]
        else:
            model = self._model(ts, self.models, rng, 0.3) if day > 0 else model
        stream = rng.random() < p.stream
        if p.params == "pinned":
            params: dict[str, Any] = {"temperature": rng.choice((0.6, 0.8, 1.0)), "max_tokens": rng.choice((4096, 8192)),
                                      "n": rng.choice((1, 1, 1, 4)), "logprobs": rng.random() < 0.3, "top_logprobs": None,
                                      "stream": stream, "tools": 0}
        else:
            params = benign_params(rng, stream=stream)
        if p.benign_mix and rng.random() < p.benign_mix:
            turns, reasoning = pools.conversation(rng)[:2], False
        else:
            prompt, reasoning, language = self._prompt(member, frames)
            turns = [prompt]
            if p.multi_turn and rng.random() < p.multi_turn:
                phrases = wording.in_language(wording.followups, language)
                turns += [rng.choice(phrases) for _ in range(rng.randint(1, 2))]
        messages: list[dict[str, str]] = []
        cap = params["max_tokens"]
        for turn in turns:
            messages = [*messages, {"role": "user", "content": turn}]
            tokens = int(rng.lognormvariate(6.6 if reasoning else 6.1, 0.4))
            if isinstance(cap, int):
                tokens = min(tokens, cap)
            text = excerpt(pools, rng, tokens)
            yield self._event(ts, member.account, member.key, client, model=model, system=member.system, messages=messages,
                              params=params, completion_tokens=tokens, text=text, reasoning_chars=tokens * 2 if reasoning else 0)
            messages = [*messages, {"role": "assistant", "content": text}]
            ts += 15 + rng.expovariate(1 / 60) + len(text) / 25
