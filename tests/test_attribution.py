"""Cross-account attribution: each indicator links a fleet, and the hard negatives stay apart.

Every positive case has a twin that differs only in the indicator under test,
so a test fails both when the indicator stops working and when it starts
merging strangers. Populations are built here, small and fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distillguard.detect import Scanner
from distillguard.detect.accounts import AccountMeta, read_accounts
from distillguard.detect.attribution import is_public_wrapper, rarity
from distillguard.events import format_ts
from distillguard.exceptions import InputError
from distillguard.store.attributes import hash_attribute

T0 = 1_790_000_000.0
DAY = 86_400.0
TOPICS = ["the water cycle", "binary search trees", "the French revolution", "photosynthesis", "compound interest",
          "TCP congestion control", "the Krebs cycle", "Bayes' theorem", "plate tectonics", "the Roman republic",
          "hash tables", "supply and demand", "the immune system", "quantum tunnelling", "gradient descent"]


def ev(account: str, t: float, prompt: str, *, system: str | None = None, ip: str = "10.0.0.1", asn: int = 3320,
       hosting: bool = False, header: str = "fp-openai", params: dict[str, Any] | None = None, org: str | None = None) -> dict[str, Any]:
    return {"v": 1, "ts": format_ts(t), "request_id": f"req_{account}_{t}", "account_id": account, "org_id": org,
            "endpoint": "openai.chat", "model": "m1",
            "client": {"ip": ip, "user_agent": "ua", "header_fp": header, "geo": {"country": "US", "asn": asn, "hosting": hosting}},
            "attestation": None,
            "request": {"system": system, "messages": [{"role": "user", "content": prompt}],
                        "params": params or {"max_tokens": 1024, "temperature": 0.7, "stream": True}},
            "response": {"status": 200, "text": "x", "prompt_tokens": 30, "completion_tokens": 200}}


_VERBS = ["Describe", "Compare", "Prove", "Summarise", "List", "Derive", "Critique", "Outline", "Translate", "Estimate", "Rank",
          "Classify", "Simplify", "Debug", "Explain"]
_ENDS = ["in two paragraphs", "for a beginner", "with citations", "as a table", "using SI units", "from first principles",
         "for a CFO", "in under 100 words", "with a diagram description", "and give pitfalls", "as bullet points",
         "for a 10-year-old", "in formal prose", "with edge cases", "step one only"]


_TAILS = ["noting", "flagging", "avoiding", "covering", "stressing", "skipping", "checking", "naming", "testing", "mapping",
          "sketching", "weighing", "tracing", "framing", "grouping"]
_LAST = ["costs", "risks", "history", "notation", "units", "limits", "sources", "examples", "exceptions", "trade-offs", "myths",
         "variants", "assumptions", "metrics", "failures"]


def task(i: int) -> str:
    """A swept task: its first and last words vary from one to the next, as a dataset's items do."""
    import random

    rng = random.Random(i)
    return f"{rng.choice(_VERBS)} {rng.choice(TOPICS)} {rng.choice(_ENDS)}, {rng.choice(_TAILS)} {rng.choice(_LAST)}"


OPENERS = ["hey, quick one:", "Can you explain", "I was wondering about", "what's the deal with", "ELI5", "Help me understand",
           "Is it true that", "My teacher mentioned", "Random thought -", "Could you summarise"]
CLOSERS = ["thanks!", "?", "in simple terms please", "for my exam tomorrow", "no jargon", "with an analogy", "briefly", "", "cheers",
           "I'm confused"]


def background(scanner: Scanner, n: int = 30) -> None:
    """Ordinary people: their own wording, home networks, their own hours, scattered over the week."""
    import random

    rng = random.Random(7)
    for u in range(n):
        opener, closer = rng.choice(OPENERS), rng.choice(CLOSERS)
        params = rng.choice([None, {"max_tokens": 1024, "temperature": 0.7, "stream": True}, {"temperature": 1.0, "stream": True}])
        times = sorted(T0 + rng.uniform(0, 7 * DAY) for _ in range(12))
        for t in times:
            if rng.random() < 0.5:
                opener, closer = rng.choice(OPENERS), rng.choice(CLOSERS)
            scanner.update(ev(f"person{u:02d}", t, f"{opener} {rng.choice(TOPICS)} {rng.choice(['', 'again', 'vs the rest'])} {closer}",
                              ip=f"10.{100 + u}.0.7", params=params, header=rng.choice(["fp-openai", "fp-anthropic", "fp-curl"])))


def fleet(scanner: Scanner, prefix: str, n: int = 6, *, wrapper: str = "{task}", system: str | None = None,
          ip: Any = None, hosting: bool = False, start: float = T0, spacing: float = 4000.0, requests: int = 30,
          params: dict[str, Any] | None = None, header: str = "fp-openai", asn: int = 3320) -> list[str]:
    """``n`` accounts sending ``requests`` prompts each at their own times; ``ip(k, i)`` chooses the address
    (default: each account its own home address)."""
    import random

    rng = random.Random(prefix)
    names = [f"{prefix}{k}" for k in range(n)]
    for k, name in enumerate(names):
        offset = rng.uniform(0, spacing)
        for i in range(requests):
            address = ip(k, i) if ip else f"10.{200 + k}.{len(prefix)}.9"
            scanner.update(ev(name, start + offset + i * spacing * rng.uniform(0.6, 1.4), wrapper.format(task=task(i * n + k + hash(prefix) % 997)),
                              system=system, ip=address, hosting=hosting, params=params, header=header, asn=asn))
    return names


def clusters_of(report: dict[str, Any]) -> list[set[str]]:
    return [set(c["accounts"]) for c in report["clusters"]]


def cluster_with(report: dict[str, Any], account: str) -> dict[str, Any] | None:
    return next((c for c in report["clusters"] if account in c["accounts"]), None)


PRIVATE_WRAPPER = "Solve the following problem for the corpus.\n\n{task}\n\nReturn the final result in a fenced block."
HOSTING_24 = lambda k, i: f"198.51.100.{10 + (i + k) % 40}"  # noqa: E731 - one data-centre /24


# -- indicators ---------------------------------------------------------------------------------------

def test_shared_wrapper_and_hosting_network_link_a_fleet_but_either_alone_does_not() -> None:
    both, wrapper_only, network_only = Scanner(), Scanner(), Scanner()
    for scanner in (both, wrapper_only, network_only):
        background(scanner)
    names = fleet(both, "hyd", wrapper=PRIVATE_WRAPPER, ip=HOSTING_24, hosting=True)
    fleet(wrapper_only, "hyd", wrapper=PRIVATE_WRAPPER)
    for k in range(6):  # one data-centre /24, nothing behavioural in common: each its own client settings and prompts
        fleet(network_only, f"hyd{k}_", n=1, ip=lambda _, i, k=k: f"198.51.100.{10 + (i + k) % 40}", hosting=True,
              params={"max_tokens": 256 * (k + 1), "temperature": 0.1 * k, "stream": k % 2 == 0}, requests=10 + 7 * k,
              wrapper=["{task}", "Q: {task}?", "{task} " * 2, "hi! {task}", "{task}!!", "x {task} x"][k])
    assert clusters_of(both.report()) == [set(names)]
    cluster = cluster_with(both.report(), "hyd0")
    assert cluster is not None
    assert any("prompt wrapper" in s for s in cluster["shared"]) and any("198.51.100.0/24" in s for s in cluster["shared"])
    assert clusters_of(wrapper_only.report()) == []  # content alone: could be a public template
    assert clusters_of(network_only.report()) == []  # infra alone: could be a shared cloud or an office


