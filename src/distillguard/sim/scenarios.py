"""Scenarios: named or YAML-composed mixes of populations, and the streaming simulator.

A scenario is data (a pydantic model), so new ones are composed in YAML with
the same keys as the built-ins below and validated with errors that name the
key. ``simulate`` merges every actor's event stream in time order with a
reorder buffer and writes as it goes: memory does not grow with the run.
"""

from __future__ import annotations

import datetime as dt
import heapq
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distillguard.events import EventWriter
from distillguard.exceptions import InputError
from distillguard.sim.corpora import PromptPools
from distillguard.sim.metadata import AccountMeta, MetaMaker, write_accounts
from distillguard.sim.phrasing import Phrasing
from distillguard.sim.populations import (
    DAY,
    Actor,
    BenignUser,
    HeavyUser,
    HydraCampaign,
    Reseller,
    TimedEvent,
)
from distillguard.sim.robust import build_robust
from distillguard.sim.splits import SPLITS, split_rng

__all__ = ["CampaignSpec", "Scenario", "SCENARIOS", "build_actors", "event_stream", "load_scenario", "simulate"]


CampaignDesign = Literal["quiet_sweep", "sleeper_fleet", "imitates_people", "grader"]
CAMPAIGN_DESIGNS: tuple[CampaignDesign, ...] = ("quiet_sweep", "sleeper_fleet", "imitates_people", "grader")


class CampaignSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accounts: int = Field(40, ge=1)
    requests_per_account_day: float = Field(150, gt=0)
    cot_rate: float = Field(0.6, ge=0, le=1)
    shared_infra: float = Field(0.8, ge=0, le=1)
    residential: bool = False
    timing: Literal["synchronised", "balanced"] = "synchronised"
    paraphrase: bool = False
    languages: list[str] = Field(default_factory=lambda: ["en"])
    benign_mix: float = Field(0.0, ge=0, le=0.95)
    replacement: bool = False
    ban_day: int | None = None
    pivot: bool = False
    shared_system_rate: float = Field(0.9, ge=0, le=1)
    start_day: float = Field(0.0, ge=0)


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "custom"
    start: str = "2026-10-05T00:00:00Z"
    days: int = Field(7, ge=1, le=120)
    benign_users: int = Field(200, ge=0)
    coders: int = Field(40, ge=0)
    heavy_eval: int = Field(2, ge=0)
    heavy_pipeline: int = Field(2, ge=0)
    heavy_job_size: int = Field(600, ge=1)
    resellers: int = Field(3, ge=0)
    reseller_end_users: int = Field(30, ge=2)
    campaigns: list[CampaignSpec] = Field(default_factory=lambda: [CampaignSpec()])
    models: list[str] = Field(default_factory=lambda: ["demo-1"])
    new_model_day: float | None = None
    held_out: bool = False
    # `robust` family only (docs/evaluation.md): population scale, campaigns sampled beyond the four archetypes,
    # and the cap on one campaign's expected requests.
    family: Literal["fixed", "robust"] = "fixed"
    scale: float = Field(1.0, gt=0, le=20)
    sampled_campaigns: int = Field(4, ge=0, le=50)
    campaign_designs: list[CampaignDesign] = Field(default_factory=lambda: list(CAMPAIGN_DESIGNS))
    campaign_budget: int = Field(8_000, ge=100)
    # Dev split only: campaigns pushed into the space's joint corners (``STRESS_CORNERS``, one of each in turn).
    stress_campaigns: int = Field(0, ge=0, le=50)


