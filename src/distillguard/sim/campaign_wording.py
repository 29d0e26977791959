"""Each campaign writes its own wording: the split's private phrases dealt out in disjoint shares.

In the world every operator writes its own wrappers, system prompts and
elicitation phrasings; what unrelated operators share is *public* wording
("Let's think step by step", "You are a helpful assistant.") that learners,
apps and evaluation harnesses use too. If every campaign of a world drew from
one pool, two unrelated campaigns would collide on the same private wrapper —
a link no real pair of operators has — and clustering them together would be
the simulator's artefact, not a detector's mistake.

``deal_private_wording`` takes the campaigns of one world and gives each a copy
of the split's ``Wording`` in which every *private* list (``PRIVATE_LISTS``,
``PRIVATE_BY_LANGUAGE``) holds only that campaign's share. Shares are dealt
round-robin from a seeded shuffle, only to the campaigns that use a list (a
campaign without a system prompt takes no system prompt), so they are disjoint
while the split has enough phrases. When a language's phrases run out, the
campaign writes that language's part in English from its own English share; only
when an English list runs out do shares repeat, and the campaign's label names
the lists that did (``shared_wording``). Public lists (``public_cot_wrappers``,
``public_systems``) and everything legitimate actors say are left whole.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distillguard.sim.fleet import CampaignParams
from distillguard.sim.splits import Wording

__all__ = ["PRIVATE_BY_LANGUAGE", "PRIVATE_LISTS", "CampaignNeeds", "CampaignWording", "deal_private_wording"]

PRIVATE_LISTS = ("short_wrappers", "campaign_systems", "system_suffixes", "graders")
PRIVATE_BY_LANGUAGE = ("elicitation", "frames", "openers", "closers", "followups")
# Not wording anyone owns: the bare task as a "frame" and an empty closer.
_NEUTRAL = frozenset({"{task}", ""})
# Short wrappers a campaign needs (a sleeper fleet uses two).
SHORT_WRAPPERS_PER_CAMPAIGN = 2


@dataclass(frozen=True)
class CampaignNeeds:
    """Which private lists one campaign uses, and in which languages (from its ``CampaignParams``)."""

    languages: tuple[str, ...]
    short_wrappers: bool = False
    frames: bool = False
    paraphrased: bool = False
    elicitation: bool = False
    followups: bool = False
    system: bool = False
    grader: bool = False

    @classmethod
    def of(cls, p: CampaignParams) -> CampaignNeeds:
        return cls(languages=p.languages, short_wrappers=p.wrappers == "short", frames=p.wrappers == "few",
                   paraphrased=p.wrappers == "paraphrased", elicitation=p.elicit > 0, followups=p.multi_turn > 0,
                   system=p.system in ("shared", "per_account"), grader=p.grader > 0)

    def uses(self, key: str) -> bool:
        return {"short_wrappers": self.short_wrappers, "campaign_systems": self.system, "system_suffixes": self.system,
                "graders": self.grader, "elicitation": self.elicitation, "frames": self.frames, "openers": self.paraphrased,
                "closers": self.paraphrased, "followups": self.followups}[key]


@dataclass(frozen=True)
class CampaignWording:
    """One campaign's wording (its private shares, the split's public lists) and the lists it had to share."""

    wording: Wording
    shared: tuple[str, ...]


def _deal(items: Sequence[str], users: list[int], rng: random.Random, per_user: int = 1) -> tuple[dict[int, list[str]], bool]:
    """Deal ``items`` round-robin to ``users``; (shares, True if some items had to go to two users)."""
    deck = [x for x in items if x not in _NEUTRAL]
    rng.shuffle(deck)
    shares: dict[int, list[str]] = {u: [] for u in users}
    if not users:
        return shares, False
    if len(deck) >= per_user * len(users):
        for i, item in enumerate(deck):
            shares[users[i % len(users)]].append(item)
        return shares, False
    for i, user in enumerate(users):  # too few: wrap around (recorded by the caller)
        shares[user] = [deck[(i * per_user + k) % len(deck)] for k in range(per_user)] if deck else []
    return shares, True


def deal_private_wording(wording: Wording, needs: Sequence[CampaignNeeds], rng: random.Random) -> list[CampaignWording]:
    """One ``CampaignWording`` per campaign: disjoint shares of the split's private wording (module docstring)."""
    lists: list[dict[str, list[str]]] = [{} for _ in needs]
    tables: list[dict[str, dict[str, list[str]]]] = [{} for _ in needs]
    shared: list[list[str]] = [[] for _ in needs]
    for key in PRIVATE_LISTS:
        users = [i for i, need in enumerate(needs) if need.uses(key)]
        per_user = SHORT_WRAPPERS_PER_CAMPAIGN if key == "short_wrappers" else 1
        shares, wrapped = _deal(getattr(wording, key), users, rng, per_user)
        for i in range(len(needs)):
            lists[i][key] = shares.get(i, [])
            if wrapped and i in shares:
                shared[i].append(key)
    for key in PRIVATE_BY_LANGUAGE:
        table: dict[str, list[str]] = getattr(wording, key)
        neutral = {lang: [x for x in phrases if x in _NEUTRAL] for lang, phrases in table.items()}
        users_of = {lang: [i for i, need in enumerate(needs) if need.uses(key) and (lang in need.languages or lang == "en")]
                    for lang in table}
        taken: set[str] = set()  # one string in two languages ("continue": en and fr) is still one phrase
        for lang in sorted(table, key=lambda lang: (lang != "en", lang)):
            deck = [x for x in table[lang] if x not in taken]
            users = users_of[lang]
            if lang != "en":  # a language's phrases go only as far as they last; later campaigns write it in English
                users = users[:len([x for x in deck if x not in _NEUTRAL])]
            shares, wrapped = _deal(deck, users, rng)
            taken.update(x for phrases in shares.values() for x in phrases)
            for i, phrases in shares.items():
                tables[i].setdefault(key, {})[lang] = phrases + neutral[lang]
                if wrapped:
                    shared[i].append(f"{key}.{lang}")
    out = []
    for i in range(len(needs)):
        changes: dict[str, Any] = dict(lists[i])
        for key in PRIVATE_BY_LANGUAGE:
            by_lang = tables[i].get(key, {})
            by_lang.setdefault("en", [x for x in getattr(wording, key).get("en", []) if x in _NEUTRAL])  # every language's fallback
            changes[key] = by_lang
        out.append(CampaignWording(dataclasses.replace(wording, **changes), tuple(dict.fromkeys(shared[i]))))
    return out
