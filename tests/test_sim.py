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


# -- the robust family, its splits and account metadata ------------------------------------------------------------
import collections  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
from collections.abc import Callable  # noqa: E402

from distillguard.sim.fleet import ARCHETYPES, CampaignParams, sample_campaign  # noqa: E402
from distillguard.sim.splits import load_wording, wording_strings  # noqa: E402
from tests.sim_fixtures import RobustWorld  # noqa: E402


@pytest.fixture(scope="module")
def robust(robust_worlds: dict[str, RobustWorld]) -> dict[str, RobustWorld]:
    """A small robust world on each split (same seed): events, labels, account metadata (tests/sim_fixtures.py, one per session)."""
    return robust_worlds


def _by_population(events: list[dict], labels: dict) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = collections.defaultdict(list)
    for event in events:
        grouped[labels["accounts"][event["account_id"]]["population"]].append(event)
    return grouped


def test_robust_has_every_hard_negative_population_and_campaign_archetype(robust: dict) -> None:
    events, labels, _ = robust["dev"]
    populations = {v["population"] for v in labels["accounts"].values()}
    assert {"person", "coder", "learner", "night_owl", "vpn", "cloud_desktop", "early_adopter", "office", "eval_job", "light_app",
            "coding_agent", "relay_reseller", "reseller_classic"} <= populations
    assert {c["archetype"] for c in labels["campaigns"].values()} == {"quiet_sweep", "sleeper_fleet", "imitates_people", "grader", "sampled"}
    stamps = [parse_ts(e["ts"]) for e in events]
    assert stamps == sorted(stamps)
    assert {e["account_id"] for e in events} == set(labels["accounts"])
    # Reasoning length says which model answered (the new one reasons always), never what the prompt asked.
    assert all((e["response"]["reasoning_chars"] > 0) == (e["model"] == "demo-2") for e in events)
    assert sum(e["model"] == "demo-2" for e in events) > 1000


def test_hard_negatives_behave_as_described(robust: dict) -> None:
    events, labels, metas = robust["dev"]
    grouped = _by_population(events, labels)
    wording = load_wording("dev")
    # Evaluation jobs: one burst of 500-1,500 single-turn prompts in a public CoT wrapper, from a data centre, within a day.
    jobs: dict[str, list[dict]] = collections.defaultdict(list)
    for event in grouped["eval_job"]:
        jobs[event["account_id"]].append(event)
    for job in jobs.values():
        span = parse_ts(job[-1]["ts"]) - parse_ts(job[0]["ts"])
        assert 500 <= len(job) <= 1_520 and span < 86_400
        assert all(len(e["request"]["messages"]) == 1 and e["client"]["geo"]["hosting"] for e in job)
        wrappers = {w for w in wording.public_cot_wrappers if all(_fits(w, e["request"]["messages"][0]["content"]) for e in job[-50:])}
        assert len(wrappers) == 1
    # Learners ask for explanations and follow up; night owls are active at local night.
    learner = grouped["learner"]
    assert sum(1 for e in learner if len(e["request"]["messages"]) > 1) / len(learner) > 0.2
    # Offices: many accounts, one egress address, one org.
    offices: dict[str, set[str]] = collections.defaultdict(set)
    for event in grouped["office"]:
        offices[event["org_id"]].add(event["client"]["ip"])
    assert offices and all(len(ips) == 1 for ips in offices.values())
    org_members = collections.Counter(m["org_id"] for m in metas if m["org_id"])
    assert max(org_members.values()) >= 3
    # VPN users: the address country disagrees with the attested timezone on some requests.
    vpn = [e for e in grouped["vpn"] if e["attestation"]]
    assert vpn and all(e["client"]["geo"]["hosting"] for e in grouped["vpn"])
    # Light apps: one fixed system prompt, single turn.
    apps: dict[str, set] = collections.defaultdict(set)
    for event in grouped["light_app"]:
        apps[event["account_id"]].add(event["request"]["system"])
        assert len(event["request"]["messages"]) == 1
    assert all(len(systems) == 1 for systems in apps.values())
    # Coding agents: tools declared, seconds between steps, one stock system prompt shared by unrelated developers.
    agents = grouped["coding_agent"]
    assert all(e["request"]["params"]["tools"] >= 6 for e in agents)
    by_system = collections.Counter(e["request"]["system"] for e in agents)
    assert len({e["account_id"] for e in agents if e["request"]["system"] == by_system.most_common(1)[0][0]}) >= 2


