"""Whether a request builds on an earlier answer: the line between a conversation and single-shot harvesting.

A person's follow-up carries a request of its own about the answer it got
("why is the second step allowed?"); a harvester's "continue" or "more", or a
new single-turn prompt, does not. Coverage (unbuilt share, independent
volume), sustained extraction (what was extracted) and relay sharing read
this for the same prompt: the Scanner asks once per event and hands them the
answer (:class:`~distillguard.detect.context.EventContext`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["builds_on_earlier", "is_follow_up"]


def is_follow_up(event: Mapping[str, Any]) -> bool:
    """Whether the request carries an earlier answer (an assistant turn) — a conversation's later turn."""
    messages = (event.get("request") or {}).get("messages") or []
    return any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages)


# Words that carry no request of their own in a follow-up: "continue", "tell me more", "and then?", "go on,
# please" are made only of these, so they do not build on the earlier answer. Only the development split's
# languages are listed (en de fr es pt ru; CJK below): a follow-up in any other language is judged by the
# language-general rule alone (three words or fewer carry no request of their own), so nothing here was
# written with the held-out wording in view (tests/test_contamination.py checks it).
_GENERIC_TEXT = """
continue continuing more go on and then next keep going please pls expand further detail details tell me
what else ok okay thanks thank you yes yeah sure the a an it that this so now can could would you will do again
same way another one rest finish proceed carry following output remaining part write also further
weiter mehr bitte und dann fortfahren fahre fort noch ja danke ok nächste
continue encore suite plus et puis vas-y oui merci s'il te plaît stp
sigue más y luego después por favor sí gracias adelante siguiente detalle detalles
continue mais e depois então por favor sim obrigado próximo detalhes
продолжай продолжи дальше ещё еще и потом пожалуйста да спасибо далее подробнее подробно а
"""
_GENERIC_WORDS = frozenset(_GENERIC_TEXT.split())
_WORD = re.compile(r"[^\W\d_]+")
_CJK_GENERIC = ("继续", "更多", "然后呢", "接着", "続けて", "もっと", "次", "계속", "더")


def builds_on_earlier(text: str) -> bool:
    """Whether a follow-up turn asks something of its own, rather than a generic "continue" or "more".

    A follow-up builds on the conversation when it has more than three words, at least two of them not generic
    filler (:data:`_GENERIC_WORDS`); a CJK follow-up when it is longer than a short generic phrase.
    """
    sample = text[:400].strip().lower()
    if not sample:
        return False
    if not sample.isascii() and any("\u3040" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" for ch in sample[:40]):
        stripped = sample
        for phrase in _CJK_GENERIC:
            stripped = stripped.replace(phrase, "")
        return len([ch for ch in stripped if ch.isalnum()]) >= 6
    words = _WORD.findall(sample)
    if len(words) <= 3:
        return False  # "and for 5?", "go on then": too short to carry a request of its own
    content = [w for w in words if w not in _GENERIC_WORDS]
    return len(content) >= 2
