"""Cross-account attribution: the indicators that tie accounts to one operator, each weighed by its rarity.

A hydra is many accounts run by one operator. No single shared value proves
it — a popular client library, a cloud provider, an office's egress address
and a public prompt wrapper are shared by strangers too — so every indicator
is an *item* an account carries, and what a shared item is worth depends on
how many accounts of the background carry it (an idf-like weight over the
accounts that do not look like distillers on their own, :func:`rarity`).
Items come in four families, and a link between two accounts needs two of
them, one behavioural (:mod:`distillguard.detect.clustering`):

- **content** (behaviour): recurring prompt wrappers — a prefix or suffix
  that recurs around varying content, inferred per account from the first and
  last words of its single-turn prompts —, system prompts used repeatedly,
  coarse usage habits (single-turn and streaming shares, prompt length, daily
  rhythm), the request-parameter profile (max_tokens, temperature, stream, n,
  logprobs);
- **time** (behaviour): synchronised activity (similar sets of active 5-minute
  buckets, found with MinHash LSH);
- **infra**: enrolled install ids, exact addresses, /24 networks, hosting
  ASNs, rotating to a new network on most requests, the client profile
  (header fingerprint and attested platform);
- **meta**: the operator's records (`scan --accounts`): hashed payment
  fingerprints, e-mail domains and other attributes, and creation slots in
  account-creation bursts.

Public wrappers ("Let's think step by step") and stock system prompts ("You are
a helpful assistant.") carry no weight at all: unrelated people use them,
however few of them a given log holds. An office (one egress address, one
company domain) shares only infra and meta items, so it is never linked on
them alone. An organisation is not an indicator: accounts of one org are one
customer by the operator's own records.

This module collects per-account items from events (bounded, a few
microseconds per event) and builds each account's item list at report time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from distillguard.detect.base import count_heavy
from distillguard.detect.templates import normalise_system

__all__ = ["ROTATION_MIN_REQUESTS", "AttributionCollector", "Item", "PUBLIC_SCAFFOLDS", "PUBLIC_SYSTEM_PROMPTS", "PUBLIC_WRAPPERS", "account_items",
           "is_public_wrapper", "rarity", "rotation_item"]

_CAP_VALUES = 64
_CAP_PARAMS = 32
_CAP_FOLLOW_UPS = 32
# A generic follow-up ("Go on.", "Und weiter?") is a short turn; a real one quotes or asks about the answer.
FOLLOW_UP_MAX_CHARS = 80
FOLLOW_UP_MAX_WORDS = 10

# Published, widely copied prompt wrappers: zero-shot chain of thought (Kojima et al. 2022), the APE and OPRO
# variants (Zhou et al. 2022; Yang et al. 2023), the common maths-evaluation instruction, and the evaluation
# harnesses' multiple-choice framing. Sharing one of them says nothing about who wrote the prompt.
PUBLIC_WRAPPERS = (
    "let's think step by step",
    "think step by step",
    "let's work this out in a step by step way to be sure we have the right answer",
    "take a deep breath and work on this problem step by step",
    "please reason step by step and put your final answer within boxed",
    "the following are multiple choice questions with answers about",
    "answer with only the letter of the correct option",
    "explain your reasoning",
    "show your work",
)
# Published scaffold markers (templates.scaffold_parts): the few-shot question/answer format of the GPT-3 paper and of
# the evaluation harnesses. A script may use them, but so does anyone who copied that format.
PUBLIC_SCAFFOLDS = frozenset({"q:", "a:", "question:", "answer:"})
# Stock system prompts (SDK and model defaults, tutorials' first example).
PUBLIC_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful assistant",
    "You are a helpful AI assistant.",
    "You are a helpful, respectful and honest assistant.",
    "You are ChatGPT, a large language model trained by OpenAI.",
    "You are Claude, an AI assistant made by Anthropic.",
    "You are an AI assistant.",
    "You are a helpful and harmless assistant.",
)


_WORD = re.compile(r"\w+")


def _words(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


_PUBLIC_WRAPPER_TEXT = tuple(_words(w) for w in PUBLIC_WRAPPERS)
_PUBLIC_SYSTEM_HASHES = frozenset(h for h in (normalise_system(s) for s in PUBLIC_SYSTEM_PROMPTS) if h)


@lru_cache(maxsize=1 << 16)
def is_public_wrapper(piece: str) -> bool:
    """True when a wrapper piece (``"s4:think step by step"``) is part of a published wrapper.

    Cached: clustering asks it for every piece of every account on every report, and pieces repeat across
    accounts and reports."""
    text = piece[3:]
    if piece[1] == "1":
        return text in PUBLIC_SCAFFOLDS
    return any(text in public for public in _PUBLIC_WRAPPER_TEXT)


# The share of all accounts at which an item stops counting fully: an item carried by at most 1/RARE_SHARE of the
# accounts has full weight; beyond, its weight falls as log(N/df) / log(RARE_SHARE) and is 0 when everyone has it.
RARE_SHARE = 12.0


# Account attributes other than payment fingerprints are commonly shared by strangers (free-mail domains, a
# company's domain, a university's): they count fully only below about one account in thirty.
RARE_SHARE_ATTRIBUTE = 30.0


def rarity(holders: int, population: int, rare_share: float = RARE_SHARE) -> float:
    """How much sharing an item carried by ``holders`` of ``population`` background accounts is worth, in [0, 1]."""
    return max(0.0, min(1.0, math.log((population + 10) / (holders + 1)) / math.log(rare_share)))


@dataclass(slots=True)  # one per account: no per-instance __dict__ (docs/detection.md, "Memory")
class _Account:
    requests: int = 0
    installs: set[str] = field(default_factory=set)
    ips: dict[str, int] = field(default_factory=dict)
    nets: dict[tuple[Any, ...], int] = field(default_factory=dict)
    hosting_asns: dict[Any, int] = field(default_factory=dict)
    params: dict[tuple[Any, ...], int] = field(default_factory=dict)
    profiles: dict[tuple[Any, ...], int] = field(default_factory=dict)
    last_net: tuple[Any, ...] | None = None
    net_switches: int = 0
    hosting: int = 0
    org: str | None = None
    single_turn: int = 0
    streamed: int = 0
    lengths: dict[int, int] = field(default_factory=dict)
    hours: list[int] = field(default_factory=lambda: [0] * 24)
    follow_ups: int = 0  # requests continuing a conversation with a short user turn
    follow_up_texts: dict[str, int] = field(default_factory=dict)  # that turn's words → count (lossy, _CAP_FOLLOW_UPS)
    first_seen: float = -1.0  # the account's earliest and latest request (POSIX seconds; -1 until one with a time):
    last_seen: float = -1.0  # the arrivals module


_SCALARS = (str, int, float, bool, type(None))


def _scalar(value: object) -> str | int | float | bool | None:
    """A field's value as a dictionary key: scalars as they are, anything else (a list or object where an old or
    hand-written log has one) as its JSON-like text, so an odd event still counts instead of crashing the scan."""
    return value if isinstance(value, _SCALARS) else repr(value)[:200]


def _bump(counts: dict[Any, int], value: Any, cap: int) -> None:
    if value in counts:
        counts[value] += 1
    elif len(counts) < cap:
        counts[value] = 1


class AttributionCollector:
    """Per-account infra and parameter items, updated once per event (bounded per account)."""

    def __init__(self) -> None:
        self.accounts: dict[str, _Account] = {}

    def update(self, event: Mapping[str, Any]) -> None:
        account = event.get("account_id")
        if account is None:
            return
        state = self.accounts.get(account)
        if state is None:
            state = self.accounts[account] = _Account()
        state.requests += 1
        if state.org is None and event.get("org_id"):
            state.org = str(event["org_id"])
        client = event.get("client") or {}
        geo = client.get("geo") or {}
        attestation = event.get("attestation")
        hosting = bool(geo.get("hosting"))
        asn = _scalar(geo.get("asn"))
        ip = client.get("ip")
        if ip and isinstance(ip, str):
            _bump(state.ips, ip, _CAP_VALUES)
            # Keyed by tuples (formatted only at report time): this runs for every event.
            net = (hosting, asn, ip.rpartition(".")[0] if "." in ip else ip[:19])
            if state.last_net is not None and net[2] != state.last_net[2]:
                state.net_switches += 1
            state.last_net = net
            _bump(state.nets, net, _CAP_VALUES)
        if hosting:
            state.hosting += 1
            _bump(state.hosting_asns, asn, _CAP_VALUES)
        request = event.get("request") or {}
        messages = request.get("messages") or ()
        if len(messages) == 1:
            state.single_turn += 1
        if messages:
            last = messages[-1]
            content = last.get("content") if isinstance(last, dict) else None
            if isinstance(content, str):
                _bump(state.lengths, len(content).bit_length(), 24)
                if len(messages) > 1 and len(content) <= FOLLOW_UP_MAX_CHARS:
                    self._follow_up(state, content)
        ts = event.get("_t")
        if isinstance(ts, float):
            state.hours[int(ts // 3600) % 24] += 1
            if state.first_seen < 0 or ts < state.first_seen:
                state.first_seen = ts
            if ts > state.last_seen:
                state.last_seen = ts
        params = request.get("params") or {}
        if params.get("stream"):
            state.streamed += 1
        get = params.get
        _bump(state.params, (_scalar(get("max_tokens")), _scalar(get("temperature")), bool(get("stream")), _scalar(get("n") or 1),
                             bool(get("logprobs")), _scalar(get("top_logprobs"))), _CAP_PARAMS)
        if attestation:
            install = attestation.get("install_id")
            if install and len(state.installs) < _CAP_VALUES:
                state.installs.add(str(install))
            profile: tuple[Any, ...] = tuple(_scalar(attestation.get(k)) for k in ("sdk", "os", "tz", "locale"))
            profile = (_scalar(client.get("header_fp")), *profile)
        else:
            profile = (_scalar(client.get("header_fp")),)
        _bump(state.profiles, profile, 8)

    @staticmethod
    def _follow_up(state: _Account, content: str) -> None:
        """Count a short follow-up turn by its words (lossy: when the table is full, turns seen once are dropped)."""
        words = _WORD.findall(content.lower())
        if not words or len(words) > FOLLOW_UP_MAX_WORDS:
            return
        state.follow_ups += 1
        count_heavy(state.follow_up_texts, " ".join(words), _CAP_FOLLOW_UPS)

    def follow_ups(self, account_id: str) -> tuple[int, dict[str, int]]:
        """(short follow-up turns, {their words: count}) of one account; see :mod:`distillguard.detect.phrasebank`."""
        state = self.accounts.get(account_id)
        return (state.follow_ups, state.follow_up_texts) if state else (0, {})


def _band(share: float) -> str:
    return "none" if share <= 0.1 else "all" if share >= 0.9 else "some"


# Streaming shares are compared on two grids of 0.3-wide bins offset by half a bin: two accounts whose shares differ
# by less than 0.15 fall in one bin of at least one grid, two that differ by more than 0.3 in none. A script that
# streams half its requests and one that streams nine in ten are two configurations; "some" covered both.
_GRIDS = ((0.2, 0.6), (0.4, 0.8))


def _bin(share: float, cuts: tuple[float, ...]) -> str:
    low = max((c for c in cuts if c < share), default=0.0)
    high = min((c for c in cuts if c >= share), default=1.0)
    return f"{low:.0%}–{high:.0%}"


def _habits(state: _Account) -> tuple[str, ...]:
    """How an account uses the API, coarsely: the distribution its requests come from, not any one value.

    Accounts of one campaign are driven by one script with one configuration, so they share these habits;
    ordinary users differ from one another, and the habits common among them weigh little (rarity). Four
    descriptions are given — with the prompt length, and with the daily rhythm, each with the streaming share on
    two offset grids (``_GRIDS``) — so that an account near the edge of one band still matches its fleet on another.
    """
    requests = state.requests
    if requests < 10 or not state.lengths:
        return ()
    length = max(state.lengths.items(), key=lambda kv: (kv[1], kv[0]))[0]
    doubled = state.hours + state.hours
    quiet = min(sum(doubled[i:i + 6]) for i in range(24)) / max(1, sum(state.hours))
    clock = "round the clock" if quiet >= 0.12 else "a daily rhythm" if quiet <= 0.03 else "mostly a daily rhythm"
    out = []
    for cuts in _GRIDS:
        usage = f"single-turn {_band(state.single_turn / requests)}, streaming {_bin(state.streamed / requests, cuts)}"
        out += [f"{usage}, prompts of {1 << max(0, length - 1)}–{(1 << length) - 1} characters", f"{usage}, {clock}"]
    return tuple(out)


def _net_label(net: tuple[Any, ...]) -> str:
    hosting, asn, prefix = net
    return f"AS{asn} {prefix}.0/24" if "." in str(prefix) else f"AS{asn} {prefix}::"


def _params_label(params: tuple[Any, ...]) -> str:
    max_tokens, temperature, stream, n, logprobs, top_logprobs = params
    label = f"max_tokens={max_tokens} temperature={temperature} stream={str(stream).lower()} n={n}"
    if logprobs:
        label += f" logprobs top_logprobs={top_logprobs}"
    return label


def _profile_label(profile: tuple[Any, ...]) -> str:
    if len(profile) == 1:
        return f"{profile[0]} unattested"
    return " ".join(str(p) for p in profile)


@dataclass(frozen=True)
class Item:
    """One indicator an account carries: ``kind`` (which sets its family and weight), ``value``, and how much of
    the account's traffic shows it (``share`` in [0, 1]; 1 for account-level facts)."""

    kind: str
    value: str
    share: float


