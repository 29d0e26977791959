"""Issue #11: a small campaign caught within a tenth of its requests, and the legitimate accounts nearest to it.

A 15-account campaign sending tens of requests per account in waves (all its accounts active in the same hours, idle
between), a new residential address on nearly every request, accounts created over weeks (no creation burst), a
private wrapper, no elicitation, ordinary parameters. Beside it: learners who ask for step-by-step explanations every
day, and a one-off evaluation job of 1,000 prompts with a published reasoning wrapper from a data centre.
"""

from __future__ import annotations

import random
from typing import Any

from distillguard.detect import Scanner
from distillguard.detect.rotation import NetworkRotation
from distillguard.detect.scanner import HIGH
from tests.test_detect_robust import DAY, HOUR, T0, TASKS, entry, event, residential_ip

WRAPPER = "Question du lot Atlas :\n\n{task}\n\nMerci, équipe Atlas."


def _campaign(accounts: int, per_account: int, rng: random.Random) -> list[dict[str, Any]]:
    """Waves of two hours every eight hours over four days; each request from a new residential address."""
    waves = [T0 + DAY + k * 8 * HOUR for k in range(12)]
    out = []
    for a in range(accounts):
        for i in range(per_account):
            start = waves[i * len(waves) // per_account]
            ip, asn = residential_ip(rng)
            task = TASKS[(a + i) % len(TASKS)].format(n=a * 1000 + i)
            out.append(event(f"camp{a}", start + rng.uniform(0, 2 * HOUR), [WRAPPER.format(task=task)], ip=ip, asn=asn,
                             answer_tokens=int(rng.lognormvariate(6.1, 0.4)), max_tokens=rng.choice((None, 1024, 2048))))
    return sorted(out, key=lambda e: str(e["ts"]))


def _learners(scanner: Scanner, n: int, rng: random.Random) -> None:
    for p in range(n):
        for day in range(7):
            for s in range(6):
                base = T0 + day * DAY + rng.uniform(8, 21) * HOUR
                q = f"Explain step by step how to solve exercise {day}-{s} of chapter {p}: integrate x^{s + 2} e^x."
                ip = f"81.{p}.3.4"
                scanner.update(event(f"learner{p}", base, [q], answer_tokens=600, ip=ip))
                scanner.update(event(f"learner{p}", base + 300, [q, "Why did you pick u = x^2 there and not e^x instead?"],
                                     answer_tokens=400, ip=ip))


def _eval_job(scanner: Scanner) -> None:
    for i in range(1000):
        task = TASKS[i % len(TASKS)].format(n=i)
        scanner.update(event("evaljob", T0 + 3 * DAY + i * 6.0, [f"{task}\nLet's think step by step."], answer_tokens=450,
                             ip="34.120.7.9", asn=396982, country="US", hosting=True, max_tokens=2048))


def test_small_campaign_in_waves_on_rotating_addresses_is_high_within_a_tenth_of_its_requests() -> None:
    rng = random.Random(7)
    scanner = Scanner()
    _learners(scanner, 20, rng)
    _eval_job(scanner)
    campaign = _campaign(15, 80, rng)
    members = {f"camp{a}" for a in range(15)}
    tenth = len(campaign) // 10
    first_high = None
    for sent, ev in enumerate(campaign, start=1):
        scanner.update(ev)
        if sent % 20 == 0 or sent == tenth:
            report = scanner.report()
            if max(a["distillation_score"] for a in report["accounts"] if a["account_id"] in members) >= HIGH:
                first_high = sent
                break
    assert first_high is not None and first_high <= tenth, (first_high, tenth)
    report = scanner.report()
    for account in [f"learner{p}" for p in range(20)] + ["evaljob"]:
        assert entry(report, account)["distillation_score"] < HIGH, entry(report, account)


def test_a_few_fresh_networks_a_day_speak_early_and_a_vpn_user_reusing_exits_does_not() -> None:
    """The sequential route of `network_rotation`: eight requests in a day, each from a new residential network, are
    rotation (the day-by-day curve alone gave 0.54); a VPN user switching among four exits all day, and a traveller on
    three networks, are not; a cluster's members' outcomes add up."""
    rng = random.Random(3)
    detector = NetworkRotation()
    for i in range(8):
        ip, asn = residential_ip(rng)
        detector.update({"account_id": "fresh", "_t": T0 + i * HOUR, "client": {"ip": ip, "geo": {"asn": asn}}})
    exits = ["185.1.1.9", "185.2.2.9", "185.3.3.9", "185.4.4.9"]
    for i in range(60):
        detector.update({"account_id": "vpn", "_t": T0 + i * 900, "client": {"ip": exits[(i // 3) % 4], "geo": {"asn": 9009}}})
        home = ["81.2.3.4", "92.1.1.9", "176.5.6.7"][i // 20]
        detector.update({"account_id": "traveller", "_t": T0 + i * 900, "client": {"ip": home, "geo": {"asn": 3320}}})
    fresh, vpn, traveller = (detector.evidence(a) for a in ("fresh", "vpn", "traveller"))
    assert fresh is not None and fresh.numbers["beyond_crowd_fresh"] == 5 and fresh.score > 0.7, fresh.detail
    assert vpn is not None and vpn.numbers["rotation_llr"] < 0 and vpn.score < 0.05, vpn.detail
    assert traveller is not None and traveller.numbers["beyond_crowd_fresh"] == 0 and traveller.score < 0.05, traveller.detail
    # Without an outcome the route adds nothing (its logistic gives 0.011 at LLR 0, × 4 inside the score, for everyone).
    for i in range(20):
        detector.update({"account_id": "home", "_t": T0 + i * HOUR, "client": {"ip": "81.2.3.4", "geo": {"asn": 3320}}})
    home = detector.evidence("home")
    assert home is not None and home.numbers["beyond_crowd"] == 0 and home.score < 0.005, home.detail
    # Five accounts with four requests a day each, every one from a new network: each alone is not rotation yet (one
    # outcome beyond its third network), together they are one pool rotating through twenty.
    for a in range(5):
        for i in range(4):
            ip, asn = residential_ip(rng)
            detector.update({"account_id": f"m{a}", "_t": T0 + i * HOUR, "client": {"ip": ip, "geo": {"asn": asn}}})
    members = [f"m{a}" for a in range(5)]
    assert all((e := detector.evidence(m)) is not None and e.score < 0.1 for m in members)
    pooled = detector.pooled(members)
    assert pooled is not None and pooled.numbers["beyond_crowd_fresh"] == 5 and pooled.score > 0.7, pooled.detail
    assert (together := detector.pooled(members + ["vpn"])) is not None and together.numbers["rotation_llr"] < 0, together.detail