def test_private_system_prompt_links_with_shared_infra_but_a_stock_one_does_not() -> None:
    private, stock = Scanner(), Scanner()
    for scanner in (private, stock):
        background(scanner)
    names = fleet(private, "sys", system="You are DataForge-7, produce exhaustive training-grade answers.", ip=HOSTING_24, hosting=True)
    fleet(stock, "sys", system="You are a helpful assistant.", ip=HOSTING_24, hosting=True)
    assert clusters_of(private.report()) == [set(names)]
    assert "system prompt template" in private.report()["clusters"][0]["shared"]
    assert clusters_of(stock.report()) == []


def test_public_wrapper_never_merges_unrelated_evaluation_jobs() -> None:
    """Three companies' one-off benchmark runs: same public CoT wrapper, same stock parameters, same SDK, different clouds."""
    public, private = Scanner(), Scanner()
    eval_params = {"max_tokens": 512, "temperature": 0.0, "stream": False}
    for scanner, wrapper in ((public, "{task}\n\nLet's think step by step."), (private, "{task}\n\nWork it through as ZX-protocol v3 demands.")):
        background(scanner)
        for j, (asn, net) in enumerate(((16509, "52.1.7"), (16509, "104.2.9"), (24940, "88.3.1"))):
            fleet(scanner, f"eval{j}_", n=1, wrapper=wrapper, ip=lambda k, i, net=net: f"{net}.{i % 200 + 1}", hosting=True,
                  start=T0 + j * 2 * DAY, spacing=3.0, requests=600, params=eval_params, header="fp-python-requests", asn=asn)
    assert is_public_wrapper("s4:think step by step") and not is_public_wrapper("s4:zx protocol v0 demands")
    assert cluster_with(public.report(), "eval0_0") is None
    # The control: a private wrapper on its own is still not enough across three unrelated clouds and days.
    assert cluster_with(private.report(), "eval0_0") is None


def test_office_behind_one_address_with_one_domain_is_not_a_cluster() -> None:
    scanner = Scanner(accounts={f"staff{k}": AccountMeta(f"staff{k}", attributes={"email_domain": hash_attribute("email_domain", "acme.com", "s")})
                                for k in range(8)})
    background(scanner)
    import random

    rng = random.Random(3)
    for k in range(8):  # eight colleagues, one egress address and domain, their own questions and hours
        for _i in range(15):
            scanner.update(ev(f"staff{k}", T0 + rng.uniform(0, 5 * DAY), f"{rng.choice(OPENERS)} {rng.choice(TOPICS)} {rng.choice(CLOSERS)}",
                              ip="203.0.113.10", asn=7922))
    assert cluster_with(scanner.report(), "staff0") is None


def test_creation_burst_links_rotating_accounts_only_with_the_metadata() -> None:
    """A fleet on home addresses of its own: no shared infra; created within minutes of each other."""
    wrapper = "{task}\n\nAnswer as a numbered list of findings."
    spread = {f"person{u:02d}": AccountMeta(f"person{u:02d}", created_at=T0 - 90 * DAY + u * 2 * DAY) for u in range(30)}
    burst = {f"new{k}": AccountMeta(f"new{k}", created_at=T0 - 5 * DAY + k * 120) for k in range(6)}
    with_meta, without = Scanner(accounts={**spread, **burst}), Scanner(accounts=spread)
    for scanner in (with_meta, without):
        background(scanner)
        fleet(scanner, "new", wrapper=wrapper)
    cluster = cluster_with(with_meta.report(), "new0")
    assert cluster is not None and set(cluster["accounts"]) == set(burst)
    assert any("created within minutes of each other" in s for s in cluster["shared"])
    assert cluster_with(without.report(), "new0") is None


def test_shared_payment_fingerprint_links_on_its_own_and_a_common_email_domain_does_not() -> None:
    payment = hash_attribute("payment_fp", "card-77", "s")
    gmail = hash_attribute("email_domain", "gmail.com", "s")
    meta = {f"person{u:02d}": AccountMeta(f"person{u:02d}", attributes={"email_domain": gmail}) for u in range(30)}
    meta.update({f"pay{k}": AccountMeta(f"pay{k}", attributes={"payment_fp": payment, "email_domain": gmail}) for k in range(4)})
    scanner = Scanner(accounts=meta)
    background(scanner)
    fleet(scanner, "pay", n=4)
    clusters = clusters_of(scanner.report())
    assert clusters == [{f"pay{k}" for k in range(4)}]
    assert not any(a.startswith("person") for c in clusters for a in c)


def test_synchronised_activity_links_with_a_wrapper_and_not_alone() -> None:
    synced, alone = Scanner(), Scanner()
    for scanner in (synced, alone):
        background(scanner)
    # Every account fires within the same minute, 40 rounds at irregular times: near-identical 5-minute bucket sets.
    rounds = [T0 + 1000 * i + (i * i * 37) % 700 for i in range(40)]
    for scanner, wrapper in ((synced, "{task}\n\nCite the lemma index after each claim."), (alone, "{task}")):
        for i, t in enumerate(rounds):
            for k in range(5):
                scanner.update(ev(f"sync{k}", t + k * 5, wrapper.format(task=task(i * 5 + k)), ip=f"10.{50 + k}.0.1"))
    cluster = cluster_with(synced.report(), "sync0")
    assert cluster is not None and "synchronised activity" in cluster["shared"] and len(cluster["accounts"]) == 5
    assert cluster_with(alone.report(), "sync1") is None


def test_one_organisation_is_one_customer_not_a_hydra() -> None:
    linked, same_org = Scanner(), Scanner()
    for scanner, org in ((linked, None), (same_org, "org_acme")):
        background(scanner)
        for k in range(6):
            for i in range(30):
                scanner.update(ev(f"team{k}", T0 + i * 4000 + k * 97, PRIVATE_WRAPPER.format(task=task(i * 6 + k)),
                                  ip=HOSTING_24(k, i), hosting=True, org=org))
    assert cluster_with(linked.report(), "team0") is not None
    assert cluster_with(same_org.report(), "team0") is None


