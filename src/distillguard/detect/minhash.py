"""MinHash signatures and a banded LSH index, on numpy alone.

Why this module exists: clustering (:mod:`distillguard.detect.clustering`)
needs only MinHash signatures of small string sets and a banded LSH index to
find candidate pairs, which it then verifies by exact Jaccard. datasketch did
that, but importing the ``datasketch`` package imports ``scipy.integrate``
(its LSH integrates the false-positive/negative probabilities with
``scipy.integrate.quad``), which adds about 50 MB of RSS to the online
scorer — the process that runs the ``Scanner`` beside the gateway and whose
memory counts against the gateway's footprint. This module does the same job
with numpy and the standard library.

MinHash. Every value is hashed to 32 bits (the first four bytes of a
``blake2b`` digest, little-endian), then put through ``num_perm`` universal
hash functions ``h -> ((a*h + b) mod (2**61 - 1)) & (2**32 - 1)``; the
signature is the minimum of each over the set, and the share of equal
positions in two signatures estimates the sets' Jaccard similarity. The
products are computed exactly in unsigned 64-bit arithmetic (``a`` is split
into 32-bit halves and ``2**61 ≡ 1`` modulo the prime), so nothing silently
wraps. The coefficients come from ``blake2b`` of the seed and the
permutation's index, not from a random generator, so signatures are identical
in every process, on every platform and with every numpy version.

LSH. A signature is cut into ``bands`` bands of ``rows`` values; two sets
become candidates when any band matches exactly, which for Jaccard ``s``
happens with probability ``1 - (1 - s**rows)**bands``. ``bands`` and ``rows``
are chosen for a Jaccard threshold ``t`` by minimising
``w_fp * ∫_0^t P(s) ds + w_fn * ∫_t^1 (1 - P(s)) ds`` over all
``bands * rows <= num_perm`` — the criterion datasketch uses, integrated here
with the trapezoid rule (with equal weights it picks the same parameters as
datasketch for the thresholds used in clustering).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Hashable, Iterable
from functools import lru_cache
from itertools import chain
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["LSHIndex", "MinHasher", "estimate_jaccard", "optimal_bands"]

MERSENNE_61 = (1 << 61) - 1
MAX_HASH = (1 << 32) - 1
_P = np.uint64(MERSENNE_61)
_LOW32 = np.uint64(MAX_HASH)
_LOW29 = np.uint64((1 << 29) - 1)
_CHUNK = 2048  # values hashed per numpy step: bounds the temporaries to ~1 MB at 64 permutations

Signature = npt.NDArray[np.uint32]
K = TypeVar("K", bound=Hashable)


def _hash32(values: Iterable[bytes | str]) -> npt.NDArray[np.uint64]:
    """Each value's 32-bit hash (``str`` values are UTF-8 encoded first)."""
    digests = b"".join(hashlib.blake2b(v.encode() if isinstance(v, str) else v, digest_size=4).digest() for v in values)
    return np.frombuffer(digests, dtype="<u4").astype(np.uint64)


