"""The simulated world's geography and networks: countries, timezones, ASNs, address ranges.

Addresses are synthetic: each ASN gets a block derived from a hash of its
number (first octet 11–210), so they lie in public address space and are NOT
the ASN's real prefixes — a simulated IP must never be looked up or acted on.
ASN numbers are real public ones only for the shape of the data (ISPs vs
hosting providers); the simulator records geo fields directly instead of
resolving addresses.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

__all__ = ["CAMPAIGN_HOSTING_ASNS", "CLOUD_ASNS", "HOSTING_ASNS", "Network", "PLACE_OF_ASN", "PLACES", "Place", "RESIDENTIAL_PROXY_ASNS",
           "VPN_ASNS", "header_fp", "pick_place", "user_agent"]


@dataclass(frozen=True)
class Place:
    country: str
    tz: str
    utc_offset_min: int
    locale: str
    isp_asns: tuple[int, ...]


PLACES: tuple[Place, ...] = (
    Place("US", "America/New_York", -300, "en_US", (7922, 701, 7018)),
    Place("US", "America/Los_Angeles", -480, "en_US", (7922, 20115)),
    Place("GB", "Europe/London", 0, "en_GB", (2856, 5089)),
    Place("DE", "Europe/Berlin", 60, "de_DE", (3320, 3209)),
    Place("FR", "Europe/Paris", 60, "fr_FR", (3215, 12322)),
    Place("ES", "Europe/Madrid", 60, "es_ES", (3352,)),
    Place("BR", "America/Sao_Paulo", -180, "pt_BR", (28573, 18881)),
    Place("IN", "Asia/Kolkata", 330, "en_IN", (9829, 55836)),
    Place("JP", "Asia/Tokyo", 540, "ja_JP", (4713, 2516)),
    Place("KR", "Asia/Seoul", 540, "ko_KR", (4766,)),
    Place("AU", "Australia/Sydney", 660, "en_AU", (1221, 4804)),
    Place("CA", "America/Toronto", -300, "en_CA", (812, 577)),
    Place("NL", "Europe/Amsterdam", 60, "nl_NL", (1136,)),
    Place("PL", "Europe/Warsaw", 60, "pl_PL", (5617,)),
    Place("MX", "America/Mexico_City", -360, "es_MX", (8151,)),
    Place("SG", "Asia/Singapore", 480, "en_SG", (9506,)),
)
HOSTING_ASNS: tuple[tuple[int, str], ...] = ((14061, "US"), (16509, "US"), (24940, "DE"), (16276, "FR"), (396982, "US"), (63949, "SG"))
RESIDENTIAL_PROXY_ASNS: tuple[int, ...] = tuple(a for p in PLACES for a in p.isp_asns)
PLACE_OF_ASN: dict[int, Place] = {a: p for p in reversed(PLACES) for a in p.isp_asns}
# More data-centre networks, for the `robust` family: cloud providers (cloud desktops, eval jobs, apps,
# campaigns) and VPN exit networks (people on VPNs, whose address country disagrees with their clock).
CLOUD_ASNS: tuple[tuple[int, str], ...] = ((16509, "US"), (8075, "US"), (15169, "US"), (16509, "IE"), (8075, "NL"), (31898, "US"))
VPN_ASNS: tuple[tuple[int, str], ...] = ((9009, "GB"), (9009, "NL"), (60068, "US"), (60068, "DE"), (212238, "CH"), (136787, "SE"))
CAMPAIGN_HOSTING_ASNS: tuple[tuple[int, str], ...] = HOSTING_ASNS + ((20473, "US"), (51167, "DE"), (45102, "SG"), (132203, "HK"),
                                                                      (9009, "GB"), (8075, "US"))

_USER_AGENTS = (
    ("OpenAI/Python 1.54.0", "h1"), ("OpenAI/Python 2.3.1", "h1"), ("Anthropic/Python 0.40.0", "h2"),
    ("OpenAI/JS 4.67.0", "h3"), ("curl/8.5.0", "h4"), ("python-httpx/0.27.0", "h5"), ("python-requests/2.32.3", "h6"),
)


def pick_place(rng: random.Random) -> Place:
    return rng.choice(PLACES)


def user_agent(rng: random.Random) -> tuple[str, str]:
    """A client library's user agent and its header-order fingerprint family."""
    return rng.choice(_USER_AGENTS)


class Network:
    """Deterministic synthetic address space: each ASN owns a /16 chosen by hashing its number."""

    @staticmethod
    def ip_in(asn: int, rng: random.Random, subnet: int | None = None) -> str:
        digest = hashlib.sha256(str(asn).encode()).digest()
        a, b = 11 + digest[0] % 200, digest[1]
        c = subnet if subnet is not None else rng.randrange(256)
        return f"{a}.{b}.{c}.{rng.randrange(1, 255)}"


def header_fp(family: str, variant: int = 0) -> str:
    return hashlib.sha256(f"{family}:{variant}".encode()).hexdigest()[:16]
