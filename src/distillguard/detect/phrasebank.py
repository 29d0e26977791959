"""Shared phrase banks: accounts that draw their prompt wrappers from one private list of paraphrases.

A campaign that imitates people does not reuse one template: every request gets
an opener and a closer picked from a list of paraphrases ("Next question:",
"Please handle this:", "Be complete."), in several languages. No single
paraphrase frames the 12 % of an account's prompts that makes it a wrapper
(:mod:`distillguard.detect.attribution`), but two accounts fed from the same
list use the *same distribution* of rare phrasings: several distinct openers
and closers, each in a few percent of their prompts, that almost no one else
uses. This module compares those distributions.

An account's *phrasings* are its wrapper pieces (:func:`distillguard.detect.templates.wrapper_parts`)
seen at least twice, with nested pieces on one side collapsed into one
phrasing (the two-word piece and its four-word extensions are one opener),
and each phrasing's share of the account's single-turn prompts. A phrasing's
weight is its rarity among the background accounts (:func:`distillguard.detect.attribution.rarity`):
a swept dataset's own first words ("Write a function …") and a language's
common openings are carried by many ordinary accounts and weigh nothing. Two
accounts share a bank when they share at least ``BANK_PHRASINGS`` distinct
rare phrasings, at least two of them alternatives on one side (several
openers, or several closers), whose weighted overlap (the sum of rarity × the
smaller of the two shares) reaches ``BANK_MASS``, half of it beyond the
heaviest phrasing: one shared template — what two evaluation jobs with the same
harness share, with the benchmark's own recurring endings — is never enough.

Whether a shared bank alone may link two accounts is decided by clustering
(:mod:`distillguard.detect.clustering`): any bank when both already look like
harvesting on their own; otherwise only a large one (``BANK_ALONE`` rare
phrasings in common), because ordinary people (learners asking in the same
words, early adopters trying the same release-day probes) share a few.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from distillguard.detect.attribution import is_public_wrapper, rarity

__all__ = ["BANK_ALONE", "BANK_ALONE_MASS", "BANK_MASS", "BANK_PHRASINGS", "BankOverlap", "PhraseBanks", "phrasings"]

BANK_PHRASINGS = 3
# Between two accounts that do not both look like harvesting on their own, a bank must be large: at least this many
# distinct rare phrasings in common. Strangers copying the same public probes or course prompts share a handful (up to
# five between early adopters on the development split; six for one pair on its simulation before per-campaign wording,
# a lone link that formed no cluster); an operator's generated list gives more.
BANK_ALONE = 6
# ... and it must frame a large part of both accounts' prompts: a weighted overlap of at least this much. A relay
# carrying dozens of people's conversations shares many rare phrasings with another relay by chance, each a few
# percent of its traffic (0.31-0.41 for the development split's relay pairs that pass the count); an operator's list
# frames most of what its accounts send.
BANK_ALONE_MASS = 0.5
BANK_MASS = 0.3
# Phrasings are judged more strictly than other items: a phrasing counts fully only when at most 1 % of the
# background carries it, and not at all beyond about 3 % (weight below RARE_ENOUGH) — a language's or a
# dataset's common openings are carried by that many.
RARE_SHARE_PHRASING = 100.0
RARE_ENOUGH = 0.75
ALTERNATIVE_MIN = 0.05
MIN_COUNT = 2
MIN_SHARE = 0.02
_MAX_PHRASINGS = 64


def _unspaced(word: str) -> bool:
    """Whether a word is written in a script without spaces between words (Chinese, Japanese): there ``\\w+``
    matches a whole clause, so one "word" is already a phrasing."""
    return any("\u3040" <= ch <= "\u30ff" or "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" for ch in word)


def _phrasing_key(piece: str) -> str:
    """``"p4:next item write a"`` → ``"p:next item"``; ``"s4:a paso a paso"`` → ``"s:a paso"``; in a script without
    spaces the clause alone: ``"p2:下一题 write"`` → ``"p:下一题"`` (the second "word" is already the task's)."""
    side, _, words = piece.partition(":")
    split = words.split(" ")
    edge = split[0] if side[0] == "p" else split[-1]
    if _unspaced(edge):
        return side[0] + ":" + edge
    return side[0] + ":" + " ".join(split[:2] if side[0] == "p" else split[-2:])


def phrasings(single_turn: int, pieces: Mapping[str, int], follow_ups: int = 0,
              follow_up_texts: Mapping[str, int] | None = None) -> dict[str, float]:
    """An account's phrasings and their shares (public wrappers left out): wrapper pieces as a share of its
    single-turn prompts, and short follow-up turns (``"f:go on"``) as a share of its follow-ups."""
    out: dict[str, float] = {}
    for piece, count in pieces.items() if single_turn > 0 else ():
        # Scaffold markers (``"p1:"``, templates.scaffold_parts) are one template's formatting, not a paraphrase.
        if count < MIN_COUNT or count / single_turn < MIN_SHARE or piece[1] == "1" or is_public_wrapper(piece):
            continue
        key = _phrasing_key(piece)
        share = min(1.0, count / single_turn)
        if share > out.get(key, 0.0):
            out[key] = share
    for text, count in (follow_up_texts or {}).items() if follow_ups > 0 else ():
        if count >= MIN_COUNT and count / follow_ups >= MIN_SHARE:
            out["f:" + text] = min(1.0, count / follow_ups)
    if len(out) > _MAX_PHRASINGS:
        out = dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))[:_MAX_PHRASINGS])
    return out


