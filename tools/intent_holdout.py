"""How the elicitation-intent score generalises to wording it was not trained on, measured on dev wording only.

    PYTHONPATH=src .venv/bin/python tools/intent_holdout.py [--seed 1] [--json FILE]

The classifier is refitted once per held-out group with exactly the recipe of ``tools/train_intent.py``
(:func:`train_intent.fit` over :func:`train_intent.dataset`), on every training sentence except the group's, and
then scores the group's sentences, each wrapped three times around dev tasks as the trainer wraps them:

* **language** — every sentence (eliciting and benign) of one language is held out: how a language the model
  has never read is scored;
* **paraphrase family** — every eliciting sentence of one family (:func:`train_intent.paraphrase_family`: "chain
  of thought", "hidden", "intermediate thoughts" …, in all languages) is held out and scored beside a fixed 15 %
  of the benign sentences that no fold trains on: a way of asking the model has never seen;
* **wrapper family** — every benign sentence of one family (frames, openers and closers, system prompts, learners'
  asks, neutral wrappers in other languages …) is held out and scored beside a fixed 15 % of the eliciting
  sentences: a neutral wording the model has never seen.

For each group: precision and recall at :data:`~distillguard.detect.reasoning.ELICITING` and ROC AUC of the rules
(:func:`~distillguard.detect.reasoning.rule_score`, not trained, so the same in every fold), the classifier, and
their combination (the larger of the two, as :func:`~distillguard.detect.reasoning.elicitation_score`); and, per
held-out language, the mean classifier score of its benign and its eliciting texts (calibration: whether a score
means the same in a language the model has not seen). The test and hold-out wording are never read.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_intent  # noqa: E402
from train_intent import Sentence  # noqa: E402

from distillguard.detect.reasoning import ELICITING, rule_score  # noqa: E402

__all__ = ["GroupResult", "holdout_results", "report"]

HELD_SHARE = 0.15


@dataclass(frozen=True)
class GroupResult:
    kind: str  # "language", "paraphrase family", "wrapper family"
    group: str
    eliciting: int  # texts scored (each sentence wrapped three times)
    benign: int
    scores: dict[str, tuple[float | None, float | None, float | None]]  # reader -> (precision, recall, AUC)
    mean_benign: float  # the classifier's mean score of the benign texts
    mean_eliciting: float | None
    false_positive_rate: float  # classifier, at ELICITING
    by_language: dict[str, tuple[float, float | None]]  # language -> the classifier's mean score (benign, eliciting)

    def row(self) -> str:
        def show(value: float | None) -> str:
            return "–" if value is None else f"{value:.2f}"

        cells = [" / ".join(show(v) for v in self.scores[reader]) for reader in ("rules", "classifier", "combined")]
        return (f"| {self.kind} | {self.group} | {self.eliciting} | {self.benign} | " + " | ".join(cells)
                + f" | {self.false_positive_rate:.2f} | {self.mean_benign:.2f} | {show(self.mean_eliciting)} |")


def _metrics(scores: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None, float | None]:
    predicted = scores >= ELICITING
    positives = int(labels.sum())
    precision = float((predicted & (labels == 1)).sum() / predicted.sum()) if predicted.any() else None
    recall = float((predicted & (labels == 1)).sum() / positives) if positives else None
    auc = float(roc_auc_score(labels, scores)) if 0 < positives < len(labels) else None
    return precision, recall, auc


def _evaluate(kind: str, group: str, train: list[Sentence], test: list[Sentence], seed: int) -> GroupResult:
    texts, labels, languages = train_intent.dataset(seed, train)
    model = train_intent.fit(texts, labels, languages)
    test_texts, test_labels, test_languages = train_intent.dataset(seed + 1, test, background=False)
    y = np.array(test_labels)
    lang = np.array(test_languages)
    classifier = model.predict_proba(train_intent.matrix(test_texts))[:, 1]
    rules = np.array([rule_score(t)[0] for t in test_texts])
    combined = np.maximum(rules, classifier)
    return GroupResult(kind, group, int(y.sum()), int((y == 0).sum()),
                       {"rules": _metrics(rules, y), "classifier": _metrics(classifier, y), "combined": _metrics(combined, y)},
                       float(classifier[y == 0].mean()) if (y == 0).any() else float("nan"),
                       float(classifier[y == 1].mean()) if y.any() else None,
                       float((classifier[y == 0] >= ELICITING).mean()) if (y == 0).any() else float("nan"),
                       {language: (float(classifier[(lang == language) & (y == 0)].mean()),
                                   float(classifier[mask].mean()) if (mask := (lang == language) & (y == 1)).any() else None)
                        for language in sorted(set(test_languages)) if ((lang == language) & (y == 0)).any()})


def _unique(sentences: list[Sentence]) -> list[Sentence]:
    """Each sentence once (the trainer repeats public wrappers; a held-out group is scored on distinct wording)."""
    return list(dict.fromkeys(sentences))


def holdout_results(seed: int = 1, only: Callable[[str, str], bool] | None = None) -> list[GroupResult]:
    """One :class:`GroupResult` per held-out language, paraphrase family and wrapper family (``only(kind, group)``
    picks some of them)."""
    sentences = train_intent.training_sentences(seed)
    rng = random.Random(seed)
    distinct = _unique(sentences)
    held = {s for s in distinct if rng.random() < HELD_SHARE}
    held_benign = [s for s in distinct if s in held and s.label == 0]
    held_eliciting = [s for s in distinct if s in held and s.label == 1]
    results: list[GroupResult] = []
    languages = sorted({s.language for s in sentences if s.label == 1})
    for language in languages:
        if only is None or only("language", language):
            results.append(_evaluate("language", language, [s for s in sentences if s.language != language],
                                     _unique([s for s in sentences if s.language == language]), seed))
    for family in sorted({s.family for s in sentences if s.label == 1}):
        if only is None or only("paraphrase family", family):
            train = [s for s in sentences if s not in held and not (s.label == 1 and s.family == family)]
            test = _unique([s for s in sentences if s.label == 1 and s.family == family]) + held_benign
            results.append(_evaluate("paraphrase family", family, train, test, seed))
    for family in sorted({s.family for s in sentences if s.label == 0}):
        if only is None or only("wrapper family", family):
            train = [s for s in sentences if s not in held and not (s.label == 0 and s.family == family)]
            test = _unique([s for s in sentences if s.label == 0 and s.family == family]) + held_eliciting
            results.append(_evaluate("wrapper family", family, train, test, seed))
    return results


HEADER = ("| held out | group | eliciting texts | benign texts | rules P / R / AUC | classifier P / R / AUC | "
          "combined P / R / AUC | classifier FPR | mean score, benign | mean score, eliciting |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def report(seed: int = 1, json_path: str | None = None) -> list[GroupResult]:
    results = holdout_results(seed)
    print(HEADER)
    for result in results:
        print(result.row())
    if json_path:
        Path(json_path).write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    report(args.seed, args.json)


if __name__ == "__main__":
    main()
