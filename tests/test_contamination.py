"""Detection must not know the test or hold-out wording: the guard that keeps those `robust` numbers a measurement.

The test wording (src/distillguard/sim/wording/test/wording.yaml) was written as an outside red team would, the
hold-out wording (…/holdout/wording.yaml) later and fresh, in languages neither other split has; detection and the
intent classifier's trainer may learn from the dev wording and from language-general methods only. This file reads
both to check that — nothing under src/distillguard/detect reads them. Every check runs once per guarded split.

Three checks, over every string literal of every module in src/distillguard/detect, the pieces of those
literals (word lists split on whitespace, regexes split into their alternatives) and every sentence the
trainer (tools/train_intent.py with tools/intent_wording.py) builds:

* no test phrase, however short ("ga door"), appears in them on word boundaries;
* no multi-word or non-ASCII piece of them appears in a test phrase unless the dev wording has it too
  (a stem like "passo dopo passo" is test-language knowledge; "step by step" is in the dev wording);
* no word of a language only the guarded split has (test: Italian, Dutch, Polish, Turkish, Arabic, Hindi,
  Vietnamese, Indonesian; holdout: Swahili, Thai, Hebrew, Greek, Ukrainian, Persian, Bengali, Tagalog, Czech,
  Swedish, Hungarian — in its elicitation, follow-ups, frames …) appears in them, nor a stem of five or more
  letters that begins only such words, unless the dev wording has it.

The one exemption: ``PUBLIC_WRAPPERS`` and ``PUBLIC_SYSTEM_PROMPTS`` in detect/attribution.py, published prompt
wrappers cited there (Kojima et al. 2022, Zhou et al. 2022, Yang et al. 2023) and stock SDK/model system prompts,
that legitimate users and some campaigns use in every split (each split also has public wording detection does not list).
"""

from __future__ import annotations

import ast
import random
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from distillguard.sim.splits import load_wording, wording_strings

ROOT = Path(__file__).resolve().parent.parent
DETECT = ROOT / "src" / "distillguard" / "detect"
TOOLS = ROOT / "tools"
# A "word": a run of characters that are not space, punctuation or regex syntax (keeps Devanagari vowel signs).
_WORD = re.compile(r"[^\s.,;:!?\"'()\[\]{}|\\/<>*+^$=…«»“”。，、？！：；（）·\-–—0-9_%#@&~`]+")
# Words of test-only languages that are also ordinary words of a dev language (en "per", fr "il", es "los" …).
_ALSO_DEV_LANGUAGE_WORDS = frozenset({"per", "il", "los", "modo", "un", "de", "la", "e", "a", "o", "me", "se", "no", "en",
                                      # hold-out languages: de "den", ru "до", and "ko", the ISO code of Korean
                                      "den", "до", "ko"})
_TRIM = " .,:;!?¿¡\"'“”«»()[]{}…。？！"


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip(_TRIM)


def _public_wrappers() -> set[str]:
    from distillguard.detect.attribution import PUBLIC_SYSTEM_PROMPTS, PUBLIC_WRAPPERS

    return {_norm(w) for w in (*PUBLIC_WRAPPERS, *PUBLIC_SYSTEM_PROMPTS)}


