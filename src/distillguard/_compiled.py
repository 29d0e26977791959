"""Which modules are compiled with mypyc, whether the compiled ones are in use, and a guard against stale builds.

Why compiled: the gateway's per-request path is typed Python spread over many small pieces, none worth more than
~10 % of a request's CPU (bench/RESULTS.md, "Gateway CPU per request"); compiling those modules to C with mypyc
(shipped inside mypy) takes the interpreter's dispatch out of all of them at once. ``setup.py`` builds them when
a C compiler is at hand (``pip install -e .``, ``make install``) and falls back to pure Python, saying so in one
line, when it is not; the same source runs either way.

Why a guard: an extension module sits beside its ``.py`` file and Python prefers it, so editing the source after
a build would silently run the old compiled code. The build records a digest of every compiled module's source
(``_compiled_sources.json`` beside this file); at import, if any compiled module's source no longer matches,
:func:`guard_stale_build` makes *all* of them load from source (they call each other natively, so a mix of
compiled and interpreted copies of one group would disagree about their classes) and logs one warning saying how
to rebuild.

This module imports only the standard library: ``setup.py`` reads :data:`COMPILED` from it before anything is
installed.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# The modules a proxied request runs through (profiled under load; bench/RESULTS.md, "mypyc"). They are compiled
# as one group: calls between them are C calls. ``state/memory.py`` joined once its window log no longer subclassed
# ``deque`` (its admission and settlement were the largest interpreted part of a request left: bench/RESULTS.md, "SSE
# at c=64"). Not here: ``gateway/types.py`` (its protocols are subclassed by test fakes, and an interpreted class
# cannot inherit from a compiled protocol), and modules off the per-request path.
COMPILED: tuple[str, ...] = (
    "distillguard.events",
    "distillguard.sse",
    "distillguard.gateway.admission",
    "distillguard.gateway.app",
    "distillguard.gateway.auth",
    "distillguard.gateway.disconnect",
    "distillguard.gateway.edge",
    "distillguard.gateway.emission",
    "distillguard.gateway.errors",
    "distillguard.gateway.exchange",
    "distillguard.gateway.http_server",
    "distillguard.gateway.limits",
    "distillguard.gateway.metrics",
    "distillguard.gateway.prompt_tokens",
    "distillguard.gateway.relay",
    "distillguard.gateway.requests",
    "distillguard.gateway.responses",
    "distillguard.gateway.shapes",
    "distillguard.gateway.stream_template",
    "distillguard.gateway.stream_usage",
    "distillguard.gateway.upstream",
    "distillguard.gateway.upstream_http",
    "distillguard.gateway.wire",
    "distillguard.signals.collector",
    "distillguard.signals.network",
    "distillguard.state.memory",
)
SOURCES_FILE = "_compiled_sources.json"  # written by setup.py's build beside this module: {module: sha256 of its source}

log = logging.getLogger("distillguard")
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the directory holding ``distillguard/``


def source_path(module: str, root: Path = _PACKAGE_ROOT) -> Path:
    """The ``.py`` file of ``module`` under ``root``."""
    return root.joinpath(*module.split(".")).with_suffix(".py")


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compiled_in_use() -> list[str]:
    """The modules of :data:`COMPILED` that are imported and came from an extension module (a compiled build)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [name for name in COMPILED
            if (module := sys.modules.get(name)) is not None and str(getattr(module, "__file__", "")).endswith(suffixes)]


def _built_here(root: Path) -> bool:
    """Whether an extension module of the group sits beside its source under ``root``."""
    folder = source_path(COMPILED[0], root).parent
    stem = COMPILED[0].rsplit(".", 1)[1]
    return any((folder / (stem + suffix)).exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def stale_modules(root: Path = _PACKAGE_ROOT) -> list[str]:
    """The compiled modules whose source differs from what was compiled (all of them when the record is missing)."""
    if not _built_here(root):
        return []
    try:
        recorded = json.loads((root / "distillguard" / SOURCES_FILE).read_text())
    except (OSError, ValueError):
        return list(COMPILED)
    return [name for name in COMPILED
            if not source_path(name, root).exists() or recorded.get(name) != source_digest(source_path(name, root))]


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Loads the compiled group's modules from their ``.py`` files, ignoring the extension modules beside them."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname, self.root))


def guard_stale_build() -> None:
    """If any compiled module's source changed since the build, run the whole group from source (logged once)."""
    stale = stale_modules()
    if not stale:
        return
    sys.meta_path.insert(0, _SourceFirst(_PACKAGE_ROOT))
    log.warning("compiled modules are older than their source (%s%s): running the pure-Python modules instead; "
                "rebuild with `make install` or `pip install -e .` to use the compiled ones",
                ", ".join(stale[:3]), ", …" if len(stale) > 3 else "")
