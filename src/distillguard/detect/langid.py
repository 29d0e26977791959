"""A cheap guess of a prompt's language: writing system first, then common function words.

Used for the *mix* of languages in an account's prompts (a relay serving the
world gets many; a person or an office one or two), not for anything that
needs a precise answer per prompt. It costs a few microseconds: a scan over
at most 300 characters and set lookups on at most 40 words. A maintained
identifier (lingua) is more accurate, but loading its models costs hundreds of
MB and tens of microseconds per prompt in every scorer process, which the
online scorer's budget does not allow for a feature that only needs the mix.
"""

from __future__ import annotations

import re

__all__ = ["guess_language"]

_SCRIPTS = (
    # Kana first: kana with kanji is Japanese, not Chinese.
    ("ja", re.compile("[\u3040-\u30ff]")), ("ko", re.compile("[\uac00-\ud7af\u1100-\u11ff]")), ("zh", re.compile("[\u4e00-\u9fff]")),
    ("ru", re.compile("[\u0400-\u04ff]")), ("ar", re.compile("[\u0600-\u06ff]")), ("hi", re.compile("[\u0900-\u097f]")),
    ("th", re.compile("[\u0e00-\u0e7f]")), ("he", re.compile("[\u0590-\u05ff]")), ("el", re.compile("[\u0370-\u03ff]")),
)
_FUNCTION_WORDS = {
    "en": "the and is are of to in that what how you your with for this it can please",
    "de": "der die das und ist nicht ich du sie mit für ein eine wie was bitte auf den dem zu",
    "fr": "le la les et est une des pour que qui avec dans vous tu pas comment quoi du au",
    "es": "el la los las y es una para que con por como qué cómo del se tu usted lo",
    "pt": "o os as e é um uma para que com por como não do da você seu sua em",
    "it": "il lo gli le e è una per che con come non del della sono questo di",
    "nl": "de het een en is van dat die niet met voor hoe wat je jij zijn op",
    "pl": "i w na nie jest to że się jak co z do czy proszę dla",
    "tr": "ve bir bu için ile ne nasıl mi mı değil da de çok",
    "vi": "và là của có không được cho một những các này với như",
    "id": "dan yang di ini itu dengan untuk tidak apa bagaimana saya anda",
    "sv": "och är det att en som på för med inte hur vad jag du",
}
_WORDS = {lang: frozenset(words.split()) for lang, words in _FUNCTION_WORDS.items()}
_WORD = re.compile(r"[^\W\d_]+")


def guess_language(text: str) -> str | None:
    """An ISO 639-1 code, or None when there is too little to tell."""
    sample = text[:300]
    if not sample.isascii():
        counts = {lang: len(script.findall(sample)) for lang, script in _SCRIPTS}
        if counts["ja"]:
            return "ja"
        lang, count = max(counts.items(), key=lambda kv: kv[1])
        if count >= 3:
            return lang
    words = _WORD.findall(sample.lower())[:40]
    if len(words) < 3:
        return None
    best, best_hits = None, 1
    for lang, vocabulary in _WORDS.items():
        hits = sum(1 for w in words if w in vocabulary)
        if hits > best_hits:
            best, best_hits = lang, hits
    return best
