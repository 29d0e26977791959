"""The simulator: contract-shaped, time-ordered, labelled, reproducible event logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distillguard.events import parse_ts, read_events
from distillguard.sim.scenarios import SCENARIOS, load_scenario, simulate


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sim") / "small.jsonl.gz"
    _, labels = simulate(load_scenario("small"), 11, out)
    return out, labels


def test_events_follow_the_contract_and_time_order(small: tuple[Path, dict]) -> None:
    path, labels = small
    events = list(read_events([path]))
    assert len(events) == labels["events"] > 1000
    stamps = [parse_ts(e["ts"]) for e in events]
    assert stamps == sorted(stamps)
    assert (stamps[-1] - stamps[0]) / 86400 > 2  # days of simulated time
    for event in events[:200]:
        for field in ("v", "ts", "request_id", "account_id", "endpoint", "request", "response"):
            assert field in event
        assert isinstance(event["request"]["messages"][0]["content"], str)
        assert set(event["client"]["geo"]) == {"country", "asn", "hosting"}


def test_labels_cover_every_account_with_the_four_classes(small: tuple[Path, dict]) -> None:
    path, labels = small
    accounts = {e["account_id"] for e in read_events([path])}
    assert accounts == set(labels["accounts"])
    classes = {v["label"] for v in labels["accounts"].values()}
    assert classes == {"benign", "heavy_benign", "reseller", "distiller"}
    distillers = [a for a, v in labels["accounts"].items() if v["label"] == "distiller"]
    assert all(labels["accounts"][a]["campaign"] == "camp_1" for a in distillers)


def test_populations_behave_as_described(small: tuple[Path, dict]) -> None:
    path, labels = small
    by_label: dict[str, list[dict]] = {}
    for event in read_events([path]):
        by_label.setdefault(labels["accounts"][event["account_id"]]["label"], []).append(event)
    benign_followups = sum(1 for e in by_label["benign"] if len(e["request"]["messages"]) > 1)
    assert benign_followups / len(by_label["benign"]) > 0.2
    assert all(len(e["request"]["messages"]) == 1 for e in by_label["distiller"])
    assert sum(1 for e in by_label["heavy_benign"] if e["client"]["geo"]["hosting"]) == len(by_label["heavy_benign"])
    reseller_countries = {e["client"]["geo"]["country"] for e in by_label["reseller"]} | {
        (e["attestation"] or {}).get("tz") for e in by_label["reseller"]}
    assert len(reseller_countries) >= 4


def test_same_seed_same_traffic(tmp_path: Path) -> None:
    a, _ = simulate(load_scenario("small"), 3, tmp_path / "a.jsonl")
    b, _ = simulate(load_scenario("small"), 3, tmp_path / "b.jsonl")
    first = [(e["ts"], e["account_id"], e["request"]) for e in read_events([tmp_path / "a.jsonl"])]
    second = [(e["ts"], e["account_id"], e["request"]) for e in read_events([tmp_path / "b.jsonl"])]
    assert a == b and first == second


def test_named_scenarios_and_yaml_composition(tmp_path: Path) -> None:
    assert {"small", "default", "stealthy", "pivot", "large"} <= set(SCENARIOS)
    custom = tmp_path / "mine.yaml"
    custom.write_text("extends: small\ndays: 2\nresellers: 0\ncampaigns:\n  - accounts: 3\n    languages: [de, fr]\n")
    scenario = load_scenario(str(custom))
    assert scenario.days == 2 and scenario.resellers == 0 and scenario.campaigns[0].languages == ["de", "fr"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("campaigns:\n  - accounts: -1\n")
    out = subprocess.run([sys.executable, "-m", "distillguard.cli", "simulate", "--scenario", str(bad), "--seed", "1",
                          "--out", str(tmp_path / "x.jsonl"), "--labels", str(tmp_path / "l.json")], capture_output=True, text=True)
    assert out.returncode == 2 and "campaigns.0.accounts" in out.stderr


def test_simulate_cli_writes_events_and_labels(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "distillguard.cli", "simulate", "--scenario", "small", "--seed", "5",
                          "--out", str(tmp_path / "e.jsonl.gz"), "--labels", str(tmp_path / "l.json")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    labels = json.loads((tmp_path / "l.json").read_text())
    assert labels["seed"] == 5 and labels["events"] == sum(1 for _ in read_events([tmp_path / "e.jsonl.gz"]))
