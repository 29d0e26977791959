"""Keyed canary strings: each trigger's canary is one of ``VARIANT_COUNT`` equally likely variants.

A variant looks like a catalogue designation — ``amber-falcon-417``: one of 32
adjectives, one of 32 nouns and a number from 100 to 999, so there are
32 × 32 × 900 = 921,600 of them. Which one a trigger gets is
HMAC-SHA256(secret, key id + trigger id), reduced to that range. Without the
secret every variant is equally likely, which is what makes the probe's
statistics valid: a model that never saw our answers reproduces the keyed
variant of a trigger with probability at most ``1 / VARIANT_COUNT`` however it
answers (docs/watermark.md, "Canaries").
"""

from __future__ import annotations

import hashlib
import hmac
import re

__all__ = ["ADJECTIVES", "NOUNS", "VARIANT_COUNT", "canary_for", "variants_in"]

ADJECTIVES = ("amber", "ashen", "azure", "brisk", "cedar", "coral", "crimson", "dusky", "ember", "fallow", "gilded", "granite",
              "hollow", "indigo", "ivory", "jade", "lunar", "maple", "misty", "ochre", "opal", "pale", "quiet", "russet",
              "sable", "silver", "slate", "tawny", "umber", "velvet", "willow", "zephyr")
NOUNS = ("anchor", "badger", "beacon", "bison", "canyon", "comet", "condor", "falcon", "fjord", "gecko", "glacier", "harbor",
         "heron", "ibis", "kestrel", "lantern", "lynx", "marten", "meadow", "osprey", "otter", "pelican", "quarry", "raven",
         "summit", "thicket", "tundra", "vale", "walrus", "warbler", "yarrow", "zenith")
NUMBERS = 900  # 100 … 999
VARIANT_COUNT = len(ADJECTIVES) * len(NOUNS) * NUMBERS
_PATTERN = re.compile(r"\b(" + "|".join(ADJECTIVES) + r")-(" + "|".join(NOUNS) + r")-([1-9]\d\d)\b", re.IGNORECASE)


def canary_for(secret: str, key_id: str, trigger_id: str) -> str:
    """The keyed variant of one trigger under one canary key."""
    digest = hmac.new(secret.encode(), f"canary|{key_id}|{trigger_id}".encode(), hashlib.sha256).digest()
    n = int.from_bytes(digest[:8], "big") % VARIANT_COUNT  # 2^64 mod 921,600 leaves a bias below 1e-13: negligible
    n, number = divmod(n, NUMBERS)
    adjective, noun = divmod(n, len(NOUNS))
    return f"{ADJECTIVES[adjective]}-{NOUNS[noun]}-{number + 100}"


def variants_in(text: str) -> set[str]:
    """Every canary-shaped string in ``text``, lower-cased."""
    return {m.group(0).lower() for m in _PATTERN.finditer(text)}
