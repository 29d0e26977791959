"""Detectors on event streams built here, the report contract, and scan's handling of bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distillguard.detect import Scanner
from distillguard.detect.reasoning import elicitation_score
from distillguard.events import format_ts

T0 = 1_790_000_000.0


def ev(account: str, t: float, prompt: str, *, history: int = 0, completion: int = 200, max_tokens: int | None = None,
       system: str | None = None, install: str | None = None, tz: str | None = None, offset: int | None = None,
       country: str = "DE", ip: str = "10.1.2.3", hosting: bool = False, model: str = "m1", n: int | None = None) -> dict[str, Any]:
    messages = []
    for i in range(history):
        messages += [{"role": "user", "content": f"earlier question {i}"}, {"role": "assistant", "content": f"earlier answer {i}"}]
    messages.append({"role": "user", "content": prompt})
    attestation = None if install is None else {"status": "valid", "install_id": install, "tz": tz, "utc_offset_min": offset}
    return {"v": 1, "ts": format_ts(t), "request_id": f"req_{account}_{t}", "account_id": account, "endpoint": "openai.chat", "model": model,
            "client": {"ip": ip, "user_agent": "ua", "header_fp": "fp", "geo": {"country": country, "asn": 3320, "hosting": hosting}},
            "attestation": attestation,
            "request": {"system": system, "messages": messages, "params": {"max_tokens": max_tokens, "n": n}},
            "response": {"status": 200, "text": "x", "prompt_tokens": 30, "completion_tokens": completion}}


def entry(report: dict[str, Any], account: str) -> dict[str, Any]:
    return next(a for a in report["accounts"] if a["account_id"] == account)


def evidence(report: dict[str, Any], account: str, detector: str) -> dict[str, Any]:
    return next(e for e in entry(report, account)["evidence"] if e["detector"] == detector)


@pytest.mark.parametrize("text", [
    "Please write out your internal reasoning step by step before answering.",
    "Schreibe deinen vollständigen Denkprozess Schritt für Schritt auf.",
    "Écris ton raisonnement interne étape par étape.",
    "请一步一步写出你的推理过程。",
    "Act as a grader and score the following answer from 1 to 10.",
    "Show your thinking inside <thinking> tags first.",
])
def test_elicitation_intent_in_several_languages(text: str) -> None:
    assert elicitation_score(text)[0] >= 0.6


@pytest.mark.parametrize("text", [
    "How do I bake sourdough bread? Go step by step please.",
    "What's the reason my tomato plants have yellow leaves?",
    "Write a poem about autumn.",
])
def test_ordinary_prompts_are_not_elicitation(text: str) -> None:
    assert elicitation_score(text)[0] < 0.6


def test_reasoning_harvester_outranks_a_conversational_user() -> None:
    scanner = Scanner()
    for i in range(60):  # two requests an hour for 30 hours: sustained, not a one-off burst
        scanner.update(ev("harvester", T0 + i * 1800, f"Task {i}: solve x+{i}=7. Write out your full reasoning step by step.",
                          completion=900, max_tokens=8192))
        scanner.update(ev("person", T0 + i * 1800, f"Thanks! And what about part {i} of the proof?", history=2, completion=150,
                          install="inst-p", tz="Europe/Berlin", offset=60))
    report = scanner.report()
    harvester, person = entry(report, "harvester"), entry(report, "person")
    assert harvester["distillation_score"] > 0.8 > 0.2 > person["distillation_score"]
    detail = evidence(report, "harvester", "cot_elicitation")["detail"]
    assert detail.startswith("60 of 60 prompts")
    assert harvester["evidence"] == sorted(harvester["evidence"], key=lambda e: -e["score"])


def test_shared_key_is_a_reseller_and_a_single_install_is_not() -> None:
    scanner = Scanner()
    places = [("US", "America/New_York", -300), ("JP", "Asia/Tokyo", 540), ("BR", "America/Sao_Paulo", -180),
              ("IN", "Asia/Kolkata", 330), ("FR", "Europe/Paris", 60), ("AU", "Australia/Sydney", 660)]
    for i in range(120):
        country, tz, offset = places[i % len(places)]
        scanner.update(ev("shared", T0 + i * 120, f"conversation opener {i}", install=f"inst-{i % 6}", tz=tz, offset=offset,
                          country=country, ip=f"10.{i % 6}.1.1"))
        scanner.update(ev("solo", T0 + i * 120, "follow up", history=1, install="inst-solo", tz="Europe/Berlin", offset=60))
    report = scanner.report()
    assert entry(report, "shared")["reseller_score"] > 0.8
    assert entry(report, "solo")["reseller_score"] < 0.2
    numbers = evidence(report, "shared", "key_sharing")["numbers"]
    assert numbers["installs"] == 6 and numbers["countries"] == 6


def test_hydra_cluster_is_found_and_lifts_light_members() -> None:
    scanner = Scanner()
    system = "You are a meticulous expert tutor. Always answer completely."
    for i in range(40):
        for k in range(6):
            scanner.update(ev(f"head{k}", T0 + i * 900 + k, f"Question: item {i * 7 + k}\n\nProvide a complete solution.", system=system,
                              completion=700, max_tokens=4096, ip=f"10.9.9.{k + 1}", hosting=True))
    for u in range(5):
        for i in range(20):
            scanner.update(ev(f"user{u}", T0 + u * 5000 + i * 4000, f"my own question {u}-{i}", history=1, install=f"i{u}",
                              tz="Europe/Berlin", offset=60, ip=f"10.{u}.0.1"))
    report = scanner.report()
    assert len(report["clusters"]) == 1
    cluster = report["clusters"][0]
    assert sorted(cluster["accounts"]) == [f"head{k}" for k in range(6)]
    assert "system prompt template" in cluster["shared"]
    assert all(entry(report, f"head{k}")["cluster_id"] == cluster["cluster_id"] for k in range(6))
    assert all(entry(report, f"user{u}")["cluster_id"] is None for u in range(5))


def _hydra(scanner: Scanner, prefix: str, subnet: int, system: str, template: str) -> None:
    for i in range(40):
        for k in range(6):
            scanner.update(ev(f"{prefix}{k}", T0 + i * 900 + k * 7 + subnet * 300, template.format(n=i * 7 + k), system=system,
                              completion=700, max_tokens=4096, ip=f"10.{subnet}.9.{k + 1}", hosting=True))


def test_cluster_ids_do_not_change_when_another_cluster_appears() -> None:
    alone = Scanner()
    _hydra(alone, "zed", 9, "You are a meticulous expert tutor. Always answer completely.", "Question: item {n}\n\nProvide a complete solution.")
    [first] = alone.report()["clusters"]
    both = Scanner()
    _hydra(both, "aaa", 8, "Reply as a senior engineer; include every edge case.",  # ranks before the first one
           "Write a Python function for task number {n} and explain the complexity of the solution in detail.")
    _hydra(both, "zed", 9, "You are a meticulous expert tutor. Always answer completely.", "Question: item {n}\n\nProvide a complete solution.")
    ids = {tuple(sorted(c["accounts"])): c["cluster_id"] for c in both.report()["clusters"]}
    assert len(ids) == 2
    assert ids[tuple(sorted(first["accounts"]))] == first["cluster_id"]


def test_model_pivot_within_a_day_of_release() -> None:
    """A harvest moved to the new model (two requests an hour, 48 in its first day) is a pivot; an account moving a
    dozen requests is not yet (the share is counted with confidence scale 24: an early adopter trying the new model
    a dozen times is not a harvest's pivot), nor is one that keeps most of its work on the old model."""
    scanner = Scanner()
    release = T0 + 5 * 86400
    for i in range(400):
        t = T0 + i * 1800
        scanner.update(ev("pivoter", t, f"sweep {i}", model="m2" if t >= release else "m1"))
        if i % 2 == 0:
            scanner.update(ev("steady", t + 5, f"chat {i}", history=1, model="m2" if (t >= release and i % 10 == 0) else "m1"))
        if i % 4 == 0 and t < release + 86400:
            scanner.update(ev("trying", t + 9, f"hello {i}", history=1, model="m2" if t >= release else "m1"))
    report = scanner.report()
    assert evidence(report, "pivoter", "model_pivot")["score"] > 0.8
    assert evidence(report, "steady", "model_pivot")["score"] < 0.2
    assert evidence(report, "trying", "model_pivot")["score"] < 0.2  # 12 requests, all on the new model


def test_scores_do_not_depend_on_arrival_order() -> None:
    events = [ev(f"a{i % 4}", T0 + i * 37, f"prompt {i} step by step internal reasoning" if i % 3 else f"hello {i}") for i in range(400)]
    forward, backward = Scanner(), Scanner()
    for e in events:
        forward.update(e)
    for e in reversed(events):
        backward.update(e)
    f = {a["account_id"]: a["distillation_score"] for a in forward.report()["accounts"]}
    b = {a["account_id"]: a["distillation_score"] for a in backward.report()["accounts"]}
    assert f.keys() == b.keys()
    assert all(abs(f[k] - b[k]) < 0.05 for k in f)


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def _run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "distillguard.cli", *args], capture_output=True, input=stdin, timeout=120)