def _fits(template: str, text: str) -> bool:
    head, _, tail = template.format(task="\x00").partition("\x00")
    return text.startswith(head) and text.endswith(tail)


def test_campaign_archetypes_follow_their_design(robust: dict) -> None:
    events, labels, metas = robust["dev"]
    grouped = _by_population(events, labels)
    quiet = grouped["quiet_sweep"]
    assert all(len(e["request"]["messages"]) == 1 and e["request"]["system"] is None for e in quiet)
    assert len({e["client"]["ip"] for e in quiet}) > 0.9 * len(quiet)  # a new residential address per request
    imitators = grouped["imitates_people"]
    assert sum(e["request"]["params"]["stream"] for e in imitators) / len(imitators) > 0.7
    assert all((e["attestation"] or {}).get("status") == "valid" for e in imitators)
    installs = collections.defaultdict(set)
    for event in imitators:
        installs[event["account_id"]].add(event["attestation"]["install_id"])
    assert all(len(i) == 1 for i in installs.values())
    followups = set(sum(load_wording("dev").followups.values(), []))
    assert any(e["request"]["messages"][-1]["content"] in followups for e in imitators if len(e["request"]["messages"]) > 1)
    sleeper = [c for c in labels["campaigns"].values() if c["archetype"] == "sleeper_fleet"][0]
    created = sorted(parse_ts(m["created_at"]) for m in metas if m["account_id"] in set(sleeper["accounts"]))
    assert created[-1] - created[0] <= 6 * 3600  # created within hours of each other
    asns = {e["client"]["geo"]["asn"] for e in grouped["sleeper_fleet"]}
    assert len(asns) <= 3


def test_sampled_campaigns_cover_the_space() -> None:
    wording = load_wording("dev")
    rng = random.Random(5)
    drawn = [sample_campaign(rng, "sampled", wording, days=7, release_day=3.5, budget=1e12) for _ in range(300)]
    assert all(5 <= c.accounts <= 500 and 2 <= c.rate <= 300 and 0 <= c.elicit <= 0.8 for c in drawn)
    assert min(c.accounts for c in drawn) < 10 and max(c.accounts for c in drawn) > 250
    assert {c.params for c in drawn} == {"benign", "pinned"}
    for axis in ("timing", "network", "system", "wrappers", "creation", "payments", "email", "ua"):
        assert len({getattr(c, axis) for c in drawn}) >= 2, axis
    assert any(c.attest for c in drawn) and any(c.ban_replace for c in drawn) and any(c.pivot for c in drawn)
    assert max(len(c.languages) for c in drawn) >= 8 and len(wording.languages) >= 8
    # As budgeted in a world (8,000 requests), the draws reach every edge of the space with real mass, jointly too:
    # ~500 accounts at 2-3 requests a day for days is the corner the hold-out split found undetected (recall 0.654).
    fitted = [sample_campaign(random.Random(i), "sampled", wording, days=7, release_day=3.5, budget=8_000) for i in range(1000)]

    def share(test: Callable[[CampaignParams], bool]) -> float:
        return sum(1 for c in fitted if test(c)) / len(fitted)

    assert share(lambda c: c.accounts <= 8) >= 0.15 and share(lambda c: c.accounts >= 300) >= 0.15
    assert share(lambda c: c.rate <= 3) >= 0.05 and share(lambda c: c.rate >= 200) >= 0.05
    assert share(lambda c: c.accounts >= 300 and c.rate <= 3.5 and c.lifetime_days >= 3) >= 0.03  # the log-uniform draw: 0.006
    assert share(lambda c: c.lifetime_days >= 5) >= 0.1 and share(lambda c: c.lifetime_days <= 1.2) >= 0.1
    assert share(lambda c: c.elicit >= 0.7) >= 0.1
    assert all(c.expected_requests() <= 8_000 * 1.01 for c in fitted)
    # Over 300 accounts a campaign is never synchronised (every pair co-active makes eval's clustering quadratic).
    assert not any(c.timing == "synchronised" and c.accounts > 300 for c in fitted)
    assert any(c.timing == "synchronised" and c.accounts > 100 for c in fitted)
    capped = [sample_campaign(random.Random(i), "sampled", wording, days=7, release_day=None, budget=3000) for i in range(50)]
    assert all(1_499 <= c.expected_requests() <= 3000 * 1.01 or c.rate in (2.0, 300.0) for c in capped)
    assert any(c.capped for c in capped)
    with pytest.raises(ValueError, match="archetype"):
        sample_campaign(rng, "nonsense", wording, days=7, release_day=None)
    assert "sampled" in ARCHETYPES


