"""Harvesting seen in each account's own traffic: independent single-shot volume, and only unbuilt answers extracted.

Issue #11's small `sampled` campaigns: no elicitation, ordinary parameters, wrappers in a language the capability
cues do not read. What remains is the harvest itself — many independent prompts, answers nothing builds on,
sustained — and each case here has the legitimate account nearest to it: a person's single-shot questions, a
light app's one-line answers, a coding agent's tool loop, a heavy learner.
"""

from __future__ import annotations

import random

from distillguard.detect import Scanner
from distillguard.detect.clustering import Cluster
from distillguard.detect.coverage import CoverageSweep
from distillguard.detect.scanner import HIGH
from distillguard.detect.sustained import SustainedExtraction
from tests.test_detect_robust import DAY, HOUR, T0, entry, event

# Tasks no English capability cue recognises, in a French frame: coverage's breadth and depth read them as "other"; and
# nothing in them asks for reasoning (elicitation below 0.25 each, so cot_elicitation plays no part).
FRENCH = "Question du lot :\n\n{task}"
SYSTEM = "Assistant du projet Atlas-Culture."  # the campaign's own system prompt, shared by its accounts
QUESTIONS = ["Quelle est l'origine du mot numéro {n} dans ce texte ?", "Qui a gouverné la province {n} au Moyen Âge ?",
             "Pourquoi la rivière {n} déborde-t-elle au printemps ?", "Quel est le plat typique de la région {n} ?",
             "Combien d'habitants compte la ville {n} ?", "Quelle langue parle-t-on dans le village {n} ?"]


def _harvest(detector: CoverageSweep | SustainedExtraction | Scanner, account: str, n: int, days: float, *, answer_tokens: int = 500,
             start: float = T0) -> None:
    for i in range(n):
        text = FRENCH.format(task=QUESTIONS[i % len(QUESTIONS)].format(n=i))
        detector.update(event(account, start + i * days * DAY / n, [text], answer_tokens=answer_tokens))


def test_single_shot_harvest_in_a_language_the_cues_do_not_read_is_a_sweep() -> None:
    coverage = CoverageSweep()
    _harvest(coverage, "harvester", 75, 3)
    found = coverage.evidence("harvester")
    assert found is not None and found.numbers["breadth_bits"] == 0 and found.numbers["depth_requests"] == 0
    assert found.numbers["independent_requests"] == 75
    assert found.score > 0.6 and "independent requests" in found.detail, found.detail
    # The same count with one-line answers is a light app's traffic, not a harvest.
    _harvest(coverage, "app", 600, 7, answer_tokens=30)
    app = coverage.evidence("app")
    assert app is not None and app.score < 0.1, app.detail
    # A person's week: 28 single-shot questions with long answers between conversations that build on the answers.
    for day in range(7):
        for k in range(4):
            coverage.update(event("person", T0 + day * DAY + (9 + k) * HOUR, [QUESTIONS[k].format(n=day)], answer_tokens=500))
        opener = f"Je prépare un voyage en Bretagne, jour {day}, que visiter ?"
        coverage.update(event("person", T0 + day * DAY + 20 * HOUR, [opener], answer_tokens=400))
        coverage.update(event("person", T0 + day * DAY + 20.1 * HOUR, [opener, "Et si nous avons deux enfants de six ans, lesquels choisir ?"],
                              answer_tokens=400))
    person = coverage.evidence("person")
    assert person is not None and person.numbers["independent_requests"] == 35 and person.score < 0.1, person.detail


def test_answers_that_later_turns_build_on_are_not_extracted() -> None:
    sustained = SustainedExtraction()
    # A coding agent's tool loop: 400 requests over five days, each carrying the conversation so far and a step of its own.
    for i in range(400):
        turns = ["Fix the failing test in the payments module of our repository."]
        turns += [f"The tool returned: test_refund_{j} failed with a KeyError on line {40 + j}; patch the handler." for j in range(1 + i % 6)]
        sustained.update(event("agent", T0 + i * 5 * DAY / 400, turns, answer_tokens=250))
    agent = sustained.evidence("agent")
    assert agent is not None and agent.numbers["built_on"] > 300 and agent.score < 0.1, agent.detail
    assert "not counted as extracted" in agent.detail
    # The same volume as independent single-shot prompts is extraction.
    _harvest(sustained, "harvester", 400, 5, answer_tokens=250)
    harvester = sustained.evidence("harvester")
    assert harvester is not None and harvester.numbers["built_on"] == 0 and harvester.score > 0.5, harvester.detail


def _people(scanner: Scanner, n: int, rng: random.Random) -> None:
    for p in range(n):
        for day in range(7):
            base = T0 + day * DAY + rng.uniform(8, 20) * HOUR
            opener = f"My team {p} is planning day {day} of an offsite; what activities work for twelve people?"
            scanner.update(event(f"person{p}", base, [opener], answer_tokens=300, ip=f"81.{p}.3.4"))
            scanner.update(event(f"person{p}", base + 400, [opener, "Half of them cannot walk far, which of those still work?"],
                                 answer_tokens=300, ip=f"81.{p}.3.4"))


