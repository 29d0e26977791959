"""One small robust simulated world per split, generated once per session for the simulator's test modules.

``tests/test_sim.py`` and ``tests/test_sim_splits.py`` both read the same worlds (scenario ``robust`` shrunk by
:data:`ROBUST_SMALL`, seed 7); each module built its own copy of the dev world (2 s of CPU, 10-30 s of wall time at
load 15). The tests only read what the fixture returns. It is registered in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from distillguard.events import read_events
from distillguard.sim.scenarios import load_scenario, simulate

ROBUST_SMALL = {"scale": 0.3, "sampled_campaigns": 2, "campaign_budget": 2500, "days": 4, "new_model_day": 2.0}

# events, labels, account metadata (the export format)
RobustWorld = tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]


@pytest.fixture(scope="session")
def robust_worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RobustWorld]:
    """The small robust world on the dev and the test split (same seed)."""
    out: dict[str, RobustWorld] = {}
    scenario = load_scenario("robust").model_copy(update=ROBUST_SMALL)
    for split in ("dev", "test"):
        base = tmp_path_factory.mktemp(f"robust_{split}")
        _, labels = simulate(scenario, 7, base / "e.jsonl.gz", split=split, accounts_out=base / "accounts.jsonl")
        metas = [json.loads(line) for line in (base / "accounts.jsonl").read_text().splitlines()]
        out[split] = (list(read_events([base / "e.jsonl.gz"])), labels, metas)
    return out