class MinHasher:
    """MinHash signatures with ``num_perm`` fixed permutations derived from ``seed``.

    Signatures from two hashers are comparable only if both have the same
    ``num_perm`` and ``seed``. The signature of the empty set is all
    ``MAX_HASH``.
    """

    def __init__(self, num_perm: int = 64, seed: int = 7) -> None:
        if num_perm < 1:
            raise ValueError("num_perm must be at least 1")
        self.num_perm = num_perm
        self.seed = seed
        a, b = [], []
        for i in range(num_perm):
            digest = hashlib.blake2b(f"distillguard.minhash:{seed}:{i}".encode(), digest_size=16).digest()
            a.append(int.from_bytes(digest[:8], "little") % (MERSENNE_61 - 1) + 1)  # in [1, p)
            b.append(int.from_bytes(digest[8:], "little") % MERSENNE_61)  # in [0, p)
        a_arr = np.array(a, dtype=np.uint64)
        self._a_lo = a_arr & _LOW32  # < 2**32
        self._a_hi = a_arr >> np.uint64(32)  # < 2**29
        self._b = np.array(b, dtype=np.uint64)

    def _permute(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        """``((a*h + b) mod p) & MAX_HASH`` for every hash (rows) and permutation (columns), exactly."""
        h = hashes[:, None]
        low = (self._a_lo * h) % _P  # (2**32 - 1)**2 < 2**64
        high = self._a_hi * h  # < 2**61; times 2**32 below, reduced with 2**61 ≡ 1 (mod p)
        high = ((high >> np.uint64(29)) + ((high & _LOW29) << np.uint64(32))) % _P
        return ((low + high + self._b) % _P) & _LOW32  # each term < p, the sum < 2**63

    def signature(self, values: Iterable[bytes | str]) -> Signature:
        """The MinHash signature (``num_perm`` uint32 values) of a set of strings or bytes."""
        hashes = _hash32(values)
        out = np.full(self.num_perm, MAX_HASH, dtype=np.uint64)
        for start in range(0, len(hashes), _CHUNK):
            np.minimum(out, self._permute(hashes[start:start + _CHUNK]).min(axis=0), out=out)
        return out.astype(np.uint32)


def estimate_jaccard(first: Signature, second: Signature) -> float:
    """The share of positions where two signatures agree: an unbiased estimate of the sets' Jaccard similarity."""
    if first.shape != second.shape:
        raise ValueError("signatures of different lengths are not comparable")
    return float(np.count_nonzero(first == second)) / len(first)


def _trapezoid(y: npt.NDArray[np.float64], x: npt.NDArray[np.float64]) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


@lru_cache(maxsize=64)
def optimal_bands(threshold: float, num_perm: int, false_positive_weight: float = 0.5,
                  false_negative_weight: float = 0.5) -> tuple[int, int]:
    """``(bands, rows)`` minimising the weighted false-positive and false-negative probability mass at ``threshold``."""
    if not 0.0 < threshold < 1.0:
        raise ValueError("threshold must be strictly between 0 and 1")
    below = np.linspace(0.0, threshold, 513)
    above = np.linspace(threshold, 1.0, 513)
    best, best_error = (1, 1), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            false_positive = _trapezoid(1.0 - (1.0 - below**rows) ** bands, below)
            false_negative = _trapezoid((1.0 - above**rows) ** bands, above)
            error = false_positive_weight * false_positive + false_negative_weight * false_negative
            if error < best_error:
                best, best_error = (bands, rows), error
    return best


class LSHIndex(Generic[K]):
    """Banded LSH over MinHash signatures: ``query`` returns every key sharing at least one band.

    Candidates are not verified: a caller that needs ``Jaccard >= threshold``
    checks them itself. ``weights`` is ``(false_positive_weight,
    false_negative_weight)``; weigh false negatives more when candidates are
    verified anyway and a missed pair costs more than a wasted check.
    """

    def __init__(self, threshold: float, num_perm: int = 64, weights: tuple[float, float] = (0.5, 0.5)) -> None:
        self.num_perm = num_perm
        self.bands, self.rows = optimal_bands(threshold, num_perm, *weights)
        self._tables: list[dict[bytes, list[K]]] = [{} for _ in range(self.bands)]
        self._keys: set[K] = set()
        self._signatures: dict[K, Signature] = {}

    def _band_keys(self, signature: Signature) -> list[bytes]:
        if len(signature) != self.num_perm:
            raise ValueError(f"expected a signature of {self.num_perm} values, got {len(signature)}")
        data = np.ascontiguousarray(signature, dtype=np.uint32).tobytes()
        width = 4 * self.rows
        return [data[i * width:(i + 1) * width] for i in range(self.bands)]

    def insert(self, key: K, signature: Signature) -> None:
        if key in self._keys:
            raise ValueError(f"key {key!r} is already in the index")
        bands = self._band_keys(signature)  # validates the signature before anything is stored
        self._keys.add(key)
        self._signatures[key] = signature
        for table, band in zip(self._tables, bands, strict=True):
            table.setdefault(band, []).append(key)

    def nearest(self, limit: int, crowd: int) -> dict[K, list[K]]:
        """Every key's ``limit`` likeliest matches: the keys sharing the most bands with it, most first, without itself.

        Why not :meth:`query` for everyone: which keys share buckets is the data's choice, and where many keys share
        one (accounts an attacker makes fire together, or a busy hour), querying every key returns the whole crowd
        each time — work in the square of its size. Here a bucket of more than ``crowd`` keys is sorted by the rest
        of the signature (rotated to start after the band, so keys agreeing on more further values sit closer), and
        each of its keys counts only its ``crowd`` neighbours in that order. A key so counts at most
        ``bands × crowd`` others, and every key's answer is bounded by ``limit``, so the whole call is linear in the
        number of keys. The more bands two keys share, the likelier their sets are similar (each band matches with
        probability ``Jaccard ** rows``), so the matches an exact check would confirm come first. Ties keep the
        order in which keys were inserted (insert in a deterministic order for a deterministic answer).
        """
        half = max(1, crowd // 2)
        position: list[dict[K, int]] = []  # per band, a key's place in its sorted crowd (only for crowded buckets)
        ordered: list[dict[bytes, list[K]]] = []
        big_endian: dict[K, bytes] = {}  # the signatures of crowded keys, as bytes that sort like the values
        for band, table in enumerate(self._tables):
            cut = 4 * band * self.rows
            places: dict[K, int] = {}
            crowds: dict[bytes, list[K]] = {}
            for value, keys in table.items():
                if len(keys) > crowd:
                    for k in keys:
                        if k not in big_endian:
                            big_endian[k] = self._signatures[k].astype(">u4").tobytes()
                    # Rotated to start after the band: keys agreeing on more of the following values sit closer.
                    rest = sorted(keys, key=lambda k: big_endian[k][cut:] + big_endian[k][:cut])
                    crowds[value] = rest
                    places.update((k, i) for i, k in enumerate(rest))
            position.append(places)
            ordered.append(crowds)
        out: dict[K, list[K]] = {}
        for key, signature in self._signatures.items():
            lists: list[list[K]] = []
            for table, places, crowds, value in zip(self._tables, position, ordered, self._band_keys(signature), strict=True):
                where = places.get(key)
                if where is None:
                    lists.append(table[value])
                else:
                    lists.append(crowds[value][max(0, where - half):where + half + 1])
            if sum(len(keys) for keys in lists) - len(lists) <= limit:
                seen = dict.fromkeys(chain.from_iterable(lists))
                seen.pop(key, None)
                out[key] = list(seen)
                continue
            counts = Counter(chain.from_iterable(lists))
            del counts[key]
            out[key] = [k for k, _ in counts.most_common(limit)]
        return out

    def query(self, signature: Signature) -> set[K]:
        """Keys sharing at least one band with ``signature`` (a key inserted with it included)."""
        found: set[K] = set()
        for table, band in zip(self._tables, self._band_keys(signature), strict=True):
            found.update(table.get(band, ()))
        return found

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys
