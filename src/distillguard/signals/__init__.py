"""Client and network signals: attestation verification, GeoIP/ASN, fingerprints, consistency, regions.

Every signal is listed in docs/signals.md; nothing else is collected.

Attributes are imported lazily: the detectors import :mod:`.consistency`
(standard library only) in the online scorer's process, and importing this
package must not pull the collector's pydantic settings and the attestation
verifier's cryptography in with it (~12 MB of a scorer's resident memory,
bench/RESULTS.md "All-on RSS").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distillguard.signals.attestation import AttestationVerifier
    from distillguard.signals.collector import EnrollmentError, SignalCollector, SignalResult

_HOMES = {"AttestationVerifier": "attestation", "EnrollmentError": "collector", "SignalCollector": "collector",
          "SignalResult": "collector"}

__all__ = ["AttestationVerifier", "EnrollmentError", "SignalCollector", "SignalResult"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'distillguard.signals' has no attribute {name!r}")
    return getattr(importlib.import_module(f"distillguard.signals.{home}"), name)
