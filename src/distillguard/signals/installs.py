"""Enrolled installs, held in memory so that verifying a signature never waits for the database.

Each gateway process loads every enrolled install at start and adds those it
enrolls itself. Installs enrolled through *another* process are found on
demand: a miss for an install id queues a look-up that a background thread
runs against the registry, so the request that missed is answered from memory
(``missing_key``) and the next one from that install finds its key. Misses are
batched (one query for all ids missed within ``batch_delay_s``) and remembered
(a negative cache for ``negative_ttl_s``), and the queue is bounded, so a flood
of unknown or random ids costs at most one small query per batch interval,
never a database round trip per request.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeGuard

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from distillguard.signals.protocol import b64url_decode

__all__ = [
    "INSTALL_ID_RULE",
    "INSTALL_LIMIT",
    "EnrolledInstall",
    "InstallKeyCache",
    "InstallSource",
    "account_of",
    "load_public_key",
    "valid_install_id",
]

log = logging.getLogger("distillguard.signals")

INSTALL_ID_RULE = "8–128 characters from A–Z, a–z, 0–9 and . _ : -"
_INSTALL_ID = re.compile(r"[A-Za-z0-9._:\-]{8,128}")
INSTALL_LIMIT = "install_limit_reached"  # prefix of the registry's refusal when a key has its maximum of installs


def valid_install_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` is an install id: :data:`INSTALL_ID_RULE`.

    Why so strict: an install id is client-chosen and ends up in events, logs,
    admin listings and the database's primary key; NUL, ESC or a newline in
    it could forge log lines or confuse tools that read them. The SDK's ids
    (``inst_`` + 24 hex) are well inside the rule.
    """
    return isinstance(value, str) and _INSTALL_ID.fullmatch(value) is not None


class InstallSource(Protocol):
    """The registry's ``install_keys``: every install, or only ``install_ids``.

    Values are base64url public keys; a value with an ``account_id``
    attribute (the registry's ``InstallKey``) also says which account the
    install is bound to.
    """

    def __call__(self, install_ids: Collection[str] | None = None) -> Mapping[str, str]: ...


def load_public_key(encoded: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(b64url_decode(encoded))


def account_of(value: str) -> str | None:
    """The account an install key is bound to; None for a bare key (not bound to any account)."""
    account = getattr(value, "account_id", None)
    return account if isinstance(account, str) and account else None


@dataclass(frozen=True)
class EnrolledInstall:
    public_key: Ed25519PublicKey
    encoded: str
    account_id: str | None


class InstallKeyCache:
    """Install id → enrolled key and account; ``get`` reads memory only and never blocks on I/O."""

    def __init__(self, source: InstallSource | Mapping[str, str] | None = None, *, negative_ttl_s: float = 10.0,
                 batch_delay_s: float = 0.05, max_pending: int = 1024, max_negative: int = 100_000) -> None:
        self._installs: dict[str, EnrolledInstall] = {}
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._pending: set[str] = set()
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._lookup = source if callable(source) else None
        self.negative_ttl_s, self.batch_delay_s = negative_ttl_s, batch_delay_s
        self.max_pending, self.max_negative = max_pending, max_negative
        self.lookups = 0  # queries sent to the source for misses (tests and metrics)
        initial = source() if callable(source) else (source or {})
        for install_id, encoded in initial.items():
            self.add(install_id, encoded, account_of(encoded))

    def __len__(self) -> int:
        return len(self._installs)

    def add(self, install_id: str, encoded: str, account_id: str | None) -> None:
        """Remember an install (raises ``ValueError`` if the key is not a raw Ed25519 key)."""
        install = EnrolledInstall(load_public_key(encoded), str(encoded), account_id or None)
        with self._lock:
            self._installs[install_id] = install
            self._negative.pop(install_id, None)

    def peek(self, install_id: str) -> EnrolledInstall | None:
        """The cached install, without queueing a look-up on a miss."""
        return self._installs.get(install_id)

    def get(self, install_id: str) -> EnrolledInstall | None:
        """The cached install; on a miss, queue a background look-up (unless one is known to fail)."""
        install = self._installs.get(install_id)
        if install is None and self._lookup is not None:
            self._queue(install_id)
        return install

    def _queue(self, install_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            expiry = self._negative.get(install_id)
            if expiry is not None and expiry > now:
                return
            if install_id in self._pending or install_id in self._inflight or len(self._pending) >= self.max_pending:
                return
            self._pending.add(install_id)
            if self._worker is None and not self._closed:
                self._worker = threading.Thread(target=self._run, name="dg-install-lookup", daemon=True)
                self._worker.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._closed:
                return
            time.sleep(self.batch_delay_s)  # let a burst of misses share one query
            with self._lock:
                batch, self._pending = self._pending, set()
                self._inflight = batch
                self._wake.clear()
            if batch:
                self._fetch(batch)
            with self._lock:
                self._inflight = set()

    def _fetch(self, batch: set[str]) -> None:
        assert self._lookup is not None
        self.lookups += 1
        try:
            found = self._lookup(sorted(batch))
        except Exception as exc:  # the registry may be down; misses stay misses until the negative entries expire
            log.warning("looking up %d install(s) failed: %s", len(batch), exc)
            found = {}
        for install_id, encoded in found.items():
            try:
                self.add(install_id, encoded, account_of(encoded))
            except ValueError:
                log.warning("install %s has an unusable public key in the registry", install_id)
        self._remember_missing(batch - set(found))

    def _remember_missing(self, missing: set[str]) -> None:
        expiry = time.monotonic() + self.negative_ttl_s
        with self._lock:
            for install_id in missing:
                self._negative[install_id] = expiry
                self._negative.move_to_end(install_id)
            while len(self._negative) > self.max_negative:
                self._negative.popitem(last=False)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until queued look-ups are done (tests and shutdown only)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._pending and not self._inflight and not self._wake.is_set():
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self._closed = True
        self._wake.set()