# kind -> (family, weight of a fully rare, fully shared item)
KINDS: dict[str, tuple[str, float]] = {
    "wrapper": ("content", 0.7),
    "short_wrapper": ("content", 0.35),  # two words: common in plain language too
    "scaffold": ("content", 0.35),  # a formatting marker opening or closing the prompt ("Input:", "---"): one token
    "system_prompt": ("content", 0.8),
    "params": ("content", 0.3),
    "habits": ("content", 0.16),  # four descriptions, 0.50 together
    "install": ("infra", 1.0),
    "ip": ("infra", 0.6),
    "hosting_net": ("infra", 0.6),
    "net": ("infra", 0.35),
    "hosting_asn": ("infra", 0.2),
    "rotation": ("infra", 0.5),
    "profile": ("infra", 0.1),
    "burst": ("meta", 0.6),  # when the account was made: the operator's records, not behaviour
    "attribute": ("meta", 0.4),
    "payment": ("meta", 1.0),
}
BEHAVIOURAL = frozenset({"content", "time"})
_PIECE_KINDS = {"4": "wrapper", "2": "short_wrapper", "1": "scaffold"}  # a wrapper piece's kind by its length (templates)
# A wrapper is the operator's template: it frames a good part of the account's prompts. Phrases that recur in a
# few percent of them are more often the swept dataset's own wording (shared by everyone sweeping it).
WRAPPER_SHARE = 0.12
# Rotation: a new network (/24) on at least this share of an account's requests after its first, over at least
# ROTATION_MIN_REQUESTS requests for a link item (cohorts of arrival surges ask it from the second request on).
ROTATION_SHARE = 0.6
ROTATION_MIN_REQUESTS = 8
_IDENTITY_ATTRIBUTES = frozenset({"payment_fp", "payment", "card_fp"})