def test_a_campaign_asks_each_task_once_before_repeating_with_new_numbers() -> None:
    from distillguard.sim.corpora import PromptPools
    from distillguard.sim.fleet import CampaignParams, Fleet

    pools = PromptPools.for_split("dev")
    fleet = Fleet("distiller", ["a"], rng=random.Random(3), pools=pools, wording=load_wording("dev"), params=CampaignParams(pools=("gsm8k",)))
    first_pass = [fleet._next_task() for _ in range(len(pools.sweeps["gsm8k"]))]
    assert sorted(first_pass) == sorted(pools.sweeps["gsm8k"])
    second_pass = [fleet._next_task() for _ in range(200)]
    assert sum(1 for t in second_pass if t not in set(pools.sweeps["gsm8k"])) > 150  # numbers changed


def test_dev_and_test_share_no_wording_no_prompts_and_no_accounts(robust: dict) -> None:
    dev, test = wording_strings(load_wording("dev")), wording_strings(load_wording("test"))
    assert len(dev) > 150 and len(test) > 150
    assert dev.isdisjoint(test), sorted(dev & test)[:5]
    assert len(load_wording("test").languages) >= 8
    seen: dict[str, set[str]] = {}
    for split, (events, _labels, _) in robust.items():
        seen[split] = {m["content"] for e in events for m in e["request"]["messages"] if m["role"] == "user"}
        seen[split] |= {e["request"]["system"] for e in events if e["request"]["system"]}
    assert len(seen["dev"]) > 2000 and not seen["dev"] & seen["test"]
    assert set(robust["dev"][1]["accounts"]).isdisjoint(robust["test"][1]["accounts"])
    assert robust["test"][1]["split"] == "test"


def test_account_metadata_is_in_the_export_format_and_not_a_giveaway(robust: dict) -> None:
    events, labels, metas = robust["dev"]
    assert {m["account_id"] for m in metas} == set(labels["accounts"])
    for meta in metas:
        assert set(meta) == {"account_id", "name", "org_id", "created_at", "status", "attributes"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["created_at"])
        assert "email_domain" in meta["attributes"]
        assert all(re.fullmatch(r"h1:[0-9a-f]{32}", v) for v in meta["attributes"].values())
    domains: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for meta in metas:
        entry = labels["accounts"][meta["account_id"]]
        domains[entry["campaign"] or entry["label"]][meta["attributes"]["email_domain"]] += 1
    # A webmail campaign's accounts sign up on domains many legitimate people use too.
    webmail = [c for c, info in labels["campaigns"].items() if info["email"] == "webmail"]
    assert webmail
    for campaign in webmail:
        on_common = sum(n for domain, n in domains[campaign].items() if domains["benign"][domain] >= 5)
        assert on_common > 0.6 * sum(domains[campaign].values()), campaign


