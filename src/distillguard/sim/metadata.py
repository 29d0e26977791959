"""Account metadata for simulated accounts, in the format of `distillguard accounts export`.

One JSON object per line: ``account_id``, ``name``, ``org_id`` (or null),
``created_at`` (ISO 8601, ``Z``), ``status`` and ``attributes`` — opaque
hashes ``h1:<32 hex>`` (the first 32 hex digits of HMAC-SHA256) of what an
operator knows at sign-up: the e-mail domain and a payment fingerprint. The
simulator hashes its synthetic values with a fixed simulator key, so equal
values give equal hashes exactly as a provider's export would.

Realism, not a giveaway: most campaign accounts sign up with the same big
webmail domains as everyone else; cards are shared only within subsets of a
campaign (or not at all); some campaigns create accounts in bursts, others use
aged accounts — and benign people share domains too (a university, an office
with its company domain, one company card and an onboarding day).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["AccountMeta", "MetaMaker", "hashed", "write_accounts"]

SIM_KEY = b"distillguard-simulator-metadata-v1"
WEBMAIL: tuple[tuple[str, float], ...] = (
    ("gmail.com", 0.46), ("outlook.com", 0.11), ("hotmail.com", 0.05), ("yahoo.com", 0.07), ("icloud.com", 0.06),
    ("proton.me", 0.04), ("qq.com", 0.04), ("163.com", 0.03), ("gmx.de", 0.03), ("web.de", 0.02), ("yandex.ru", 0.02),
    ("mail.ru", 0.02), ("naver.com", 0.02), ("free.fr", 0.015), ("libero.it", 0.015),
)
_DOMAINS, _WEIGHTS = zip(*WEBMAIL, strict=True)
_SYLLABLES = ("ka", "ri", "mo", "to", "len", "sa", "vi", "an", "el", "jo", "mar", "de", "ne", "li", "os", "ta", "ru", "be")


def hashed(kind: str, value: str) -> str:
    """An attribute as an export stores it: ``h1:`` + 32 hex of HMAC-SHA256 under the simulator's key."""
    return "h1:" + hmac.new(SIM_KEY, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:32]


@dataclass
class AccountMeta:
    account_id: str
    name: str
    created_at: float
    email_domain: str
    payment: str | None = None
    org_id: str | None = None
    status: str = "active"
    extra: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, object]:
        attributes = {"email_domain": hashed("email_domain", self.email_domain)}
        if self.payment is not None:
            attributes["payment_fp"] = hashed("payment_fp", self.payment)
        attributes.update({k: hashed(k, v) for k, v in self.extra.items()})
        created = dt.datetime.fromtimestamp(self.created_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"account_id": self.account_id, "name": self.name, "org_id": self.org_id, "created_at": created,
                "status": self.status, "attributes": attributes}


class MetaMaker:
    """Draws names, domains, cards and sign-up times from one random stream."""

    def __init__(self, rng: random.Random, start: float) -> None:
        self.rng, self.start = rng, start

    def name(self) -> str:
        rng = self.rng
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
        return word + (str(rng.randint(1, 9999)) if rng.random() < 0.6 else "")

    def webmail(self) -> str:
        return self.rng.choices(_DOMAINS, _WEIGHTS)[0]

    def own_domain(self, kind: str = "com") -> str:
        return f"{self.name()}.{kind}"

    def card(self) -> str:
        return f"card-{self.rng.getrandbits(64):016x}"

    def person(self, account: str, *, domain: str | None = None, created_at: float | None = None,
               paying: float = 0.8, org_id: str | None = None, card: str | None = None) -> AccountMeta:
        """An ordinary customer: mostly webmail, signed up any time in the last two years, own card (or none)."""
        rng = self.rng
        if domain is None:
            domain = self.webmail() if rng.random() < 0.75 else self.own_domain(rng.choice(("com", "io", "de", "co.uk", "edu")))
        when = created_at if created_at is not None else self.start - rng.uniform(1, 730) * 86_400
        payment = card if card is not None else (self.card() if rng.random() < paying else None)
        return AccountMeta(account, self.name(), when, domain, payment, org_id)


def write_accounts(path: str | Path, metas: Iterable[AccountMeta]) -> int:
    """Write ``accounts.jsonl`` (one account per line, sorted by creation); return the count."""
    rows = sorted(metas, key=lambda m: (m.created_at, m.account_id))
    with open(path, "w", encoding="utf-8") as handle:
        for meta in rows:
            handle.write(json.dumps(meta.record(), ensure_ascii=False) + "\n")
    return len(rows)
