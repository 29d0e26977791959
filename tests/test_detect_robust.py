"""The detectors that make scores survive hard negatives: bursts, rotation, relays, consistency, intent wording.

Each detector gets a positive case and the nearest benign case it must not
confuse with it (an evaluation burst, a traveller, an office, a learner).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from distillguard.detect import Scanner
from distillguard.detect.consistency import Consistency
from distillguard.detect.coverage import CoverageSweep
from distillguard.detect.followups import builds_on_earlier
from distillguard.detect.intent import load_intent_model, prepare
from distillguard.detect.langid import guess_language
from distillguard.detect.reasoning import elicitation_score
from distillguard.detect.relay import RelaySharing
from distillguard.detect.rotation import NetworkRotation
from distillguard.detect.sustained import SustainedExtraction, persistence
from distillguard.events import format_ts

T0 = 1_790_000_000.0 - (1_790_000_000.0 % 86400)  # a UTC midnight
HOUR, DAY = 3600.0, 86400.0
TASKS = ["Solve for x: 3x + {n} = 22.", "Write a Python function that reverses a linked list of {n} nodes.",
         "Which of these is a noble gas?\nA. Oxygen\nB. Argon\nC. Nitrogen\nD. Carbon", "Write a short poem about the number {n}.",
         "Calculate the total cost of {n} items at $4 each.", "What energy does an electron have in orbital {n}?",
         "Summarize the plot of a story about {n} sailors.", "How many moles are in {n} grams of water?"]


def event(account: str, t: float, turns: list[str], *, answer_tokens: int = 300, ip: str = "81.2.3.4", asn: int = 3320,
          country: str = "DE", hosting: bool = False, install: str | None = None, tz: str | None = None, offset: int | None = None,
          system: str | None = None, max_tokens: int | None = None, signals: list[dict[str, str]] | None = None,
          proxy: bool | None = None) -> dict[str, Any]:
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        messages.append({"role": "user", "content": turn})
        if i < len(turns) - 1:
            messages.append({"role": "assistant", "content": f"An answer about {turn[:30]}"})
    attestation = None
    if install is not None:
        attestation = {"status": "valid", "install_id": install, "tz": tz, "utc_offset_min": offset, "proxy": proxy}
    out = {"v": 1, "ts": format_ts(t), "request_id": f"r{account}{t}", "account_id": account, "endpoint": "openai.chat", "model": "m1",
           "client": {"ip": ip, "user_agent": "ua", "header_fp": "fp", "geo": {"country": country, "asn": asn, "hosting": hosting}},
           "attestation": attestation,
           "request": {"system": system, "messages": messages, "params": {"max_tokens": max_tokens}},
           "response": {"status": 200, "text": "x", "prompt_tokens": 40, "completion_tokens": answer_tokens}}
    if signals is not None:
        out["signals"] = signals
    return out


def entry(report: dict[str, Any], account: str) -> dict[str, Any]:
    return next(a for a in report["accounts"] if a["account_id"] == account)


def numbers(report: dict[str, Any], account: str, detector: str) -> dict[str, Any]:
    return next(e for e in entry(report, account)["evidence"] if e["detector"] == detector).get("numbers", {})


def residential_ip(rng: random.Random) -> tuple[str, int]:
    return f"{rng.randrange(11, 200)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.choice([7922, 3320, 2856, 4713])


# -- what is harvested over time -------------------------------------------------------------------------------------


def test_persistence_is_low_for_a_burst_and_high_across_days() -> None:
    assert persistence(1.0, 1) < 0.05
    assert persistence(20.0, 1) <= 0.5  # one UTC day never counts as sustained
    assert persistence(30.0, 2) > 0.9
    detector = SustainedExtraction()
    for i in range(50):
        detector.update({"account_id": "a", "_t": T0 + i * 4 * HOUR, "response": {"completion_tokens": 2000}})
    found = detector.evidence("a")
    assert found is not None and found.numbers["active_days"] == 9 and found.score > 0.6


def _summary_app(scanner: Scanner, account: str, answer_tokens: int) -> None:
    """An API app: one fixed system prompt, templated single-turn requests round the clock for two weeks."""
    topics = ("printer", "login", "invoice", "refund", "VPN", "laptop", "e-mail", "badge", "payroll", "Wi-Fi", "calendar", "monitor")
    for i in range(14 * 96):
        text = f"Ticket #{i}: the {topics[i % len(topics)]} on floor {i % 9} stopped working after update {i % 13}. Summarise for the dashboard."
        scanner.update(event(account, T0 + i * 900, [text], answer_tokens=answer_tokens, system="You summarise support tickets into one line.",
                             max_tokens=64 if answer_tokens < 64 else 2048))


def test_sustained_volume_of_one_line_answers_is_not_extraction() -> None:
    # The fixed `hard` scenario's API apps: ~30-token answers, hundreds of thousands of tokens over weeks. The same
    # traffic with paragraph answers is what a training set is made of.
    scanner = Scanner()
    _summary_app(scanner, "dashboard", answer_tokens=27)
    _summary_app(scanner, "harvest", answer_tokens=450)
    report = scanner.report()
    app = numbers(report, "dashboard", "sustained_extraction")
    assert app["active_days"] >= 14 and app["answer_tokens"] > 30_000 and app["mean_answer_tokens"] == 27
    app_score = next(e for e in entry(report, "dashboard")["evidence"] if e["detector"] == "sustained_extraction")
    assert app_score["score"] < 0.1 and "little to distil" in app_score["detail"]
    assert next(e for e in entry(report, "harvest")["evidence"] if e["detector"] == "sustained_extraction")["score"] > 0.8
    assert entry(report, "dashboard")["risk"] != "high"
    assert entry(report, "dashboard")["distillation_score"] < entry(report, "harvest")["distillation_score"] - 0.1


def _eval_burst(scanner: Scanner, account: str, start: float, n: int) -> None:
    for i in range(n):
        task = TASKS[i % len(TASKS)].format(n=i)
        scanner.update(event(account, start + i * 2.0, [f"{task}\n\nLet's think step by step."], answer_tokens=350,
                             ip="159.89.10.5", asn=14061, country="US", hosting=True, max_tokens=4096))


def test_one_off_evaluation_burst_is_not_high_but_the_same_sustained_is() -> None:
    scanner = Scanner()
    _eval_burst(scanner, "eval-job", T0 + 10 * HOUR, 1200)
    for day in range(5):  # the same requests, 240 a day for five days
        _eval_burst(scanner, "harvester", T0 + day * DAY + 3 * HOUR, 240)
    report = scanner.report()
    assert entry(report, "eval-job")["risk"] != "high"
    assert entry(report, "eval-job")["distillation_score"] < 0.55
    assert entry(report, "harvester")["distillation_score"] > entry(report, "eval-job")["distillation_score"] + 0.15
    assert numbers(report, "harvester", "sustained_extraction")["active_days"] == 5
    why = next(e for e in entry(report, "eval-job")["evidence"] if e["detector"] == "sustained_extraction")
    assert "one-off batch so far, so the distillation score is scaled by 0.5" in why["detail"]
    assert why["numbers"]["burst"] > 0.95


def test_a_few_dozen_quick_requests_are_not_held_back_as_a_batch_job() -> None:
    scanner = Scanner()
    for i in range(40):  # explicit reasoning harvesting, in one minute
        scanner.update(event("quick", T0 + i * 1.5, [f"Problem {i}: compute {i} * 17. Write out your internal reasoning step by step."],
                             answer_tokens=600, max_tokens=8000))
    assert entry(scanner.report(), "quick")["distillation_score"] >= 0.8


# -- follow-ups ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["continue", "More.", "And then?", "Go on, please", "Tell me more", "Could you elaborate further?",
                                  "weiter bitte", "continúa", "продолжай", "继续", "続けて"])
def test_generic_follow_ups_do_not_build_on_earlier_answers(text: str) -> None:
    assert not builds_on_earlier(text)


@pytest.mark.parametrize("text", ["That fails on an empty list, can you fix it?", "Why did you use a loop there?",
                                  "Kannst du das mit einer Tabelle vergleichen?", "为什么这里用循环而不是递归？"])
def test_specific_follow_ups_build_on_earlier_answers(text: str) -> None:
    assert builds_on_earlier(text)


def test_sweep_dressed_as_conversations_with_generic_follow_ups_is_still_a_sweep() -> None:
    detector = CoverageSweep()
    for i in range(80):
        task = TASKS[i % len(TASKS)].format(n=i)
        turns = [task] if i % 3 == 0 else [task, "continue"] if i % 3 == 1 else [task, "continue", "more"]
        detector.update({"account_id": "dressed", "request": {"messages": [
            m for k, t in enumerate(turns) for m in ([{"role": "user", "content": t}] + ([{"role": "assistant", "content": "a"}] if k < len(turns) - 1 else []))]}})
    found = detector.evidence("dressed")
    assert found is not None
    assert found.numbers["generic_follow_ups"] > 40 and found.numbers["follow_ups"] == 0
    assert found.score > 0.8


CODE_TASKS = ["Complete this Python function:\n\ndef sum_digits_{n}(x):\n    \"\"\"Return the sum of the digits of x.\"\"\"",
              "Write a function to find the {n}-th smallest element of an unsorted array.",
              "Implement a function that checks whether a string of {n} brackets is balanced.",
              "Write a Python program that merges {n} sorted lists into one sorted list."]


def _code_request(detector: CoverageSweep, account: str, turns: list[str]) -> None:
    messages = [m for k, t in enumerate(turns)
                for m in ([{"role": "user", "content": t}] + ([{"role": "assistant", "content": "def f(): pass"}] if k < len(turns) - 1 else []))]
    detector.update({"account_id": account, "request": {"messages": messages}})


def test_a_sweep_of_one_capability_in_depth_is_a_sweep_and_a_heavy_coder_is_not() -> None:
    """Harvesting one domain is still harvesting: 300 single-turn coding tasks (and generic "continue"s) have no
    capability breadth at all, but their depth in one capability is a sweep's. A heavy coder sends as many coding
    requests, in conversations whose follow-ups ask something of their own."""
    detector = CoverageSweep()
    for n in range(300):
        task = CODE_TASKS[n % len(CODE_TASKS)].format(n=n)
        _code_request(detector, "code-sweep", [task] if n % 4 else [task, "continue"])
    for n in range(100):  # 400 requests: conversations of four turns that build on the answers
        task = CODE_TASKS[n % len(CODE_TASKS)].format(n=n)
        turns = [task, "That fails on an empty list, can you fix it?", "Now add type hints and a docstring for it.",
                 "Write three pytest tests for the edge cases you handled."]
        for k in range(1, 5):
            _code_request(detector, "heavy-coder", turns[:k])
    sweep, coder = detector.evidence("code-sweep"), detector.evidence("heavy-coder")
    assert sweep is not None and coder is not None
    assert sweep.numbers["breadth_bits"] == 0.0 and sweep.score > 0.9, sweep.detail
    assert "one domain in depth" in sweep.detail and "(code)" in sweep.detail
    assert coder.score < 0.05, coder.detail
    # A few dozen single-turn coding questions are not yet depth.
    small = CoverageSweep()
    for n in range(40):
        _code_request(small, "asker", [CODE_TASKS[n % len(CODE_TASKS)].format(n=n)])
    found = small.evidence("asker")
    assert found is not None and found.score < 0.2, found.detail


def test_a_single_account_sweeping_code_for_days_is_medium_and_a_code_api_app_is_low() -> None:
    """One account, 60 single-turn coding tasks a day for five days, long answers: no elicitation, no breadth — the
    depth of its sweep, its long answers and its sustained volume take it to medium (0.16 before depth counted);
    alone, without elicitation or a fleet, it is not high. An API app sends the same coding prompts at the same
    rate with short answers (a linter bot's one-line verdicts): nothing worth distilling, low (0.23)."""
    scanner = Scanner()
    for day in range(5):
        for k in range(60):
            n = day * 60 + k
            task = CODE_TASKS[n % len(CODE_TASKS)].format(n=n)
            t = T0 + day * DAY + 8 * HOUR + k * 600
            scanner.update(event("code-sweeper", t, [task], answer_tokens=600, ip="159.89.10.5", asn=14061, hosting=True))
            scanner.update(event("lint-app", t + 5, [task], answer_tokens=25, max_tokens=64, system="Reply PASS or FAIL."))
    report = scanner.report()
    assert entry(report, "code-sweeper")["risk"] == "medium", entry(report, "code-sweeper")
    assert numbers(report, "code-sweeper", "coverage_sweep")["depth_requests"] == 300
    assert entry(report, "lint-app")["risk"] == "low", entry(report, "lint-app")


# -- rotating addresses ----------------------------------------------------------------------------------------------


def test_new_network_per_request_is_rotation_and_a_traveller_is_not() -> None:
    rng = random.Random(1)
    detector = NetworkRotation()
    for i in range(60):
        ip, asn = residential_ip(rng)
        detector.update({"account_id": "rotating", "_t": T0 + i * 900, "client": {"ip": ip, "geo": {"asn": asn}}})
        # a traveller: home in the morning, a hotel from noon, a phone in the evening
        home = "81.2.3.4" if i < 20 else "92.1.1.9" if i < 40 else "176.5.6.7"
        detector.update({"account_id": "traveller", "_t": T0 + i * 900, "client": {"ip": home, "geo": {"asn": 3320}}})
    rotating, traveller = detector.evidence("rotating"), detector.evidence("traveller")
    assert rotating is not None and traveller is not None
    assert rotating.score > 0.9 and rotating.numbers["peak_networks_per_day"] >= 50
    assert traveller.score < 0.05


def test_one_install_hopping_networks_is_rotation() -> None:
    rng = random.Random(2)
    detector = NetworkRotation()
    for i in range(30):
        ip, asn = residential_ip(rng)
        detector.update({"account_id": "a", "_t": T0 + i * 600, "client": {"ip": ip, "geo": {"asn": asn}},
                         "attestation": {"status": "valid", "install_id": "inst-1"}})
    found = detector.evidence("a")
    assert found is not None and found.numbers["install_hop_share"] > 0.9 and found.score > 0.8


def test_quiet_sweep_on_rotating_residential_addresses_is_high() -> None:
    """Single-turn, no reasoning wording, ordinary parameters, a new residential IP per request, around the clock."""
    rng = random.Random(3)
    scanner = Scanner()
    for i in range(400):
        ip, asn = residential_ip(rng)
        scanner.update(event("quiet", T0 + i * 0.25 * HOUR + rng.random() * 600, [TASKS[i % len(TASKS)].format(n=i)], answer_tokens=450,
                             ip=ip, asn=asn, max_tokens=1024))
    assert entry(scanner.report(), "quiet")["risk"] == "high"


# -- consistency -----------------------------------------------------------------------------------------------------


def test_attested_timezone_far_from_the_network_is_inconsistent_and_one_vpn_session_is_not() -> None:
    detector = Consistency()
    for i in range(40):
        detector.update(event("liar", T0 + i * 600, ["q"], install="i1", tz="America/New_York", offset=-300, country="SG"))
        detector.update(event("vpn", T0 + i * 600, ["q"], install="i2", tz="Europe/Berlin", offset=60,
                              country="NL" if i < 3 else "DE"))
        detector.update(event("recorded", T0 + i * 600, ["q"], install="i3", tz="Europe/Berlin", offset=60,
                              signals=[{"name": "language_mismatch", "evidence": "attested locale de_DE, Accept-Language zh-CN"}]))
    liar, vpn, recorded = (detector.evidence(a) for a in ("liar", "vpn", "recorded"))
    assert liar is not None and vpn is not None and recorded is not None
    assert liar.score > 0.8 and liar.numbers["tz_country_mismatch"] == 40
    assert vpn.score < 0.1
    assert recorded.numbers["language_mismatch"] == 40  # the gateway's own record is used when the event has one


# -- resellers behind one relay --------------------------------------------------------------------------------------


def _conversations(scanner: Scanner, account: str, *, users: int, hours: range, openers: list[str], days: int = 3,
                   ip: str = "159.89.10.5", hosting: bool = True) -> None:
    for day in range(days):
        for hour in hours:
            start = T0 + day * DAY + hour * HOUR
            for turn in range(3):  # every user's conversation advances by a turn, interleaved with the others'
                for u in range(users):
                    opener = f"{openers[(u + hour) % len(openers)]} (case {day}-{hour}-{u})"
                    turns = [opener] + [f"follow-up question {k} about that specific point" for k in range(turn)]
                    scanner.update(event(account, start + turn * 600 + u * 20, turns, ip=ip, asn=14061, hosting=hosting))


OPENERS = ["How do I fix a leaking tap?", "Wie koche ich Spätzle für vier Personen?", "Comment écrire une lettre de motivation ?",
           "¿Cuál es la mejor manera de aprender a programar?", "日本で一番高い山はどこですか？", "Как выбрать хороший ноутбук?",
           "Qual é a capital da Austrália e por quê?", "What should I pack for a week in Iceland?"]


def test_relay_without_attestations_is_a_reseller_and_an_office_is_not() -> None:
    scanner = Scanner()
    _conversations(scanner, "relay", users=6, hours=range(24), openers=OPENERS)
    _conversations(scanner, "office", users=6, hours=range(8, 17), openers=[o for o in OPENERS if o.isascii()][:2] * 4,
                   ip="81.2.3.4", hosting=False)
    report = scanner.report()
    relay, office = entry(report, "relay"), entry(report, "office")
    assert relay["reseller_score"] > 0.8, relay["evidence"]
    assert office["reseller_score"] < 0.5, office["evidence"]
    assert numbers(report, "relay", "relay_sharing")["effective_languages"] > 4


def test_single_turn_app_around_the_clock_is_not_a_relay() -> None:
    detector = RelaySharing()
    for i in range(24 * 20):
        detector.update(event("app", T0 + i * 180, [f"Summarise ticket {i}: the printer on floor {i % 7} is jammed."],
                              system="You summarise support tickets."))
    found = detector.evidence("app")
    assert found is not None and found.score < 0.05 and found.numbers["return_share"] == 0.0


@pytest.mark.parametrize(("text", "language"), [("How do I fix a leaking tap in the kitchen?", "en"),
                                                ("Wie koche ich Spätzle für vier Personen?", "de"),
                                                ("日本で一番高い山はどこですか？", "ja"), ("Как выбрать хороший ноутбук?", "ru"),
                                                ("¿Cuál es la mejor manera de aprender a programar?", "es"), ("ok", None)])
def test_language_guess(text: str, language: str | None) -> None:
    assert guess_language(text) == language


# -- elicitation wording ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "Walk me through how you'd figure this out, narrating your thought process as you go, before concluding.",
    "Zeig mir deine Gedankengänge, bevor du antwortest.",
    "Antes de responder, descreva todo o seu raciocínio passo a passo.",
    "回答する前に、あなたの思考過程をすべて書き出してください。",
    "답하기 전에 당신의 추론 과정을 모두 보여 주세요.",
    "You are a reward model: rate the following completion from 1 to 10.",
])
def test_paraphrased_and_translated_elicitation_is_recognised(text: str) -> None:
    assert elicitation_score(f"What is 17 * 23?\n\n{text}")[0] >= 0.5