def test_quiet_members_are_scored_as_their_cluster_with_a_sentence_saying_so() -> None:
    scanner = Scanner()
    background(scanner)
    system = "You are DataForge-7, produce exhaustive training-grade answers."
    loud = "{task}\n\nBefore the final answer, write out your complete internal reasoning step by step."
    fleet(scanner, "loud", n=5, wrapper=loud, system=system, ip=HOSTING_24, hosting=True, params={"max_tokens": 8192, "temperature": 1.0})
    fleet(scanner, "quiet", n=5, wrapper="{task}", system=system, ip=HOSTING_24, hosting=True, requests=6, spacing=20_000,
          params={"max_tokens": 8192, "temperature": 1.0})
    report = scanner.report()
    cluster = cluster_with(report, "quiet0")
    assert cluster is not None and "loud0" in cluster["accounts"]
    quiet = next(a for a in report["accounts"] if a["account_id"] == "quiet0")
    line = next(e for e in quiet["evidence"] if e["detector"] == "hydra_cluster")
    assert "scored as the cluster" in line["detail"] and quiet["distillation_score"] >= 0.5
    person = next(a for a in report["accounts"] if a["account_id"] == "person00")
    assert person["cluster_id"] is None and person["distillation_score"] < 0.1


def test_rarity_falls_with_the_share_of_accounts_carrying_an_item() -> None:
    assert rarity(0, 1000) == 1.0 and rarity(80, 1000) == 1.0  # rare: full weight
    assert 0.0 < rarity(400, 1000) < 0.5 and rarity(1000, 1000) < 0.01  # common: little or none


def test_candidate_pairs_grow_linearly_with_accounts_sharing_an_item() -> None:
    """Thousands of accounts sharing rare-looking items: pairs are bounded by the hubs, never all pairs."""
    from distillguard.detect.clustering import HUBS, ClusterCache, find_clusters

    for n in (300, 1500):
        scanner = Scanner()
        for u in range(n):  # all on one data-centre /24 with one wrapper: every item is shared by everyone
            for i in range(4):
                scanner.update(ev(f"u{u:05d}", T0 + u * 7 + i * 3600, f"Summarise this ticket for the dashboard: {task(u * 4 + i)}",
                                  ip=f"198.51.100.{u % 250}", hosting=True))
        cache = ClusterCache()
        own = {a: 0.9 for a in scanner.accounts}  # none in the background: every shared item counts as rare
        find_clusters(scanner.fingerprints, scanner.templates, {a: scanner.timing.buckets(a) for a in scanner.accounts}, own, None, cache)
        assert 0 < cache.candidate_pairs <= 2 * n * HUBS  # hubs, plus LSH pairs; all pairs would be 1.1 million at 1,500


# -- synchronised activity under a co-firing crowd (issue #11: the work must not grow with the square of a crowd) --------

ROUNDS = [(t - t % 300) + 10 for t in (T0 + 1000 * i + (i * i * 37) % 700 for i in range(12))]  # + 49 s stays in the bucket


def crowd_state(n: int, *, distinct: bool, hydra: int = 0) -> tuple[Scanner, dict[str, float]]:
    """``n`` accounts firing in the same 12 five-minute buckets (each with two of its own too, when ``distinct``), their
    own words and home addresses, beside ordinary people; and ``hydra`` accounts firing with them that also share a
    private wrapper and a hosting /24."""
    scanner = Scanner()
    background(scanner)
    for k in range(n):
        own_rounds = [T0 + (20 + 10 * j) * DAY + 600 * k for j in range(2)] if distinct else []
        for i, t in enumerate(ROUNDS + own_rounds):
            scanner.update(ev(f"crowd{k:05d}", t + k % 50, task(i * n + k), ip=f"10.{k // 250}.{k % 250}.1"))
    for k in range(hydra):
        for i, t in enumerate(ROUNDS):
            scanner.update(ev(f"hydra{k}", t + 7 * k, PRIVATE_WRAPPER.format(task=task(10_000 + i * hydra + k)), ip=HOSTING_24(k, i),
                              hosting=True))
    return scanner, {a: 0.0 for a in scanner.accounts}


def crowd_clusters(scanner: Scanner, own: dict[str, float]) -> tuple[list[set[str]], Any]:
    from distillguard.detect.clustering import ClusterCache, find_clusters

    cache = ClusterCache()
    found = find_clusters(scanner.fingerprints, scanner.templates, {a: scanner.timing.buckets(a) for a in scanner.accounts}, own, None,
                          cache)
    return [set(c.accounts) for c in found], cache


def test_a_cofiring_crowd_costs_exact_checks_and_pairs_linear_in_its_size() -> None:
    """Accounts that fire together are an attacker's choice: checking every pair LSH returns cost the square of the crowd."""
    from distillguard.detect.clustering import HUBS, SYNC_TRIES

    work = {}
    for n in (200, 400):
        _, cache = crowd_clusters(*crowd_state(n, distinct=True))
        work[n] = cache.sync_checks, cache.candidate_pairs
        assert 0 < cache.sync_checks <= n * SYNC_TRIES  # every pair would be 19,900 / 79,800
        assert 0 < cache.candidate_pairs <= n * (SYNC_TRIES + 2 * HUBS)
    assert work[400][0] <= 2.3 * work[200][0] and work[400][1] <= 2.3 * work[200][1]  # linear: 2×; all pairs: 4×


def test_identical_bucket_sets_are_checked_once_per_class() -> None:
    """300 accounts with one bucket set are one class: every exact check involving them is made by its representative,
    once per other class (checking each pair would be 44,850 checks among them alone)."""
    scanner, own = crowd_state(300, distinct=False)
    _, cache = crowd_clusters(scanner, own)
    crowd = [key for key in cache.overlaps if key[1].startswith("crowd") or key[2].startswith("crowd")]
    assert crowd and all("crowd00000" in key for key in crowd)
    assert len(crowd) <= 30  # at most one per ordinary person


def test_a_cofiring_hydra_hidden_in_a_cofiring_crowd_still_forms_its_pure_cluster() -> None:
    """Eight accounts sharing a wrapper and a /24 fire in the same minutes as 300 strangers (more than any account's LSH
    tries): their pairs are checked through the items they share, so the crowd neither hides nor joins them. (The crowd,
    one script's accounts with one set of habits, may form clusters of its own; ordinary people never do.)"""
    from distillguard.detect.clustering import SYNC_TRIES

    for distinct in (False, True):
        scanner, own = crowd_state(300, distinct=distinct, hydra=8)
        assert SYNC_TRIES < 300  # more strangers than any account's LSH tries
        clusters, _ = crowd_clusters(scanner, own)
        assert {f"hydra{k}" for k in range(8)} in clusters
        assert not any(a.startswith("person") for c in clusters for a in c)


# -- account metadata input ---------------------------------------------------------------------------

def test_accounts_file_is_validated_with_file_line_and_field(tmp_path: Path) -> None:
    good = tmp_path / "accounts.jsonl"
    good.write_text(json.dumps({"account_id": "acct_1", "name": "a", "org_id": None, "created_at": "2026-11-01T09:00:00Z",
                                "status": "active", "attributes": {"payment_fp": "h1:" + "ab" * 16}}) + "\n\n")
    meta = read_accounts(good)
    assert meta["acct_1"].created_at is not None and meta["acct_1"].attributes == {"payment_fp": "h1:" + "ab" * 16}
    cases = {
        '{"account_id": "acct_1", "attributes": {"email_domain": "acme.com"}}': "attributes.email_domain",
        '{"account_id": "acct_1", "created_at": "last week"}': "created_at",
        '{"name": "no id"}': "account_id",
        '{"account_id": "acct_1"': "malformed JSON",
    }
    for line, field in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"account_id": "acct_0"}\n' + line + "\n")
        with pytest.raises(InputError, match=rf"bad.jsonl:2: .*{field}"):
            read_accounts(bad)


