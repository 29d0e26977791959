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

from distillguard.detect.base import Detector, Evidence, confidence, logistic, remember
from distillguard.detect.context import EventContext
from distillguard.detect.intent import load_intent_model, prepare
from distillguard.detect.textmatch import StemSearch

__all__ = ["ELICITING", "ReasoningElicitation", "elicitation_score", "elicits_by_rules", "rule_score"]

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


ELICITING = 0.5  # a prompt whose score (rules or classifier) reaches this counts as eliciting
_BY_NAME = dict(_SEARCHES)
_DECISIVE = (_BY_NAME["tags"], _BY_NAME["grader"])
_REASONING = _BY_NAME["reasoning"]
_WITH_REASONING = (_BY_NAME["articulate"], _BY_NAME["internal"], _BY_NAME["language"])


def elicits_by_rules(text: str) -> bool:
    """Exactly ``rule_score(text)[0] >= ELICITING``, testing only the concepts that decide it, in the order that
    decides soonest.

    The scanner needs only this of the rules (whether the classifier must read the prompt, and whether the rules
    recognised it), and :func:`rule_score` tests all seven concepts' stems on every prompt (~200 substring
    searches, ~24 µs on a typical 260-character prompt: the largest single cost of a scorer's update). The
    verdict depends on three facts: forced thinking tags or a grading request (0.9), or the model's reasoning
    together with the articulate, internal or same-language concept (0.7 and up); "steps" alone or with another
    concept stays at 0.4, any other hit at 0.15. Most prompts touch no "reasoning" stem, so three concepts are
    tested, not seven. tests/test_reasoning_rules.py checks the equivalence on the development corpus and on
    every stem.
    """
    if not text:
        return False
    lowered = text.lower()
    if any(touches(lowered) for touches in _DECISIVE):
        return True
    return _REASONING(lowered) and any(touches(lowered) for touches in _WITH_REASONING)


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


# Prompts the classifier scores at once: numpy's per-call overhead is paid per batch (256: ~10 % less classifier CPU
# than 32). Each prompt's score is the same in any batch (its n-grams' weights are summed in the same order), and
# ``evidence`` flushes what waits, so a report never misses a prompt.
_BATCH = 256
# Prompt verdicts remembered (ReasoningElicitation._remember). On the `default` scenario's first 50,000 events 4,096
# found 20 % of prompts, 16,384 45 %, 65,536 56 % (41 % of its prompts are distinct).
_VERDICTS = 16384
# The three verdicts (eliciting, by the rules), shared by every prompt remembered: ~70 bytes a prompt with its key.
_NOT_ELICITING, _BY_CLASSIFIER, _BY_RULES = (False, False), (True, False), (True, True)
# How many eliciting prompts make the share count (confidence scale): a harvest of reasoning traces is dozens of them,
# not the handful a curious person sends (0.28 at 4, 0.63 at 12, 0.95 at 36). At 4, an early adopter who asked a new
# model "show me how you reasoned" 6 times in 18 requests read 0.78 here and was `high` (0.91) with a short sweep's
# shape beside it (robust dev seed 8). A fleet's members are counted together (``pooled``).
TRACES_SCALE = 12.0
# The same share at the quick confidence it had until stop 18 (0.63 at 4 eliciting prompts): whether an account's
# prompts *look like* harvesting reasoning, not whether it harvested any (``intent``). Attribution's background — the
# accounts that do not look like distillers on their own, against which a trait's rarity is judged — reads this, so
# that a campaign's members who each sent a few eliciting prompts stay out of it and their shared traits stay rare.
INTENT_SCALE = 4.0


def _share_score(state: _State) -> float:
    # Midpoint 8 %: benign users ask for the model's reasoning now and then, campaigns do it systematically.
    return logistic(state.eliciting / state.prompts, 0.08, 0.025)


