"""Detection: explainable distillation, reseller and hydra-cluster scores over events v1.

Imported by `scan`, `eval` and the online scorer's worker process — never by the gateway.
"""

from distillguard.detect.base import Detector, Evidence
from distillguard.detect.scan import scan_files
from distillguard.detect.scanner import Scanner, risk_band

__all__ = ["Detector", "Evidence", "Scanner", "risk_band", "scan_files"]
