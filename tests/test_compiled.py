"""The mypyc build of the gateway's hot modules: what ships is what runs, and a stale build is never run.

``setup.py`` compiles the modules of ``distillguard._compiled.COMPILED`` when the machine has a C compiler
(``make install``); the tests then run against the compiled modules. Where the build fell back to pure Python,
the first test skips and says so.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
from pathlib import Path

import pytest

import distillguard.gateway  # noqa: F401  (imports the whole per-request path)
from distillguard import _compiled
from distillguard._compiled import (
    COMPILED,
    SOURCES_FILE,
    _SourceFirst,
    compiled_in_use,
    source_digest,
    stale_modules,
)

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def test_the_compiled_modules_are_the_ones_imported() -> None:
    if not _compiled._built_here(Path(_compiled.__file__).resolve().parent.parent):
        pytest.skip("pure-Python install: setup.py compiled nothing here (no C compiler, or DISTILLGUARD_PURE_PYTHON)")
    stale = stale_modules()
    assert not stale, f"the compiled build is older than the source of {stale}: run `make install` to rebuild"
    for name in COMPILED:
        __import__(name)
    assert compiled_in_use() == list(COMPILED)


def _fake_build(root: Path, *, digests: dict[str, str] | None) -> None:
    """A package tree under ``root`` with every compiled module's source, an extension module file beside the
    first, and the build's record of source digests (``None``: no record)."""
    for name in COMPILED:
        path = _compiled.source_path(name, root)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"WHO = {name!r}\n")
    first = _compiled.source_path(COMPILED[0], root)
    first.with_name(first.stem + SUFFIX).write_bytes(b"not really an extension module")
    if digests is not None:
        (root / "distillguard" / SOURCES_FILE).write_text(json.dumps(digests))


def test_a_build_matching_its_sources_is_not_stale(tmp_path: Path) -> None:
    _fake_build(tmp_path, digests=None)
    digests = {name: source_digest(_compiled.source_path(name, tmp_path)) for name in COMPILED}
    (tmp_path / "distillguard" / SOURCES_FILE).write_text(json.dumps(digests))
    assert stale_modules(tmp_path) == []


def test_an_edited_source_or_a_missing_record_makes_the_build_stale(tmp_path: Path) -> None:
    _fake_build(tmp_path, digests=None)
    assert stale_modules(tmp_path) == list(COMPILED)  # no record of what was compiled: trust none of it
    digests = {name: source_digest(_compiled.source_path(name, tmp_path)) for name in COMPILED}
    (tmp_path / "distillguard" / SOURCES_FILE).write_text(json.dumps(digests))
    edited = _compiled.source_path(COMPILED[-1], tmp_path)
    edited.write_text(edited.read_text() + "EDITED = True\n")
    assert stale_modules(tmp_path) == [COMPILED[-1]]


def test_no_extension_modules_means_nothing_is_stale(tmp_path: Path) -> None:
    (tmp_path / "distillguard").mkdir()
    assert stale_modules(tmp_path) == []


def test_a_stale_build_loads_every_compiled_module_from_its_source(tmp_path: Path) -> None:
    _fake_build(tmp_path, digests=None)
    finder = _SourceFirst(tmp_path)
    spec = finder.find_spec(COMPILED[0], None)
    assert spec is not None and spec.origin == str(_compiled.source_path(COMPILED[0], tmp_path))
    assert finder.find_spec("distillguard.config", None) is None  # modules outside the group are left alone
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    assert COMPILED[0] == module.WHO