class ReasoningElicitation(Detector):
    name = "cot_elicitation"
    threshold = ELICITING

    def __init__(self) -> None:
        self.accounts: dict[str, _State] = {}
        self.model = load_intent_model()
        # Waiting for the classifier: per distinct prompt (its key, below), the states that sent it; its prepared text
        # is in _pending_texts, in the same order.
        self._waiting: dict[int, list[_State]] = {}
        self._pending_texts: list[str] = []
        self._system_rules: dict[str, bool] = {}
        # A prompt's verdict, (eliciting, by the rules), is a function of its text and system prompt alone (the rules,
        # and the classifier's probability, which is the same in any batch): prompts seen again — an app's fixed
        # prompts, a benchmark's re-runs, a template's short tasks — are counted from here, skipping both readers.
        # Keyed by Python's hash of (text, system) (this process's, 64-bit): ~70 bytes a prompt whatever its length,
        # where the texts themselves would hold the events' strings alive; a collision among the prompts held is
        # negligible, as for the frames of templates.py and the conversations of relay.py.
        self._verdicts: dict[int, tuple[bool, bool]] = {}

    def update(self, event: Mapping[str, Any]) -> None:
        self.update_with(EventContext(event))

    def update_with(self, context: EventContext) -> None:
        """``update`` reading the prompt from the event's shared context (the Scanner works it out once for all)."""
        event, text = context.event, context.text
        account = event.get("account_id")
        if account is None:
            return
        state = self.accounts.get(account)
        if state is None:
            state = self.accounts[account] = _State()
        system = (event.get("request") or {}).get("system") or ""
        if not isinstance(system, str):
            system = ""
        key = hash((text, system))
        verdict = self._verdicts.get(key)
        if verdict is not None:
            self._count(state, verdict[0], verdict[1])
            return
        waiting = self._waiting.get(key)
        if waiting is not None:  # the same prompt is already waiting for the classifier
            waiting.append(state)
            return
        # Only whether the rules reach ELICITING matters here (elicits_by_rules): the classifier reads the prompt
        # when they do not, and the account's counts record which of the two recognised it.
        rules = elicits_by_rules(text)
        if system and not rules:
            # An account's system prompt repeats: its rules' verdict is worked out once.
            cached = self._system_rules.get(system)
            if cached is None:
                cached = elicits_by_rules(system)
                if len(self._system_rules) < 4096:
                    self._system_rules[system] = cached
            rules = cached
        if rules or self.model is None or not _worth_reading(text, system):
            self._count(state, rules, rules)  # the rules have decided: the classifier can only agree or add less
            self._remember(key, _BY_RULES if rules else _NOT_ELICITING)
            return
        self._waiting[key] = [state]
        self._pending_texts.append(prepare(text, system))
        if len(self._pending_texts) >= _BATCH:
            self.flush()

    def _remember(self, key: int, verdict: tuple[bool, bool]) -> None:
        """Keep a prompt's verdict, bounded: at most ``_VERDICTS`` prompts (~1.2 MB), all forgotten at once when full
        (cheap, and the prompts that recur are back soon)."""
        remember(self._verdicts, key, verdict, _VERDICTS)

    @staticmethod
    def _count(state: _State, eliciting: bool, by_rules: bool) -> None:
        state.prompts += 1
        if eliciting:
            state.eliciting += 1
            if by_rules:
                state.by_rules += 1

    def flush(self) -> None:
        """Score the prompts waiting for the classifier (the rules did not reach ELICITING on any of them)."""
        if not self._waiting or self.model is None:
            return
        waiting, texts = self._waiting, self._pending_texts
        self._waiting, self._pending_texts = {}, []
        probabilities = self.model.probabilities(texts)
        for (key, states), probability in zip(waiting.items(), probabilities, strict=True):
            eliciting = float(probability) >= self.threshold
            for state in states:
                self._count(state, eliciting, False)
            self._remember(key, _BY_CLASSIFIER if eliciting else _NOT_ELICITING)

    def evidence(self, account_id: str) -> Evidence | None:
        if self._waiting:
            self.flush()
        return self._evidence_of(self.accounts.get(account_id))

    def pooled(self, account_ids: Iterable[str]) -> Evidence | None:
        """The evidence of several accounts' prompts counted together, as if one actor sent them all (a cluster)."""
        if self._waiting:
            self.flush()
        pool = _State()
        for account in account_ids:
            state = self.accounts.get(account)
            if state is not None:
                pool.prompts += state.prompts
                pool.eliciting += state.eliciting
                pool.by_rules += state.by_rules
        return self._evidence_of(pool)

    def intent(self, account_id: str) -> float | None:
        """The account's eliciting share scored at ``INTENT_SCALE`` instead of ``TRACES_SCALE`` (None without prompts)."""
        if self._waiting:
            self.flush()
        state = self.accounts.get(account_id)
        if state is None or state.prompts == 0:
            return None
        return _share_score(state) * confidence(state.eliciting, INTENT_SCALE)

    def _evidence_of(self, state: _State | None) -> Evidence | None:
        if state is None or state.prompts == 0:
            return None
        share = state.eliciting / state.prompts
        score = _share_score(state) * confidence(state.eliciting, TRACES_SCALE)
        detail = f"{state.eliciting} of {state.prompts} prompts ask for step-by-step or internal reasoning, or for grading ({share:.0%})"
        if state.eliciting > state.by_rules:
            detail += f"; {state.eliciting - state.by_rules} recognised by the wording classifier alone"
        return Evidence(self.name, score, detail,
                        numbers={"eliciting": state.eliciting, "prompts": state.prompts, "share": round(share, 4),
                                 "classifier_only": state.eliciting - state.by_rules})
