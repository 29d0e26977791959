"""Exact, fast "does this alternation of word stems match anywhere?" tests.

The cue regexes of :mod:`~distillguard.detect.reasoning` and
:mod:`~distillguard.detect.coverage` are top-level alternations of dozens of
stems. ``re`` tries every alternative at every position of the text, which
made those ``search`` calls the bulk of the scanner's per-event cost (~20-45 µs
each on a typical 300-character prompt). A top-level alternation matches iff
one of its alternatives does, so :class:`StemSearch` splits it up: plain-text
alternatives become ``in`` tests (a C substring search, ~0.3 µs each), and
each remaining alternative is compiled on its own and run only when the
literal text it must start with is present. ``StemSearch(p)(text)`` is
therefore exactly ``re.compile(p).search(text) is not None``.

:func:`fold_case` lets patterns written for ``re.IGNORECASE`` run the same way
on lower-cased text (``in`` has no case-insensitive form).
"""

from __future__ import annotations

import re

__all__ = ["IGNORECASE_EXTRA_FOLDS", "StemSearch", "alternatives", "anchor", "fold_case"]

_META = frozenset(".^$*+?{}[]|()\\")

# The only characters outside A-Z that ``re.IGNORECASE`` matches to an ASCII letter (İ and ı to "i", ſ to
# "s", the Kelvin sign to "k"; found by trying every code point, and re-checked in tests/test_detect.py).
IGNORECASE_EXTRA_FOLDS = ("\u0130", "\u0131", "\u017f", "\u212a")


def fold_case(text: str) -> str | None:
    r"""``text.lower()``, when searching it with a lower-case pattern is exactly an IGNORECASE search of ``text``.

    That holds for a pattern whose only cased characters are ASCII letters: ``str.lower`` keeps the text's length
    and every character's ``\w``/``\d``/``\s`` class, maps A-Z to a-z, and maps no other character to an ASCII
    letter except the Kelvin sign; IGNORECASE equates an ASCII letter with its two cases and, beyond those, only
    with :data:`IGNORECASE_EXTRA_FOLDS` (all checked over every code point in tests/test_detect.py). Text holding
    one of those gets ``None``: search it with the IGNORECASE regex instead.
    """
    if not text.isascii():
        for char in IGNORECASE_EXTRA_FOLDS:
            if char in text:
                return None
    return text.lower()


def alternatives(pattern: str) -> list[str]:
    """The top-level ``|`` alternatives of a pattern (alternations inside groups or classes stay whole)."""
    parts: list[str] = []
    depth, in_class, start, i = 0, False, 0, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    return [*parts, pattern[start:]]


def anchor(alternative: str) -> str:
    """The literal text every match of ``alternative`` starts with ('' when there is none)."""
    text = alternative.removeprefix("\\b")
    literal: list[str] = []
    for index, char in enumerate(text):
        if char in _META:
            # A quantifier applies to the previous character, which is then optional.
            if char in "?*{" and literal:
                literal.pop()
            break
        if index + 1 < len(text) and text[index + 1] in "?*{":
            break
        literal.append(char)
    return "".join(literal)


class StemSearch:
    """``StemSearch(pattern, flags)(text)`` is ``re.compile(pattern, flags).search(text) is not None``, faster.

    Only for patterns without inline flags or backreferences across alternatives (none of the cue patterns has
    them), and not for ``re.IGNORECASE``: search :func:`fold_case` text with a lower-case pattern instead.
    """

    def __init__(self, pattern: str, flags: int = 0) -> None:
        if flags & re.IGNORECASE:
            raise ValueError("the substring tests are case-sensitive: search fold_case(text) with a lower-case pattern")
        plain: list[str] = []
        regexes: list[tuple[str, re.Pattern[str]]] = []
        for alternative in alternatives(pattern):
            if any(char in _META for char in alternative):
                start = anchor(alternative)
                regexes.append((start, re.compile(_searchable(alternative, start), flags)))
            else:
                plain.append(alternative)
        # A stem containing another stem adds nothing to "any of them occurs" ("thinking" after "think", ...).
        plain = [s for s in dict.fromkeys(plain) if not any(o != s and o in s for o in plain)]
        self.plain = tuple(plain)
        self.regexes = tuple(regexes)
        # Stems with non-ASCII characters cannot occur in ASCII text (str.isascii() is O(1) on CPython).
        self.ascii_plain = tuple(s for s in self.plain if s.isascii())
        self.ascii_regexes = tuple((a, r) for a, r in self.regexes if a.isascii())

    def __call__(self, text: str) -> bool:
        if text.isascii():
            plain, regexes = self.ascii_plain, self.ascii_regexes
        else:
            plain, regexes = self.plain, self.regexes
        # map() over the bound method: no generator frame per stem, which matters at ~30 stems per call.
        if any(map(text.__contains__, plain)):
            return True
        return any(start in text and regex.search(text) is not None for start, regex in regexes)


def _searchable(alternative: str, start: str) -> str:
    r"""An alternative rewritten so that ``re`` finds it faster; ``search`` finds a match in the same texts.

    ``re`` scans quickly only for a pattern that begins with literal text or a character class: ``\bword...``
    becomes ``word(?<=\bword)...`` (the same test, done after the literal), and a leading ``\d+`` becomes ``\d``
    (a match of ``\d+X`` contains one of ``\dX``, from the run's last digit, and vice versa).
    """
    if alternative.startswith("\\b") and start:
        return start + "(?<=\\b" + start + ")" + alternative[2 + len(start):]
    if alternative.startswith("\\d+"):
        return "\\d" + alternative[3:]
    return alternative
