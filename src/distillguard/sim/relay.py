"""Resellers behind one relay: a web app that wraps end users' questions and sends them from its server.

One account, one key, one relay address (a hosting /24, often a single IP);
end users in two regions (so activity spans most of the clock), each with
their own multi-turn conversations; a fixed system prompt around every
question (the web app's wrapper). Half forward their users' attestations
(each end user's install, timezone and locale, valid), half send none — the
harder case, where the only evidence is in the traffic's shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from distillguard.sim.people import local_start
from distillguard.sim.populations import DAY, Actor, Client, TimedEvent, excerpt, home_client, poisson
from distillguard.sim.world import CAMPAIGN_HOSTING_ASNS, Network, Place, header_fp, user_agent

__all__ = ["RelayReseller"]


@dataclass
class RelayReseller(Actor):
    regions: tuple[Place, Place] | None = None
    end_users: int = 30
    sessions_per_user_day: float = 1.2
    system: str = ""
    forward_attestation: bool = False
    single_ip: bool = True
    models: tuple[str, ...] = ("demo-1",)
    population: str = "relay_reseller"

    def events(self) -> Iterator[TimedEvent]:
        rng, pools = self.rng, self.pools
        assert pools is not None and self.regions is not None
        account, key = self.accounts[0], f"key_{rng.getrandbits(64):016x}"
        asn, country = rng.choice(CAMPAIGN_HOSTING_ASNS)
        subnet = rng.randrange(256)
        ua, family = user_agent(rng)
        relay_ip = Network.ip_in(asn, rng, subnet)
        users: list[Client] = []
        for i in range(self.end_users):
            place = self.regions[i % 2]
            user = home_client(rng, place, attested=self.forward_attestation and rng.random() < 0.8)
            # What the gateway sees: the relay's address and client library; the end user's install only if forwarded.
            user.ip, user.asn, user.country, user.hosting, user.ua, user.fp = relay_ip, asn, country, True, ua, header_fp(family)
            users.append(user)
        params = {"temperature": 0.7, "max_tokens": rng.choice((1024, 2048)), "n": None, "logprobs": False, "top_logprobs": None,
                  "stream": rng.random() < 0.7, "tools": 0}
        pending: list[TimedEvent] = []
        for day in range(self.days):
            for user in users:
                if not self.single_ip:
                    user.ip = Network.ip_in(asn, rng, subnet)
                for _ in range(poisson(rng, self.sessions_per_user_day)):
                    ts = local_start(rng, self.start + day * DAY, user.utc_offset_min, "day")
                    if ts is None:
                        continue
                    messages: list[dict[str, str]] = []
                    model = self._model(ts, self.models, rng, 0.3)
                    for turn in pools.conversation(rng)[:3]:
                        messages = [*messages, {"role": "user", "content": turn}]
                        tokens = int(rng.lognormvariate(5.3, 0.6))
                        text = excerpt(pools, rng, tokens)
                        pending.append(self._event(ts, account, key, user, model=model, system=self.system, messages=messages,
                                                   params=params, completion_tokens=tokens, text=text))
                        messages = [*messages, {"role": "assistant", "content": text}]
                        ts += 30 + rng.expovariate(1 / 60)
            pending.sort(key=lambda e: (e[0], e[1]))
            cutoff = self.start + (day + 1) * DAY
            yield from (e for e in pending if e[0] < cutoff)
            pending = [e for e in pending if e[0] >= cutoff]
        pending.sort(key=lambda e: (e[0], e[1]))
        yield from pending
