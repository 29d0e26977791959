"""Reasoning-trace elicitation: prompts that ask the model to write out its internal reasoning.

Intent, not phrases: a prompt is scored by which *concepts* co-occur in it,
each concept matched by a small multilingual lexicon of word stems — the
reasoning/thought concept, the step-by-step concept, the articulate/reveal
concept, the internal/hidden concept — plus grader/reward-model requests and
forced thinking tags. "Write out your internal reasoning step by step" and a
paraphrase in another language hit the same concepts. Benign prompts that use
one concept alone ("explain step by step how to bake bread") score low.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from distillguard.detect.base import Detector, Evidence, confidence, logistic, user_text
from distillguard.detect.textmatch import StemSearch

__all__ = ["ReasoningElicitation", "elicitation_score"]

_CONCEPTS = {
    "reasoning": r"reason|thought|thinking|\bthink|chain[- ]of[- ]thought|\bcot\b|rationale|denk|gedank|überleg|raisonn|réfléch|pensée|"
                 r"razon|piens|pensamiento|raciocín|pensament|ragionament|推理|思考|思路|想法|рассужд|мысл|размышл|考え|思考過程|추론|생각",
    "steps": r"step[- ]by[- ]step|each step|every step|one step at a time|intermediate|schritt|étape|paso a paso|cada paso|passo a passo|"
             r"passo dopo passo|一步一步|逐步|每一步|步骤|шаг за шагом|каждый шаг|一歩ずつ|段階|단계",
    "articulate": r"write (it )?out|spell(ing)? out|articulat|narrat|lay(ing)? out|show (me )?(your|every|all|each)|reveal|verbali[sz]|"
                  r"out loud|aloud|in detail|schreib|zeig|erklär.{0,20}laut|laut|écri|détaill|à voix haute|escrib|muestr|narra|descrev|"
                  r"写出|展示|列出|说出|распиш|покаж|опиш|書き出|示して|보여",
    "internal": r"internal|hidden|inner|private|behind (the|your)|interne|versteckt|innere|cach[ée]|intern[oa]|oculto|内部|隐藏|内心|"
                r"внутренн|скрыт|内部の|内なる",
    "grader": r"\bgrader\b|reward model|\bscore (the|this|each|following)|rate (the|this) (following )?(answer|response)|judge (the|this)|"
              r"evaluate (the|this) (answer|response)|bewerte|note (la|cette) réponse|califica",
    "tags": r"<\s*/?\s*(thinking|think|reasoning|scratchpad)\s*>|debug mode|developer mode|modo de depuración|mode débogage",
    "language": r"same language|language of the (question|user)|gleichen sprache|même langue|mismo idioma|同じ言語|同一语言|том же языке",
}
# A concept is touched when its regex matches the lower-cased text, tested as substring checks plus a few
# small regexes (see textmatch: ~4x faster than the regexes, identical results).
_SEARCHES = tuple((name, StemSearch(pattern)) for name, pattern in _CONCEPTS.items())


def elicitation_score(text: str) -> tuple[float, frozenset[str]]:
    """Score one prompt in [0, 1] and say which concepts it touched."""
    if not text:
        return 0.0, frozenset()
    lowered = text.lower()
    hits = frozenset([name for name, touches in _SEARCHES if touches(lowered)])
    if not hits:
        return 0.0, hits
    if "tags" in hits or "grader" in hits:
        return 0.9, hits
    companions = len(hits & {"steps", "articulate", "internal", "language"})
    if "reasoning" in hits and companions >= 1:
        return min(1.0, 0.7 + 0.1 * companions), hits
    if "steps" in hits and ("articulate" in hits or "internal" in hits):
        return 0.6, hits
    return 0.15, hits


@dataclass
class _State:
    prompts: int = 0
    eliciting: int = 0
    score_sum: float = 0.0


class ReasoningElicitation(Detector):
    name = "cot_elicitation"
    threshold = 0.6

    def __init__(self) -> None:
        self.accounts: dict[str, _State] = {}

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
        score, _ = elicitation_score(text + "\n" + system if system else text)
        state.prompts += 1
        state.score_sum += score
        if score >= self.threshold:
            state.eliciting += 1

    def evidence(self, account_id: str) -> Evidence | None:
        state = self.accounts.get(account_id)
        if state is None or state.prompts == 0:
            return None
        share = state.eliciting / state.prompts
        # Midpoint 8 %: benign users ask for step-by-step reasoning now and then, campaigns do it systematically.
        score = logistic(share, 0.08, 0.025) * confidence(state.eliciting, 4.0)
        return Evidence(
            self.name, score,
            f"{state.eliciting} of {state.prompts} prompts ask for step-by-step or internal reasoning ({share:.0%})",
            numbers={"eliciting": state.eliciting, "prompts": state.prompts, "share": round(share, 4)},
        )
