"""The simulator cannot flatter us: each campaign writes its own wording, public wording is shared with legitimate
users, and the fixed scenarios stay exactly what earlier results were measured on."""

from __future__ import annotations

import collections
import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from distillguard.events import read_events
from distillguard.sim.campaign_wording import (
    PRIVATE_BY_LANGUAGE,
    PRIVATE_LISTS,
    CampaignNeeds,
    deal_private_wording,
)
from distillguard.sim.corpora import PromptPools
from distillguard.sim.fleet import CampaignParams, Fleet, sample_campaign
from distillguard.sim.scenarios import SCENARIOS, Scenario, load_scenario, simulate
from distillguard.sim.splits import load_wording, wording_strings
from tests.sim_fixtures import ROBUST_SMALL, RobustWorld

DESIGNS = ["quiet_sweep", "sleeper_fleet", "imitates_people", "grader", "sampled", "sampled", "sampled", "sampled"]


def _digest(scenario: Scenario, seed: int, split: str, tmp: Path) -> str:
    _, labels = simulate(scenario, seed, tmp / "e.jsonl", split=split, accounts_out=tmp / "a.jsonl")
    h = hashlib.sha256(re.sub(rb'"request_id":"req_[0-9a-f]+",', b"", (tmp / "e.jsonl").read_bytes()))  # request ids are random
    h.update(json.dumps(labels, sort_keys=True).encode())
    h.update((tmp / "a.jsonl").read_bytes())
    return h.hexdigest()[:32]


# Digests taken before per-campaign wording and the holdout split were added (main at f982862): a change to the
# fixed scenarios' streams breaks every earlier result measured on them, so it must be deliberate.
_STEALTHY_SMALL = {**SCENARIOS["small"], "held_out": True, "models": ["demo-1", "demo-2"], "new_model_day": 1.5,
                   "campaigns": [{"accounts": 6, "requests_per_account_day": 30, "residential": True, "timing": "balanced",
                                  "paraphrase": True, "languages": ["en", "de", "ja"], "benign_mix": 0.3, "pivot": True}]}
FIXED_DIGESTS = {
    ("small", "dev", 11): "29a8661e4a991c9d2e2dde02873141f9",
    ("small", "test", 5): "7b1983edd759b13b7073f369187d8321",
    ("stealthy_small", "dev", 11): "7c62d465dc86ce93c2d66310ad816937",
    ("stealthy_small", "test", 5): "8e483dfd10d47231f183a92c906f2233",
}


@pytest.mark.parametrize(("name", "split", "seed"), sorted(FIXED_DIGESTS))
def test_fixed_scenarios_are_byte_identical(name: str, split: str, seed: int, tmp_path: Path) -> None:
    scenario = load_scenario("small") if name == "small" else Scenario(**_STEALTHY_SMALL)
    assert _digest(scenario, seed, split, tmp_path) == FIXED_DIGESTS[(name, split, seed)]


# The hold-out split was run once (bench/RESULTS.md, "Issue #11: the hold-out split, run once"); its worlds must stay
# the ones those figures describe when dev's and test's ``sampled`` draws change (digest taken on main at f031541,
# before dev's draws were widened to the whole space).
HOLDOUT_DIGEST = "8eb9eb7b07d1a4e05cdfe05e811b83f8"


def test_holdout_worlds_are_unchanged(tmp_path: Path) -> None:
    scenario = Scenario(**{**SCENARIOS["robust"], **ROBUST_SMALL})
    assert _digest(scenario, 7001, "holdout", tmp_path) == HOLDOUT_DIGEST


@pytest.mark.parametrize("split", ["dev", "test"])
def test_campaigns_get_disjoint_shares_of_private_wording(split: str) -> None:
    wording = load_wording(split)
    checked = collections.Counter()
    for seed in range(60):
        rng = random.Random(seed)
        params = [sample_campaign(rng, design, wording, days=7, release_day=3.5) for design in DESIGNS]
        needs = [CampaignNeeds.of(p) for p in params]
        shares = deal_private_wording(wording, needs, random.Random(seed))
        assert not any(s.shared for s in shares), [s.shared for s in shares]  # the split has enough of every list
        for key in PRIVATE_LISTS:
            owners: dict[str, int] = {}
            for i, share in enumerate(shares):
                items = getattr(share.wording, key)
                assert bool(items) == needs[i].uses(key), (key, i)  # only campaigns that use a list get a share of it
                for item in items:
                    assert owners.setdefault(item, i) == i, f"{key}: {item!r} dealt to campaigns {owners[item]} and {i}"
                    checked[key] += 1
                assert set(items) <= set(getattr(wording, key))
        for key in PRIVATE_BY_LANGUAGE:
            owners = {}
            for i, share in enumerate(shares):
                for lang, items in getattr(share.wording, key).items():
                    for item in items:
                        if item in ("", "{task}"):
                            continue  # a bare task or no closer is nobody's wording
                        assert owners.setdefault(item, i) == i, f"{key}.{lang}: {item!r} dealt to campaigns {owners[item]} and {i}"
                        checked[key] += 1
        # Public lists are everyone's: untouched.
        assert all(s.wording.public_cot_wrappers == wording.public_cot_wrappers for s in shares)
        assert all(s.wording.public_systems == wording.public_systems for s in shares)
    assert min(checked.values()) > 50, checked