def _shares(counts: Mapping[Any, int], total: int, minimum_share: float, minimum_count: int = 2) -> list[tuple[Any, float]]:
    if total <= 0:
        return []
    return [(value, count / total) for value, count in counts.items() if count >= minimum_count and count / total >= minimum_share]


def rotation_item(state: _Account, min_requests: int = ROTATION_MIN_REQUESTS) -> Item | None:
    """The ``rotation`` item when a new network came with most of the account's requests after its first (at least
    ``min_requests`` of them): what a script drawing a proxy per request does; people's home and office addresses stay
    put."""
    requests = state.requests
    if requests < max(2, min_requests) or state.net_switches / (requests - 1) < ROTATION_SHARE:
        return None
    kind = "hosting" if state.hosting * 2 >= requests else "residential"
    return Item("rotation", f"a new {kind} network on most requests", state.net_switches / (requests - 1))


def account_items(state: _Account | None, single_turn: int, wrappers: Mapping[str, int], systems: Mapping[str, int],
                  attributes: Mapping[str, str], bursts: Sequence[str], minimum_count: int | None = None,
                  kinds: AbstractSet[str] | None = None) -> list[Item]:
    """Every item an account carries (public wrappers and stock system prompts left out).

    An item must recur (two or three times, by kind) to count; ``minimum_count=1`` takes every value the account
    shows at all, as :mod:`distillguard.detect.cohorts` does for accounts of one or two requests. ``kinds``: only the
    items of these kinds (the same ones, in the same order, as the whole list filtered by kind) — the cohorts read
    seven kinds of every account's items at every clustering, and the others (its addresses, habits, records) cost
    more than those seven to make."""
    items: list[Item] = []

    def recurs(count: int) -> int:
        return count if minimum_count is None else minimum_count

    def wanted(kind: str) -> bool:
        return kinds is None or kind in kinds

    if wanted("wrapper") or wanted("short_wrapper") or wanted("scaffold"):
        for piece, share in _shares(wrappers, single_turn, WRAPPER_SHARE, recurs(3)):
            kind = _PIECE_KINDS[piece[1]]
            if wanted(kind) and not is_public_wrapper(piece):
                items.append(Item(kind, piece, share))
    if wanted("system_prompt"):
        for system, share in _shares(systems, max(1, single_turn), 0.05, recurs(2)):
            if system not in _PUBLIC_SYSTEM_HASHES:
                items.append(Item("system_prompt", system, min(1.0, share)))
    if state is not None:
        requests = state.requests
        if wanted("params"):
            items += [Item("params", _params_label(value), share) for value, share in _shares(state.params, requests, 0.25, recurs(2))]
        if wanted("install"):
            items += [Item("install", value, 1.0) for value in state.installs]
        if wanted("ip"):
            items += [Item("ip", value, share) for value, share in _shares(state.ips, requests, 0.1, recurs(2))]
        if wanted("hosting_net") or wanted("net"):
            for net, share in _shares(state.nets, requests, 0.1, recurs(2)):
                kind = "hosting_net" if net[0] else "net"
                if wanted(kind):
                    items.append(Item(kind, _net_label(net), share))
        if wanted("hosting_asn"):
            items += [Item("hosting_asn", f"AS{value}", share) for value, share in _shares(state.hosting_asns, requests, 0.3, recurs(2))]
        rotating = rotation_item(state) if wanted("rotation") else None
        if rotating is not None:
            items.append(rotating)
        if wanted("profile"):
            items += [Item("profile", _profile_label(value), share) for value, share in _shares(state.profiles, requests, 0.5, recurs(2))]
        if wanted("habits"):
            items += [Item("habits", habits, 1.0) for habits in _habits(state)]
    for name, value in attributes.items():
        kind = "payment" if name in _IDENTITY_ATTRIBUTES else "attribute"
        if wanted(kind):
            items.append(Item(kind, f"{name}={value}", 1.0))
    if wanted("burst"):
        items += [Item("burst", slot, 1.0) for slot in bursts]
    return items


_LABELS = {"system_prompt": "system prompt template", "params": "request parameters {value}", "install": "install id {value}",
           "ip": "address {value}", "hosting_net": "hosting network {value}", "net": "network {value}", "hosting_asn": "hosting {value}",
           "rotation": "{value}", "habits": "the same habits ({value})", "burst": "created within minutes of each other in a burst ({value})"}


def describe(item: Item, holders: int) -> str:
    """An item in plain words for a cluster's ``shared`` list."""
    kind, value = item.kind, item.value
    if kind in ("wrapper", "short_wrapper", "scaffold"):
        words = value[3:]
        return f"prompt wrapper \u201c{'… ' if value.startswith('s') else ''}{words}{' …' if value.startswith('p') else ''}\u201d"
    if kind in _LABELS:
        return _LABELS[kind].format(value=value)
    if kind == "profile":
        return f"client profile {value.split(' ', 1)[0][:16]}"
    name = value.split("=", 1)[0]
    return f"same {name} (hashed, {holders} accounts)"