SCENARIOS: dict[str, dict[str, Any]] = {
    "small": {"name": "small", "days": 3, "benign_users": 30, "coders": 6, "heavy_eval": 1, "heavy_pipeline": 1, "heavy_job_size": 150,
              "resellers": 1, "reseller_end_users": 12, "campaigns": [{"accounts": 8, "requests_per_account_day": 40}]},
    "default": {"name": "default", "days": 14, "benign_users": 300, "coders": 60, "heavy_eval": 3, "heavy_pipeline": 3,
                "resellers": 4, "reseller_end_users": 30,
                "campaigns": [{"accounts": 40, "requests_per_account_day": 120, "cot_rate": 0.6, "shared_infra": 0.8},
                              {"accounts": 25, "requests_per_account_day": 80, "cot_rate": 0.3, "shared_infra": 0.4, "timing": "balanced",
                               "languages": ["en", "de", "zh"], "replacement": True, "ban_day": 7}]},
    "stealthy": {"name": "stealthy", "days": 14, "benign_users": 300, "coders": 60, "heavy_eval": 3, "heavy_pipeline": 3,
                 "resellers": 4, "reseller_end_users": 20, "held_out": True,
                 "campaigns": [{"accounts": 60, "requests_per_account_day": 40, "cot_rate": 0.25, "shared_infra": 0.0, "residential": True,
                                "timing": "balanced", "paraphrase": True, "languages": ["en", "de", "fr", "es", "pt", "ja"],
                                "benign_mix": 0.3, "shared_system_rate": 0.3}]},
    "pivot": {"name": "pivot", "days": 10, "benign_users": 250, "coders": 40, "heavy_eval": 2, "heavy_pipeline": 2, "resellers": 3,
              "models": ["demo-1", "demo-2"], "new_model_day": 5.0, "held_out": True,
              "campaigns": [{"accounts": 40, "requests_per_account_day": 100, "pivot": True, "cot_rate": 0.5, "shared_infra": 0.6},
                            {"accounts": 20, "requests_per_account_day": 60, "pivot": True, "start_day": 4.5, "cot_rate": 0.4,
                             "shared_infra": 0.3, "timing": "balanced", "languages": ["en", "fr", "ru"]}]},
    "large": {"name": "large", "days": 28, "benign_users": 3000, "coders": 600, "heavy_eval": 10, "heavy_pipeline": 10,
              "heavy_job_size": 800, "resellers": 20, "reseller_end_users": 40,
              "campaigns": [{"accounts": 200, "requests_per_account_day": 80}, {"accounts": 100, "requests_per_account_day": 60,
                             "timing": "balanced", "shared_infra": 0.3, "languages": ["en", "es", "zh"]}]},
}


SCENARIOS["robust"] = {"name": "robust", "family": "robust", "days": 7, "models": ["demo-1", "demo-2"], "new_model_day": 3.5,
                       "campaigns": []}


# A dev-only stress world: the same legitimate populations, and one campaign in each joint corner of the space
# (sim/fleet.py, ``STRESS_CORNERS``) instead of the named designs and the independent draws.
SCENARIOS["robust_stress"] = {**SCENARIOS["robust"], "name": "robust_stress", "campaign_designs": [], "sampled_campaigns": 0,
                              "stress_campaigns": 8}


