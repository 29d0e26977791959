"""Client and network signals: attestation verification, GeoIP/ASN, fingerprints, consistency, regions.

Every signal is listed in docs/signals.md; nothing else is collected.
"""

from distillguard.signals.attestation import AttestationVerifier
from distillguard.signals.collector import EnrollmentError, SignalCollector, SignalResult

__all__ = ["AttestationVerifier", "EnrollmentError", "SignalCollector", "SignalResult"]
