"""distillguard: an open defense for LLM APIs against distillation and reselling.

Public, stable imports: :mod:`distillguard.events` (the event model v1),
:mod:`distillguard.client` (the attesting SDK) and :mod:`distillguard.config`.
Everything else is internal and may change.
"""

__version__ = "0.1.0"

from distillguard._compiled import guard_stale_build as _guard_stale_build

_guard_stale_build()  # a compiled module older than its source is never run (see distillguard/_compiled.py)
