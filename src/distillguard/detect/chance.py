"""How much of what two accounts share chance alone explains: a null model of unrelated legitimate accounts.

Attribution weighs each shared value by its rarity (:func:`distillguard.detect.attribution.rarity`), but an account
that carries many values of one kind — a relay's dozens of people's openers, a heavy user's many phrasings, an
account with many installs — shares some of them with anyone. So, for two accounts *a* and *b* and a group of items
(wrapper pieces, system prompts, installs, rare phrasings), the number of values an unrelated pair would share is
taken as Poisson with mean

    λ = ½ (Σ_{v ∈ a} min(1, h(v)/N × n_b / n̄) + Σ_{v ∈ b} min(1, h(v)/N × n_a / n̄))

where ``h(v)`` is how many of the ``N`` background accounts (those that do not look like distillers on their own)
carry ``v``, ``n_x`` how many values of the group account *x* carries and ``n̄`` the background's mean: a random
background account carries ``v`` with probability ``h(v)/N``, more often the more values it carries. What the two
accounts share is then worth ``P(X < observed)`` of its face value (:meth:`ChanceModel.free`): 1 when chance would
almost never share that many (a fleet's private wrapper, held by no one else), falling towards 0 when sharing that
many is what strangers with that many values do.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

__all__ = ["ChanceModel", "poisson_below"]


def poisson_below(observed: int, mean: float) -> float:
    """``P(X < observed)`` for ``X ~ Poisson(mean)``: how surely ``observed`` shared values are more than chance."""
    if observed <= 0:
        return 0.0
    if mean <= 0.0:
        return 1.0
    term = total = math.exp(-mean)
    for i in range(1, observed):
        term *= mean / i
        total += term
    return min(1.0, total)


class ChanceModel:
    """One group of items: per account the values it carries, per value its background holders."""

    def __init__(self, values: Mapping[str, Iterable[Any]], background_holders: Mapping[Any, int],
                 background: AbstractSet[str]) -> None:
        self.values = {a: tuple(v) for a, v in values.items()}
        self.holders = background_holders
        self.population = max(1, len(background))
        carried = sum(len(self.values.get(a, ())) for a in background)
        self.mean = max(1.0, carried / self.population)  # an account carrying one value is never "more than average"

    def expected(self, a: str, b: str) -> float:
        """λ: how many values two unrelated accounts carrying as many as ``a`` and ``b`` would share."""
        mine, theirs = self.values.get(a, ()), self.values.get(b, ())
        return 0.5 * (self._towards(mine, len(theirs)) + self._towards(theirs, len(mine)))

    def _towards(self, values: tuple[object, ...], count: int) -> float:
        scale = count / self.mean / self.population
        return sum(min(1.0, self.holders.get(v, 0) * scale) for v in values)

    def free(self, a: str, b: str, observed: int) -> float:
        """The share of ``observed`` shared values' worth that chance does not explain, in [0, 1]."""
        return poisson_below(observed, self.expected(a, b))