def load_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or one composed in a YAML file (same keys)."""
    if name_or_path in SCENARIOS:
        return Scenario(**SCENARIOS[name_or_path])
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml", ".json") and not path.exists():
        raise InputError(f"--scenario: unknown scenario {name_or_path!r}; built-ins are {sorted(SCENARIOS)} or give a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: scenario file not found") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of scenario keys")
    base = SCENARIOS.get(str(data.pop("extends", "")), {}) if "extends" in data else {}
    try:
        return Scenario(**{**base, "name": path.stem, **data})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"{path}: {where}: {first['msg']} (got {first.get('input')!r})") from None


def _reorder(stream: Iterator[TimedEvent], window_s: float = 6 * 3600) -> Iterator[TimedEvent]:
    """Make an almost-sorted stream sorted: hold events until nothing earlier can still come."""
    heap: list[TimedEvent] = []
    for item in stream:
        heapq.heappush(heap, (item[0], id(item[2]), item[2]))
        while heap and heap[0][0] < item[0] - window_s:
            yield heapq.heappop(heap)
    while heap:
        yield heapq.heappop(heap)


def build_actors(scenario: Scenario, seed: int, split: str = "dev") -> tuple[list[Actor], dict[str, Any], list[AccountMeta]]:
    """The actors of one world, its labels and its account metadata.

    ``robust`` builds from its family (``sim/robust.py``), on any split. The fixed scenarios keep
    their historical streams on the dev split (``random.Random(seed)``, the dev half of the prompts
    unless ``held_out``); on the test split they mix the split into the seed and use the test
    half of the prompts and the held-out phrasings; they have no hold-out split.
    """
    if split not in SPLITS:
        raise InputError(f"--split: expected one of {list(SPLITS)}, got {split!r}")
    if scenario.family == "robust":
        robust_actors, robust_labels, robust_metas = build_robust(scenario, seed, split)
        return robust_actors, {"scenario": scenario.name, "seed": seed, "split": split, **robust_labels}, robust_metas
    if split == "holdout":
        raise InputError("--split holdout is for the robust family only (--scenario robust, or a YAML file with extends: robust): "
                         "the fixed scenarios' wording and prompts overlap it")
    if split == "test":
        rng = split_rng(seed, split, scenario.name)
        pools = PromptPools.halves("test")
        scenario = scenario.model_copy(update={"held_out": True})
    else:
        rng = random.Random(seed)
        pools = PromptPools.load()
    start = dt.datetime.fromisoformat(scenario.start.replace("Z", "+00:00")).timestamp()
    models = tuple(scenario.models)
    release_ts = start + scenario.new_model_day * DAY if scenario.new_model_day is not None else None
    actors: list[Actor] = []

    def child() -> random.Random:
        return random.Random(rng.getrandbits(64))

    def account() -> str:
        return f"acct_{rng.getrandbits(64):016x}"

    for i in range(scenario.benign_users + scenario.coders):
        actors.append(BenignUser("benign", [account()], rng=child(), pools=pools, start=start, days=scenario.days,
                                 sessions_per_day=rng.uniform(0.3, 2.5), coder=i >= scenario.benign_users,
                                 held_out=scenario.held_out, models=models, release_ts=release_ts))
    for kind, count in (("eval", scenario.heavy_eval), ("pipeline", scenario.heavy_pipeline)):
        for _ in range(count):
            actors.append(HeavyUser("heavy_benign", [account()], rng=child(), pools=pools, start=start, days=scenario.days,
                                    job_size=scenario.heavy_job_size, kind=kind, models=models, release_ts=release_ts))
    for _ in range(scenario.resellers):
        actors.append(Reseller("reseller", [account()], rng=child(), pools=pools, start=start, days=scenario.days,
                               end_users=scenario.reseller_end_users, models=models, release_ts=release_ts))
    campaigns: dict[str, Any] = {}
    for c, spec in enumerate(scenario.campaigns, start=1):
        campaign = f"camp_{c}"
        accounts = [account() for _ in range(spec.accounts)]
        replacements = [account() for _ in range(spec.accounts)] if spec.replacement else []
        pivot_day = scenario.new_model_day if spec.pivot and scenario.new_model_day is not None else None
        actors.append(HydraCampaign(
            "distiller", accounts, campaign=campaign, rng=child(), pools=pools, phrasing=Phrasing(held_out=scenario.held_out),
            start=start, days=scenario.days, n_accounts=spec.accounts, requests_per_account_day=spec.requests_per_account_day,
            cot_rate=spec.cot_rate, shared_infra=spec.shared_infra, residential=spec.residential, timing=spec.timing,
            paraphrase=spec.paraphrase, languages=tuple(spec.languages), benign_mix=spec.benign_mix, replacement=spec.replacement,
            ban_day=spec.ban_day, pivot_day=pivot_day, models=models, held_out=scenario.held_out,
            shared_system_rate=spec.shared_system_rate, start_delay_days=spec.start_day, replacement_accounts=replacements,
            release_ts=release_ts,
        ))
        campaigns[campaign] = {**spec.model_dump(), "size": spec.accounts, "accounts": accounts + replacements, "replacements": replacements}
    labels: dict[str, Any] = {"scenario": scenario.name, "seed": seed, "split": split, "accounts": {}, "campaigns": campaigns,
                              "models": list(models), "new_model_ts": release_ts}
    maker = MetaMaker(random.Random(rng.getrandbits(64)), start)
    metas: list[AccountMeta] = []
    for actor in actors:
        members = list(actor.accounts) + list(getattr(actor, "replacement_accounts", []))
        burst = start - rng.uniform(0.5, 10) * DAY
        for acct in members:
            labels["accounts"][acct] = {"label": actor.label, "campaign": actor.campaign, "population": type(actor).__name__}
            created = burst + rng.uniform(0, 6) * 3600 if actor.campaign else None
            metas.append(maker.person(acct, created_at=created, domain=maker.webmail() if actor.campaign else None))
    return actors, labels, metas


def event_stream(actors: Iterable[Actor]) -> Iterator[dict[str, Any]]:
    """Every actor's events merged in time order (each actor's almost-sorted stream through a reorder buffer)."""
    streams: list[Iterator[TimedEvent]] = [_reorder(actor.events()) for actor in actors]
    for _, _, event in heapq.merge(*streams, key=lambda item: item[0]):
        yield event


def simulate(scenario: Scenario, seed: int, out: str | Path, *, limit: int | None = None, split: str = "dev",
             accounts_out: str | Path | None = None) -> tuple[int, dict[str, Any]]:
    """Write the scenario's events (time-ordered JSONL, gzip when ``out`` ends in .gz); return (count, labels).

    With ``accounts_out``, also write the accounts' metadata there (``accounts export`` format), for
    every account that sent a request.
    """
    actors, labels, metas = build_actors(scenario, seed, split)
    seen: set[str] = set()
    count = 0
    with EventWriter(out) as writer:
        for event in event_stream(actors):
            writer.write(event)
            seen.add(event["account_id"])
            count += 1
            if limit is not None and count >= limit:
                break
    # Accounts that never sent a request (e.g. unused replacements) are not in the log, so not in the labels.
    labels["accounts"] = {a: v for a, v in labels["accounts"].items() if a in seen}
    for campaign in labels["campaigns"].values():
        campaign["accounts"] = [a for a in campaign["accounts"] if a in seen]
    labels["events"] = count
    if accounts_out is not None:
        write_accounts(accounts_out, (m for m in metas if m.account_id in seen))
    return count, labels
