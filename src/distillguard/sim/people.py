"""Legitimate populations that look like attacks from some angle: the hard negatives of the `robust` family.

Each is a labelled sub-population (``population`` in the labels), so `eval`
can say which kind of legitimate user a detector flags:

* ``Person`` — one human with one account, in one of several styles: ordinary
  chat, coder, **learner** (homework, often asking for step-by-step
  explanations, multi-turn, daytime), **early adopter** (a burst of probing on
  a new model's release day), on a **home** network, a **VPN** (exit changes
  daily, country disagrees with the attested timezone), a **cloud desktop**
  (a data-centre address), or in an **office** (many people, one egress IP,
  one company domain and org), with daytime, work-hours or **night-owl** hours.
* ``EvalJob`` — a one-off benchmark run: 500–1,500 single-turn prompts in a
  fixed public chain-of-thought wrapper, one burst from a data centre within a
  day, never again (some on a new model's release day).
* ``CodingAgent`` — a developer driving a coding agent: long sessions of
  tool-using steps seconds apart (dozens to a few hundred requests a workday), a stock
  agent system prompt that many unrelated users share, `max_tokens` pinned high.
* ``LightApp`` — a small product on the API: a fixed system prompt around
  short single-turn requests at a steady rate from its server.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from distillguard.sim.populations import DAY, Actor, Client, TimedEvent, excerpt, poisson
from distillguard.sim.splits import Wording

__all__ = ["CodingAgent", "EvalJob", "LightApp", "Person", "benign_params", "local_start"]

HOMEWORK_POOLS = ("gsm8k", "mmlu", "seed_tasks", "gsm8k")
# Share of learners' homework questions wrapped in a public chain-of-thought wrapper ("… Let's think step by step.").
PUBLIC_WRAPPER_SHARE = 0.1


def benign_params(rng: random.Random, *, stream: bool = True) -> dict[str, object]:
    """Request parameters as people's clients send them (the distribution campaigns may copy)."""
    return {"temperature": rng.choice((None, None, 0.7, 1.0, 0.5)), "max_tokens": rng.choice((None, None, 1024, 2048, 4096)),
            "n": None, "logprobs": False, "top_logprobs": None, "stream": stream, "tools": 0}