def test_simulate_cli_split_and_accounts_out(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "distillguard.cli", "simulate", "--scenario", "small", "--seed", "5", "--split", "test",
                          "--out", str(tmp_path / "e.jsonl"), "--labels", str(tmp_path / "l.json")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    labels = json.loads((tmp_path / "l.json").read_text())
    metas = (tmp_path / "l.accounts.jsonl").read_text().splitlines()
    assert labels["split"] == "test" and len(metas) == len(labels["accounts"])
    # eval hands the metadata to the scanner, as `scan --accounts` does; a bad file stops it with the line named.
    out = subprocess.run([sys.executable, "-m", "distillguard.cli", "eval", "--events", str(tmp_path / "e.jsonl"), "--labels",
                          str(tmp_path / "l.json"), "--accounts", str(tmp_path / "l.accounts.jsonl"), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["split"] == "test"
    (tmp_path / "bad.jsonl").write_text('{"account_id": "a", "attributes": {"email_domain": "gmail.com"}}\n')
    out = subprocess.run([sys.executable, "-m", "distillguard.cli", "eval", "--events", str(tmp_path / "e.jsonl"), "--labels",
                          str(tmp_path / "l.json"), "--accounts", str(tmp_path / "bad.jsonl")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "attributes.email_domain" in out.stderr


# -- eval: per campaign, per population, worst campaign, targets ----------------------------------------------------
from distillguard.detect.scanner import Scanner  # noqa: E402
from distillguard.sim.evaluate import evaluate, format_table, targets, worst_campaigns  # noqa: E402


class _FixedReport(Scanner):
    """A scanner whose report is given: to check eval's arithmetic, not the detectors."""

    def __init__(self, entries: list[dict], clusters: list[dict]) -> None:
        super().__init__()
        self.fixed = {"v": 1, "events": 0, "accounts_seen": len(entries), "accounts": entries, "clusters": clusters}

    def report(self, *, recluster: bool = True) -> dict:
        return self.fixed


def _entry(account: str, distill: float, cluster: str | None = None, resell: float = 0.0) -> dict:
    return {"account_id": account, "distillation_score": distill, "reseller_score": resell, "cluster_id": cluster}


def test_eval_campaign_recall_clusters_purity_and_populations(tmp_path: Path) -> None:
    from distillguard.events import EventWriter, new_event

    accounts = {f"b{i}": {"label": "benign", "campaign": None, "population": "learner" if i < 10 else "person"} for i in range(200)}
    accounts |= {f"c{i}": {"label": "distiller", "campaign": "camp_1", "population": "sleeper_fleet"} for i in range(4)}
    with EventWriter(tmp_path / "e.jsonl") as writer:
        for account in accounts:
            writer.write(new_event(endpoint="openai.chat", account_id=account, request={"system": None, "messages": [], "params": {}},
                                   response={"status": 200}))
    entries = [_entry(f"b{i}", 0.01 * (i % 50)) for i in range(200)]
    entries[0] = _entry("b0", 0.9)  # one learner in the high band
    entries += [_entry("c0", 0.95, "cl_1"), _entry("c1", 0.6, "cl_1"), _entry("c2", 0.3, "cl_2"), _entry("c3", 0.2)]
    clusters = [{"cluster_id": "cl_1", "accounts": ["c0", "c1"]}, {"cluster_id": "cl_2", "accounts": ["c2", "b5", "b6"]}]
    labels = {"accounts": accounts, "campaigns": {"camp_1": {"archetype": "sleeper_fleet", "accounts": ["c0", "c1", "c2", "c3"]}}, "events": 204}
    result = evaluate([str(tmp_path / "e.jsonl")], labels, scanner=_FixedReport(entries, clusters))
    row = result["campaigns"]["camp_1"]
    # Threshold at 0.5 % of 200 negatives: the second-highest negative (0.9, then 0.49) — only c0 and c1 exceed 0.49.
    assert result["campaign_threshold"]["ours"] == pytest.approx(0.49)
    assert row["ours_recall_at_fpr_0.005"] == 0.5
    assert row["share_in_clusters"] == 0.75 and row["share_in_pure_clusters"] == 0.5
    assert row["cluster_purity_min"] == pytest.approx(1 / 3) and row["clusters"] == 2
    assert row["ours_share_of_requests_before_first_detection"] == 1.0  # detected only at the last checkpoint
    learners = result["populations"]["learner"]
    assert learners["accounts"] == 10 and learners["high"] == 1 and result["populations"]["person"]["high"] == 0
    assert result["targets"]["negatives_high"] == {"value": 1, "target": 0, "met": False}
    assert not result["targets"]["campaign_share_in_pure_clusters"]["met"]
    assert "sleeper_fleet" in format_table(result) and "MISSED" in format_table(result)


def test_worst_campaign_and_targets_name_the_worst_not_the_mean() -> None:
    campaigns = {
        "camp_1": {"design": "a", "ours_recall_at_fpr_0.005": 1.0, "share_in_pure_clusters": 1.0, "ours_share_of_requests_before_first_detection": 0.01},
        "camp_2": {"design": "b", "ours_recall_at_fpr_0.005": 0.4, "share_in_pure_clusters": 0.9, "ours_share_of_requests_before_first_detection": None},
        "camp_3": {"design": "c", "ours_recall_at_fpr_0.005": 0.9, "share_in_pure_clusters": 0.2, "ours_share_of_requests_before_first_detection": 0.3},
    }
    worst = worst_campaigns(campaigns)
    assert worst["recall_at_fpr"] == {"campaign": "camp_2", "design": "b", "value": 0.4}
    assert worst["share_in_pure_clusters"]["campaign"] == "camp_3"
    assert worst["share_of_requests_before_first_detection"]["campaign"] == "camp_2"  # never detected is worst
    result = {"classes": {"distiller": {"ours": {"recall_at_fpr_0.005": 0.96}}, "reseller": {"ours": {"recall_at_fpr_0.01": 0.95}}},
              "campaigns": campaigns, "populations": {"person": {"label": "benign", "high": 0}}}
    checks = targets(result)
    assert checks["distiller_recall_at_fpr_0.005"]["met"] and checks["reseller_recall_at_fpr_0.01"]["met"] and checks["negatives_high"]["met"]
    assert not checks["campaign_share_in_pure_clusters"]["met"] and checks["campaign_share_in_pure_clusters"]["value"] == 0.2
    assert not checks["campaign_share_before_detection"]["met"]


@pytest.mark.parametrize("split", ["test", "holdout"])
def test_no_detector_file_quotes_the_test_wording(split: str) -> None:
    """The test and hold-out splits are only a measurement while detection has not copied them: no whole phrase of
    them (≥ 25 characters, case-folded) may appear in a text file under src/distillguard/detect (docstrings and
    comments included). String literals, short phrases, split-only languages and the classifier's training data:
    tests/test_contamination.py."""
    # Published stock system prompts are in every split.
    from distillguard.detect.attribution import PUBLIC_SYSTEM_PROMPTS

    public = {" ".join(s.lower().split()) for s in PUBLIC_SYSTEM_PROMPTS}
    phrases = [p for p in wording_strings(load_wording(split)) if len(p) >= 25 and p not in public]
    assert len(phrases) > 60
    detect = Path(__file__).resolve().parent.parent / "src" / "distillguard" / "detect"
    quoted = {}
    for path in detect.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".json", ".yaml", ".yml", ".txt", ".csv", ".tsv"):
            text = " ".join(path.read_text(encoding="utf-8", errors="ignore").lower().split())
            found = [p for p in phrases if p in text]
            if found:
                quoted[path.name] = found[:3]
    assert not quoted, f"{split}-split wording copied into detection code: {quoted}"


class _CaughtAfter(Scanner):
    """Reports the campaign's account ``c0`` in `high` once it has seen ``after`` of its events; records re-clusterings."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.seen, self.reclusters = after, 0, []

    def update(self, event: dict) -> None:
        self.seen += event.get("account_id") == "c0"

    def report(self, *, recluster: bool = True) -> dict:
        self.reclusters.append(recluster)
        score = 0.95 if self.seen >= self.after else 0.1
        return {"v": 1, "events": 0, "accounts_seen": 2, "clusters": [],
                "accounts": [_entry("c0", score), _entry("b0", 0.0)]}


def test_eval_reads_time_to_detect_on_a_fine_grid(tmp_path: Path) -> None:
    # 40,000 events, the campaign caught after 1,100 of them: a look every 500 events reports 3.75 % of its
    # requests (at 40 looks, one every 1,000, it was 5 %); one look in five re-clusters, and the last one.
    path = tmp_path / "e.jsonl"
    line = '{"v": 1, "ts": "2026-10-01T00:00:00Z", "account_id": "c0", "endpoint": "openai.chat"}\n'
    path.write_text(line * 40_000)
    labels = {"accounts": {"c0": {"label": "distiller", "campaign": "camp_1"}, "b0": {"label": "benign"}},
              "campaigns": {"camp_1": {"archetype": "sampled", "accounts": ["c0"]}}, "events": 40_000}
    scanner = _CaughtAfter(1_100)
    result = evaluate([str(path)], labels, scanner=scanner)
    assert result["checkpoint_every_events"] == 500
    assert result["campaigns"]["camp_1"]["ours_share_of_requests_before_first_detection"] == pytest.approx(0.0375)
    assert len(scanner.reclusters) == 81 and sum(scanner.reclusters) == 17 and scanner.reclusters[0] and scanner.reclusters[-1]


def test_eval_on_a_robust_world_counts_every_campaign_and_population_once(robust: dict, tmp_path: Path) -> None:
    """On a whole simulated world (the real scanner), eval's per-campaign, per-population and worst-campaign numbers
    are counts of what the log holds: each campaign's accounts that sent a request (replacements included) and their
    requests, every scored account in exactly one population, the worst campaign the minimum, not the mean."""
    events, labels, metas = robust["dev"]
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    result = evaluate([str(path)], labels)
    sent = collections.Counter(e["account_id"] for e in events)
    for campaign, info in labels["campaigns"].items():
        row = result["campaigns"][campaign]
        members = [a for a in info["accounts"] if a in sent]
        assert row["accounts"] == len(members) and row["requests"] == sum(sent[a] for a in members), campaign
        assert set(info["replacements"]) <= set(info["accounts"])
        for key in ("ours_recall_at_fpr_0.005", "share_high_any_score", "share_in_clusters", "share_in_pure_clusters"):
            assert 0.0 <= row[key] <= 1.0, (campaign, key)
        assert row["share_in_pure_clusters"] <= row["share_in_clusters"]
    populations = result["populations"]
    assert sum(row["accounts"] for row in populations.values()) == result["accounts"] == len(sent)
    for population in {v["population"] for v in labels["accounts"].values()}:
        expected = sum(1 for a, v in labels["accounts"].items() if v["population"] == population and a in sent)
        assert populations[population]["accounts"] == expected, population
    negatives_high = sum(row["high"] for row in populations.values() if row["label"] in ("benign", "heavy_benign"))
    assert result["targets"]["negatives_high"]["value"] == negatives_high
    recalls = {c: row["ours_recall_at_fpr_0.005"] for c, row in result["campaigns"].items()}
    assert result["worst_campaign"]["recall_at_fpr"]["value"] == min(recalls.values())
    assert result["classes"]["distiller"]["positives"] == sum(1 for a, v in labels["accounts"].items() if v["label"] == "distiller")
