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
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
import intent_wording  # noqa: E402

from distillguard.detect.intent import NGRAMS, ngram_buckets, prepare  # noqa: E402
from distillguard.sim.corpora import PromptPools  # noqa: E402
from distillguard.sim.splits import load_wording  # noqa: E402

BITS = 18
PUBLIC_WRAPPER_REPEAT = 20
OUT = Path(__file__).resolve().parents[1] / "src" / "distillguard" / "detect" / "intent_model.npz"


def sim_dev_wording() -> tuple[list[str], list[str]]:
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
    positives = [p for phrases in wording.elicitation.values() for p in phrases] + list(wording.graders)
    # Evaluation jobs send one public wrapper around hundreds of benchmark items (maths, multiple choice, code):
    # three samples of each wrapper were too few against ~1,800 eliciting texts, and the wrapper around a
    # multiple-choice item scored as eliciting. Each public wrapper is sampled PUBLIC_WRAPPER_REPEAT times.
    negatives = PUBLIC_WRAPPER_REPEAT * list(wording.public_cot_wrappers) + list(wording.learner_followups)
    negatives += list(wording.coding_followups)
    negatives += list(wording.short_wrappers) + list(wording.app_systems) + list(wording.webapp_systems) + list(wording.campaign_systems)
    negatives += list(wording.public_systems) + list(wording.agent_systems) + list(wording.agent_steps) + list(wording.system_suffixes)
    for table in (wording.learner_asks, wording.frames, wording.openers, wording.closers, wording.followups):
        negatives += [p for phrases in table.values() for p in phrases]
    return positives, negatives


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


def dataset(seed: int, positives: list[str], negatives: list[str]) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    pools = PromptPools.for_split("dev")
    tasks = [t for pool in pools.sweeps.values() for t in pool]
    openers = [c[0] for c in pools.conversations if c]
    texts: list[str] = []
    labels: list[int] = []
    for sentence in positives:
        for _ in range(3):
            texts.append(wrap(rng, sentence, tasks))
            labels.append(1)
    for sentence in negatives:
        for _ in range(3):
            texts.append(wrap(rng, sentence, tasks + openers))
            labels.append(0)
    for text in rng.sample(tasks, min(3000, len(tasks))) + rng.sample(openers, min(2000, len(openers))) + list(pools.coding):
        texts.append(text)
        labels.append(0)
    return texts, labels


def matrix(texts: list[str]) -> sparse.csr_matrix:
    """Exactly the features IntentModel.logits scores: n-gram counts divided by the square root of their sum."""
    owners, buckets = ngram_buckets([prepare(t) for t in texts], BITS, NGRAMS)
    counts = np.bincount(owners, minlength=len(texts))
    values = 1.0 / np.sqrt(np.maximum(counts[owners], 1))
    return sparse.csr_matrix((values, (owners, buckets)), shape=(len(texts), 1 << BITS))


def fit(texts: list[str], labels: list[int]) -> LogisticRegression:
    model = LogisticRegression(C=4.0, class_weight="balanced", max_iter=2000)
    model.fit(matrix(texts), np.array(labels))
    return model


def leave_one_language_out(seed: int) -> None:
    rng = random.Random(seed)
    negatives = intent_wording.hard_negatives()
    for language in intent_wording._GRAMMAR:
        kept = {k: v for k, v in intent_wording._GRAMMAR.items() if k != language}
        saved = intent_wording._GRAMMAR
        intent_wording._GRAMMAR = kept
        train_pos = intent_wording.intent_sentences(random.Random(seed))
        intent_wording._GRAMMAR = {language: saved[language]}
        test_pos = intent_wording.intent_sentences(random.Random(seed + 1), per_language=40)[:40]
        intent_wording._GRAMMAR = saved
        texts, labels = dataset(seed, train_pos, negatives)
        model = fit(texts, labels)
        probabilities = model.predict_proba(matrix(test_pos))[:, 1]
        print(f"  held-out language {language}: {np.mean(probabilities >= 0.5):.0%} of {len(test_pos)} eliciting sentences recognised")
    del rng


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--check", action="store_true", help="also print a leave-one-language-out estimate")
    args = parser.parse_args()
    sim_pos, sim_neg = sim_dev_wording()
    positives = intent_wording.intent_sentences(random.Random(args.seed)) + sim_pos
    negatives = intent_wording.hard_negatives() + sim_neg
    texts, labels = dataset(args.seed, positives, negatives)
    model = fit(texts, labels)
    weights = model.coef_[0].astype(np.float16)
    bias = float(model.intercept_[0])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256("\n\x00".join(f"{label}\t{text}" for text, label in zip(texts, labels, strict=True)).encode()).hexdigest()
    languages = sorted(set(intent_wording._GRAMMAR) | set(load_wording("dev").elicitation))
    training = (f"split=dev; languages={','.join(languages)}; sources=tools/intent_wording.py grammar and hard negatives, "
                f"sim/wording/dev/wording.yaml, PromptPools.for_split('dev'); positives={sum(labels)}; "
                f"negatives={len(labels) - sum(labels)}; seed={args.seed}; sha256={digest}")
    np.savez_compressed(OUT, weights=weights, bias=np.float64(bias), bits=np.int64(BITS), ngrams=np.array(NGRAMS),
                        training=np.array(training))
    predicted = model.predict(matrix(texts))
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes): {sum(labels)} eliciting and {len(labels) - sum(labels)} benign texts "
          f"({len(sim_pos)} + {len(sim_neg)} from the simulator's dev wording); training accuracy {np.mean(predicted == np.array(labels)):.3f}\n{training}")
    if args.check:
        leave_one_language_out(args.seed)


if __name__ == "__main__":
    main()
