"""Dev, test and hold-out splits that share nothing: seeds, wording and prompts.

Detectors are tuned on the ``dev`` split and reported on ``test``; ``holdout``
is for a blind check that nobody tunes on, ever (the test split had been run once
per session for several sessions, so it is no longer blind). The three share

* **no random stream**: the split's name is mixed into the seed, so
  ``--split dev --seed 3`` and ``--split test --seed 3`` are unrelated worlds;
* **no wording**: campaign paraphrases, languages' phrasings, wrappers, system
  prompts, follow-ups, learners' and apps' phrasings live in
  ``sim/wording/<split>/wording.yaml``, written independently (test by a
  red-team pass that did not look at the detectors; holdout later, fresh, in
  languages neither other split has); tests assert no string is in two of them;
* **no prompts**: every bundled corpus is cut by keyed hashes of the prompt
  (conversations by their first turn, so branches of one tree stay on one side) —
  see ``PromptPools.for_split``.

Detection code must never import the test or hold-out wording; only the simulator does.
"""

from __future__ import annotations

import importlib.resources
import random
import re
from dataclasses import dataclass
from typing import Any, Literal

import yaml

__all__ = ["SPLITS", "Split", "Wording", "load_wording", "split_rng", "wording_strings"]

Split = Literal["dev", "test", "holdout"]
SPLITS: tuple[Split, ...] = ("dev", "test", "holdout")

_LISTS = ("short_wrappers", "campaign_systems", "system_suffixes", "graders", "public_cot_wrappers", "learner_followups",
          "coding_followups", "app_systems", "webapp_systems", "early_adopter_probes", "agent_systems", "agent_steps", "public_systems")
_BY_LANGUAGE = ("elicitation", "frames", "openers", "closers", "followups", "learner_asks")


@dataclass(frozen=True)
class Wording:
    """Everything a simulated actor says that is not a corpus prompt, for one split."""

    split: str
    elicitation: dict[str, list[str]]
    frames: dict[str, list[str]]
    openers: dict[str, list[str]]
    closers: dict[str, list[str]]
    followups: dict[str, list[str]]
    learner_asks: dict[str, list[str]]
    short_wrappers: list[str]
    campaign_systems: list[str]
    system_suffixes: list[str]
    graders: list[str]
    public_cot_wrappers: list[str]
    learner_followups: list[str]
    coding_followups: list[str]
    app_systems: list[str]
    webapp_systems: list[str]
    early_adopter_probes: list[str]
    agent_systems: list[str]
    agent_steps: list[str]
    public_systems: list[str]  # stock system prompts (SDK and UI defaults) people, apps and campaigns all send

    @property
    def languages(self) -> tuple[str, ...]:
        """Languages with their own elicitation wording in this split (English first)."""
        return tuple(sorted(self.elicitation, key=lambda lang: (lang != "en", lang)))

    def in_language(self, table: dict[str, list[str]], language: str) -> list[str]:
        return table.get(language) or table["en"]


_CACHE: dict[str, Wording] = {}


def load_wording(split: str) -> Wording:
    """The wording file of ``split`` (``dev``, ``test`` or ``holdout``), validated and cached."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cached = _CACHE.get(split)
    if cached is not None:
        return cached
    resource = importlib.resources.files("distillguard.sim").joinpath("wording", split, "wording.yaml")
    data: dict[str, Any] = yaml.safe_load(resource.read_text(encoding="utf-8"))
    missing = [k for k in (*_LISTS, *_BY_LANGUAGE) if k not in data]
    if missing:
        raise ValueError(f"sim/wording/{split}/wording.yaml: missing sections {missing}")
    for key in _BY_LANGUAGE:
        if "en" not in data[key]:
            raise ValueError(f"sim/wording/{split}/wording.yaml: {key} needs an 'en' entry (the fallback language)")
    wording = Wording(split=split, **{k: data[k] for k in (*_LISTS, *_BY_LANGUAGE)})
    _CACHE[split] = wording
    return wording


_PLACEHOLDER = re.compile(r"\{task\}|\{answer\}|\{\{\}\}")


def wording_strings(wording: Wording) -> set[str]:
    """Every phrase of a split with placeholders removed (what must not appear in the other split)."""
    out: set[str] = set()
    for key in _LISTS:
        out.update(getattr(wording, key))
    for key in _BY_LANGUAGE:
        for phrases in getattr(wording, key).values():
            out.update(phrases)
    cleaned = {" ".join(_PLACEHOLDER.sub(" ", s).split()).lower() for s in out}
    return {s for s in cleaned if s}


def split_rng(seed: int, split: str, salt: str = "") -> random.Random:
    """The root random stream of a world: the split and a family salt are part of the seed."""
    return random.Random(f"distillguard-sim|{split}|{salt}|{seed}")