def _literals(path: Path) -> Iterator[str]:
    """Every string constant of a module except docstrings (prose about the code, not data it uses)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


def _is_word_list(literal: str) -> bool:
    """A long run of words without sentence punctuation: a lexicon, whose neighbours are not phrases."""
    return len(literal.split()) > 12 and not re.search(r"[.!?;:,]\s", literal)


def _pieces(literal: str) -> set[str]:
    """The literal (unless a word list), its regex alternatives and groups, and its single words, normalised."""
    out = {*re.split(r"[|()\[\]?*+\\\n]", literal), *literal.split()}
    if _is_word_list(literal):
        out = set(literal.split())
    else:
        out.add(literal)
    return {p for p in (_norm(x) for x in out) if len(p) >= 2}


def _trainer_sentences() -> list[str]:
    sys.path.insert(0, str(TOOLS))
    try:
        import intent_wording
    finally:
        sys.path.remove(str(TOOLS))
    sentences = intent_wording.intent_sentences(random.Random(1), per_language=10_000) + intent_wording.hard_negatives()
    return sentences


def _sources() -> dict[str, set[str]]:
    """file name -> normalised pieces of its literals (detect/*.py, tools/intent_wording.py, tools/train_intent.py)."""
    files = sorted(DETECT.glob("*.py")) + [TOOLS / "intent_wording.py", TOOLS / "train_intent.py"]
    out = {path.name: {p for lit in _literals(path) for p in _pieces(lit)} for path in files}
    out["trainer sentences"] = {_norm(s) for s in _trainer_sentences()}
    return out


@pytest.fixture(scope="module")
def sources() -> dict[str, set[str]]:
    return _sources()


GUARDED = ("test", "holdout")


@pytest.fixture(scope="module", params=GUARDED)
def splits(request: pytest.FixtureRequest) -> tuple[set[str], set[str], str]:
    """(the guarded split's phrases, the dev phrases, the guarded split's name)."""

    def phrases(split: str) -> set[str]:
        return {p for p in (_norm(x) for x in wording_strings(load_wording(split))) if _WORD.search(p)}

    return phrases(request.param), phrases("dev"), request.param


def _contains(haystack: str, needle: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", haystack) is not None


def test_no_test_phrase_is_in_detection_or_the_trainer(sources: dict[str, set[str]], splits: tuple[set[str], set[str], str]) -> None:
    test, _, split = splits
    assert len(test) > 150 and any(len(p.split()) <= 2 for p in test)  # short phrases are checked too
    public = _public_wrappers()
    found = {name: sorted({t for t in test for p in pieces if p not in public and _contains(p, t)})[:5]
             for name, pieces in sources.items()}
    assert not {k: v for k, v in found.items() if v}, f"{split}-split phrases in detection code or training data: {found}"


def test_no_phrase_of_detection_is_test_only_wording(sources: dict[str, set[str]], splits: tuple[set[str], set[str], str]) -> None:
    test, dev, split = splits
    test_text, dev_text = "\n".join(test), "\n".join(dev)
    public = _public_wrappers()
    found: dict[str, list[str]] = {}
    for name, pieces in sources.items():
        if name == "trainer sentences":
            continue  # whole sentences: the first check covers them; their pieces are the literals already checked
        bad = sorted(p for p in pieces
                     if (len(p.split()) >= 2 or (not p.isascii() and len(p) >= 3)) and p not in public
                     and _contains(test_text, p) and not _contains(dev_text, p))
        if bad:
            found[name] = bad[:8]
    assert not found, f"detection strings that only the {split} wording has (dev has none of them): {found}"


def test_no_word_of_a_test_only_language(sources: dict[str, set[str]], splits: tuple[set[str], set[str], str]) -> None:
    _, dev, split = splits
    test_wording, dev_wording = load_wording(split), load_wording("dev")
    dev_words = {w for p in dev for w in _WORD.findall(p)}
    dev_languages = set(dev_wording.elicitation)
    test_only = set(test_wording.elicitation) - dev_languages
    # The languages docs/evaluation.md names as only the guarded split's.
    assert ({"it", "pl", "vi", "hi"} if split == "test" else {"sw", "th", "he", "el", "uk", "cs", "sv", "hu"}) <= test_only
    words = {w for table in ("elicitation", "frames", "openers", "closers", "followups", "learner_asks")
             for lang, phrases in getattr(test_wording, table).items() if lang in test_only
             for p in phrases for w in _WORD.findall(_norm(p))}
    # Minus the words the dev wording has, and those the test wording also uses in a language dev has ("per", "il").
    shared = {w for table in ("elicitation", "frames", "openers", "closers", "followups", "learner_asks")
              for lang, phrases in getattr(test_wording, table).items() if lang not in test_only
              for p in phrases for w in _WORD.findall(_norm(p))}
    words -= dev_words | shared | _ALSO_DEV_LANGUAGE_WORDS
    words = {w for w in words if len(w) >= 2}
    assert len(words) > 50
    known = dev_words | shared
    found = {}
    for name, pieces in sources.items():
        used = {w for p in pieces for w in _WORD.findall(p)}
        # Whole words, and stems (≥ 5 letters, as the elicitation rules use: "ragionament") that begin only
        # test-only words.
        stems = {w for w in used if len(w) >= 5 and any(t.startswith(w) for t in words)
                 and not any(k.startswith(w) for k in known)}
        if hit := sorted((used & words) | stems):
            found[name] = hit[:10]
    assert not found, f"words of {split}-only languages in detection code or training data: {found}"


def test_the_intent_model_records_dev_only_training_data() -> None:
    with np.load(DETECT / "intent_model.npz") as data:
        assert "training" in data.files, "intent_model.npz has no training metadata: retrain with tools/train_intent.py"
        training = str(data["training"])
    assert "split=dev" in training and "split=test" not in training and "wording/test" not in training
    assert "split=holdout" not in training and "wording/holdout" not in training
    languages = re.search(r"languages=([a-z,]+)", training)
    assert languages is not None
    assert set(languages.group(1).split(",")) <= set(load_wording("dev").elicitation) | {"en"}
