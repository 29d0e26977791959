"""The dev-only stress family (``robust_stress``): one campaign in each joint corner of the space, and the dev, test
and hold-out worlds of ``robust`` unchanged by it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from distillguard.exceptions import InputError
from distillguard.sim.fleet import STRESS_CORNERS, sample_campaign
from distillguard.sim.scenarios import SCENARIOS, Scenario, build_actors
from distillguard.sim.splits import load_wording
from tests.sim_fixtures import ROBUST_SMALL
from tests.test_sim_splits import _digest

# Taken on main at 4e9c333, before the stress family was added: dev's and test's robust worlds must stay the ones
# every dev and test figure in bench/RESULTS.md describes (the hold-out's and the fixed scenarios' are checked in
# tests/test_sim_splits.py).
ROBUST_DIGESTS = {("dev", 3): "02a2ea78697f45a5672bce5f818dda80", ("test", 1003): "8653f3d9fdbb5dabce11f9fcad476a3c"}


@pytest.mark.parametrize(("split", "seed"), sorted(ROBUST_DIGESTS))
def test_dev_and_test_robust_worlds_are_unchanged(split: str, seed: int, tmp_path: Path) -> None:
    scenario = Scenario(**{**SCENARIOS["robust"], **ROBUST_SMALL})
    assert _digest(scenario, seed, split, tmp_path) == ROBUST_DIGESTS[(split, seed)]


def _stress(**extra: object) -> Scenario:
    return Scenario(**{**SCENARIOS["robust_stress"], "scale": 0.05, **extra})


@pytest.mark.parametrize("split", ["test", "holdout"])
def test_stress_is_refused_outside_dev(split: str) -> None:
    with pytest.raises(InputError, match="dev split only"):
        build_actors(_stress(), 1001 if split == "test" else 7001, split)


def test_stress_world_has_one_campaign_per_corner_and_its_corners_hold() -> None:
    _, labels, _ = build_actors(_stress(), 5, "dev")
    campaigns = labels["campaigns"]
    assert sorted(c["archetype"] for c in campaigns.values()) == sorted(f"stress_{c}" for c in STRESS_CORNERS)
    by = {c["archetype"].removeprefix("stress_"): c for c in campaigns.values()}
    wide = by["wide_slow"]
    assert wide["size"] >= 300 and wide["rate"] <= 3 and wide["network"] == "per_request" and wide["creation"] == "spread"
    assert wide["lifetime_days"] >= 6 and wide["elicit"] <= 0.1 and wide["wrappers"] == "none" and wide["system"] == "none"
    assert by["silent_systems"]["system"] == "per_account" and by["silent_systems"]["elicit"] == 0
    assert by["replace_staggered"]["ban_replace"] and by["replace_staggered"]["creation"] == "staggered"
    assert by["benign_heavy"]["benign_mix"] >= 0.6
    people = by["people_like"]
    assert people["stream"] == 1.0 and people["attest"] and people["multi_turn"] >= 0.7 and len(people["languages"]) >= 8
    assert by["polyglot_elicit"]["elicit"] >= 0.7 and len(by["polyglot_elicit"]["languages"]) >= 8
    assert by["grader_rotating"]["grader"] >= 0.6 and by["grader_rotating"]["network"] == "per_request"
    assert by["release_newcomers"]["pivot"] and by["release_newcomers"]["start_day"] == SCENARIOS["robust"]["new_model_day"]


def test_staggered_replacements_take_over_one_account_at_a_time() -> None:
    """Each banned account's replacement starts at its own moment, so old and new accounts are active side by side."""
    actors, labels, metas = build_actors(_stress(stress_campaigns=3), 2, "dev")
    camp = next(c for c in labels["campaigns"].values() if c["creation"] == "staggered")
    fleet = next(a for a in actors if getattr(a, "campaign", None) and set(a.accounts) <= set(camp["accounts"]))
    replacements = set(camp["replacements"])
    first_new = last_old = None
    for event in fleet.events():
        ts, acct = event[0], event[2]["account_id"]
        if acct in replacements:
            first_new = ts if first_new is None else first_new
        else:
            last_old = ts
    assert first_new is not None and last_old is not None and first_new < last_old  # an all-at-once ban would have first_new > last_old
    created = {m.account_id: m.created_at for m in metas if m.account_id in replacements}
    assert max(created.values()) - min(created.values()) > 7 * 86_400  # an aged reserve, not accounts made within hours


def test_stress_draws_are_reproducible() -> None:
    wording = load_wording("dev")
    a = sample_campaign(random.Random(3), "stress_people_like", wording, days=7, release_day=3.5)
    b = sample_campaign(random.Random(3), "stress_people_like", wording, days=7, release_day=3.5)
    assert a == b
    with pytest.raises(ValueError, match="stress corner"):
        sample_campaign(random.Random(3), "stress_nowhere", wording, days=7, release_day=3.5)