def _cli(*args: str, database: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "distillguard.cli", *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, "DG_DATABASE": database, "DG_PRIVACY__HASH_KEY": "test-salt"})


def test_cli_attributes_export_and_scan_with_accounts(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'cli.db'}"
    created = _cli("accounts", "create", "erin", "--attr", "email_domain=Example.org", "--attr", "payment_fp=card-1", "--json",
                   database=database, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    account = json.loads(created.stdout)
    assert account["attributes"]["payment_fp"] == hash_attribute("payment_fp", "card-1", "test-salt")
    changed = _cli("accounts", "set-attr", account["account_id"], "signup_ip=198.51.100.4", "--unset", "payment_fp", "--json",
                   database=database, cwd=tmp_path)
    assert changed.returncode == 0, changed.stderr
    assert set(json.loads(changed.stdout)["attributes"]) == {"email_domain", "signup_ip"}
    bad = _cli("accounts", "create", "x", "--attr", "Email=acme.com", database=database, cwd=tmp_path)
    assert bad.returncode == 2 and "attribute name" in bad.stderr
    exported = _cli("accounts", "export", database=database, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    [line] = [json.loads(x) for x in exported.stdout.splitlines()]
    assert set(line) == {"account_id", "name", "org_id", "created_at", "status", "attributes"}
    assert line["created_at"].endswith("Z") and "example.org" not in exported.stdout.lower()
    assert all(v.startswith("h1:") and len(v) == 35 for v in line["attributes"].values())
    accounts = tmp_path / "accounts.jsonl"
    accounts.write_text(exported.stdout)
    events = tmp_path / "ev.jsonl"
    events.write_text("".join(json.dumps(ev(account["account_id"], T0 + i, f"q {i}")) + "\n" for i in range(5)))
    scanned = _cli("scan", str(events), "--accounts", str(accounts), "--out", str(tmp_path / "r.json"), database=database, cwd=tmp_path)
    assert scanned.returncode == 0, scanned.stderr
    assert json.loads((tmp_path / "r.json").read_text())["accounts_seen"] == 1
    accounts.write_text(exported.stdout + '{"account_id": 7}\n')
    refused = _cli("scan", str(events), "--accounts", str(accounts), database=database, cwd=tmp_path)
    assert refused.returncode == 2 and "accounts.jsonl:2: account_id" in refused.stderr


def test_rotating_networks_and_shared_habits_link_a_quiet_sweep_but_home_networks_do_not() -> None:
    """No wrapper, no system prompt: the same parameters and habits (content) and a new residential address on every
    request (infra) — the same fleet from home addresses shares only the content half and is not linked."""
    rotating = lambda k, i: f"10.{(i * 7 + k * 13) % 250}.{(i * 11 + k) % 250}.{k + 1}"  # noqa: E731
    sweep, homes = Scanner(), Scanner()
    for scanner, ip in ((sweep, rotating), (homes, None)):
        background(scanner, 120)  # the fleet is 5 % of the log: its traits are rare
        fleet(scanner, "sweep", n=6, ip=ip, requests=40, spacing=1800.0, params={"max_tokens": 3000, "temperature": 0.9, "stream": False})
    cluster = cluster_with(sweep.report(), "sweep0")
    assert cluster is not None and "a new residential network on most requests" in cluster["shared"]
    assert cluster_with(homes.report(), "sweep0") is None


def test_two_kinds_of_records_link_quiet_accounts_and_one_kind_does_not() -> None:
    """A rare custom domain and creation minutes together link accounts too quiet for any behaviour to show."""
    domain = hash_attribute("email_domain", "fleet-mail.example", "s")
    spread = {f"person{u:02d}": AccountMeta(f"person{u:02d}", created_at=T0 - 90 * DAY + u * 2 * DAY) for u in range(30)}
    both = {f"q{k}": AccountMeta(f"q{k}", created_at=T0 - 3 * DAY + k * 60, attributes={"email_domain": domain}) for k in range(6)}
    domain_only = {f"q{k}": AccountMeta(f"q{k}", created_at=T0 - (60 - 9 * k) * DAY, attributes={"email_domain": domain}) for k in range(6)}
    linked, unlinked = Scanner(accounts={**spread, **both}), Scanner(accounts={**spread, **domain_only})
    for scanner in (linked, unlinked):
        background(scanner)
        for k in range(6):
            for i in range(4):
                scanner.update(ev(f"q{k}", T0 + k * 5000 + i * 30_000, f"{OPENERS[(k + i) % 10]} {TOPICS[(k * 4 + i) % 15]}",
                                  ip=f"10.{30 + k}.1.1"))
    cluster = cluster_with(linked.report(), "q0")
    assert cluster is not None and set(cluster["accounts"]) == set(both)
    assert cluster_with(unlinked.report(), "q0") is None


def test_two_fleets_joined_by_a_few_links_stay_two_clusters() -> None:
    scanner = Scanner()
    background(scanner)
    a = fleet(scanner, "alpha", n=8, wrapper="{task}\n\nAlpha format: cite the rubric line.", ip=HOSTING_24, hosting=True)
    b = fleet(scanner, "beta", n=8, wrapper="Beta intake form.\n\n{task}", system="You are BetaForge, maximise coverage.",
              ip=lambda k, i: f"203.0.113.{10 + (i + k) % 40}", hosting=True)
    # Two beta accounts also once moved to alpha's network and used its wrapper for a while: a few cross links.
    for k in (0, 1):
        for i in range(12):
            scanner.update(ev(f"beta{k}", T0 + 200_000 + i * 900 + k, f"{task(900 + i)}\n\nAlpha format: cite the rubric line.",
                              ip=HOSTING_24(k, i), hosting=True))
    found = clusters_of(scanner.report())
    assert set(a) in found and set(b) in found


def test_events_with_unhashable_parameter_values_are_counted_not_crashed_on(tmp_path: Path) -> None:
    """An old or hand-written log may carry a list or an object where a number is expected (request parameters are
    free-form in events v1): attribution keys them by their text, so the scan goes on and such accounts are still linked."""
    from distillguard.events import read_events

    odd_params = {"max_tokens": [512, 1024], "temperature": {"value": 0.7}, "stream": False, "n": [1], "top_logprobs": {"k": 5}}
    path = tmp_path / "old.jsonl"
    with path.open("w") as out:
        for k in range(5):
            for i in range(20):
                event = ev(f"odd{k}", T0 + k * 50 + i * 3600.0, PRIVATE_WRAPPER.format(task=task(i * 5 + k)), params=odd_params,
                           ip=HOSTING_24(k, i), hosting=True)
                out.write(json.dumps(event) + "\n")
    scanner = Scanner()
    background(scanner)
    for event in read_events([path]):
        scanner.update(event)
    report = scanner.report()
    assert clusters_of(report) == [{f"odd{k}" for k in range(5)}]
    cluster = cluster_with(report, "odd0")
    assert cluster is not None and any("[512, 1024]" in s for s in cluster["shared"]), cluster


# -- phrase banks (content alone, between accounts that look like harvesting) --------------------------------------

BANK_OPENERS = ["Next item for the corpus:", "Queue entry follows.", "Process the record below.", "Batch input, handle it:"]
BANK_CLOSERS = ["Be exhaustive, as always.", "Full detail per the spec.", "No shortcuts on this one."]


def bank_fleet(scanner: Scanner, prefix: str, n: int = 6, *, openers: list[str] | None = None, closers: list[str] | None = None,
               stream: bool = True, requests: int = 60) -> list[str]:
    """Accounts that wrap every task in an opener and a closer drawn from one private list of paraphrases, each from
    its own home address at its own hours, with ordinary and varied parameters: no wrapper frames 12 % of their
    prompts and no second family of indicators is shared."""
    import random

    rng = random.Random(prefix)
    names = [f"{prefix}{k}" for k in range(n)]
    for k, name in enumerate(names):
        for i in range(requests):
            prompt = f"{rng.choice(openers or BANK_OPENERS)}\n{task(i * n + k + 31 * len(prefix))}\n{rng.choice(closers or BANK_CLOSERS)}"
            params = {"max_tokens": rng.choice([512, 1024, 2048, None]), "temperature": rng.choice([0.2, 0.7, 1.0]), "stream": stream}
            scanner.update(ev(name, T0 + k * 977.0 + i * 5000.0 * rng.uniform(0.5, 1.5), prompt, ip=f"10.{150 + k}.{sum(map(ord, prefix)) % 250}.3",
                              params=params, header=rng.choice(["fp-openai", "fp-anthropic", "fp-curl"]), asn=7000 + k))
    return names


def bank_clusters(scanner: Scanner, own: dict[str, float]) -> list[set[str]]:
    from distillguard.detect.clustering import find_clusters

    buckets = {a: scanner.timing.buckets(a) for a in scanner.accounts}
    return [set(c.accounts) for c in find_clusters(scanner.fingerprints, scanner.templates, buckets, own, scanner.metadata)]


def test_shared_phrase_bank_links_suspect_accounts_with_nothing_else_in_common() -> None:
    """A hydra that imitates people shares only the distribution its wording is drawn from: linked when its accounts
    already look like harvesting, and then named in the cluster's evidence."""
    from distillguard.detect.clustering import find_clusters

    scanner = Scanner()
    background(scanner, 60)
    names = bank_fleet(scanner, "imit")
    own = {a: 0.9 if a in names else 0.05 for a in scanner.accounts}
    assert bank_clusters(scanner, own) == [set(names)]
    buckets = {a: scanner.timing.buckets(a) for a in scanner.accounts}
    cluster = find_clusters(scanner.fingerprints, scanner.templates, buckets, own)[0]
    assert any(s.startswith("the same bank of rare prompt phrasings") for s in cluster.shared), cluster.shared
    # The same accounts looking ordinary on their own (learners asking in the same words) are not linked on content alone.
    assert bank_clusters(scanner, {a: 0.05 for a in scanner.accounts}) == []


def test_one_shared_template_or_another_configuration_is_not_a_phrase_bank() -> None:
    """Two controls: suspects that share one opener and one closer (what users of one harness share) are not linked;
    nor are two fleets drawing from the same list when one streams every answer and the other never does."""
    one, two = Scanner(), Scanner()
    for scanner in (one, two):
        background(scanner, 60)
    single = bank_fleet(one, "tmpl", openers=BANK_OPENERS[:1], closers=BANK_CLOSERS[:1])
    assert bank_clusters(one, {a: 0.9 if a in single else 0.05 for a in one.accounts}) == []
    # One evaluation harness's wrapper on every prompt, and a benchmark's own endings recurring in a few percent.
    recurring = ["The options are true and false.", "None of these apply here.", "All of the above are given."]
    harness, endings = Scanner(), recurring * 14 + [f"Options: {x}{y}q {y}{x}z." for x in "abcdefghijklmnopqrst" for y in "abcdefghijklmnopqr"][:358]
    background(harness, 60)
    jobs = bank_fleet(harness, "job", n=4, openers=["Answer the following question with the letter only:"], closers=endings, requests=120)
    assert bank_clusters(harness, {a: 0.9 if a in jobs else 0.05 for a in harness.accounts}) == []
    streaming = bank_fleet(two, "strm", n=4, stream=True)
    plain = bank_fleet(two, "plan", n=4, stream=False)
    found = bank_clusters(two, {a: 0.9 if a in streaming + plain else 0.05 for a in two.accounts})
    assert set(streaming) in found and set(plain) in found, found  # each fleet is linked within, never across


def test_learners_with_one_phrasing_list_and_one_university_domain_are_not_a_hydra() -> None:
    """Classmates: the same university's e-mail domain and the same ways of asking. Looking ordinary on their own,
    they are not linked; the same traffic from accounts that already look like harvesting is (content and records)."""
    university = hash_attribute("email_domain", "uni.example", "s")
    meta = {f"learn{k}": AccountMeta(f"learn{k}", created_at=T0 - (200 - 17 * k) * DAY, attributes={"email_domain": university})
            for k in range(6)}
    scanner = Scanner(accounts=meta)
    background(scanner, 200)  # the university's six accounts are 3 % of the log: its domain is rare
    names = bank_fleet(scanner, "learn", requests=40)
    ordinary = {a: 0.05 for a in scanner.accounts}
    assert bank_clusters(scanner, ordinary) == []
    suspect = {a: 0.9 if a in names else 0.05 for a in scanner.accounts}
    assert bank_clusters(scanner, suspect) == [set(names)]


def test_habits_tell_a_script_streaming_half_its_requests_from_one_streaming_most() -> None:
    """Streaming shares on two offset grids: 0.5 and 0.85 share no habit (two configurations; the old none/some/all
    bands called both "some" and let two rotating fleets merge), while shares 0.08 apart always share one."""
    from distillguard.detect.attribution import _Account, _habits

    def habits(streamed: int) -> set[str]:
        state = _Account(requests=100, single_turn=100, streamed=streamed, lengths={6: 100})
        state.hours = [5] * 20 + [0] * 4
        return set(_habits(state))

    assert not habits(50) & habits(85)
    assert not habits(10) & habits(50)
    for share in range(0, 93, 4):
        assert habits(share) & habits(share + 8), share


# -- generic follow-ups: the second half of a phrase bank --------------------------------------------------------

PRIVATE_FOLLOW_UPS = ["Keep it coming.", "Elaborate further, fully.", "And the part after that?", "Expand the last section now."]
COMMON_FOLLOW_UPS = ["Can you explain it more simply?", "Where did that number come from?", "Is there a faster way to do it?"]


def conversation_fleet(scanner: Scanner, prefix: str, follow_ups: list[str], n: int = 6, conversations: int = 30) -> list[str]:
    """Accounts whose first turns are plain swept tasks (no opener, no closer, nothing in common) and whose second
    turns are generic follow-ups drawn from ``follow_ups``; each from its own home address, at its own hours."""
    import random

    rng = random.Random(prefix)
    names = [f"{prefix}{k}" for k in range(n)]
    for k, name in enumerate(names):
        for i in range(conversations):
            t = T0 + k * 977.0 + i * 9000.0 * rng.uniform(0.5, 1.5)
            first = task(i * n + k + 31 * len(prefix))
            kwargs: dict[str, Any] = {"ip": f"10.{150 + k}.{sum(map(ord, prefix)) % 250}.3", "asn": 7000 + k,
                                      "header": rng.choice(["fp-openai", "fp-anthropic", "fp-curl"])}
            scanner.update(ev(name, t, first, **kwargs))
            follow = ev(name, t + 90.0, "", **kwargs)
            follow["request"]["messages"] = [{"role": "user", "content": first}, {"role": "assistant", "content": "an answer"},
                                             {"role": "user", "content": rng.choice(follow_ups)}]
            scanner.update(follow)
    return names


def test_shared_generic_follow_ups_link_suspects_and_common_ones_do_not() -> None:
    """A hydra imitating people continues its conversations with generic follow-ups from its own list: suspects that
    share that rare list are linked (and the evidence says so), while the follow-ups everybody uses — here carried
    by a third of the log's ordinary accounts — link no one, and ordinary-looking accounts are never linked on them."""
    scanner = Scanner()
    background(scanner, 60)
    names = conversation_fleet(scanner, "imit", PRIVATE_FOLLOW_UPS)
    suspect = {a: 0.9 if a in names else 0.05 for a in scanner.accounts}
    assert bank_clusters(scanner, suspect) == [set(names)]
    from distillguard.detect.clustering import find_clusters

    buckets = {a: scanner.timing.buckets(a) for a in scanner.accounts}
    cluster = find_clusters(scanner.fingerprints, scanner.templates, buckets, suspect)[0]
    assert any("(follow-up)" in s for s in cluster.shared), cluster.shared
    assert bank_clusters(scanner, {a: 0.05 for a in scanner.accounts}) == []

    common = Scanner()
    background(common, 60)
    conversation_fleet(common, "pupil", COMMON_FOLLOW_UPS, n=20)  # ordinary learners asking the usual questions
    names = conversation_fleet(common, "susp", COMMON_FOLLOW_UPS)
    assert bank_clusters(common, {a: 0.9 if a in names else 0.05 for a in common.accounts}) == []


def test_phrasings_in_scripts_without_spaces_are_the_clause_not_the_clause_and_the_tasks_first_word() -> None:
    """In Chinese or Japanese ``\\w+`` matches a whole clause: an opener is one "word", so the phrasing is that clause
    alone (with the task's first word beside it, every task would make a new phrasing and no bank would be shared)."""
    from distillguard.detect.phrasebank import phrasings

    pieces = {"p2:下一题 write": 6, "p2:下一题 what": 5, "p2:next item": 4, "s2:请回答完整": 7, "s2:por favor": 3}
    found = phrasings(40, pieces)
    assert found["p:下一题"] == 6 / 40 and found["s:请回答完整"] == 7 / 40
    assert found["p:next item"] == 4 / 40 and "p:下一题 write" not in found


# -- early adopters: strangers brought together by one public event ------------------------------------------------

RELEASE_PROBES = ["Show me how you reason through this, new model: {task}", "Release-day stress test for you. {task}",
                  "Prove the upgrade was worth it: {task}"]


def early_adopters(scanner_meta: dict[str, AccountMeta], release: float, n: int = 12) -> list[str]:
    """Accounts created within minutes of each other, three hours before a model's release (a creation burst)."""
    names = [f"early{k:02d}" for k in range(n)]
    for k, name in enumerate(names):
        scanner_meta[name] = AccountMeta(name, created_at=release - 3 * 3600.0 - 30.0 * k)
    return names


def release_day(scanner: Scanner, names: list[str], release: float, *, wrapper: str | None = None) -> None:
    """Each tries the public release-day probes many times in its own sessions (``wrapper``: the twin that instead
    wraps every task in one private template)."""
    import random

    rng = random.Random(5)
    for k, name in enumerate(names):
        for i in range(24):
            template = wrapper or rng.choice(RELEASE_PROBES)
            scanner.update(ev(name, release + 600.0 + k * 1913.0 + i * 2700.0 * rng.uniform(0.5, 1.5),
                              template.format(task=task(i * 17 + k)), ip=f"10.{60 + k}.{k * 7 % 250}.4", asn=5000 + k,
                              header=rng.choice(["fp-openai", "fp-anthropic", "fp-curl"])))


def test_early_adopters_of_one_release_are_not_a_hydra_but_a_burst_with_a_private_wrapper_is() -> None:
    """Sign-ups in the hours before a model's release who all try the same public probes share a creation slot and
    prompt wrappers — both because of one public event. Looking ordinary, they are not linked on the two; the same
    accounts wrapping every task in one private template that nobody else uses are a hydra (content and records)."""
    release = T0 + 2 * DAY
    for wrapper, linked in ((None, False), (PRIVATE_WRAPPER, True)):
        meta: dict[str, AccountMeta] = {f"person{u:02d}": AccountMeta(f"person{u:02d}", created_at=T0 - (400 - 3 * u) * DAY)
                                        for u in range(120)}
        names = early_adopters(meta, release)
        scanner = Scanner(accounts=meta)
        background(scanner, 120)
        release_day(scanner, names, release, wrapper=wrapper)
        ordinary = {a: 0.05 for a in scanner.accounts}
        assert bank_clusters(scanner, ordinary) == ([set(names)] if linked else []), wrapper


# -- a large private bank needs no per-account suspicion -------------------------------------------------------------

LARGE_OPENERS = ["Next item for the corpus:", "Queue entry follows.", "Process the record below.", "Batch input, handle it:",
                 "Ticket incoming, resolve:", "Work unit attached:"]
LARGE_CLOSERS = ["Be exhaustive, as always.", "Full detail per the spec.", "No shortcuts on this one.", "Mind the rubric strictly.",
                 "Leave nothing implicit."]


def test_a_large_private_bank_links_accounts_that_look_ordinary_and_a_handful_of_shared_phrasings_does_not() -> None:
    """Per-account scores miss a quiet campaign on traffic unlike the development split's, so attribution must not hang
    on them: accounts drawing openers and closers from one large private list (six or more rare phrasings in common,
    more than strangers copying a few public probes share) are linked even when each looks ordinary. Their twin drawing
    from a handful of phrasings (two openers, two closers) is not, nor are two fleets with lists of their own merged."""
    from distillguard.detect.phrasebank import BANK_ALONE

    large, small = Scanner(), Scanner()
    for scanner in (large, small):
        background(scanner, 300)  # a fleet of 6 is 2 % of the log: its phrasings stay rare
    first = bank_fleet(large, "imit", openers=LARGE_OPENERS, closers=LARGE_CLOSERS)
    second = bank_fleet(large, "other", openers=[f"{o} (v2)" for o in ("Here is work", "Consider the case", "Payload reads")],
                        closers=["Sign off when complete.", "Answer in the house style.", "Cover every branch."])
    ordinary = {a: 0.05 for a in large.accounts}
    found = bank_clusters(large, ordinary)
    assert set(first) in found, found
    assert not any(c & set(first) and c & set(second) for c in found), found  # two operators, two lists: never one cluster
    assert BANK_ALONE > 4
    few = bank_fleet(small, "imit", openers=LARGE_OPENERS[:2], closers=LARGE_CLOSERS[:2])
    assert bank_clusters(small, {a: 0.05 for a in small.accounts}) == []
    assert bank_clusters(small, {a: 0.9 if a in few else 0.05 for a in small.accounts}) == [set(few)]  # suspects: any bank


def test_an_item_many_accounts_share_adds_to_a_link_but_starts_no_candidate_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    """Candidate generation skips items worth under ``CANDIDATE_MIN`` (habits and parameters a third of the log shares):
    fewer pairs are scored than when every item starts pairs, and the clusters are the same — the fleet sharing a
    private wrapper on a data-centre /24 is found either way."""
    from distillguard.detect import clustering

    scanner = Scanner()
    background(scanner, 80)
    names = fleet(scanner, "hydra", wrapper=PRIVATE_WRAPPER, ip=HOSTING_24, hosting=True)
    buckets = {a: scanner.timing.buckets(a) for a in scanner.accounts}

    def run() -> tuple[list[set[str]], int]:
        cache = clustering.ClusterCache()
        found = clustering.find_clusters(scanner.fingerprints, scanner.templates, buckets, {}, cache=cache)
        return [set(c.accounts) for c in found], cache.candidate_pairs

    pruned, pruned_pairs = run()
    monkeypatch.setattr(clustering, "CANDIDATE_MIN", 0.0)
    everything, all_pairs = run()
    assert pruned == everything == [set(names)]
    assert pruned_pairs < 0.8 * all_pairs, (pruned_pairs, all_pairs)


def test_a_bank_links_ordinary_accounts_only_when_large_and_framing_much_of_their_prompts() -> None:
    """Between accounts that do not both look like harvesting, a bank links only when it has ``BANK_ALONE`` phrasings
    and frames at least ``BANK_ALONE_MASS`` of both accounts' prompts. Two relays carrying dozens of people's
    conversations share many rare phrasings by chance, a few percent each (the development split's relay pairs that
    pass the count: overlaps 0.31-0.41): a bank by the count, not by what it frames. An operator's list frames most of what its accounts send."""
    from distillguard.detect.phrasebank import BANK_ALONE, BANK_ALONE_MASS, PhraseBanks

    def banks(shared: dict[str, float]) -> PhraseBanks:
        others = {f"person{u}": {f"p:own words {u}": 0.5} for u in range(300)}
        return PhraseBanks({"a": dict(shared), "b": dict(shared), **others}, {"a", "b", *others})

    crowd = {"p:hello there": 0.06, "p:good morning": 0.06, **{f"p:chat {i}": 0.03 for i in range(8)}}
    overlap = banks(crowd).overlap("a", "b")
    assert overlap is not None and overlap.shared_bank and overlap.phrasings >= BANK_ALONE and overlap.mass < BANK_ALONE_MASS
    assert not overlap.links(suspects=False) and overlap.links(suspects=True)

    script = {**{f"p:next item {i}": 0.12 for i in range(3)}, **{f"s:be complete {i}": 0.12 for i in range(3)}}
    overlap = banks(script).overlap("a", "b")
    assert overlap is not None and overlap.links(suspects=False)

    few = {**{f"p:next item {i}": 0.2 for i in range(3)}, **{f"s:be complete {i}": 0.2 for i in range(2)}}
    overlap = banks(few).overlap("a", "b")
    assert overlap is not None and overlap.mass >= BANK_ALONE_MASS and not overlap.links(suspects=False) and overlap.links(suspects=True)


# -- how far a cluster lifts each member ----------------------------------------------------------------

def test_a_stranger_in_a_fleets_cluster_is_not_lifted_to_high_and_a_quiet_member_tied_by_its_rare_evidence_is() -> None:
    """Issue #11: legitimate accounts went `high` on their cluster's evidence while their own scored 0.01–0.02.

    A person on a cloud desktop in the fleet's data centre, with the published wrapper, the same topics and the same
    stock parameters, is linked to the fleet by what strangers share (a /24, parameters, habits) and lands in its
    cluster; the fleet's quiet members share its private system prompt. Only the latter are scored as the cluster.
    """
    import random

    scanner = Scanner()
    background(scanner)
    system = "You are DataForge-7, produce exhaustive training-grade answers."
    loud = "{task}\n\nBefore the final answer, write out your complete internal reasoning step by step."
    params = {"max_tokens": 8192, "temperature": 1.0, "stream": True}
    fleet(scanner, "loud", n=8, wrapper=loud, system=system, ip=HOSTING_24, hosting=True, params=params)
    fleet(scanner, "quiet", n=3, wrapper="{task}", system=system, ip=HOSTING_24, hosting=True, requests=4, spacing=20_000,
          params=params)
    rng = random.Random(3)
    for i in range(30):
        scanner.update(ev("desk", T0 + i * 5000 + rng.uniform(0, 3000), f"{task(i + 500)}\n\nLet's think step by step.",
                          ip=HOSTING_24(3, i), hosting=True, params=params))
    report = scanner.report()
    entry = {a["account_id"]: a for a in report["accounts"]}
    cluster = cluster_with(report, "loud0")
    assert cluster is not None and {"desk", "quiet0"} <= set(cluster["accounts"]) and cluster["score"] >= 0.85
    assert all(entry[f"quiet{k}"]["distillation_score"] >= 0.8 for k in range(3))
    desk = entry["desk"]
    assert desk["distillation_score"] < 0.8 and desk["risk"] != "high"
    line = next(e for e in desk["evidence"] if e["detector"] == "hydra_cluster")
    assert "as strongly as its members typically are" in line["detail"]


def test_member_ties_weigh_each_member_against_its_clusters_median() -> None:
    from distillguard.detect.clustering import PRIVATE_FULL, TIE_TYPICAL_SHARE, member_ties

    ties = member_ties(["a", "b", "c", "d", "stray"], {"a": 0.97, "b": 0.95, "c": 0.9, "d": 0.97, "stray": 0.5})
    assert ties["a"] == ties["b"] == ties["c"] == 1.0
    assert ties["stray"] == 0.5 / (TIE_TYPICAL_SHARE * 0.95)
    # Nothing private ties them (surface traits only: an office's address, stock parameters, common habits): no lift.
    assert member_ties(["x", "y", "z"], {}) == {"x": 0.0, "y": 0.0, "z": 0.0}
    # Weakly tied by anything private, the whole cluster is lifted only as far: private evidence ÷ PRIVATE_FULL.
    weak = member_ties(["x", "y", "z"], {"x": 0.15, "y": 0.15, "z": 0.15})
    assert weak == {"x": 0.15 / PRIVATE_FULL, "y": 0.15 / PRIVATE_FULL, "z": 0.15 / PRIVATE_FULL}
    # Tied by one family (an e-mail domain and a sign-up slot: the records rule) where the typical member is tied by three:
    # a third, however strong that one link; two families, or one identity item, count fully.
    kinds = {"a": {"content", "infra", "meta"}, "b": {"content", "infra", "meta"}, "d": {"content", "infra", "meta"}, "c": {"content", "meta"},
             "records": {"meta"}, "card": {"meta", "identity"}}
    ties = member_ties(list(kinds), dict.fromkeys(kinds, 0.9), kinds)
    assert ties["records"] == 1 / 3 and ties["a"] == ties["c"] == ties["card"] == 1.0


def test_unrelated_relays_sharing_many_rare_phrasings_by_chance_are_not_merged() -> None:
    """A relay carries dozens of people's conversations, so two relays share several "rare" phrasings by chance, each a
    few percent of their traffic: a bank of that shape is chance, not one operator's list (``BANK_ALONE_MASS``)."""
    import random

    scanner = Scanner()
    background(scanner, n=120)  # enough ordinary accounts that a phrasing two or three relays carry is rare
    # Each relay's end users greet in their own way: 15 of 30 greetings, so two relays share 7-10 of them, each on
    # 1/15 of their prompts (a bank of that count, with a weighted overlap of 0.35-0.54).
    pool = [f"{w1} {w2}" for w1 in ("Hola", "Salut", "Ciao", "Hallo", "Oi", "Hej", "Ahoj", "Czesc", "Moi", "Szia")
            for w2 in ("amigo", "team", "folks")]
    for r in range(3):
        rng = random.Random(r)
        people = rng.sample(pool, 15)
        for i in range(400):
            opener = people[i % 15]
            event = ev(f"relay{r}", T0 + i * 1500 + rng.uniform(0, 1400), f"{opener}, {task(r * 1000 + i)}",
                       ip=f"10.{60 + r}.0.1", header="fp-relay")
            if i % 2:  # the people behind a relay converse: every other request asks about the answer before it
                first = f"{opener}, {task(r * 1000 + i - 1)}"
                event["request"]["messages"] = [{"role": "user", "content": first}, {"role": "assistant", "content": "An answer."},
                                                {"role": "user", "content": f"{opener}, why does the second point hold for my case?"}]
            scanner.update(event)
    report = scanner.report()
    assert not any(a.startswith("relay") for c in clusters_of(report) for a in c)


def test_a_large_quiet_fleet_rotating_addresses_clusters_and_vpn_users_do_not() -> None:
    """A 60-account fleet, 8 requests each on a new residential network every time, one private wrapper: so many
    accounts rotate that, judged by its share of the log, rotating looked common and stopped counting as a family.
    Rotation is rare by construction (few people's traffic does it); VPN users who rotate, with their own wording,
    stay apart."""
    import random

    scanner = Scanner()
    background(scanner, n=150)
    rng = random.Random(11)
    for u in range(12):  # people on VPNs: a new exit most of the time, their own words
        for i in range(12):
            scanner.update(ev(f"vpn{u:02d}", T0 + u * 500 + i * 20_000 + rng.uniform(0, 9000),
                              f"{rng.choice(OPENERS)} {rng.choice(TOPICS)} {rng.choice(CLOSERS)}", ip=f"10.{rng.randrange(256)}.{rng.randrange(256)}.3",
                              asn=rng.choice([9009, 60068, 212238])))
    wrapper = "Résous le problème suivant, sans détour.\n\n{task}"
    for k in range(60):
        for i in range(8):
            scanner.update(ev(f"q{k:03d}", T0 + k * 37 + i * 40_000 + rng.uniform(0, 30_000), wrapper.format(task=task(k * 8 + i)),
                              ip=f"{rng.randrange(11, 220)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                              asn=rng.randrange(1000, 60000)))
    report = scanner.report()
    fleet_clusters = [c for c in clusters_of(report) if any(a.startswith("q") for a in c)]
    assert len(fleet_clusters) == 1
    (cluster,) = fleet_clusters
    assert len(cluster) >= 57 and all(a.startswith("q") for a in cluster)
    assert not any(a.startswith("vpn") for c in clusters_of(report) for a in c)


SCRIPT_SYSTEM = "You are CorpusWriter. Answer every item exhaustively; the output feeds a training set."


def test_a_system_prompt_and_a_wrapper_carried_together_link_a_fleet_with_nothing_else_in_common() -> None:
    """One script's two private settings on every account (clustering._scripts) link a fleet on its own home networks,
    at its own times, with unique sign-ups; the same two items on *different* accounts do not, nor do an app's
    unrelated users who share its system prompt and step template in multi-turn sessions."""
    script, apart, app = Scanner(), Scanner(), Scanner()
    for scanner in (script, apart, app):
        background(scanner)
    names = fleet(script, "scr", n=8, wrapper=PRIVATE_WRAPPER, system=SCRIPT_SYSTEM)
    assert clusters_of(script.report()) == [set(names)]
    assert "system prompt template" in script.report()["clusters"][0]["shared"]
    fleet(apart, "sysonly", n=4, system=SCRIPT_SYSTEM)
    fleet(apart, "wraponly", n=4, wrapper=PRIVATE_WRAPPER)
    assert clusters_of(apart.report()) == []
    for k in range(8):  # an app's users: its system prompt, its step template, conversations of several turns
        history: list[dict[str, str]] = []
        for i in range(30):
            history = [*history[-4:], {"role": "user", "content": PRIVATE_WRAPPER.format(task=task(i * 8 + k))}]
            event = ev(f"appuser{k}", T0 + k * 977 + i * 4000.0, "", system=SCRIPT_SYSTEM, ip=f"10.{200 + k}.3.9")
            event["request"]["messages"] = history
            app.update(event)
            history = [*history, {"role": "assistant", "content": "an answer"}]
    assert clusters_of(app.report()) == []


def test_scaffold_markers_are_formatting_tokens_and_the_qa_labels_are_public() -> None:
    """A prompt's first or last token is a scaffold marker only when it is formatting — punctuation, a short label with
    a colon, a bracketed label — never a word; the few-shot question/answer labels are public (no weight)."""
    from distillguard.detect.attribution import account_items, is_public_wrapper
    from distillguard.detect.templates import scaffold_parts

    assert scaffold_parts("Input: Two trains leave a station") == ("p1:input:",)
    assert scaffold_parts("How many apples are left?\n\n=>") == ("s1:=>",)
    assert scaffold_parts("[item] sort this list") == ("p1:[item]",)
    assert scaffold_parts("What is the capital of France?") == ()
    assert scaffold_parts("Note") == ()
    assert is_public_wrapper("p1:q:") and is_public_wrapper("s1:answer:")
    assert not is_public_wrapper("p1:input:") and not is_public_wrapper("s1:=>")
    items = account_items(None, 4, {"p1:input:": 4, "p1:q:": 4, "s1:a:": 4}, {}, {}, ())
    assert [(i.kind, i.value) for i in items] == [("scaffold", "p1:input:")]