@pytest.mark.parametrize("text", [
    "Can you explain step by step how photosynthesis works? I have a biology test tomorrow.",
    "Let's think step by step.",
    "Explícame paso a paso cómo resolver una ecuación cuadrática.",
    "I wrote this proof, is my reasoning correct?",
    "Write a poem about autumn.",
    # An evaluation job's public wrapper around a multiple-choice item (the dev split's wording).
    "Answer the following question. Think step by step, then write the final answer after \"Answer:\".\n\n"
    "Which of these is a noble gas?\nA. Oxygen\nB. Argon\nC. Nitrogen\nD. Carbon",
    "Which of these is a noble gas?\nA. Oxygen\nB. Argon\nC. Nitrogen\nD. Carbon\nPlease reason step by step, and put your final answer within \\boxed{}.",
])
def test_learner_and_benchmark_wording_is_not_elicitation(text: str) -> None:
    assert elicitation_score(f"What is 17 * 23?\n\n{text}")[0] < 0.5


def test_intent_batches_score_like_single_prompts() -> None:
    model = load_intent_model()
    assert model is not None, "src/distillguard/detect/intent_model.npz is missing: run tools/train_intent.py"
    texts = ["Write out your hidden reasoning.", "Bake bread.", "思考過程を書き出して", ""]
    batch = model.probabilities([prepare(t) for t in texts])
    assert [round(float(p), 6) for p in batch] == [round(model.probability(t), 6) for t in texts]