def test_too_few_phrases_wrap_around_and_say_so() -> None:
    wording = load_wording("dev")
    needs = [CampaignNeeds(languages=("en",), grader=True) for _ in range(len(wording.graders) + 2)]
    shares = deal_private_wording(wording, needs, random.Random(1))
    assert all(s.wording.graders for s in shares) and any("graders" in s.shared for s in shares)
    # A language that runs out is written in the campaign's own English instead: no sharing.
    german = [CampaignNeeds(languages=("de",), elicitation=True) for _ in range(4)]
    shares = deal_private_wording(wording, german, random.Random(1))
    assert not any(s.shared for s in shares)
    assert sum(1 for s in shares if s.wording.elicitation.get("de")) == len(wording.elicitation["de"])


def _private_phrases(split: str) -> dict[str, str]:
    """Distinctive private phrases of a split (≥ 15 characters, placeholders cut) → the list they come from."""
    wording = load_wording(split)
    out: dict[str, str] = {}
    for key in ("short_wrappers", "campaign_systems", "graders", "system_suffixes"):
        for text in getattr(wording, key):
            out[max(text.split("{task}"), key=len).strip()] = key
    for key in ("elicitation", "openers", "closers", "frames"):
        for lang, texts in getattr(wording, key).items():
            for text in texts:
                out[max(text.split("{task}"), key=len).strip()] = f"{key}.{lang}"
    return {p: k for p, k in out.items() if len(p) >= 15}


@pytest.fixture(scope="module")
def robust_dev(robust_worlds: dict[str, RobustWorld]) -> tuple[list[dict], dict]:
    events, labels, _ = robust_worlds["dev"]  # the same world test_sim.py reads (tests/sim_fixtures.py)
    return events, labels


def _texts(event: dict) -> list[str]:
    return [m["content"] for m in event["request"]["messages"] if m["role"] == "user"] + [event["request"]["system"] or ""]


def test_no_two_campaigns_of_a_world_say_the_same_private_phrase(robust_dev: tuple[list[dict], dict]) -> None:
    events, labels = robust_dev
    phrases = _private_phrases("dev")
    users: dict[str, set[str]] = collections.defaultdict(set)
    for event in events:
        campaign = labels["accounts"][event["account_id"]]["campaign"]
        if campaign:
            for phrase in phrases:
                if any(phrase in text for text in _texts(event)):
                    users[phrase].add(campaign)
    assert len(users) >= 10  # campaigns do use private wording
    assert {p: c for p, c in users.items() if len(c) > 1} == {}
    assert all(not c["shared_wording"] for c in labels["campaigns"].values())


def test_public_wording_is_used_by_campaigns_and_legitimate_accounts(robust_dev: tuple[list[dict], dict]) -> None:
    events, labels = robust_dev
    wording = load_wording("dev")
    heads = [max(w.split("{task}"), key=len).strip() for w in wording.public_cot_wrappers]

    def public_use(evts: list[dict]) -> tuple[set[str], set[str]]:
        wrappers = {h for e in evts for h in heads for m in e["request"]["messages"] if m["role"] == "user" and h in m["content"]}
        systems = {e["request"]["system"] for e in evts if e["request"]["system"] in wording.public_systems}
        return wrappers, systems

    legit = [e for e in events if labels["accounts"][e["account_id"]]["label"] in ("benign", "heavy_benign")]
    wrappers, systems = public_use(legit)
    assert len(wrappers) >= 2 and len(systems) >= 2
    by_population = collections.Counter(labels["accounts"][e["account_id"]]["population"] for e in legit
                                        if e["request"]["system"] in wording.public_systems)
    assert by_population["person"] > 0
    learners = [e for e in legit if labels["accounts"][e["account_id"]]["population"] == "learner"]
    assert public_use(learners)[0]  # students copy the public trick too, not only evaluation jobs
    # A campaign that uses public wording says the same public phrases as legitimate accounts.
    params = CampaignParams(accounts=6, rate=200, lifetime_days=1, public_wrappers=0.5, public_system=1.0, system="per_account",
                            wrappers="few", elicit=0.3)
    share = deal_private_wording(wording, [CampaignNeeds.of(params)], random.Random(2))[0]
    fleet = Fleet("distiller", [f"c{i}" for i in range(6)], campaign="camp_x", rng=random.Random(2), pools=PromptPools.for_split("dev"),
                  wording=share.wording, params=params, start=0.0, days=1)
    campaign = [item[2] for item in fleet.events()]
    c_wrappers, c_systems = public_use(campaign)
    assert c_wrappers & wrappers and c_systems & systems
    # … and uses its own wording for the rest.
    assert sum(1 for e in campaign if not any(h in _texts(e)[0] for h in heads)) > 0.3 * len(campaign)
    assert all(0 <= c["public_wrappers"] <= 0.5 and 0 <= c["public_system"] <= 1 for c in labels["campaigns"].values())


