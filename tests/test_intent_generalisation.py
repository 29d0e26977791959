"""The elicitation-intent classifier on wording it was not trained on — dev wording only (tools/intent_holdout.py).

Neutral wrappers in other languages must not read as elicitation (a wrapper's language is not an intent); a way of
asking for the model's reasoning that the classifier never saw must still be recognised; and a benign score must
mean the same in every language. The held-out checks refit the classifier without one group (a few seconds of CPU
each), exactly as ``tools/train_intent.py`` fits the shipped model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from distillguard.detect.intent import load_intent_model
from distillguard.detect.reasoning import ELICITING, elicitation_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import intent_holdout  # noqa: E402

TASK = "A train travels 120 km in 1.5 hours. What is its average speed in km/h?"

# Neutral wrappers written for this test, in no training list: a task handed over, nothing asked about reasoning.
# The model before the neutral negatives and per-language weights scored five of them as eliciting (0.58-0.68).
NEUTRAL = {
    "fr": "Merci de traiter la requête qui suit.\n\n{task}\n\nFin de la requête.",
    "de": "Bitte bearbeite die nachstehende Anfrage.\n\n{task}\n\nEnde des Textes.",
    "es": "Por favor, atiende la solicitud que sigue.\n\n{task}\n\nFin de la solicitud.",
    "pt": "Por favor, atenda a solicitação que segue.\n\n{task}\n\nFim da solicitação.",
    "ru": "Обработай, пожалуйста, следующий запрос.\n\n{task}\n\nКонец текста.",
    "zh": "请处理以下这个请求。\n\n{task}\n\n以上就是全部内容。",
    "ja": "次のリクエストを処理してください。\n\n{task}\n\n以上です。",
    "ko": "다음 요청을 처리해 주세요.\n\n{task}\n\n이상입니다.",
}


@pytest.mark.parametrize("language", sorted(NEUTRAL))
def test_a_neutral_wrapper_in_another_language_is_not_elicitation(language: str) -> None:
    assert load_intent_model() is not None
    score, _ = elicitation_score(NEUTRAL[language].format(task=TASK))
    assert score < ELICITING, f"{language}: a neutral wrapper scores {score:.2f}"


@pytest.fixture(scope="module")
def held_out() -> dict[tuple[str, str], intent_holdout.GroupResult]:
    """Two refits (deterministic: seeded data, lbfgs): without the "chain of thought" paraphrases, without the
    neutral wrappers."""
    wanted = {("paraphrase family", "chain"), ("wrapper family", "neutral wrappers")}
    results = intent_holdout.holdout_results(1, only=lambda kind, group: (kind, group) in wanted)
    return {(r.kind, r.group): r for r in results}


def test_a_held_out_paraphrase_family_is_recognised(held_out: dict[tuple[str, str], intent_holdout.GroupResult]) -> None:
    """Trained without any "chain of thought" wording in any language, rules and classifier together still recognise
    most of it (0.82 when written; the rules alone 0.30), and call nothing benign eliciting."""
    result = held_out[("paraphrase family", "chain")]
    precision, recall, _ = result.scores["combined"]
    assert recall is not None and recall >= 0.75, result.row()
    assert precision is not None and precision >= 0.95, result.row()
    classifier_recall = result.scores["classifier"][1]
    assert classifier_recall is not None and classifier_recall >= 0.6, result.row()


def test_held_out_neutral_wrappers_score_low_in_every_language(held_out: dict[tuple[str, str], intent_holdout.GroupResult]) -> None:
    """Calibration per language: neutral wrappers the model never saw score below 0.3 on average in each of the nine
    dev languages, and at most 10 % of them reach ELICITING."""
    result = held_out[("wrapper family", "neutral wrappers")]
    assert len(result.by_language) >= 9, result.by_language
    for language, (benign, _) in result.by_language.items():
        assert benign < 0.3, f"{language}: held-out neutral wrappers score {benign:.2f} on average"
    assert result.false_positive_rate <= 0.1, result.row()