def test_scan_cli_reports_every_account_and_skips_bad_lines(tmp_path: Path) -> None:
    good = [json.dumps(ev(f"acct{i % 3}", T0 + i, f"p{i}")).encode() for i in range(30)]
    path = tmp_path / "mixed.jsonl"
    _write(path, good[:10] + [b"{broken", b'{"ts": 5}'] + good[10:])
    out = _run("scan", str(path), "--out", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["v"] == 1 and report["events"] == 30 and report["accounts_seen"] == 3
    assert {a["account_id"] for a in report["accounts"]} == {"acct0", "acct1", "acct2"}
    for account in report["accounts"]:
        assert 0 <= account["distillation_score"] <= 1 and account["risk"] in ("low", "medium", "high")
    stderr = out.stderr.decode()
    assert "mixed.jsonl:11" in stderr and "mixed.jsonl:12" in stderr and "2 malformed line(s) skipped" in stderr
    strict = _run("scan", str(path), "--strict")
    assert strict.returncode == 2 and b"mixed.jsonl:11" in strict.stderr


def test_scan_reads_stdin_and_reports_truncated_gzip(tmp_path: Path) -> None:
    lines = [json.dumps(ev(f"acct{i % 2}", T0 + i, f"p{i}")).encode() for i in range(3000)]
    piped = _run("scan", "-", stdin=b"\n".join(lines[:50]) + b"\n")
    assert piped.returncode == 0 and json.loads(piped.stdout)["events"] == 50
    data = gzip.compress(b"\n".join(lines) + b"\n")
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    out = _run("scan", str(cut))
    assert out.returncode == 0
    assert b"ends early" in out.stderr
    assert 0 < json.loads(out.stdout)["events"] < 3000
    missing = _run("scan", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and b"nope.jsonl" in missing.stderr


def test_simulated_distillers_outrank_benign_accounts(tmp_path: Path) -> None:
    from distillguard.sim.scenarios import load_scenario, simulate

    _, labels = simulate(load_scenario("small"), 21, tmp_path / "s.jsonl.gz")
    from distillguard.detect import scan_files

    report, _ = scan_files([str(tmp_path / "s.jsonl.gz")])
    scores = {a["account_id"]: a["distillation_score"] for a in report["accounts"]}
    distillers = [scores[a] for a, v in labels["accounts"].items() if v["label"] == "distiller"]
    benign = [scores[a] for a, v in labels["accounts"].items() if v["label"] in ("benign", "heavy_benign")]
    assert min(distillers) > max(benign)


def test_substring_prefilter_never_changes_which_concepts_a_prompt_touches() -> None:
    """The prefilter is a speed-up only: every phrasing bank and some near misses give the same concepts as the plain regexes."""
    import re

    from distillguard.detect import reasoning
    from distillguard.sim.phrasing import ELICIT, HELD_OUT

    plain = {name: re.compile(pattern, re.IGNORECASE) for name, pattern in reasoning._CONCEPTS.items()}
    texts = [str(x) for bank in (ELICIT, HELD_OUT) for v in bank.values() for x in (v if isinstance(v, list) else [v])]
    texts += ["Erklär mir das bitte ganz LAUT", "Show me every Step", "<Thinking>", "RATE THE ANSWER below", "CoT please",
              "Lay out the plan", "laying out", "spelling out the details", "no concept here at all", ""]
    assert len(texts) > 20
    for text in texts:
        expected = frozenset(name for name, pattern in plain.items() if pattern.search(text))
        assert reasoning.elicitation_score(text)[1] == expected, text


def test_frame_of_long_prompts_matches_tokenising_the_whole_prompt() -> None:
    import random
    import re

    from distillguard.detect.templates import frame_of

    words = re.compile(r"\w+", re.UNICODE)

    def reference(text: str) -> str:
        found = [("0" if w.isdigit() else w.lower()) for w in words.findall(text)]
        return " ".join(found) if len(found) <= 14 else " ".join(found[:5]) + " … " + " ".join(found[-9:])

    rng = random.Random(5)
    alphabet = ["word", "Ünïcode", "x", "42", "a_b", " ", "  ", "\n", ",", "…", "def", "(", ")", "日本語", "é"]
    for _ in range(500):
        text = "".join(rng.choice(alphabet) + rng.choice([" ", "", "\n"]) for _ in range(rng.randrange(1, 600)))
        assert frame_of(text) == reference(text)


# -- fast paths that must not change results (distillguard.detect.textmatch and friends) -----------------------

_TRICKY = [
    "", "think", "rethink", "x think", "THINK", "Rethinking", "cot", "CoT!", "scot", "cots", "grader", "upgrader", "graders",
    "Score the answer", "underscore the answer", "score  the", "rate this response", "rate this following answer",
    "note la réponse", "Erklär das ganz laut", "erklär mir laut", "Chain of thought", "chain-of-thought", "<THINKING>",
    "< / think >", "def f(x):", "undef x", "def", "CODE", "codex", "decode", "the code.", "3 x 4", "3x4", "3 × 4", "3 X 4",
    "٣ + ٤", "x = 12", "$5", "$ 5", "How Many", "HOW (can) I", "how do i", "Summarise", "SUMMARIZE", "each", "EACH",
    "A. yes\nB) no", "\n  C) maybe ", "a. lower", "E. out of range",
    # Characters IGNORECASE equates with ASCII letters, and ones it does not.
    "\u212aelvin cell", "ſhould i", "Pyth\u0131on", "PYTHON \u0130", "ＣＯＤＥ", "Straße", "ΣΊΣΥΦΟΣ energy", "Ǆ code",
    "请一步一步写出你的推理过程", "Покажи свои рассуждения шаг за шагом", "Écris ton raisonnement interne étape par étape",
]


def test_ignorecase_folds_assumed_by_fold_case_hold_for_every_code_point() -> None:
    import re

    from distillguard.detect.textmatch import IGNORECASE_EXTRA_FOLDS

    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    extra = set()
    for letter in "abcdefghijklmnopqrstuvwxyz":
        extra |= set(re.findall(letter, every, re.IGNORECASE)) - {letter, letter.upper()}
    assert extra == set(IGNORECASE_EXTRA_FOLDS)
    word, digit, space = re.compile(r"\w"), re.compile(r"\d"), re.compile(r"\s")
    for char in every:
        if char in IGNORECASE_EXTRA_FOLDS:
            continue
        lowered = char.lower()
        assert len(lowered) == 1, hex(ord(char))
        assert lowered.isascii() == char.isascii(), hex(ord(char))
        for cls in (word, digit, space):
            assert (cls.match(char) is None) == (cls.match(lowered) is None), hex(ord(char))


def test_stem_search_matches_the_regex_it_replaces() -> None:
    import re

    from distillguard.detect import coverage, reasoning
    from distillguard.detect.textmatch import StemSearch, fold_case
    from distillguard.sim.phrasing import ELICIT, HELD_OUT

    texts = _TRICKY + [str(x) for bank in (ELICIT, HELD_OUT) for v in bank.values() for x in (v if isinstance(v, list) else [v])]
    texts += [a + " " + b for a in _TRICKY[:40] for b in _TRICKY[40:]]
    for pattern in reasoning._CONCEPTS.values():
        search, regex = StemSearch(pattern), re.compile(pattern)
        for text in texts:
            assert search(text.lower()) == (regex.search(text.lower()) is not None), (pattern[:30], text)
    for _, pattern, flags in coverage._CUES:
        if not flags & re.IGNORECASE:
            continue
        assert pattern == pattern.lower()  # fold_case's condition
        search, regex = StemSearch(pattern), re.compile(pattern, flags)
        for text in texts:
            folded = fold_case(text)
            if folded is not None:
                assert search(folded) == (regex.search(text) is not None), (pattern[:30], text)
    for text in texts:
        expected = next((name for name, regex in coverage._CAPABILITIES if regex.search(text)), "other")
        assert coverage.capability(text) == expected, text


def test_frame_of_lowercases_words_as_one_at_a_time() -> None:
    from distillguard.detect.templates import frame_of

    words = ["ΟΔΥΣΣΕΥΣ", "ΣΑ", "Σ", "42", "²", "İstanbul", "x_Σ", "ǅ", "A"] * 3
    for n in range(1, len(words) + 1):
        text = " , ".join(words[:n])
        found = [("0" if w.isdigit() else w.lower()) for w in words[:n]]
        expected = " ".join(found) if len(found) <= 14 else " ".join(found[:5]) + " … " + " ".join(found[-9:])
        assert frame_of(text) == expected


def test_timestamp_fast_path_agrees_with_parse_ts() -> None:
    """parse_ts's fast path for the writers' own form gives exactly what the general ISO-8601 path gives."""
    import random

    from distillguard.events import _parse_iso_ts, parse_ts

    rng = random.Random(3)
    for _ in range(20_000):
        ts = format_ts(rng.uniform(-2e9, 5e9))
        assert parse_ts(ts) == _parse_iso_ts(ts)
    for ts in ("2026-10-04T23:27:23Z", "2026-10-04T23:27:23.591+02:00", "2026-10-04T23:27:23.591", "2026-02-29T00:00:00.000Z",
               "2026-10-04T24:00:00.000Z", "2026-10-04T23:59:60.000Z", "2026-1a-04T23:27:23.591Z", "２０２６-10-04T23:27:23.591Z"):
        try:
            expected: float | None = _parse_iso_ts(ts)
        except ValueError:
            expected = None
        try:
            got: float | None = parse_ts(ts)
        except ValueError:
            got = None
        assert got == expected, ts


def test_reports_with_the_cluster_cache_match_a_fresh_scan() -> None:
    """The online scorer reports repeatedly as events arrive; reused signatures and overlaps must not change anything."""
    events: list[dict[str, Any]] = []
    for prefix, subnet, system, template in (("zed", 9, "You are a meticulous expert tutor.", "Question: item {n}\n\nSolve it."),
                                             ("aaa", 8, "Reply as a senior engineer.", "Task {n}: implement it in Python.")):
        for i in range(40):
            for k in range(6):
                events.append(ev(f"{prefix}{k}", T0 + i * 900 + k * 7 + subnet * 300, template.format(n=i * 7 + k), system=system,
                                 completion=700, max_tokens=4096, ip=f"10.{subnet}.9.{k + 1}", hosting=True))
    events += [ev(f"user{u}", T0 + u * 5000 + i * 4000, f"my own question {u}-{i}", history=1) for u in range(5) for i in range(30)]
    events.sort(key=lambda e: e["ts"])
    online = Scanner()
    for i, event in enumerate(events):
        online.update(event)
        if i % 97 == 0:
            online.report()
    fresh = Scanner()
    for event in events:
        fresh.update(event)
    assert online.report() == fresh.report()
    assert online.report()["clusters"]


def test_a_report_without_reclustering_keeps_the_clusters_and_scores_the_accounts() -> None:
    online, fresh = Scanner(), Scanner()
    for scanner in (online, fresh):
        _hydra(scanner, "zed", 9, "You are a meticulous expert tutor.", "Question: item {n}\n\nSolve it.")
    first = online.report()
    assert first["clusters"] and online.cluster_cost_s > 0
    late = [ev("late", T0 + 50_000 + i * 60, f"Question: item {i}\n\nSolve it.", system="You are a meticulous expert tutor.")
            for i in range(5)]
    for event in late:
        online.update(event)
        fresh.update(event)
    between = online.report(recluster=False)
    assert online.cluster_cost_s == 0.0 and between["clusters"] == first["clusters"]  # the last clustering's
    assert entry(between, "late")["requests"] == 5  # the accounts' own scores are current
    assert online.report() == fresh.report()  # the next clustering catches up


def test_incremental_reports_match_a_fresh_scan_when_a_new_model_appears() -> None:
    """report() recomputes only updated accounts, except when a model's first appearance moves (model_pivot reads every
    account's traffic against the release): accounts that send nothing after that must still be rescored."""
    release = T0 + 12 * 3600
    # Events arrive out of time order, as from several replicas: the "old" accounts' traffic around the release
    # arrives before the first m2 event does, and they are silent from then on.
    events = [ev(f"old{k}", T0 + i * 1200 + k, f"question {i} about topic {k}", model="m1") for k in range(4) for i in range(48)]
    events += [ev("pivot", release - 3600 * 6 + i * 600, f"task {i}", model="m1") for i in range(30)]
    events += [ev("pivot", release + i * 300, f"task {i} on the new model", model="m2") for i in range(40)]
    events.append(ev("late", release - 1800, "a delayed request on the new model", model="m2"))  # m2's first sight moves earlier
    online = Scanner()
    for i, event in enumerate(events):
        online.update(event)
        if i % 23 == 0:
            online.report()
    fresh = Scanner()
    for event in events:
        fresh.update(event)
    final = online.report()
    assert final == fresh.report()
    assert evidence(final, "pivot", "model_pivot")["score"] > 0.5  # the case this guards is really there
    assert any(e["detector"] == "model_pivot" for e in entry(final, "old0")["evidence"])  # rescored without new traffic


# -- MinHash / LSH (distillguard.detect.minhash) ----------------------------------------------------------

def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(1, len(a | b))


def _planted_sets(seed: int, n_sets: int = 200, n_pairs: int = 40) -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """``n_sets`` random sets of unrelated strings, ``n_pairs`` of them rewritten as near-duplicates (Jaccard 0.5–0.9)."""
    import random

    rng = random.Random(seed)
    counter = iter(range(10**9))

    def fresh(k: int) -> list[str]:
        return [f"v{next(counter)}" for _ in range(k)]

    sets = {f"s{i:03d}": set(fresh(rng.randrange(20, 120))) for i in range(n_sets)}
    keys = sorted(sets)
    rng.shuffle(keys)
    planted = set()
    for i in range(n_pairs):
        a, b = keys[2 * i], keys[2 * i + 1]
        target = rng.uniform(0.5, 0.9)
        base = sets[a]
        k = max(1, round(len(base) * (1 - target) / (1 + target)))  # drop k, add k: J = (n - k) / (n + k)
        sets[b] = set(rng.sample(sorted(base), len(base) - k)) | set(fresh(k))
        planted.add((min(a, b), max(a, b)))
    return sets, planted


def test_minhash_arithmetic_is_exact() -> None:
    """The vectorised uint64 permutations equal ((a*h + b) mod (2**61 - 1)) & (2**32 - 1) computed with Python integers."""
    import hashlib

    from distillguard.detect.minhash import MAX_HASH, MERSENNE_61, MinHasher

    hasher = MinHasher(num_perm=64, seed=7)
    a = [int(lo) + (int(hi) << 32) for lo, hi in zip(hasher._a_lo, hasher._a_hi, strict=True)]
    b = [int(x) for x in hasher._b]
    assert all(1 <= x < MERSENNE_61 for x in a) and all(0 <= x < MERSENNE_61 for x in b)
    assert max(a) > 1 << 60  # large multipliers: the products would overflow 64 bits if computed naively
    values = [f"value {i}" for i in range(300)]
    hashes = [int.from_bytes(hashlib.blake2b(v.encode(), digest_size=4).digest(), "little") for v in values]
    expected = [min(((ai * h + bi) % MERSENNE_61) & MAX_HASH for h in hashes) for ai, bi in zip(a, b, strict=True)]
    assert hasher.signature(values).tolist() == expected
    assert hasher.signature([]).tolist() == [MAX_HASH] * 64
    assert hasher.signature([v.encode() for v in values]).tolist() == expected  # bytes and str hash alike


def test_minhash_signatures_estimate_jaccard() -> None:
    from distillguard.detect.minhash import MinHasher, estimate_jaccard

    sets, planted = _planted_sets(seed=1)
    for num_perm, max_error, mean_error in ((64, 0.25, 0.07), (256, 0.12, 0.035)):
        hasher = MinHasher(num_perm=num_perm)
        errors = []
        for a, b in sorted(planted):
            true = _jaccard(sets[a], sets[b])
            errors.append(abs(estimate_jaccard(hasher.signature(sets[a]), hasher.signature(sets[b])) - true))
        assert max(errors) <= max_error, (num_perm, max(errors))
        assert sum(errors) / len(errors) <= mean_error, (num_perm, sum(errors) / len(errors))
        # Unrelated sets share no values: their estimates stay near 0.
        unrelated = sorted(set(sets) - {k for pair in planted for k in pair})[:20]
        signatures = [hasher.signature(sets[k]) for k in unrelated]
        assert max(estimate_jaccard(x, y) for i, x in enumerate(signatures) for y in signatures[i + 1:]) <= 0.1


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("threshold", [0.3, 0.4])
def test_lsh_finds_every_pair_above_the_threshold(seed: int, threshold: float) -> None:
    """With clustering's weights, the index returns every pair at or above its threshold (and prunes the rest)."""
    from distillguard.detect.clustering import _LSH_WEIGHTS
    from distillguard.detect.minhash import LSHIndex, MinHasher

    sets, planted = _planted_sets(seed)
    keys = sorted(sets)
    above = {(a, b) for i, a in enumerate(keys) for b in keys[i + 1:] if _jaccard(sets[a], sets[b]) >= threshold}
    assert above == planted  # the background sets share nothing
    hasher = MinHasher(num_perm=64, seed=7)
    index: LSHIndex[str] = LSHIndex(threshold, num_perm=64, weights=_LSH_WEIGHTS)
    signatures = {k: hasher.signature(s) for k, s in sets.items()}
    for k, signature in signatures.items():
        index.insert(k, signature)
    assert len(index) == len(sets) and "s000" in index
    candidates = set()
    for k, signature in signatures.items():
        found = index.query(signature)
        assert k in found
        candidates |= {(k, other) for other in found if other > k}
    assert above <= candidates, sorted(above - candidates)
    assert len(candidates) < 2 * len(above) + 0.01 * len(keys) * (len(keys) - 1) / 2  # not all-pairs


def test_lsh_parameters_follow_datasketchs_criterion() -> None:
    """Equal weights pick the bands x rows datasketch picks; weighing misses more shortens the bands."""
    from distillguard.detect.minhash import LSHIndex, MinHasher, optimal_bands

    assert optimal_bands(0.3, 64) == (21, 3)
    assert optimal_bands(0.4, 64) == (16, 4)
    assert optimal_bands(0.5, 64) == (14, 4)
    assert optimal_bands(0.8, 64) == (5, 11)
    assert optimal_bands(0.9, 128) == (5, 25)  # datasketch's documented example
    bands, rows = optimal_bands(0.4, 64, 0.1, 0.9)
    assert rows < 4 and bands * rows <= 64
    index: LSHIndex[str] = LSHIndex(0.4, num_perm=64, weights=(0.1, 0.9))
    assert (index.bands, index.rows) == (bands, rows)
    with pytest.raises(ValueError, match="64 values"):
        index.insert("a", MinHasher(num_perm=32).signature(["x"]))
    index.insert("a", MinHasher(num_perm=64).signature(["x"]))
    with pytest.raises(ValueError, match="already"):
        index.insert("a", MinHasher(num_perm=64).signature(["y"]))


def test_minhash_is_deterministic_across_instances_and_processes() -> None:
    from distillguard.detect.minhash import LSHIndex, MinHasher

    values = [f"frame {i}" for i in range(50)]
    first, second = MinHasher(num_perm=64, seed=7), MinHasher(num_perm=64, seed=7)
    assert first.signature(values).tolist() == second.signature(reversed(values)).tolist()
    assert first.signature(values).tolist() != MinHasher(num_perm=64, seed=8).signature(values).tolist()
    code = ("from distillguard.detect.minhash import MinHasher\n"
            "print(MinHasher(num_perm=64, seed=7).signature([f'frame {i}' for i in range(50)]).tobytes().hex())\n")
    other_process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                   env={"PYTHONHASHSEED": "12345", "PATH": ""})
    assert other_process.returncode == 0, other_process.stderr
    assert other_process.stdout.strip() == first.signature(values).tobytes().hex()
    sets, _ = _planted_sets(seed=4)
    results = []
    for hasher in (first, second):
        index: LSHIndex[str] = LSHIndex(0.4, num_perm=64, weights=(0.1, 0.9))
        signatures = {k: hasher.signature(s) for k, s in sets.items()}
        for k, signature in signatures.items():
            index.insert(k, signature)
        results.append({k: sorted(index.query(signature)) for k, signature in signatures.items()})
    assert results[0] == results[1]


def test_lsh_nearest_ranks_the_most_similar_first_and_bounds_a_crowd() -> None:
    """500 keys whose sets all overlap fill every bucket: each answer stays within ``limit``, and the key most like the
    query still comes first although every bucket it is in is a crowd (sorted by the rest of the signature)."""
    from distillguard.detect.minhash import LSHIndex, MinHasher

    hasher = MinHasher(num_perm=64, seed=7)
    base = [f"bucket {i}" for i in range(40)]
    sets = {f"crowd{k:03d}": base[k % 40:] + base[:k % 40 // 2] + [f"c{k} {j}" for j in range(30)] for k in range(500)}
    sets.update({"near": base[:37] + ["own a", "own b", "own c"], "query": base})  # inserted last: ties cannot favour them
    for crowd in (1000, 24):
        index: LSHIndex[str] = LSHIndex(0.25, num_perm=64, weights=(0.02, 0.98))
        for key, values in sets.items():
            index.insert(key, hasher.signature(values))
        nearest = index.nearest(limit=10, crowd=crowd)
        assert set(nearest) == set(sets)
        assert all(len(found) <= 10 and key not in found for key, found in nearest.items())
        assert nearest["query"][0] == "near" and nearest["near"][0] == "query"


def test_scanner_never_imports_scipy_or_datasketch() -> None:
    code = ("import sys\n"
            "from distillguard.detect.scanner import Scanner\n"
            "Scanner().report()\n"
            "print(','.join(m for m in ('scipy', 'datasketch', 'sklearn') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""



def test_cluster_labels_rank_by_count_then_label_whatever_the_insertion_order() -> None:
    from distillguard.detect.clustering import rank_labels

    counts = {"synchronised timing": 3, "prompt template": 5, "paraphrased templates": 5, "org acme": 1}
    expected = ["paraphrased templates", "prompt template", "synchronised timing", "org acme"]
    assert rank_labels(counts) == expected
    assert rank_labels(dict(reversed(list(counts.items())))) == expected