@dataclass(frozen=True)
class BankOverlap:
    """What two accounts' phrase banks have in common: how many distinct rare phrasings, their weighted overlap,
    and the heaviest shared phrasing (for the cluster's ``shared`` list)."""

    phrasings: int
    mass: float
    example: str
    alternatives: int  # the most shared phrasings worth ≥ ALTERNATIVE_MIN on one side (openers, or closers)
    heaviest: float  # the largest single phrasing's part of ``mass``

    @property
    def shared_bank(self) -> bool:
        """A list to pick from, not one template: several phrasings, two of them alternatives on one side, and the
        overlap at least ``BANK_MASS``, half of it beyond its heaviest phrasing (one harness's wrapper plus a
        benchmark's own recurring endings is one template)."""
        return (self.phrasings >= BANK_PHRASINGS and self.alternatives >= 2 and self.mass >= BANK_MASS
                and self.mass - self.heaviest >= BANK_MASS / 2)

    def links(self, suspects: bool) -> bool:
        """Whether this bank alone links two accounts with one configuration: any shared bank between two accounts that
        already look like harvesting (``suspects``); otherwise a large one — ``BANK_ALONE`` phrasings framing at
        least ``BANK_ALONE_MASS`` of both accounts' prompts."""
        return self.shared_bank and (suspects or (self.phrasings >= BANK_ALONE and self.mass >= BANK_ALONE_MASS))

    def describe(self) -> str:
        side, _, words = self.example.partition(":")
        shown = f"{words} …" if side == "p" else f"… {words}" if side == "s" else f"(follow-up) {words}"
        return f"the same bank of rare prompt phrasings ({self.phrasings} shared, e.g. \u201c{shown}\u201d)"


class PhraseBanks:
    """Every account's phrasings, their rarity in the background, and pairwise overlaps."""

    def __init__(self, by_account: Mapping[str, dict[str, float]], background: set[str]) -> None:
        self.by_account = by_account
        holders: dict[str, list[str]] = {}
        for account, found in by_account.items():
            for key in found:
                holders.setdefault(key, []).append(account)
        population = max(1, len(background))
        self.holders = holders
        self.weight = {key: w for key, members in holders.items() if len(members) >= 2
                       and (w := rarity(sum(1 for m in members if m in background), population, RARE_SHARE_PHRASING)) >= RARE_ENOUGH}
        weight = self.weight
        self.rare_count = {account: n for account, found in by_account.items() if (n := sum(1 for key in found if key in weight))}

    def posting_lists(self) -> list[list[str]]:
        """The accounts carrying each rare phrasing (candidate pairs come from these)."""
        return [self.holders[key] for key in sorted(self.weight)]

    def may_share(self, a: str, b: str, phrasings: int) -> bool:
        """Whether both accounts carry at least ``phrasings`` rare phrasings (a cheap test before :meth:`overlap`)."""
        return min(self.rare_count.get(a, 0), self.rare_count.get(b, 0)) >= phrasings

    def overlap(self, a: str, b: str) -> BankOverlap | None:
        first, second = self.by_account.get(a), self.by_account.get(b)
        if not first or not second:
            return None
        if len(second) < len(first):
            first, second = second, first
        count, mass, best, example = 0, 0.0, 0.0, ""
        sides = {"p": 0, "s": 0, "f": 0}
        for key, share in first.items():
            other = second.get(key)
            weight = self.weight.get(key)
            if other is None or weight is None:
                continue
            value = weight * min(share, other)
            count += 1
            if value >= ALTERNATIVE_MIN:
                sides[key[0]] += 1
            mass += value
            if (value, key) > (best, example):
                best, example = value, key
        return BankOverlap(count, mass, example, max(sides.values()), best) if count else None
