"""Reasoning-trace elicitation: prompts that ask the model to write out its internal reasoning, or to grade.

Two readers per prompt, the stronger wins:

* **rules**: which *concepts* co-occur — the model's reasoning/thought, the
  articulate/reveal concept, the internal/hidden concept, step by step, the
  reasoning-language constraint — each a small multilingual lexicon of stems;
  plus grader/reward-model requests and forced thinking tags. Strict on
  purpose: "think step by step" (a benchmark wrapper) and "explain step by step
  how to bake bread" (a learner) are *weak* cues, not elicitation;
* **a trained classifier** (:mod:`~distillguard.detect.intent`) of the wording,
  for the paraphrases and languages the rules do not list.

Prompts are scored in batches (the classifier is numpy): ``evidence`` flushes
what is pending first, so results do not depend on when it is asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from distillguard.detect.base import Detector, Evidence, confidence, logistic, user_text
from distillguard.detect.intent import load_intent_model, prepare
from distillguard.detect.textmatch import StemSearch

__all__ = ["ReasoningElicitation", "elicitation_score", "rule_score"]

_CONCEPTS = {
    "reasoning": r"reasoning|thought|thinking|chain[- ]of[- ]thought|\bcot\b|rationale|denkproz|gedank|überlegung|raisonn|réflexion|pensée|"
                 r"razon|piens|pensamiento|raciocín|pensament|推理|思考|思路|想法|рассужд|мысл|размышл|考え|思考過程|추론|생각",
    "steps": r"step[- ]by[- ]step|each step|every step|one step at a time|intermediate|schritt|étape|paso a paso|cada paso|passo a passo|"
             r"一步一步|逐步|每一步|步骤|шаг за шагом|каждый шаг|一歩ずつ|段階|단계",
    "articulate": r"write (it )?out|spell(ing)? out|articulat|narrat|lay(ing)? out|show (me )?(your|every|all|each)|reveal|verbali[sz]|"
                  r"out loud|aloud|schreib|zeig|erklär.{0,20}laut|laut|écri|détaill|à voix haute|escrib|muestr|narra|descrev|"
                  r"写出|展示|列出|说出|распиш|покаж|опиш|書き出|示して|보여",
    "internal": r"internal|hidden|inner|private|behind (the|your)|interne|versteckt|innere|cach[ée]|intern[oa]|oculto|内部|隐藏|内心|"
                r"внутренн|скрыт|内部の|内なる",
    "grader": r"\bgrader\b|reward model|\bscore (the|this|each|following)|rate (the|this) (following )?(answer|response)|judge (the|this)|"
              r"evaluate (the|this) (answer|response)|bewerte|note (la|cette) réponse|califica",
    "tags": r"<\s*/?\s*(thinking|think|reasoning|scratchpad)\s*>|developer mode|modo de depuración|mode débogage",
    "language": r"same language|language of the (question|user)|gleichen sprache|même langue|mismo idioma|同じ言語|同一语言|том же языке",
}
# A concept is touched when its regex matches the lower-cased text, tested as substring checks plus a few
# small regexes (see textmatch: ~4x faster than the regexes, identical results).
_SEARCHES = tuple((name, StemSearch(pattern)) for name, pattern in _CONCEPTS.items())


def rule_score(text: str) -> tuple[float, frozenset[str]]:
    """The rules' score for one prompt in [0, 1], and the concepts it touched (0.8 and up: eliciting)."""
    if not text:
        return 0.0, frozenset()
    lowered = text.lower()
    hits = frozenset([name for name, touches in _SEARCHES if touches(lowered)])
    if not hits:
        return 0.0, hits
    if "tags" in hits or "grader" in hits:
        return 0.9, hits
    if "reasoning" in hits and hits & {"articulate", "internal", "language"}:
        # The model's reasoning, to be written out, revealed, or kept in a language: the intent itself.
        return min(1.0, 0.7 + 0.1 * len(hits & {"steps", "articulate", "internal", "language"})), hits
    if "steps" in hits and hits & {"reasoning", "articulate", "internal"}:
        return 0.4, hits  # "think step by step", "write out the steps": what learners and benchmarks say too
    return 0.15, hits


def _worth_reading(text: str, system: str | None) -> bool:
    """Whether the classifier has words to read: a request with no user text (a completion, an embedding, a
    model list) or a two-letter "hi" would otherwise be scored on the model's bias and a few padding n-grams."""
    return len(text.strip()) >= _MIN_CHARS or len((system or "").strip()) >= _MIN_CHARS


