"""A cheap guess of a prompt's language: writing system first, then common function words.

Used for the *mix* of languages in an account's prompts (a relay serving the
world gets many; a person or an office one or two), not for anything that
needs a precise answer per prompt. It costs a few microseconds: a scan over
at most 300 characters and set lookups on at most 40 words. A maintained
identifier (lingua) is more accurate, but loading its models costs hundreds of
MB and tens of microseconds per prompt in every scorer process, which the
online scorer's budget does not allow for a feature that only needs the mix.

Nothing here is specific to the languages of the simulator's held-out split:
any non-Latin writing system is told apart by its Unicode script name (the
first word of the characters' names: ``ARABIC``, ``DEVANAGARI``, ``THAI``,
``HEBREW`` …; kana, hangul, han and Cyrillic are reported as ``ja``, ``ko``,
``zh``, ``ru``), and Latin-script text by the function words of the
development split's Latin-script languages (en, de, fr, es, pt). Latin text in
any other language is ``None`` (unknown), which does not add to the mix.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["guess_language"]

# Unicode script (first word of a character's name) -> the code reported; other scripts are reported by name.
_SCRIPT_CODES = {"HIRAGANA": "ja", "KATAKANA": "ja", "HANGUL": "ko", "CJK": "zh", "CYRILLIC": "ru"}
_NOT_A_SCRIPT = frozenset({"LATIN", "DIGIT", "FULLWIDTH", "HALFWIDTH", "COMBINING", "MODIFIER", "SUPERSCRIPT", "SUBSCRIPT"})
_FUNCTION_WORDS = {
    "en": "the and is are of to in that what how you your with for this it can please",
    "de": "der die das und ist nicht ich du sie mit für ein eine wie was bitte auf den dem zu",
    "fr": "le la les et est une des pour que qui avec dans vous tu pas comment quoi du au",
    "es": "el la los las y es una para que con por como qué cómo del se tu usted lo",
    "pt": "o os as e é um uma para que com por como não do da você seu sua em",
}
_WORDS = {lang: frozenset(words.split()) for lang, words in _FUNCTION_WORDS.items()}
_WORD = re.compile(r"[^\W\d_]+")


def _script(sample: str) -> str | None:
    """The most frequent non-Latin writing system among the letters of ``sample`` (≥ 3 of them), kana first."""
    counts: dict[str, int] = {}
    for ch in sample:
        if ch.isascii() or not (ch.isalpha() or unicodedata.category(ch) in ("Mn", "Mc")):
            continue
        script = unicodedata.name(ch, "").split(" ", 1)[0]
        if script and script not in _NOT_A_SCRIPT:
            counts[script] = counts.get(script, 0) + 1
    if counts.get("HIRAGANA") or counts.get("KATAKANA"):
        return "ja"  # kana with kanji is Japanese, not Chinese
    if not counts:
        return None
    script, count = max(counts.items(), key=lambda kv: kv[1])
    return _SCRIPT_CODES.get(script, script.lower()) if count >= 3 else None


def guess_language(text: str) -> str | None:
    """An ISO 639-1 code (en de fr es pt ja ko zh ru), another script's name, or None when there is too little to tell."""
    sample = text[:300]
    if not sample.isascii() and (script := _script(sample)) is not None:
        return script
    words = _WORD.findall(sample.lower())[:40]
    if len(words) < 3:
        return None
    best, best_hits = None, 1
    for lang, vocabulary in _WORDS.items():
        hits = sum(1 for w in words if w in vocabulary)
        if hits > best_hits:
            best, best_hits = lang, hits
    return best