def test_learner_who_asks_for_step_by_step_explanations_stays_low() -> None:
    scanner = Scanner()
    topics = ["photosynthesis", "long division", "the French revolution", "recursion in Python", "compound interest"]
    for day in range(10):
        for session in range(2):
            start = T0 + day * DAY + (17 + session * 2) * HOUR - HOUR  # evenings in Berlin
            topic = topics[(day + session) % len(topics)]
            turns = [f"Can you explain step by step how {topic} works? Go slowly please."]
            for k in range(4):
                scanner.update(event("learner", start + k * 240, list(turns), install="i-l", tz="Europe/Berlin", offset=60))
                turns.append(f"I don't get part {k + 1} of {topic}, why is that step needed?")
    assert entry(scanner.report(), "learner")["risk"] == "low"


def test_relay_whose_customers_do_not_overlap_is_still_a_reseller_and_a_busy_person_is_not() -> None:
    """One conversation at a time (no interleaving), but 30 customers' real conversations a day over 16 hours."""
    scanner = Scanner()
    for day in range(4):
        for u in range(30):
            start = T0 + day * DAY + 6 * HOUR + u * 0.5 * HOUR
            opener = f"{OPENERS[u % len(OPENERS)]} (customer {u}, day {day})"
            turns = [opener]
            for k in range(3):
                scanner.update(event("relay", start + k * 300, list(turns), ip="159.89.10.5", asn=14061, hosting=True))
                turns.append(f"Thanks, and how does point {k + 1} apply to my own situation?")
        for c in range(4):  # a busy person: four long conversations a day, evenings
            start = T0 + day * DAY + (18 + c) * HOUR
            turns = [f"Help me plan part {c} of my thesis on river ecology, day {day}."]
            for k in range(5):
                scanner.update(event("busy", start + k * 400, list(turns)))
                turns.append(f"Good, now expand section {k + 1} with two concrete sources.")
    report = scanner.report()
    assert entry(report, "relay")["reseller_score"] > 0.8, entry(report, "relay")["evidence"]
    assert numbers(report, "relay", "relay_sharing")["return_share"] == 0.0
    assert entry(report, "busy")["reseller_score"] < 0.2


@pytest.mark.parametrize("text", ["", "   ", "hi", "ok", "test"])
def test_requests_with_no_words_to_read_are_not_elicitation(text: str) -> None:
    """A completion or embedding has no user message; a "hi" has two letters: neither is scored on the model's bias."""
    assert elicitation_score(text)[0] < 0.5
    scanner = Scanner()
    for i in range(40):
        scanner.update(event("quiet", T0 + i * 2.0, [text]))
    assert numbers(scanner.report(), "quiet", "cot_elicitation")["eliciting"] == 0