_MIN_CHARS = 8


def elicitation_score(text: str, system: str | None = None) -> tuple[float, frozenset[str]]:
    """One prompt's score in [0, 1] — the larger of the rules and the classifier — and the rules' concepts."""
    score, hits = rule_score(text + "\n" + system if system else text)
    model = load_intent_model()
    if model is not None and _worth_reading(text, system):
        score = max(score, model.probability(text, system))
    return score, hits


@dataclass(slots=True)  # one per account: no per-instance __dict__ (docs/detection.md, "Memory")
class _State:
    prompts: int = 0
    eliciting: int = 0
    by_rules: int = 0  # of the eliciting prompts, those the rules recognised (the rest: the classifier alone)
    score_sum: float = 0.0


_BATCH = 32


class ReasoningElicitation(Detector):
    name = "cot_elicitation"
    threshold = 0.5

    def __init__(self) -> None:
        self.accounts: dict[str, _State] = {}
        self.model = load_intent_model()
        self._pending: list[tuple[_State, str, float]] = []
        self._system_rules: dict[str, float] = {}

    def update(self, event: Mapping[str, Any]) -> None:
        self.update_with_text(event, user_text(event))

    def update_with_text(self, event: Mapping[str, Any], text: str) -> None:
        """``update`` with the event's ``user_text`` already extracted (the Scanner extracts it once for all)."""
        account = event.get("account_id")
        if account is None:
            return
        state = self.accounts.get(account)
        if state is None:
            state = self.accounts[account] = _State()
        system = (event.get("request") or {}).get("system") or ""
        if not isinstance(system, str):
            system = ""
        rules, _ = rule_score(text)
        if system:
            # An account's system prompt repeats: its rule score is worked out once.
            cached = self._system_rules.get(system)
            if cached is None:
                cached = rule_score(system)[0]
                if len(self._system_rules) < 4096:
                    self._system_rules[system] = cached
            rules = max(rules, cached)
        if self.model is None or rules >= self.threshold or not _worth_reading(text, system):
            self._count(state, rules, rules)  # the rules have decided: the classifier can only agree or add less
            return
        self._pending.append((state, prepare(text, system), rules))
        if len(self._pending) >= _BATCH:
            self.flush()

    def _count(self, state: _State, score: float, rules: float) -> None:
        state.prompts += 1
        state.score_sum += score
        if score >= self.threshold:
            state.eliciting += 1
            if rules >= self.threshold:
                state.by_rules += 1

    def flush(self) -> None:
        """Score the prompts waiting for the classifier."""
        if not self._pending or self.model is None:
            return
        pending, self._pending = self._pending, []
        probabilities = self.model.probabilities([text for _, text, _ in pending])
        for (state, _, rules), probability in zip(pending, probabilities, strict=True):
            self._count(state, max(rules, float(probability)), rules)

    def evidence(self, account_id: str) -> Evidence | None:
        if self._pending:
            self.flush()
        return self._evidence_of(self.accounts.get(account_id))

    def pooled(self, account_ids: Iterable[str]) -> Evidence | None:
        """The evidence of several accounts' prompts counted together, as if one actor sent them all (a cluster)."""
        if self._pending:
            self.flush()
        pool = _State()
        for account in account_ids:
            state = self.accounts.get(account)
            if state is not None:
                pool.prompts += state.prompts
                pool.eliciting += state.eliciting
                pool.by_rules += state.by_rules
                pool.score_sum += state.score_sum
        return self._evidence_of(pool)

    def _evidence_of(self, state: _State | None) -> Evidence | None:
        if state is None or state.prompts == 0:
            return None
        share = state.eliciting / state.prompts
        # Midpoint 8 %: benign users ask for the model's reasoning now and then, campaigns do it systematically.
        score = logistic(share, 0.08, 0.025) * confidence(state.eliciting, 4.0)
        detail = f"{state.eliciting} of {state.prompts} prompts ask for step-by-step or internal reasoning, or for grading ({share:.0%})"
        if state.eliciting > state.by_rules:
            detail += f"; {state.eliciting - state.by_rules} recognised by the wording classifier alone"
        return Evidence(self.name, score, detail,
                        numbers={"eliciting": state.eliciting, "prompts": state.prompts, "share": round(share, 4),
                                 "classifier_only": state.eliciting - state.by_rules})