def test_heavy_learner_and_coding_agent_stay_below_high_and_a_quiet_harvest_is_caught() -> None:
    scanner = Scanner()
    rng = random.Random(11)
    _people(scanner, 30, rng)
    # A heavy learner: 60 requests a day for a week, conversations that build on each answer, step-by-step asks.
    for day in range(7):
        for s in range(20):
            base = T0 + day * DAY + (8 + s * 0.7) * HOUR
            q = f"Explain step by step how to integrate x^{s + 2} times e^x, exercise {day}-{s}."
            scanner.update(event("learner", base, [q], answer_tokens=600))
            scanner.update(event("learner", base + 300, [q, "Why did you choose u = x there and not e^x?"], answer_tokens=500))
            scanner.update(event("learner", base + 600, [q, "Why did you choose u = x there and not e^x?",
                                                         "Can you check my attempt: I got x e^x minus e^x, is the sign right?"],
                                 answer_tokens=400))
    # A coding agent: 80 steps a day for a week, each building on the last.
    for day in range(7):
        for i in range(80):
            turns = [f"Refactor the billing service, ticket {day}."]
            turns += [f"The tool returned: step {j} compiled with warning W{j}; continue with the next file please." for j in range(1 + i % 8)]
            scanner.update(event("agent", T0 + day * DAY + (8 + i * 0.12) * HOUR, turns, answer_tokens=400))
    # A harvester in a French frame, no elicitation, ordinary parameters: 60 a day for three days, round the clock.
    _harvest(scanner, "harvester", 180, 3, answer_tokens=550, start=T0 + 2 * DAY)
    report = scanner.report()
    learner, agent, harvester = (entry(report, a) for a in ("learner", "agent", "harvester"))
    assert learner["distillation_score"] < 0.5, learner
    assert agent["distillation_score"] < 0.5, agent
    assert harvester["distillation_score"] > max(learner["distillation_score"], agent["distillation_score"]) + 0.3, harvester
    assert harvester["distillation_score"] >= HIGH, harvester
    assert next(e for e in harvester["evidence"] if e["detector"] == "cot_elicitation")["score"] < 0.05
    assert all(a["distillation_score"] < HIGH for a in report["accounts"] if a["account_id"] != "harvester")


def _campaign_events(accounts: int, per_day: int, days: int, rng: random.Random) -> list[dict[str, object]]:
    """A small campaign: private French frame, no elicitation, ordinary parameters, one data-centre /24, round the clock."""
    out = []
    n = 0
    for k in range(accounts):
        for _ in range(per_day * days):
            n += 1
            t = T0 + DAY + rng.uniform(0, days * DAY)
            text = FRENCH.format(task=QUESTIONS[n % len(QUESTIONS)].format(n=n))
            out.append(event(f"camp{k}", t, [text], answer_tokens=int(rng.lognormvariate(6.1, 0.4)), ip=f"198.51.100.{10 + (n % 40)}",
                             asn=16509, country="US", hosting=True, max_tokens=rng.choice((None, 1024, 2048)), system=SYSTEM))
    return out


def test_ten_account_campaign_without_elicitation_is_high_within_a_tenth_of_its_requests() -> None:
    """Issue #11: every campaign caught within 10 % of its requests. 10 accounts × 40 a day for 5 days, among people.

    At a tenth of its requests (half a day) each account has sent 20 and is nothing alone; the ten together, tied as a
    fleet, have sent 200 independent prompts with long answers: independent volume is what lets them be scored as a
    sweep in a language the capability cues do not read (before it, `coverage_sweep` pooled to 0.002 and the fleet to
    0.46). How tightly attribution ties them is attribution's (here coordination 0.64 end to end, gating the pooled
    score at 0.86): as a fleet tied at 0.9 they are `high` at 10 %, end to end they are before 25 %.
    """
    rng = random.Random(5)
    scanner = Scanner()
    _people(scanner, 40, rng)
    campaign = sorted(_campaign_events(10, 40, 5, rng), key=lambda e: str(e["ts"]))
    members = [f"camp{k}" for k in range(10)]
    people = [f"person{p}" for p in range(40)]
    tenth = len(campaign) // 10
    for ev in campaign[:tenth]:
        scanner.update(ev)
    scanner.report()
    fleet = scanner._pooled(Cluster("cl_fleet", members, 0.3, ["a private wrapper"], 0.9, ["content", "network"]))
    assert fleet is not None and fleet.score >= HIGH, fleet.detail
    assert fleet.numbers["pooled_coverage_sweep"] > 0.9 and fleet.numbers["pooled_cot_elicitation"] < 0.05
    crowd = scanner._pooled(Cluster("cl_people", people, 0.3, ["an office"], 0.9, ["content", "network"]))
    assert crowd is not None and crowd.score < 0.5, crowd.detail
    first_high = None
    for sent, ev in enumerate(campaign[tenth:], start=tenth + 1):
        scanner.update(ev)
        if sent % 50 == 0:
            report = scanner.report()
            if max(a["distillation_score"] for a in report["accounts"] if a["account_id"] in members) >= HIGH:
                first_high = sent
                break
    assert first_high is not None and first_high <= 0.25 * len(campaign), first_high
    assert all(a["distillation_score"] < HIGH for a in report["accounts"] if a["account_id"] in people)