def local_start(rng: random.Random, day_start: float, offset_min: int, hours: str) -> float | None:
    """A session start in local time for an activity pattern; None when the person skips that day."""
    local_day = int((day_start + offset_min * 60) // DAY)
    weekend = local_day % 7 in (2, 3)  # 1970-01-01 was a Thursday
    if hours == "work":
        if weekend and rng.random() < 0.9:
            return None
        hour = rng.uniform(8.5, 18.0)
    elif hours == "night":
        hour = (22 + rng.expovariate(1 / 2.2)) % 24 if rng.random() < 0.85 else rng.uniform(12, 22)
    else:
        hour = rng.choice((8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 19, 20, 20, 21, 21, 22)) + rng.random()
    return day_start + hour * 3600 - offset_min * 60


@dataclass
class Person(Actor):
    """One human with one account; ``population`` names the sub-population in the labels."""

    wording: Wording | None = None
    client: Client | None = None
    first_day: float = 0.0
    sessions_per_day: float = 1.0
    style: str = "chat"  # chat | coder | learner | early_adopter
    hours: str = "day"  # day | work | night
    network: str = "home"  # home | vpn | cloud_desktop | office
    vpn_exits: tuple[tuple[int, str], ...] = ()
    language: str = "en"
    models: tuple[str, ...] = ("demo-1",)
    org: str | None = None
    population: str = "person"
    system: str | None = None  # a stock public system prompt the person's chat client sends, or none

    def events(self) -> Iterator[TimedEvent]:
        rng, pools, wording, client = self.rng, self.pools, self.wording, self.client
        assert pools is not None and wording is not None and client is not None
        from distillguard.sim.world import Network

        account, key = self.accounts[0], f"key_{rng.getrandbits(64):016x}"
        stream = rng.random() < 0.85
        for day in range(self.days):
            if day < int(self.first_day):
                continue
            day_start = self.start + day * DAY
            if self.network == "vpn" and self.vpn_exits:
                asn, country = rng.choice(self.vpn_exits)
                client.ip, client.asn, client.country = Network.ip_in(asn, rng, rng.randrange(4)), asn, country
            count = poisson(rng, self.sessions_per_day)
            release = self.release_ts
            if self.style == "early_adopter" and release is not None and day_start <= release < day_start + DAY:
                count += rng.randint(4, 12)
            starts = []
            for _ in range(count):
                ts = local_start(rng, day_start, client.utc_offset_min, self.hours)
                if ts is not None and ts >= self.start + self.first_day * DAY:
                    starts.append(ts)
            for ts in sorted(starts):
                yield from self._session(ts, account, key, stream)

    def _session(self, ts: float, account: str, key: str, stream: bool) -> Iterator[TimedEvent]:
        rng, pools, wording, client = self.rng, self.pools, self.wording, self.client
        assert pools is not None and wording is not None and client is not None
        reasoning = False
        model = self._model(ts, self.models, rng, 0.3)
        if self.style == "coder" and rng.random() < 0.7:
            turns = [rng.choice(pools.coding)] + rng.sample(wording.coding_followups, rng.randrange(1, 4))
        elif self.style == "learner" and rng.random() < 0.65:
            task = pools.sweep_task(rng, rng.choice(HOMEWORK_POOLS))
            ask = rng.choice(wording.in_language(wording.learner_asks, self.language))
            if rng.random() < PUBLIC_WRAPPER_SHARE:  # the trick everyone has read about
                ask = rng.choice(wording.public_cot_wrappers)
            turns = [ask.format(task=task)] + rng.sample(wording.learner_followups, min(len(wording.learner_followups), rng.choice((0, 1, 1, 2, 3))))
            reasoning = ask.strip() != "{task}"
        elif self.style == "early_adopter" and self.release_ts is not None and ts >= self.release_ts:
            model = self.models[-1] if rng.random() < 0.85 else model
            if ts < self.release_ts + 1.5 * DAY or rng.random() < 0.3:
                probe = rng.choice(wording.early_adopter_probes)
                turns = [probe.format(task=pools.sweep_task(rng))] + (pools.conversation(rng)[1:2] if rng.random() < 0.4 else [])
                reasoning = "{task}" in probe and probe.strip() != "{task}"
            else:
                turns = pools.conversation(rng)
        else:
            turns = pools.conversation(rng)
        messages: list[dict[str, str]] = []
        params = benign_params(rng, stream=stream)
        for turn in turns:
            messages = [*messages, {"role": "user", "content": turn}]
            tokens = int(rng.lognormvariate(6.0 if reasoning else 5.2, 0.6))
            cap = params["max_tokens"]
            if isinstance(cap, int):
                tokens = min(tokens, cap)
            text = excerpt(pools, rng, tokens)
            yield self._event(ts, account, key, client, model=model, system=self.system, messages=messages, params=params,
                              completion_tokens=tokens, text=text, reasoning_chars=tokens * 2 if reasoning else 0, org=self.org)
            messages = [*messages, {"role": "assistant", "content": text}]
            ts += 20 + rng.expovariate(1 / 90) + len(text) / 20


@dataclass
class EvalJob(Actor):
    """A one-off benchmark evaluation: one burst of single-turn prompts in a public CoT wrapper, never again."""

    client: Client | None = None
    at: float = 0.0
    size: int = 1000
    wrapper: str = "{task}"
    benchmark: str = "gsm8k"
    model: str = "demo-1"
    max_tokens: int = 2048
    concurrency_gap_s: float = 1.5
    smoke_test: bool = False
    org: str | None = None
    population: str = "eval_job"

    def events(self) -> Iterator[TimedEvent]:
        rng, pools, client = self.rng, self.pools, self.client
        assert pools is not None and client is not None
        account, key = self.accounts[0], f"key_{rng.getrandbits(64):016x}"
        items = pools.sweeps[self.benchmark]
        order = rng.sample(items, min(self.size, len(items)))
        while len(order) < self.size:  # small benchmarks are run with several samples per item
            order += rng.sample(items, min(self.size - len(order), len(items)))
        ts = self.at
        params: dict[str, object] = {"temperature": 0.0, "max_tokens": self.max_tokens, "n": 1, "logprobs": False, "top_logprobs": None,
                                     "stream": False, "tools": 0}
        if self.smoke_test:  # a handful of prompts an hour before, to check the harness
            for item in order[: rng.randint(3, 12)]:
                yield self._job_event(ts - 3600 + rng.uniform(0, 600), account, key, item, params)
        for item in order:
            yield self._job_event(ts, account, key, item, params)
            ts += rng.expovariate(1 / self.concurrency_gap_s)

    def _job_event(self, ts: float, account: str, key: str, item: str, params: dict[str, object]) -> TimedEvent:
        rng, pools, client = self.rng, self.pools, self.client
        assert pools is not None and client is not None
        tokens = min(self.max_tokens, int(rng.lognormvariate(5.8, 0.5)))
        return self._event(ts, account, key, client, model=self.model, system=None,
                           messages=[{"role": "user", "content": self.wrapper.format(task=item)}], params=params,
                           completion_tokens=tokens, text=excerpt(pools, rng, tokens), reasoning_chars=tokens * 2, org=self.org)


@dataclass
class LightApp(Actor):
    """A small product on the API: fixed system prompt, short single-turn requests, steady rate, one server."""

    client: Client | None = None
    per_day: float = 60.0
    system: str = ""
    market_offset_min: int = 0
    model: str = "demo-1"
    org: str | None = None
    population: str = "light_app"

    def events(self) -> Iterator[TimedEvent]:
        rng, pools, client = self.rng, self.pools, self.client
        assert pools is not None and client is not None
        account, key = self.accounts[0], f"key_{rng.getrandbits(64):016x}"
        max_tokens = rng.choice((128, 256, 512))
        params = {"temperature": rng.choice((0.0, 0.2, 0.3)), "max_tokens": max_tokens, "n": None, "logprobs": False,
                  "top_logprobs": None, "stream": False, "tools": 0}
        for day in range(self.days):
            day_start = self.start + day * DAY
            times = []
            for _ in range(poisson(rng, self.per_day)):
                # Two thirds during the market's daytime, the rest round the clock (cron jobs, other timezones).
                if rng.random() < 0.67:
                    times.append(day_start + rng.uniform(8, 22) * 3600 - self.market_offset_min * 60)
                else:
                    times.append(day_start + rng.uniform(0, DAY))
            for ts in sorted(times):
                text = pools.conversation(rng)[0][: rng.randint(80, 500)]
                tokens = min(max_tokens, int(rng.lognormvariate(4.0, 0.5)))
                yield self._event(ts, account, key, client, model=self.model, system=self.system,
                                  messages=[{"role": "user", "content": text}], params=params, completion_tokens=tokens,
                                  text=excerpt(pools, rng, tokens), org=self.org)


@dataclass
class CodingAgent(Actor):
    """A developer using a coding agent: many tool-using steps per task, a stock system prompt, work hours."""

    wording: Wording | None = None
    client: Client | None = None
    sessions_per_day: float = 2.0
    models: tuple[str, ...] = ("demo-1",)
    org: str | None = None
    population: str = "coding_agent"

    def events(self) -> Iterator[TimedEvent]:
        rng, pools, wording, client = self.rng, self.pools, self.wording, self.client
        assert pools is not None and wording is not None and client is not None
        account, key = self.accounts[0], f"key_{rng.getrandbits(64):016x}"
        system = rng.choice(wording.agent_systems)
        params: dict[str, object] = {"temperature": None, "max_tokens": rng.choice((8192, 16384)), "n": None, "logprobs": False,
                                     "top_logprobs": None, "stream": True, "tools": rng.randint(6, 20)}
        for day in range(self.days):
            starts = [local_start(rng, self.start + day * DAY, client.utc_offset_min, "work") for _ in range(poisson(rng, self.sessions_per_day))]
            for ts in sorted(t for t in starts if t is not None):
                task = rng.choice(pools.coding) if rng.random() < 0.5 else pools.sweep_task(rng, "mbpp")
                history: list[dict[str, str]] = [{"role": "user", "content": task}]
                model = self._model(ts, self.models, rng, 0.5)
                for _ in range(rng.randint(8, 45)):
                    tokens = int(rng.lognormvariate(4.8, 0.8))
                    text = excerpt(pools, rng, tokens)
                    # The log keeps the last turns only (agents resend the whole context; the simulator trims it to stay small).
                    yield self._event(ts, account, key, client, model=model, system=system, messages=history[-6:], params=params,
                                      completion_tokens=tokens, text=text, org=self.org)
                    step = rng.choice(wording.agent_steps).format(task=rng.choice(pools.coding)[:300], answer=excerpt(pools, rng, 60))
                    history = [*history, {"role": "assistant", "content": text}, {"role": "user", "content": step}]
                    ts += 2 + rng.expovariate(1 / 8) + tokens / 60
