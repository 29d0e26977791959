"""Indicators of distillation and reselling that providers share as STIX 2.1 bundles (docs/indicators.md).

    from distillguard.indicators import IndicatorSet, collect_indicators

The data model and matching (:mod:`.model`) and the choice of what to export
(:mod:`.collect`) need only the standard library, so the detectors can use
them; reading and writing STIX (:mod:`distillguard.indicators.stix`) needs the
``stix2`` library (the ``stix`` extra) and is imported by the commands only.
"""

from __future__ import annotations

from distillguard.indicators.collect import Collected, collect_indicators
from distillguard.indicators.model import (
    Indicator,
    IndicatorKind,
    IndicatorSet,
    install_digest,
    prompt_digest,
)

__all__ = ["Collected", "Indicator", "IndicatorKind", "IndicatorSet", "collect_indicators", "install_digest", "prompt_digest"]