# -- the hold-out split --------------------------------------------------------------------------------------------
def test_holdout_wording_is_its_own_in_languages_no_other_split_has() -> None:
    dev, test, holdout = (wording_strings(load_wording(split)) for split in ("dev", "test", "holdout"))
    assert len(holdout) > 200
    assert holdout.isdisjoint(dev), sorted(holdout & dev)[:5]
    assert holdout.isdisjoint(test), sorted(holdout & test)[:5]
    languages = set(load_wording("holdout").languages) - {"en"}
    assert len(languages) >= 8
    assert languages.isdisjoint(load_wording("dev").languages) and languages.isdisjoint(load_wording("test").languages)
    # Every language has its own phrasings for every table a campaign uses, not an English fallback.
    wording = load_wording("holdout")
    for table in ("elicitation", "frames", "openers", "closers", "followups"):
        assert languages <= set(getattr(wording, table)), table


def test_holdout_prompts_are_a_slice_no_other_split_has() -> None:
    pools = {split: PromptPools.for_split(split) for split in ("dev", "test", "holdout")}

    def items(p: PromptPools) -> set[str]:
        return {c[0] for c in p.conversations} | {t for ts in p.sweeps.values() for t in ts} | set(p.answers) | set(p.coding)

    sets = {split: items(p) for split, p in pools.items()}
    assert len(sets["holdout"]) > 1500 and len(pools["holdout"].conversations) > 200
    assert sets["holdout"].isdisjoint(sets["dev"]) and sets["holdout"].isdisjoint(sets["test"]) and sets["dev"].isdisjoint(sets["test"])
    # Together the three cover exactly the two historical halves.
    halves = items(PromptPools.halves("dev")) | items(PromptPools.halves("test"))
    assert sets["dev"] | sets["test"] | sets["holdout"] == halves


def test_corner_campaigns_reach_the_corners_dev_rarely_samples() -> None:
    wording = load_wording("holdout")
    rng = random.Random(11)
    drawn = [sample_campaign(rng, "corner", wording, days=7, release_day=3.5, budget=8_000) for _ in range(200)]
    assert any(c.accounts == 5 for c in drawn) and any(c.accounts == 500 and c.rate == 2.0 for c in drawn)
    assert any(c.rate >= 299 for c in drawn)
    assert any(c.elicit == 0.0 for c in drawn) and any(c.elicit == 0.8 for c in drawn)
    for axis, value in (("wrappers", "paraphrased"), ("network", "per_request"), ("attest", True), ("stream", 0.9), ("benign_mix", 0.5),
                        ("ban_replace", True), ("pivot", True), ("system", "per_account"), ("public_system", 1.0)):
        share = sum(1 for c in drawn if getattr(c, axis) == value) / len(drawn)
        assert share >= 0.3, (axis, share)  # "sampled" alone reaches these less often
    assert any(len(c.languages) == 8 for c in drawn)
    assert all(c.expected_requests() <= 8_000 * 1.01 for c in drawn)


def test_holdout_runs_from_the_cli_with_its_own_mix(tmp_path: Path, robust_dev: tuple[list[dict], dict]) -> None:
    scenario = tmp_path / "holdout-small.yaml"
    scenario.write_text("extends: robust\n" + "".join(f"{k}: {v}\n" for k, v in ROBUST_SMALL.items()))
    out = subprocess.run([sys.executable, "-m", "distillguard.cli", "simulate", "--scenario", str(scenario), "--split", "holdout",
                          "--seed", "7001", "--out", str(tmp_path / "h.jsonl.gz"), "--labels", str(tmp_path / "h.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    labels = json.loads((tmp_path / "h.json").read_text())
    assert labels["split"] == "holdout"
    designs = collections.Counter(c["archetype"] for c in labels["campaigns"].values())
    assert designs["corner"] == ROBUST_SMALL["sampled_campaigns"] + 2 and "sampled" not in designs
    # More learners and evaluation jobs per person than dev.
    populations = {name: collections.Counter(v["population"] for v in lab["accounts"].values())
                   for name, lab in (("holdout", labels), ("dev", robust_dev[1]))}
    for population in ("learner", "eval_job", "office"):
        assert populations["holdout"][population] / populations["holdout"]["person"] > populations["dev"][population] / populations["dev"]["person"]
    # Nothing a user or system prompt says is in the dev world.
    events = list(read_events([tmp_path / "h.jsonl.gz"]))
    said = {t for e in events for t in _texts(e) if t}
    dev_said = {t for e in robust_dev[0] for t in _texts(e) if t}
    assert len(said) > 1000 and not said & dev_said
    # The fixed scenarios have no hold-out split: a clear error, not a world built from overlapping prompts.
    out = subprocess.run([sys.executable, "-m", "distillguard.cli", "simulate", "--scenario", "small", "--split", "holdout", "--seed", "1",
                          "--out", str(tmp_path / "x.jsonl"), "--labels", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "robust family only" in out.stderr

