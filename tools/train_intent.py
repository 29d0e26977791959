"""Fit the elicitation-intent classifier and write src/distillguard/detect/intent_model.npz.

    PYTHONPATH=src .venv/bin/python tools/train_intent.py [--check]

Training text (all of it development material; nothing from a held-out or test split):

* positives: the hand-written intent grammar in ``tools/intent_wording.py`` (the dev split's nine
  languages: en de fr es pt ru zh ja ko — none of the test split's own languages), plus the
  simulator's *dev* elicitation and grader wording (``sim/wording/dev/wording.yaml``), each alone and
  wrapped around tasks from the dev split of the prompt pools;
* negatives: the same tasks alone or in neutral frames, benign conversation openers and coding requests,
  and the hard negatives of ``intent_wording`` (learners' step-by-step requests, evaluation wrappers).

The model file records what it was trained on (``training``: split, languages, sources, counts, seed and
a SHA-256 of the training texts); tests/test_contamination.py checks that it says ``split=dev`` and names
dev languages only, and that no test-split phrase or test-only-language word is in the trainer's inputs.

The features are exactly those of :func:`distillguard.detect.intent.ngram_buckets`. ``--check`` also
reports a leave-one-language-out estimate (trained without a language's grammar, scored on it), the honest
number for wording in a language the model has not seen. Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
import intent_wording  # noqa: E402

from distillguard.detect.intent import NGRAMS, ngram_buckets, prepare  # noqa: E402
from distillguard.detect.langid import guess_language  # noqa: E402
from distillguard.sim.corpora import PromptPools  # noqa: E402
from distillguard.sim.splits import load_wording  # noqa: E402

BITS = 18
PUBLIC_WRAPPER_REPEAT = 20
PER_LANGUAGE = 300  # eliciting sentences drawn from each language's grammar (60 before: see ELICITING_SHARE)
OUT = Path(__file__).resolve().parents[1] / "src" / "distillguard" / "detect" / "intent_model.npz"


@dataclass(frozen=True)
class Sentence:
    """One piece of training wording: its label (1 eliciting), language, and family — a paraphrase family of the
    eliciting wording (:func:`paraphrase_family`) or a wrapper family of the benign wording (frames, systems …).
    ``tools/intent_holdout.py`` holds out one language or family at a time."""

    text: str
    label: int
    language: str
    family: str


# Paraphrase families of the eliciting wording, by what the sentence names as the thing to write out (first match
# wins): holding one out removes that way of saying it in every language.
_FAMILIES = (
    ("tags", ("<think", "<reason", "<scratch", "scratchpad", "developer mode", "tags")),
    ("grader", ("grader", "reward", "score", "grade", "judge", "evaluat", "bewert", "évaluat", "note la", "califica",
                "avaliador", "nota de", "打分", "评分", "採点", "оцен")),
    ("language", ("same language", "language of", "sprache", "langue", "idioma", "语言", "言語", "языке")),
    ("chain", ("chain", "kette", "chaîne", "cadena", "cadeia", "цепочк", "思维链", "連鎖", "흐름")),
    ("hidden", ("hidden", "private", "verborgen", "caché", "oculto", "скрыт", "隐藏", "隠れ", "숨겨진")),
    ("intermediate", ("intermediate", "zwischen", "intermédiaire", "intermedi", "промежуточн", "中间", "途中", "중간",
                      "deduction", "each step")),
    ("behind", ("behind", "hinter", "derrière", "detrás", "por trás", "стоящ", "背后", "背後", "뒤에", "imagine",
                "reconstruct", "led you", "produced")),
    ("monologue", ("monolog", "monólogo", "selbstgespräch", "独白")),
    ("thought process", ("thought process", "thinking", "denkprozess", "denkweg", "processus", "proceso", "processo",
                         "ход мыслей", "思考过程", "思考過程", "사고 과정", "thought", "réflexion", "reflexión", "reflexão")),
)


def paraphrase_family(text: str) -> str:
    lowered = text.lower()
    for family, stems in _FAMILIES:
        if any(stem in lowered for stem in stems):
            return family
    return "internal reasoning"


def _language(language: str, text: str) -> str:
    return language or guess_language(text) or "en"


def sim_dev_wording() -> tuple[list[Sentence], list[Sentence]]:
    """(eliciting, benign) templates from the simulator's *dev* wording (``load_wording("dev")``; never "test").

    Eliciting: the reasoning-elicitation paraphrases and the grader prompts. Benign: everything else a simulated
    actor says — public chain-of-thought wrappers of evaluation jobs, learners' asks and follow-ups, campaign
    frames, openers, closers and short wrappers (neutral on their own), generic follow-ups, system prompts.
    Early adopters' probes ("show me how you reasoned") are left out: their intent *is* the eliciting one.
    """
    try:
        wording = load_wording("dev")
    except (FileNotFoundError, ModuleNotFoundError, ValueError):
        return [], []

    def listed(family: str, texts: list[str], label: int = 0) -> list[Sentence]:
        return [Sentence(t, label, _language("", t), family) for t in texts]

    def by_language(family: str, table: dict[str, list[str]], label: int = 0) -> list[Sentence]:
        return [Sentence(t, label, lang, family if label == 0 else paraphrase_family(t)) for lang, ts in table.items() for t in ts]

    positives = by_language("", wording.elicitation, 1) + [Sentence(t, 1, _language("", t), "grader") for t in wording.graders]
    # Evaluation jobs send one public wrapper around hundreds of benchmark items (maths, multiple choice, code):
    # three samples of each wrapper were too few against ~1,800 eliciting texts, and the wrapper around a
    # multiple-choice item scored as eliciting. Each public wrapper is sampled PUBLIC_WRAPPER_REPEAT times.
    negatives = PUBLIC_WRAPPER_REPEAT * listed("public wrappers", wording.public_cot_wrappers)
    negatives += listed("learner", wording.learner_followups) + listed("follow-ups", wording.coding_followups)
    negatives += listed("short wrappers", wording.short_wrappers)
    negatives += listed("system prompts", [*wording.app_systems, *wording.webapp_systems, *wording.campaign_systems,
                                           *wording.public_systems, *wording.agent_systems])
    negatives += listed("agent steps", wording.agent_steps) + listed("system prompts", wording.system_suffixes)
    for family, table in (("learner", wording.learner_asks), ("frames", wording.frames), ("openers and closers", wording.openers),
                          ("openers and closers", wording.closers), ("follow-ups", wording.followups)):
        negatives += by_language(family, table)
    return positives, negatives


def training_sentences(seed: int) -> list[Sentence]:
    """Everything the classifier learns from, eliciting first (the order :func:`dataset` samples in)."""
    sim_pos, sim_neg = sim_dev_wording()
    positives = [Sentence(t, 1, _language(lang, t), paraphrase_family(t))
                 for lang, t in intent_wording.intent_sentences_by_language(random.Random(seed), PER_LANGUAGE)] + sim_pos
    negatives = [Sentence(t, 0, _language(lang, t), family)
                 for family, group in intent_wording.hard_negative_groups().items() for lang, t in group] + sim_neg
    return positives + negatives


def wrap(rng: random.Random, sentence: str, tasks: list[str]) -> str:
    """A sentence as a prompt: alone, before or after a task, or filled in when it is a template with {task}."""
    task = rng.choice(tasks)
    if "{task}" in sentence or "{answer}" in sentence:
        return sentence.replace("{task}", task).replace("{answer}", rng.choice(tasks)[:300]).replace("{{}}", "{}")
    roll = rng.random()
    if roll < 0.25:
        return sentence
    if roll < 0.6:
        return f"{task}\n\n{sentence}"
    return f"{sentence}\n\n{task}"


def dataset(seed: int, sentences: list[Sentence], background: bool = True) -> tuple[list[str], list[int], list[str]]:
    """(texts, labels, languages): each sentence three times around dev tasks, plus (``background``) dev tasks,
    conversation openers and coding requests alone as benign English text."""
    rng = random.Random(seed)
    pools = PromptPools.for_split("dev")
    tasks = [t for pool in pools.sweeps.values() for t in pool]
    openers = [c[0] for c in pools.conversations if c]
    texts: list[str] = []
    labels: list[int] = []
    languages: list[str] = []
    for sentence in sentences:
        for _ in range(3):
            texts.append(wrap(rng, sentence.text, tasks if sentence.label else tasks + openers))
            labels.append(sentence.label)
            languages.append(sentence.language)
    if background:
        for text in rng.sample(tasks, min(3000, len(tasks))) + rng.sample(openers, min(2000, len(openers))) + list(pools.coding):
            texts.append(text)
            labels.append(0)
            languages.append("en")
    return texts, labels, languages


def matrix(texts: list[str]) -> sparse.csr_matrix:
    """Exactly the features IntentModel.logits scores: n-gram counts divided by the square root of their sum."""
    owners, buckets = ngram_buckets([prepare(t) for t in texts], BITS, NGRAMS)
    counts = np.bincount(owners, minlength=len(texts))
    values = 1.0 / np.sqrt(np.maximum(counts[owners], 1))
    return sparse.csr_matrix((values, (owners, buckets)), shape=(len(texts), 1 << BITS))


# The weight of eliciting text in every language (the rest is benign). The former class-balanced fit gave English
# about 0.15 (its 255 eliciting texts against 3,200 benign ones) and every other language about 0.8. Chosen on dev
# seed 2 (share of prompts called eliciting, per population and campaign) between 0.15, 0.3 and 0.5: at 0.5 benign
# English populations' share rose from 0.0-0.7 % to 0.2-2.1 % and a campaign that elicits nothing reached 2.5 %; at
# 0.15 the grader and imitating campaigns lost a sixth of the prompts recognised before; 0.3 kept both near the old
# model's shares while neutral wrappers in other languages fell below 0.25.
ELICITING_SHARE = 0.3


def language_balanced_weights(labels: list[int], languages: list[str], share: float = ELICITING_SHARE) -> np.ndarray:
    """Sample weights under which, in every language, eliciting text carries ``share`` of the language's weight
    (each language keeps its total weight).

    Most non-English training text is eliciting (the grammar has ~60 sentences a language, the neutral wording a
    dozen), so with weights by class alone a language's own n-grams ("der", "la ", "です") carried a positive
    weight and a neutral wrapper in that language read as eliciting (0.6-0.7 for a French, Spanish, Portuguese,
    Japanese or Korean "handle the request below … end of request"). With the same eliciting share in each
    language, a language's common n-grams say nothing about the label, and a score means the same in every
    language the model was trained on: the probability that the text is eliciting when, in its language, 30 % of
    such texts are. A language with one class only keeps weight 1."""
    y = np.array(labels)
    lang = np.array(languages)
    weights = np.ones(len(y))
    for language in np.unique(lang):
        inside = lang == language
        counts = np.bincount(y[inside], minlength=2)
        if counts.min() == 0:
            continue
        target = np.where(y[inside] == 1, share, 1.0 - share)
        weights[inside] = inside.sum() * target / counts[y[inside]]
    return weights * (len(y) / weights.sum())


def fit(texts: list[str], labels: list[int], languages: list[str]) -> LogisticRegression:
    model = LogisticRegression(C=4.0, max_iter=2000)
    model.fit(matrix(texts), np.array(labels), sample_weight=language_balanced_weights(labels, languages))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--check", action="store_true", help="also print the leave-one-group-out table (tools/intent_holdout.py)")
    args = parser.parse_args()
    sentences = training_sentences(args.seed)
    texts, labels, languages = dataset(args.seed, sentences)
    model = fit(texts, labels, languages)
    weights = model.coef_[0].astype(np.float16)
    bias = float(model.intercept_[0])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256("\n\x00".join(f"{label}\t{text}" for text, label in zip(texts, labels, strict=True)).encode()).hexdigest()
    trained_languages = sorted(set(intent_wording._GRAMMAR) | set(load_wording("dev").elicitation))
    training = (f"split=dev; languages={','.join(trained_languages)}; sources=tools/intent_wording.py grammar and hard negatives, "
                f"sim/wording/dev/wording.yaml, PromptPools.for_split('dev'); positives={sum(labels)}; "
                f"negatives={len(labels) - sum(labels)}; seed={args.seed}; sha256={digest}")
    np.savez_compressed(OUT, weights=weights, bias=np.float64(bias), bits=np.int64(BITS), ngrams=np.array(NGRAMS),
                        training=np.array(training))
    predicted = model.predict(matrix(texts))
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes): {sum(labels)} eliciting and {len(labels) - sum(labels)} benign texts "
          f"({len(sentences)} sentences); training accuracy {np.mean(predicted == np.array(labels)):.3f}\n{training}")
    if args.check:
        import intent_holdout

        intent_holdout.report(args.seed)


if __name__ == "__main__":
    main()
