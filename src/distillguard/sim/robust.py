"""The `robust` scenario family: hard negatives, campaigns sampled from a space, relay resellers — per split.

Every seed is a new world: how many campaigns of which design, who the people
are, which public wrapper the evaluation jobs share. ``build_robust`` returns
the actors, the labels (with a ``population`` for every account and the full
parameters of every campaign) and the account metadata.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import TYPE_CHECKING, Any

from distillguard.exceptions import InputError
from distillguard.sim.campaign_wording import CampaignNeeds, deal_private_wording
from distillguard.sim.corpora import PromptPools
from distillguard.sim.fleet import STRESS_CORNERS, Fleet, sample_campaign
from distillguard.sim.metadata import AccountMeta, MetaMaker
from distillguard.sim.people import CodingAgent, EvalJob, LightApp, Person
from distillguard.sim.populations import DAY, Actor, Client, Reseller, home_client
from distillguard.sim.relay import RelayReseller
from distillguard.sim.splits import load_wording, split_rng
from distillguard.sim.world import CLOUD_ASNS, PLACES, VPN_ASNS, Network, header_fp, pick_place, user_agent

if TYPE_CHECKING:
    from distillguard.sim.scenarios import Scenario

__all__ = ["NEGATIVE_POPULATIONS", "build_robust", "campaign_metadata"]

# Sub-populations of legitimate accounts, at scale 1: (population, label, count).
NEGATIVE_POPULATIONS: tuple[tuple[str, str, int], ...] = (
    ("person", "benign", 550), ("coder", "benign", 90), ("learner", "benign", 150), ("night_owl", "benign", 50),
    ("vpn", "benign", 40), ("cloud_desktop", "benign", 25), ("early_adopter", "benign", 50),
    ("light_app", "heavy_benign", 12), ("eval_job", "heavy_benign", 8), ("coding_agent", "heavy_benign", 20),
)
OFFICES = 4
# The hold-out split's legitimate mix differs from dev/test on purpose, towards the negatives that look most like
# campaigns: twice the learners, 2.5 times the evaluation jobs, twice the offices, more light apps and VPN users.
HOLDOUT_COUNTS = {"person": 450, "coder": 70, "learner": 300, "night_owl": 40, "vpn": 60, "cloud_desktop": 30,
                  "early_adopter": 60, "light_app": 25, "eval_job": 20, "coding_agent": 25}
HOLDOUT_OFFICES = 8
# …and its sampled campaigns are ``corner`` draws (sim/fleet.py), two more of them than the scenario asks for.
HOLDOUT_EXTRA_CAMPAIGNS = 2
# Share of people whose chat client sends a stock system prompt ("You are a helpful assistant.") on every request.
PUBLIC_SYSTEM_SHARE = 0.15
RELAY_RESELLERS = 6
CLASSIC_RESELLERS = 2


def build_robust(scenario: Scenario, seed: int, split: str) -> tuple[list[Actor], dict[str, Any], list[AccountMeta]]:
    rng = split_rng(seed, split, "robust")
    wording = load_wording(split)
    pools = PromptPools.for_split(split)
    start = dt.datetime.fromisoformat(scenario.start.replace("Z", "+00:00")).timestamp()
    days = scenario.days
    models = tuple(scenario.models)
    release_day = scenario.new_model_day
    release_ts = start + release_day * DAY if release_day is not None else None
    maker = MetaMaker(random.Random(rng.getrandbits(64)), start)
    actors: list[Actor] = []
    labels: dict[str, dict[str, Any]] = {}
    metas: list[AccountMeta] = []

    def child() -> random.Random:
        return random.Random(rng.getrandbits(64))

    def account() -> str:
        return f"acct_{rng.getrandbits(64):016x}"

    def n(count: int) -> int:
        return max(1, round(count * scenario.scale))

    def add(actor: Actor, population: str, meta: list[AccountMeta] | None = None) -> None:
        actors.append(actor)
        for acct in actor.accounts:
            labels[acct] = {"label": actor.label, "campaign": actor.campaign, "population": population}
        metas.extend(meta or [maker.person(a) for a in actor.accounts])

    universities = [maker.own_domain("edu") for _ in range(8)]
    semester_starts = [start - rng.uniform(20, 400) * DAY for _ in range(3)]
    learner_langs = [lang for lang in wording.learner_asks if lang != "en"]
    holdout = split == "holdout"
    counts = {pop: n(HOLDOUT_COUNTS[pop] if holdout else c) for pop, _, c in NEGATIVE_POPULATIONS}

    # -- people ------------------------------------------------------------------------------------------
    for population in ("person", "coder", "learner", "night_owl", "vpn", "cloud_desktop", "early_adopter"):
        for _ in range(counts[population]):
            acct, r = account(), child()
            place = pick_place(r)
            client = home_client(r, place, attested=r.random() < 0.6)
            kw: dict[str, Any] = {"style": "chat", "hours": "day", "network": "home", "sessions_per_day": r.uniform(0.3, 2.5),
                                  "system": r.choice(wording.public_systems) if r.random() < PUBLIC_SYSTEM_SHARE else None}
            meta = maker.person(acct)
            if population == "coder":
                kw["style"] = "coder"
            elif population == "learner":
                kw.update(style="learner", sessions_per_day=r.uniform(0.8, 3.0),
                          language="en" if r.random() < 0.7 or not learner_langs else r.choice(learner_langs))
                if r.random() < 0.5:  # students of one university sign up around the start of term
                    meta.email_domain = r.choice(universities)
                    meta.created_at = r.choice(semester_starts) + r.uniform(0, 5) * DAY
            elif population == "night_owl":
                kw["hours"] = "night"
            elif population == "vpn":
                kw.update(network="vpn", vpn_exits=tuple(r.sample(VPN_ASNS, 3)))
                client.hosting = True
            elif population == "cloud_desktop":
                asn, country = r.choice(CLOUD_ASNS)
                client.ip, client.asn, client.country, client.hosting = Network.ip_in(asn, r, r.randrange(256)), asn, country, True
                kw.update(network="cloud_desktop", hours="work")
            elif population == "early_adopter":
                kw.update(style="early_adopter", sessions_per_day=r.uniform(0.5, 2.0))
                if release_ts is not None and r.random() < 0.4:  # signed up for the new model
                    meta.created_at = release_ts - r.uniform(0, 6) * 3600
                    kw["first_day"] = release_day
            add(Person("benign", [acct], rng=r, pools=pools, wording=wording, client=client, start=start, days=days, models=models,
                       release_ts=release_ts, population=population, **kw), population, [meta])

    # -- offices: many people, one egress address, one company domain, one org, one card, one onboarding day --
    for _ in range(n(HOLDOUT_OFFICES if holdout else OFFICES)):
        r = child()
        place = pick_place(r)
        egress = home_client(r, place, attested=False)
        org = f"org_{r.getrandbits(48):012x}"
        domain, card = maker.own_domain("com"), maker.card()
        onboarding = start - r.uniform(10, 300) * DAY
        for _ in range(r.randint(8, 30)):
            acct = account()
            ua, family = user_agent(r)
            client = Client(egress.ip, egress.asn, egress.country, False, ua, header_fp(family), r.random() < 0.5,
                            f"inst_{r.getrandbits(64):016x}", place.tz, place.utc_offset_min, place.locale)
            style = r.choice(("chat", "chat", "coder"))
            system = r.choice(wording.public_systems) if r.random() < PUBLIC_SYSTEM_SHARE else None
            created = onboarding + (r.uniform(0, 0.2) if r.random() < 0.8 else r.uniform(1, 200)) * DAY
            add(Person("benign", [acct], rng=child(), pools=pools, wording=wording, client=client, start=start, days=days, models=models,
                       release_ts=release_ts, style=style, hours="work", network="office", sessions_per_day=r.uniform(0.5, 2.5),
                       org=org, population="office", system=system), "office",
                [maker.person(acct, domain=domain, created_at=created, org_id=org, card=card)])

    # -- one-off evaluation jobs: several share the same public wrapper; some on the release day ------------------
    for i in range(counts["eval_job"]):
        acct, r = account(), child()
        asn, country = r.choice(CLOUD_ASNS)
        subnet = r.randrange(256)
        ua, family = user_agent(r)
        client = Client(Network.ip_in(asn, r, subnet), asn, country, True, ua, header_fp(family), False, "", "", 0, "", subnet=subnet)
        on_release = release_ts is not None and i < max(1, counts["eval_job"] // 3)
        at = (release_ts + r.uniform(0.5, 10) * 3600) if on_release and release_ts is not None else start + r.uniform(0.2, days - 1) * DAY
        org = f"org_{r.getrandbits(48):012x}"
        meta = maker.person(acct, domain=maker.own_domain(r.choice(("ai", "com", "io"))), org_id=org,
                            created_at=at - r.uniform(0.1, 3) * DAY if r.random() < 0.5 else None)
        add(EvalJob("heavy_benign", [acct], rng=r, pools=pools, client=client, at=at, size=r.randint(500, 1500),
                    wrapper=r.choice(wording.public_cot_wrappers), benchmark=r.choice(("gsm8k", "mmlu", "mmlu", "mbpp", "humaneval")),
                    model=models[-1] if on_release else models[0], max_tokens=r.choice((1024, 2048, 4096)),
                    concurrency_gap_s=r.uniform(0.5, 3.0), smoke_test=r.random() < 0.3, org=org), "eval_job", [meta])

    # -- developers driving coding agents (a stock system prompt shared by unrelated users) -------------------------
    for _ in range(counts["coding_agent"]):
        acct, r = account(), child()
        client = home_client(r, pick_place(r), attested=r.random() < 0.5)
        add(CodingAgent("heavy_benign", [acct], rng=r, pools=pools, wording=wording, client=client, start=start, days=days,
                        sessions_per_day=r.uniform(1.0, 3.5), models=models, release_ts=release_ts), "coding_agent")

    # -- light API apps ------------------------------------------------------------------------------------
    for _ in range(counts["light_app"]):
        acct, r = account(), child()
        asn, country = r.choice(CLOUD_ASNS)
        ua, family = user_agent(r)
        client = Client(Network.ip_in(asn, r, r.randrange(256)), asn, country, True, ua, header_fp(family), False, "", "", 0, "")
        add(LightApp("heavy_benign", [acct], rng=r, pools=pools, client=client, start=start, days=days, per_day=r.uniform(20, 150),
                     system=r.choice(wording.app_systems), market_offset_min=r.choice(PLACES).utc_offset_min), "light_app",
            [maker.person(acct, domain=maker.own_domain(r.choice(("com", "io", "app"))))])

    # -- resellers -----------------------------------------------------------------------------------------
    for i in range(n(RELAY_RESELLERS)):
        acct, r = account(), child()
        a, b = r.sample(PLACES, 2)
        while a.utc_offset_min == b.utc_offset_min:
            b = r.choice(PLACES)
        add(RelayReseller("reseller", [acct], rng=r, pools=pools, start=start, days=days, regions=(a, b), end_users=r.randint(20, 60),
                          system=r.choice(wording.webapp_systems), forward_attestation=i % 2 == 0, single_ip=r.random() < 0.7,
                          models=models, release_ts=release_ts), "relay_reseller")
    for _ in range(n(CLASSIC_RESELLERS)):
        acct = account()
        add(Reseller("reseller", [acct], rng=child(), pools=pools, start=start, days=days, end_users=rng.randint(10, 30), models=models,
                     release_ts=release_ts), "reseller_classic")

    # -- campaigns: each draws its private wording from its own share of the split's (campaign_wording.py) ---------
    campaigns: dict[str, Any] = {}
    designs = [*scenario.campaign_designs, *(["corner"] * (scenario.sampled_campaigns + HOLDOUT_EXTRA_CAMPAIGNS) if holdout
                                             else ["sampled"] * scenario.sampled_campaigns)]
    if scenario.stress_campaigns:
        if split != "dev":
            raise InputError(f"stress_campaigns (scenario {scenario.name!r}) is for the dev split only, got --split {split}")
        designs += [f"stress_{STRESS_CORNERS[i % len(STRESS_CORNERS)]}" for i in range(scenario.stress_campaigns)]
    drawn = []
    for archetype in designs:
        r = child()
        drawn.append((archetype, r, sample_campaign(r, archetype, wording, days=days, release_day=release_day,
                                                    budget=scenario.campaign_budget)))
    shares = deal_private_wording(wording, [CampaignNeeds.of(params) for _, _, params in drawn], child())
    for c, ((archetype, r, params), share) in enumerate(zip(drawn, shares, strict=True), start=1):
        campaign = f"camp_{c}"
        accounts = [account() for _ in range(params.accounts)]
        replacements = [account() for _ in range(params.accounts)] if params.ban_replace else []
        fleet = Fleet("distiller", accounts, campaign=campaign, rng=r, pools=pools, wording=share.wording, params=params, start=start,
                      days=days, models=models, replacement_accounts=replacements, release_ts=release_ts)
        actors.append(fleet)
        for acct in accounts + replacements:
            labels[acct] = {"label": "distiller", "campaign": campaign, "population": archetype}
        metas.extend(campaign_metadata(maker, r, params, accounts, replacements, start))
        campaigns[campaign] = {**params.as_label(), "size": params.accounts, "accounts": accounts + replacements, "replacements": replacements,
                               "shared_wording": list(share.shared)}
    if len(models) > 1:
        for actor in actors:
            actor.reasoning_model = models[-1]
    return actors, {"accounts": labels, "campaigns": campaigns, "models": list(models), "new_model_ts": release_ts}, metas


def campaign_metadata(maker: MetaMaker, rng: random.Random, params: Any, accounts: list[str], replacements: list[str],
                       start: float) -> list[AccountMeta]:
    """Sign-up records a campaign leaves: mostly webmail, cards shared only in subsets, bursts or aged accounts."""
    begin = start + params.start_day * DAY
    custom = [maker.own_domain(rng.choice(("com", "xyz", "top", "net"))) for _ in range(rng.randint(1, 3))]
    cards = [maker.card() for _ in range(max(1, len(accounts) // rng.randint(4, 15)))]
    shared_card = maker.card()
    wave_starts = [begin - rng.uniform(0.5, 20) * DAY for _ in range(rng.randint(2, 4))]
    burst_at = begin - rng.uniform(0.2, 10) * DAY
    out = []
    for i, acct in enumerate(accounts + replacements):
        replacement = i >= len(accounts)
        if params.creation == "staggered":  # aged accounts, the reserve bought weeks before the first ban
            created = (start + params.ban_day * DAY if replacement and params.ban_day is not None else begin) - rng.uniform(3, 120) * DAY
        elif replacement and params.ban_day is not None:
            created = start + params.ban_day * DAY - rng.uniform(0, 3) * 3600
        elif params.creation == "burst":
            created = burst_at + rng.uniform(0, 6) * 3600
        elif params.creation == "waves":
            created = rng.choice(wave_starts) + rng.uniform(0, 4) * 3600
        else:
            created = begin - rng.uniform(1, 400) * DAY
        if params.email == "custom" or (params.email == "mixed" and rng.random() < 0.3):
            domain = rng.choice(custom)
        else:
            domain = maker.webmail()
        if params.payments == "unique":
            card = maker.card()
        elif params.payments == "pooled":
            card = rng.choice(cards) if rng.random() < 0.6 else maker.card()
        elif params.payments == "shared":
            card = shared_card if rng.random() < 0.4 else maker.card()
        else:
            card = None
        out.append(maker.person(acct, domain=domain, created_at=created, paying=0.0, card=card))
    return out
